//! Retention and compaction, through the store: what is dropped, what is kept, and that
//! every acknowledged line survives compaction racing writers and readers.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use logship_wire::{FileBatch, Line};

use super::*;
use crate::sled_store::{SledOptions, SledStore};
use crate::Store;

/// A batch of `lines` of host `h`'s `file` (shared with the other store tests).
pub(in crate::sled_store) fn batch<S: AsRef<str>>(
    file: &str,
    generation: &str,
    lines: &[(u64, S)],
) -> FileBatch<'static> {
    FileBatch {
        host: Cow::Owned("h".into()),
        file: Cow::Owned(file.into()),
        generation: Cow::Owned(generation.into()),
        lines: lines
            .iter()
            .map(|(number, s)| Line {
                number: *number,
                content: Cow::Owned(s.as_ref().as_bytes().to_vec()),
                partial: false,
                ts: None,
            })
            .collect(),
    }
}

/// `n` lines of about `width` bytes, tagged so versions differ.
fn lines(n: u64, width: usize, tag: &str) -> Vec<(u64, String)> {
    (0..n)
        .map(|i| (i, format!("{tag} {i} {}", "x".repeat(width))))
        .collect()
}

async fn read_all(store: &SledStore, host: &str, file: &str) -> Option<String> {
    let g = store.generations(host, file).await.expect("generations");
    let id = g.last()?.id;
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let c = store
            .read_chunk(id, from, u64::MAX >> 16, 1 << 20, false, false)
            .await
            .expect("read");
        out.extend_from_slice(&c.data);
        match c.next {
            Some(n) => from = n,
            None => return Some(String::from_utf8(out).expect("utf8")),
        }
    }
}

fn rendered(lines: &[(u64, String)]) -> String {
    lines.iter().map(|(_, s)| format!("{s}\n")).collect()
}

fn open(dir: &std::path::Path) -> SledStore {
    SledStore::open(dir, &SledOptions::default()).expect("open")
}

/// Compacts every segment (the active one closed first), moving each live bucket to a
/// new one; returns the segments moved from.
fn move_everything(store: &SledStore) -> Vec<u32> {
    let segments: Vec<u32> = store
        .inner
        .segments
        .sizes()
        .expect("sizes")
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    for &s in &segments {
        store.inner.segments.close_if_active(s).expect("close");
    }
    assert!(store.inner.move_live(&segments).expect("move") > 0);
    segments
}

