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

/// A directory of its own under the system's temporary one, removed when
/// dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("divert-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn deploy_judges_the_manifest_before_it_asks_a_cluster_that_is_down() {
    let dir = Scratch::new("judge");
    // An API server address nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let kubeconfig = dir.write(
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: down\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: down\n  user: {{}}\n\
             contexts:\n- name: down\n  context:\n    cluster: down\n    user: down\n\
             current-context: down\n"
        ),
    );
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
