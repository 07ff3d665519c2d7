//! Validation of `[sink]` or `[[sinks]]`: each sink's name, kind, URLs, TLS material, token,
//! compression and the kind's own keys.

use super::*;

/// The sinks: `[sink]` alone, or every `[[sinks]]` entry (errors name `sinks[i].key`).
pub(super) fn validate_sinks(c: &Config, base: &Path) -> Result<Vec<SinkSettings>, KeyError> {
    let listed: Vec<(Option<usize>, &SinkConfig)> = match (&c.sink, c.sinks.as_slice()) {
        (Some(_), [_, ..]) => {
            return Err((
                "sinks".into(),
                "set either [sink] or [[sinks]], not both".into(),
            ))
        }
        (Some(one), []) => vec![(None, one)],
        (None, []) => {
            // No sink at all: the default (an aggregator) says what it lacks.
            return Ok(vec![validate_sink(&SinkConfig::default(), base)?]);
        }
        (None, many) => many.iter().enumerate().map(|(i, s)| (Some(i), s)).collect(),
    };
    let mut sinks: Vec<SinkSettings> = Vec::new();
    for (i, s) in listed {
        let rekey = |(key, msg): KeyError| match i {
            Some(_) if key.starts_with("sinks[") => (key, msg),
            Some(i) => (
                format!("sinks[{i}].{}", key.strip_prefix("sink.").unwrap_or(&key)),
                msg,
            ),
            None => (key, msg),
        };
        let v = validate_sink(s, base).map_err(rekey)?;
        let name_ok = !v.name.is_empty()
            && v.name.len() <= 64
            && v.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(rekey((
                "sink.name".into(),
                format!(
                    "{:?}: a sink name is 1 to 64 letters, digits, - and _",
                    v.name
                ),
            )));
        }
        if sinks.iter().any(|o| o.name == v.name) {
            // A name left to default is found at the entry's header.
            let key = match (i, &s.name) {
                (Some(i), None) => format!("sinks[{i}]"),
                _ => "sink.name".into(),
            };
            return Err(rekey((
                key,
                format!(
                    "two sinks are named {:?}; give each its own `name` (it names its state directory)",
                    v.name
                ),
            )));
        }
        sinks.push(v);
    }
    Ok(sinks)
}

