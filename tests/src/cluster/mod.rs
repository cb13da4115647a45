//! A real Kubernetes control plane for the end-to-end tests: the upstream
//! etcd, kube-apiserver and kube-controller-manager (built from Go modules by
//! [`build`]), started from scratch in a temporary directory.
//!
//! The cluster lives in a network namespace of its own, the *node*, as a
//! cluster's control plane and pods live on their own network: the node holds
//! the pod bridge (`br0`, 10.244.0.1/24, the pod network's gateway), and the
//! control plane listens there, so pods reach the API server as
//! `kubernetes.default` and the API server dials webhooks at pod addresses
//! (`--enable-aggregator-routing`), all without touching the machine's own
//! network. The tests reach the API server through a relay on a loopback port
//! of the machine, which `kubectl`, `divert` and kube-rs
//! use through [`Cluster::kubeconfig`].
//!
//! What the control plane is started with, and why:
//! - client certificates against one CA, RBAC and Node authorization, so
//!   every identity gets only what its roles grant;
//! - service-account tokens signed by a real key (`--service-account-*`);
//! - the default admission plugins plus MutatingAdmissionWebhook and
//!   ValidatingAdmissionWebhook (explicitly, though both are defaults);
//! - the service CIDR [`SERVICE_CIDR`]; the `kubernetes` Service's first
//!   address is [`API_SERVICE_IP`];
//! - the controller manager's default controllers: Deployments make
//!   ReplicaSets make Pods, EndpointSlices follow pod readiness, namespaces
//!   are emptied on deletion and the garbage collector follows owners.
//!
//! Everything (the directory, the processes, the namespace) is removed when
//! the [`Cluster`] drops, on failure too; a failing test first prints the end
//! of each component's log.

pub mod build;
mod container;
pub mod images;
pub mod kubelet;
mod kubeproxy;
pub mod pki;
mod probe;
pub mod realnode;
mod sandbox;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::TempDir;
use crate::netns::Netns;

/// The node's address on the pod network: the pods' gateway, and the address
/// the API server advertises (the endpoint of the `kubernetes` Service).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The node's pod CIDR; pods get addresses after [`NODE_IP`].
pub const POD_CIDR: &str = "10.244.0.0/24";
/// ClusterIPs come from here.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The `kubernetes` Service's ClusterIP (the first of [`SERVICE_CIDR`]).
pub const API_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The cluster DNS server's address (the `nameserver` of every pod).
pub const DNS_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The service-account token issuer (and audience).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// How long the control plane may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a cluster test waits for the cluster to converge on a state.
pub const WAIT: Duration = Duration::from_secs(120);

/// Polls `f` every 100 ms until it returns `Some`, failing the test with
/// `what` after [`WAIT`]: controllers, the pod runner and the proxies
/// converge in their own time, never on a schedule a test can assume.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until listing `api` with `params` finds nothing (pods deleted, a
/// namespace emptied), failing the test with `what` after [`WAIT`].
pub async fn eventually_none<K>(what: &str, api: &kube::Api<K>, params: &kube::api::ListParams)
where
    K: Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(what, || async {
        api.list(params).await.ok()?.items.is_empty().then_some(())
    })
    .await
}

