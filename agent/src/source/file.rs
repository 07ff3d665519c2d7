//! The `file` source: discovery of files matching the configured globs.
//!
//! notify (inotify) watches the literal root directory of every pattern — directories, not
//! files, so thousands of files cost a handful of watches — and a poll every
//! `poll_interval` catches what events miss (overflow, filesystems without inotify). Each
//! path is checked by identity (device + inode):
//! - a new identity at a path starts a pipeline (resuming its checkpoint if it has one);
//! - a different identity at a known path is a rotation: the old pipeline drains, a new one
//!   starts;
//! - a vanished path tells its pipeline to drain and finish (deleted files are held only
//!   until drained and acknowledged);
//! - an identity already being tailed under another path is not shipped twice.
//!
//! At start, checkpoints whose file is no longer at its path are looked for by identity
//! beside it: a file rotated while the agent was stopped is finished, then the new one read.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Source;
use crate::checkpoint::FileId;
use crate::config::SourceSettings;
use crate::generation;
use crate::open_file::{open_identity, open_regular};
use crate::pipeline::Pipelines;
use crate::tailer::{Control, Start};

/// Events buffered from notify; past this the next poll rescans everything.
const EVENT_QUEUE: usize = 8192;

pub struct FileSource {
    sources: Vec<SourceSettings>,
    poll_interval: Duration,
    tracking: Tracking,
}

/// How many files are tailed at once, and how long a gone file's checkpoint is kept.
#[derive(Debug, Clone, Copy)]
pub struct Tracking {
    /// `limits.max_tracked_files`: files found past it wait for a free slot.
    pub max_files: usize,
    /// `forget_after`.
    pub forget_after: Duration,
}

/// Waiting paths remembered at most (the gauge counts them; the next scan finds the rest).
const WAITING_REMEMBERED: usize = 100_000;

impl FileSource {
    pub fn new(sources: Vec<SourceSettings>, poll_interval: Duration, tracking: Tracking) -> Self {
        FileSource {
            sources,
            poll_interval,
            tracking,
        }
    }
}

/// A path being tailed.
struct Tracked {
    id: FileId,
    /// Size at the last check; a poll wakes the tailer only when it changed.
    len: u64,
    ctl: Arc<Control>,
    /// The options its pipeline runs with: a reload that changes them restarts it.
    options: Arc<crate::config::PipelineOptions>,
}

/// What identifies a directory entry that was refused.
type RefusedEntry = (u64, u64, u32, i64, i64);

/// What is at `path` now (the link itself, not its target): its device, inode, mode and
/// change time.
fn entry_of(path: &Path) -> RefusedEntry {
    std::fs::symlink_metadata(path)
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino(), m.mode(), m.ctime(), m.ctime_nsec())
        })
        .unwrap_or_default()
}

struct Discovery {
    sources: Vec<SourceSettings>,
    pipes: Pipelines,
    by_path: HashMap<PathBuf, Tracked>,
    /// Every identity with a running pipeline (including rotated files being drained).
    active: HashMap<FileId, Arc<Control>>,
    watcher: Option<notify::RecommendedWatcher>,
    /// Watched roots, with the directory's identity when its watch was set.
    watched: Vec<(PathBuf, FileId)>,
    /// Roots whose watch failed (reported once; retried every poll).
    watch_failed: std::collections::HashSet<PathBuf>,
    /// Paths not to ship (unacceptable names, symlinks out of bounds), logged once, with
    /// the directory entry that was refused (device, inode, mode, change time).
    refused: HashMap<PathBuf, RefusedEntry>,
    /// Files refused at some point and not shipped since: their first start is logged, so
    /// the error that said "not shipping" has its answer in the log.
    once_refused: std::collections::HashSet<PathBuf>,
    /// Directories the last scan could not read (reported when they became so).
    unreadable: std::collections::HashSet<PathBuf>,
    /// In the scan at start (or after a reload): files found now start at `read_from`.
    starting: bool,
    tracking: Tracking,
    /// Files found while `max_tracked_files` were tailed: started by a later scan.
    waiting: std::collections::HashSet<PathBuf>,
    /// The limit was reported since files last stopped waiting.
    limit_reported: bool,
    /// When each checkpoint with no pipeline was first seen without its file.
    gone_since: HashMap<FileId, std::time::Instant>,
}

