//! The Loki view of what is stored: every (host, file) is a stream labelled `host` and
//! `filename` (Promtail's names), plus the labels a push kept in the file name
//! (`/var/log/app.log{env="prod"}` → `filename="/var/log/app.log", env="prod"`). Label names
//! with dots (OTLP's) are shown with underscores, as Loki shows them.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::logql::Matcher;
use crate::store::Store;
use crate::App;

/// A stream's labels, by name.
pub type Labels = BTreeMap<String, String>;

/// Streams a selector may resolve to; past it the query is refused (narrow the selector).
pub const MAX_STREAMS: usize = 100_000;
/// Listings are walked this many files at a time.
const PAGE: usize = 256;

/// The labels of a stored file.
pub fn labels_of(host: &str, file: &str) -> Labels {
    let mut out = Labels::new();
    out.insert("host".into(), host.into());
    let (base, extra) = split_name(file);
    if !base.is_empty() {
        out.insert("filename".into(), base.into());
    }
    for (k, v) in extra {
        out.entry(k.replace('.', "_")).or_insert(v);
    }
    out
}

/// A file name and the label set a push appended to it, if any.
fn split_name(file: &str) -> (&str, Vec<(String, String)>) {
    if file.ends_with('}') {
        for (at, _) in file.match_indices('{') {
            if let Ok(labels) = logship_wire::push::parse_labels(&file[at..]) {
                return (&file[..at], labels);
            }
        }
    }
    (file, Vec::new())
}

/// Whether `labels` pass every matcher (a label a stream lacks counts as empty).
pub fn admits(selector: &[Matcher], labels: &Labels) -> bool {
    selector
        .iter()
        .all(|m| m.admits(labels.get(&m.name.replace('.', "_")).map(String::as_str)))
}

/// Visits every stored (host, file) with its labels, page by page; stops when `visit`
/// returns false.
pub async fn each_stream(
    store: &dyn Store,
    mut visit: impl FnMut(&str, &str, Labels) -> bool,
) -> Result<(), crate::store::StoreError> {
    let mut after: Option<(String, String)> = None;
    loop {
        let page = store
            .files_page(
                None,
                after.as_ref().map(|(h, f)| (h.as_str(), f.as_str())),
                PAGE,
            )
            .await?;
        let done = page.len() < PAGE;
        for f in &page {
            if !visit(&f.host, &f.file, labels_of(&f.host, &f.file)) {
                return Ok(());
            }
        }
        match page.last() {
            Some(last) if !done => after = Some((last.host.clone(), last.file.clone())),
            _ => return Ok(()),
        }
    }
}

/// The (host, file) pairs a selector admits, and their hosts.
pub struct Resolved {
    pub pairs: HashSet<(String, String)>,
    pub hosts: BTreeSet<String>,
}

/// Resolves a selector against the store; more than [`MAX_STREAMS`] is an error naming it.
pub async fn resolve(app: &App, selector: &[Matcher]) -> Result<Resolved, super::ApiError> {
    let mut out = Resolved {
        pairs: HashSet::new(),
        hosts: BTreeSet::new(),
    };
    let mut over = false;
    each_stream(&*app.store, |host, file, labels| {
        if admits(selector, &labels) {
            if out.pairs.len() >= MAX_STREAMS {
                over = true;
                return false;
            }
            out.pairs.insert((host.to_owned(), file.to_owned()));
            out.hosts.insert(host.to_owned());
        }
        true
    })
    .await?;
    if over {
        return Err(super::ApiError::bad_request(format!(
            "the selector matches more than {MAX_STREAMS} streams; narrow it"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_give_back_the_labels_a_push_kept() {
        let l = labels_of("web-1", "/var/log/syslog{job=\"fluentbit\"}");
        assert_eq!(l["filename"], "/var/log/syslog");
        assert_eq!(l["job"], "fluentbit");
        let l = labels_of("h", "checkout{deployment.environment=\"prod\"}");
        assert_eq!(l["deployment_environment"], "prod");
        let l = labels_of("h", "{app=\"x\", env=\"y\"}");
        assert!(!l.contains_key("filename"));
        assert_eq!(l["app"], "x");
        let l = labels_of("h", "/tmp/{odd}.log");
        assert_eq!(l["filename"], "/tmp/{odd}.log");
    }
}
