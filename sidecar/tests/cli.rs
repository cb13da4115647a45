//! The sidecar binary, `divert-proxy`, as a pod runs it: the exit status and
//! message for bad flags and a bad registry (the proxy's behaviour is proven
//! in `tests/`).

use std::process::Command;

fn divert_proxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_divert-proxy"))
}

#[test]
fn bad_flags_exit_64() {
    let out = divert_proxy()
        .args(["proxy", "--registry", "x.yaml", "--connect-timeout", "soon"])
        .output()
        .expect("run divert-proxy");
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
        let out = divert_proxy()
            .args(args)
            .output()
            .expect("run divert-proxy");
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--registry"),
            "{args:?}"
        );
    }
}

#[test]
fn bad_registry_exits_64_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("divert-sidecar-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("registry.yaml");
    std::fs::write(
        &path,
        "services:\n  - name: api\n    namespace: staging\n    ports: [{ port: 99999 }]\n",
    )
    .expect("write registry");
    let out = divert_proxy()
        .args(["proxy", "--registry"])
        .arg(&path)
        .output()
        .expect("run divert-proxy");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("services[0].ports[0].port"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn missing_registry_says_what_to_do() {
    let out = divert_proxy()
        .args(["proxy", "--registry", "/nonexistent/registry.yaml"])
        .output()
        .expect("run divert-proxy");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/registry.yaml") && stderr.contains("--registry"),
        "{stderr}"
    );
}

#[test]
fn init_refuses_a_bad_port_list_with_exit_64() {
    let out = divert_proxy()
        .args(["init", "--dry-run", "--skip-outbound-ports", "22,nope"])
        .output()
        .expect("run divert-proxy");
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--skip-outbound-ports"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_sidecar_binary_runs_only_what_a_pod_runs() {
    for gone in ["controller", "install", "check", "tap", "demo", "inject"] {
        let out = divert_proxy().arg(gone).output().expect("run divert-proxy");
        assert_eq!(out.status.code(), Some(64), "{gone}");
    }
}

#[test]
fn a_bad_log_filter_exits_64_and_says_what_to_give() {
    let out = divert_proxy()
        .args(["--log-level", "bad[", "proxy", "--registry", "x.yaml"])
        .output()
        .expect("run divert-proxy");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--log-level \"bad[\"") && stderr.contains("give a level"),
        "{stderr}"
    );
}
