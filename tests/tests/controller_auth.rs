//! Who may call the controller's gRPC API, decided by the real kube-apiserver
//! of the test control plane (TokenReview, SubjectAccessReview, the pods and
//! namespaces it holds): only a pod Divert injected streams the table, and
//! only while its token is valid; people see the proxies of the namespaces
//! RBAC lets them see. Each caller is tried with the token it would really
//! have; the pods are API objects (no node runs them), which is all the
//! controller looks at.

use std::time::Duration;

use divert_controller::auth::{Access, Authenticator};
use divert_controller::server::DiscoveryService;
use divert_controller::store::Store;
use divert_proto::discovery::v1 as pb;
use divert_proto::discovery::v1::discovery_client::DiscoveryClient;
use divert_tests::cluster::{self, Cluster, ISSUER, eventually};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tonic::transport::Channel;

/// How often the server checks a stream's token again, here.
const RECHECK: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_injected_pods_token_streams_the_table_and_people_see_what_rbac_lets_them() {
    if !cluster::available() {
        return;
    }
    let cluster = Cluster::start().await;
    let client = cluster.client().await;
    let pp = PatchParams::apply("divert-tests").force();
    let apply = |api: &Api<k8s_openapi::api::core::v1::Namespace>, name: &str, labels| {
        let (api, name, pp) = (api.clone(), name.to_owned(), pp.clone());
        async move {
            api.patch(
                &name,
                &pp,
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, "labels": labels}})),
            )
            .await
            .expect("a namespace");
        }
    };
    let namespaces = Api::all(client.clone());
    apply(
        &namespaces,
        "staging",
        json!({"divert.dev/inject": "enabled"}),
    )
    .await;
    apply(&namespaces, "plain", json!({})).await;
    // Pods as the webhook leaves them (marked injected) or not.
    for (ns, name, injected) in [
        ("staging", "web", true),
        ("staging", "raw", false),
        ("plain", "forged", true),
    ] {
        Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .patch(
                "app",
                &pp,
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "app", "namespace": ns}})),
            )
            .await
            .expect("a service account");
        let annotations = if injected {
            json!({"divert.dev/injected": "test"})
        } else {
            json!({})
        };
        Api::<Pod>::namespaced(client.clone(), ns)
            .patch(
                name,
                &pp,
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": ns, "annotations": annotations},
                    "spec": {"serviceAccountName": "app",
                             "containers": [{"name": "app", "image": "app:1"}]}})),
            )
            .await
            .expect("a pod");
    }
    // The token the kubelet would project for `pod`, for `audience`.
    let token = |ns: &'static str, pod: Option<&'static str>, audience: &'static str| {
        token_of(client.clone(), ns, "app", pod, audience)
    };

    // The controller's gRPC server, checking tokens with this API server.
    let store = Store::new();
    let access = Access::Kubernetes(Authenticator::new(client.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DiscoveryService::with_recheck(
                store.clone(),
                access,
                RECHECK,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel: Channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let watch = |token: Option<String>| {
        let mut client = DiscoveryClient::new(channel.clone());
        async move {
            let request = pb::WatchRequest {
                proxy: Some(pb::ProxyInfo {
                    pod: "impostor".into(),
                    namespace: "kube-system".into(),
                    ..Default::default()
                }),
            };
            client.watch(with_token(request, token)).await
        }
    };
    let refused =
        |result: Result<tonic::Response<tonic::Streaming<pb::TableUpdate>>, tonic::Status>,
         why: &str| {
            match result {
                Err(status) => {
                    assert_eq!(
                        status.code(),
                        tonic::Code::Unauthenticated,
                        "{why}: {status:?}"
                    );
                    assert!(
                        status.message().contains(why),
                        "{why}: {}",
                        status.message()
                    );
                }
                Ok(_) => panic!("a watch was let through: {why}"),
            }
        };
    refused(watch(None).await, "no credentials");
    refused(
        watch(Some(token("staging", None, "divert").await)).await,
        "bound to its pod",
    );
    refused(
        watch(Some(token("staging", Some("raw"), "divert").await)).await,
        "was not injected",
    );
    refused(
        watch(Some(token("plain", Some("forged"), "divert").await)).await,
        "not one Divert injects",
    );
    refused(
        watch(Some(token("staging", Some("web"), ISSUER).await)).await,
        "audience",
    );

    // The injected pod's proxy streams, as its pod whatever it claims.
    let mut stream = watch(Some(token("staging", Some("web"), "divert").await))
        .await
        .expect("the injected pod's proxy may watch")
        .into_inner();
    let snapshot = stream
        .message()
        .await
        .expect("a healthy stream")
        .expect("a snapshot");
    assert!(snapshot.snapshot);
    assert_eq!(snapshot.tap_key.len(), 64, "the key for its tap");
    let subscribers = store.subscribers();
    assert_eq!(
        (
            subscribers[0].info.namespace.as_str(),
            subscribers[0].info.pod.as_str()
        ),
        ("staging", "web")
    );

    // People: a viewer of staging lists its proxies; someone without rights
    // there, none; nobody without credentials.
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), "staging");
    for name in ["viewer", "nobody"] {
        sa.patch(
            name,
            &pp,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": "staging"}})),
        )
        .await
        .expect("a service account");
    }
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), "staging")
        .patch(
            "viewer",
            &pp,
            &Patch::Apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "viewer", "namespace": "staging"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": "staging"}]})),
        )
        .await
        .expect("a role binding");
    let person = |name: &'static str| token_of(client.clone(), "staging", name, None, ISSUER);
    let list = |token: Option<String>| {
        let mut client = DiscoveryClient::new(channel.clone());
        async move {
            client
                .list_proxies(with_token(pb::ListProxiesRequest {}, token))
                .await
        }
    };
    let viewer = person("viewer").await;
    let seen = eventually("the viewer's role binding takes effect", || async {
        let listed = list(Some(viewer.clone())).await.ok()?.into_inner().proxies;
        (!listed.is_empty()).then_some(listed)
    })
    .await;
    assert_eq!(seen[0].proxy.as_ref().map(|p| p.pod.as_str()), Some("web"));
    let listed = list(Some(person("nobody").await))
        .await
        .expect("a person may ask")
        .into_inner()
        .proxies;
    assert!(listed.is_empty(), "{listed:?}");
    let refused_list = list(None).await.expect_err("no credentials");
    assert_eq!(refused_list.code(), tonic::Code::Unauthenticated);

    // The pod deleted, its token is no longer valid: the stream ends within
    // a recheck or two.
    Api::<Pod>::namespaced(client.clone(), "staging")
        .delete("web", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete the pod");
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends within 30 s");
    match ended {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}"),
        other => panic!("the stream ended without saying why: {other:?}"),
    }
}

/// A token of service account `ns/sa` for `audience`, bound to `pod` if
/// given (as the kubelet projects one for a pod).
async fn token_of(
    client: kube::Client,
    ns: &str,
    sa: &str,
    pod: Option<&str>,
    audience: &str,
) -> String {
    let bound = match pod {
        Some(name) => {
            let p = Api::<Pod>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .expect("the pod");
            Some(BoundObjectReference {
                kind: Some("Pod".into()),
                api_version: Some("v1".into()),
                name: p.metadata.name,
                uid: p.metadata.uid,
            })
        }
        None => None,
    };
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.into()],
            expiration_seconds: Some(600),
            bound_object_ref: bound,
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client, ns)
        .create_subresource::<TokenRequest, TokenRequest>(
            "token",
            sa,
            &PostParams::default(),
            &request,
        )
        .await
        .expect("a token")
        .status
        .map(|s| s.token)
        .unwrap_or_default()
}

/// `message` as a request carrying `token` as its bearer, if any.
fn with_token<T>(message: T, token: Option<String>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(t) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    request
}
