//! Building the test control plane's binary, `kubetest` (the Go module in
//! `tests/kube`), once per test process.
//!
//! `go build` is incremental through GOCACHE and GOMODCACHE: the first build
//! on a machine compiles Kubernetes (many minutes on two cores), later ones
//! only check that nothing changed. `KUBETEST_BIN` names a binary to use
//! instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

/// The `kubetest` binary, built if needed; `Err` says why it cannot be had.
pub fn kubetest() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(build).clone()
}

fn build() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("KUBETEST_BIN") {
        return Ok(PathBuf::from(p));
    }
    let module = crate::crate_dir().join("kube");
    let out = target_dir().join("kubetest").join("kubetest");
    // The release the binaries report (`kubectl version`, the API server's
    // /version), as Kubernetes' own build stamps it.
    let go_mod = std::fs::read_to_string(module.join("go.mod"))
        .map_err(|e| format!("cannot read {}/go.mod: {e}", module.display()))?;
    let release = go_mod
        .lines()
        .map(|l| l.trim().trim_start_matches("require ").trim())
        .find_map(|l| {
            l.strip_prefix("k8s.io/kubernetes ")
                .filter(|v| !v.contains("=>"))
        })
        .ok_or("tests/kube/go.mod does not require k8s.io/kubernetes")?
        .trim();
    let mut parts = release.trim_start_matches('v').split('.');
    let (major, minor) = (parts.next().unwrap_or("0"), parts.next().unwrap_or("0"));
    let ldflags = format!(
        "-s -w -X k8s.io/component-base/version.gitVersion={release} \
         -X k8s.io/component-base/version.gitMajor={major} \
         -X k8s.io/component-base/version.gitMinor={minor} \
         -X k8s.io/component-base/version.gitTreeState=clean"
    );
    let started = Instant::now();
    let result = Command::new("go")
        .current_dir(&module)
        .args(["build", "-trimpath", "-ldflags", &ldflags, "-o"])
        .arg(&out)
        .arg(".")
        .output();
    match result {
        Err(e) => Err(format!(
            "cannot run `go` ({e}): install Go 1.26 to build the test control plane"
        )),
        Ok(o) if !o.status.success() => Err(format!(
            "`go build` in {} failed:\n{}",
            module.display(),
            String::from_utf8_lossy(&o.stderr)
        )),
        Ok(_) => {
            eprintln!(
                "kubetest: built {} in {:.1}s",
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(out)
        }
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else the workspace's.
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    crate::crate_dir()
        .parent()
        .unwrap_or(Path::new("."))
        .join("target")
}
