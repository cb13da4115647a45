//! Building the test cluster's Go programs once per test process: the control
//! plane's multi-call binary `kubetest` (the Go module in `tests/kube`), the
//! real node's container runtime (the Go module in `tests/node`:
//! containerd, its runc shim, runc and the CNI plugins), and `istiocheck`
//! (`tests/istio`: Istio's CRDs and validation, for the istio driver).
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
    go_build(&module, &["-ldflags", &ldflags], &out, ".")?;
    Ok(out)
}

/// The folder that holds the real node's runtime programs, built if needed:
/// `containerd`, `containerd-shim-runc-v2`, `ctr`, `runc` (with seccomp,
/// through libseccomp), and the CNI plugins `bridge`, `host-local` and
/// `loopback`, each by its own name, as containerd and the CNI look them up.
pub fn node_runtime() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let module = crate::crate_dir().join("node");
        // A trailing slash: `go build -o DIR/ tool` writes each tool there.
        let out = target_dir().join("node-runtime");
        let tags = "seccomp no_btrfs no_devmapper no_zfs";
        go_build(
            &module,
            &["-tags", tags, "-ldflags", "-s -w"],
            &out.join(""),
            "tool",
        )?;
        Ok(out)
    })
    .clone()
}

/// `istiocheck` (the Go module in `tests/istio`), built if needed: Istio's
/// own CRDs (`istiocheck crds`) and Istio's own validation of
/// VirtualServices (`istiocheck validate`), from Istio's Go modules.
pub fn istiocheck() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let module = crate::crate_dir().join("istio");
        let out = target_dir().join("istiocheck").join("istiocheck");
        go_build(&module, &["-ldflags", "-s -w"], &out, ".")?;
        Ok(out)
    })
    .clone()
}

/// `go build -trimpath FLAGS -o OUT PACKAGES` in `module`, timed.
fn go_build(module: &Path, flags: &[&str], out: &Path, packages: &str) -> Result<(), String> {
    let started = Instant::now();
    let result = Command::new("go")
        .current_dir(module)
        .args(["build", "-trimpath"])
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(packages)
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
                "go: built {} in {:.1}s",
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else the workspace's.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    crate::crate_dir()
        .parent()
        .unwrap_or(Path::new("."))
        .join("target")
}
