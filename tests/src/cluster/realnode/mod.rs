//! A real node for the test control plane: the upstream kubelet and
//! kube-proxy (from `kubetest`, the same Kubernetes release as the API
//! server), containerd 2.x with runc, and the CNI reference plugins (from
//! the Go module `tests/node`), with the upstream kube-scheduler placing
//! pods on it. The pod runner ([`super::kubelet`]) stands in for all of this
//! when the real node is not asked for.
//!
//! The node pulls nothing: each image it runs is imported into containerd
//! from an OCI archive made here ([`images`]).
//!
//! Where everything lives, and why the machine is left as it was found:
//! - network: the cluster's node namespace, whose `br0` the CNI bridge
//!   plugin joins the pods to; kube-proxy's and the pods' rules are in that
//!   namespace and the pods' own, which go with them;
//! - mounts: a mount namespace of the node's ([`mountns`]), with its own
//!   `/var` and `/run`;
//! - processes and cgroups: a cgroup subtree of the node's in every
//!   hierarchy ([`cgroups`]), the kubelet's `cgroupRoot`, which also holds
//!   the agents themselves, so that containerd's shims (which leave their
//!   parent) and the containers are all found and killed on drop.
//!
//! The kubelet registers its Node with its own client certificate
//! (`system:node:<name>`), and the API server runs the Node authorizer and
//! the NodeRestriction admission plugin, as on a kubeadm cluster.

mod cgroups;
pub mod config;
pub mod images;
mod mountns;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Api;

use super::kubelet::NODE_NAME;
use super::{Cluster, Component, NODE_IP, START_TIMEOUT, build, pki};
use crate::TempDir;
use crate::netns::run_ok;

/// Whether a real node can run here, beside what [`super::available`]
/// checks: cgroup v1's pids hierarchy (where the node's processes are
/// tracked), `nsenter` and `unshare`, and the node's programs, built with
/// Go. Under CI=true a missing piece fails the test; elsewhere the test
/// skips with the reason.
pub fn available() -> bool {
    if !Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists() {
        return crate::skip_or_fail(
            "the real node: this machine has no cgroup v1 pids hierarchy at /sys/fs/cgroup/pids \
             (the node tracks its processes there)",
        );
    }
    for tool in ["nsenter", "unshare"] {
        if !crate::have_tool(tool, &["--version"]) {
            return false;
        }
    }
    match build::node_runtime().and_then(|_| images::archives()) {
        Ok(_) => true,
        Err(why) => crate::skip_or_fail(&format!("the real node: {why}")),
    }
}

/// A running real node. Drop it before its [`Cluster`].
pub struct RealNode {
    // Field order is drop order: the agents stop, then every process left in
    // the cgroups is killed, then the mount namespace goes, then the files.
    /// containerd, the kubelet, kube-proxy, and beside them the scheduler
    /// and the cluster DNS, which the pod runner does without.
    agents: Vec<Component>,
    cgroups: cgroups::Subtree,
    mounts: mountns::MountNs,
    /// The cluster's node network namespace, which the agents join.
    netns: String,
    /// How the kubelet is started (again, by [`RealNode::restart_kubelet`]).
    kubetest: PathBuf,
    kubelet_args: Vec<String>,
    runtime: PathBuf,
    dir: TempDir,
}

