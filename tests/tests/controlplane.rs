//! The test control plane itself: the real kube-apiserver and
//! kube-controller-manager do what the end-to-end scenario relies on.
//! Deployments make ReplicaSets make Pods, EndpointSlices follow pod
//! readiness, the garbage collector follows ownerReferences, namespace
//! deletion deletes what the namespace holds, RBAC is enforced and
//! service-account tokens are signed.
//!
//! Pod status is written here the way a kubelet writes it (the status
//! subresource), since this test runs no pods.

use std::time::Instant;

use divert_tests::cluster::{self, Cluster, eventually, eventually_none};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_runs_deployments_endpoints_gc_namespaces_rbac_and_tokens() {
    if !cluster::available() {
        return;
    }
    let started = Instant::now();
    let cluster = Cluster::start().await;
    eprintln!(
        "control plane ready in {:.1}s; memory: {:?}",
        started.elapsed().as_secs_f64(),
        cluster.memory_kib()
    );
    let client = cluster.client().await;
    let pp = PatchParams::apply("divert-tests").force();

    // A namespace, a Deployment of two replicas and a Service for it.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            "movies",
            &pp,
            &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "movies"}})),
        )
        .await
        .expect("create the namespace");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "movies");
    deployments
        .patch(
            "catalog",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "catalog", "namespace": "movies"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "catalog"}},
                    "template": {
                        "metadata": {"labels": {"app": "catalog"}},
                        "spec": {"containers": [{"name": "catalog", "image": "catalog:1",
                            "ports": [{"name": "http", "containerPort": 8080}]}]}
                    }
                }
            })),
        )
        .await
        .expect("create the Deployment");
    let services: Api<Service> = Api::namespaced(client.clone(), "movies");
    let svc = services
        .patch(
            "catalog",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "catalog", "namespace": "movies"},
                "spec": {"selector": {"app": "catalog"},
                         "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
            })),
        )
        .await
        .expect("create the Service");
    let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    assert!(
        cluster_ip.starts_with("10.96."),
        "the Service's ClusterIP {cluster_ip:?} comes from the service CIDR {}",
        cluster::SERVICE_CIDR
    );

    // The deployment controller makes a ReplicaSet, the ReplicaSet
    // controller two Pods, each owned by the one before.
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), "movies");
    let rs = eventually("a ReplicaSet for the Deployment", || async {
        replicasets
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    let owner = rs.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owner.first().map(|o| o.kind.as_str()), Some("Deployment"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "movies");
    let made = eventually("two Pods for the ReplicaSet", || async {
        let list = pods.list(&ListParams::default()).await.ok()?.items;
        (list.len() == 2).then_some(list)
    })
    .await;
    for p in &made {
        let owner = p.metadata.owner_references.clone().unwrap_or_default();
        assert_eq!(
            owner.first().map(|o| o.name.as_str()),
            rs.metadata.name.as_deref()
        );
        // The ServiceAccount admission plugin gave each pod a token volume.
        let volumes = p
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        assert!(
            volumes
                .iter()
                .any(|v| v.name.starts_with("kube-api-access-")),
            "the pod has its projected service-account token volume: {volumes:?}"
        );
    }

    // Bind both pods to a node and write their status as a kubelet does:
    // the first Ready, the second running but not Ready.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            "node-1",
            &pp,
            &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})),
        )
        .await
        .expect("register a node");
    let names: Vec<String> = made
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    for (i, name) in names.iter().enumerate() {
        divert_tests::cluster::kubelet::bind(&client, "movies", name, "node-1")
            .await
            .expect("bind the pod");
        set_status(&pods, name, &format!("10.244.0.{}", 10 + i), i == 0).await;
    }

    // The EndpointSlice controller follows readiness.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "movies");
    let endpoints = || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=catalog"))
            .await
            .ok()?;
        let mut eps: Vec<(String, bool)> = list
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .map(|e| {
                (
                    e.addresses.join(","),
                    e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false),
                )
            })
            .collect();
        eps.sort();
        Some(eps)
    };
    eventually(
        "the slice has one ready and one unready endpoint",
        || async {
            let eps = endpoints().await?;
            (eps == [("10.244.0.10".into(), true), ("10.244.0.11".into(), false)]).then_some(())
        },
    )
    .await;
    set_status(&pods, &names[1], "10.244.0.11", true).await;
    eventually("the second endpoint turns ready", || async {
        let eps = endpoints().await?;
        (eps == [("10.244.0.10".into(), true), ("10.244.0.11".into(), true)]).then_some(())
    })
    .await;

    // RBAC is enforced: a service account with no role may not list pods;
    // its token is signed by the API server and accepted by it.
    let tokens: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "movies");
    eventually("the namespace's default ServiceAccount", || async {
        tokens.get_opt("default").await.ok().flatten()
    })
    .await;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![cluster::ISSUER.into()],
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued: TokenRequest = tokens
        .create_subresource("token", "default", &PostParams::default(), &request)
        .await
        .expect("a token for default/default");
    let token = issued.status.map(|s| s.token).unwrap_or_default();
    assert_eq!(token.split('.').count(), 3, "a signed JWT");
    let as_sa = cluster.client_with_token(&token).await;
    let denied = Api::<Pod>::namespaced(as_sa.clone(), "movies")
        .list(&ListParams::default())
        .await
        .expect_err("a service account without a role cannot list pods");
    assert!(
        matches!(&denied, kube::Error::Api(s) if s.code == 403),
        "403 Forbidden, got {denied:?}"
    );
    let review = as_sa
        .request_text(
            http::Request::get("/apis/authentication.k8s.io/v1")
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect("the token authenticates (discovery is open to every authenticated user)");
    assert!(review.contains("selfsubjectreviews"), "{review}");

    // The garbage collector follows ownerReferences: deleting the
    // Deployment (background propagation) removes its ReplicaSet and Pods.
    deployments
        .delete("catalog", &DeleteParams::background())
        .await
        .expect("delete the Deployment");
    eventually(
        "the ReplicaSet is collected and its Pods are terminating",
        || async {
            let rs = replicasets
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .len();
            let p = pods.list(&ListParams::default()).await.ok()?.items;
            (rs == 0 && p.iter().all(|p| p.metadata.deletion_timestamp.is_some())).then_some(())
        },
    )
    .await;
    // Bound pods wait for their kubelet to confirm that their containers
    // stopped; confirm it as a kubelet does (grace period 0).
    for name in &names {
        pods.delete(name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap_or_else(|e| panic!("confirm the deletion of {name}: {e}"));
    }
    eventually_none("the Pods are gone", &pods, &ListParams::default()).await;

    // Namespace deletion deletes what the namespace holds, then the
    // namespace itself.
    namespaces
        .delete("movies", &DeleteParams::default())
        .await
        .expect("delete the namespace");
    eventually("the namespace and its Service are gone", || async {
        namespaces
            .get_opt("movies")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        services
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty(),
        "the Service went with its namespace"
    );
}

/// Writes a pod's status as a kubelet would: Running, `ip`, Ready or not.
async fn set_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let ready = if ready { "True" } else { "False" };
    let status = json!({
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "Ready", "status": ready},
                {"type": "ContainersReady", "status": ready},
            ],
        }
    });
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("write the status of {name}: {e}"));
}