impl Source for FileSource {
    fn run(self: Box<Self>, pipes: Pipelines) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let (tx, mut rx) = mpsc::channel::<PathBuf>(EVENT_QUEUE);
            let overflow = Arc::new(AtomicBool::new(false));
            let overflow2 = overflow.clone();
            let watcher =
                notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                    // Reads are not changes (ours included: listing a directory opens it);
                    // reacting to them would feed back into more reads.
                    Ok(ev) if ev.kind.is_access() => {}
                    Ok(ev) => {
                        for p in ev.paths {
                            if tx.try_send(p).is_err() {
                                overflow2.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "file watch error; relying on polling");
                        overflow2.store(true, Ordering::Relaxed);
                    }
                });
            let watcher = match watcher {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch files; polling only");
                    None
                }
            };
            let mut d = Discovery {
                sources: self.sources,
                pipes,
                by_path: HashMap::new(),
                active: HashMap::new(),
                watcher,
                watched: Vec::new(),
                watch_failed: std::collections::HashSet::new(),
                refused: HashMap::new(),
                once_refused: std::collections::HashSet::new(),
                unreadable: std::collections::HashSet::new(),
                starting: true,
                tracking: self.tracking,
                waiting: std::collections::HashSet::new(),
                limit_reported: false,
                gone_since: HashMap::new(),
            };
            let mut shutdown = d.pipes.shutdown.clone();
            let mut reloaded = d.pipes.reloaded.clone();
            reloaded.mark_unchanged();
            d.watch_roots();
            d.scan().await;
            d.starting = false;
            d.resume_orphans().await;
            let mut tick = tokio::time::interval(self.poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    Some(path) = rx.recv() => {
                        d.on_event(path).await;
                        // Drain what else is queued without waiting.
                        while let Ok(p) = rx.try_recv() {
                            d.on_event(p).await;
                        }
                    }
                    _ = tick.tick() => {
                        overflow.store(false, Ordering::Relaxed);
                        d.watch_roots();
                        // Reap first: a file whose pipeline a reload drained restarts now.
                        d.reap();
                        d.scan().await;
                        // Not at start: a file rotated while the agent was stopped is found
                        // beside its path (`resume_orphans`) after the first scan.
                        d.forget_gone();
                    }
                    Ok(()) = reloaded.changed() => {
                        let all = reloaded.borrow_and_update().clone();
                        let mine = all.iter().filter(|s| s.kind == "file").cloned().collect();
                        d.reconfigure(mine).await;
                    }
                    _ = shutdown.changed() => break,
                }
                if *shutdown.borrow() {
                    break;
                }
            }
        })
    }
}

/// Every file the sources match now, in order, with its source index (first match wins).
pub fn expand(sources: &[SourceSettings]) -> Vec<(PathBuf, usize)> {
    expand_reporting(sources).files
}

/// What a scan found: files with their source index, and directories it could not read.
pub struct Expanded {
    pub files: Vec<(PathBuf, usize)>,
    /// Directories under the sources' roots the agent may not read: their files are not
    /// shipped, and an operator must hear of it.
    pub unreadable: Vec<PathBuf>,
}

/// [`expand`], and the directories it could not read.
pub fn expand_reporting(sources: &[SourceSettings]) -> Expanded {
    let mut out = Vec::new();
    let mut unreadable = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, s) in sources.iter().enumerate() {
        for root in &s.roots {
            for p in walk(root, s, &mut unreadable) {
                if seen.insert(p.clone()) {
                    out.push((p, i));
                }
            }
        }
    }
    unreadable.sort();
    unreadable.dedup();
    Expanded {
        files: out,
        unreadable,
    }
}

