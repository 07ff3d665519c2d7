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
    if let Some(ms) = ts {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        v["ts"] = humantime::format_rfc3339_millis(t).to_string().into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
