//! Validation of one `[[sources]]` entry over `[defaults]`: its kind and the kind's own
//! keys (paths and globs, stdin's name, journald's directory and matches), the pipeline
//! options, and the `multiline` rule.

use globset::{Glob, GlobSetBuilder};

use super::*;

pub(super) fn validate_source(
    i: usize,
    s: &SourceConfig,
    d: &SourceConfig,
    base: &Path,
) -> Result<SourceSettings, KeyError> {
    let key = |k: &str| format!("sources[{i}].{k}");
    // A source's own value wins over [defaults], which wins over the built-in default;
    // errors name where the value was written.
    macro_rules! pick {
        ($field:ident) => {
            own_or(s.$field.clone(), d.$field.clone())
        };
    }
    let origin = |k: &str, own: bool| if own { key(k) } else { format!("defaults.{k}") };
    let dur = |k: &str, (v, own): (Option<String>, bool), dflt: &str| {
        let k = origin(k, own);
        units::duration(&k, v.as_deref().unwrap_or(dflt)).map_err(|m| (k.clone(), strip_key(&k, m)))
    };
    let size = |k: &str, (v, own): (Option<String>, bool), dflt: &str| {
        let k = origin(k, own);
        units::size(&k, v.as_deref().unwrap_or(dflt)).map_err(|m| (k.clone(), strip_key(&k, m)))
    };
    let kind = s.kind.clone().unwrap_or_else(|| "file".into());
    if !SOURCE_KINDS.contains(&kind.as_str()) {
        return Err((
            key("type"),
            format!(
                "unknown source {kind:?}; available: {}",
                SOURCE_KINDS.join(", ")
            ),
        ));
    }
    let paths = s.paths.clone().unwrap_or_default();
    let stdin = kind == "stdin";
    let journald = kind == "journald";
    if (stdin || journald) && !paths.is_empty() {
        return Err((
            key("paths"),
            format!("a {kind} source reads no files; it has no paths"),
        ));
    }
    if !(stdin || journald) && s.name.is_some() {
        return Err((
            key("name"),
            "only used by stdin and journald sources".into(),
        ));
    }
    if !journald && s.directory.is_some() {
        return Err((key("directory"), "only used by a journald source".into()));
    }
    if !journald && s.matches.is_some() {
        return Err((key("matches"), "only used by a journald source".into()));
    }
    let matches = s.matches.clone().unwrap_or_default();
    for m in &matches {
        let ok = m.split_once('=').is_some_and(|(field, _)| {
            !field.is_empty()
                && field
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        });
        if !ok {
            return Err((
                key("matches"),
                format!("{m:?} is not FIELD=value (a journal field name is upper case letters, digits and _)"),
            ));
        }
    }
    if journald && s.name.as_deref().is_some_and(|n| !n.contains("{unit}")) {
        return Err((
            key("name"),
            "a journald source stores each unit as its own stream: the name needs {unit}".into(),
        ));
    }
    if !(stdin || journald) && paths.is_empty() {
        return Err((key("paths"), "at least one path or glob is required".into()));
    }
    let mut include = GlobSetBuilder::new();
    let mut patterns = Vec::new();
    let mut roots = Vec::new();
    for p in &paths {
        let abs = absolute_pattern(base, p);
        include.add(glob(&abs).map_err(|m| (key("paths"), m))?);
        roots.push(literal_root(&abs));
        patterns.push(abs);
    }
    roots.sort();
    roots.dedup();
    let mut exclude = GlobSetBuilder::new();
    for p in pick!(exclude).0.unwrap_or_default() {
        let abs = absolute_pattern(base, &p);
        exclude.add(glob(&abs).map_err(|m| (key("exclude"), m))?);
    }
    let read_from = match pick!(read_from).0.as_deref().unwrap_or("beginning") {
        "beginning" => ReadFrom::Beginning,
        "end" => ReadFrom::End,
        other => {
            return Err((
                key("read_from"),
                format!("{other:?} is not \"beginning\" or \"end\""),
            ))
        }
    };
    let rate = s.rate_limit.clone().unwrap_or_default();
    let drate = d.rate_limit.clone().unwrap_or_default();
    let retry = s.retry.clone().unwrap_or_default();
    let dretry = d.retry.clone().unwrap_or_default();
    let batch_lines = pick!(batch_lines).0.unwrap_or(1000);
    if batch_lines == 0 || batch_lines > 1_000_000 {
        return Err((
            key("batch_lines"),
            format!("{batch_lines} is outside 1..=1000000"),
        ));
    }
    let options = PipelineOptions {
        batch_lines,
        batch_bytes: size("batch_bytes", pick!(batch_bytes), "1MiB")?.clamp(1024, 256 << 20)
            as usize,
        linger: dur("linger", pick!(linger), "200ms")?,
        read_from,
        max_line_bytes: size("max_line_bytes", pick!(max_line_bytes), "1MiB")?.clamp(16, 64 << 20)
            as usize,
        partial_line_timeout: dur("partial_line_timeout", pick!(partial_line_timeout), "2s")?,
        close_inactive: dur("close_inactive", pick!(close_inactive), "5m")?,
        rotate_wait: dur("rotate_wait", pick!(rotate_wait), "5s")?,
        lines_per_sec: rate.lines_per_sec.or(drate.lines_per_sec).unwrap_or(0),
        bytes_per_sec: size(
            "rate_limit.bytes_per_sec",
            own_or(rate.bytes_per_sec, drate.bytes_per_sec),
            "0",
        )?,
        retry_initial: dur(
            "retry.initial",
            own_or(retry.initial, dretry.initial),
            "100ms",
        )?
        .max(Duration::from_millis(1)),
        retry_max: dur("retry.max", own_or(retry.max, dretry.max), "30s")?,
        multiline: match pick!(multiline) {
            (Some(m), own) => Some(multiline(&m, &origin("multiline", own), batch_lines)?),
            (None, _) => None,
        },
    };
    if options.retry_max < options.retry_initial {
        return Err((key("retry.max"), "must not be below retry.initial".into()));
    }
    Ok(SourceSettings {
        kind,
        patterns,
        include: include.build().map_err(|e| (key("paths"), e.to_string()))?,
        exclude: exclude
            .build()
            .map_err(|e| (key("exclude"), e.to_string()))?,
        roots,
        options: std::sync::Arc::new(options),
        follow_symlinks: pick!(follow_symlinks).0.unwrap_or(false),
        name: if stdin {
            Some(s.name.clone().unwrap_or_else(|| "stdin".into()))
        } else if journald {
            Some(s.name.clone().unwrap_or_else(|| "journal/{unit}".into()))
        } else {
            None
        },
        directory: s
            .directory
            .as_ref()
            .map(|d| PathBuf::from(absolute_pattern(base, d))),
        matches,
    })
}

