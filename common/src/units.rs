//! Config values written as strings: sizes, durations, and where a TOML error sits.

use std::path::Path;
use std::time::Duration;

/// Parses a size such as `"16MiB"`, `"1 KB"` or `"1000"`; the error names `key`.
pub fn size(key: &str, s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{key}: {s:?} is not a size like \"16MiB\": {e}"))
}

/// Parses a duration such as `"200ms"` or `"1m 30s"`; the error names `key`.
pub fn duration(key: &str, s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{key}: {s:?} is not a duration like \"200ms\": {e}"))?;
    // Timers add durations to `Instant::now()`, which panics on overflow.
    if d > MAX_DURATION {
        return Err(format!("{key}: {s:?} is longer than the 100 years allowed"));
    }
    Ok(d)
}

/// The longest duration a config may give.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Renders a TOML error as `file:line: message` (toml reports unknown keys and wrong types
/// with a span; figment alone would lose the line).
pub fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim_end();
    let Some(span) = e.span() else {
        return format!("{}: {msg}", path.display());
    };
    let start = span.start.min(text.len());
    let line = text[..start].matches('\n').count() + 1;
    // Quote the line at fault: type errors name no key, the line shows it.
    let line_text = text.lines().nth(line - 1).unwrap_or("").trim();
    if line_text.is_empty() || msg.contains(line_text) {
        format!("{}:{line}: {msg}", path.display())
    } else {
        let shown: String = line_text.chars().take(120).collect();
        format!("{}:{line}: {msg} (in `{shown}`)", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_and_durations() {
        assert!(duration("k", "100000000y")
            .unwrap_err()
            .contains("100 years"));
        assert_eq!(duration("k", "30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(size("k", "1MiB"), Ok(1 << 20));
        assert_eq!(size("k", "0"), Ok(0));
        assert!(size("k", "lots").unwrap_err().starts_with("k: "));
        assert_eq!(duration("k", "200ms"), Ok(Duration::from_millis(200)));
        assert!(duration("k", "soon").unwrap_err().contains("\"soon\""));
    }

    #[test]
    fn toml_errors_carry_the_line() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct C {
            a: u32,
        }
        let text = "a = 1\nb = 2\n";
        let e = toml::from_str::<C>(text).expect_err("unknown key");
        let msg = toml_error(Path::new("c.toml"), text, &e);
        assert!(msg.starts_with("c.toml:2:"), "{msg}");
        assert!(msg.contains('b'), "{msg}");
    }
}
