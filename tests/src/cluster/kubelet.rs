//! The pod runner, a "netns kubelet": it registers a Node, binds unscheduled
//! pods to it (the test cluster runs no scheduler), and runs every pod bound
//! to it as a network namespace (`sandbox`) with its containers as
//! processes (`container`), writing the pod's status back as a
//! kubelet does.
//!
//! A pod's life: the sandbox and volumes (the projected service-account token
//! is requested from the API server, bound to the pod); init containers in
//! order, each to a successful exit, except that one with `restartPolicy:
//! Always` is a native sidecar, started and its startup probe awaited, then
//! kept running; then the containers. Readiness probes decide `Ready`; a
//! container that exits is started again (`restartCount`). On deletion, the
//! containers get SIGTERM, then the sidecars in reverse order, SIGKILL when
//! the grace period runs out, and the pod is removed once they are gone.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Binding, ConfigMap, Container, Node, ObjectReference, Pod, Secret, ServiceAccount,
};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::container::{self, Launch};
use super::images::Images;
use super::sandbox::{self, Sandbox};
use super::{API_SERVICE_IP, DNS_SERVICE_IP, ISSUER, NODE_IP};

/// The node's name.
pub const NODE_NAME: &str = "divert-test-node";

/// What every pod task shares.
struct Ctx {
    client: Client,
    node_ns: String,
    images: Images,
    ca_pem: String,
    dir: PathBuf,
    next_ip: Mutex<u32>,
    pods: Mutex<HashMap<String, PodEntry>>,
}

struct PodEntry {
    stop: watch::Sender<Option<i64>>,
    net: Arc<Mutex<Option<(String, Ipv4Addr)>>>,
    timeline: Timeline,
    task: JoinHandle<()>,
}

/// When each step of a pod's start happened, from the moment the pod runner
/// took it up: what the start of an injected pod costs.
pub type Timeline = Arc<Mutex<Vec<(String, Duration)>>>;

/// The running pod runner; dropping it stops every pod (SIGKILL) and removes
/// their namespaces.
pub struct Kubelet {
    ctx: Arc<Ctx>,
    tasks: Vec<JoinHandle<()>>,
}

impl Kubelet {
    pub(super) async fn start(
        client: Client,
        node_ns: String,
        images: Images,
        ca_pem: String,
        dir: PathBuf,
    ) -> Kubelet {
        register_node(&client).await;
        let ctx = Arc::new(Ctx {
            client: client.clone(),
            node_ns,
            images,
            ca_pem,
            dir,
            next_ip: Mutex::new(u32::from(NODE_IP) + 1),
            pods: Mutex::new(HashMap::new()),
        });
        let tasks = vec![
            tokio::spawn(heartbeat(client.clone())),
            tokio::spawn(schedule(client.clone())),
            tokio::spawn(run_pods(ctx.clone())),
        ];
        Kubelet { ctx, tasks }
    }

    /// The network namespace and address of pod `namespace/name`, once its
    /// sandbox exists.
    pub fn pod_network(&self, namespace: &str, name: &str) -> Option<(String, Ipv4Addr)> {
        let pods = self.ctx.pods.lock().ok()?;
        let key = format!("{namespace}/{name}");
        pods.iter()
            .find(|(k, _)| k.starts_with(&format!("{key}/")))
            .and_then(|(_, e)| e.net.lock().ok()?.clone())
    }