/// A store with one committed generation, `/f` written at t=1s, and the sweep's listing
/// of it as expired at t=10s under a 1 s retention.
async fn one_expired_generation(
    dir: &std::path::Path,
) -> (SledStore, RetentionPolicy, Vec<Generation>) {
    let store = open(dir);
    let policy = RetentionPolicy {
        retention: Some(Duration::from_secs(1)),
        max_disk_bytes: None,
    };
    store
        .inner
        .apply(&batch("/f", "g", &lines(10, 10, "a")), 1_000)
        .expect("apply");
    store.flush().await.expect("commit");
    let (expired, _) = store.inner.expired(policy, 10_000).expect("expired");
    (store, policy, expired)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_written_after_it_was_listed_as_expired_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, policy, expired) = one_expired_generation(dir.path()).await;
    assert_eq!(expired.len(), 1);
    // A write lands between the listing and the drop, and is acknowledged.
    let late = vec![(10, "late".to_owned())];
    store
        .write(&[batch("/f", "g", &late)])
        .await
        .expect("write");
    assert!(!store.inner.drop_generation(&expired[0]).expect("drop"));
    let text = read_all(&store, "h", "/f").await.expect("kept");
    assert!(text.ends_with("late\n"), "{text}");
    // Listed afresh, it is dropped once it has been idle again.
    let (expired, _) = store.inner.expired(policy, u64::MAX / 2).expect("expired");
    assert!(store.inner.drop_generation(&expired[0]).expect("drop"));
    assert_eq!(read_all(&store, "h", "/f").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_still_waiting_for_its_commit_keeps_its_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _, expired) = one_expired_generation(dir.path()).await;
    // Applied but not committed: its index entries are only pending. The drop must see
    // them, or the commit would resurrect a half-deleted generation.
    store
        .inner
        .apply(&batch("/f", "g", &[(10, "late".to_owned())]), 20_000)
        .expect("apply");
    assert!(!store.inner.drop_generation(&expired[0]).expect("drop"));
    store.flush().await.expect("commit");
    let text = read_all(&store, "h", "/f").await.expect("kept");
    assert_eq!(text.lines().count(), 11, "{text}");
    assert!(text.ends_with("late\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_generations_are_dropped_and_their_space_reclaimed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let (old, new) = (lines(20_000, 100, "old"), lines(100, 10, "new"));
    // Written long ago (the clock is the caller's), and just now.
    store
        .inner
        .apply(&batch("/old", "g", &old), 1_000)
        .expect("apply");
    store.flush().await.expect("commit");
    store
        .write(&[batch("/new", "g", &new)])
        .await
        .expect("write");
    let before = store.inner.segments.size();
    let policy = RetentionPolicy {
        retention: Some(Duration::from_secs(3600)),
        max_disk_bytes: None,
    };
    let r = store
        .sweep(policy, std::time::SystemTime::now())
        .await
        .expect("sweep");
    assert_eq!(r.generations_dropped, 1);
    assert_eq!(r.segments_compacted, 1);
    assert!(store
        .generations("h", "/old")
        .await
        .expect("list")
        .is_empty());
    assert_eq!(read_all(&store, "h", "/new").await, Some(rendered(&new)));
    let after = store.inner.segments.size();
    assert!(after * 100 < before, "segments {before} → {after} bytes");
    assert_eq!(store.hosts().await.expect("hosts"), vec!["h".to_owned()]);
    // A second sweep finds nothing to do; a reopened store reads the same.
    assert_eq!(
        store
            .sweep(policy, std::time::SystemTime::now())
            .await
            .expect("sweep"),
        SweepReport::default()
    );
    drop(store);
    // The old handle's flusher lets go of the index a moment after the drop.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let store = loop {
        match SledStore::open(dir.path(), &SledOptions::default()) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() > deadline => panic!("reopen: {e}"),
            Err(_) => tokio::task::yield_now().await,
        }
    };
    assert_eq!(read_all(&store, "h", "/new").await, Some(rendered(&new)));
}

/// Issue 32.6: a generation still written to loses its buckets older than the retention —
/// raw or sealed — and keeps the rest: the line count and first line follow, line numbers
/// stay, the trimmed space is compacted away, and a second sweep finds nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_the_old_buckets_of_a_live_generation() {
    for sealed in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let all: Vec<(u64, String)> = lines(1_100, 200, "l");
        // Lines 0..1000 written long ago (the clock is the caller's), 1000..1100 now.
        store
            .inner
            .apply(&batch("/live", "g", &all[..1_000]), 1_000)
            .expect("apply");
        store.flush().await.expect("commit");
        store
            .write(&[batch("/live", "g", &all[1_000..])])
            .await
            .expect("write");
        if sealed {
            store.seal_now(Duration::ZERO).await.expect("seal");
        }
        let before = store.inner.segments.size();
        let policy = RetentionPolicy {
            retention: Some(Duration::from_secs(3600)),
            max_disk_bytes: None,
        };
        let r = store
            .sweep(policy, std::time::SystemTime::now())
            .await
            .expect("sweep");
        // Buckets 0..=6 hold lines 0..896, all old; bucket 7 also holds lines written now.
        assert_eq!(
            (r.generations_dropped, r.lines_trimmed),
            (0, 896),
            "sealed {sealed}"
        );
        let g = &store.generations("h", "/live").await.expect("list")[0];
        assert_eq!((g.lines, g.max_line, g.first_line), (204, 1_099, Some(896)));
        assert_eq!(
            read_all(&store, "h", "/live").await,
            Some(rendered(&all[896..])),
            "sealed {sealed}: the download starts at the first kept line"
        );
        assert!(r.segments_compacted > 0, "sealed {sealed}: {r:?}");
        let after = store.inner.segments.size();
        assert!(
            after * 2 < before,
            "sealed {sealed}: segments {before} → {after} bytes"
        );
        let again = store
            .sweep(policy, std::time::SystemTime::now())
            .await
            .expect("sweep");
        assert_eq!(again.lines_trimmed, 0);
    }
}

