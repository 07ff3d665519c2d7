//! Reading a bucket whatever pieces it is stored in (see [`IndexValue`]).
//!
//! A bucket that receives its lines a few at a time is stored, until it is full, as up to
//! [`MAX_PIECES`](super::keys::MAX_PIECES) pieces with disjoint line offsets: each write
//! appends only its own lines instead of reading the bucket back and rewriting it whole
//! (which, at 35 lines a request into 128-line buckets, read ~1.6 and wrote ~2.6 buckets'
//! worth of bytes per bucket filled). Readers get one bucket back, the pieces merged by
//! offset.

use super::keys::IndexValue;
use super::segments::Cursor;
use super::{io_unavailable, unavailable, Inner};
use crate::bucket::{self, LINES_PER_BUCKET};
use crate::StoreError;

/// Bytes that do not decode are corrupt data; any other failure is the disk's.
fn read_error(e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::InvalidData {
        StoreError::corrupt_by("undecodable bucket", e)
    } else {
        io_unavailable(e)
    }
}

/// A bucket opened for reading.
pub(super) enum Opened {
    /// One piece, read through a cursor (it may be too big to hold whole).
    Cursor(Cursor),
    /// Pieces merged in memory (at most [`MAX_PIECES_BYTES`](super::keys::MAX_PIECES_BYTES)).
    Merged(Vec<u8>),
}

