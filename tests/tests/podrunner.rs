//! The pod runner on the test control plane: a Deployment's pods run as
//! network namespaces with real processes, probes make them Ready, the
//! EndpointSlice and the kube-proxy stand-in follow, a client pod reaches the
//! Service's ClusterIP, and deletion stops the processes and removes the
//! namespaces.

use std::path::PathBuf;
use std::time::Instant;

use divert_tests::cluster::images::Images;
use divert_tests::cluster::{self, Cluster, WAIT, eventually, eventually_none};
use divert_tests::{curl_with, try_curl_with};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

fn images() -> Images {
    Images::default()
        .with(
            "hashicorp/http-echo",
            PathBuf::from(env!("CARGO_BIN_EXE_movieapp")),
            (65534, 65534),
        )
        .with("busybox", PathBuf::from("/bin/sleep"), (65534, 65534))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_as_namespaces_and_reach_services_by_cluster_ip() {
    if !cluster::available() || !divert_tests::have_tool("curl", &["--version"]) {
        return;
    }
    let cluster = Cluster::start().await;
    let node = cluster.start_node(images()).await;
    let client = cluster.client().await;
    let pp = PatchParams::apply("divert-tests").force();
    let apply = |v: Value| Patch::Apply(v);

    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            "shop",
            &pp,
            &apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})),
        )
        .await
        .expect("namespace");
    // The namespace's default ServiceAccount must exist before pods are
    // admitted (the ServiceAccount admission plugin); the ReplicaSet
    // controller retries until it does.
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), "shop")
        .patch("web", &pp, &apply(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{"name": "web", "image": "hashicorp/http-echo:1.0",
                        "args": ["-listen=:8080", "-text=web@$(POD_NAMESPACE)"],
                        "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                        "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": true,
                            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}}
        })))
        .await
        .expect("deployment");
    let svc = Api::<Service>::namespaced(client.clone(), "shop")
        .patch("web", &pp, &apply(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
        })))
        .await
        .expect("service");
    let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
    Api::<Pod>::namespaced(client.clone(), "shop")
        .patch("client", &pp, &apply(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "shop"},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "sleep", "image": "busybox", "command": ["sleep", "3600"]}]}
        })))
        .await
        .expect("client pod");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let ready = cluster::pod_ready;
    let web = eventually("both web pods Running and Ready", || async {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?
            .items;
        (list.len() == 2 && list.iter().all(ready)).then_some(list)
    })
    .await;
    for p in &web {
        let status = p.status.clone().unwrap_or_default();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let ip = status.pod_ip.unwrap_or_default();
        assert!(
            ip.starts_with("10.244.0."),
            "pod IP {ip} from the node's pod CIDR"
        );
        let cs = status.container_statuses.unwrap_or_default();
        assert!(
            cs.iter()
                .all(|c| c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some())),
            "{cs:?}"
        );
    }
    eventually("the client pod is Ready", || async {
        pods.get_opt("client").await.ok().flatten().filter(ready)
    })
    .await;
    for p in &web {
        let name = p.metadata.name.clone().unwrap_or_default();
        let steps = node.kubelet.describe_start("shop", &name);
        eprintln!("start of shop/{name} (no sidecar): {steps}");
    }
    let (client_ns, _) = node
        .kubelet
        .pod_network("shop", "client")
        .expect("the client pod's network");

    // Through the ClusterIP, both replicas answer (a random choice per
    // connection), each naming its pod and the namespace its $(VAR)
    // argument expanded to.
    let url = format!("http://{cluster_ip}:80/hello");
    let names: Vec<String> = web.iter().filter_map(|p| p.metadata.name.clone()).collect();
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "both replicas answer through the ClusterIP; saw {seen:?}"
        );
        let mut curl = std::process::Command::new("ip");
        curl.args(["netns", "exec", &client_ns, "curl"]);
        // Ready pods are not yet programmed endpoints: the EndpointSlice and
        // then the kube-proxy stand-in follow in their own time, and until
        // then the ClusterIP refuses. Poll, as a client would retry.
        let Ok((code, body)) = try_curl_with(curl, &["-H", "baggage: okteto-divert=x", &url]).await
        else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("JSON from the app");
        assert_eq!(v["servedBy"], "web@shop", "$(POD_NAMESPACE) expanded: {v}");
        assert_eq!(v["baggage"], json!(["okteto-divert=x"]));
        let pod = v["pod"].as_str().unwrap_or_default().to_string();
        assert!(names.contains(&pod), "{pod} is one of {names:?}");
        seen.insert(pod);
    }

    // Cluster DNS (CoreDNS): the short name resolves through the pod's
    // search list, the full name as it is.
    for host in ["web", "web.shop.svc.cluster.local"] {
        let mut curl = std::process::Command::new("ip");
        curl.args(["netns", "exec", &client_ns, "curl"]);
        let (code, body) = curl_with(curl, &[&format!("http://{host}/dns")]).await;
        assert_eq!(code, 200, "{host}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON from the app");
        assert_eq!(v["servedBy"], "web@shop", "{host}: {v}");
    }

    // Deleting the Deployment stops the processes (SIGTERM) and removes the
    // pods and their namespaces.
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), "shop")
        .delete("web", &DeleteParams::background())
        .await
        .expect("delete the deployment");
    eventually_none(
        "the web pods are gone",
        &pods,
        &ListParams::default().labels("app=web"),
    )
    .await;
    for name in names {
        assert!(
            node.kubelet.pod_network("shop", &name).is_none(),
            "{name}'s sandbox is removed"
        );
    }
    drop(node);
}