/// Over `max_disk_bytes`, a file's rotated-out generation, wholly older than the cut, goes
/// whole; its current one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_disk_bytes_an_old_rotated_generation_goes_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let (old, new) = (lines(40_000, 100, "old"), lines(40_000, 100, "new"));
    let now = crate::clock::now_ms();
    for (generation, part, when) in [("g1", &old, now - 10_800_000), ("g2", &new, now - 60_000)] {
        store
            .inner
            .apply(&batch("/rotated", generation, part), when)
            .expect("apply");
        store.flush().await.expect("commit");
    }
    let index = store.inner.db.size_on_disk().expect("size");
    let half = store.inner.segments.size() / 2;
    let max = (index + half) * 100 / 80;
    let policy = RetentionPolicy {
        retention: None,
        max_disk_bytes: Some(max),
    };
    let r = store
        .sweep(policy, std::time::SystemTime::now())
        .await
        .expect("sweep");
    assert_eq!((r.generations_dropped, r.lines_trimmed), (1, 0), "{r:?}");
    let gens = store.generations("h", "/rotated").await.expect("list");
    assert_eq!(gens.len(), 1);
    assert_eq!(gens[0].name, "g2");
    assert_eq!(
        read_all(&store, "h", "/rotated").await,
        Some(rendered(&new))
    );
}