impl Inner {
    /// The bucket at `key`, whose index value is `value`, as one bucket's bytes.
    pub(super) fn read_bucket(
        &self,
        key: &[u8],
        value: &IndexValue,
    ) -> Result<Vec<u8>, StoreError> {
        match self.read_pieces(value) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Compaction moved the bucket and deleted its segment meanwhile: read it
                // where the index points now.
                match self.moved(key, value)? {
                    Some(now) => self.read_pieces(&now).map_err(read_error),
                    None => Err(read_error(e)),
                }
            }
            other => other.map_err(read_error),
        }
    }

    /// Opens a bucket for a reader that may not hold it whole: a cursor over a single piece,
    /// or the pieces merged.
    pub(super) fn open_bucket(&self, key: &[u8], value: &IndexValue) -> Result<Opened, StoreError> {
        let open = |v: &IndexValue| match v.pieces.as_slice() {
            // A sealed bucket comes out of its (cached) block.
            _ if v.sealed.is_some() => self.read_pieces(v).map(Opened::Merged),
            [one] => self.segments.cursor(*one).map(Opened::Cursor),
            _ => self.read_pieces(v).map(Opened::Merged),
        };
        match open(value) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.moved(key, value)? {
                Some(now) => open(&now).map_err(read_error),
                None => Err(read_error(e)),
            },
            other => other.map_err(read_error),
        }
    }

    /// The index value at `key` now, if it differs from `was`.
    fn moved(&self, key: &[u8], was: &IndexValue) -> Result<Option<IndexValue>, StoreError> {
        let now = self.db.get(key).map_err(unavailable)?;
        Ok(now
            .as_deref()
            .and_then(IndexValue::decode)
            .filter(|now| now != was))
    }

    /// Reads every piece and merges them by offset, in one pass (a later piece wins, though
    /// writes never let two share an offset).
    fn read_pieces(&self, value: &IndexValue) -> std::io::Result<Vec<u8>> {
        if let Some(sealed) = value.sealed {
            let block = value.pieces[0];
            let decoded = self
                .blocks
                .get(block, || self.segments.read(block))
                .inspect_err(|e| {
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        self.seal_metrics.corrupt.inc();
                        tracing::error!(segment = block.segment, offset = block.offset, error = %e, "a compressed block is damaged; its lines cannot be served");
                    }
                })?;
            return decoded.bucket(sealed.slot).map(<[u8]>::to_vec);
        }
        if let [one] = value.pieces.as_slice() {
            return self.segments.read(*one);
        }
        let corrupt =
            || std::io::Error::new(std::io::ErrorKind::InvalidData, "corrupt bucket piece");
        let pieces = value
            .pieces
            .iter()
            .map(|loc| self.segments.read(*loc))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut entries = Vec::with_capacity(LINES_PER_BUCKET as usize);
        for piece in &pieces {
            entries.extend(bucket::decode(piece).ok_or_else(corrupt)?);
        }
        // Stable: of two entries at one offset, the later piece's comes last, and is kept.
        entries.sort_by_key(|e| e.offset);
        let mut out = Vec::with_capacity(pieces.iter().map(Vec::len).sum());
        for (i, e) in entries.iter().enumerate() {
            if entries
                .get(i + 1)
                .is_none_or(|next| next.offset != e.offset)
            {
                bucket::encode_entry(&mut out, e);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::{line_key, IndexValue, FULL, MAX_PIECES};
    use super::super::sweep::tests::{batch, bucket_zero, raw_bucket_zero, shorten_second_piece};
    use super::super::SledStore;
    use crate::Store;

    async fn write(store: &SledStore, lines: &[(u64, &str)]) -> u64 {
        let stats = store
            .write(&[batch("/f", "g", lines)])
            .await
            .expect("write");
        stats.new_lines
    }

    async fn read(store: &SledStore) -> String {
        let id = store.generations("h", "/f").await.expect("generations")[0].id;
        let c = store
            .read_chunk(id, 0, u64::MAX >> 16, 1 << 20, false, false)
            .await
            .expect("read");
        assert_eq!(c.next, None, "one chunk holds it all");
        String::from_utf8(c.data).expect("utf-8")
    }

    #[tokio::test]
    async fn small_writes_append_pieces_and_read_back_merged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), &Default::default()).expect("open");
        // Out of order, as resends after a reconnect can be.
        assert_eq!(write(&store, &[(4, "e"), (5, "f")]).await, 2);
        assert_eq!(write(&store, &[(0, "a"), (1, "b")]).await, 2);
        assert_eq!(write(&store, &[(2, "c"), (3, "d")]).await, 2);
        let v = bucket_zero(&store).await;
        assert_eq!(v.pieces.len(), 3, "each write appended a piece: {v:?}");
        assert_eq!(v.present, Some(0b11_1111));
        assert_eq!(read(&store).await, "a\nb\nc\nd\ne\nf\n");
    }

    #[tokio::test]
    async fn a_line_written_again_rewrites_the_bucket_and_the_last_write_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), &Default::default()).expect("open");
        write(&store, &[(0, "a"), (1, "b")]).await;
        write(&store, &[(2, "c")]).await;
        // Line 1 again, changed, with a new line: one piece, counted once.
        assert_eq!(write(&store, &[(1, "B"), (3, "d")]).await, 1);
        let v = bucket_zero(&store).await;
        assert_eq!(v.pieces.len(), 1, "{v:?}");
        assert_eq!(v.present, Some(0b1111));
        assert_eq!(read(&store).await, "a\nB\nc\nd\n");
        // A resend of lines already there adds nothing.
        assert_eq!(write(&store, &[(0, "a"), (2, "c")]).await, 0);
        assert_eq!(read(&store).await, "a\nB\nc\nd\n");
    }

    #[tokio::test]
    async fn past_the_most_pieces_the_bucket_is_rewritten_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), &Default::default()).expect("open");
        let mut expected = String::new();
        for n in 0..=MAX_PIECES as u64 {
            let line = format!("line {n}");
            write(&store, &[(n, &line)]).await;
            expected.push_str(&line);
            expected.push('\n');
            let pieces = bucket_zero(&store).await.pieces.len();
            assert_eq!(
                pieces,
                if (n as usize) < MAX_PIECES {
                    n as usize + 1
                } else {
                    1
                }
            );
        }
        assert_eq!(read(&store).await, expected);
    }

    #[tokio::test]
    async fn a_bucket_filled_whole_needs_no_offset_map() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), &Default::default()).expect("open");
        let lines: Vec<(u64, String)> = (0..128).map(|n| (n, format!("l{n}"))).collect();
        let refs: Vec<(u64, &str)> = lines.iter().map(|(n, s)| (*n, s.as_str())).collect();
        assert_eq!(write(&store, &refs).await, 128);
        let raw = raw_bucket_zero(&store).await;
        assert_eq!(raw.len(), 32, "a whole bucket keeps the 32-byte value");
        let v = IndexValue::decode(&raw).expect("decodes");
        assert_eq!((v.pieces.len(), v.present), (1, None));
        // Written in three parts instead, it stays in pieces, full (the sealer makes it
        // part of a block, reading the pieces once), and reads back merged.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), &Default::default()).expect("open");
        write(&store, &refs[..40]).await;
        write(&store, &refs[80..]).await;
        let v = bucket_zero(&store).await;
        assert_eq!(v.pieces.len(), 2);
        assert_eq!(v.present, Some(FULL >> 88 | (FULL >> 80) << 80));
        assert_eq!(write(&store, &refs[40..80]).await, 40);
        let v = bucket_zero(&store).await;
        assert_eq!((v.pieces.len(), v.present), (3, Some(FULL)));
        assert!(v.is_full(), "{v:?}");
        let expected: String = lines.iter().map(|(_, s)| format!("{s}\n")).collect();
        assert_eq!(read(&store).await, expected);
    }

    #[tokio::test]
    async fn a_bucket_stored_before_pieces_is_read_back_when_written_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), &Default::default()).expect("open");
        write(&store, &[(0, "a"), (1, "b"), (2, "c")]).await;
        // As an older version stored it: one piece, no offset map.
        let id = store.generations("h", "/f").await.expect("generations")[0].id;
        let mut v = bucket_zero(&store).await;
        v.present = None;
        store
            .inner
            .db
            .insert(line_key(id, 0), v.encode())
            .expect("insert");
        store.inner.forget_recent();
        assert_eq!(raw_bucket_zero(&store).await.len(), 32);
        // Line 1 again and two new ones: only the new ones count, and the map is rebuilt.
        assert_eq!(write(&store, &[(1, "b"), (3, "d"), (4, "e")]).await, 2);
        let v = bucket_zero(&store).await;
        assert_eq!((v.pieces.len(), v.present), (1, Some(0b1_1111)));
        assert_eq!(read(&store).await, "a\nb\nc\nd\ne\n");
    }

    #[tokio::test]
    async fn a_damaged_piece_is_reported_corrupt_not_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), &Default::default()).expect("open");
        write(&store, &[(0, "a"), (1, "b")]).await;
        write(&store, &[(2, "c")]).await;
        let (id, _) = shorten_second_piece(&store).await;
        let e = store
            .read_chunk(id, 0, u64::MAX >> 16, 1 << 20, false, false)
            .await
            .expect_err("a damaged piece");
        assert!(e.is_corrupt(), "{e:?}");
    }
}