/// Files under `root` matching source `s`; directories refused to us go to `unreadable`
/// (a root that does not exist yet is not an error: it may appear later).
fn walk(root: &Path, s: &SourceSettings, unreadable: &mut Vec<PathBuf>) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .max_depth(max_depth(root, s))
        .into_iter()
        .filter_map(|e| match e {
            Ok(e) => Some(e),
            Err(e) => {
                let denied = e
                    .io_error()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied);
                if let (true, Some(p)) = (denied, e.path()) {
                    unreadable.push(p.to_path_buf());
                }
                None
            }
        })
        .filter(|e| !e.file_type().is_dir())
        .map(walkdir::DirEntry::into_path)
        .filter(|p| matches(s, p))
        .collect()
}

fn matches(s: &SourceSettings, p: &Path) -> bool {
    s.include.is_match(p) && !s.exclude.is_match(p)
}

/// How deep below `root` a pattern can match: unbounded with `**`.
fn max_depth(root: &Path, s: &SourceSettings) -> usize {
    let root_len = root.components().count();
    s.patterns
        .iter()
        .filter(|p| Path::new(p).starts_with(root))
        .map(|p| {
            if p.contains("**") {
                usize::MAX
            } else {
                Path::new(p).components().count().saturating_sub(root_len)
            }
        })
        .max()
        .unwrap_or(1)
}

impl Discovery {
    /// Watches each root that exists (roots created later are picked up by the poll). A root
    /// deleted (and perhaps created again) since it was watched has lost its watch with the
    /// directory: it is watched again as it is now.
    fn watch_roots(&mut self) {
        let Some(w) = &mut self.watcher else { return };
        self.watched.retain(|(root, id)| {
            let same = std::fs::metadata(root).is_ok_and(|m| m.is_dir() && FileId::of(&m) == *id);
            if !same {
                let _ = w.unwatch(root);
            }
            same
        });
        for s in &self.sources {
            for root in &s.roots {
                if self.watched.iter().any(|(r, _)| r == root) {
                    continue;
                }
                let Some(id) = std::fs::metadata(root)
                    .ok()
                    .filter(std::fs::Metadata::is_dir)
                    .map(|m| FileId::of(&m))
                else {
                    continue;
                };
                let mode = if max_depth(root, s) > 1 {
                    RecursiveMode::Recursive
                } else {
                    RecursiveMode::NonRecursive
                };
                match w.watch(root, mode) {
                    Ok(()) => {
                        self.watched.push((root.clone(), id));
                        self.watch_failed.remove(root);
                    }
                    // Tried again every poll; said once.
                    Err(e) => {
                        if self.watch_failed.insert(root.clone()) {
                            tracing::warn!(root = %root.display(), error = %e, "cannot watch; polling it");
                        }
                    }
                }
            }
        }
    }

    fn source_of(&self, p: &Path) -> Option<usize> {
        self.sources.iter().position(|s| matches(s, p))
    }

    async fn on_event(&mut self, path: PathBuf) {
        if path.is_dir() {
            // A directory appeared (or changed): look inside for matching files, off the
            // runtime's workers as the full scan does.
            let sources: Vec<SourceSettings> = self
                .sources
                .iter()
                .filter(|s| s.roots.iter().any(|r| path.starts_with(r)))
                .cloned()
                .collect();
            let dir = path.clone();
            let found: Vec<PathBuf> = tokio::task::spawn_blocking(move || {
                sources
                    .iter()
                    .flat_map(|s| walk(&dir, s, &mut Vec::new()))
                    .collect()
            })
            .await
            .unwrap_or_default();
            for p in found {
                self.check(&p, true).await;
            }
            return;
        }
        self.check(&path, true).await;
    }