/// Issue 32.6: over `max_disk_bytes`, one file written without pause loses its oldest
/// lines, never its newest, and is not dropped whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_disk_bytes_a_live_file_loses_its_oldest_lines_not_its_newest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let all = lines(80_000, 100, "l");
    let now = crate::clock::now_ms();
    // Half written two hours ago, half a minute ago: one generation.
    for (part, when) in [
        (&all[..40_000], now - 7_200_000),
        (&all[40_000..], now - 60_000),
    ] {
        store
            .inner
            .apply(&batch("/live", "g", part), when)
            .expect("apply");
        store.flush().await.expect("commit");
    }
    let index = store.inner.db.size_on_disk().expect("size");
    let half = store.inner.segments.size() / 2;
    // Room for the index and the newer half, not both.
    let max = (index + half) * 100 / 80;
    let policy = RetentionPolicy {
        retention: None,
        max_disk_bytes: Some(max),
    };
    let r = store
        .sweep(policy, std::time::SystemTime::now())
        .await
        .expect("sweep");
    assert_eq!(r.generations_dropped, 0, "{r:?}");
    // The old half's buckets go; the bucket shared with the new half stays.
    let g = &store.generations("h", "/live").await.expect("list")[0];
    let first = g.first_line.expect("first line");
    assert!(
        (39_000..=40_000).contains(&first),
        "first kept line {first}, {r:?}"
    );
    assert_eq!(
        read_all(&store, "h", "/live").await,
        Some(rendered(&all[first as usize..])),
        "the newest lines are all there"
    );
    assert!(
        store.size_on_disk() <= max,
        "{} bytes on disk, cap {max}",
        store.size_on_disk()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_host_file_going_removes_the_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store
        .inner
        .apply(&batch("/only", "g", &lines(10, 10, "a")), 1_000)
        .expect("apply");
    store.flush().await.expect("commit");
    store.flush().await.expect("flush");
    let policy = RetentionPolicy {
        retention: Some(Duration::from_secs(1)),
        max_disk_bytes: None,
    };
    assert_eq!(
        store
            .sweep(policy, std::time::SystemTime::now())
            .await
            .expect("sweep")
            .generations_dropped,
        1
    );
    assert!(store.hosts().await.expect("hosts").is_empty());
    assert!(store.files(None).await.expect("files").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_disk_bytes_the_oldest_data_goes_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let content: Vec<Vec<(u64, String)>> = (0..3)
        .map(|i| lines(40_000, 100, &format!("f{i}")))
        .collect();
    // Written three, two and one hour ago.
    let now = crate::clock::now_ms();
    for (i, c) in content.iter().enumerate() {
        let when = now - 3_600_000 * (3 - i as u64);
        store
            .inner
            .apply(&batch(&format!("/f{i}"), "g", c), when)
            .expect("apply");
        store.flush().await.expect("commit");
    }
    store.flush().await.expect("flush");
    let index = store.inner.db.size_on_disk().expect("size");
    let one = store.inner.segments.size() / 3;
    // Room for two files' data and the index, not three.
    let max = (index + 2 * one) * 100 / 85;
    let policy = RetentionPolicy {
        retention: None,
        max_disk_bytes: Some(max),
    };
    let r = store
        .sweep(policy, std::time::SystemTime::now())
        .await
        .expect("sweep");
    // The oldest file's data goes, but for its last bucket: a file's newest lines stay.
    assert_eq!(
        (r.generations_dropped, r.lines_trimmed),
        (0, 39_936),
        "{r:?}"
    );
    assert_eq!(
        read_all(&store, "h", "/f0").await,
        Some(rendered(&content[0][39_936..])),
        "oldest trimmed to its newest lines"
    );
    for (i, c) in content.iter().enumerate().skip(1) {
        assert_eq!(
            read_all(&store, "h", &format!("/f{i}")).await,
            Some(rendered(c))
        );
    }
    assert!(
        store.size_on_disk() <= max,
        "{} bytes on disk, cap {max}",
        store.size_on_disk()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_every_line_while_writers_and_readers_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path()));
    const ROUNDS: usize = 30;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                let v = lines(2_000, 50, &format!("v{round}"));
                // Two halves in two requests, so buckets are merged, not just replaced.
                let (a, b) = v.split_at(1_000);
                store.write(&[batch("/f", "g", b)]).await.expect("write");
                store.write(&[batch("/f", "g", a)]).await.expect("write");
            }
        })
    };
    let mut compacted = 0;
    while !writer.is_finished() {
        let r = store
            .sweep(RetentionPolicy::default(), std::time::SystemTime::now())
            .await
            .expect("sweep");
        compacted += r.segments_compacted;
        // Reads during compaction see some version of every line, never an error.
        if let Some(text) = read_all(&store, "h", "/f").await {
            assert!(text.lines().all(|l| l.starts_with('v')), "{text:.200}");
        }
    }
    writer.await.expect("writer");
    // The sweep rescans only after 25 % growth since the last one; one that ran just
    // before the last writes may leave that much more. Forget it, so this sweep is full.
    store.inner.swept_segment_bytes.store(0, Ordering::SeqCst);
    compacted += store
        .sweep(RetentionPolicy::default(), std::time::SystemTime::now())
        .await
        .expect("sweep")
        .segments_compacted;
    assert!(compacted >= 1, "garbage was never compacted");
    let last = lines(2_000, 50, &format!("v{}", ROUNDS - 1));
    assert_eq!(read_all(&store, "h", "/f").await, Some(rendered(&last)));
    let live = store.inner.usage(0).expect("usage").live;
    assert!(
        store.inner.segments.size() < live * 3,
        "garbage left: {} bytes of segments for {live} live",
        store.inner.segments.size()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_compaction_merges_into_the_moved_bucket() {
    // The writers' overlay remembers the bucket's committed location; compaction moves
    // it and deletes the old segment. A write to the same bucket afterwards must merge
    // with the copy, not read the location it remembered.
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, first) = ten_lines_committed(dir.path()).await;
    let old = move_everything(&store);
    store.flush().await.expect("commit");
    let (removed, _) = store.inner.remove_unreferenced(&old).expect("remove");
    assert_eq!(removed, old.len() as u64, "the old segments are gone");
    let more: Vec<(u64, String)> = (10..20).map(|i| (i, format!("b {i}"))).collect();
    store
        .inner
        .apply(&batch("/f", "g", &more), 2_000)
        .expect("a write after compaction");
    store.flush().await.expect("commit");
    let mut want = first.clone();
    want.extend(more);
    assert_eq!(read_all(&store, "h", "/f").await, Some(rendered(&want)));
}

