//! The `divert` binary as users run it: the demo walkthrough.

use std::process::Command;

mod common;
use common::{TempDir, free_port, kubeconfig};

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
fn deploy_judges_the_manifest_before_it_asks_a_cluster_that_is_down() {
    let dir = TempDir::new("judge");
    let kubeconfig = kubeconfig(&dir, &format!("http://127.0.0.1:{}", free_port()));
    let deploy = |manifest: &std::path::Path| {
        divert()
            .args(["deploy", "-n", "alice", "--timeout", "2s", "-f"])
            .arg(manifest)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .output()
            .expect("run divert deploy")
    };

    let listed = dir.write(
        "listed.yml",
        "deploy:\n  commands:\n  - kubectl apply -f k8s.yaml\n  divert:\n    namespace:\n    - staging\n    - prod\n",
    );
    let out = deploy(&listed);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("namespace"), "names the field: {stderr}");
    assert!(stderr.contains("line 6"), "names the line: {stderr}");
    assert!(!stderr.contains("cannot reach"), "{stderr}");

    // The same kubeconfig with a good manifest does reach for the cluster.
    let good = dir.write(
        "good.yml",
        "deploy:\n  commands:\n  - kubectl apply -f k8s.yaml\n  divert:\n    namespace: staging\n",
    );
    let out = deploy(&good);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
}
