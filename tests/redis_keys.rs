//! Issue 29.3: any host and file bytes map to distinct keys, on both backends; a Redis
//! keyspace written with the old key layout still serves every file after an upgrade.

use std::time::Duration;

use logship_e2e::*;

/// The two names of issue 29.3, and a third host that a naive escape would confuse.
const PAIRS: [(&str, &str, &str); 3] = [
    ("x", "y}:gens:z", "A"),
    ("x}:gens:y", "z", "B"),
    ("x%7D:gens:y", "z", "C"),
];

fn lines_of(tag: &str) -> Vec<Vec<u8>> {
    (0..3)
        .map(|i| format!("{tag}-line-{i}").into_bytes())
        .collect()
}

fn joined(lines: &[Vec<u8>]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| [l.as_slice(), b"\n"].concat())
        .collect()
}

fn listed(agg: &Aggregator, host: &str) -> Vec<String> {
    get(&agg.url(&format!("/store/files?host={}", enc(host)))).json()["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["file"].as_str().map(str::to_owned))
        .collect()
}

fn names_with_closing_braces_never_share_keys(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = backend.aggregator(dir.path(), "", &[]);
    for (host, file, tag) in PAIRS {
        // The second write of each file is a partial overwrite: with shared keys it
        // replaced the first pair's lines.
        let lines = lines_of(tag);
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let a = post_compact(&agg, host, file, "g", 0, &refs);
        assert_eq!(a.status, 200, "{host} {file}: {}", a.text());
    }
    for (host, file, tag) in PAIRS {
        assert_eq!(
            agg.log(host, file, "").map(String::from_utf8),
            Ok(Ok(String::from_utf8(joined(&lines_of(tag))).expect("utf-8"))),
            "{host:?} {file:?}"
        );
        assert_eq!(listed(&agg, host), vec![file.to_owned()], "{host:?}");
    }
}

logship_e2e::both_backends!(names_with_closing_braces_never_share_keys);

/// A keyspace of the old layout (raw host in the hash tag) for a host with a `}`: the
/// aggregator of this version copies it at its first sweep and serves the file again.
#[test]
fn a_redis_keyspace_of_the_old_layout_still_serves_hosts_with_braces() {
    let cluster = RedisCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let host = "old}:gens:host";
    let lines = lines_of("old");
    let write_layout = |agg: &Aggregator| {
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let a = post_compact(agg, host, "/f", "g", 0, &refs);
        assert_eq!(a.status, 200, "{}", a.text());
        // A brace-free host keeps its keys: it must be untouched by the upgrade.
        let a = post_compact(agg, "plain", "/p", "g", 0, &[b"plain line"]);
        assert_eq!(a.status, 200, "{}", a.text());
    };
    let store = cluster.store_toml(0);
    let cfg = |n: u32| {
        let d = dir.path().join(format!("agg{n}"));
        std::fs::create_dir_all(&d).expect("mkdir");
        let cfg = d.join("agg.toml");
        std::fs::write(&cfg, format!("{store}sweep_interval = \"200ms\"\n")).expect("write config");
        (d, cfg)
    };
    {
        let (d, c) = cfg(1);
        let agg = Aggregator::start(&d.join("data"), &["--config", &c.to_string_lossy()]);
        write_layout(&agg);
    }
    // Rewrite the host's index keys as the old layout named them: the generation map and
    // the file index move to `{h:<raw host>}`, and the layout mark goes.
    let port = cluster.primaries()[0];
    let cli = |args: &[&str]| redis_cli(port, &[&["-c"][..], args].concat());
    let new_gens = "logship:{H:old%7D:gens:host}:gens:/f";
    let new_files = "logship:{H:old%7D:gens:host}:files";
    let id = cli(&["hget", new_gens, "g"]).trim().to_owned();
    assert!(id.parse::<u64>().is_ok(), "generation id {id:?}");
    let old_gens = format!("logship:{{h:{host}}}:gens:/f");
    let old_files = format!("logship:{{h:{host}}}:files");
    cli(&["hset", &old_gens, "g", &id]);
    cli(&["zadd", &old_files, "0", "/f"]);
    cli(&["del", new_gens]);
    cli(&["del", new_files]);
    cli(&["del", "logship:layout"]);
    assert_eq!(cli(&["exists", new_gens]).trim(), "0");

    let (d, c) = cfg(2);
    let agg = Aggregator::start(&d.join("data"), &["--config", &c.to_string_lossy()]);
    assert!(
        wait_until(Duration::from_secs(20), || agg.log(host, "/f", "").is_ok()),
        "the old layout's file is not served"
    );
    assert_eq!(agg.log(host, "/f", ""), Ok(joined(&lines)));
    assert_eq!(listed(&agg, host), vec!["/f".to_owned()]);
    assert_eq!(agg.log("plain", "/p", ""), Ok(b"plain line\n".to_vec()));
    assert_eq!(cli(&["get", "logship:layout"]).trim(), "2");
}
