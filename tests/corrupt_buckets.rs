//! Issue 30.8: a corrupt bucket (an entry's offset byte damaged, so that its line would be
//! served under another number) read piecewise is a corruption error on both backends, never
//! lines under the wrong numbers; the other files still serve. Since lines carry a time
//! (issue 32.3) every 7-bit offset is valid, so what the readers check is the order every
//! encoder writes entries in: the damage makes entry 1 claim offset 0 again.

use logship_e2e::*;

/// Two lines of 600 KiB make a bucket over 1 MiB, which both backends read piecewise.
fn big_lines() -> Vec<Vec<u8>> {
    (0..2u8).map(|i| vec![b'a' + i; 600 * 1024]).collect()
}

/// What a download of `/big` gives: its status, the line numbers it names (NDJSON), and
/// whether the body ended as a whole (an aborted one is how a streamed error shows).
fn numbers_served(agg: &Aggregator) -> (u16, Vec<u64>, bool) {
    use std::io::Read;
    let url = agg.url("/store/log?host=h&file=/big&format=ndjson");
    let (status, resp) = match ureq::get(&url).call() {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(c, r)) => (c, r),
        Err(e) => panic!("{url}: {e}"),
    };
    let mut body = Vec::new();
    let whole = resp.into_reader().read_to_end(&mut body).is_ok();
    let numbers = body
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter_map(|v| v["line"].as_u64())
        .collect();
    (status, numbers, whole)
}

fn a_corrupt_big_bucket_is_an_error_not_misnumbered_lines(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = backend.aggregator(dir.path(), "", &[]);
    let lines = big_lines();
    let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    assert_eq!(post_compact(&agg, "h", "/big", "g", 0, &refs).status, 200);
    assert_eq!(
        post_compact(&agg, "h", "/other", "g", 0, &[b"fine"]).status,
        200
    );
    assert_eq!(numbers_served(&agg), (200, vec![0, 1], true));
    // The second entry's offset byte (offset 1, with its time flag: 0x81) becomes 0x80:
    // offset 0 again, line 1 served as a second line 0 if nothing checked.
    match &backend {
        Backend::Sled => {
            let segments = dir.path().join("data").join("segments");
            let mut done = false;
            for e in std::fs::read_dir(&segments).expect("segments").flatten() {
                let mut bytes = std::fs::read(e.path()).expect("read segment");
                let marker = vec![b'b'; 64];
                if let Some(at) = bytes.windows(64).position(|w| w == marker.as_slice()) {
                    // offset byte, a 3-byte varint of (len << 1), a 6-byte varint of the
                    // time (ms), then the content.
                    assert_eq!(bytes[at - 10], 0x81, "the second entry's offset");
                    bytes[at - 10] = 0x80;
                    std::fs::write(e.path(), bytes).expect("write segment");
                    done = true;
                }
            }
            assert!(done, "the second line was not found in a segment");
        }
        Backend::Redis(cluster) => {
            // The first generation's id is 1; its bucket 0: a 17-byte header, then entry 0
            // (offset, 3-byte length varint, 6-byte time varint, content), then entry 1's
            // offset byte.
            use std::os::unix::ffi::OsStrExt;
            let at = (17 + 1 + 3 + 6 + 600 * 1024).to_string();
            let out = std::process::Command::new("redis-cli")
                .args(["-c", "-p", &cluster.primaries()[0].to_string()])
                .args(["setrange", "logship:{g1}:0", &at])
                .arg(std::ffi::OsStr::from_bytes(&[0x80]))
                .output()
                .expect("redis-cli");
            let out = String::from_utf8_lossy(&out.stdout);
            assert!(out.trim().parse::<u64>().is_ok(), "setrange: {out:?}");
        }
    }
    let (status, numbers, whole) = numbers_served(&agg);
    assert!(
        status != 200 || !whole,
        "a corrupt bucket served whole as lines {numbers:?} ({status})"
    );
    assert!(
        numbers.iter().filter(|&&n| n == 0).count() <= 1,
        "line 0 served twice: {numbers:?}"
    );
    assert_eq!(agg.log("h", "/other", ""), Ok(b"fine\n".to_vec()));
}

logship_e2e::both_backends!(a_corrupt_big_bucket_is_an_error_not_misnumbered_lines);