/// Validates a `multiline` table whose key is `at`.
fn multiline(m: &MultilineConfig, at: &str, batch_lines: usize) -> Result<Multiline, KeyError> {
    let (pattern, matches_continuation) = match (&m.start, &m.continues) {
        (Some(p), None) => (p.clone(), false),
        (None, Some(p)) => (p.clone(), true),
        _ => {
            return Err((
                at.to_owned(),
                "give one of `start` (a line that begins an event) or `continue` (a line that continues one)".into(),
            ))
        }
    };
    let which = if matches_continuation {
        "continue"
    } else {
        "start"
    };
    let regex = regex::bytes::RegexBuilder::new(&pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| (format!("{at}.{which}"), e.to_string()))?;
    let max_lines = m.max_lines.unwrap_or(500);
    if max_lines == 0 || max_lines > batch_lines {
        return Err((
            format!("{at}.max_lines"),
            format!(
                "{max_lines} is outside 1..=batch_lines ({batch_lines}): an event must fit a batch"
            ),
        ));
    }
    let timeout = units::duration(
        &format!("{at}.timeout"),
        m.timeout.as_deref().unwrap_or("1s"),
    )
    .map_err(|e| (format!("{at}.timeout"), e))?;
    Ok(Multiline {
        pattern,
        regex,
        matches_continuation,
        max_lines,
        timeout,
    })
}

/// An absolute pattern with `.` and `..` resolved lexically, so stored file names are the
/// plain paths an operator expects (`/srv/logs/a.log`, not `/srv/conf/../logs/a.log`).
pub(super) fn absolute_pattern(base: &Path, pattern: &str) -> String {
    use std::path::Component;
    let joined = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        base.join(pattern)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out.to_string_lossy().into_owned()
}

fn glob(pattern: &str) -> Result<Glob, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("bad glob {pattern:?}: {}", e.kind()))
}

/// The deepest directory of `pattern` without glob characters: what to watch and walk.
pub fn literal_root(pattern: &str) -> PathBuf {
    let mut root = PathBuf::from("/");
    let components: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    for (i, c) in components.iter().enumerate() {
        let is_last = i + 1 == components.len();
        if is_last || c.contains(['*', '?', '[', '{']) {
            break;
        }
        root.push(c);
    }
    root
}