/// [`ten_lines_committed`], then the same lines resent at t=1.5s: the bucket rewritten,
/// its first version garbage, so the segment is half garbage.
async fn half_garbage(dir: &std::path::Path) -> (SledStore, Vec<(u64, String)>) {
    let (store, first) = ten_lines_committed(dir).await;
    store
        .inner
        .apply(&batch("/f", "g", &first), 1_500)
        .expect("a resend rewrites the bucket");
    store.flush().await.expect("commit");
    (store, first)
}

/// A store with lines 0..10 of `/f` applied at t=1s and committed.
async fn ten_lines_committed(dir: &std::path::Path) -> (SledStore, Vec<(u64, String)>) {
    let store = open(dir);
    let first = lines(10, 10, "a");
    store
        .inner
        .apply(&batch("/f", "g", &first), 1_000)
        .expect("apply");
    store.flush().await.expect("commit");
    (store, first)
}

/// The index value of bucket 0 of `/f`'s only generation as committed, raw…
pub(in crate::sled_store) async fn raw_bucket_zero(store: &SledStore) -> sled::IVec {
    let id = store.generations("h", "/f").await.expect("generations")[0].id;
    store
        .inner
        .db
        .get(line_key(id, 0))
        .expect("get")
        .expect("indexed")
}

/// …and decoded.
pub(in crate::sled_store) async fn bucket_zero(store: &SledStore) -> IndexValue {
    IndexValue::decode(&raw_bucket_zero(store).await).expect("decodes")
}

