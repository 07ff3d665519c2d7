//! Helpers both binaries share, so each exists once:
//! - [`units`]: sizes (`"1MiB"`) and durations (`"200ms"`) from config strings, and TOML
//!   errors rendered with their line;
//! - [`shutdown_signal`]: SIGINT or SIGTERM, whichever comes first;
//! - [`init_tracing`]: logging to stderr as text or JSON, filtered by `RUST_LOG`;
//! - [`run_main`] and [`out!`]: the shape both binaries' `main` share, with their exit codes;
//! - [`ConfigError`]: the one config error type (exit 78).

pub mod config;
pub mod config_info;
pub mod log_limit;
pub mod offload;
pub mod tls;
pub mod units;

/// Registers for SIGINT and SIGTERM now (so a signal during startup is not lost to the
/// default action) and returns a future that resolves on the first of them. Call it inside
/// the runtime, before anything slow.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            (t, i) => {
                tracing::warn!(
                    term = t.is_ok(),
                    int = i.is_ok(),
                    "cannot listen for signals; falling back to ctrl-c"
                );
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("shutdown signal received");
    }
}

/// Calls `reload` on every SIGHUP, off the async workers (it reads a file). Registered now,
/// so an early SIGHUP is not the default action, which would end the process. Call it inside
/// the runtime.
pub fn on_sighup(mut reload: impl FnMut() + Send + 'static) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; a reload needs a restart");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tokio::task::block_in_place(&mut reload);
        }
    });
}

/// Prints a line to stdout, ignoring a closed pipe (`| head`) instead of panicking.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// A configuration error: the key at fault, the line when the file is at fault, and what is
/// wrong. Both binaries use it, and [`run_main`] exits 78 (`EX_CONFIG`) for it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Exit status for a bad configuration (sysexits' `EX_CONFIG`): supervisors such as systemd
/// can be told not to restart on it (`RestartPreventExitStatus=78`).
pub const EXIT_CONFIG: u8 = 78;

/// A binary's `main`: run `f`, print its error chain as `name: …`, and exit 0 on success,
/// 78 for a [`ConfigError`], 1 for any other failure (clap exits 2 for usage errors itself).
pub fn run_main(name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> std::process::ExitCode {
    match f() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Said once: through the log when it is set up (so a JSON log stays JSON), else
            // on stderr as `name: …` (a config error comes before the log is).
            if tracing::dispatcher::has_been_set() {
                tracing::error!(error = %format!("{e:#}"), "{name} failed");
            } else {
                eprintln!("{name}: {e:#}");
            }
            if e.downcast_ref::<ConfigError>().is_some() {
                std::process::ExitCode::from(EXIT_CONFIG)
            } else {
                std::process::ExitCode::from(1)
            }
        }
    }
}

/// How logs are written (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours only when stderr is a terminal.
    Text,
    /// One JSON object per line, for a log pipeline to parse.
    Json,
}

impl LogFormat {
    /// Parses a `log_format` value; the error names `key`.
    pub fn parse(key: &str, s: &str) -> Result<Self, ConfigError> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(ConfigError(format!(
                "{key}: {other:?} is not \"text\" or \"json\""
            ))),
        }
    }
}

/// A `kB` field (`VmRSS:`, `VmHWM:`) of `/proc/PID/status`, in KiB; 0 if unreadable.
/// Tests and the benchmark measure processes with it.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Logs to stderr in `format`; the level comes from `RUST_LOG`, else `level` (a filter such
/// as `"info"` or `"warn,logship_agent=debug"`), else `info`.
pub fn init_tracing(format: LogFormat, level: Option<&str>) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .ok()
        .or_else(|| level.and_then(|l| tracing_subscriber::EnvFilter::try_new(l).ok()))
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
}

/// The type of the filesystem `file` is on (`statfs(2)`'s `f_type`, a magic number).
pub fn filesystem_type(file: &std::fs::File) -> std::io::Result<i64> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
        #[allow(unsafe_code)]
        // SAFETY: fstatfs writes one `statfs` into the buffer it is given, which lives for
        // the call; the descriptor is open for as long as `file` is borrowed.
        let (rc, st) = unsafe {
            let rc = libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr());
            (rc, st.assume_init())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        #[allow(clippy::unnecessary_cast)]
        Ok(st.f_type as i64)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        Ok(0)
    }
}

