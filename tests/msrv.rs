//! Issue 30.7: the declared `rust-version` is the real minimum: every dependency in the lock
//! file builds with it (their own `rust-version`s), and every member declares it, so clippy's
//! `incompatible_msrv` lint checks our own code against it in `.ci/run`.

fn version(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

#[test]
fn the_declared_rust_version_is_what_the_dependencies_need() {
    let m = logship_e2e::cargo_metadata(&["--locked".as_ref(), "--offline".as_ref()]);
    let members: Vec<&str> = m["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let packages = m["packages"].as_array().expect("packages");
    let mut ours = Vec::new();
    let mut needed = (vec![0], String::new());
    for p in packages {
        let name = p["name"].as_str().unwrap_or_default().to_owned();
        let rv = p["rust_version"].as_str();
        if members.contains(&p["id"].as_str().unwrap_or_default()) {
            ours.push((name, rv.map(str::to_owned)));
        } else if let Some(v) = rv {
            if version(v) > needed.0 {
                needed = (version(v), format!("{name} {v}"));
            }
        }
    }
    assert!(ours.len() >= 7, "{ours:?}");
    for (name, rv) in &ours {
        let rv = rv.as_deref().unwrap_or_else(|| {
            panic!("{name} declares no rust-version (rust-version.workspace = true)")
        });
        assert!(
            version(rv) >= needed.0,
            "{name} declares rust-version {rv}, but {} needs more",
            needed.1
        );
    }
}