    /// Full scan: new files, grown files, rotations, deletions.
    async fn scan(&mut self) {
        // The walk (every directory under every root) runs off the runtime's workers: a
        // large tree, or a directory on a mount that hangs, must not hold one of them.
        let sources = self.sources.clone();
        let Ok(Expanded { files, unreadable }) =
            tokio::task::spawn_blocking(move || expand_reporting(&sources)).await
        else {
            tracing::warn!("the scan of the sources' directories failed; trying at the next poll");
            return;
        };
        // Once per directory while it stays unreadable, again if it is lost again later.
        for dir in &unreadable {
            if !self.unreadable.contains(dir) {
                tracing::error!(directory = %dir.display(), "permission denied: cannot read this directory, files in it are not shipped");
            }
        }
        self.unreadable = unreadable.into_iter().collect();
        self.waiting.clear();
        for (p, _) in files {
            self.check(&p, false).await;
        }
        self.pipes
            .metrics
            .files_waiting
            .set(self.waiting.len() as i64);
        if self.waiting.is_empty() {
            self.limit_reported = false;
        }
        let known: Vec<PathBuf> = self.by_path.keys().cloned().collect();
        for p in known {
            if !p.exists() {
                self.check(&p, false).await;
            }
        }
    }

    /// Compares what is at `path` with what is tracked there and acts on the difference.
    async fn check(&mut self, path: &Path, event: bool) {
        let meta = std::fs::metadata(path)
            .ok()
            .filter(std::fs::Metadata::is_file);
        let Some(meta) = meta else {
            if let Some(t) = self.by_path.remove(path) {
                tracing::info!(file = %path.display(), "file deleted or renamed away; draining it");
                self.retire(&t);
            }
            return;
        };
        let id = FileId::of(&meta);
        if let Some(t) = self.by_path.get_mut(path) {
            if t.id == id {
                if event || t.len != meta.len() {
                    t.len = meta.len();
                    t.ctl.wake.notify_one();
                }
                return;
            }
            tracing::info!(file = %path.display(), "file rotated; draining the old one, following the new one");
            if let Some(t) = self.by_path.remove(path) {
                self.retire(&t);
            }
        }
        let Some(source) = self.source_of(path) else {
            return;
        };
        if let Some(ctl) = self.active.get(&id) {
            // Already tailed under another name (renamed into a watched name): once is enough.
            ctl.wake.notify_one();
            return;
        }
        // Only here, before a pipeline starts: a poll of thousands of tracked files costs no
        // extra `lstat` per file.
        if !self.may_ship(path) {
            return;
        }
        if self.active.len() >= self.tracking.max_files {
            // Nothing tracked is dropped for it: this file waits for a slot, and a scan after
            // a tracked one finishes starts it (from its checkpoint, or its first line).
            if self.waiting.len() < WAITING_REMEMBERED {
                self.waiting.insert(path.to_path_buf());
            }
            if !self.limit_reported {
                tracing::warn!(
                    limit = self.tracking.max_files,
                    file = %path.display(),
                    "limits.max_tracked_files files are tailed; newly found files wait until one finishes"
                );
                self.limit_reported = true;
            }
            self.pipes
                .metrics
                .files_waiting
                .set(self.waiting.len() as i64);
            return;
        }
        if self.waiting.remove(path) {
            self.pipes
                .metrics
                .files_waiting
                .set(self.waiting.len() as i64);
        }
        self.start(path, source, meta.len()).await;
    }

    /// Removes the checkpoints whose file has been gone (no file of that identity at its
    /// path, no pipeline) for `forget_after`: a file dropped from the config and then
    /// deleted kept its checkpoint for good, one more with every such file.
    fn forget_gone(&mut self) {
        let now = std::time::Instant::now();
        let mut seen = std::collections::HashSet::new();
        for cp in self.pipes.checkpoints.all() {
            if self.active.contains_key(&cp.id)
                || std::fs::metadata(&cp.file).is_ok_and(|m| FileId::of(&m) == cp.id)
            {
                continue;
            }
            seen.insert(cp.id);
            let since = *self.gone_since.entry(cp.id).or_insert(now);
            if now.duration_since(since) >= self.tracking.forget_after {
                tracing::info!(file = %cp.file, after = ?self.tracking.forget_after, "file gone; forgetting its checkpoint");
                self.pipes.checkpoints.remove(cp.id);
                self.pipes.metrics.checkpoints_forgotten.inc();
                seen.remove(&cp.id);
            }
        }
        self.gone_since.retain(|id, _| seen.contains(id));
    }

