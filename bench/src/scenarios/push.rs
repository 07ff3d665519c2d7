//! `push`: Loki pushes (protobuf + snappy) and OTLP logs (protobuf), 1,000 lines a request
//! from `--clients` clients each with a stream of its own, against our own compact ingest of
//! the same lines in the same run (each on a fresh aggregator). Every line is checked stored.

use prost::Message;

use super::*;

/// The three forms of the same lines: one list of request bodies per client.
struct Bodies {
    compact: Vec<Vec<Bytes>>,
    loki: Vec<Vec<Bytes>>,
    otlp: Vec<Vec<Bytes>>,
    bytes: u64,
}

fn bodies(total: usize, clients: usize, seed: u64) -> Bodies {
    use logship_wire::{loki, otlp};
    let (compact, bytes) = super::ingest::bodies(total, clients, seed);
    let per = total / clients;
    let mut loki_out = Vec::new();
    let mut otlp_out = Vec::new();
    for c in 0..clients {
        let lines = gen::lines(per, seed + c as u64);
        let mut l_list = Vec::new();
        let mut o_list = Vec::new();
        for (i, chunk) in lines.chunks(1000).enumerate() {
            let t0 = 1_790_000_000_000_000_000u64 + (i * 1000) as u64 * 1_000_000;
            let text = |l: &Vec<u8>| Bytes::copy_from_slice(l.strip_suffix(b"\n").unwrap_or(l));
            let req = loki::PushRequest {
                streams: vec![loki::StreamAdapter {
                    labels: format!("{{host=\"loki\", filename=\"/bench/c{c}.log\"}}"),
                    entries: chunk
                        .iter()
                        .enumerate()
                        .map(|(j, l)| {
                            let ns = t0 + j as u64 * 1_000_000;
                            loki::EntryAdapter {
                                timestamp: Some(loki::Timestamp {
                                    seconds: (ns / 1_000_000_000) as i64,
                                    nanos: (ns % 1_000_000_000) as i32,
                                }),
                                line: text(l),
                                structured_metadata: vec![],
                            }
                        })
                        .collect(),
                    hash: 0,
                }],
            };
            let raw = req.encode_to_vec();
            let snapped = snap::raw::Encoder::new()
                .compress_vec(&raw)
                .expect("snappy compresses any bytes");
            l_list.push(Bytes::from(snapped));
            let attr = |k: &str, v: String| otlp::KeyValue {
                key: k.into(),
                value: Some(otlp::AnyValue {
                    value: Some(otlp::Value::String(Bytes::from(v))),
                }),
            };
            let req = otlp::ExportLogsServiceRequest {
                resource_logs: vec![otlp::ResourceLogs {
                    resource: Some(otlp::Resource {
                        attributes: vec![
                            attr("host.name", "otlp".into()),
                            attr("log.file.path", format!("/bench/c{c}.log")),
                        ],
                    }),
                    scope_logs: vec![otlp::ScopeLogs {
                        log_records: chunk
                            .iter()
                            .enumerate()
                            .map(|(j, l)| otlp::LogRecord {
                                time_unix_nano: t0 + j as u64 * 1_000_000,
                                observed_time_unix_nano: 0,
                                body: Some(otlp::AnyValue {
                                    value: Some(otlp::Value::String(text(l))),
                                }),
                                attributes: vec![],
                            })
                            .collect(),
                    }],
                }],
            };
            o_list.push(Bytes::from(req.encode_to_vec()));
        }
        loki_out.push(l_list);
        otlp_out.push(o_list);
    }
    Bodies {
        compact,
        loki: loki_out,
        otlp: otlp_out,
        bytes,
    }
}

/// One protocol's load: where its bodies go, as what, what answers success, and the host
/// its lines are stored under.
struct Phase {
    name: &'static str,
    bodies: Vec<Vec<Bytes>>,
    path: &'static str,
    ctype: &'static str,
    want: u16,
    host: &'static str,
}

/// Posts every client's bodies, one task per client, on a fresh aggregator; anything but
/// `want` fails the run. Returns lines/s, the aggregator's CPU seconds per GB and its peak
/// RSS (MiB).
async fn load(
    bins: &Path,
    dir: &Path,
    phase: Phase,
    lines: u64,
    bytes: u64,
) -> anyhow::Result<(f64, f64, f64)> {
    let Phase {
        bodies,
        path,
        ctype,
        want,
        host,
        ..
    } = phase;
    let (agg, base) = Measured::aggregator(bins, &dir.join(format!("data-{host}")))?;
    let cpu0 = agg.cpu_secs();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for list in bodies {
        let url = format!("{base}{path}");
        tasks.push(tokio::spawn(async move {
            let c = client();
            for b in list {
                let s = crate::http::post_typed(&c, &url, b, ctype).await?;
                if s != want {
                    bail!("{url} answered {s}");
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = agg.cpu_secs() - cpu0;
    let stored = total_lines(&client(), &base, Some(host)).await?;
    if stored != lines {
        bail!("{path} stored {stored} lines of {lines}");
    }
    Ok((
        lines as f64 / secs,
        cpu / (bytes as f64 / 1e9),
        agg.peak_rss() as f64 / 1048576.0,
    ))
}

pub(super) async fn push(
    args: &Args,
    bins: &Path,
    dir: &Path,
    r: &mut Report,
) -> anyhow::Result<()> {
    let b = bodies(args.ingest_lines, args.clients, args.seed);
    let lines = (args.ingest_lines / args.clients * args.clients) as u64;
    let phases = [
        Phase {
            name: "own (compact)",
            bodies: b.compact,
            path: "/store/batch",
            ctype: logship_wire::COMPACT_CONTENT_TYPE,
            want: 200,
            host: "bench",
        },
        Phase {
            name: "loki (protobuf+snappy)",
            bodies: b.loki,
            path: "/loki/api/v1/push",
            ctype: "application/x-protobuf",
            want: 204,
            host: "loki",
        },
        Phase {
            name: "otlp (protobuf)",
            bodies: b.otlp,
            path: "/v1/logs",
            ctype: "application/x-protobuf",
            want: 200,
            host: "otlp",
        },
    ];
    let mut own = None;
    for phase in phases {
        let name = phase.name;
        let (rate, cpu, rss) = load(bins, dir, phase, lines, b.bytes).await?;
        let label = format!(
            "{name}: lines/s ({} clients, 1,000 lines a request)",
            args.clients
        );
        r.add("push", label, rate, "lines/s");
        r.add(
            "push",
            format!("{name}: aggregator CPU per GB"),
            cpu,
            "s/GB",
        );
        r.add("push", format!("{name}: aggregator peak RSS"), rss, "MiB");
        match own {
            None => own = Some(rate),
            Some(reference) => r.add(
                "push",
                format!("{name}: ratio to our own ingest's lines/s"),
                rate / reference,
                "x",
            ),
        }
    }
    Ok(())
}
