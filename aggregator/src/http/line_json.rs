//! A stored line as JSON, the same in downloads (`format=ndjson`) and search results: its
//! content as a string when it is UTF-8, else base64 in `content_base64`, so any bytes round
//! trip.

use base64::Engine;

/// Sets `content` (or `content_base64`) and, for a partial line, `partial` on `v`.
pub fn set_content(v: &mut serde_json::Value, content: &[u8], partial: bool) {
    match std::str::from_utf8(content) {
        Ok(s) => v["content"] = s.into(),
        Err(_) => {
            v["content_base64"] = base64::engine::general_purpose::STANDARD
                .encode(content)
                .into()
        }
    }
    if partial {
        v["partial"] = true.into();
    }
}

/// Sets `ts`, when the line was received (RFC 3339, ms), for lines that have one (lines
/// stored before times have none).
pub fn set_time(v: &mut serde_json::Value, ts: Option<u64>) {
    // RFC 3339 stops at year 9999; a time past it (damaged, or a client's) is given as ms.
    const LAST_RFC3339_MS: u64 = 253_402_300_799_999;
    match ts {
        Some(ms) if ms <= LAST_RFC3339_MS => {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            v["ts"] = humantime::format_rfc3339_millis(t).to_string().into();
        }
        Some(ms) => v["ts_ms"] = ms.into(),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_and_one_past_its_range_does_not_panic() {
        let mut v = serde_json::json!({});
        set_time(&mut v, Some(1_796_000_000_123));
        assert_eq!(v["ts"], "2026-11-30T00:53:20.123Z");
        let mut v = serde_json::json!({});
        set_time(&mut v, Some(u64::MAX));
        assert_eq!(v["ts_ms"], u64::MAX);
        assert!(v.get("ts").is_none());
    }

    #[test]
    fn text_stays_text_and_other_bytes_go_base64() {
        let mut v = serde_json::json!({});
        set_content(&mut v, b"hello", false);
        assert_eq!(v, serde_json::json!({ "content": "hello" }));
        let mut v = serde_json::json!({});
        set_content(&mut v, b"\xff", true);
        assert_eq!(
            v,
            serde_json::json!({ "content_base64": "/w==", "partial": true })
        );
    }
}