    /// Whether `path` may be shipped at all: its name must be one the aggregator can take
    /// (refused here, with a clear error, rather than by the server batch after batch), and
    /// a symlink must point inside its source's directories unless `follow_symlinks`.
    fn may_ship(&mut self, path: &Path) -> bool {
        // What is at the path now (the link itself, not its target): a refusal holds only
        // while the same entry is there, so a symlink later replaced by a real file ships.
        // Inode numbers are reused at once (a link deleted and a file created in its place
        // often get the same one), so the entry is its inode, type and change time.
        if self.refused.get(path) == Some(&entry_of(path)) {
            return false;
        }
        self.refused.remove(path);
        let verdict = match path.to_str() {
            None => Err(("name", "the path is not valid UTF-8".to_owned())),
            Some(name) => {
                logship_wire::validate_names("h", name, "g").map_err(|e| ("name", e.to_string()))
            }
        }
        .and_then(|()| self.symlink_allowed(path).map_err(|why| ("symlink", why)));
        match verdict {
            Ok(()) => true,
            Err((reason, why)) => {
                self.refuse(path, reason, &why);
                false
            }
        }
    }

    /// Reports `path` as not shipped, once: it is remembered (bounded) with its directory
    /// entry, so the poll does not log it every interval, and tried again once the entry
    /// changes (a chmod, chown or ACL change moves its change time).
    fn refuse(&mut self, path: &Path, reason: &'static str, why: &str) {
        tracing::error!(file = %path.display(), reason = %why, "not shipping this file");
        self.pipes
            .metrics
            .files_refused
            .get_or_create(&crate::metrics::ReasonLabel { reason })
            .inc();
        if self.refused.len() < 10_000 {
            self.refused.insert(path.to_path_buf(), entry_of(path));
            self.once_refused.insert(path.to_path_buf());
        }
    }