/// Whether pod `p`'s Ready condition is True.
pub fn pod_ready(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the cluster tests can run here: root (network namespaces), `ip`,
/// and the `kubetest` binary (built with Go). Under CI=true a missing piece
/// fails the test; elsewhere the test skips with the reason.
pub fn available() -> bool {
    if !crate::netns::available() {
        return false;
    }
    match build::kubetest() {
        Ok(_) => true,
        Err(why) => crate::skip_or_fail(&format!("the test control plane: {why}")),
    }
}

/// A running control plane. Dropping it stops everything and removes its
/// files and namespace.
pub struct Cluster {
    // Field order is drop order: the relay and the processes go before the
    // namespace they live in and the directory that holds their files.
    relay: JoinHandle<()>,
    components: Vec<Component>,
    node: Netns,
    kubeconfig: PathBuf,
    /// The admin's kubeconfig for processes in the node's namespace, which
    /// dial the API server there directly.
    node_kubeconfig: PathBuf,
    pki: pki::Pki,
    /// The API server's port on the node's loopback.
    api_port: u16,
    kubetest: PathBuf,
    dir: TempDir,
}

/// The node's agents: the pod runner, the kube-proxy stand-in and the
/// cluster DNS. Drop it before its [`Cluster`] (declare it after).
pub struct Node {
    pub kubelet: kubelet::Kubelet,
    proxy: JoinHandle<()>,
    dns: Component,
}

impl Node {
    /// CoreDNS's proportional set size, in KiB.
    pub fn memory_kib(&self) -> Vec<(&'static str, u64)> {
        vec![(self.dns.name, pss_kib(self.dns.child.id()).unwrap_or(0))]
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.proxy.abort();
    }
}

impl Cluster {
    /// Starts etcd, the API server and the controller manager, and returns
    /// once the API server is ready and the controller manager has made the
    /// `default` ServiceAccount of the `default` namespace. Call from a tokio
    /// runtime; [`available`] must have said yes.
    pub async fn start() -> Cluster {
        let kubetest = build::kubetest().unwrap_or_else(|e| panic!("{e}"));
        let dir = TempDir::new("cluster");
        let node = Netns::new("node");
        node.ip(&["link", "add", "br0", "type", "bridge"]);
        node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "br0"]);
        node.ip(&["link", "set", "br0", "up"]);
        sandbox::prepare_node(&node);

        let pki = pki::generate(
            dir.path(),
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &[
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V4(NODE_IP),
                IpAddr::V4(API_SERVICE_IP),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));

        let [etcd_client, etcd_peer, api_port] = free_ports(&node);
        let mut components = Vec::new();

        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        components.push(Component::start(
            &node,
            &kubetest,
            dir.path(),
            "etcd",
            &[
                format!("--data-dir={}", dir.path().join("etcd").display()),
                format!("--listen-client-url={etcd_url}"),
                format!("--listen-peer-url=http://127.0.0.1:{etcd_peer}"),
            ],
        ));

        let path = |p: &Path| p.display().to_string();
        components.push(Component::start(
            &node,
            &kubetest,
            dir.path(),
            "kube-apiserver",
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=0.0.0.0".into(),
                format!("--secure-port={api_port}"),
                format!("--advertise-address={NODE_IP}"),
                format!("--cert-dir={}", dir.path().join("apiserver").display()),
                format!("--tls-cert-file={}", path(&pki.apiserver.cert)),
                format!("--tls-private-key-file={}", path(&pki.apiserver.key)),
                format!("--client-ca-file={}", path(&pki.ca)),
                // Exec, logs and port-forward reach a real node's kubelet
                // at its InternalIP, as the API server's own identity.
                format!(
                    "--kubelet-client-certificate={}",
                    path(&pki.kubelet_client.cert)
                ),
                format!(
                    "--kubelet-client-key={}",
                    path(&pki.kubelet_client.key)
                ),
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--service-account-issuer={ISSUER}"),
                format!(
                    "--service-account-key-file={}",
                    path(&pki.service_account_pub)
                ),
                format!(
                    "--service-account-signing-key-file={}",
                    path(&pki.service_account_key)
                ),
                "--authorization-mode=Node,RBAC".into(),
                "--enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook".into(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--enable-aggregator-routing=true".into(),
                "--allow-privileged=true".into(),
                "--profiling=false".into(),
                "--enable-priority-and-fairness=false".into(),
            ],
        ));

        // The relay: a loopback port of this machine → the API server in the
        // node's namespace.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the API server relay");
        let relay_addr = listener.local_addr().expect("relay address");
        let relay = tokio::spawn(relay(
            listener,
            node.name().to_string(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, api_port)),
        ));
        let server = format!("https://{relay_addr}");

        let kubeconfig = dir.path().join("admin.kubeconfig");
        std::fs::write(&kubeconfig, pki::kubeconfig(&server, &pki.ca, &pki.admin))
            .expect("write the admin kubeconfig");
        // The controller manager and CoreDNS run in the node's namespace and
        // dial the API server there directly.
        let node_kubeconfig = dir.path().join("node-admin.kubeconfig");
        std::fs::write(
            &node_kubeconfig,
            pki::kubeconfig(
                &format!("https://127.0.0.1:{api_port}"),
                &pki.ca,
                &pki.admin,
            ),
        )
        .expect("write the node's admin kubeconfig");
        let kcm_kubeconfig = dir.path().join("controller-manager.kubeconfig");
        std::fs::write(
            &kcm_kubeconfig,
            pki::kubeconfig(
                &format!("https://127.0.0.1:{api_port}"),
                &pki.ca,
                &pki.controller_manager,
            ),
        )
        .expect("write the controller manager's kubeconfig");

        let mut cluster = Cluster {
            relay,
            components,
            node,
            kubeconfig,
            node_kubeconfig,
            pki,
            api_port,
            kubetest,
            dir,
        };
        cluster.wait_ready("the API server", "/readyz").await;

        let kcm = Component::start(
            &cluster.node,
            &cluster.kubetest,
            cluster.dir.path(),
            "kube-controller-manager",
            &[
                format!("--kubeconfig={}", kcm_kubeconfig.display()),
                "--secure-port=0".into(),
                "--leader-elect=false".into(),
                // Each controller acts as its own service account with its
                // own role (system:controller:*), as kubeadm sets it up.
                "--use-service-account-credentials=true".into(),
                format!("--root-ca-file={}", path(&cluster.pki.ca)),
                format!(
                    "--service-account-private-key-file={}",
                    path(&cluster.pki.service_account_key)
                ),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--kube-api-qps=100".into(),
                "--kube-api-burst=200".into(),
                "--profiling=false".into(),
            ],
        );
        cluster.components.push(kcm);
        cluster.wait_for_default_service_account().await;
        cluster
    }

    /// Starts the node's agents: the pod runner with `images`, the
    /// kube-proxy stand-in and the cluster DNS.
    pub async fn start_node(&self, images: images::Images) -> Node {
        let client = self.client().await;
        let ca_pem = std::fs::read_to_string(&self.pki.ca).expect("read the cluster CA");
        let proxy = tokio::spawn(kubeproxy::run(client.clone(), self.node.name().to_string()));
        let pods = self.dir.path().join("pods");
        std::fs::create_dir_all(&pods).expect("create the pods directory");
        let kubelet =
            kubelet::Kubelet::start(client, self.node.name().to_string(), images, ca_pem, pods)
                .await;
        let dns = self.start_dns().await;
        Node {
            kubelet,
            proxy,
            dns,
        }
    }

    /// CoreDNS with its kubernetes plugin on [`DNS_SERVICE_IP`]:53, an
    /// address of the node (pods route to it), answering for
    /// `cluster.local` from Services and EndpointSlices. Returns once its
    /// `ready` plugin says the kubernetes plugin has synced.
    async fn start_dns(&self) -> Component {
        self.node
            .ip(&["addr", "add", &format!("{DNS_SERVICE_IP}/32"), "dev", "lo"]);
        let [ready_port] = free_ports(&self.node);
        let corefile = self.dir.path().join("Corefile");
        std::fs::write(
            &corefile,
            format!(
                "cluster.local:53 in-addr.arpa:53 {{
    bind {DNS_SERVICE_IP}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes cluster.local in-addr.arpa {{
        kubeconfig {} divert-test
        pods disabled
    }}
}}
",
                self.node_kubeconfig.display()
            ),
        )
        .expect("write the Corefile");
        let mut dns = Component::start(
            &self.node,
            &self.kubetest,
            self.dir.path(),
            "coredns",
            &[format!("-conf={}", corefile.display())],
        );
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ready_port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = dns.child.try_wait() {
                panic!("coredns exited ({status}):\n{}", dns.tail(40));
            }
            let ready = async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let socket = crate::netns::socket_in(self.node.name(), addr).ok()?;
                let mut s = socket.connect(addr).await.ok()?;
                s.write_all(b"GET /ready HTTP/1.0\r\n\r\n").await.ok()?;
                let mut head = Vec::new();
                s.read_to_end(&mut head).await.ok()?;
                head.starts_with(b"HTTP/1.0 200").then_some(())
            };
            let answered = tokio::time::timeout(Duration::from_secs(2), ready).await;
            if answered.ok().flatten().is_some() {
                return dns;
            }
            assert!(
                Instant::now() < deadline,
                "coredns was not ready within {START_TIMEOUT:?}:\n{}",
                dns.tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A kubeconfig file for the cluster's admin (`system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kube-rs client as the cluster's admin.
    pub async fn client(&self) -> kube::Client {
        client_from(&self.kubeconfig).await
    }

    /// A kube-rs client as the real node's kubelet (`system:node:<name>`,
    /// group `system:nodes`), with its certificate.
    pub async fn node_client(&self) -> kube::Client {
        let kubeconfig = self.dir.path().join("node-identity.kubeconfig");
        let server = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .ok()
            .and_then(|k| k.clusters.into_iter().next())
            .and_then(|c| c.cluster)
            .and_then(|c| c.server)
            .expect("the admin kubeconfig's server");
        std::fs::write(
            &kubeconfig,
            pki::kubeconfig(&server, &self.pki.ca, &self.pki.node),
        )
        .expect("write the node's kubeconfig");
        client_from(&kubeconfig).await
    }

    /// A kube-rs client that presents a bearer `token` (a service account's,
    /// say) instead of the admin's certificate.
    pub async fn client_with_token(&self, token: &str) -> kube::Client {
        let mut kubeconfig =
            kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read the kubeconfig");
        for user in &mut kubeconfig.auth_infos {
            user.auth_info = Some(kube::config::AuthInfo {
                token: Some(token.to_string().into()),
                ..Default::default()
            });
        }
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("a client config with the token");
        kube::Client::try_from(config).expect("a kube client")
    }

    /// The multi-call binary of the control plane (`kubectl` by that name).
    pub fn kubetest(&self) -> &Path {
        &self.kubetest
    }

    /// `kubectl` (built from the same Kubernetes release) for the admin.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.kubetest);
        c.arg("kubectl")
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        c
    }

    /// Each process's proportional set size (its own pages plus its share
    /// of the binary they all run), in KiB, by component.
    pub fn memory_kib(&self) -> Vec<(&'static str, u64)> {
        self.components
            .iter()
            .map(|c| (c.name, pss_kib(c.child.id()).unwrap_or(0)))
            .collect()
    }

    /// Polls `path` on the API server until it answers 200.
    async fn wait_ready(&mut self, what: &str, path: &str) {
        let client = self.client().await;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let req = http::Request::get(path)
                .body(Vec::new())
                .expect("a request");
            let last = match client.request_text(req).await {
                Ok(text) if text.trim() == "ok" => return,
                Ok(text) => text,
                Err(e) => e.to_string(),
            };
            self.check_running();
            if Instant::now() >= deadline {
                panic!("{what} was not ready within {START_TIMEOUT:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the controller manager's service-account controller has
    /// made `default/default`: the controllers run.
    async fn wait_for_default_service_account(&mut self) {
        use k8s_openapi::api::core::v1::ServiceAccount;
        let api: kube::Api<ServiceAccount> = kube::Api::namespaced(self.client().await, "default");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if api.get_opt("default").await.ok().flatten().is_some() {
                return;
            }
            self.check_running();
            if Instant::now() >= deadline {
                panic!(
                    "the controller manager made no default ServiceAccount within {START_TIMEOUT:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Fails the test if a component has exited.
    fn check_running(&mut self) {
        check_running(&mut self.components);
    }
}

/// Fails the test if one of `components` has exited, with the end of its
/// log.
fn check_running(components: &mut [Component]) {
    for c in components {
        if let Ok(Some(status)) = c.child.try_wait() {
            panic!(
                "{} exited ({status}); the end of its log:\n{}",
                c.name,
                c.tail(60)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.relay.abort();
        if std::thread::panicking() {
            for c in &self.components {
                eprintln!("---- the end of {}'s log ----\n{}", c.name, c.tail(40));
            }
        }
        // The controller manager first, etcd last.
        while let Some(c) = self.components.pop() {
            drop(c);
        }
    }
}

/// One control-plane process, running in the node's namespace with its
/// output in `<dir>/<name>.log`. Stopped (SIGTERM, then SIGKILL after 10 s)
/// on drop.
struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Component {
    fn start(
        node: &Netns,
        kubetest: &Path,
        dir: &Path,
        name: &'static str,
        args: &[String],
    ) -> Component {
        let mut cmd = node.command(kubetest);
        cmd.arg(name).args(args);
        Component::spawn(name, cmd, dir)
    }

    /// Runs `cmd` as component `name`, its output in `<dir>/<name>.log`.
    fn spawn(name: &'static str, mut cmd: Command, dir: &Path) -> Component {
        let log = dir.join(format!("{name}.log"));
        let file = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = file.try_clone().expect("clone the log file");
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Component { name, child, log }
    }

    /// The last `lines` lines of its log.
    fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `N` loopback ports free in the node's namespace (nothing else runs there
/// yet, but ask the kernel rather than assume).
fn free_ports<const N: usize>(node: &Netns) -> [u16; N] {
    node.in_ns(|| {
        let listeners: Vec<std::net::TcpListener> = (0..N)
            .map(|_| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind"))
            .collect();
        std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
    })
}

/// Accepts on `listener` and joins each connection to `target`, dialed from
/// inside the namespace `ns`.
async fn relay(listener: TcpListener, ns: String, target: SocketAddr) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ns = ns.clone();
        tokio::spawn(async move {
            let Ok(socket) = crate::netns::socket_in(&ns, target) else {
                return;
            };
            let Ok(mut upstream) = socket.connect(target).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}

/// A kube-rs client from the kubeconfig file `path`.
async fn client_from(path: &Path) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(path).expect("read the kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("a client config from the kubeconfig");
    kube::Client::try_from(config).expect("a kube client")
}

/// A process's proportional set size, from /proc.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