impl RealNode {
    /// Starts the node's agents on `cluster`, imports the images of
    /// [`images::archives`], and returns once the Node is Ready. The node's
    /// programs are built if needed; [`available`] must have said yes.
    pub async fn start(cluster: &Cluster) -> RealNode {
        let archives = images::archives().unwrap_or_else(|e| panic!("{e}"));
        let runtime = build::node_runtime().unwrap_or_else(|e| panic!("{e}"));
        let dir = TempDir::new("node");
        let cgroups = cgroups::Subtree::new(&dir_name(dir.path()))
            .unwrap_or_else(|e| panic!("make the node's cgroups: {e}"));
        let mounts = mountns::MountNs::new(dir.path());
        let mut node = RealNode {
            agents: Vec::new(),
            cgroups,
            mounts,
            netns: cluster.node.name().to_string(),
            kubetest: cluster.kubetest.clone(),
            kubelet_args: Vec::new(),
            runtime,
            dir,
        };
        let d = node.dir.path().to_path_buf();
        let write = |name: &str, text: String| -> PathBuf {
            let p = d.join(name);
            std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
            p
        };

        let cni_conf = d.join("cni");
        std::fs::create_dir_all(&cni_conf).expect("create the CNI config folder");
        std::fs::write(cni_conf.join("10-divert-test.conflist"), config::cni())
            .expect("write the CNI config");
        let containerd_conf = write(
            "containerd.toml",
            config::containerd(&node.runtime, &cni_conf),
        );
        let containerd = node.agent(
            "containerd",
            &node.runtime.join("containerd"),
            &[format!("--config={}", containerd_conf.display())],
        );
        node.agents.push(containerd);
        node.wait_for_containerd().await;
        for archive in &archives {
            node.import(archive);
        }

        let server = format!("https://{NODE_IP}:{}", cluster.api_port);
        let kubeconfig = |name: &str, pair: &pki::Pair| {
            write(name, pki::kubeconfig(&server, &cluster.pki.ca, pair))
        };
        let kubelet_kubeconfig = kubeconfig("kubelet.kubeconfig", &cluster.pki.node);
        let proxy_kubeconfig = kubeconfig("kube-proxy.kubeconfig", &cluster.pki.kube_proxy);
        let scheduler_kubeconfig = kubeconfig("scheduler.kubeconfig", &cluster.pki.scheduler);
        let resolv_conf = write("resolv.conf", "options ndots:1\n".into());
        let kubelet_conf = write(
            "kubelet.yaml",
            config::kubelet(&cluster.pki.ca, &node.cgroups.name(), &resolv_conf),
        );
        let kubetest = node.kubetest.clone();
        node.kubelet_args = vec![
            "kubelet".into(),
            format!("--config={}", kubelet_conf.display()),
            format!("--kubeconfig={}", kubelet_kubeconfig.display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            "--v=1".into(),
        ];
        let kubelet = node.agent("kubelet", &kubetest, &node.kubelet_args);
        node.agents.push(kubelet);
        let proxy = node.agent(
            "kube-proxy",
            &kubetest,
            &[
                "kube-proxy".into(),
                format!("--kubeconfig={}", proxy_kubeconfig.display()),
                format!("--hostname-override={NODE_NAME}"),
                "--proxy-mode=iptables".into(),
                format!("--cluster-cidr={}", super::POD_CIDR),
                // The conntrack table's size and timeouts are the machine's:
                // leave them alone.
                "--conntrack-max-per-core=0".into(),
                "--conntrack-tcp-timeout-established=0".into(),
                "--conntrack-tcp-timeout-close-wait=0".into(),
                "--metrics-bind-address=127.0.0.1:10249".into(),
                "--healthz-bind-address=127.0.0.1:10256".into(),
            ],
        );
        node.agents.push(proxy);
        let mut scheduler = cluster.node.command(&kubetest);
        scheduler.args([
            "kube-scheduler".into(),
            format!("--kubeconfig={}", scheduler_kubeconfig.display()),
            format!(
                "--authentication-kubeconfig={}",
                scheduler_kubeconfig.display()
            ),
            format!(
                "--authorization-kubeconfig={}",
                scheduler_kubeconfig.display()
            ),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
        ]);
        node.agents.push(Component::spawn(
            "kube-scheduler",
            scheduler,
            node.dir.path(),
        ));
        // The cluster DNS, as with the pod runner: CoreDNS on the node.
        node.agents.push(cluster.start_dns().await);
        node.wait_ready(cluster).await;
        node
    }

    /// `program args` as agent `name`: in the node's mount and network
    /// namespaces and its cgroups, with the node's runtime first on `PATH`
    /// (containerd finds its shim there).
    fn agent(&self, name: &'static str, program: &Path, args: &[String]) -> Component {
        let procs = self
            .cgroups
            .procs_file("agents")
            .unwrap_or_else(|e| panic!("the node's agents' cgroup: {e}"));
        // One nsenter for both: it opens each namespace before entering
        // any, and the node's /run hides the machine's /run/netns.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount={}", self.mounts.pin().display()))
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", "sh", "-c", r#"echo $$ > "$0" && exec "$@""#])
            .arg(procs)
            .arg(program)
            .args(args);
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", self.runtime.display()));
        Component::spawn(name, cmd, self.dir.path())
    }

    /// Stops the kubelet (SIGTERM, as a node's reboot or an upgrade does)
    /// and starts it again with the same settings, leaving containerd and
    /// the pods running; returns once the new kubelet answers its health
    /// check. Its log goes on in the same file.
    pub async fn restart_kubelet(&mut self) {
        let at = self
            .agents
            .iter()
            .position(|c| c.name == "kubelet")
            .expect("the node runs a kubelet");
        drop(self.agents.remove(at));
        let log = self.dir.path().join("kubelet.log");
        let earlier = std::fs::read_to_string(&log).unwrap_or_default();
        let kubelet = self.agent("kubelet", &self.kubetest, &self.kubelet_args);
        // spawn() truncated the log: keep the first run's lines before it.
        let _ = std::fs::write(self.dir.path().join("kubelet.before-restart.log"), earlier);
        self.agents.push(kubelet);
        let addr = std::net::SocketAddr::from((
            std::net::Ipv4Addr::LOCALHOST,
            config::KUBELET_HEALTHZ_PORT,
        ));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let healthy = async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let socket = crate::netns::socket_in(&self.netns, addr).ok()?;
                let mut s = socket.connect(addr).await.ok()?;
                s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.ok()?;
                let mut answer = Vec::new();
                s.read_to_end(&mut answer).await.ok()?;
                answer.starts_with(b"HTTP/1.0 200").then_some(())
            };
            let answered = tokio::time::timeout(Duration::from_secs(2), healthy).await;
            if answered.ok().flatten().is_some() {
                return;
            }
            self.check_running();
            assert!(
                Instant::now() < deadline,
                "the restarted kubelet was not healthy within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `ctr` against the node's containerd, in CRI's namespace (`k8s.io`).
    pub fn ctr(&self) -> Command {
        let mut c = self.mounts.command(self.runtime.join("ctr"));
        c.args(["--namespace", "k8s.io"]);
        c
    }

    /// Imports the OCI archive `archive` into containerd, where the kubelet
    /// finds its images: under the name the archive gives
    /// (`org.opencontainers.image.ref.name`), and under that name
    /// normalized as the kubelet asks for it (`divert:0.1.0` is
    /// `docker.io/library/divert:0.1.0`).
    fn import(&self, archive: &Path) {
        run_ok(self.ctr().args(["images", "import"]).arg(archive));
        for name in images::names(archive) {
            let full = images::normalized(&name);
            if full != name {
                run_ok(self.ctr().args(["images", "tag", "--force", &name, &full]));
            }
        }
    }

    /// Waits until containerd answers on its socket.
    async fn wait_for_containerd(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let answered = self
                .ctr()
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if answered {
                return;
            }
            self.check_running();
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the kubelet has registered the Node and reports it Ready.
    async fn wait_ready(&mut self, cluster: &Cluster) {
        let nodes: Api<Node> = Api::all(cluster.client().await);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = nodes
                .get_opt(NODE_NAME)
                .await
                .ok()
                .flatten()
                .is_some_and(|n| {
                    n.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
            if ready {
                return;
            }
            self.check_running();
            assert!(
                Instant::now() < deadline,
                "node {NODE_NAME} was not Ready within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Fails the test if an agent has exited, with the end of its log.
    fn check_running(&mut self) {
        super::check_running(&mut self.agents);
    }

    /// What the node has on the machine now, to check after it is gone.
    pub fn trail(&self) -> Trail {
        Trail {
            pids: self.cgroups.pids(),
            cgroups: self.cgroups.folders().to_vec(),
            dir: self.dir.path().to_path_buf(),
        }
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in &self.agents {
                eprintln!("---- the end of {}'s log ----\n{}", c.name, c.tail(40));
            }
        }
        // The scheduler, kube-proxy and the kubelet first, containerd last;
        // the cgroups then take whatever is left.
        while let Some(c) = self.agents.pop() {
            drop(c);
        }
    }
}

/// The node's marks on the machine: its processes, its cgroup folders and
/// its folder (every mount the node makes is under it or in its mount
/// namespace).
pub struct Trail {
    pub pids: Vec<i32>,
    pub cgroups: Vec<PathBuf>,
    pub dir: PathBuf,
}

/// The cgroup subtree's name: the node folder's, unique on the machine.
fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("divert-test-node-{}", std::process::id()))
}
