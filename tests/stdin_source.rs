//! Issue 34.6: the `stdin` source. Standard input is one stream (host + `name`), stored
//! byte-exact (any bytes, a last line without `\n`); the agent exits after the end of input
//! once everything is acknowledged, 0 when all of it was delivered and 1 when some was
//! refused; lines of a pipe arrive while it is still open.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use logship_e2e::*;

/// An agent config with one stdin source named `name`, shipping to `agg`.
fn stdin_config(dir: &Path, agg: &Aggregator, name: &str) -> std::path::PathBuf {
    let text = format!(
        "host = \"h\"\nstate_dir = {:?}\n[sink]\nurl = {:?}\n[defaults]\nlinger = \"50ms\"\nretry = {{ initial = \"20ms\", max = \"300ms\" }}\n[[sources]]\ntype = \"stdin\"\nname = {name:?}\n",
        dir.join("state").to_string_lossy(),
        agg.url("/store/batch"),
    );
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).expect("write agent config");
    p
}

/// Runs an agent whose standard input is `input` (a file) as stream `name`, until it exits.
fn ship_to_exit(
    dir: &Path,
    agg: &Aggregator,
    name: &str,
    input: &[u8],
) -> std::process::ExitStatus {
    let file = dir.join("input");
    std::fs::write(&file, input).expect("write input");
    let cfg = stdin_config(dir, agg, name);
    let mut agent = Agent::start_with_stdin(
        &cfg,
        Stdio::from(std::fs::File::open(&file).expect("open input")),
    );
    agent
        .proc
        .wait_exit(Duration::from_secs(60))
        .expect("the agent exits after the end of input")
}

#[test]
fn standard_input_is_stored_byte_exact_and_the_agent_exits_0_once_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    // 30,000 lines of any bytes (invalid UTF-8, CR, NUL, empty lines), the last without `\n`.
    let mut input = Vec::new();
    for i in 0..30_000u32 {
        input.extend_from_slice(format!("line {i} \u{e9}").as_bytes());
        if i % 7 == 0 {
            input.extend_from_slice(b"\xff\xfe\r\0");
        }
        if i % 1000 != 999 {
            input.push(b'\n');
        } else {
            input.extend_from_slice(b"\n\n");
        }
    }
    input.extend_from_slice(b"no newline at the end");
    let status = ship_to_exit(dir.path(), &agg, "/pipes/app", &input);
    assert_eq!(status.code(), Some(0));
    // Acknowledged before it exited: stored now, byte for byte.
    assert_eq!(agg.log("h", "/pipes/app", "").expect("stored"), input);
    assert!(
        !dir.path().join("state/dead-letter").exists()
            || std::fs::read_dir(dir.path().join("state/dead-letter"))
                .expect("dir")
                .count()
                == 0
    );
}

#[test]
fn lines_of_an_open_pipe_arrive_before_it_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let cfg = stdin_config(dir.path(), &agg, "stdin");
    let mut agent = Agent::start_with_stdin(&cfg, Stdio::piped());
    let mut pipe = agent.proc.child.stdin.take().expect("stdin pipe");
    pipe.write_all(b"first\nsecond\n").expect("write");
    pipe.flush().expect("flush");
    assert!(
        wait_until(Duration::from_secs(20), || agg.log("h", "stdin", "").ok()
            == Some(b"first\nsecond\n".to_vec())),
        "lines of the open pipe were not shipped"
    );
    assert!(
        agent.proc.child.try_wait().expect("status").is_none(),
        "the agent must keep reading while the pipe is open"
    );
    pipe.write_all(b"third\n").expect("write");
    drop(pipe);
    let status = agent
        .proc
        .wait_exit(Duration::from_secs(30))
        .expect("exits at the end of input");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        agg.log("h", "stdin", "").expect("stored"),
        b"first\nsecond\nthird\n"
    );
}

#[test]
fn standard_input_that_is_refused_in_part_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The aggregator takes lines of at most 1 KiB; the agent's own limit is larger, so one
    // line is refused (413 down to the single line: a dead letter).
    let agg = Aggregator::with_config(dir.path(), "[limits]\nmax_line_bytes = \"1KiB\"\n");
    let mut input = b"short one\n".to_vec();
    input.extend_from_slice(&vec![b'x'; 4096]);
    input.extend_from_slice(b"\nshort two\n");
    let status = ship_to_exit(dir.path(), &agg, "refused", &input);
    assert_eq!(
        status.code(),
        Some(1),
        "a refused line must show in the exit code"
    );
    let kept = std::fs::read_dir(dir.path().join("state/dead-letter"))
        .expect("dead letters")
        .count();
    assert!(kept >= 1, "the refused line is kept as a dead letter");
    // The lines around it were delivered.
    let stored = agg.log("h", "refused", "&format=ndjson").expect("stored");
    let text = String::from_utf8_lossy(&stored);
    assert!(
        text.contains("short one") && text.contains("short two"),
        "{text}"
    );
}

#[test]
fn a_stdin_source_is_checked_like_any_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |toml: &str| check_agent_config(dir.path(), toml);
    let (code, text) = run("[[sources]]\ntype = \"stdin\"\npaths = [\"/var/log/*.log\"]\n");
    assert_eq!(code, Some(78), "{text}");
    assert!(text.contains("sources[0].paths"), "{text}");
    let (code, text) = run("[[sources]]\ntype = \"stdin\"\n[[sources]]\ntype = \"stdin\"\n");
    assert_eq!(code, Some(78), "{text}");
    assert!(text.contains("sources[1].type"), "{text}");
    let (code, text) = run("[[sources]]\ntype = \"stdin\"\nname = \"bad\\nname\"\n");
    assert_eq!(code, Some(78), "{text}");
    assert!(text.contains("sources[0].name"), "{text}");
    let (code, text) = run("[[sources]]\npaths = [\"/x/*.log\"]\nname = \"n\"\n");
    assert_eq!(code, Some(78), "{text}");
    assert!(text.contains("sources[0].name"), "{text}");
    let (code, text) = run("[[sources]]\ntype = \"stdin\"\nname = \"/pipes/app\"\n");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("stdin: standard input as one stream, stored as \"/pipes/app\""),
        "{text}"
    );
}
