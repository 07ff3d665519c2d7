//! The periodic sweep of the store (retention, compaction), with its clock-jump guard and
//! metrics.

use crate::store;
use crate::App;

/// Runs the store's sweep (retention, compaction) every `sweep_interval` while the app lives.
pub(crate) async fn sweep_periodically(app: std::sync::Weak<App>) {
    let interval = match app.upgrade() {
        Some(a) => a.settings().sweep_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clock = store::clock::RetentionClock::default();
    clock.read();
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        let started = std::time::Instant::now();
        let reading = clock.read();
        if let Some((forward, by)) = reading.jump {
            app.metrics.retention.clock_jumps.inc();
            tracing::error!(
                direction = if forward { "forward" } else { "backward" },
                by = %humantime::format_duration(std::time::Duration::from_secs(by.as_secs())),
                retention_clock_behind = %humantime::format_duration(std::time::Duration::from_secs(reading.behind.as_secs())),
                "the wall clock jumped; retention keeps measuring age with the monotonic clock, so nothing is dropped for the jump"
            );
        }
        app.metrics
            .retention
            .retention_clock_behind
            .set(reading.behind.as_secs_f64());
        app.metrics.retention.sweeps.inc();
        match app.store.sweep(app.settings().retention, reading.now).await {
            Ok(r) => {
                let m = &app.metrics.retention;
                m.generations_dropped.inc_by(r.generations_dropped);
                m.lines_trimmed.inc_by(r.lines_trimmed);
                m.segments_compacted.inc_by(r.segments_compacted);
                m.bytes_reclaimed.inc_by(r.bytes_reclaimed);
                m.sweep_seconds.set(started.elapsed().as_secs_f64());
                if r != store::SweepReport::default() {
                    tracing::info!(
                        dropped = r.generations_dropped,
                        trimmed_lines = r.lines_trimmed,
                        compacted = r.segments_compacted,
                        reclaimed_bytes = r.bytes_reclaimed,
                        took = ?started.elapsed(),
                        "sweep done"
                    );
                }
            }
            Err(e) => {
                app.metrics.retention.sweep_failures.inc();
                tracing::warn!(error = %e.report(), "sweep failed; retrying at the next interval");
            }
        }
    }
}
