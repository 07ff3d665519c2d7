//! The one config loader both binaries use: the TOML file, then `PREFIX_*` environment
//! variables, then command-line flags, each layer over the one before.
//!
//! Environment values are typed by the key they set, not by how they look: figment's own
//! `Env` provider reads `AGENT_HOST=12345` as a number and then blames the file for "found
//! unsigned int, expected a string". Here each variable is tried as a string first, then as a
//! TOML value (`8`, `true`, `["a", "b"]`), then as a comma-separated list, and the first form
//! the config accepts at that key wins; when none does, the error names the variable.
//! `AGENT_SOURCES__0__LINGER` reaches into an array of tables by index.
//!
//! Every error names where the value came from: `file:line: key: …`, `AGENT_X: key: …`, or
//! the flag. Secrets never appear in what [`redacted`] renders.

use std::path::{Path, PathBuf};

use figment::providers::Serialized;
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::units;
use crate::ConfigError;

/// A config type that validates itself into runtime settings. Errors are `(dotted key,
/// message)`; [`Loaded::validate`] adds where the key was set.
pub trait Validate {
    type Settings;
    /// `base` is the config file's directory (relative paths are resolved against it).
    fn validate(&self, base: &Path) -> Result<Self::Settings, (String, String)>;
}

/// A loaded config and where each of its values came from.
#[derive(Debug)]
pub struct Loaded<C> {
    pub config: C,
    path: Option<PathBuf>,
    text: String,
    /// Dotted keys set by the environment, with the variable that set each.
    from_env: Vec<(String, String)>,
    /// Dotted keys set by flags.
    from_flags: Vec<String>,
}

impl<C: Serialize + DeserializeOwned> Loaded<C> {
    /// Loads `file` (when given), then `{prefix}*` variables (`AGENT_SINK__URL` sets
    /// `sink.url`), then `flags` (fields left `None` are skipped by their serializer).
    pub fn load(
        file: Option<&Path>,
        prefix: &str,
        flags: &impl Serialize,
    ) -> Result<Loaded<C>, ConfigError> {
        let (path, text) = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError(format!("{}: cannot read: {e}", p.display())))?;
                (Some(p.to_path_buf()), text)
            }
            None => (None, String::new()),
        };
        let shown = path
            .as_deref()
            .map_or_else(|| "(no file)".to_owned(), |p| p.display().to_string());
        // toml's own parser reports unknown keys and wrong types with a span.
        if let Err(e) = toml::from_str::<C>(&text) {
            return Err(ConfigError(units::toml_error(
                path.as_deref().unwrap_or(Path::new("(no file)")),
                &text,
                &e,
            )));
        }
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| ConfigError(format!("{shown}: {e}")))?;
        let mut from_env = Vec::new();
        let mut vars: Vec<(String, String)> = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().filter(|n| n.starts_with(prefix)) else {
                continue;
            };
            let value = value
                .into_string()
                .map_err(|_| ConfigError(format!("{name}: the value is not valid UTF-8")))?;
            vars.push((name.to_owned(), value));
        }
        vars.sort();
        for (name, value) in vars {
            let key = env_key(&name[prefix.len()..]).ok_or_else(|| {
                ConfigError(format!(
                    "{name}: not a config key (empty part between `__`)"
                ))
            })?;
            table = with_env_value::<C>(table, &name, &key, &value)?;
            from_env.push((key.join("."), name));
        }
        let flag_table =
            toml::Table::try_from(flags).map_err(|e| ConfigError(format!("flags: {e}")))?;
        let from_flags = flag_table.keys().cloned().collect();
        let config = Figment::from(Serialized::defaults(&table))
            .merge(Serialized::defaults(&flag_table))
            .extract::<C>()
            .map_err(|e| ConfigError(format!("{shown}: {e}")))?;
        Ok(Loaded {
            config,
            path,
            text,
            from_env,
            from_flags,
        })
    }
}

impl<C> Loaded<C> {
    /// The config file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The directory relative paths in the config are resolved against: the file's, else
    /// the working directory.
    pub fn base(&self) -> PathBuf {
        let dir = self
            .path
            .as_deref()
            .and_then(Path::parent)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
    }

