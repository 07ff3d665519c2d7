//! The guarantees table of `docs/ARCHITECTURE.md` names the tests that prove each row: every
//! test it names must exist (issue 30.6: a row named a test that did not test its claim, and
//! nothing would notice a renamed or deleted one).

use std::collections::HashSet;
use std::path::Path;

/// Every `fn` name in the workspace's Rust files (not `target/` or the vendored sled).
fn function_names(root: &Path) -> HashSet<String> {
    let mut names = HashSet::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !["target", "vendor", ".git", "node_modules"].contains(&name.as_str()) {
                    dirs.push(p);
                }
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&p).expect("read");
                for piece in text.split("fn ").skip(1) {
                    let ident: String = piece
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !ident.is_empty() {
                        names.insert(ident);
                    }
                }
            }
        }
    }
    names
}

/// The test names a cell of the table gives: the last segment of each backticked path,
/// expanding `{a, b}` and dropping the `::sled` / `::redis` of a both-backends test.
fn named_tests(cell: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, code) in cell.split('`').enumerate() {
        if i % 2 == 0 || !code.contains("::") {
            continue;
        }
        let mut segments: Vec<&str> = code.split("::").collect();
        while segments
            .last()
            .is_some_and(|s| ["sled", "redis", "{sled,redis}", "*", "tests"].contains(s))
        {
            segments.pop();
        }
        if code.ends_with("::*") {
            continue; // a whole module: its tests are whatever it holds
        }
        let Some(last) = segments.last() else {
            continue;
        };
        let last = last.trim_start_matches('…');
        for name in last.trim_matches(|c| c == '{' || c == '}').split(',') {
            let name = name.trim();
            if name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '…')
                && !name.is_empty()
            {
                out.push(name.to_owned());
            }
        }
    }
    out
}

#[test]
fn every_test_the_guarantees_table_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).expect("ARCHITECTURE");
    let table = doc
        .split("## Guarantees and how each is tested")
        .nth(1)
        .expect("the guarantees section")
        .split("\n## ")
        .next()
        .expect("section");
    let fns = function_names(&root);
    let mut checked = 0;
    let mut missing = Vec::new();
    for row in table.lines().filter(|l| l.starts_with('|')) {
        let Some(tests) = row.split(" | ").nth(2) else {
            continue;
        };
        for name in named_tests(tests) {
            checked += 1;
            let found = match name.strip_suffix('…') {
                Some(prefix) => fns.iter().any(|f| f.starts_with(prefix)),
                None => fns.contains(&name),
            };
            if !found {
                missing.push(name);
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} test names found: is the table still there?"
    );
    assert!(
        missing.is_empty(),
        "named in the guarantees table but not a test: {missing:?}"
    );
}
