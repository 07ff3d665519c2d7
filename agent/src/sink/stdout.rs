//! The `stdout` sink: every line as a JSON object on standard output, for dry runs
//! (`agent --config x.toml` with `[sink] type = "stdout"` shows what would be shipped).

use std::io::Write;

use super::{BoxFuture, Outcome, Sink};

#[derive(Debug)]
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn send<'a>(&'a self, body: &'a [u8]) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let batch = match logship_wire::decode_file(body) {
                Ok(b) => b,
                Err(e) => {
                    return Outcome::Reject {
                        reason: e.to_string(),
                    }
                }
            };
            let mut out = Vec::new();
            for l in &batch.lines {
                let v = serde_json::json!({
                    "host": batch.host,
                    "file": batch.file,
                    "generation": batch.generation,
                    "line": l.number,
                    "content": String::from_utf8_lossy(&l.content),
                    "partial": l.partial,
                });
                let _ = writeln!(out, "{v}");
            }
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(&out).and_then(|()| stdout.flush()) {
                Ok(()) => Outcome::Ok,
                Err(e) => Outcome::Retry {
                    reason: format!("stdout: {e}"),
                    after: None,
                },
            }
        })
    }
}