    /// An error about `key`, prefixed with where its value was set: the flag, the
    /// environment variable, or the file and line.
    pub fn at(&self, key: &str, msg: &str) -> ConfigError {
        let within = |set: &str| {
            key == set || key.starts_with(&format!("{set}.")) || key.starts_with(&format!("{set}["))
        };
        if let Some(flag) = self.from_flags.iter().find(|f| within(f)) {
            return ConfigError(format!("--{}: {key}: {msg}", flag.replace('_', "-")));
        }
        if let Some((_, var)) = self
            .from_env
            .iter()
            .rev()
            .find(|(k, _)| within(k) || k.starts_with(&format!("{key}.")))
        {
            return ConfigError(format!("{var}: {key}: {msg}"));
        }
        match &self.path {
            Some(p) => match line_of(&self.text, key) {
                Some(l) => ConfigError(format!("{}:{l}: {key}: {msg}", p.display())),
                None => ConfigError(format!("{}: {key}: {msg}", p.display())),
            },
            None => ConfigError(format!("{key}: {msg}")),
        }
    }
}

impl<C: Validate> Loaded<C> {
    /// Validates into runtime settings; errors say where the value at fault was set.
    pub fn validate(&self) -> Result<C::Settings, ConfigError> {
        self.config
            .validate(&self.base())
            .map_err(|(key, msg)| self.at(&key, &msg))
    }
}

/// `SINK__URL` → `["sink", "url"]`; `SOURCES__0__LINGER` → `["sources", "0", "linger"]`.
fn env_key(rest: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    (!parts.iter().any(String::is_empty)).then_some(parts)
}

/// `table` with `key` set from the variable `name`, typed by what the config accepts there.
fn with_env_value<C: DeserializeOwned>(
    table: toml::Table,
    name: &str,
    key: &[String],
    value: &str,
) -> Result<toml::Table, ConfigError> {
    let dotted = key.join(".");
    let mut candidates = vec![toml::Value::String(value.to_owned())];
    if let Ok(mut t) = toml::from_str::<toml::Table>(&format!("v = {value}")) {
        if let Some(v) = t.remove("v") {
            candidates.push(v);
        }
    }
    if value.contains(',') {
        candidates.push(toml::Value::Array(
            value
                .split(',')
                .map(|s| toml::Value::String(s.trim().to_owned()))
                .collect(),
        ));
    } else {
        candidates.push(toml::Value::Array(vec![toml::Value::String(
            value.to_owned(),
        )]));
    }
    let mut first_error = None;
    for candidate in candidates {
        let mut t = table.clone();
        set_path(&mut t, key, candidate)
            .map_err(|m| ConfigError(format!("{name}: {dotted}: {m}")))?;
        match toml::Value::Table(t.clone()).try_into::<C>() {
            Ok(_) => return Ok(t),
            Err(e) => {
                first_error.get_or_insert_with(|| e.message().trim().to_owned());
            }
        }
    }
    Err(ConfigError(format!(
        "{name}: {dotted}: {}",
        first_error.unwrap_or_default()
    )))
}

/// Sets `key` in `table`, creating tables on the way; a numeric part indexes an existing
/// array (of tables).
fn set_path(table: &mut toml::Table, key: &[String], value: toml::Value) -> Result<(), String> {
    let Some((first, rest)) = key.split_first() else {
        return Err("empty key".into());
    };
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return Ok(());
    }
    let child = table
        .entry(first.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    set_in(child, rest, value)
}

fn set_in(here: &mut toml::Value, key: &[String], value: toml::Value) -> Result<(), String> {
    match here {
        toml::Value::Table(t) => set_path(t, key, value),
        toml::Value::Array(a) => {
            let Some((first, rest)) = key.split_first() else {
                return Err("empty key".into());
            };
            let len = a.len();
            let i: usize = first
                .parse()
                .map_err(|_| format!("{first:?} is not an index of the list"))?;
            let slot = a
                .get_mut(i)
                .ok_or_else(|| format!("index {i} is past the {len} entries of the list"))?;
            if rest.is_empty() {
                *slot = value;
                Ok(())
            } else {
                set_in(slot, rest, value)
            }
        }
        _ => Err("sets a key inside a value that is not a table".into()),
    }
}

/// Whether a key holds a secret: `token`, `write_tokens`, `password`, … (not `token_file`,
/// whose value is only a path).
pub fn is_secret_key(key: &str) -> bool {
    key == "token" || key.ends_with("_token") || key.ends_with("tokens") || key.contains("password")
}