    /// `kubectl exec` as the pod runner offers it: the command that runs
    /// `argv` in `pod`'s network namespace, its first word resolved as a
    /// `command` of container `container` would be (the image's program, or
    /// a program of this machine: curl, python3). It runs as root, without
    /// the container's mounts or environment: enough for a client, or for
    /// the image's own CLI.
    pub fn exec(
        &self,
        pod: &Pod,
        container: &str,
        argv: &[String],
    ) -> Result<std::process::Command, String> {
        let (ns, name) = (
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or_default(),
        );
        let (net, _) = self
            .pod_network(ns, name)
            .ok_or_else(|| format!("pod {ns}/{name} has no sandbox on this node"))?;
        let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
        let image = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .find(|c| c.name == container)
            .ok_or_else(|| format!("pod {ns}/{name} has no container {container:?}"))?
            .image
            .clone()
            .unwrap_or_default();
        let program = self
            .ctx
            .images
            .lookup(&image)
            .ok_or_else(|| format!("image {image:?} has no program in the image table"))?;
        let (first, rest) = argv.split_first().ok_or("exec needs a command")?;
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &net])
            .arg(program.named(first))
            .args(rest);
        Ok(cmd)
    }

    /// The steps of pod `namespace/name`'s start so far, each with the time
    /// since the pod runner took the pod up.
    pub fn timeline(&self, namespace: &str, name: &str) -> Vec<(String, Duration)> {
        let Ok(pods) = self.ctx.pods.lock() else {
            return Vec::new();
        };
        let key = format!("{namespace}/{name}/");
        pods.iter()
            .find(|(k, _)| k.starts_with(&key))
            .and_then(|(_, e)| e.timeline.lock().ok().map(|t| t.clone()))
            .unwrap_or_default()
    }

    /// [`Kubelet::timeline`] as one line: `step +Nms, …`.
    pub fn describe_start(&self, namespace: &str, name: &str) -> String {
        self.timeline(namespace, name)
            .iter()
            .map(|(step, at)| format!("{step} +{}ms", at.as_millis()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(mut pods) = self.ctx.pods.lock() {
            for (_, e) in pods.drain() {
                e.task.abort();
            }
        }
    }
}

async fn register_node(client: &Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE_NAME, "labels": {
            "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"}},
        "spec": {"podCIDR": super::POD_CIDR, "podCIDRs": [super::POD_CIDR]},
    });
    nodes
        .patch(
            NODE_NAME,
            &PatchParams::apply("divert-test-kubelet").force(),
            &Patch::Apply(&node),
        )
        .await
        .expect("register the node");
    write_node_status(&nodes).await;
}

async fn write_node_status(nodes: &Api<Node>) {
    let now = now();
    let status = json!({"status": {
        "capacity": {"cpu": "2", "memory": "24Gi", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "24Gi", "pods": "110"},
        "addresses": [{"type": "InternalIP", "address": NODE_IP.to_string()},
                      {"type": "Hostname", "address": NODE_NAME}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "the netns pod runner is ready",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "nodeInfo": {"kubeletVersion": "v1.37.2", "kubeProxyVersion": "", "osImage": "divert-tests",
                     "kernelVersion": "", "containerRuntimeVersion": "netns://1", "operatingSystem": "linux",
                     "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": ""},
    }});
    if let Err(e) = nodes
        .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        eprintln!("kubelet: node status: {e}");
    }
}

/// Renews the node's Lease every 10 s and its Ready condition every 30 s, so
/// the node lifecycle controller keeps it Ready.
async fn heartbeat(client: Client) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let mut tick = 0u32;
    loop {
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": NODE_NAME, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": NODE_NAME, "leaseDurationSeconds": 40,
                     "renewTime": now_micro()}});
        if let Err(e) = leases
            .patch(
                NODE_NAME,
                &PatchParams::apply("divert-test-kubelet").force(),
                &Patch::Apply(&lease),
            )
            .await
        {
            eprintln!("kubelet: lease: {e}");
        }
        if tick % 3 == 2 {
            write_node_status(&nodes).await;
        }
        tick += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Binds every pod that has no node to this one.