    fn symlink_allowed(&self, path: &Path) -> Result<(), String> {
        if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Ok(());
        }
        let Some(s) = self.source_of(path).map(|i| &self.sources[i]) else {
            return Ok(());
        };
        if s.follow_symlinks {
            return Ok(());
        }
        let target = std::fs::canonicalize(path).map_err(|e| format!("symlink: {e}"))?;
        let inside = s
            .roots
            .iter()
            .any(|r| std::fs::canonicalize(r).is_ok_and(|r| target.starts_with(r)));
        if inside {
            Ok(())
        } else {
            Err(format!(
                "a symlink to {}, outside the source's directories (set follow_symlinks = true to ship it)",
                target.display()
            ))
        }
    }

    /// Takes a reloaded list of sources: files still shipped with the same options keep their
    /// pipelines; the others drain (checkpoints kept) and, if still matched, restart from
    /// their checkpoint once drained; newly matched files start.
    async fn reconfigure(&mut self, sources: Vec<SourceSettings>) {
        self.sources = sources;
        self.refused.clear();
        self.watch_roots();
        let paths: Vec<PathBuf> = self.by_path.keys().cloned().collect();
        for p in paths {
            let same = match self.source_of(&p) {
                Some(i) => {
                    let options = &self.sources[i].options;
                    self.by_path
                        .get(&p)
                        .is_some_and(|t| *t.options == **options)
                        && self.may_ship(&p)
                }
                None => false,
            };
            if same {
                continue;
            }
            if let Some(t) = self.by_path.remove(&p) {
                tracing::info!(file = %p.display(), "no longer shipped as configured; draining it (its checkpoint stays)");
                t.ctl.unwatched.store(true, Ordering::SeqCst);
                t.ctl.wake.notify_one();
            }
        }
        self.starting = true;
        self.scan().await;
        self.starting = false;
    }

    /// Tells a pipeline its path is gone; it drains the file and finishes.
    fn retire(&self, t: &Tracked) {
        if !t.ctl.rotated.swap(true, Ordering::SeqCst) {
            self.pipes.metrics.deleted_held.inc();
        }
        t.ctl.wake.notify_one();
    }

    async fn start(&mut self, path: &Path, source: usize, len: u64) {
        let Ok(permit) = self.pipes.open_files.clone().acquire_owned().await else {
            return;
        };
        let (file, meta) = match open_regular(path) {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                // Every poll would say it again; its permissions changing is what can help.
                self.refuse(path, "permission", &format!("cannot open: {e}"));
                return;
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot open");
                return;
            }
        };
        let id = FileId::of(&meta);
        let name = path.to_string_lossy().into_owned();
        let options = &self.sources[source].options;
        let start = match self.pipes.checkpoints.get(id) {
            Some(cp) => Start::Checkpoint(cp),
            // `read_from` is about what files held when the agent (or a reload) started, as
            // in Fluent Bit and Vector. A file that appears later — a new log, the file
            // logrotate creates — is read from its first line: skipping to its end lost
            // whatever was written before it was found.
            None if self.starting => Start::Fresh(options.read_from),
            None => Start::Fresh(crate::config::ReadFrom::Beginning),
        };
        match self.pipes.start(
            name,
            path.to_path_buf(),
            file,
            permit,
            id,
            start,
            options,
            false,
        ) {
            Ok(ctl) => {
                if self.once_refused.remove(path) {
                    tracing::info!(file = %path.display(), "now shipping this file (refused before)");
                } else {
                    tracing::debug!(file = %path.display(), "tailing");
                }
                self.active.insert(id, ctl.clone());
                self.by_path.insert(
                    path.to_path_buf(),
                    Tracked {
                        id,
                        len,
                        ctl,
                        options: options.clone(),
                    },
                );
            }
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot start tailing"),
        }
    }

    /// Checkpoints whose file is not at its path any more: finish a renamed file found
    /// beside it by identity; forget the rest.
    async fn resume_orphans(&mut self) {
        for cp in self.pipes.checkpoints.all() {
            if self.active.contains_key(&cp.id) {
                continue;
            }
            let dir = Path::new(&cp.file).parent().map(Path::to_path_buf);
            let found = dir
                .and_then(|d| std::fs::read_dir(d).ok())
                .into_iter()
                .flatten()
                .find_map(|e| {
                    let p = e.ok()?.path();
                    let m = std::fs::metadata(&p).ok()?;
                    (m.is_file() && FileId::of(&m) == cp.id).then_some(p)
                });
            let source = self.source_of(Path::new(&cp.file));
            let (Some(p), Some(source)) = (found, source) else {
                tracing::warn!(file = %cp.file, "checkpointed file is gone; lines written after the checkpoint may be lost");
                self.pipes.checkpoints.remove(cp.id);
                continue;
            };
            let Ok(permit) = self.pipes.open_files.clone().acquire_owned().await else {
                return;
            };
            let Some((file, _)) = open_identity(&p, cp.id) else {
                continue;
            };
            if !generation::belongs(&file, cp.id, &cp.generation) {
                self.pipes.checkpoints.remove(cp.id);
                continue;
            }
            tracing::info!(file = %cp.file, found = %p.display(), "finishing a file rotated while the agent was stopped");
            let options = self.sources[source].options.clone();
            let id = cp.id;
            match self.pipes.start(
                cp.file.clone(),
                p,
                file,
                permit,
                id,
                Start::Checkpoint(cp),
                &options,
                true,
            ) {
                Ok(ctl) => {
                    self.pipes.metrics.deleted_held.inc();
                    self.active.insert(id, ctl);
                }
                Err(e) => tracing::warn!(error = %e, "cannot resume rotated file"),
            }
        }
    }

    /// Forgets pipelines that have ended.
    fn reap(&mut self) {
        let metrics = &self.pipes.metrics;
        self.active.retain(|_, ctl| {
            let ended = ctl.exited.load(Ordering::SeqCst);
            if ended && ctl.rotated.load(Ordering::SeqCst) {
                metrics.deleted_held.dec();
            }
            !ended
        });
        self.by_path
            .retain(|_, t| !t.ctl.exited.load(Ordering::SeqCst));
    }
}