/// The config rendered as TOML with every secret shown as `"***"`: what `--check-config`
/// prints.
pub fn redacted(config: &impl Serialize) -> Result<String, ConfigError> {
    fn walk(v: &mut toml::Value) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t.iter_mut() {
                    if is_secret_key(k) {
                        hide(v);
                    } else {
                        walk(v);
                    }
                }
            }
            toml::Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    fn hide(v: &mut toml::Value) {
        match v {
            toml::Value::Array(a) => a.iter_mut().for_each(hide),
            other => *other = toml::Value::String("***".into()),
        }
    }
    let mut v = toml::Value::try_from(config)
        .map_err(|e| ConfigError(format!("rendering the configuration: {e}")))?;
    walk(&mut v);
    toml::to_string_pretty(&v).map_err(|e| ConfigError(format!("rendering the configuration: {e}")))
}

/// A secret (a token) in runtime settings: compared and used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends or compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Reads a tokens file: one token per line; blank lines and `#` comments are skipped.
/// Errors name `key` and the file, never a token.
pub fn read_tokens(key: &str, path: &Path) -> Result<Vec<Secret>, (String, String)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        (
            key.to_owned(),
            format!("{}: cannot read: {e}", path.display()),
        )
    })?;
    let tokens: Vec<Secret> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(Secret::new)
        .collect();
    if tokens.is_empty() {
        return Err((
            key.to_owned(),
            format!("{}: holds no token", path.display()),
        ));
    }
    Ok(tokens)
}

