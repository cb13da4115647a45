//! The scenario's phases that need a real kubelet: what the pod runner
//! cannot check, run on the test cluster's real node (and on a real
//! cluster, but for the kubelet's restart, which needs the node's own
//! processes). With the pod runner each says so and passes nothing.

use std::time::{Duration, Instant};

use divert_tests::cluster::{WAIT, eventually, pod_ready};
use divert_tests::try_curl_with;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use super::Scenario;

/// What the `probed` pod's app calls itself, from a ConfigMap by envFrom.
const PROBED_TEXT: &str = "probed-from-a-configmap@staging";
/// How often the kubelet probes the `probed` pods.
const PROBE_PERIOD_SECONDS: i32 = 1;
/// How many failed liveness probes in a row the live pod tolerates: its
/// probe goes through the proxy, so it must outlast a restart of the proxy
/// (the defaults, 3 × 10 s, do by far).
const LIVE_THRESHOLD: i32 = 5;

impl Scenario {
    /// Whether the back-end runs pods with a kubelet; if not, says so.
    fn has_kubelet(&self, phase: &str) -> bool {
        let real = !self.backend.pods_share_files();
        if !real {
            eprintln!("{phase}: the pod runner has no kubelet; checked on the real node only");
        }
        real
    }

    /// A pod whose app reads its name from a ConfigMap (envFrom), runs as a
    /// non-root user on a read-only root filesystem, and has a tcpSocket
    /// liveness probe of its port, which injection turns into the proxy's
    /// TCP probe: the kubelet keeps it running and Ready, and it serves.
    /// The same pod with the probe on a port nothing listens on is
    /// restarted by the kubelet: the probe through the proxy tells the
    /// truth (as written, it would reach the proxy and always pass).
    pub(super) async fn kubelet_probes_through_the_proxy(&self) {
        if !self.has_kubelet("probes, envFrom, read-only root") {
            return;
        }
        Api::<ConfigMap>::namespaced(self.client.clone(), "staging")
            .patch(
                "probed-env",
                &PatchParams::apply("divert-tests").force(),
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "probed-env"},
                    "data": {"PROBED_TEXT": PROBED_TEXT}})),
            )
            .await
            .expect("the ConfigMap");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "staging");
        // The live pod tolerates its proxy's restart (next phase): the
        // probe goes through the proxy, which is away for a moment then.
        for (name, probed_port, threshold) in [
            ("probed", 8080, LIVE_THRESHOLD),
            ("probed-wrong-port", 8081, 1),
        ] {
            let app = self.backend.app_image().expect("the back-end's app image");
            pods.patch(
                name,
                &PatchParams::apply("divert-tests").force(),
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "labels": {"app": name}},
                    "spec": {"terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "app", "image": app,
                            "args": ["-listen=:8080", "-text=$(PROBED_TEXT)"],
                            "ports": [{"containerPort": 8080}],
                            "envFrom": [{"configMapRef": {"name": "probed-env"}}],
                            "securityContext": {"readOnlyRootFilesystem": true,
                                "runAsNonRoot": true, "runAsUser": 65532,
                                "allowPrivilegeEscalation": false},
                            "livenessProbe": {"tcpSocket": {"port": probed_port},
                                "periodSeconds": PROBE_PERIOD_SECONDS,
                                "failureThreshold": threshold},
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080},
                                "periodSeconds": PROBE_PERIOD_SECONDS}}]}})),
            )
            .await
            .expect("the probed pod");
        }
        let probed = pods.get("probed").await.expect("the probed pod");
        let liveness = probed
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == "app"))
            .and_then(|c| c.liveness_probe.clone())
            .expect("the app's liveness probe");
        assert!(
            liveness.tcp_socket.is_none()
                && liveness
                    .http_get
                    .as_ref()
                    .and_then(|h| h.path.as_deref())
                    .is_some_and(|p| p.ends_with("/8080")),
            "injection did not turn the tcpSocket probe into the proxy's: {liveness:?}"
        );

        // The wrong port: the kubelet restarts the app. (Then the pod goes:
        // it would go on restarting.)
        eventually("the kubelet restarts the app whose probe fails", || async {
            let p = pods.get("probed-wrong-port").await.ok()?;
            app_status(&p).filter(|s| s.restart_count >= 1).map(|_| ())
        })
        .await;
        pods.delete("probed-wrong-port", &Default::default())
            .await
            .expect("delete the pod");
        eventually("the pod with the failing probe is gone", || async {
            pods.get_opt("probed-wrong-port")
                .await
                .ok()?
                .is_none()
                .then_some(())
        })
        .await;

        // The right one: Ready, never restarted over many probe periods,
        // and serving with the name the ConfigMap gave it.
        let ip = eventually("the probed pod is Ready", || async {
            let p = pods.get("probed").await.ok()?;
            pod_ready(&p).then_some(())?;
            p.status?.pod_ip
        })
        .await;
        let since = Instant::now();
        let watched = Duration::from_secs(6 * PROBE_PERIOD_SECONDS as u64);
        while since.elapsed() < watched {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let p = pods.get("probed").await.expect("the probed pod");
        let status = app_status(&p).expect("the app's status");
        assert_eq!(
            status.restart_count, 0,
            "a live app was restarted: {status:?}"
        );
        let seen = self
            .curl(vec![
                "-H".into(),
                "baggage: okteto-divert=alice".into(),
                format!("http://{ip}:8080/"),
            ])
            .await;
        assert_eq!(seen["servedBy"], PROBED_TEXT, "{seen}");
    }

    /// The `probed` pod's proxy is killed: the kubelet starts the native
    /// sidecar again, the app is not restarted, and requests to the pod and
    /// from its app recover: none fails past one retry once the proxy is
    /// started again.
    pub(super) async fn sidecar_restart_recovers(&self) {
        if !self.has_kubelet("the sidecar's restart") {
            return;
        }
        let Some(node) = self.backend.real_node() else {
            eprintln!("the sidecar's restart: needs the real node's containerd");
            return;
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "staging");
        let before = pods.get("probed").await.expect("the probed pod");
        let proxy = proxy_status(&before).expect("the proxy's status");
        let id = proxy
            .container_id
            .as_deref()
            .and_then(|id| id.strip_prefix("containerd://"))
            .expect("the proxy's containerd ID")
            .to_string();
        let ip = before
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("the pod's IP");
        for url in [
            format!("http://{ip}:8080/"),
            format!("http://{ip}:8080/call/catalog:9090/"),
        ] {
            let seen = self
                .curl(vec![
                    "-H".into(),
                    "baggage: okteto-divert=alice".into(),
                    url,
                ])
                .await;
            assert_eq!(seen["servedBy"], PROBED_TEXT, "{seen}");
        }
        let killed = node
            .ctr()
            .args(["tasks", "kill", "--signal", "SIGKILL", &id])
            .output()
            .expect("run ctr");
        assert!(
            killed.status.success(),
            "ctr tasks kill: {}",
            String::from_utf8_lossy(&killed.stderr)
        );
        let killed_at = Instant::now();
        // Requests to the pod (through its inbound proxy) and from its app
        // (through its outbound proxy), until the kubelet has the proxy back
        // and for a while after. One that fails while the proxy is away is
        // tried once more when the kubelet has it started again, and must
        // succeed then: nothing the old proxy left (rules, state) may break
        // the new one.
        let back = || async {
            let p = pods.get("probed").await.ok()?;
            let s = proxy_status(&p)?;
            // Started: its startup probe passed, so it has its table.
            (s.restart_count > proxy.restart_count && s.started == Some(true)).then_some(())
        };
        let (mut sent, mut failed) = (0, 0);
        let mut back_after = None;
        loop {
            for url in [
                format!("http://{ip}:8080/"),
                format!("http://{ip}:8080/call/catalog:9090/"),
            ] {
                let request = || async {
                    let c = self.in_client(&["curl".into()]).await;
                    let args = ["-H", "baggage: okteto-divert=alice", url.as_str()];
                    try_curl_with(c, &args).await
                };
                sent += 1;
                let body = match request().await {
                    Ok((200, body)) => body,
                    first => {
                        failed += 1;
                        eventually("the kubelet starts the proxy again", back).await;
                        match request().await {
                            Ok((200, body)) => body,
                            retry => {
                                let logs = self
                                    .kubectl(&[
                                        "-n",
                                        "staging",
                                        "logs",
                                        "probed",
                                        "-c",
                                        "divert-proxy",
                                    ])
                                    .output()
                                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                                    .unwrap_or_default();
                                panic!(
                                    "{url} failed ({first:?}), and again once the proxy was back \
                                     {:.1}s after it was killed: {retry:?}\nthe new proxy's log:\n{logs}",
                                    killed_at.elapsed().as_secs_f64()
                                )
                            }
                        }
                    }
                };
                let seen: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                assert_eq!(seen["servedBy"], PROBED_TEXT, "{url}: {body}");
            }
            if back_after.is_none() && back().await.is_some() {
                back_after = Some(killed_at.elapsed());
            }
            if back_after.is_some() && sent >= 10 {
                break;
            }
            assert!(
                killed_at.elapsed() < WAIT,
                "the proxy was not back within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "the proxy was started again {:.1}s after it was killed; {failed} of {sent} requests \
             needed their retry",
            back_after.unwrap_or_default().as_secs_f64()
        );
        let app = app_status(&pods.get("probed").await.expect("the pod")).expect("the app");
        assert_eq!(
            app.restart_count, 0,
            "the app restarted with its proxy: {app:?}"
        );
    }

    /// The kubelet stops and starts again (as after a node's reboot of the
    /// agent, or an upgrade): the pods keep running, with the same
    /// containers and no restart, and requests are routed by key as before.
    pub(super) async fn kubelet_restart_keeps_the_pods(&mut self) {
        if self.backend.real_node().is_none() {
            eprintln!("the kubelet's restart: needs the real node");
            return;
        }
        let containers = |pods: Vec<Pod>| -> Vec<(String, String, i32)> {
            let mut all: Vec<(String, String, i32)> = pods
                .into_iter()
                .flat_map(|p| {
                    let name = p.metadata.name.unwrap_or_default();
                    let status = p.status.unwrap_or_default();
                    status
                        .container_statuses
                        .into_iter()
                        .flatten()
                        .chain(status.init_container_statuses.into_iter().flatten())
                        .map(move |c| {
                            (
                                format!("{name}/{}", c.name),
                                c.container_id.unwrap_or_default(),
                                c.restart_count,
                            )
                        })
                })
                .collect();
            all.sort();
            all
        };
        let staging: Api<Pod> = Api::namespaced(self.client.clone(), "staging");
        let list = || async {
            staging
                .list(&Default::default())
                .await
                .expect("list staging's pods")
                .items
        };
        let before = containers(list().await);
        self.backend
            .real_node_mut()
            .expect("the real node")
            .restart_kubelet()
            .await;
        // Until the new kubelet has synced its pods it cannot exec in them
        // ("pod does not exist"): the first request waits for that, and
        // must then be routed as before.
        let seen = eventually("the restarted kubelet execs in the client pod", || async {
            let c = self.in_client(&["curl".into()]).await;
            let args = [
                "-H",
                "baggage: okteto-divert=alice",
                "http://frontend:8080/",
            ];
            let (code, body) = try_curl_with(c, &args).await.ok()?;
            (code == 200).then(|| serde_json::from_str::<Value>(&body).ok())?
        })
        .await;
        assert_eq!(seen["servedBy"], "frontend@alice", "{seen}");
        eventually("every staging pod is Ready after the restart", || async {
            list().await.iter().all(pod_ready).then_some(())
        })
        .await;
        // A port-forward is a stream through the kubelet, which ended with
        // it: the controller's is made again.
        if let Some(pod) = self.controller_pod.as_mut()
            && let Some(old) = pod.forward.take()
        {
            let port = u16::try_from(pod.grpc_port).expect("a port");
            drop(old);
            pod.forward = Some(self.backend.port_forward("divert", &pod.name, port));
        }
        let after = containers(list().await);
        assert_eq!(
            before, after,
            "the kubelet's restart changed the pods' containers"
        );
    }
}

/// The `app` container's status.
fn app_status(p: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "app")
        .cloned()
}

/// The `divert-proxy` native sidecar's status.
fn proxy_status(p: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    p.status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "divert-proxy")
        .cloned()
}
