//! The `divert` binary as users run it: the demo walkthrough, and the exit
//! status and message for bad flags and a bad registry.

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

#[test]
fn bad_flags_exit_64() {
    let out = divert()
        .args(["proxy", "--registry", "x.yaml", "--connect-timeout", "soon"])
        .output()
        .expect("run divert");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--connect-timeout"));
}

#[test]
fn the_proxy_needs_exactly_one_table_source() {
    for args in [
        &["proxy"][..],
        &[
            "proxy",
            "--registry",
            "x.yaml",
            "--discovery",
            "http://c:8086",
        ],
    ] {
        let out = divert().args(args).output().expect("run divert");
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--registry"),
            "{args:?}"
        );
    }
}

#[test]
fn bad_registry_exits_64_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("divert-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("registry.yaml");
    std::fs::write(
        &path,
        "services:\n  - name: api\n    namespace: staging\n    ports: [{ port: 99999 }]\n",
    )
    .expect("write registry");
    let out = divert()
        .args(["proxy", "--registry"])
        .arg(&path)
        .output()
        .expect("run divert");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("services[0].ports[0].port"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn missing_registry_says_what_to_do() {
    let out = divert()
        .args(["proxy", "--registry", "/nonexistent/registry.yaml"])
        .output()
        .expect("run divert");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/registry.yaml") && stderr.contains("--registry"),
        "{stderr}"
    );
}
