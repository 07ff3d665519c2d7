//! Realistic log lines (~130 bytes: timestamp, level, component, message with varying
//! fields), deterministic from a seed.

use std::io::Write;
use std::path::Path;

const LEVELS: &[&str] = &["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"];
const PATHS: &[&str] = &[
    "/api/v1/items",
    "/api/v1/users",
    "/healthz",
    "/api/v2/orders",
    "/static/app.js",
];
const METHODS: &[&str] = &["GET", "GET", "POST", "PUT", "DELETE"];

/// Appends line `i` of a stream seeded by `rng` to `out`, with its `\n`.
pub fn line(rng: &mut fastrand::Rng, i: u64, out: &mut Vec<u8>) {
    let ms = 1_700_000_000_000u64 + i * 7 + rng.u64(0..5);
    let (secs, milli) = (ms / 1000, ms % 1000);
    let _ = writeln!(
        out,
        "{secs}.{milli:03} {:<5} [worker-{}] {} {}/{} status={} bytes={} duration_ms={}.{} req={:016x}",
        LEVELS[rng.usize(..LEVELS.len())],
        rng.u8(0..16),
        METHODS[rng.usize(..METHODS.len())],
        PATHS[rng.usize(..PATHS.len())],
        rng.u32(1..100_000),
        [200, 200, 200, 201, 404, 500][rng.usize(..6)],
        rng.u32(100..60_000),
        rng.u32(0..900),
        rng.u8(0..10),
        rng.u64(..),
    );
}

/// Writes `lines` lines to `path`; returns the bytes written.
pub fn file(path: &Path, lines: usize, seed: u64) -> std::io::Result<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut buf = Vec::with_capacity(256);
    let mut total = 0u64;
    for i in 0..lines as u64 {
        buf.clear();
        line(&mut rng, i, &mut buf);
        f.write_all(&buf)?;
        total += buf.len() as u64;
    }
    f.flush()?;
    Ok(total)
}

/// `n` lines of a seeded stream, without newlines.
pub fn lines(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n as u64)
        .map(|i| {
            let mut b = Vec::with_capacity(160);
            line(&mut rng, i, &mut b);
            b.pop();
            b
        })
        .collect()
}