fn validate_sink(s: &SinkConfig, base: &Path) -> Result<SinkSettings, KeyError> {
    let compression = match s.compression.as_str() {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "zstd" => Compression::Zstd,
        other => {
            return Err((
                "sink.compression".into(),
                format!("{other:?} is not one of \"none\", \"gzip\", \"zstd\""),
            ))
        }
    };
    if !SINK_KINDS.contains(&s.kind.as_str()) {
        return Err((
            "sink.type".into(),
            format!(
                "unknown sink {:?}; available: {}",
                s.kind,
                SINK_KINDS.join(", ")
            ),
        ));
    }
    let mut https = false;
    let mut urls = Vec::new();
    let labels = sink_labels(s)?;
    if s.kind != "stdout" {
        let list = match &s.url {
            None => {
                return Err((
                    "sink.url".into(),
                    format!("required for the {} sink", s.kind),
                ))
            }
            Some(l) => l.urls(),
        };
        if list.is_empty() {
            return Err(("sink.url".into(), "the list holds no URL".into()));
        }
        let many = matches!(s.url, Some(UrlList::Many(_)));
        for (i, u) in list.iter().enumerate() {
            let key = if many {
                format!("sink.url.{i}")
            } else {
                "sink.url".to_owned()
            };
            let uri: hyper::Uri = u
                .parse()
                .map_err(|e| (key.clone(), format!("{u:?}: {e}")))?;
            https |= uri.scheme_str() == Some("https");
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err((
                    key,
                    format!("{u:?} must be an http:// or https:// URL such as http://127.0.0.1:3000/store/batch"),
                ));
            }
            if urls.contains(u) {
                return Err((key, format!("{u:?} is listed twice")));
            }
            urls.push(u.clone());
        }
    }
    let file = |p: &Option<PathBuf>| p.as_deref().map(|p| resolve(base, p));
    let tls_keys = [
        ("sink.ca_file", &s.ca_file),
        ("sink.client_cert_file", &s.client_cert_file),
        ("sink.client_key_file", &s.client_key_file),
    ];
    if !https {
        if let Some((key, _)) = tls_keys.iter().find(|(_, v)| v.is_some()) {
            return Err((
                (*key).into(),
                "only used with an https:// sink.url; the URL is plain http://".into(),
            ));
        }
    }
    let tls = if https {
        Some(crate::client_tls::ClientTls::load(
            file(&s.ca_file),
            file(&s.client_cert_file),
            file(&s.client_key_file),
        )?)
    } else {
        None
    };
    let token = match (&s.token, &s.token_file) {
        (Some(_), Some(_)) => {
            return Err((
                "sink.token_file".into(),
                "set either sink.token or sink.token_file, not both".into(),
            ))
        }
        (Some(t), None) => Some(Secret::new(t.clone())),
        (None, Some(p)) => {
            let tokens = logship_common::config::read_tokens("sink.token_file", &resolve(base, p))?;
            tokens.into_iter().next()
        }
        (None, None) => None,
    };
    if let Some(t) = &token {
        if hyper::header::HeaderValue::from_str(&format!("Bearer {}", t.expose())).is_err() {
            return Err((
                if s.token.is_some() {
                    "sink.token"
                } else {
                    "sink.token_file"
                }
                .into(),
                "the token holds characters an HTTP header cannot carry".into(),
            ));
        }
    }
    if s.username.is_some() && token.is_none() {
        return Err((
            "sink.username".into(),
            "basic auth needs a password: set sink.token or sink.token_file".into(),
        ));
    }
    let loki_json = match (s.kind.as_str(), s.format.as_deref()) {
        (_, None) | ("loki", Some("protobuf")) => false,
        ("loki", Some("json")) => true,
        ("loki", Some(other)) => {
            return Err((
                "sink.format".into(),
                format!("{other:?} is not \"protobuf\" or \"json\""),
            ))
        }
        (_, Some(_)) => return Err(("sink.format".into(), "only used by the loki sink".into())),
    };
    if s.tenant.is_some() && s.kind != "loki" {
        return Err(("sink.tenant".into(), "only used by the loki sink".into()));
    }
    Ok(SinkSettings {
        name: s.name.clone().unwrap_or_else(|| s.kind.clone()),
        kind: s.kind.clone(),
        urls,
        token,
        tls,
        labels,
        tenant: s.tenant.clone(),
        loki_json,
        username: s.username.clone(),
        compression,
        compression_level: s.compression_level.clamp(-7, 19),
        timeout: units::duration("sink.timeout", &s.timeout)
            .map_err(|m| ("sink.timeout".to_owned(), strip_key("sink.timeout", m)))?,
        hedge_after: units::duration("sink.hedge_after", &s.hedge_after).map_err(|m| {
            (
                "sink.hedge_after".to_owned(),
                strip_key("sink.hedge_after", m),
            )
        })?,
        max_request_bytes: units::size("sink.max_request_bytes", &s.max_request_bytes)
            .map_err(|m| {
                (
                    "sink.max_request_bytes".to_owned(),
                    strip_key("sink.max_request_bytes", m),
                )
            })?
            .clamp(1024, 256 << 20) as usize,
    })
}

/// `sink.labels` (loki) or `sink.attributes` (otlp), checked: each only for its sink, and
/// Loki label names as Prometheus writes them.
fn sink_labels(s: &SinkConfig) -> Result<Vec<(String, String)>, KeyError> {
    if !s.labels.is_empty() && s.kind != "loki" {
        return Err(("sink.labels".into(), "only used by the loki sink".into()));
    }
    if !s.attributes.is_empty() && s.kind != "otlp" {
        return Err((
            "sink.attributes".into(),
            "only used by the otlp sink".into(),
        ));
    }
    for name in s.labels.keys() {
        let ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok || name == "host" || name == "filename" {
            return Err((
                format!("sink.labels.{name}"),
                "a label name is letters, digits and _, not starting with a digit; host and filename are set from the file".into(),
            ));
        }
    }
    Ok(s.labels
        .iter()
        .chain(&s.attributes)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}
