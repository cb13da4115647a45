//! `bench-podstart`: how long a pod takes from its creation to Ready on the
//! test cluster's real node (upstream kubelet, containerd, runc), with
//! Divert's injection (the init container, then the proxy as a native
//! sidecar, then the app) and without it, alternately, in one run.
//!
//! Each round creates the same pod (the Movies app's image, no probes) in
//! an injected namespace and in a plain one, and polls the API server every
//! 20 ms until its Ready condition is True: the figure is that wall time,
//! which includes the scheduler, the kubelet's sync, the sandbox (pause,
//! the CNI plugins) and the containers. `bench/podstart.sh` builds and runs
//! it; BENCHMARKS.md has the results. Needs root, and the images of
//! `tests/node/images.sh`.

#![forbid(unsafe_code)]

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use divert_tests::cluster::realnode::{self, RealNode, images};
use divert_tests::cluster::{self, Cluster, eventually, pod_ready};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

/// Times pods from creation to Ready on the real node, with and without
/// Divert's injection.
#[derive(Parser, Debug)]
#[command(name = "bench-podstart")]
struct Args {
    /// Rounds (each one pod of each kind).
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// The `divert` binary that installs the controller.
    #[arg(long)]
    divert: std::path::PathBuf,
}

/// How often the API server is asked whether the pod is Ready.
const POLL: Duration = Duration::from_millis(20);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Everything that can be checked is checked before the cluster starts:
    // the release profile aborts on a panic, so a failure later would
    // leave the cluster's processes, mounts and cgroups behind.
    if !args.divert.is_file() {
        eprintln!(
            "bench-podstart: {} is missing (cargo build --release -p divert-cli)",
            args.divert.display()
        );
        return ExitCode::FAILURE;
    }
    if !cluster::available() || !realnode::available() {
        eprintln!("bench-podstart: the real node cannot run here (see above)");
        return ExitCode::FAILURE;
    }
    let cluster = Cluster::start().await;
    let node = RealNode::start(&cluster).await;
    let client = cluster.client().await;

    let manifests = Command::new(&args.divert)
        .arg("install")
        .output()
        .expect("run divert install");
    assert!(manifests.status.success(), "divert install failed");
    let mut apply = cluster.kubectl();
    apply
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let status = divert_tests::output_with_input(apply, &manifests.stdout)
        .expect("run kubectl apply")
        .status;
    assert!(status.success(), "kubectl apply of the install failed");
    let controller: Api<Pod> = Api::namespaced(client.clone(), "divert");
    eventually("the controller is Ready", || async {
        controller
            .list(&Default::default())
            .await
            .ok()?
            .items
            .iter()
            .any(pod_ready)
            .then_some(())
    })
    .await;
    for (ns, labels) in [
        ("injected", json!({"divert.dev/inject": "enabled"})),
        ("plain", json!({})),
    ] {
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .patch(
                ns,
                &PatchParams::apply("bench-podstart"),
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns, "labels": labels}})),
            )
            .await
            .expect("a namespace");
    }

    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        for (i, ns) in ["injected", "plain"].into_iter().enumerate() {
            let took = start_pod(&client, ns, &format!("app-{round}")).await;
            times[i].push(took);
        }
    }
    drop(node);
    drop(cluster);

    println!(
        "pod creation to Ready on the real node, {} rounds:",
        args.rounds
    );
    for (i, what) in ["with injection", "without"].into_iter().enumerate() {
        let t = &mut times[i];
        t.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "  {what:16} median {:6.0} ms   min {:6.0} ms   max {:6.0} ms",
            ms(t[t.len() / 2]),
            ms(t[0]),
            ms(t[t.len() - 1])
        );
    }
    ExitCode::SUCCESS
}

/// Creates pod `name` in `ns`, waits for it to be Ready, deletes it, and
/// returns the time from the create call to Ready.
async fn start_pod(client: &kube::Client, ns: &str, name: &str) -> Duration {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    pods.patch(
        name,
        &PatchParams::apply("bench-podstart"),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1,
                "containers": [{"name": "app", "image": images::APP,
                    "args": ["-listen=:8080", format!("-text={name}@{ns}")],
                    "ports": [{"containerPort": 8080}]}]}})),
    )
    .await
    .expect("create the pod");
    let deadline = started + cluster::WAIT;
    loop {
        if pods.get(name).await.ok().as_ref().is_some_and(pod_ready) {
            break;
        }
        assert!(Instant::now() < deadline, "{ns}/{name} was not Ready");
        tokio::time::sleep(POLL).await;
    }
    let took = started.elapsed();
    pods.delete(name, &DeleteParams::default())
        .await
        .expect("delete the pod");
    eventually("the pod is gone", || async {
        pods.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
    took
}
