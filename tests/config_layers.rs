//! Issue 13.2 and 13.5: one config loader for both binaries — environment values typed by
//! the key they set, errors that name the variable, the file and line, or the flag — and
//! secrets that `--check-config` never prints.

use std::path::Path;
use std::time::Duration;

use logship_e2e::*;

const T: Duration = Duration::from_secs(30);

fn agent_toml(dir: &Path) -> String {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let p = agent_config(
        dir,
        "http://127.0.0.1:9/store/batch",
        "h",
        &[&format!("{}/*.log", logs.display())],
        "",
        "",
    );
    p.to_string_lossy().into_owned()
}

#[test]
fn agent_env_overrides_of_every_type_take_the_type_of_their_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = agent_toml(dir.path());
    let (code, out, err) = run_bin(
        "agent",
        &["--config", &cfg, "--check-config"],
        &[
            ("AGENT_HOST", "12345"),
            ("AGENT_LIMITS__MAX_IN_FLIGHT", "8"),
            ("AGENT_SOURCES__0__FOLLOW_SYMLINKS", "true"),
            ("AGENT_SHUTDOWN_TIMEOUT", "7s"),
            ("AGENT_SOURCES__0__EXCLUDE", "/x/*.gz, /y/*.gz"),
            ("AGENT_SINK__TOKEN", "t0p-s3cret"),
        ],
        T,
    );
    assert_eq!(code, 0, "{err}");
    for want in [
        "host = \"12345\"",
        "max_in_flight = 8",
        "follow_symlinks = true",
        "shutdown_timeout = \"7s\"",
        "\"/x/*.gz\"",
        "\"/y/*.gz\"",
        "token = \"***\"",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    assert!(
        !out.contains("t0p-s3cret") && !err.contains("t0p-s3cret"),
        "{out}{err}"
    );

    // A value the key cannot take: the error names the variable, not the file.
    for (var, value, key) in [
        ("AGENT_LIMITS__MAX_IN_FLIGHT", "abc", "limits.max_in_flight"),
        (
            "AGENT_SOURCES__0__FOLLOW_SYMLINKS",
            "maybe",
            "sources.0.follow_symlinks",
        ),
        ("AGENT_SHUTDOWN_TIMEOUT", "soon", "shutdown_timeout"),
    ] {
        let (code, _, err) = run_bin(
            "agent",
            &["--config", &cfg, "--check-config"],
            &[(var, value)],
            T,
        );
        assert_eq!(code, 78, "{var}={value}: {err}");
        assert!(
            err.contains(&format!("{var}: {key}")) && !err.contains("agent.toml"),
            "{var}={value}: the error should name the variable and key: {err}"
        );
    }
}

#[test]
fn aggregator_errors_name_file_line_key_or_variable_and_hide_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("agg.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\n[auth]\nread_tokens = [\"r3ad-s3cret\"]\n",
    )
    .expect("write");
    let cfg_s = cfg.to_string_lossy().into_owned();
    let (code, out, err) = run_bin(
        "aggregator",
        &["--config", &cfg_s, "--check-config"],
        &[
            ("AGGREGATOR_MAX_CONNECTIONS", "50"),
            ("AGGREGATOR_AUTH__WRITE_TOKENS", "w1-s3cret,w2-s3cret"),
            ("AGGREGATOR_STORE__RETENTION", "7d"),
        ],
        T,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("max_connections = 50"), "{out}");
    assert!(out.contains("retention = \"7d\""), "{out}");
    assert!(!out.contains("s3cret"), "a token was printed:\n{out}");
    assert!(out.contains("\"***\""), "{out}");

    // A bad value in the file: file, line and key.
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\nheader_read_timeout = \"ten\"\n",
    )
    .expect("write");
    let (code, _, err) = run_bin(
        "aggregator",
        &["--config", &cfg_s, "--check-config"],
        &[],
        T,
    );
    assert_eq!(code, 78);
    assert!(err.contains("agg.toml:2: header_read_timeout"), "{err}");
    // The same key from the environment: the variable.
    let (code, _, err) = run_bin(
        "aggregator",
        &["--config", &cfg_s, "--check-config"],
        &[("AGGREGATOR_MAX_CONNECTIONS", "lots")],
        T,
    );
    assert_eq!(code, 78);
    assert!(
        err.contains("AGGREGATOR_MAX_CONNECTIONS: max_connections"),
        "{err}"
    );
    // A missing tokens file names its key.
    std::fs::write(
        &cfg,
        "[auth]\nwrite_tokens_file = \"/nonexistent/tokens\"\n",
    )
    .expect("write");
    let (code, _, err) = run_bin(
        "aggregator",
        &["--config", &cfg_s, "--check-config"],
        &[],
        T,
    );
    assert_eq!(code, 78);
    assert!(err.contains("agg.toml:2: auth.write_tokens_file"), "{err}");
}
