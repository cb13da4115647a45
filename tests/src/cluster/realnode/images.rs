//! The images the real node runs: OCI archives that `tests/node/images.sh`
//! builds (FROM scratch, nothing pulled; `tests/run.sh` runs it before the
//! tests), imported into the node's containerd. Divert's own archive comes
//! from `deploy/image.sh`, the recipe users run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Every pod sandbox's image (containerd's pinned sandbox image).
pub const PAUSE: &str = "divert-e2e/pause:1";
/// The Movies app (in place of the examples' `hashicorp/http-echo`).
pub const APP: &str = "divert-e2e/app:1";
/// The ingress controller stand-in, with nginx.
pub const INGRESS: &str = "divert-e2e/ingress:1";
/// The scenario's client: curl, Python grpcio and websockets, and the
/// Python programs under [`CLIENT_PYTHON`].
pub const CLIENT: &str = "divert-e2e/client:1";
/// Where the client image holds the Python programs (`tests/python`; the
/// protos the gRPC client compiles are two levels up).
pub const CLIENT_PYTHON: &str = "/e2e/tests/python";
/// The archives, by file name, in the folder `tests/node/images.sh` wrote.
const ARCHIVES: [&str; 5] = [
    "pause.oci.tar",
    "divert.oci.tar",
    "app.oci.tar",
    "ingress.oci.tar",
    "client.oci.tar",
];
/// Names another folder of archives than `target/node-images`.
pub const DIR_ENV: &str = "DIVERT_NODE_IMAGES";

/// The archives, or what is missing and how to make it.
pub fn archives() -> Result<Vec<PathBuf>, String> {
    let dir = std::env::var_os(DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::cluster::build::target_dir().join("node-images"));
    let found: Vec<PathBuf> = ARCHIVES.iter().map(|a| dir.join(a)).collect();
    match found.iter().find(|p| !p.exists()) {
        Some(missing) => Err(format!(
            "{} is missing: build the images with `bash tests/node/images.sh` (tests/run.sh does)",
            missing.display()
        )),
        None => Ok(found),
    }
}

/// The image names an OCI archive's index gives its manifests.
pub fn names(archive: &Path) -> Vec<String> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg("index.json")
        .output()
        .unwrap_or_else(|e| panic!("run tar: {e}"));
    assert!(
        out.status.success(),
        "no index.json in {}",
        archive.display()
    );
    let index: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{}'s index.json: {e}", archive.display()));
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(str::to_string)
        .collect()
}

/// `reference` as container runtimes complete it: a first part that is not
/// a registry (no `.` or `:`, not `localhost`) means Docker Hub, and a
/// single part its `library/`.
pub fn normalized(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => {
            reference.to_string()
        }
        Some(_) => format!("docker.io/{reference}"),
        None => format!("docker.io/library/{reference}"),
    }
}

#[cfg(test)]
mod tests {
    use super::normalized;

    #[test]
    fn a_reference_is_completed_as_a_container_runtime_completes_it() {
        assert_eq!(normalized("divert:0.1.0"), "docker.io/library/divert:0.1.0");
        assert_eq!(
            normalized("divert-e2e/pause:1"),
            "docker.io/divert-e2e/pause:1"
        );
        assert_eq!(normalized("localhost/app:1"), "localhost/app:1");
        assert_eq!(normalized("ghcr.io/o/app:1"), "ghcr.io/o/app:1");
        assert_eq!(normalized("host:5000/app:1"), "host:5000/app:1");
    }
}
