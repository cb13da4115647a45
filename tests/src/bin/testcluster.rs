//! Starts the test control plane by hand, with its node running pods, to
//! explore it with `kubectl` or `divert`; Ctrl-C stops it and removes
//! everything:
//!
//! ```sh
//! cargo build -p divert-cli -p divert-sidecar -p divert-tests --bins && sudo target/debug/testcluster
//! ```
//!
//! The pod runner maps the `divert` image to the `divert` binary and the
//! Movies example's image to `movieapp`, both found beside this binary.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Instant;

use divert_tests::cluster::images::Images;
use divert_tests::cluster::{self, Cluster};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !cluster::available() {
        eprintln!("testcluster: cannot start the test control plane here (see above)");
        std::process::exit(1);
    }
    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_default();
    let images = Images::default()
        .with("divert", dir.join("divert"), (2102, 2102))
        .also("divert", dir.join("divert-proxy"))
        .with("hashicorp/http-echo", dir.join("movieapp"), (65532, 65532))
        .with(
            "curlimages/curl",
            PathBuf::from("/usr/bin/curl"),
            (100, 101),
        );
    let started = Instant::now();
    let cluster = Cluster::start().await;
    let node = cluster.start_node(images).await;
    let kubectl = cluster::build::kubetest().unwrap_or_else(|e| panic!("{e}"));
    println!(
        "the test control plane and its node are ready ({:.1}s)\n\n  export KUBECONFIG={}\n  alias kubectl='{} kubectl'\n\nmemory (PSS, KiB): {:?}\nCtrl-C stops it and removes everything.",
        started.elapsed().as_secs_f64(),
        cluster.kubeconfig().display(),
        kubectl.display(),
        [cluster.memory_kib(), node.memory_kib()].concat(),
    );
    let _ = tokio::signal::ctrl_c().await;
    drop(node);
    drop(cluster);
}