/// Makes glibc return large freed buffers to the system at once.
///
/// glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB),
/// after which request-sized buffers (a decompressed body, a decoded batch) come from the
/// heap and stay resident when freed: an aggregator that once decoded a few 50 MB bodies
/// kept ~50 MB more for good. A fixed threshold turns that adjustment off, so every
/// allocation of 1 MiB or more is its own mapping and is unmapped on free. Not lower: a
/// download's 256 KiB chunks would then each be mapped, faulted in and unmapped (a 1 GiB
/// download ran at less than half its speed with a 256 KiB threshold).
pub fn release_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only changes allocator tuning; called once at start, before threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        // Fixing the mmap threshold also freezes the trim threshold at 128 KiB, and then
        // every free of a download chunk at the heap's top gave pages back only to fault them
        // in again (with TLB shootdowns): downloads ran at 55 % of their speed. Heap tops
        // up to 16 MiB are kept.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 * 1024 * 1024);
    }
}

/// Caps how many glibc heaps (arenas) threads allocate from.
///
/// glibc gives each thread that allocates under contention its own arena (up to 8 per core),
/// and memory freed on another thread goes back to the arena it came from, so each arena
/// keeps its own high-water mark of free memory.
/// - The agent allocates read chunks and batch bodies on one thread and frees them on another
///   (tailer, compressor, sender); with many active files, measured with `logship-bench
///   --scenarios agent`, 100 files peaked at 71–72 MiB with glibc's default arenas and 56 MiB
///   with one, 1,000 files at 88 and 74 MiB, at the same throughput (its allocations are a
///   few per chunk, not per line, so one lock costs nothing). It uses one.
/// - The aggregator's request, commit and sled threads pass index entries and buckets between
///   them the same way: a store taking 40M lines settled at 50 MiB with the default arenas and
///   at 30–32 MiB with one or two, at the same rate. It uses one per core, so two threads
///   rarely wait on one arena's lock.
pub fn limit_allocator_arenas(max: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only changes allocator tuning; called once at start, before threads.
    unsafe {
        libc::mallopt(
            libc::M_ARENA_MAX,
            libc::c_int::try_from(max.max(1)).unwrap_or(libc::c_int::MAX),
        );
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = max;
}

/// Gives the free pages inside the allocator's heaps back to the system.
///
/// A process that passed a burst of data through (an agent catching up on thousands of
/// files) is left with its heap full of holes between long-lived allocations; glibc only
/// returns memory at the top of a heap by itself. Called now and then from a quiet moment;
/// it costs a walk of the free lists.
pub fn trim_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only returns free pages to the kernel; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Asks the kernel to drop a file's clean pages from its page cache (`posix_fadvise`
/// `DONTNEED`); pages not yet written back stay. Advice only: the file's data is unchanged,
/// and a later read brings back what it needs.
pub fn drop_cached_pages(file: &std::fs::File) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        #[allow(unsafe_code)]
        // SAFETY: posix_fadvise only reads its arguments; the descriptor is open for as long
        // as `file` is borrowed.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    Ok(())
}

/// Async worker threads for a server on this machine when the operator names none: half the
/// cores, at least one.
///
/// The workers only read, parse and answer; what costs CPU (merging, decoding, commits,
/// sled's own threads) runs on other threads, which need the other cores. Fewer workers also
/// means fewer wake-ups: tokio wakes an idle worker to steal whenever a busy one has queued
/// work, which for many small requests is one more context switch per request. On 2 cores,
/// one worker instead of two took 11–27 % less aggregator CPU per line for 500 agents' small
/// batches (every one of 5 pairs), at the same ack latency, and files → agent → aggregator
/// kept its throughput (`docs/PERFORMANCE.md`, round 6).
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .div_ceil(2)
}

/// CPU time the calling thread has used: what "a worker was busy" means, unlike wall time,
/// which also counts the moments the OS ran something else.
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// An error and every cause under it, joined by ": " (a repeated message is said once): a
/// connect error then reads "client error (Connect): tcp connect error: Connection refused
/// (os error 111)", not just "client error (Connect)".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod error_chain_tests {
    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_os_reason_under_a_wrapper_is_said() {
        let e = Outer(std::io::Error::from_raw_os_error(111));
        let text = super::error_chain(&e);
        assert!(text.starts_with("client error (Connect): "), "{text}");
        assert!(text.contains("os error 111"), "{text}");
    }
}
