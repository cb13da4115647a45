//! Where the end-to-end scenario (`tests/cluster.rs`) runs. One scenario,
//! three back-ends:
//! - the test control plane with its real node (upstream kubelet,
//!   kube-proxy, containerd, runc and CNI plugins), started for the test: the
//!   default, and what CI runs;
//! - the test control plane with the pod runner in place of the node, when
//!   `DIVERT_E2E_NODE=runner`: faster, and it needs no containerd or images;
//! - the current kube context of a real cluster (kind, k3d, a cloud's), when
//!   `DIVERT_E2E_CONTEXT=1`; `tests/cluster-e2e.sh` runs the scenario so.
//!
//! Every step of the scenario is the same on all three. What differs is kept
//! here: how kubectl and `divert` reach the cluster, how a command runs in a
//! pod (the pod runner's exec, or `kubectl exec`), and which images the pods
//! run (for the pod runner an image is a program of this machine; the real
//! node imports the archives `tests/node/images.sh` builds, and a real
//! cluster runs the same images, loaded by `tests/cluster-e2e.sh`).

use std::process::Command;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;

use crate::cluster::images::Images;
use crate::cluster::realnode::{self, RealNode, images as node_images};
use crate::cluster::{self, Cluster, Node};
use crate::netns::divert_bin;
use crate::scenario::NAMESPACES;
use crate::{crate_dir, have_python_modules, have_tool};

/// Set to `1` to run the scenario on the current kube context.
pub const CONTEXT_ENV: &str = "DIVERT_E2E_CONTEXT";
/// Set to `runner` to run the scenario's pods with the pod runner instead
/// of the real node.
pub const NODE_ENV: &str = "DIVERT_E2E_NODE";

/// A running back-end. Dropping it removes what the scenario made: the test
/// cluster as a whole, or on a real cluster the scenario's namespaces and
/// Divert's install (unless `KEEP=1`).
pub struct Backend {
    client: kube::Client,
    /// The client pod's image.
    client_image: String,
    kind: Kind,
}

enum Kind {
    // Field order is drop order: the node's agents before the control plane.
    // Boxed: the two are large beside a context.
    TestCluster {
        node: Box<Node>,
        cluster: Box<Cluster>,
    },
    RealNode {
        node: Box<RealNode>,
        cluster: Box<Cluster>,
    },
    Context(Context),
}

/// A real cluster, through the current kube context.
struct Context {
    /// Divert's image (`IMAGE`).
    image: String,
    /// The Movies app's image, in place of the examples' http-echo
    /// (`APP_IMAGE`).
    app_image: String,
    /// The ingress controller stand-in's image (`INGRESS_IMAGE`).
    ingress_image: String,
    keep: bool,
}

impl Backend {
    /// The back-end `DIVERT_E2E_CONTEXT` asks for. The test cluster runs pods
    /// from `images` and the client pod from `client_image` (an image of
    /// that table); `None` when it cannot run here and the test skips
    /// (outside CI). A real cluster the user asked for that cannot be used
    /// fails the test with what to do.
    pub async fn start(images: Images, client_image: &str) -> Option<Backend> {
        if std::env::var(CONTEXT_ENV).is_ok_and(|v| v == "1") {
            return Some(Backend::context().await);
        }
        if std::env::var(NODE_ENV).as_deref() != Ok("runner") {
            if !cluster::available() || !realnode::available() {
                return None;
            }
            let cluster = Cluster::start().await;
            let node = RealNode::start(&cluster).await;
            return Some(Backend {
                client: cluster.client().await,
                client_image: node_images::CLIENT.to_string(),
                kind: Kind::RealNode {
                    node: Box::new(node),
                    cluster: Box::new(cluster),
                },
            });
        }
        if !cluster::available()
            || !have_tool("curl", &["--version"])
            || !have_python_modules(&["grpc", "grpc_tools"])
        {
            return None;
        }
        let cluster = Cluster::start().await;
        let node = cluster.start_node(images).await;
        let client = cluster.client().await;
        Some(Backend {
            client,
            client_image: client_image.to_string(),
            kind: Kind::TestCluster {
                node: Box::new(node),
                cluster: Box::new(cluster),
            },
        })
    }

