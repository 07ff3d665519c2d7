//! The `journald` source: the systemd journal (or the journal files of a `directory`), one
//! stream per unit (`journal/{unit}` by default), each entry's `MESSAGE` one line, kept
//! exact (binary messages too, `\n` and all).
//!
//! Reading: `journalctl -o export --follow --no-tail` as a supervised child process, restarted
//! with backoff after the last entry read when it exits. Why a child rather than a crate: the
//! journal's file format belongs to systemd, `journalctl` is on every systemd host and reads
//! every version of it (compression, sealing, rotation, several files interleaved), and the
//! export format it writes is binary-safe and documented; a crate linking `libsystemd` would
//! need its headers at build time and the same library at run time.
//!
//! Checkpoint: the cursor of the newest entry such that it and every entry before it (of
//! every unit) is acknowledged, with each unit's next line number at that point, in
//! `state_dir/journald.json` (written atomically). A restart reads `--after-cursor` and
//! numbers each unit's lines from there: the entries after the cursor get the very numbers
//! they had before, so a resend of an entry acknowledged after the last save is stored once.
//! Without a state file the streams start a new generation (`journal-<ms>`), so a journal
//! vacuumed meanwhile never renumbers lines already stored.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, watch};

use super::Source;
use crate::batcher::{wall_ms, Batcher};
use crate::config::SourceSettings;
use crate::pipeline::Pipelines;
use crate::sender::Sender;
use crate::tailer::Control;

/// Entries parsed ahead of the batchers.
const AHEAD: usize = 1024;

pub struct JournaldSource {
    settings: SourceSettings,
    state_path: PathBuf,
    save_every: Duration,
    shutdown_timeout: Duration,
}

impl JournaldSource {
    pub fn new(
        mut sources: Vec<SourceSettings>,
        settings: &crate::config::Settings,
    ) -> anyhow::Result<Self> {
        let s = sources
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no journald source"))?;
        anyhow::ensure!(sources.is_empty(), "one journald source at most");
        Ok(JournaldSource {
            settings: s,
            state_path: settings.state_dir.join("journald.json"),
            save_every: settings.checkpoint_interval,
            shutdown_timeout: settings.shutdown_timeout,
        })
    }
}

impl Source for JournaldSource {
    fn run(self: Box<Self>, pipes: Pipelines) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move { self.ship(pipes).await })
    }
}

/// What is saved: where to resume, and each stream's next line number there.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct State {
    generation: String,
    cursor: Option<String>,
    next: BTreeMap<String, u64>,
}

/// One journal entry, as far as the source uses it.
#[derive(Debug, Default, PartialEq)]
struct Entry {
    cursor: Option<String>,
    unit: Option<String>,
    identifier: Option<String>,
    message: Option<Vec<u8>>,
    realtime_us: Option<u64>,
}

/// Which entries are acknowledged, to move the saved cursor.
struct Progress {
    /// Entries handed to the streams, oldest first: (stream, line, cursor). Only some carry
    /// their cursor — every [`CURSOR_EVERY`]th, and the last before the reader waits — so
    /// an entry in flight costs 32 bytes, not a cursor string (~150 bytes) beside a message
    /// that may be shorter: a save resumes from the newest cursor acknowledged, and what
    /// follows it is read again and stored under the same numbers.
    queue: VecDeque<(usize, u64, Option<Box<str>>)>,
    /// Per stream: every line below this is acknowledged.
    acked: Vec<u64>,
    /// Per stream: the next line after the entries taken off the queue.
    passed: Vec<u64>,
    names: Vec<String>,
    state: State,
    dirty: bool,
}

/// One entry in this many keeps its cursor in [`Progress::queue`].
const CURSOR_EVERY: u64 = 256;

impl Progress {
    /// A stream acknowledged every line below `end`: the saved cursor moves to the newest
    /// one of the entries now acknowledged with all before them.
    fn acked(&mut self, stream: usize, end: u64) {
        if let Some(a) = self.acked.get_mut(stream) {
            *a = (*a).max(end);
        }
        while let Some((s, line, _)) = self.queue.front() {
            if *line >= self.acked[*s] {
                break;
            }
            if let Some((s, line, cursor)) = self.queue.pop_front() {
                self.passed[s] = line + 1;
                if let Some(c) = cursor {
                    self.state.cursor = Some(c.into());
                    for (name, &next) in self.names.iter().zip(&self.passed) {
                        self.state.next.insert(name.clone(), next);
                    }
                    self.dirty = true;
                }
            }
        }
    }
}

type Shared = Arc<Mutex<Progress>>;

fn lock(p: &Shared) -> std::sync::MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One unit's stream.
struct Stream {
    index: usize,
    batcher: Batcher,
    next: u64,
    sending: tokio::task::JoinHandle<()>,
}

