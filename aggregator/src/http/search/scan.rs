//! The scan: hosts, then files, then generations, several at once with their output forwarded
//! in order, within a shared budget and the limit.

use super::*;

/// One search in progress.
/// Where a scan's output goes: the response body, or (for a worker scanning a generation
/// ahead of the one being sent) its own bounded channel, read in order by the main scan.
pub(super) enum Sink<'a> {
    Body(&'a StreamSender),
    Part {
        tx: std::sync::mpsc::SyncSender<Part>,
        stop: &'a AtomicBool,
        ahead: &'a Ahead,
        /// The generation's place in the batch: the one being sent never waits for `ahead`.
        index: usize,
    },
}

/// The output bytes held by the workers of one batch, and which generation is being sent.
pub(super) struct Ahead {
    state: std::sync::Mutex<(usize, usize)>,
    changed: std::sync::Condvar,
}

impl Ahead {
    pub(super) fn new() -> Self {
        Ahead {
            state: std::sync::Mutex::new((0, 0)),
            changed: std::sync::Condvar::new(),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, (usize, usize)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until generation `index` may hold `n` more bytes: at once for the generation
    /// being sent (so the scan always progresses) or when nothing is held, otherwise while
    /// [`AHEAD_BYTES`] would be exceeded. False once the scan stops.
    pub(super) fn reserve(&self, index: usize, n: usize, stop: &AtomicBool) -> bool {
        let mut s = self.lock();
        loop {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            let (held, head) = *s;
            if index <= head || held == 0 || held + n <= AHEAD_BYTES {
                s.0 += n;
                return true;
            }
            // The stop flag is set without the lock: look again now and then.
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// `n` bytes reserved earlier were forwarded.
    pub(super) fn release(&self, n: usize) {
        let mut s = self.lock();
        s.0 = s.0.saturating_sub(n);
        drop(s);
        self.changed.notify_all();
    }

    /// Generation `index` is now the one being sent.
    pub(super) fn advance(&self, index: usize) {
        self.lock().1 = index;
        self.changed.notify_all();
    }
}

/// What a worker sends for its generation.
pub(super) enum Part {
    /// Rendered results, and where each match line ends in them (for the limit's cut).
    Out(Vec<u8>, Vec<usize>),
    /// The generation is done, and how it ended (what it read is counted apart).
    Done {
        outcome: Result<Truncated, StoreError>,
    },
}

pub(super) struct Scan<'a> {
    pub(super) q: &'a Query,
    pub(super) sink: Sink<'a>,
    pub(super) rt: &'a tokio::runtime::Handle,
    /// Where in `out` each match line ends (workers only).
    pub(super) match_ends: Vec<usize>,
    pub(super) text: bool,
    pub(super) started: Instant,
    pub(super) out: Vec<u8>,
    pub(super) matches: u64,
    pub(super) lines: u64,
    pub(super) bytes: u64,
    pub(super) skipped: u64,
    /// The last `context` lines seen before the current chunk (same generation).
    pub(super) ring: VecDeque<Kept>,
    /// Lines of context still owed after the last match.
    pub(super) after: usize,
    /// The highest line number already written in this generation (so context never
    /// repeats a line).
    pub(super) written: Option<u64>,
    /// Block buffers reused from one generation to the next.
    pub(super) pool: Vec<Block>,
    /// The client stopped reading for longer than the stall guard.
    pub(super) stalled: bool,
}

impl<'a> Scan<'a> {
    pub(super) fn new(q: &'a Query, tx: &'a StreamSender, rt: &'a tokio::runtime::Handle) -> Self {
        Self::with_sink(q, Sink::Body(tx), rt, Instant::now())
    }

    pub(super) fn with_sink(
        q: &'a Query,
        sink: Sink<'a>,
        rt: &'a tokio::runtime::Handle,
        started: Instant,
    ) -> Self {
        Scan {
            q,
            sink,
            rt,
            match_ends: Vec::new(),
            text: q.text,
            started,
            out: Vec::with_capacity(OUT_BYTES + 4096),
            matches: 0,
            lines: 0,
            bytes: 0,
            skipped: 0,
            ring: VecDeque::new(),
            after: 0,
            written: None,
            pool: Vec::new(),
            stalled: false,
        }
    }

    pub(super) fn gone(&self) -> bool {
        match &self.sink {
            Sink::Body(tx) => tx.sender().is_closed(),
            Sink::Part { stop, .. } => stop.load(Ordering::SeqCst),
        }
    }

    pub(super) fn expired(&self) -> bool {
        self.started.elapsed() >= self.q.deadline
    }

    /// Runs the search: the walk, then (ordered by time) the results kept; returns why it
    /// stopped.
    pub(super) fn run(&mut self, store: &Arc<dyn Store>) -> Result<Truncated, Stop> {
        let walked = self.walk(store)?;
        self.ranked_out(walked)
    }

    /// Walks hosts → files → generations and scans each; returns why it stopped.
    fn walk(&mut self, store: &Arc<dyn Store>) -> Result<Truncated, Stop> {
        let hosts: Vec<String> = match &self.q.host {
            NameFilter::Exact(h) => vec![h.clone()],
            NameFilter::Set(names) => names.iter().cloned().collect(),
            filter => {
                let mut all = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let page = self
                        .rt
                        .block_on(store.hosts_page(after.as_deref(), PAGE))
                        .map_err(Stop::Store)?;
                    let done = page.len() < PAGE;
                    after = page.last().cloned();
                    all.extend(page.into_iter().filter(|h| filter.admits(h)));
                    if done || after.is_none() {
                        break;
                    }
                }
                all
            }
        };
        for host in &hosts {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .rt
                    .block_on(store.files_page(
                        Some(host),
                        after.as_deref().map(|f| (host.as_str(), f)),
                        PAGE,
                    ))
                    .map_err(Stop::Store)?;
                let done = page.len() < PAGE;
                after = page.last().map(|f| f.file.clone());
                let targets: Vec<(&str, &GenerationInfo)> = page
                    .iter()
                    .filter(|f| self.q.file.admits(&f.file))
                    .filter(|f| {
                        self.q
                            .pairs
                            .as_ref()
                            .is_none_or(|p| p.contains(&(host.clone(), f.file.clone())))
                    })
                    .flat_map(|f| f.generations.iter().map(move |g| (f.file.as_str(), g)))
                    .filter(|(_, g)| self.wanted(g))
                    .collect();
                let t = self.batch(store, host, &targets)?;
                if t != Truncated::No {
                    return Ok(t);
                }
                if done || after.is_none() {
                    break;
                }
            }
        }
        Ok(Truncated::No)
    }

    /// Scans generations in order. Several at once, one per core: each worker renders a
    /// generation into its own bounded channel (a worker ahead of the one being sent waits
    /// once it holds [`PART_QUEUE`] pieces), and this scan forwards them in order, cutting at
    /// the limit. A lone generation is scanned here.
    pub(super) fn batch(
        &mut self,
        store: &Arc<dyn Store>,
        host: &str,
        targets: &[(&str, &GenerationInfo)],
    ) -> Result<Truncated, Stop> {
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_WORKERS)
            .min(targets.len());
        if workers <= 1 {
            for (file, g) in targets {
                let place = Place {
                    host,
                    file,
                    generation: &g.name,
                };
                let t = self.generation(store, g, &place)?;
                if t != Truncated::No {
                    return Ok(t);
                }
            }
            return Ok(Truncated::No);
        }
        let stop = AtomicBool::new(false);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut receivers = Vec::with_capacity(targets.len());
        let mut senders = Vec::with_capacity(targets.len());
        for _ in targets {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Part>(PART_QUEUE);
            senders.push(Some(tx));
            receivers.push(rx);
        }
        let senders = std::sync::Mutex::new(senders);
        let ahead = Ahead::new();
        // What every worker read, counted as it ends however it ends: when the limit cuts
        // the search, the generations being scanned never report done (the summary said
        // 0 lines scanned, issue 29.8).
        // (Ordered by time, matches too: they are kept, not forwarded with their ends.)
        let scanned = [const { std::sync::atomic::AtomicU64::new(0) }; 4];
        let (q, rt, started) = (self.q, self.rt, self.started);
        let result = std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((file, g)) = targets.get(i) else {
                        return;
                    };
                    let Some(part) = senders
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get_mut(i)
                        .and_then(Option::take)
                    else {
                        return;
                    };
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let sink = Sink::Part {
                        tx: part.clone(),
                        stop: &stop,
                        ahead: &ahead,
                        index: i,
                    };
                    let mut w = Scan::with_sink(q, sink, rt, started);
                    let place = Place {
                        host,
                        file,
                        generation: &g.name,
                    };
                    let outcome = w.generation(store, g, &place);
                    let ranked = if q.ranked.is_some() { w.matches } else { 0 };
                    for (total, n) in scanned.iter().zip([w.lines, w.bytes, w.skipped, ranked]) {
                        total.fetch_add(n, Ordering::SeqCst);
                    }
                    let outcome = match outcome {
                        Ok(t) => Ok(t),
                        Err(Stop::Gone) => return,
                        Err(Stop::Store(e)) => Err(e),
                    };
                    if !w.flush() {
                        return;
                    }
                    let _ = part.send(Part::Done { outcome });
                });
            }
            let result = self.merge(&receivers, &ahead);
            stop.store(true, Ordering::SeqCst);
            ahead.advance(usize::MAX);
            drop(receivers);
            result
        });
        let [lines, bytes, skipped, ranked] = scanned.map(std::sync::atomic::AtomicU64::into_inner);
        self.matches += ranked;
        self.lines += lines;
        self.bytes += bytes;
        self.skipped += skipped;
        result
    }

    /// Forwards the workers' parts in generation order; stops at the limit, the time limit,
    /// a store error, or a gone client.
    pub(super) fn merge(
        &mut self,
        receivers: &[std::sync::mpsc::Receiver<Part>],
        ahead: &Ahead,
    ) -> Result<Truncated, Stop> {
        for (i, rx) in receivers.iter().enumerate() {
            ahead.advance(i);
            loop {
                if self.gone() {
                    return Err(Stop::Gone);
                }
                let Ok(part) = rx.recv() else {
                    // A worker stopped without finishing: only when the scan is ending.
                    return Err(Stop::Gone);
                };
                match part {
                    Part::Out(data, ends) => {
                        ahead.release(data.len());
                        let left = self.q.limit - self.matches;
                        if ends.len() as u64 >= left {
                            let cut = ends[left as usize - 1];
                            self.out.extend_from_slice(&data[..cut]);
                            self.matches = self.q.limit;
                            return Ok(Truncated::Limit);
                        }
                        self.matches += ends.len() as u64;
                        self.out.extend_from_slice(&data);
                        if self.out.len() >= OUT_BYTES && !self.flush() {
                            return Err(Stop::Gone);
                        }
                    }
                    Part::Done { outcome } => {
                        match outcome.map_err(Stop::Store)? {
                            Truncated::No => break,
                            // A worker's own limit is the global one: the cut above
                            // happened first if it was reached here.
                            Truncated::Limit | Truncated::Memory => break,
                            Truncated::Time => return Ok(Truncated::Time),
                        }
                    }
                }
            }
        }
        Ok(Truncated::No)
    }

    /// Whether a generation can hold a wanted line: the right name, and written within the
    /// window at all.
    pub(super) fn wanted(&self, g: &GenerationInfo) -> bool {
        if self.q.generation.as_deref().is_some_and(|n| n != g.name) {
            return false;
        }
        let ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        match self.q.window {
            // Pushed lines carry their sender's times, which may lie before the generation
            // was first written or after it was last: only its buckets' spans can tell.
            Some(_) if crate::http::push::carries_sender_times(&g.name) => true,
            Some((since, until)) => ms(g.first_write) <= until && ms(g.last_write) >= since,
            None => true,
        }
    }
}