    async fn context() -> Backend {
        // tests/cluster-e2e.sh names the images (and builds them for kind).
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{CONTEXT_ENV}=1 needs {name}: run the scenario with tests/cluster-e2e.sh")
            })
        };
        let context = Context {
            image: var("IMAGE"),
            app_image: var("APP_IMAGE"),
            ingress_image: var("INGRESS_IMAGE"),
            keep: std::env::var("KEEP").is_ok_and(|v| v == "1"),
        };
        let client = kube::Client::try_default().await.unwrap_or_else(|e| {
            panic!("{CONTEXT_ENV}=1: no client for the current kube context ({e}); check `kubectl config current-context`")
        });
        // The scenario deletes what it made: it must not find any of it.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for ns in NAMESPACES {
            let found = namespaces.get_opt(ns).await.unwrap_or_else(|e| {
                panic!(
                    "{CONTEXT_ENV}=1: cannot read namespace {ns} ({e}); is the cluster reachable?"
                )
            });
            assert!(
                found.is_none(),
                "{CONTEXT_ENV}=1: namespace {ns} exists; the scenario creates and deletes \
                 namespaces {NAMESPACES:?}: run it on a throwaway cluster, or delete them first"
            );
        }
        Backend {
            client,
            // curl, Python grpcio and the gRPC client.
            client_image: var("CLIENT_IMAGE"),
            kind: Kind::Context(context),
        }
    }

    /// A kube-rs client with the back-end's admin rights.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// `kubectl`, pointed at the cluster.
    pub fn kubectl(&self) -> Command {
        match self.test_cluster() {
            Some(cluster) => cluster.kubectl(),
            None => Command::new("kubectl"),
        }
    }

    /// Makes `kubectl` a command of `dir` for programs run with `dir` first
    /// on their `PATH` (the manifest commands of `divert deploy`): the test
    /// cluster's own kubectl, or nothing where the machine has one.
    pub fn kubectl_in(&self, dir: &std::path::Path) {
        if let Some(cluster) = self.test_cluster() {
            std::os::unix::fs::symlink(cluster.kubetest(), dir.join("kubectl"))
                .unwrap_or_else(|e| panic!("link kubectl in {}: {e}", dir.display()));
        }
    }

    /// Writes to `path` a kubeconfig for the back-end's cluster that
    /// authenticates with `token` only (a service account's), so that a
    /// command run with it has that account's rights and no more.
    pub fn kubeconfig_with_token(&self, token: &str, path: &std::path::Path) {
        let mut config = match self.test_cluster() {
            Some(cluster) => kube::config::Kubeconfig::read_from(cluster.kubeconfig()),
            None => kube::config::Kubeconfig::read(),
        }
        .expect("read the admin's kubeconfig");
        for user in &mut config.auth_infos {
            user.auth_info = Some(kube::config::AuthInfo {
                token: Some(token.trim().to_owned().into()),
                ..Default::default()
            });
        }
        let text = serde_json::to_string(&config).expect("a kubeconfig as JSON");
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// `divert install`, for the image the cluster's pods can run.
    pub fn install(&self) -> Command {
        let mut c = Command::new(divert_bin());
        c.arg("install");
        if let Kind::Context(ctx) = &self.kind {
            c.args(["--image", &ctx.image]);
        }
        c
    }

    /// `divert check`, pointed at the cluster.
    pub fn check(&self) -> Command {
        self.divert("check")
    }

    /// `divert <subcommand>` against this cluster (its kubeconfig given
    /// for the test cluster; the current context otherwise).
    pub fn divert(&self, subcommand: &str) -> Command {
        let mut c = Command::new(divert_bin());
        c.arg(subcommand);
        if let Some(cluster) = self.test_cluster() {
            c.arg("--kubeconfig").arg(cluster.kubeconfig());
        }
        c
    }

    /// The image that replaces the examples' http-echo, if any: the pod
    /// runner runs the Movies app for http-echo itself.
    pub fn app_image(&self) -> Option<&str> {
        match &self.kind {
            Kind::TestCluster { .. } => None,
            Kind::RealNode { .. } => Some(node_images::APP),
            Kind::Context(c) => Some(&c.app_image),
        }
    }

    /// The image of the ingress controller stand-in, if it is not the
    /// fixture's (the pod runner runs `ingress-standin` for that itself).
    pub fn ingress_image(&self) -> Option<&str> {
        match &self.kind {
            Kind::TestCluster { .. } => None,
            Kind::RealNode { .. } => Some(node_images::INGRESS),
            Kind::Context(c) => Some(&c.ingress_image),
        }
    }

    /// The client pod's image: it has curl and Python grpcio.
    pub fn client_image(&self) -> &str {
        &self.client_image
    }

    /// The command that runs `argv` in container `container` of pod
    /// `ns/pod`: the pod runner's exec, or `kubectl exec`.
    pub async fn exec(&self, ns: &str, pod: &str, container: &str, argv: &[String]) -> Command {
        match &self.kind {
            Kind::TestCluster { node, .. } => {
                let p = Api::<Pod>::namespaced(self.client.clone(), ns)
                    .get(pod)
                    .await
                    .unwrap_or_else(|e| panic!("get pod {ns}/{pod}: {e}"));
                node.kubelet
                    .exec(&p, container, argv)
                    .unwrap_or_else(|e| panic!("exec in {ns}/{pod}: {e}"))
            }
            Kind::RealNode { .. } | Kind::Context(_) => {
                let mut cmd = self.kubectl();
                cmd.args(["exec", "-n", ns, pod, "-c", container, "--"])
                    .args(argv);
                cmd
            }
        }
    }

    /// The gRPC client's path (`tests/python/grpc_client.py`) as the client
    /// pod sees it.
    pub fn grpc_client(&self) -> String {
        self.python("grpc_client.py")
    }

    /// The path of `tests/python/<file>` as the client pod sees it.
    pub fn python(&self, file: &str) -> String {
        match &self.kind {
            Kind::TestCluster { .. } => crate_dir().join("python").join(file).display().to_string(),
            Kind::RealNode { .. } | Kind::Context(_) => {
                format!("{}/{file}", node_images::CLIENT_PYTHON)
            }
        }
    }

    /// How pod `ns/name`'s start went, step by step, where the back-end can
    /// tell (the pod runner's timeline, the real node's events).
    pub fn describe_start(&self, ns: &str, name: &str) -> Option<String> {
        match &self.kind {
            Kind::TestCluster { node, .. } => Some(node.kubelet.describe_start(ns, name)),
            // The kubelet's own account, one line: each container's
            // start and end, from the pod's status.
            Kind::RealNode { .. } => {
                let out = self
                    .kubectl()
                    .args(["get", "pod", "-n", ns, name, "-o", "json"])
                    .output()
                    .ok()?;
                let pod: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                Some(container_starts(&pod))
            }
            Kind::Context(_) => None,
        }
    }

    /// The real node, when the scenario runs on it.
    pub fn real_node(&self) -> Option<&RealNode> {
        match &self.kind {
            Kind::RealNode { node, .. } => Some(node),
            Kind::TestCluster { .. } | Kind::Context(_) => None,
        }
    }

    /// The real node, to restart its kubelet.
    pub fn real_node_mut(&mut self) -> Option<&mut RealNode> {
        match &mut self.kind {
            Kind::RealNode { node, .. } => Some(node),
            Kind::TestCluster { .. } | Kind::Context(_) => None,
        }
    }

    /// The test control plane, on either of its nodes.
    fn test_cluster(&self) -> Option<&Cluster> {
        match &self.kind {
            Kind::TestCluster { cluster, .. } | Kind::RealNode { cluster, .. } => Some(cluster),
            Kind::Context(_) => None,
        }
    }
}

