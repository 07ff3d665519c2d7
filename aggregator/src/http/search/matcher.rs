//! Matching a block of lines: the pattern over the whole block, each hit checked on its own
//! line, with the context lines before and after — or, with `events`, the whole event the
//! match is in (from the line that starts it to the next start, at most `MAX_EVENT_LINES`
//! each way).

use super::*;

/// A block of lines to match: bytes, and where each line lies in them.
pub(super) struct View<'a> {
    pub(super) data: &'a [u8],
    pub(super) lines: &'a [RawLine],
    /// Lines are separated by `\n` (a rendered chunk), not by the store's own bytes.
    pub(super) newline_separated: bool,
}

impl View<'_> {
    fn content(&self, i: usize) -> &[u8] {
        let l = self.lines[i];
        &self.data[l.start..l.end]
    }
}

/// One line kept for context before a match.
pub(super) struct Kept {
    pub(super) number: u64,
    pub(super) content: Vec<u8>,
    pub(super) partial: bool,
    pub(super) ts: Option<u64>,
}

impl Scan<'_> {
    /// Matches one block of lines.
    pub(super) fn block(&mut self, v: &View<'_>, place: &Place<'_>) -> Result<Truncated, Stop> {
        let n = v.lines.len();
        // The pattern runs over the whole block when nothing in it depends on what
        // surrounds a line (`^`, `$`, `\b`) or the lines are separated by `\n` as in a file;
        // otherwise line by line.
        let whole = v.newline_separated || self.q.look_free;
        let mut i = 0usize;
        while i < n {
            // An event owed after a match ends where the next one starts.
            if self.after > 0 && self.starts_event(v.content(i)) {
                self.after = 0;
            }
            if self.after > 0 || !whole {
                // Owed context, or line-by-line matching.
                if self.q.matcher.is_match(v.content(i)) && self.passes(v.content(i), v.lines[i].ts)
                {
                    self.hit(v, i, place)?;
                    if self.matches >= self.q.limit {
                        return Ok(Truncated::Limit);
                    }
                } else if self.after > 0 {
                    let l = v.lines[i];
                    self.emit(place, l.number, v.content(i), l.partial, l.ts, true)?;
                    self.after -= 1;
                }
                i += 1;
                continue;
            }
            let Some(m) = self.q.matcher.find_at(v.data, v.lines[i].start) else {
                break;
            };
            // The line the match starts in (or the next one, if it starts between lines);
            // the match counts only within its line.
            let at = i + v.lines[i..].partition_point(|l| l.end < m.start());
            if at >= n {
                break;
            }
            if self.q.matcher.is_match(v.content(at)) && self.passes(v.content(at), v.lines[at].ts)
            {
                self.hit(v, at, place)?;
                if self.matches >= self.q.limit {
                    return Ok(Truncated::Limit);
                }
            }
            i = at + 1;
        }
        // Keep the block's last lines for the context of a match early in the next one
        // (with events: the lines since the last event start, which a match early in the
        // next block belongs with).
        let keep = self.kept_before();
        if keep > 0 {
            let from = match &self.q.events {
                Some(start) => match (0..n).rev().find(|&j| start.is_match(v.content(j))) {
                    Some(s) => {
                        self.ring.clear();
                        s.max(n.saturating_sub(keep))
                    }
                    None => n.saturating_sub(keep),
                },
                None => n.saturating_sub(keep),
            };
            for j in from..n {
                let l = v.lines[j];
                self.ring.push_back(Kept {
                    number: l.number,
                    content: v.content(j).to_vec(),
                    partial: l.partial,
                    ts: l.ts,
                });
                if self.ring.len() > keep {
                    self.ring.pop_front();
                }
            }
        }
        Ok(Truncated::No)
    }

    /// Whether a line the pattern matched is a match: inside the window and through every
    /// further line filter.
    fn passes(&self, content: &[u8], ts: Option<u64>) -> bool {
        self.in_window(ts) && self.q.also.iter().all(|f| f.admits(content))
    }

    /// Whether a line received at `ts` is inside the search's `since`/`until`: exact to the
    /// line. A line stored before lines had a time passes (its bucket's receive times
    /// already did).
    fn in_window(&self, ts: Option<u64>) -> bool {
        match (self.q.window, ts) {
            (Some((since, until)), Some(t)) => since <= t && t <= until,
            _ => true,
        }
    }

    /// Lines kept before a match: `context`, or an event's lines before its match.
    fn kept_before(&self) -> usize {
        if self.q.events.is_some() {
            super::query::MAX_EVENT_LINES
        } else {
            self.q.context
        }
    }

    /// Whether `line` begins an event (never, without `events`).
    fn starts_event(&self, line: &[u8]) -> bool {
        self.q.events.as_ref().is_some_and(|r| r.is_match(line))
    }

    /// Writes a match at line `i` of `v`, with the context before it (or the lines of its
    /// event before it).
    pub(super) fn hit(&mut self, v: &View<'_>, i: usize, place: &Place<'_>) -> Result<(), Stop> {
        let n = self.kept_before();
        let number = v.lines[i].number;
        if n > 0 {
            // Up to n lines before: from this block, then from the ring. An event's begin
            // at its start line: in this block if it has one before the match.
            let lowest = i.saturating_sub(n);
            let event_start = match &self.q.events {
                Some(start) => (lowest..=i).rev().find(|&j| start.is_match(v.content(j))),
                None => None,
            };
            let here = event_start.unwrap_or(lowest)..i;
            let need_ring = if event_start.is_some() {
                0
            } else {
                n - here.len()
            };
            let from_ring: Vec<(u64, Vec<u8>, bool, Option<u64>)> = self
                .ring
                .iter()
                .rev()
                .take(need_ring)
                .map(|k| (k.number, k.content.clone(), k.partial, k.ts))
                .collect();
            for (num, text, partial, ts) in from_ring.into_iter().rev() {
                if self.written.is_none_or(|w| num > w) && num < number {
                    self.emit(place, num, &text, partial, ts, true)?;
                }
            }
            for j in here {
                let l = v.lines[j];
                if self.written.is_none_or(|w| l.number > w) {
                    self.emit(place, l.number, v.content(j), l.partial, l.ts, true)?;
                }
            }
        }
        self.matches += 1;
        let l = v.lines[i];
        self.emit(place, number, v.content(i), l.partial, l.ts, false)?;
        self.after = n;
        Ok(())
    }
}
