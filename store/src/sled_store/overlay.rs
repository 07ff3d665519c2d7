//! The writers' overlay: index entries written since the last commit (pending), and the last
//! few thousand committed ones, read before sled.

use super::*;

/// Index entries writers read before sled: those written since the last commit, and the
/// last few thousand committed ones. Readers see sled only, which holds everything
/// acknowledged: an ack waits for the commit that applies the pending entries.
///
/// Pending: one sled `apply_batch` per commit instead of one per request (sled 0.34 rolls,
/// writes and `sync_file_range`s its log buffer on every batch). Recent: the same values sled
/// has, kept because the next write to a file reads its generation's metadata and last
/// bucket again — sled point reads were 6 % of the aggregator's CPU under a fleet of agents.
/// Anything that changes sled other than a commit (a retention drop, compaction) forgets
/// the recent entries ([`Inner::forget_recent`]) before it lets writers near them again.
#[derive(Default)]
pub(crate) struct Overlay {
    pub(super) pending: HashMap<Vec<u8>, Vec<u8>>,
    pub(super) recent: HashMap<Vec<u8>, Vec<u8>>,
    pub(super) older: HashMap<Vec<u8>, Vec<u8>>,
}

/// `Overlay::recent` moves to `older` (and the old `older` goes) past this many entries.
const RECENT_ENTRIES: usize = 4096;

impl Overlay {
    pub(super) fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.pending
            .get(key)
            .or_else(|| self.recent.get(key))
            .or_else(|| self.older.get(key))
    }

    /// Remembers entries a commit has just applied to sled.
    pub(super) fn committed(&mut self, entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) {
        for (k, v) in entries {
            if self.recent.len() >= RECENT_ENTRIES {
                self.older = std::mem::take(&mut self.recent);
            }
            self.recent.insert(k, v);
        }
    }
}

pub(crate) type Pending = Arc<Mutex<Overlay>>;
