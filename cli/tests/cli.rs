//! The `divert` binary as users run it: the demo walkthrough.

use std::process::Command;

fn divert() -> Command {
    Command::new(env!("CARGO_BIN_EXE_divert"))
}

#[test]
fn demo_once_walks_every_path() {
    // A loopback prefix of its own, so a demo already running does not clash.
    let net = format!("127.{}", 200 + std::process::id() % 50);
    let out = divert()
        .args(["demo", "--once", "--net", &net])
        .output()
        .expect("run divert demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "frontend@staging → api@staging → catalog@staging, rent@staging",
        "frontend@alice → api@staging → catalog@staging, rent@staging",
        "frontend@staging → api@staging → catalog@staging, rent@bob",
        "Every path was as expected.",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}