/// A `kubectl port-forward` to a pod's port, from a loopback port of this
/// machine; stopped on drop.
pub struct PortForward {
    child: std::process::Child,
    /// The local port.
    pub port: u16,
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Backend {
    /// Whether the pods see this machine's files at their paths (the pod
    /// runner's containers are processes of this machine); elsewhere a
    /// command that reads a file of the test runs here, and reaches a pod
    /// through [`Backend::port_forward`].
    pub fn pods_share_files(&self) -> bool {
        matches!(self.kind, Kind::TestCluster { .. })
    }

    /// Forwards a loopback port of this machine to `port` of pod `ns/pod`
    /// (through the API server and the kubelet, as `kubectl port-forward`
    /// does for users). Not for the pod runner, which has no kubelet API.
    pub fn port_forward(&self, ns: &str, pod: &str, port: u16) -> PortForward {
        use std::io::BufRead;
        let mut child = self
            .kubectl()
            .args(["port-forward", "-n", ns, &format!("pod/{pod}")])
            .arg(format!(":{port}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start kubectl port-forward: {e}"));
        let stdout = child.stdout.take().expect("port-forward's stdout");
        // "Forwarding from 127.0.0.1:PORT -> 8086" once it listens; kubectl
        // exits (ending the read) if it cannot. The reader goes on draining
        // what kubectl says of each connection, so it never writes to a
        // closed pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    let _ = tx.send(rest.split_whitespace().next().and_then(|p| p.parse().ok()));
                }
            }
        });
        let local: Option<u16> = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .ok()
            .flatten();
        match local {
            Some(port) => PortForward { child, port },
            None => {
                let _ = child.kill();
                panic!("kubectl port-forward {ns}/{pod} :{port} did not listen")
            }
        }
    }
}

