//! Several sinks at once: one lane per sink.
//!
//! A lane is everything a sink's deliveries need of their own: its checkpoints, dead
//! letters and journald cursor (in its state directory), its sink, in-flight cap, rate
//! limits, share of the memory budget and of the descriptor budget, and its own run of every
//! source.
//! So each sink reads the files itself, at its own pace, as Filebeat's registry does per
//! output: a sink that is down for an hour holds no lines in memory for later (its
//! tailers stop at their share of the budget and wait; the file is the buffer), and when
//! it comes back it reads on from its own checkpoint. The other sinks never wait for it.
//!
//! Why not one reader feeding every sink: then the file position that may be saved is the
//! oldest any sink acknowledged, and a down sink either holds every line read since in
//! memory or makes the others wait, and on restart the fast sinks get everything since the
//! slow one's position again. With a lane each, every sink resumes exactly where it was
//! acknowledged: nothing twice, to any sink. The cost is one more read of each file per
//! sink, from the page cache.
//!
//! The first sink's state is `state_dir` itself, so an agent moved from `[sink]` to
//! `[[sinks]]` resumes where it was; each further sink's is `state_dir/sinks/<name>`, and a
//! sink added later starts each file at `read_from`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Semaphore;

use crate::batcher::Budget;
use crate::checkpoint::{self, Checkpoints};
use crate::config::{self, Settings, SinkSettings};
use crate::dead_letter;
use crate::metrics::Metrics;
use crate::sender::{Limit, ParkLog, SendEnv};
use crate::sink::{self, CurrentSink};

/// One sink and the state its deliveries keep.
pub struct Lane {
    pub name: Arc<str>,
    pub state_dir: PathBuf,
    pub sink: Arc<CurrentSink>,
    pub send: Arc<SendEnv>,
    pub checkpoints: Arc<Checkpoints>,
    pub budget: Budget,
    /// This lane's metrics (the agent's, with `sink="name"` on per-file series when there
    /// are several sinks).
    pub metrics: Arc<Metrics>,
}

/// Where the sink at `index` keeps its state.
pub fn state_dir(settings: &Settings, index: usize) -> PathBuf {
    match (index, settings.sinks.get(index)) {
        (0, _) | (_, None) => settings.state_dir.clone(),
        (_, Some(s)) => settings.state_dir.join("sinks").join(&s.name),
    }
}

/// The memory budget each lane gets: `max_buffered_bytes` shared evenly, so all sinks
/// together, one of them down, stay within it (each gets at least 1 MiB, the smallest
/// budget one sink may have).
pub fn budget_share(settings: &Settings) -> u64 {
    (settings.max_buffered_bytes / settings.sinks.len().max(1) as u64).max(1 << 20)
}

/// The descriptors each lane may hold: `max_open_files` shared evenly (at least 4 each), so
/// the agent's total stays within it however many sinks read the files.
pub fn open_files_share(settings: &Settings) -> usize {
    (settings.max_open_files / settings.sinks.len().max(1)).max(4)
}

impl Lane {
    /// Opens the lane of the sink at `index`: its state directory (made if missing) and
    /// checkpoints, and builds its sink.
    pub fn open(settings: &Settings, index: usize, metrics: &Arc<Metrics>) -> anyhow::Result<Lane> {
        let s: &SinkSettings = &settings.sinks[index];
        let dir = state_dir(settings, index);
        // A state directory the agent cannot write is the config's (or the host's) to fix:
        // exit 78, which the shipped unit does not restart on, rather than 1 and a restart
        // loop.
        checkpoint::prepare_state_dir(&dir)
            .map_err(|e| config::ConfigError(format!("state_dir {}: {e}", dir.display())))?;
        let checkpoints = Arc::new(
            Checkpoints::open(&dir)
                .with_context(|| format!("opening the state directory {}", dir.display()))?,
        );
        let metrics = if settings.sinks.len() > 1 {
            Arc::new(metrics.for_sink(&s.name))
        } else {
            metrics.clone()
        };
        let sink = Arc::new(CurrentSink::new(
            sink::build(s, &metrics.endpoints).with_context(|| format!("sink {:?}", s.name))?,
        ));
        let send = Arc::new(SendEnv {
            sink: sink.clone(),
            checkpoints: checkpoints.clone(),
            metrics: metrics.clone(),
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            global: std::sync::RwLock::new(Arc::new((
                Limit::per_second(u64::from(settings.lines_per_sec)),
                Limit::per_second(settings.bytes_per_sec),
            ))),
            dead_letters: Arc::new(dead_letter::DeadLetters::new(
                dead_letter::dir(&dir),
                settings.max_dead_letter_bytes,
            )),
            park_log: ParkLog::default(),
        });
        Ok(Lane {
            name: Arc::from(s.name.as_str()),
            state_dir: dir,
            sink,
            send,
            checkpoints,
            budget: Budget::new(budget_share(settings)),
            metrics,
        })
    }

    /// The settings the sources of this lane run with: the lane's state directory (where
    /// journald keeps its cursor).
    pub fn source_settings(&self, settings: &Settings) -> Settings {
        Settings {
            state_dir: self.state_dir.clone(),
            ..settings.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(sinks: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!("{sinks}\n[[sources]]\npaths = [\"/var/log/x.log\"]\n"),
        )
        .unwrap();
        config::load(&path, &Default::default())
            .and_then(|l| l.validate())
            .unwrap()
    }

    #[test]
    fn the_first_sink_keeps_the_state_dir_and_each_other_sink_has_its_own() {
        let s = settings(
            "[[sinks]]\nurl = \"http://a:1/store/batch\"\n[[sinks]]\ntype = \"loki\"\nurl = \"http://b:2/loki/api/v1/push\"\n",
        );
        assert_eq!(state_dir(&s, 0), s.state_dir);
        assert_eq!(state_dir(&s, 1), s.state_dir.join("sinks").join("loki"));
        assert_eq!(budget_share(&s), 16 << 20, "32 MiB shared by two sinks");
        assert_eq!(open_files_share(&s), s.max_open_files / 2);
        let one = settings("[sink]\nurl = \"http://a:1/store/batch\"\n");
        assert_eq!(state_dir(&one, 0), one.state_dir);
        assert_eq!(budget_share(&one), 32 << 20);
    }
}
