//! Read buffers lent to tailers for one read turn at a time.
//!
//! A tailer that owned its 128 KiB buffer kept it (and every page it ever touched) for as
//! long as its file was watched: with thousands of quiet files that was most of the agent's
//! memory (~90 KB per file). Borrowed from this pool only while reading, buffers cost in
//! proportion to the files being read at once, not to the files being watched.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Bytes of one buffer (what one `pread` asks for). Small: what one read brings in joins
/// the file's chunk, which its tailer may hold while waiting for budget, so with a thousand
/// active files 128 KiB reads made ~200 MB of chunks; from the page cache a 16 KiB `pread`
/// costs a couple of microseconds.
pub const BUFFER_BYTES: usize = 16 * 1024;
/// Idle buffers kept for reuse; more are freed when given back.
const KEEP: usize = 64;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer on loan; it goes back to the pool when dropped.
#[derive(Debug)]
pub struct Buffer(Vec<u8>);

/// Borrows a buffer of [`BUFFER_BYTES`].
pub fn take() -> Buffer {
    let reused = FREE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop();
    Buffer(reused.unwrap_or_else(|| vec![0u8; BUFFER_BYTES]))
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut free = FREE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if free.len() < KEEP {
            free.push(std::mem::take(&mut self.0));
        }
    }
}

impl Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_the_pool_is_bounded() {
        let many: Vec<Buffer> = (0..KEEP + 8).map(|_| take()).collect();
        assert!(many.iter().all(|b| b.len() == BUFFER_BYTES));
        drop(many);
        let kept = FREE.lock().map(|f| f.len()).unwrap_or(0);
        assert!(kept <= KEEP, "{kept} idle buffers");
    }
}