impl Drop for Backend {
    /// A failed scenario on the test cluster first says where every pod
    /// stands and what the cluster's events were.
    fn drop(&mut self) {
        if !std::thread::panicking() || self.test_cluster().is_none() {
            return;
        }
        for args in [
            &["get", "pods", "-A", "-o", "wide"][..],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
        ] {
            self.print_tail(args, 60);
        }
        // The containers' own words, for each pod that is not Ready.
        let Ok(out) = self
            .kubectl()
            .args(["get", "pods", "-A", "--no-headers", "-o"])
            .arg("custom-columns=NS:.metadata.namespace,NAME:.metadata.name,READY:.status.conditions[?(@.type=='Ready')].status")
            .output()
        else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let [ns, name, ready] = line.split_whitespace().collect::<Vec<_>>()[..]
                && ready != "True"
            {
                self.print_tail(
                    &[
                        "logs",
                        "-n",
                        ns,
                        name,
                        "--all-containers",
                        "--prefix",
                        "--tail=15",
                    ],
                    45,
                );
            }
        }
    }
}

impl Backend {
    /// Prints the last `lines` lines `kubectl args` prints.
    fn print_tail(&self, args: &[&str], lines: usize) {
        if let Ok(out) = self.kubectl().args(args).output() {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let all: Vec<&str> = text.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            eprintln!("---- kubectl {} ----\n{tail}", args.join(" "));
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("KEEP=1: leaving namespaces {NAMESPACES:?} and Divert's install in place");
            return;
        }
        // What the scenario made, whether it got to its own uninstall or
        // not. Both commands are idempotent.
        let mut delete = Command::new("kubectl");
        delete
            .args(["delete", "namespace", "--ignore-not-found", "--wait=false"])
            .args(NAMESPACES);
        let _ = delete.status();
        let manifests = Command::new(divert_bin())
            .args(["install", "--image", &self.image])
            .output();
        if let Ok(out) = manifests
            && out.status.success()
        {
            let mut c = Command::new("kubectl");
            c.args(["delete", "--ignore-not-found", "-f", "-"]);
            let _ = crate::output_with_input(c, &out.stdout);
        }
    }
}

/// `name started T[, ended T] (restarts N)` for each init container and
/// container of a pod, in that order, from its status.
fn container_starts(pod: &serde_json::Value) -> String {
    let mut steps = Vec::new();
    for list in ["initContainerStatuses", "containerStatuses"] {
        let statuses = pod["status"][list].as_array().map(Vec::as_slice);
        for c in statuses.unwrap_or_default() {
            let name = c["name"].as_str().unwrap_or("?");
            let state = c["state"].as_object().and_then(|s| s.iter().next());
            let step = match state {
                Some((phase, s)) => {
                    let started = s["startedAt"].as_str().unwrap_or("-");
                    match s["finishedAt"].as_str() {
                        Some(ended) => format!("{name} {phase} {started}..{ended}"),
                        None => format!("{name} {phase} since {started}"),
                    }
                }
                None => format!("{name} no state"),
            };
            let restarts = c["restartCount"].as_u64().unwrap_or(0);
            steps.push(format!("{step} (restarts {restarts})"));
        }
    }
    steps.join(", ")
}
