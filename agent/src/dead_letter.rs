//! Dead letters: batches the sink refused as malformed (400/422, or one line too large for
//! it), kept in `state_dir/dead-letter/` so no line is thrown away silently.
//!
//! Each is the batch's compact body (`<millis>-<hash>.lsb`) beside a `.reason` text file.
//! `agent dead-letters list` shows them; `agent dead-letters replay` sends each through the
//! configured sink again — after the aggregator was fixed or its limits raised — and
//! deletes a file only once its batch was acknowledged. Replaying twice is harmless: every
//! line carries its number, so the aggregator stores it once.

use std::path::{Path, PathBuf};

use crate::sink::{Outcome, Sink};

/// The directory of dead letters under a state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("dead-letter")
}

/// Keeps a refused batch and why; returns where.
pub fn write(dir: &Path, body: &[u8], reason: &str) -> std::io::Result<PathBuf> {
    let name = format!(
        "{}-{:x}.lsb",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        xxhash_rust::xxh3::xxh3_64(body)
    );
    let path = dir.join(name);
    std::fs::create_dir_all(dir)?;
    // Durable before the checkpoint moves past the batch, and nothing half-written left
    // behind when the disk is full.
    let kept = write_synced(&path, body)
        .and_then(|()| write_synced(&reason_path(&path), format!("{reason}\n").as_bytes()))
        .and_then(|()| std::fs::File::open(dir)?.sync_all());
    if let Err(e) = kept {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(reason_path(&path));
        return Err(e);
    }
    Ok(path)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The dead-letter directory as the senders keep letters in it: bounded by
/// `limits.max_dead_letter_bytes`, its size counted from the disk at most once a second
/// (a directory near its limit may hold many thousand letters) and kept up to date between.
#[derive(Debug)]
pub struct DeadLetters {
    dir: PathBuf,
    max_bytes: u64,
    /// Bytes held, and when they were last counted from the disk.
    held: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
}

/// How long a count of the directory stands (letters replayed or removed by an operator show
/// after at most this long).
const RECOUNT: std::time::Duration = std::time::Duration::from_secs(1);

impl DeadLetters {
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        DeadLetters {
            dir,
            max_bytes,
            held: std::sync::Mutex::new((0, None)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps a refused batch and why, if the directory has room; returns where. Blocking
    /// (directory reads, fsyncs): call it off the async workers.
    pub fn keep(&self, body: &[u8], reason: &str) -> std::io::Result<PathBuf> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.1.is_none_or(|at| at.elapsed() >= RECOUNT) {
            *held = (bytes(&self.dir), Some(std::time::Instant::now()));
        }
        let adds = body.len() as u64 + reason.len() as u64 + 1;
        if held.0 + adds > self.max_bytes {
            return Err(std::io::Error::other(format!(
                "the dead-letter directory holds {} bytes (limits.max_dead_letter_bytes = {})",
                held.0, self.max_bytes
            )));
        }
        let path = write(&self.dir, body, reason)?;
        held.0 += adds;
        Ok(path)
    }
}

/// Bytes the dead letters in `dir` take (0 when there is none).
fn bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .sum()
}

fn reason_path(p: &Path) -> PathBuf {
    p.with_extension("lsb.reason")
}

/// One dead letter as listed.
#[derive(Debug)]
pub struct Letter {
    pub path: PathBuf,
    pub bytes: u64,
    /// `host file generation first..=last (n lines)`, or why the body does not decode.
    pub summary: String,
    pub reason: String,
}

/// The dead letters in `dir`, oldest first.
pub fn list(dir: &Path) -> std::io::Result<Vec<Letter>> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "lsb"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let body = std::fs::read(&path)?;
        let summary = match logship_wire::decode_file(&body) {
            Ok(b) => match (b.lines.first(), b.lines.last()) {
                (Some(first), Some(last)) => format!(
                    "host={} file={} generation={} lines {}..={} ({} lines)",
                    b.host,
                    b.file,
                    b.generation,
                    first.number,
                    last.number,
                    b.lines.len()
                ),
                _ => format!("host={} file={} (no lines)", b.host, b.file),
            },
            Err(e) => format!("not a readable batch: {e}"),
        };
        let reason = std::fs::read_to_string(reason_path(&path))
            .map(|r| r.trim().to_owned())
            .unwrap_or_else(|_| "(reason not recorded)".into());
        out.push(Letter {
            bytes: body.len() as u64,
            path,
            summary,
            reason,
        });
    }
    Ok(out)
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub delivered: usize,
    pub kept: usize,
}