async fn schedule(client: Client) {
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields("spec.nodeName=");
    let mut events = watcher::watcher(pods, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
            Ok(_) => continue,
            Err(e) => {
                eprintln!("kubelet: scheduler watch: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let (Some(ns), Some(name)) = (pod.metadata.namespace.clone(), pod.metadata.name.clone())
        else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Err(e) = bind(&client, &ns, &name, NODE_NAME).await {
            eprintln!("kubelet: bind {ns}/{name}: {e}");
        }
    }
}

/// Binds pod `ns/name` to `node`, as a scheduler does.
pub async fn bind(client: &Client, ns: &str, name: &str, node: &str) -> Result<(), kube::Error> {
    let binding = Binding {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        target: ObjectReference {
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let _: kube::core::Status = api
        .create_subresource("binding", name, &PostParams::default(), &binding)
        .await?;
    Ok(())
}

/// Watches the pods bound to this node: starts new ones, stops deleted ones.
async fn run_pods(ctx: Arc<Ctx>) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={NODE_NAME}"));
    let mut events = watcher::watcher(pods, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let (pod, gone) = match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => (p, false),
            Ok(watcher::Event::Delete(p)) => (p, true),
            Ok(_) => continue,
            Err(e) => {
                eprintln!("kubelet: pod watch: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let key = pod_key(&pod);
        let mut map = match ctx.pods.lock() {
            Ok(m) => m,
            Err(_) => return,
        };
        if gone {
            // Removed without a graceful deletion (or after ours): kill.
            if let Some(e) = map.remove(&key) {
                let _ = e.stop.send(Some(0));
                let task = e.task;
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
                });
            }
            continue;
        }
        if let Some(e) = map.get(&key) {
            if pod.metadata.deletion_timestamp.is_some() {
                let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
                let _ = e.stop.send(Some(grace));
            }
            continue;
        }
        if pod.metadata.deletion_timestamp.is_some() {
            // Never started here: confirm the deletion at once.
            let ctx = ctx.clone();
            tokio::spawn(async move { confirm_deletion(&ctx.client, &pod).await });
            continue;
        }
        let (stop, stop_rx) = watch::channel(None);
        let net = Arc::new(Mutex::new(None));
        let timeline = Timeline::default();
        let task = tokio::spawn(run_pod(
            ctx.clone(),
            pod,
            stop_rx,
            net.clone(),
            timeline.clone(),
        ));
        map.insert(
            key,
            PodEntry {
                stop,
                net,
                timeline,
                task,
            },
        );
    }
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.uid.as_deref().unwrap_or("")
    )
}

/// One container's process and what its status reports.
struct Running {
    name: String,
    image: String,
    sidecar: bool,
    child: Option<tokio::process::Child>,
    /// The container's process group (its first process's pid).
    group: Option<i32>,
    started_at: String,
    restarts: u32,
    ready: bool,
    started: bool,
    last_exit: Option<(i32, String)>,
    next_probe: Instant,
    failures: i32,
    successes: i32,
}

impl Drop for Running {
    /// Whatever is left of the container's processes goes with it.
    fn drop(&mut self) {
        if let Some(g) = self.group.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(g),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Everything one pod's task holds; dropping it kills the processes and
/// removes the sandbox.
struct PodRun {
    ctx: Arc<Ctx>,
    pod: Pod,
    api: Api<Pod>,
    sandbox: Sandbox,
    base_env: Vec<(String, String)>,
    init_done: Vec<(String, String, i32)>,
    running: Vec<Running>,
    waiting: Option<(String, String)>,
    phase: &'static str,
    start_time: String,
    t0: Instant,
    timeline: Timeline,
}

async fn run_pod(
    ctx: Arc<Ctx>,
    pod: Pod,
    mut stop: watch::Receiver<Option<i64>>,
    net: Arc<Mutex<Option<(String, Ipv4Addr)>>>,
    timeline: Timeline,
) {
    let t0 = Instant::now();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ip = {
        let mut next = ctx.next_ip.lock().expect("ip allocator");
        let ip = Ipv4Addr::from(*next);
        *next += 1;
        ip
    };
    assert!(ip.octets()[3] < 255, "the node's pod CIDR is full");
    let sandbox = Sandbox::new(
        &ctx.node_ns,
        ip,
        ctx.dir.join(format!("{ns}-{name}")),
        &resolv_conf(&pod),
    );
    if let Ok(mut n) = net.lock() {
        *n = Some((sandbox.ns.name().to_string(), ip));
    }
    let base_env = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOSTNAME".into(), name.clone()),
        ("KUBERNETES_SERVICE_HOST".into(), API_SERVICE_IP.to_string()),
        ("KUBERNETES_SERVICE_PORT".into(), "443".into()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), "443".into()),
        (
            "KUBERNETES_PORT".into(),
            format!("tcp://{API_SERVICE_IP}:443"),
        ),
    ];
    let mut run = PodRun {
        api: Api::namespaced(ctx.client.clone(), &ns),
        ctx,
        pod,
        sandbox,
        base_env,
        init_done: Vec::new(),
        running: Vec::new(),
        waiting: None,
        phase: "Pending",
        start_time: now(),
        t0,
        timeline,
    };
    let grace = tokio::select! {
        g = run.life() => g,
        g = wait_stop(&mut stop) => g,
    };
    run.terminate(grace).await;
    if grace > 0 || run.pod_exists().await {
        confirm_deletion(&run.ctx.client, &run.pod).await;
    }
}

async fn wait_stop(stop: &mut watch::Receiver<Option<i64>>) -> i64 {
    match stop.wait_for(|v| v.is_some()).await {
        Ok(v) => v.unwrap_or(0),
        Err(_) => 0,
    }
}

impl PodRun {
    /// Records that `step` happened now.
    fn mark(&self, step: String) {
        if let Ok(mut t) = self.timeline.lock() {
            t.push((step, self.t0.elapsed()));
        }
    }

    /// Volumes, init containers, containers, then probes and restarts until
    /// stopped. Returns only to say the pod's task should end (never, today:
    /// the stop signal ends it).
    async fn life(&mut self) -> i64 {
        self.write_status().await;
        if let Err(e) = self.prepare_volumes().await {
            self.waiting = Some(("ContainerCreating".into(), e));
            self.write_status().await;
            return std::future::pending().await;
        }
        self.mark("sandbox and volumes ready".into());
        let spec = self.pod.spec.clone().unwrap_or_default();
        for c in spec.init_containers.iter().flatten() {
            let sidecar = c.restart_policy.as_deref() == Some("Always");
            if sidecar {
                self.spawn(c, true).await;
                self.write_status().await;
                self.await_startup(c).await;
            } else {
                loop {
                    self.spawn(c, false).await;
                    self.write_status().await;
                    let Some(mut r) = self.running.pop() else {
                        return std::future::pending().await;
                    };
                    let code = match r.child.as_mut() {
                        Some(child) => child.wait().await.ok().and_then(|s| s.code()).unwrap_or(-1),
                        None => -1,
                    };
                    if code == 0 {
                        self.mark(format!("init container {} exited 0", r.name));
                        self.init_done.push((r.name.clone(), r.image.clone(), 0));
                        break;
                    }
                    self.waiting = Some((
                        "Init:Error".into(),
                        format!(
                            "init container {} exited with {code}: {}",
                            r.name,
                            tail(&self.sandbox.log(&r.name))
                        ),
                    ));
                    self.write_status().await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        self.waiting = None;
        for c in spec.containers.iter() {
            self.spawn(c, false).await;
        }
        self.phase = "Running";
        self.mark("containers started".into());
        self.write_status().await;
        loop {
            let mut changed = self.restart_exited().await;
            changed |= self.probe_readiness().await;
            if changed {
                self.write_status().await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn container(&self, name: &str) -> Option<Container> {
        let spec = self.pod.spec.as_ref()?;
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .find(|c| c.name == name)
            .cloned()
    }

    async fn spawn(&mut self, c: &Container, sidecar: bool) {
        let launch = self.launch(c);
        let image = c.image.clone().unwrap_or_default();
        let restarts = self
            .running
            .iter()
            .position(|r| r.name == c.name)
            .map(|i| self.running.remove(i).restarts + 1)
            .unwrap_or(0);
        let child = match launch {
            Ok(l) => match self.start_process(&c.name, &l) {
                Ok(child) => Some(child),
                Err(e) => {
                    self.waiting = Some(("RunContainerError".into(), e));
                    None
                }
            },
            Err(e) => {
                self.waiting = Some((e.reason().to_string(), e.to_string()));
                None
            }
        };
        let has_startup = c.startup_probe.is_some();
        let has_readiness = c.readiness_probe.is_some();
        self.running.push(Running {
            name: c.name.clone(),
            image,
            sidecar,
            started: child.is_some() && !has_startup,
            ready: child.is_some() && !has_readiness && !has_startup,
            group: child
                .as_ref()
                .and_then(|c| c.id())
                .and_then(|p| i32::try_from(p).ok()),
            child,
            started_at: now(),
            restarts,
            last_exit: None,
            next_probe: Instant::now(),
            failures: 0,
            successes: 0,
        });
    }

    fn launch(&self, c: &Container) -> Result<Launch, container::ConfigError> {
        let dir = self.sandbox.dir.join("volumes");
        let volume = |name: &str| {
            let d = dir.join(name);
            d.exists().then_some(d)
        };
        let field = |path: &str| field_value(&self.pod, self.sandbox.ip, path);
        container::resolve(
            &self.pod,
            c,
            &self.ctx.images,
            &self.base_env,
            &volume,
            &field,
        )
    }

    fn start_process(&self, name: &str, launch: &Launch) -> Result<tokio::process::Child, String> {
        let log = self.sandbox.log(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("open {}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = launch.command(self.sandbox.ns.name());
        // A process group of its own: stopping the container stops every
        // process it started (nginx under the ingress stand-in), as a
        // kubelet's cgroup does.
        cmd.stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        cmd.spawn().map_err(|e| format!("start {name}: {e}"))
    }

    /// Waits for a sidecar's startup probe (or, without one, nothing).
    async fn await_startup(&mut self, c: &Container) {
        let Some(probe) = c.startup_probe.clone() else {
            return;
        };
        let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
        let threshold = probe.failure_threshold.unwrap_or(3).max(1);
        let mut failures = 0;
        loop {
            match super::probe::run(&self.ctx.node_ns, self.sandbox.ip, c, &probe).await {
                Ok(()) => {
                    if let Some(r) = self.running.iter_mut().find(|r| r.name == c.name) {
                        r.started = true;
                        r.ready = c.readiness_probe.is_none();
                    }
                    self.mark(format!("sidecar {} started (startup probe passed)", c.name));
                    self.write_status().await;
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if failures >= threshold {
                        // The kubelet restarts a container whose startup
                        // probe fails too often.
                        self.waiting = Some(("StartupProbeFailed".into(), e));
                        self.spawn(c, true).await;
                        failures = 0;
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    }

    /// Starts again every container that exited (restartPolicy Always).
    async fn restart_exited(&mut self) -> bool {
        let mut exited = Vec::new();
        for r in &mut self.running {
            if let Some(child) = r.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                r.last_exit = Some((status.code().unwrap_or(-1), "Error".into()));
                exited.push(r.name.clone());
            }
        }
        for name in &exited {
            if let Some(c) = self.container(name) {
                let sidecar = c.restart_policy.as_deref() == Some("Always");
                let last = self
                    .running
                    .iter()
                    .find(|r| &r.name == name)
                    .and_then(|r| r.last_exit.clone());
                self.spawn(&c, sidecar).await;
                if let Some(r) = self.running.iter_mut().find(|r| &r.name == name) {
                    r.last_exit = last;
                }
            }
        }
        !exited.is_empty()
    }

    /// Runs the readiness (and pending startup) probes that are due.
    async fn probe_readiness(&mut self) -> bool {
        let mut changed = false;
        let now = Instant::now();
        for i in 0..self.running.len() {
            if self.running[i].child.is_none() || self.running[i].next_probe > now {
                continue;
            }
            let Some(c) = self.container(&self.running[i].name) else {
                continue;
            };
            let (probe, startup) = if !self.running[i].started {
                (c.startup_probe.clone(), true)
            } else {
                (c.readiness_probe.clone(), false)
            };
            let Some(probe) = probe else {
                continue;
            };
            let result = super::probe::run(&self.ctx.node_ns, self.sandbox.ip, &c, &probe).await;
            let r = &mut self.running[i];
            r.next_probe =
                now + Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
            match result {
                Ok(()) => {
                    r.failures = 0;
                    r.successes += 1;
                    if startup {
                        r.started = true;
                        r.ready = c.readiness_probe.is_none();
                        r.next_probe = now;
                        changed = true;
                    } else if !r.ready && r.successes >= probe.success_threshold.unwrap_or(1) {
                        r.ready = true;
                        changed = true;
                    }
                }
                Err(_) => {
                    r.successes = 0;
                    r.failures += 1;
                    if !startup && r.ready && r.failures >= probe.failure_threshold.unwrap_or(3) {
                        r.ready = false;
                        changed = true;
                    }
                }
            }
        }
        changed
    }

    async fn prepare_volumes(&mut self) -> Result<(), String> {
        let volumes = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let ns = self.pod.metadata.namespace.clone().unwrap_or_default();
        let client = self.ctx.client.clone();
        for v in volumes {
            let dir = self.sandbox.volume(&v.name);
            if v.empty_dir.is_some() {
                continue;
            }
            let mut files: Vec<(String, Vec<u8>)> = Vec::new();
            if let Some(s) = &v.secret {
                let name = s.secret_name.clone().unwrap_or_default();
                let secret =
                    wait_for(&Api::<Secret>::namespaced(client.clone(), &ns), &name).await?;
                for (k, val) in secret.data.unwrap_or_default() {
                    files.push((k, val.0));
                }
            } else if let Some(cm) = &v.config_map {
                let cm =
                    wait_for(&Api::<ConfigMap>::namespaced(client.clone(), &ns), &cm.name).await?;
                for (k, val) in cm.data.unwrap_or_default() {
                    files.push((k, val.into_bytes()));
                }
            } else if let Some(p) = &v.projected {
                for source in p.sources.iter().flatten() {
                    if let Some(t) = &source.service_account_token {
                        let token = self.token(t.audience.clone(), t.expiration_seconds).await?;
                        files.push((t.path.clone(), token.into_bytes()));
                    }
                    if let Some(cm) = &source.config_map {
                        // kube-root-ca.crt: the cluster's CA, as the
                        // root-CA publisher writes it.
                        let data = if cm.name == "kube-root-ca.crt" {
                            [("ca.crt".to_string(), self.ctx.ca_pem.clone())].into()
                        } else {
                            wait_for(&Api::<ConfigMap>::namespaced(client.clone(), &ns), &cm.name)
                                .await?
                                .data
                                .unwrap_or_default()
                        };
                        for item in cm.items.iter().flatten() {
                            if let Some(val) = data.get(&item.key) {
                                files.push((item.path.clone(), val.clone().into_bytes()));
                            }
                        }
                    }
                    if let Some(d) = &source.downward_api {
                        for item in d.items.iter().flatten() {
                            let Some(f) = &item.field_ref else { continue };
                            let val = field_value(&self.pod, self.sandbox.ip, &f.field_path)
                                .unwrap_or_default();
                            files.push((item.path.clone(), val.into_bytes()));
                        }
                    }
                }
            } else {
                return Err(format!("volume {}: unsupported volume type", v.name));
            }
            sandbox::write_files(&dir, &files);
        }
        Ok(())
    }

    /// A token for the pod's service account, bound to the pod.
    async fn token(
        &self,
        audience: Option<String>,
        expiration: Option<i64>,
    ) -> Result<String, String> {
        let spec = self.pod.spec.as_ref();
        let sa = spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let ns = self.pod.metadata.namespace.clone().unwrap_or_default();
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.unwrap_or_else(|| ISSUER.into())],
                expiration_seconds: Some(expiration.unwrap_or(3607)),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: self.pod.metadata.name.clone(),
                    uid: self.pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.ctx.client.clone(), &ns);
        let issued: TokenRequest = api
            .create_subresource("token", &sa, &PostParams::default(), &request)
            .await
            .map_err(|e| format!("token for {ns}/{sa}: {e}"))?;
        issued
            .status
            .map(|s| s.token)
            .ok_or_else(|| "the token request returned no token".into())
    }

    async fn write_status(&self) {
        let ready_all = self.phase == "Running" && self.running.iter().all(|r| r.ready);
        let initialized = self.phase == "Running";
        if ready_all
            && let Ok(mut t) = self.timeline.lock()
            && !t.iter().any(|(s, _)| s == "Ready")
        {
            t.push(("Ready".into(), self.t0.elapsed()));
        }
        let cond = |b: bool| if b { "True" } else { "False" };
        let status_of = |r: &Running| -> Value {
            let state = match (&r.child, &self.waiting) {
                (Some(_), _) => json!({"running": {"startedAt": r.started_at}}),
                (None, Some((reason, msg))) => {
                    json!({"waiting": {"reason": reason, "message": msg}})
                }
                (None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
            };
            let mut s = json!({"name": r.name, "image": r.image, "imageID": "",
                "ready": r.ready, "started": r.started, "restartCount": r.restarts,
                "state": state});
            if let Some((code, reason)) = &r.last_exit {
                s["lastState"] = json!({"terminated": {"exitCode": code, "reason": reason}});
            }
            if r.child.is_some() {
                s["containerID"] = json!(format!(
                    "netns://{}",
                    r.child.as_ref().and_then(|c| c.id()).unwrap_or(0)
                ));
            }
            s
        };
        let spec = self.pod.spec.clone().unwrap_or_default();
        let init_statuses: Vec<Value> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| {
                if let Some(r) = self.running.iter().find(|r| r.name == c.name) {
                    status_of(r)
                } else if let Some((name, image, code)) = self.init_done.iter().find(|d| d.0 == c.name) {
                    json!({"name": name, "image": image, "imageID": "", "ready": true, "restartCount": 0,
                           "state": {"terminated": {"exitCode": code, "reason": "Completed"}}})
                } else {
                    json!({"name": c.name, "image": c.image, "imageID": "", "ready": false, "restartCount": 0,
                           "state": {"waiting": {"reason": "PodInitializing"}}})
                }
            })
            .collect();
        let statuses: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| match self.running.iter().find(|r| r.name == c.name) {
                Some(r) => status_of(r),
                None => json!({"name": c.name, "image": c.image, "imageID": "", "ready": false,
                               "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}),
            })
            .collect();
        let ip = self.sandbox.ip.to_string();
        let now = now();
        let status = json!({"status": {
            "phase": self.phase,
            "hostIP": NODE_IP.to_string(), "hostIPs": [{"ip": NODE_IP.to_string()}],
            "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": self.start_time,
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": cond(initialized), "lastTransitionTime": now},
                {"type": "Ready", "status": cond(ready_all), "lastTransitionTime": now},
                {"type": "ContainersReady", "status": cond(ready_all), "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            ],
            "initContainerStatuses": init_statuses,
            "containerStatuses": statuses,
        }});
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        if let Err(e) = self
            .api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            eprintln!("kubelet: status of {name}: {e}");
        }
    }

    /// Stops the containers: SIGTERM to the app's, then to the sidecars in
    /// reverse order, each group given what is left of `grace` seconds, then
    /// SIGKILL.
    async fn terminate(&mut self, grace: i64) {
        let deadline = Instant::now() + Duration::from_secs(grace.max(0) as u64);
        let (sidecars, apps): (Vec<_>, Vec<_>) = self.running.drain(..).partition(|r| r.sidecar);
        for mut group in [apps, sidecars.into_iter().rev().collect::<Vec<_>>()] {
            for r in &group {
                if let Some(g) = r.group {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(g),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
            for r in &mut group {
                if let Some(child) = r.child.as_mut() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if tokio::time::timeout(left, child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                }
            }
        }
    }

    async fn pod_exists(&self) -> bool {
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        matches!(self.api.get_opt(&name).await, Ok(Some(p)) if p.metadata.uid == self.pod.metadata.uid)
    }
}

/// Removes the pod object once its containers are gone, as a kubelet does
/// (grace period 0, for this very pod).
async fn confirm_deletion(client: &Client, pod: &Pod) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let _ = api.delete(&name, &dp).await;
}

async fn wait_for<K>(api: &Api<K>, name: &str) -> Result<K, String>
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match api.get_opt(name).await {
            Ok(Some(obj)) => return Ok(obj),
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(None) => return Err(format!("{name} does not exist")),
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
}

/// A downward-API field of the pod.
fn field_value(pod: &Pod, ip: Ipv4Addr, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let from_map = |m: &Option<std::collections::BTreeMap<String, String>>, key: &str| {
        m.as_ref().and_then(|m| m.get(key).cloned())
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => Some(NODE_NAME.into()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" => Some(ip.to_string()),
        "status.hostIP" => Some(NODE_IP.to_string()),
        p => {
            let key = |prefix: &str| {
                p.strip_prefix(prefix)
                    .and_then(|r| r.strip_prefix("['"))
                    .and_then(|r| r.strip_suffix("']"))
                    .map(str::to_string)
            };
            if let Some(k) = key("metadata.labels") {
                from_map(&meta.labels, &k)
            } else if let Some(k) = key("metadata.annotations") {
                from_map(&meta.annotations, &k)
            } else {
                None
            }
        }
    }
}

/// The pod's resolv.conf: with the default `ClusterFirst` policy, the cluster
/// DNS and the search list `<ns>.svc.<domain> svc.<domain> <domain>`, then
/// `dnsConfig`'s servers, searches and options; `None` uses only `dnsConfig`.
fn resolv_conf(pod: &Pod) -> String {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let cfg = spec.dns_config.clone().unwrap_or_default();
    let mut servers = Vec::new();
    let mut search = Vec::new();
    let mut options = Vec::new();
    if spec.dns_policy.as_deref() != Some("None") {
        servers.push(DNS_SERVICE_IP.to_string());
        search.extend([
            format!("{ns}.svc.cluster.local"),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ]);
        options.push("ndots:5".to_string());
    }
    servers.extend(cfg.nameservers.unwrap_or_default());
    search.extend(cfg.searches.unwrap_or_default());
    for o in cfg.options.unwrap_or_default() {
        let name = o.name.unwrap_or_default();
        options.retain(|x| x.split(':').next() != Some(name.as_str()));
        options.push(match o.value {
            Some(v) => format!("{name}:{v}"),
            None => name,
        });
    }
    let mut out = String::new();
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn now_micro() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Microsecond)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_default()
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