impl JournaldSource {
    async fn ship(self, pipes: Pipelines) {
        let state = load(&self.state_path).unwrap_or_else(|| State {
            generation: format!("journal-{}", wall_ms()),
            ..State::default()
        });
        let generation: Arc<str> = Arc::from(state.generation.as_str());
        let template = self
            .settings
            .name
            .clone()
            .unwrap_or_else(|| "journal/{unit}".into());
        let progress: Shared = Arc::new(Mutex::new(Progress {
            queue: VecDeque::new(),
            acked: Vec::new(),
            passed: Vec::new(),
            names: Vec::new(),
            state: state.clone(),
            dirty: false,
        }));
        let saver = tokio::spawn(save_periodically(
            progress.clone(),
            self.state_path.clone(),
            self.save_every,
        ));
        let (tx, mut entries) = mpsc::channel(AHEAD);
        let reader = tokio::spawn(tracing::Instrument::in_current_span(read_journal(
            journalctl_args(&self.settings),
            state.cursor.clone(),
            self.settings.options.max_line_bytes,
            tx,
            pipes.shutdown.clone(),
        )));
        tracing::info!(cursor = ?state.cursor, %generation, "reading the journal");
        // By unit, as the journal names it.
        let mut streams: HashMap<String, Stream> = HashMap::new();
        let mut shutdown = pipes.shutdown.clone();
        let mut seen = 0u64;
        loop {
            let due = streams.values().filter_map(|s| s.batcher.deadline()).min();
            let linger = async {
                match due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                e = entries.recv() => match e {
                    Some(e) => {
                        seen += 1;
                        let mark = seen.is_multiple_of(CURSOR_EVERY) || entries.is_empty();
                        if self.add(&pipes, &progress, &state, &generation, &template, &mut streams, e, mark).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                () = linger => {
                    let now = tokio::time::Instant::now();
                    for s in streams.values_mut() {
                        let _ = s.batcher.seal_if_due(now).await;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        reader.abort();
        let mut sendings = Vec::new();
        for (_, mut s) in streams.drain() {
            let _ = s.batcher.seal().await;
            drop(s.batcher);
            sendings.push(s.sending);
        }
        // The acknowledgements still due move the cursor before the last save.
        let _ = tokio::time::timeout(
            self.shutdown_timeout,
            futures_util::future::join_all(sendings),
        )
        .await;
        saver.abort();
        save(&progress, &self.state_path).await;
    }

    /// Hands one entry to its unit's stream (started on its first entry).
    #[allow(clippy::too_many_arguments)]
    async fn add(
        &self,
        pipes: &Pipelines,
        progress: &Shared,
        state: &State,
        generation: &Arc<str>,
        template: &str,
        streams: &mut HashMap<String, Stream>,
        e: Entry,
        mark: bool,
    ) -> Result<(), crate::batcher::Gone> {
        let (Some(message), Some(cursor)) = (e.message, e.cursor) else {
            return Ok(()); // nothing to ship (the cursor moves with the next entry shipped)
        };
        let unit = e.unit.or(e.identifier).unwrap_or_else(|| "unknown".into());
        // Streams are found by the unit as the journal names it: the stream's name is
        // made once, when it starts, not per entry.
        if !streams.contains_key(&unit) {
            let safe: String = unit
                .chars()
                .map(|c| if c.is_control() { '_' } else { c })
                .collect();
            let name = template.replace("{unit}", &safe);
            let s = self.start_stream(pipes, progress, state, &name);
            streams.insert(unit.clone(), s);
        }
        let Some(stream) = streams.get_mut(&unit) else {
            return Ok(());
        };
        let line = stream.next;
        stream.next += 1;
        let cursor = mark.then(|| cursor.into_boxed_str());
        lock(progress).queue.push_back((stream.index, line, cursor));
        let ms = e.realtime_us.map_or_else(wall_ms, |us| us / 1000);
        stream
            .batcher
            .add_line(generation, line, &message, ms)
            .await
    }

    fn start_stream(
        &self,
        pipes: &Pipelines,
        progress: &Shared,
        state: &State,
        name: &str,
    ) -> Stream {
        let next = state.next.get(name).copied().unwrap_or(0);
        let index = {
            let mut p = lock(progress);
            p.names.push(name.to_owned());
            p.acked.push(next);
            p.passed.push(next);
            p.names.len() - 1
        };
        let file: Arc<str> = Arc::from(name);
        let options = self.settings.options.clone();
        let (batch_tx, batch_rx) = mpsc::channel(1);
        let batcher = Batcher::new(
            pipes.host.clone(),
            file.clone(),
            options.clone(),
            pipes.budget.clone(),
            batch_tx,
        );
        let on_ack = {
            let progress = progress.clone();
            Arc::new(move |end: u64| lock(&progress).acked(index, end))
        };
        let sender = Sender {
            env: pipes.send.clone(),
            file: file.clone(),
            id: None,
            on_ack: Some(on_ack),
            options,
            ctl: Arc::new(Control::default()),
        };
        let metrics = pipes.metrics.clone();
        metrics.files_tracked.inc();
        metrics.attach(&file);
        let done = pipes.done.clone();
        let sending = tokio::spawn(tracing::Instrument::in_current_span(async move {
            sender.run(batch_rx).await;
            metrics.files_tracked.dec();
            metrics.detach(&file);
            drop(done);
        }));
        tracing::info!(stream = %name, first_line = next, "journal stream started");
        Stream {
            index,
            batcher,
            next,
            sending,
        }
    }
}

fn load(path: &std::path::Path) -> Option<State> {
    let text = std::fs::read(path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "the journald checkpoint does not parse; starting a new generation from the start of the journal");
            None
        }
    }
}

async fn save(progress: &Shared, path: &std::path::Path) {
    let state = {
        let mut p = lock(progress);
        if !p.dirty {
            return;
        }
        p.dirty = false;
        p.state.clone()
    };
    let path2 = path.to_owned();
    let written =
        tokio::task::spawn_blocking(move || crate::checkpoint::write_atomically(&path2, &state))
            .await;
    if !matches!(written, Ok(Ok(()))) {
        lock(progress).dirty = true;
        tracing::error!(path = %path.display(), "saving the journald checkpoint failed; retrying");
    }
}

async fn save_periodically(progress: Shared, path: PathBuf, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    loop {
        tick.tick().await;
        save(&progress, &path).await;
    }
}

/// `journalctl`'s arguments, before `--after-cursor`.
fn journalctl_args(s: &SourceSettings) -> Vec<String> {
    let mut args = vec![
        "--output=export".to_owned(),
        "--follow".to_owned(),
        "--no-tail".to_owned(),
        "--no-pager".to_owned(),
        "--quiet".to_owned(),
    ];
    if let Some(d) = &s.directory {
        args.push(format!("--directory={}", d.display()));
    }
    args.extend(s.matches.iter().cloned());
    args
}

/// Runs `journalctl` and parses its entries into `tx`, restarting it (after the last entry
/// read) with backoff when it exits, until shutdown.
async fn read_journal(
    args: Vec<String>,
    mut cursor: Option<String>,
    max_message: usize,
    tx: mpsc::Sender<Entry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let mut cmd = tokio::process::Command::new("journalctl");
        cmd.args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(c) = &cursor {
            cmd.arg(format!("--after-cursor={c}"));
        }
        match cmd.spawn() {
            Ok(mut child) => {
                if let Some(err) = child.stderr.take() {
                    tokio::spawn(async move {
                        let mut lines = BufReader::new(err).lines();
                        while let Ok(Some(l)) = lines.next_line().await {
                            tracing::warn!(journalctl = %l, "journalctl says");
                        }
                    });
                }
                if let Some(out) = child.stdout.take() {
                    let mut r = BufReader::with_capacity(64 * 1024, out);
                    loop {
                        let next = tokio::select! {
                            e = next_entry(&mut r, max_message) => e,
                            _ = shutdown.changed() => return,
                        };
                        match next {
                            Ok(Some(e)) => {
                                backoff.reset();
                                if e.cursor.is_some() {
                                    cursor.clone_from(&e.cursor);
                                }
                                if tx.send(e).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::error!(error = %e, "reading journalctl's output failed");
                                break;
                            }
                        }
                    }
                }
                let status = child.wait().await;
                tracing::warn!(
                    ?status,
                    "journalctl exited; starting it again after the last entry read"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start journalctl (is systemd's journalctl installed?)");
            }
        }
        let delay = backoff.next(None);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Reads a line up to `\n` keeping at most `cap` bytes of it (the rest is read and
/// dropped); `None` at the end of input.
async fn capped_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    cap: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut seen = false;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(seen.then_some(out));
        }
        seen = true;
        let (take, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&buf[..take.min(room)]);
        r.consume(take);
        if done {
            if out.last() == Some(&b'\n') {
                out.pop();
            }
            return Ok(Some(out));
        }
    }
}

/// Parses the next entry of `journalctl -o export` (fields `NAME=value\n`, or `NAME\n`, a
/// u64 LE length, the value and `\n` for values that are binary or hold newlines; a blank
/// line ends the entry); `None` at the end of input. A message over `max_message` bytes is
/// truncated (as the file source truncates lines).
async fn next_entry<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    max_message: usize,
) -> std::io::Result<Option<Entry>> {
    // Field names are short; a text value is capped like a message.
    let cap = max_message.saturating_add(256);
    let mut e = Entry::default();
    let mut any = false;
    loop {
        let Some(line) = capped_line(r, cap).await? else {
            return Ok(any.then_some(e));
        };
        if line.is_empty() {
            if any {
                return Ok(Some(e));
            }
            continue;
        }
        any = true;
        // A text field's value stays in the line read; only the fields kept are copied.
        let binary;
        let (field, value): (&[u8], &[u8]) = match memchr::memchr(b'=', &line) {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => {
                let mut len = [0u8; 8];
                r.read_exact(&mut len).await?;
                let len = u64::from_le_bytes(len);
                let keep = len.min(cap as u64) as usize;
                let mut value = vec![0u8; keep];
                r.read_exact(&mut value).await?;
                // What is over the cap is read and dropped, then the closing `\n`.
                let mut rest = len - keep as u64;
                let mut sink = [0u8; 8192];
                while rest > 0 {
                    let n = rest.min(sink.len() as u64) as usize;
                    r.read_exact(&mut sink[..n]).await?;
                    rest -= n as u64;
                }
                let mut nl = [0u8; 1];
                r.read_exact(&mut nl).await?;
                binary = value;
                (&line[..], &binary[..])
            }
        };
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        match field {
            b"__CURSOR" => e.cursor = Some(text(value)),
            b"__REALTIME_TIMESTAMP" => {
                e.realtime_us = std::str::from_utf8(value).ok().and_then(|t| t.parse().ok())
            }
            b"_SYSTEMD_UNIT" => e.unit = Some(text(value)),
            b"SYSLOG_IDENTIFIER" => e.identifier = Some(text(value)),
            b"MESSAGE" => e.message = Some(value[..value.len().min(max_message)].to_vec()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn export_entries_parse_text_and_binary_fields() {
        let mut input = Vec::new();
        input.extend_from_slice(b"__CURSOR=c1\n__REALTIME_TIMESTAMP=1790000000123456\n_SYSTEMD_UNIT=nginx.service\nMESSAGE=hello\n\n");
        input.extend_from_slice(b"__CURSOR=c2\nSYSLOG_IDENTIFIER=cron\nMESSAGE\n");
        let bin = b"two\nlines\xff\0";
        input.extend_from_slice(&(bin.len() as u64).to_le_bytes());
        input.extend_from_slice(bin);
        input.extend_from_slice(b"\n_PID=7\n\n");
        input.extend_from_slice(b"__CURSOR=c3\nMESSAGE=0123456789\n\n");
        let mut r = BufReader::new(&input[..]);
        let a = next_entry(&mut r, 8).await.expect("io").expect("first");
        assert_eq!(
            a,
            Entry {
                cursor: Some("c1".into()),
                unit: Some("nginx.service".into()),
                identifier: None,
                message: Some(b"hello".to_vec()),
                realtime_us: Some(1_790_000_000_123_456),
            }
        );
        let b = next_entry(&mut r, 64).await.expect("io").expect("second");
        assert_eq!(b.message.as_deref(), Some(&bin[..]));
        assert_eq!(b.identifier.as_deref(), Some("cron"));
        let c = next_entry(&mut r, 8).await.expect("io").expect("third");
        assert_eq!(c.message.as_deref(), Some(&b"01234567"[..]), "truncated");
        assert!(next_entry(&mut r, 8).await.expect("io").is_none());
        // Cut inside a binary value: an error, not a hang or a panic.
        let cut = &input[..input.len() / 2 + 20];
        let mut r = BufReader::new(cut);
        let mut outcomes = 0;
        while let Ok(Some(_)) = next_entry(&mut r, 64).await {
            outcomes += 1;
            assert!(outcomes < 10);
        }
    }

    #[test]
    fn the_cursor_moves_only_past_entries_acknowledged_with_all_before_them() {
        let mut p = Progress {
            queue: VecDeque::new(),
            acked: vec![0, 5],
            passed: vec![0, 5],
            names: vec!["a".into(), "b".into()],
            state: State::default(),
            dirty: false,
        };
        // The third entry keeps no cursor (only some do): passing it moves nothing saved.
        for (s, line, c) in [
            (0, 0, Some("c1")),
            (1, 5, Some("c2")),
            (0, 1, None),
            (1, 6, Some("c4")),
        ] {
            p.queue.push_back((s, line, c.map(Into::into)));
        }
        p.acked(1, 7); // b acknowledged both its lines; a none yet
        assert_eq!(p.state.cursor, None);
        p.acked(0, 1);
        assert_eq!(p.state.cursor.as_deref(), Some("c2"));
        assert_eq!(p.state.next.get("a"), Some(&1));
        assert_eq!(p.state.next.get("b"), Some(&6));
        p.acked(0, 2);
        assert_eq!(p.state.cursor.as_deref(), Some("c4"));
        assert_eq!(p.state.next.get("a"), Some(&2));
        assert_eq!(p.state.next.get("b"), Some(&7));
        assert!(p.queue.is_empty() && p.dirty);
    }
}