/// Sends every dead letter in `dir` through `sink`, oldest first; each is deleted once all
/// its lines are acknowledged. A batch refused again stays (with the new reason); when the
/// sink is unreachable or refuses for its own reasons (token, TLS), the replay stops there,
/// since every later letter would fail the same way. `report` gets one line per letter.
pub async fn replay(
    dir: &Path,
    sink: &dyn Sink,
    mut report: impl FnMut(&str),
) -> std::io::Result<Replayed> {
    let mut done = Replayed::default();
    for letter in list(dir)? {
        let body = std::fs::read(&letter.path)?;
        let name = letter.path.display();
        match deliver(sink, body).await {
            Ok(()) => {
                std::fs::remove_file(&letter.path)?;
                let _ = std::fs::remove_file(reason_path(&letter.path));
                done.delivered += 1;
                report(&format!("delivered {name}: {}", letter.summary));
            }
            Err(Failed::Refused(reason)) => {
                std::fs::write(reason_path(&letter.path), format!("{reason}\n"))?;
                done.kept += 1;
                report(&format!("refused again, kept {name}: {reason}"));
            }
            Err(Failed::Unavailable(reason)) => {
                let left = list(dir)?.len();
                done.kept += left;
                report(&format!(
                    "stopped at {name}: the sink is not taking batches ({reason}); {left} letter(s) left"
                ));
                break;
            }
        }
    }
    Ok(done)
}

enum Failed {
    /// The batch (or part of it) was refused as such.
    Refused(String),
    /// The sink cannot take anything now.
    Unavailable(String),
}

/// Delivers one body, splitting on 413 and retrying a few times on transient failures.
async fn deliver(sink: &dyn Sink, body: Vec<u8>) -> Result<(), Failed> {
    crate::delivery::split_on_too_large(std::sync::Arc::new(body), &mut Replaying { sink }).await
}

/// The replay's way of delivering: a few tries of a transient failure, then stop and report.
struct Replaying<'a> {
    sink: &'a dyn Sink,
}

impl crate::delivery::Deliver for Replaying<'_> {
    type Error = Failed;

    async fn attempt(&mut self, piece: &std::sync::Arc<Vec<u8>>) -> crate::delivery::Step<Failed> {
        use crate::delivery::Step;
        let mut tries = 0u32;
        loop {
            match self.sink.send(piece).await {
                Outcome::Ok => return Step::Done,
                Outcome::TooLarge => return Step::TooLarge,
                Outcome::Reject { reason } => return Step::Failed(Failed::Refused(reason)),
                Outcome::Park { endpoint, reason } => {
                    return Step::Failed(Failed::Unavailable(format!("{endpoint}: {reason}")))
                }
                Outcome::Retry { reason, after } => {
                    tries += 1;
                    if tries >= 5 {
                        return Step::Failed(Failed::Unavailable(reason));
                    }
                    let wait = after.unwrap_or(std::time::Duration::from_millis(200 << tries));
                    tokio::time::sleep(wait.min(std::time::Duration::from_secs(10))).await;
                }
            }
        }
    }

    async fn unsplittable(&mut self, _: &std::sync::Arc<Vec<u8>>) -> Result<(), Failed> {
        Err(Failed::Refused(
            "a single line is larger than the sink accepts (413)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_letters_are_listed_with_their_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = logship_wire::compact::Writer::new("h", "/f.log", "g", 7);
        w.push(b"a", false);
        w.push(b"b", false);
        let path = write(dir.path(), &w.finish(), "400: bad").expect("write");
        std::fs::write(dir.path().join("junk.lsb"), b"junk").expect("write");
        let letters = list(dir.path()).expect("list");
        assert_eq!(letters.len(), 2);
        let ours = letters.iter().find(|l| l.path == path).expect("listed");
        assert!(
            ours.summary.contains("lines 7..=8 (2 lines)"),
            "{}",
            ours.summary
        );
        assert_eq!(ours.reason, "400: bad");
        let junk = letters
            .iter()
            .find(|l| l.path != path)
            .expect("junk listed");
        assert!(
            junk.summary.starts_with("not a readable batch"),
            "{}",
            junk.summary
        );
    }
}