/// Makes the second piece of h:/f's bucket 0 one byte short in the index, so its last
/// line ends inside its header or content and the piece no longer decodes; returns the
/// generation's id and the damaged index value.
pub(in crate::sled_store) async fn shorten_second_piece(store: &SledStore) -> (u64, IndexValue) {
    let id = store.generations("h", "/f").await.expect("generations")[0].id;
    let mut v = bucket_zero(store).await;
    v.pieces[1].len -= 1;
    store
        .inner
        .db
        .insert(line_key(id, 0), v.encode())
        .expect("insert");
    (id, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_makes_a_bucket_in_pieces_one_and_keeps_its_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let all = lines(40, 10, "a");
    for (i, part) in all.chunks(10).enumerate() {
        store
            .inner
            .apply(&batch("/f", "g", part), 1_000 + i as u64)
            .expect("apply");
    }
    store.flush().await.expect("commit");
    assert_eq!(bucket_zero(&store).await.pieces.len(), 4);
    let old = move_everything(&store);
    store.flush().await.expect("commit");
    let (removed, _) = store.inner.remove_unreferenced(&old).expect("remove");
    assert_eq!(removed, old.len() as u64, "nothing names the old segments");
    let v = bucket_zero(&store).await;
    assert_eq!(v.pieces.len(), 1, "{v:?}");
    assert_eq!(v.present, Some((1u128 << 40) - 1));
    assert_eq!(
        (v.first_ms, v.last_ms),
        (1_000, 1_003),
        "receive times kept"
    );
    assert_eq!(read_all(&store, "h", "/f").await, Some(rendered(&all)));
    // The next small write appends again, without reading the moved bucket.
    let more: Vec<(u64, String)> = (40..45).map(|i| (i, format!("b {i}"))).collect();
    let stats = store
        .inner
        .apply(&batch("/f", "g", &more), 2_000)
        .expect("apply");
    assert_eq!(stats.new_lines, 5);
    store.flush().await.expect("commit");
    assert_eq!(bucket_zero(&store).await.pieces.len(), 2);
    let mut want = all.clone();
    want.extend(more);
    assert_eq!(read_all(&store, "h", "/f").await, Some(rendered(&want)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_bucket_in_pieces_stays_and_the_others_still_move() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = ten_lines_committed(dir.path()).await;
    let more: Vec<(u64, String)> = (10..20).map(|i| (i, format!("b {i}"))).collect();
    store
        .inner
        .apply(&batch("/f", "g", &more), 2_000)
        .expect("apply");
    let other = lines(300, 10, "o");
    store
        .inner
        .apply(&batch("/other", "g", &other), 2_000)
        .expect("apply");
    store.flush().await.expect("commit");
    let (_, damaged) = shorten_second_piece(&store).await;
    store.inner.forget_recent();
    let old = move_everything(&store);
    store.flush().await.expect("commit");
    let (removed, _) = store.inner.remove_unreferenced(&old).expect("remove");
    assert!(
        removed < old.len() as u64,
        "the damaged bucket's segment was deleted"
    );
    assert_eq!(
        bucket_zero(&store).await,
        damaged,
        "the damaged bucket was left as it was"
    );
    assert_eq!(
        read_all(&store, "h", "/other").await,
        Some(rendered(&other))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_appended_while_compaction_moves_its_bucket_does_not_keep_the_old_segment() {
    // The race of issue 29.0, forced: the sweep has listed and marked the segment and
    // committed, then a write adds lines to a bucket with a piece there, then the move's
    // compare-and-swap (against sled) succeeds, and the next commit applies the write's
    // value. Had the write appended a piece, that value would still name the old segment
    // and keep it (in a steadily written file: at every sweep, for good).
    let dir = tempfile::tempdir().expect("tempdir");
    // Every segment is worth compacting: the only one is half garbage.
    let (store, first) = half_garbage(dir.path()).await;
    let policy = RetentionPolicy {
        retention: None,
        max_disk_bytes: None,
    };
    let candidates = store
        .inner
        .retire(policy, 2_000, &mut SweepReport::default())
        .expect("retire");
    assert!(!candidates.is_empty(), "the garbage makes it a candidate");
    store.flush().await.expect("the commit before the move");
    let more: Vec<(u64, String)> = (10..20).map(|i| (i, format!("b {i}"))).collect();
    store
        .inner
        .apply(&batch("/f", "g", &more), 2_000)
        .expect("a write during the move");
    store.inner.move_live(&candidates).expect("move");
    store.flush().await.expect("commit");
    let (removed, _) = store
        .inner
        .remove_unreferenced(&candidates)
        .expect("remove");
    store.inner.stop_compacting();
    assert_eq!(
        removed,
        candidates.len() as u64,
        "a segment was kept by the write that raced the move"
    );
    let mut want = first.clone();
    want.extend(more);
    assert_eq!(read_all(&store, "h", "/f").await, Some(rendered(&want)));
    assert!(!store.inner.revisit.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_kept_by_a_sweep_is_freed_by_the_next_one_without_growth() {
    // Whatever keeps a segment named after its move (here: a piece applied before the
    // mark and committed after the move's swap, which the real sweep's order rules
    // out), the next sweep must compact it again even though the store did not grow.
    let dir = tempfile::tempdir().expect("tempdir");
    // Half garbage, then closed.
    let (store, first) = half_garbage(dir.path()).await;
    let old: Vec<u32> = store
        .inner
        .segments
        .sizes()
        .expect("sizes")
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    for &s in &old {
        store.inner.segments.close_if_active(s).expect("close");
    }
    let more: Vec<(u64, String)> = (10..20).map(|i| (i, format!("b {i}"))).collect();
    store
        .inner
        .apply(&batch("/f", "g", &more), 2_000)
        .expect("apply");
    store.inner.move_live(&old).expect("move");
    store.flush().await.expect("commit");
    let (removed, _) = store.inner.remove_unreferenced(&old).expect("remove");
    assert!(removed < old.len() as u64, "the segment is still named");
    let mut want = first.clone();
    want.extend(more);
    assert_eq!(read_all(&store, "h", "/f").await, Some(rendered(&want)));
    // What a previous full sweep would have recorded: no growth since.
    store
        .inner
        .swept_segment_bytes
        .store(store.inner.segments.size(), Ordering::SeqCst);
    let policy = RetentionPolicy {
        retention: None,
        max_disk_bytes: None,
    };
    let r = store
        .sweep(policy, std::time::SystemTime::now())
        .await
        .expect("sweep");
    assert!(r.segments_compacted >= 1, "{r:?}");
    let left: Vec<u32> = store
        .inner
        .segments
        .sizes()
        .expect("sizes")
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert!(
        old.iter().all(|s| !left.contains(s)),
        "old segments {old:?} still there: {left:?}"
    );
    assert_eq!(bucket_zero(&store).await.pieces.len(), 1);
    assert_eq!(read_all(&store, "h", "/f").await, Some(rendered(&want)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_generation_is_not_written_through_its_remembered_entries() {
    // After a retention drop, the next write of the file starts a new generation: the
    // overlay must not still hold the dropped generation's metadata.
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _, expired) = one_expired_generation(dir.path()).await;
    let old_id = store.generations("h", "/f").await.expect("gens")[0].id;
    assert!(store.inner.drop_generation(&expired[0]).expect("drop"));
    let late: Vec<(u64, String)> = vec![(10, "late".to_owned())];
    store
        .inner
        .apply(&batch("/f", "g", &late), 20_000)
        .expect("apply");
    store.flush().await.expect("commit");
    let gens = store.generations("h", "/f").await.expect("gens");
    assert_eq!(gens.len(), 1);
    assert_ne!(gens[0].id, old_id, "a new generation, not the dropped one");
    assert_eq!(read_all(&store, "h", "/f").await, Some(rendered(&late)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_times_prune_buckets_and_survive_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let early: Vec<(u64, String)> = (0..10).map(|i| (i, format!("early {i}"))).collect();
    let later: Vec<(u64, String)> = (10..20).map(|i| (i, format!("later {i}"))).collect();
    let late: Vec<(u64, String)> = (128..138).map(|i| (i, format!("late {i}"))).collect();
    // Bucket 0 is first written at t=1s and again at 3s; bucket 1 only at 5s.
    store
        .inner
        .apply(&batch("/f", "g", &early), 1_000)
        .expect("apply");
    store.flush().await.expect("commit");
    store
        .inner
        .apply(&batch("/f", "g", &later), 3_000)
        .expect("apply");
    store.flush().await.expect("commit");
    store
        .inner
        .apply(&batch("/f", "g", &late), 5_000)
        .expect("apply");
    store.flush().await.expect("commit");
    let id = store.generations("h", "/f").await.expect("gens")[0].id;
    let lines_in = |window: (u64, u64)| {
        let store = &store;
        async move {
            let c = store
                .search_chunk(id, 0, 1 << 20, Some(window))
                .await
                .expect("search chunk");
            (
                c.lines.iter().map(|l| l.number).collect::<Vec<u64>>(),
                c.skipped,
            )
        }
    };
    let check = |label: &'static str| {
        let lines_in = &lines_in;
        async move {
            let (n, skipped) = lines_in((4_000, u64::MAX)).await;
            assert_eq!((n, skipped), ((128..138).collect(), 1), "{label}: after 4s");
            let (n, skipped) = lines_in((0, 2_000)).await;
            assert_eq!((n, skipped), ((0..20).collect(), 1), "{label}: before 2s");
            let (n, _) = lines_in((2_500, 2_600)).await;
            assert_eq!(
                n,
                (0..20).collect::<Vec<u64>>(),
                "{label}: within bucket 0's span"
            );
            let (n, skipped) = lines_in((6_000, 7_000)).await;
            assert_eq!((n.len(), skipped), (0, 2), "{label}: after everything");
        }
    };
    check("before compaction").await;
    // Move every bucket to a new segment: the times go with them.
    move_everything(&store);
    check("after compaction").await;
}
