//! Where the end-to-end scenario (`tests/cluster.rs`) runs. One scenario, two
//! back-ends:
//! - the test control plane with its pod runner, started for the test (the
//!   default, and what CI runs);
//! - the current kube context of a real cluster (kind, k3d, a cloud's), when
//!   `DIVERT_E2E_CONTEXT=1`; `tests/cluster-e2e.sh` runs the scenario so.
//!
//! Every step of the scenario is the same on both. What differs is kept
//! here: how kubectl and `divert` reach the cluster, how a command runs in a
//! pod (the pod runner's exec, or `kubectl exec`), and which images the pods
//! run (on the test cluster an image is a program of this machine; a real
//! cluster pulls the images `tests/e2e.Dockerfile` builds).

use std::process::Command;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;

use crate::cluster::images::Images;
use crate::cluster::{self, Cluster, Node};
use crate::netns::divert_bin;
use crate::scenario::NAMESPACES;
use crate::{crate_dir, have_python_modules, have_tool};

/// Set to `1` to run the scenario on the current kube context.
pub const CONTEXT_ENV: &str = "DIVERT_E2E_CONTEXT";
/// Where the client image of `tests/e2e.Dockerfile` holds the gRPC client
/// (and, two levels up, the protos it compiles).
const IMAGE_GRPC_CLIENT: &str = "/e2e/tests/python/grpc_client.py";

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
        match &self.kind {
            Kind::TestCluster { cluster, .. } => cluster.kubectl(),
            Kind::Context(_) => Command::new("kubectl"),
        }
    }

    /// Makes `kubectl` a command of `dir` for programs run with `dir` first
    /// on their `PATH` (the manifest commands of `divert deploy`): the test
    /// cluster's own kubectl, or nothing where the machine has one.
    pub fn kubectl_in(&self, dir: &std::path::Path) {
        if let Kind::TestCluster { cluster, .. } = &self.kind {
            std::os::unix::fs::symlink(cluster.kubetest(), dir.join("kubectl"))
                .unwrap_or_else(|e| panic!("link kubectl in {}: {e}", dir.display()));
        }
    }

    /// Writes to `path` a kubeconfig for the back-end's cluster that
    /// authenticates with `token` only (a service account's), so that a
    /// command run with it has that account's rights and no more.
    pub fn kubeconfig_with_token(&self, token: &str, path: &std::path::Path) {
        let mut config = match &self.kind {
            Kind::TestCluster { cluster, .. } => {
                kube::config::Kubeconfig::read_from(cluster.kubeconfig())
            }
            Kind::Context(_) => kube::config::Kubeconfig::read(),
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
        if let Kind::TestCluster { cluster, .. } = &self.kind {
            c.arg("--kubeconfig").arg(cluster.kubeconfig());
        }
        c
    }

    /// The image that replaces the examples' http-echo, if any: the test
    /// cluster runs the Movies app for http-echo itself.
    pub fn app_image(&self) -> Option<&str> {
        match &self.kind {
            Kind::TestCluster { .. } => None,
            Kind::Context(c) => Some(&c.app_image),
        }
    }

    /// The image of the ingress controller stand-in on a real cluster (the
    /// test cluster runs `ingress-standin` for the fixture's image itself).
    pub fn ingress_image(&self) -> Option<&str> {
        match &self.kind {
            Kind::TestCluster { .. } => None,
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
            Kind::Context(_) => {
                let mut cmd = Command::new("kubectl");
                cmd.args(["exec", "-n", ns, pod, "-c", container, "--"])
                    .args(argv);
                cmd
            }
        }
    }

    /// The gRPC client's path (`tests/python/grpc_client.py`) as the client
    /// pod sees it.
    pub fn grpc_client(&self) -> String {
        match &self.kind {
            Kind::TestCluster { .. } => crate_dir()
                .join("python/grpc_client.py")
                .display()
                .to_string(),
            Kind::Context(_) => IMAGE_GRPC_CLIENT.to_string(),
        }
    }

    /// How pod `ns/name`'s start went, step by step, where the back-end can
    /// tell (the pod runner's timeline).
    pub fn describe_start(&self, ns: &str, name: &str) -> Option<String> {
        match &self.kind {
            Kind::TestCluster { node, .. } => Some(node.kubelet.describe_start(ns, name)),
            Kind::Context(_) => None,
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
