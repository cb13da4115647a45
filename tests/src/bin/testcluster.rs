//! Starts the test control plane by hand, to explore it with `kubectl` or
//! `divert`, and stops it (removing everything) on Ctrl-C:
//!
//! ```sh
//! sudo cargo run -p divert-tests --bin testcluster
//! ```
//!
//! It prints the kubeconfig to use and a `kubectl` built from the same
//! Kubernetes release.

use std::time::Instant;

use divert_tests::cluster::{self, Cluster};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !cluster::available() {
        eprintln!("testcluster: cannot start the test control plane here (see above)");
        std::process::exit(1);
    }
    let started = Instant::now();
    let cluster = Cluster::start().await;
    let kubectl = cluster::build::kubetest().unwrap_or_else(|e| panic!("{e}"));
    println!(
        "the test control plane is ready ({:.1}s)\n\n  export KUBECONFIG={}\n  alias kubectl='{} kubectl'\n\nmemory (PSS, KiB): {:?}\nCtrl-C stops it and removes everything.",
        started.elapsed().as_secs_f64(),
        cluster.kubeconfig().display(),
        kubectl.display(),
        cluster.memory_kib(),
    );
    let _ = tokio::signal::ctrl_c().await;
    drop(cluster);
}