/// `p` resolved against `base` when relative.
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Line (1-based) of a dotted key such as `sources[1].retry.max` in the TOML text.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    let mut span = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        item = item.get(name)?;
        span = item.span().or(span);
        if let Some(i) = index {
            item = item.get(i)?;
            span = item.span().or(span);
        }
    }
    // Keys in tables report the value's span; arrays of tables report their header's.
    let start = match item {
        toml_edit::Item::Value(v) => v.span().map(|s| s.start),
        _ => span.map(|s| s.start),
    }?;
    Some(text[..start.min(text.len())].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct C {
        host: Option<String>,
        n: Option<usize>,
        on: Option<bool>,
        every: Option<String>,
        list: Option<Vec<String>>,
        items: Vec<Item>,
        sub: Sub,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Item {
        name: String,
        size: u32,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sub {
        token: Option<String>,
        write_tokens: Vec<String>,
        token_file: Option<String>,
    }

    fn set(table: toml::Table, var: &str, value: &str) -> Result<toml::Table, String> {
        let key = env_key(var).ok_or("bad key")?;
        with_env_value::<C>(table, &format!("T_{var}"), &key, value).map_err(|e| e.0)
    }

    #[test]
    fn env_values_take_the_type_of_their_key() {
        let mut t: toml::Table =
            toml::from_str("[[items]]\nname = \"a\"\nsize = 1\n").expect("toml");
        for (var, value) in [
            ("HOST", "12345"),
            ("N", "8"),
            ("ON", "true"),
            ("EVERY", "5s"),
            ("LIST", "a, b"),
            ("ITEMS__0__SIZE", "7"),
            ("SUB__TOKEN", "0123"),
        ] {
            t = set(t, var, value).expect(var);
        }
        let c: C = toml::Value::Table(t.clone()).try_into().expect("config");
        assert_eq!(c.host.as_deref(), Some("12345"));
        assert_eq!(c.n, Some(8));
        assert_eq!(c.on, Some(true));
        assert_eq!(c.every.as_deref(), Some("5s"));
        assert_eq!(c.list, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(c.items[0].size, 7);
        assert_eq!(c.sub.token.as_deref(), Some("0123"));
        let t = set(t, "LIST", "[\"x\", \"y\"]").expect("toml list");
        let c: C = toml::Value::Table(t.clone()).try_into().expect("config");
        assert_eq!(c.list, Some(vec!["x".to_owned(), "y".to_owned()]));
        let e = set(t.clone(), "N", "abc").expect_err("not a number");
        assert!(e.starts_with("T_N: n: ") && e.contains("abc"), "{e}");
        let e = set(t.clone(), "ON", "maybe").expect_err("not a bool");
        assert!(e.starts_with("T_ON: on: "), "{e}");
        let e = set(t.clone(), "ITEMS__3__SIZE", "1").expect_err("no such entry");
        assert!(e.contains("index 3"), "{e}");
        let e = set(t, "NOPE", "1").expect_err("unknown key");
        assert!(
            e.starts_with("T_NOPE: nope: ") && e.contains("unknown field"),
            "{e}"
        );
    }

    #[test]
    fn secrets_are_never_rendered() {
        let c = C {
            sub: Sub {
                token: Some("s3cret".into()),
                write_tokens: vec!["w1".into(), "w2".into()],
                token_file: Some("/etc/token".into()),
            },
            ..C::default()
        };
        let out = redacted(&c).expect("renders");
        assert!(!out.contains("s3cret") && !out.contains("w1"), "{out}");
        assert!(out.contains("***") && out.contains("/etc/token"), "{out}");
        assert_eq!(format!("{:?}", Secret::new("s3cret")), "\"***\"");
    }

    #[test]
    fn errors_point_at_file_line_env_or_flag() {
        let l = Loaded {
            config: (),
            path: Some(PathBuf::from("/c/a.toml")),
            text: "a = 1\n[sink]\nurl = \"x\"\n".into(),
            from_env: vec![("sink.token".into(), "AGENT_SINK__TOKEN".into())],
            from_flags: vec!["host".into()],
        };
        assert_eq!(l.at("sink.url", "bad").0, "/c/a.toml:3: sink.url: bad");
        assert_eq!(
            l.at("sink.token", "bad").0,
            "AGENT_SINK__TOKEN: sink.token: bad"
        );
        assert_eq!(l.at("host", "bad").0, "--host: host: bad");
        assert_eq!(l.at("other", "bad").0, "/c/a.toml: other: bad");
    }
}

/// Each leaf key of a configuration (`sources[0].linger`) with a hash of its value: a reload
/// names the keys it changed, and `*_config_info{hash}` says which configuration runs, and a
/// secret's value appears in neither.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint(std::collections::BTreeMap<String, u64>);

impl Fingerprint {
    pub fn of(config: &impl Serialize) -> Result<Self, ConfigError> {
        fn walk(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, u64>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&key, v, out);
                    }
                }
                toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
                    for (i, v) in a.iter().enumerate() {
                        walk(&format!("{prefix}[{i}]"), v, out);
                    }
                }
                leaf => {
                    out.insert(
                        prefix.to_owned(),
                        xxhash_rust::xxh3::xxh3_64(leaf.to_string().as_bytes()),
                    );
                }
            }
        }
        let v = toml::Value::try_from(config)
            .map_err(|e| ConfigError(format!("rendering the configuration: {e}")))?;
        let mut out = std::collections::BTreeMap::new();
        walk("", &v, &mut out);
        Ok(Fingerprint(out))
    }

    /// The keys set differently in `new` (added, removed or changed), in key order.
    pub fn changed(&self, new: &Fingerprint) -> Vec<String> {
        let mut keys: Vec<String> = self
            .0
            .iter()
            .filter(|(k, v)| new.0.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .chain(new.0.keys().filter(|k| !self.0.contains_key(*k)).cloned())
            .collect();
        keys.sort();
        keys
    }

    /// One hash of the whole configuration (16 hex digits).
    pub fn hash(&self) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (k, v) in &self.0 {
            h.update(k.as_bytes());
            h.update(&v.to_le_bytes());
        }
        format!("{:016x}", h.digest())
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use super::Fingerprint;

    #[derive(serde::Serialize)]
    struct Source {
        paths: Vec<String>,
        linger: Option<String>,
    }

    #[derive(serde::Serialize)]
    struct Config {
        host: String,
        token: String,
        sources: Vec<Source>,
    }

    fn config(token: &str, linger: &str) -> Config {
        Config {
            host: "web-1".into(),
            token: token.into(),
            sources: vec![Source {
                paths: vec!["/var/log/*.log".into()],
                linger: Some(linger.into()),
            }],
        }
    }

    #[test]
    fn a_reload_names_the_keys_it_changed_and_never_a_value() {
        let a = Fingerprint::of(&config("secret-1", "1s")).expect("fingerprint");
        let b = Fingerprint::of(&config("secret-2", "2s")).expect("fingerprint");
        assert_eq!(a.changed(&b), vec!["sources[0].linger", "token"]);
        assert!(a.changed(&a).is_empty());
        assert_ne!(a.hash(), b.hash());
        assert_eq!(
            a.hash(),
            Fingerprint::of(&config("secret-1", "1s"))
                .expect("fp")
                .hash()
        );
        assert!(!format!("{a:?}{}", a.hash()).contains("secret"));
    }
}
