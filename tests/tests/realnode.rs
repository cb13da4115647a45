//! The test control plane's real node: the upstream kubelet, kube-proxy,
//! containerd, runc and CNI plugins run pods from images built here, the API
//! server holds the kubelet to its own node, and the node leaves the machine
//! as it found it. (The scenario, `tests/cluster.rs`, runs on this node.)

use divert_tests::cluster::kubelet::NODE_NAME;
use divert_tests::cluster::realnode::{self, RealNode, images};
use divert_tests::cluster::{self, Cluster, eventually};
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_is_held_to_its_own_node_runs_imported_images_and_leaves_nothing_behind() {
    if !cluster::available() || !realnode::available() {
        return;
    }
    let cluster = Cluster::start().await;
    let node = RealNode::start(&cluster).await;
    let admin = cluster.client().await;

    // The kubelet registered its Node, and says what runs it.
    let nodes: Api<Node> = Api::all(admin.clone());
    let info = nodes
        .get(NODE_NAME)
        .await
        .expect("the kubelet's Node")
        .status
        .and_then(|s| s.node_info)
        .expect("the Node's nodeInfo");
    assert!(
        info.container_runtime_version
            .starts_with("containerd://2."),
        "{}",
        info.container_runtime_version
    );
    assert!(
        info.kubelet_version.starts_with("v1."),
        "{}",
        info.kubelet_version
    );

    // With the kubelet's own certificate, the Node authorizer and the
    // NodeRestriction admission plugin hold it to its node.
    let as_node = cluster.node_client().await;
    let node_nodes: Api<Node> = Api::all(as_node.clone());
    let restricted = node_nodes
        .patch(
            NODE_NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "node-restriction.kubernetes.io/zone": "mine"}}})),
        )
        .await;
    assert!(
        matches!(&restricted, Err(kube::Error::Api(e)) if e.code == 403),
        "a node set a node-restriction label on itself: {restricted:?}"
    );
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "another-node"}})).expect("a Node"),
        )
        .await
        .expect("the admin makes another Node");
    let other = node_nodes
        .patch(
            "another-node",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"taken": "over"}}})),
        )
        .await;
    assert!(
        matches!(&other, Err(kube::Error::Api(e)) if e.code == 403),
        "a node changed another node: {other:?}"
    );
    Api::<Secret>::namespaced(admin.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "unrelated"},
                "stringData": {"k": "v"}}))
            .expect("a Secret"),
        )
        .await
        .expect("the admin makes a Secret");
    let secret = Api::<Secret>::namespaced(as_node, "default")
        .get("unrelated")
        .await;
    assert!(
        matches!(&secret, Err(kube::Error::Api(e)) if e.code == 403),
        "a node read a Secret none of its pods uses: {secret:?}"
    );

    // A pod from an imported image, which runc runs and the CNI plugins
    // give an address on the node's bridge; its log comes through the
    // kubelet's API.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    pods.patch(
        "app",
        &PatchParams::apply("divert-tests").force(),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "app"},
            "spec": {"containers": [{"name": "app", "image": images::APP,
                "imagePullPolicy": "Never",
                "args": ["-listen=:5678", "-text=app@default"]}]}})),
    )
    .await
    .expect("create the pod");
    let ip = eventually("the pod runs", || async {
        let s = pods.get("app").await.ok()?.status?;
        (s.phase.as_deref() == Some("Running")).then_some(())?;
        s.pod_ip
    })
    .await;
    assert!(ip.starts_with("10.244.0."), "{ip}");
    let log = eventually("the app's log, through the kubelet", || async {
        pods.logs("app", &Default::default())
            .await
            .ok()
            .filter(|l| !l.is_empty())
    })
    .await;
    assert!(log.contains("5678"), "{log}");

    // Dropped, the node leaves no process, cgroup or mount behind.
    let trail = node.trail();
    assert!(!trail.pids.is_empty(), "the node's cgroups hold no process");
    drop(node);
    drop(cluster);
    // A PID may be reused: a process of the node's is one still in its
    // cgroups. One that has exited and waits only for its parent to reap
    // it (a zombie, gone from `cgroup.procs` but not from
    // `/proc/<pid>/cgroup`) did not outlive the node.
    let name = trail
        .dir
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    let alive: Vec<i32> = trail
        .pids
        .iter()
        .copied()
        .filter(|p| {
            let running = std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X']))
            });
            running
                && std::fs::read_to_string(format!("/proc/{p}/cgroup"))
                    .is_ok_and(|c| c.contains(&name))
        })
        .collect();
    assert!(
        alive.is_empty(),
        "the node's processes outlived it: {alive:?}"
    );
    for cgroup in &trail.cgroups {
        assert!(!cgroup.exists(), "{} is still there", cgroup.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let dir = trail.dir.display().to_string();
    assert!(
        !mounts.contains(&dir),
        "a mount under {dir} is still there:\n{mounts}"
    );
}
