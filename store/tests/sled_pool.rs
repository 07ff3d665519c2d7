//! The vendored sled's one code change (`vendor/sled/vendored.patch`): its I/O thread pool
//! wakes one idle thread per job (`notify_one`) instead of all of them. A pool that lost a
//! wake-up would leave the job queued until an idle thread's 1 s wait ran out, so every
//! flush would take about a second. Many threads writing and flushing at once must see their
//! flushes done promptly, and all of them done.

use std::time::{Duration, Instant};

/// Sequential writes, each flushed: every flush hands the pool a log write and waits for it,
/// so each one measures how soon an idle thread takes a job. Without the wake-up, the job
/// waits for one of the 7 idle threads' 1 s timed waits to end: tens of milliseconds on
/// average, against tens of microseconds on tmpfs.
#[test]
fn every_flush_is_run_promptly_by_the_patched_io_pool() {
    // tmpfs where there is one, so that the disk's fsync does not blur the measure.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(None)
        .open()
        .expect("open sled");
    let rounds = 200;
    let started = Instant::now();
    let mut latencies: Vec<Duration> = (0..rounds)
        .map(|i: u32| {
            db.insert(i.to_be_bytes(), vec![b'x'; 512]).expect("insert");
            let at = Instant::now();
            db.flush().expect("flush");
            at.elapsed()
        })
        .collect();
    assert_eq!(db.len(), rounds as usize, "every write is there");
    latencies.sort();
    let mean = latencies.iter().sum::<Duration>() / rounds;
    // Measured: ~0.1 ms a flush with the wake-up, ~125 ms without it.
    assert!(
        mean < Duration::from_millis(20),
        "mean flush {mean:?} (median {:?}, slowest {:?}, {rounds} flushes in {:?}): jobs wait for an idle thread's timeout",
        latencies[latencies.len() / 2],
        latencies.last(),
        started.elapsed()
    );
}
