//! The Kubernetes side: a client, and three watches (Namespaces, Services,
//! EndpointSlices, in all namespaces) fed through [`ClusterState`] into a sink
//! of [`Change`]s.
//!
//! The watches only ask for what can matter: namespaces that carry
//! [`SHARED_NAMESPACE_LABEL`] (a namespace whose label is removed leaves that
//! selection, which the API server reports as a delete) and EndpointSlices that
//! carry [`SERVICE_NAME_LABEL`]. Services are watched whole.
//!
//! Each watch restart (the first list, and any relist after an expired
//! `resourceVersion` or a lost connection) arrives as `Init`, `InitApply`…,
//! `InitDone`; the page is buffered and replaces that kind's state at
//! `InitDone`, so objects deleted while the watch was down disappear. Errors
//! are logged and retried with kube's default backoff; the table the proxies
//! have stays as it was meanwhile.
//!
//! Nothing reaches the sink until all three kinds are listed once: then the
//! whole table goes out as one batch and `on_synced` runs, so a proxy never
//! sees a table with services but without their endpoints.

use std::path::PathBuf;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::DynamicObject;
use kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config};

use crate::cluster::ClusterState;
use crate::copies::Feed;
use crate::copies::plan::http_route;
use crate::copies::sources::{self, Sources};
use crate::store::Change;
use divert_core::names::label::SHARED_NAMESPACE as SHARED_NAMESPACE_LABEL;

use crate::translate::SERVICE_NAME_LABEL;

/// Why no Kubernetes client could be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot load the in-cluster Kubernetes config: {0}; the controller's pod needs its \
         service account token mounted (automountServiceAccountToken), or pass --kubeconfig"
    )]
    InCluster(#[source] InClusterError),
    #[error(
        "cannot read kubeconfig {}: {source}; pass --kubeconfig with a readable file, or run \
         the controller in a pod",
        path.display()
    )]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "kubeconfig {}: {source}; pass --kubeconfig with a kubeconfig that has a current \
         context and a server, or run the controller in a pod",
        path.as_ref().map_or("(KUBECONFIG or ~/.kube/config)".into(), |p| p.display().to_string())
    )]
    Kubeconfig {
        /// The file given, or `None` for the default search.
        path: Option<PathBuf>,
        #[source]
        source: KubeconfigError,
    },
    #[error("cannot create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

impl Error {
    fn kubeconfig(path: Option<PathBuf>, source: KubeconfigError) -> Self {
        match source {
            KubeconfigError::ReadConfig(source, read) => Error::ReadKubeconfig {
                path: path.unwrap_or(read),
                source,
            },
            source => Error::Kubeconfig { path, source },
        }
    }
}

/// A client for the API server: from `kubeconfig` when given; else the
/// in-cluster config when running in a pod (`KUBERNETES_SERVICE_HOST` set);
/// else the default kubeconfig (`KUBECONFIG`, then `~/.kube/config`).
pub async fn client(kubeconfig: Option<PathBuf>) -> Result<Client, Error> {
    let options = KubeConfigOptions::default();
    let config = match kubeconfig {
        Some(path) => {
            let error = |source| Error::kubeconfig(Some(path.clone()), source);
            let file = Kubeconfig::read_from(&path).map_err(error)?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(error)?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            Config::incluster().map_err(Error::InCluster)?
        }
        None => Config::from_kubeconfig(&options)
            .await
            .map_err(|source| Error::kubeconfig(None, source))?,
    };
    Client::try_from(config).map_err(Error::Client)
}

/// Watches the cluster and sends every change of the routing table to `sink`
/// (never an empty batch), which starts from an empty table: the first call is
/// the whole table, right before `on_synced`. Returns only if every watch ends
/// (they do not: errors are retried), so run it as its own task.
pub async fn run(
    client: Client,
    mut sink: impl FnMut(Vec<Change>) + Send,
    on_synced: impl FnOnce() + Send,
) {
    let sink = |changes: Vec<Change>, _: &ClusterState| {
        if !changes.is_empty() {
            sink(changes);
        }
    };
    run_with_state(client, None, sink, on_synced).await;
}

/// [`run`], with the state passed to `sink` too (for metrics such as
/// [`ClusterState::skipped`]), and every object also fed to the preview
/// copier when `copies` is given (which adds a watch of Gateway API
/// HTTPRoutes). Unlike [`run`], `sink` is also called with no changes when
/// an event changed nothing the proxies see (a skip count may still have
/// changed), so a sink that bumps a revision per call must check.
pub async fn run_with_state(
    client: Client,
    copies: Option<Feed>,
    mut sink: impl FnMut(Vec<Change>, &ClusterState) + Send,
    on_synced: impl FnOnce() + Send,
) {
    let namespaces = watch(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default().labels(SHARED_NAMESPACE_LABEL),
    )
    .map(Ev::Namespace);
    let services = watch(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .map(|ev| Ev::Service(Box::new(ev)));
    let slices = watch(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(SERVICE_NAME_LABEL),
    )
    .map(Ev::Slice);
    let ingresses = watch(
        Api::<Ingress>::all(client.clone()),
        watcher::Config::default(),
    )
    .map(|ev| Ev::Ingress(Box::new(ev)));
    // Only the copier reads these: HTTPRoutes, every namespace and the
    // opt-in ConfigMaps.
    let (routes, every_namespace, requests) = match copies {
        Some(_) => (
            watch_routes(client.clone()).left_stream(),
            watch(
                Api::<Namespace>::all(client.clone()),
                watcher::Config::default(),
            )
            .map(|ev| Ev::AnyNamespace(Box::new(ev)))
            .left_stream(),
            watch(
                Api::<ConfigMap>::all(client),
                watcher::Config::default().labels(SHARED_NAMESPACE_LABEL),
            )
            .map(|ev| Ev::Request(Box::new(ev)))
            .left_stream(),
        ),
        None => (
            futures_util::stream::empty().right_stream(),
            futures_util::stream::empty().right_stream(),
            futures_util::stream::empty().right_stream(),
        ),
    };
    let events = futures_util::stream::select(
        futures_util::stream::select(namespaces, ingresses),
        futures_util::stream::select(
            futures_util::stream::select(services, slices),
            futures_util::stream::select(
                routes,
                futures_util::stream::select(every_namespace, requests),
            ),
        ),
    );
    let mut events = std::pin::pin!(events);

    let mut state = ClusterState::new();
    let mut ns = Relist::default();
    let mut svc = Relist::default();
    let mut sl = Relist::default();
    let mut ing = Relist::default();
    let mut rt = Relist::default();
    let mut any_ns = Relist::default();
    let mut cms = Relist::default();
    let mut on_synced = Some(on_synced);
    while let Some(ev) = events.next().await {
        let changes = match ev {
            Ev::Namespace(ev) => match ns.step(ev) {
                Step::Apply(o) => {
                    feed(&copies, |s| s.apply_namespace(&o));
                    state.apply_namespace(&o)
                }
                Step::Delete(o) => {
                    let name = o.metadata.name.as_deref().unwrap_or_default();
                    feed(&copies, |s| s.delete_namespace(name));
                    state.delete_namespace(name)
                }
                Step::Relisted(all) => {
                    feed(&copies, |s| s.replace_namespaces(&all));
                    state.resync_namespaces(&all)
                }
                Step::Nothing => continue,
            },
            Ev::Service(ev) => match svc.step(*ev) {
                Step::Apply(o) => {
                    let changes = state.apply_service(&o);
                    feed(&copies, |s| sources::apply(s.services(), o));
                    changes
                }
                Step::Delete(o) => {
                    let (namespace, name) = names(&o.metadata);
                    feed(&copies, |s| sources::delete(s.services(), namespace, name));
                    state.delete_service(namespace, name)
                }
                Step::Relisted(all) => {
                    let changes = state.resync_services(&all);
                    feed(&copies, |s| sources::replace(s.services(), all));
                    changes
                }
                Step::Nothing => continue,
            },
            Ev::Slice(ev) => match sl.step(ev) {
                Step::Apply(o) => {
                    let changes = state.apply_slice(&o);
                    feed(&copies, |s| sources::apply(s.slices(), o));
                    changes
                }
                Step::Delete(o) => {
                    let (namespace, name) = names(&o.metadata);
                    feed(&copies, |s| sources::delete(s.slices(), namespace, name));
                    state.delete_slice(namespace, name)
                }
                Step::Relisted(all) => {
                    let changes = state.resync_slices(&all);
                    feed(&copies, |s| sources::replace(s.slices(), all));
                    changes
                }
                Step::Nothing => continue,
            },
            Ev::Ingress(ev) => match ing.step(*ev) {
                Step::Apply(o) => {
                    let changes = state.apply_ingress(&o);
                    feed(&copies, |s| sources::apply(s.ingresses(), o));
                    changes
                }
                Step::Delete(o) => {
                    let (namespace, name) = names(&o.metadata);
                    feed(&copies, |s| sources::delete(s.ingresses(), namespace, name));
                    state.delete_ingress(namespace, name)
                }
                Step::Relisted(all) => {
                    let changes = state.resync_ingresses(&all);
                    feed(&copies, |s| sources::replace(s.ingresses(), all));
                    changes
                }
                Step::Nothing => continue,
            },
            Ev::AnyNamespace(ev) => {
                match any_ns.step(*ev) {
                    Step::Apply(o) => feed(&copies, |s| s.apply_any_namespace(&o)),
                    Step::Delete(o) => {
                        let name = o.metadata.name.as_deref().unwrap_or_default();
                        feed(&copies, |s| s.delete_any_namespace(name));
                    }
                    Step::Relisted(all) => feed(&copies, |s| s.replace_any_namespaces(&all)),
                    Step::Nothing => {}
                }
                continue;
            }
            Ev::Request(ev) => {
                match cms.step(*ev) {
                    Step::Apply(o) => feed(&copies, |s| s.apply_request(&o)),
                    Step::Delete(o) => {
                        let (namespace, name) = names(&o.metadata);
                        feed(&copies, |s| s.delete_request(namespace, name));
                    }
                    Step::Relisted(all) => feed(&copies, |s| s.replace_requests(&all)),
                    Step::Nothing => {}
                }
                continue;
            }
            // HTTPRoutes change nothing in the table: only the copier reads them.
            Ev::Route(RouteEv::Absent) => {
                feed(&copies, |s| s.routes().clear());
                continue;
            }
            Ev::Route(RouteEv::Event(ev)) => {
                match rt.step(*ev) {
                    Step::Apply(o) => feed(&copies, |s| sources::apply(s.routes(), o)),
                    Step::Delete(o) => {
                        let (namespace, name) = names(&o.metadata);
                        feed(&copies, |s| sources::delete(s.routes(), namespace, name));
                    }
                    Step::Relisted(all) => feed(&copies, |s| sources::replace(s.routes(), all)),
                    Step::Nothing => {}
                }
                continue;
            }
        };
        if on_synced.is_some() {
            if !(ns.listed && svc.listed && sl.listed && ing.listed) {
                // The first table goes out whole once everything is listed.
                continue;
            }
            feed(&copies, |s| s.set_listed());
            let table = state.table();
            tracing::info!(
                changes = table.len(),
                "listed namespaces, services, endpoint slices and ingresses; sending the table"
            );
            sink(table, &state);
            if let Some(f) = on_synced.take() {
                f();
            }
        } else {
            sink(changes, &state);
        }
    }
}

/// One event of one of the watches (Services and Ingresses are large:
/// boxed).
enum Ev {
    Namespace(Option<Event<Namespace>>),
    Service(Box<Option<Event<Service>>>),
    Slice(Option<Event<EndpointSlice>>),
    Ingress(Box<Option<Event<Ingress>>>),
    Route(RouteEv),
    /// Every namespace, for the opt-in requests.
    AnyNamespace(Box<Option<Event<Namespace>>>),
    /// The labelled ConfigMaps: opt-in requests.
    Request(Box<Option<Event<ConfigMap>>>),
}

/// An event of the HTTPRoute watch, which may find no such API.
enum RouteEv {
    Event(Box<Option<Event<DynamicObject>>>),
    /// The cluster has no Gateway API (the list was a 404): no HTTPRoutes.
    Absent,
}

/// The watch of every HTTPRoute. A cluster without Gateway API answers 404,
/// which is no HTTPRoutes (said once, at info); the watch keeps retrying
/// with backoff, so installing Gateway API later is picked up.
fn watch_routes(client: Client) -> impl Stream<Item = Ev> + Send {
    let api = Api::<DynamicObject>::all_with(client, &http_route());
    let mut said = false;
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |ev| match ev {
            Ok(ev) => Ev::Route(RouteEv::Event(Box::new(Some(ev)))),
            Err(watcher::Error::InitialListFailed(kube::Error::Api(s))) if s.is_not_found() => {
                if !said {
                    said = true;
                    tracing::info!(
                        "no Gateway API HTTPRoutes in this cluster: only Ingresses get preview copies"
                    );
                }
                Ev::Route(RouteEv::Absent)
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    "HTTPRoute watch failed; retrying with backoff (the controller needs list \
                     and watch on gateway.networking.k8s.io httproutes)"
                );
                Ev::Route(RouteEv::Event(Box::new(None)))
            }
        })
}

/// A watch over all namespaces with kube's default backoff; errors are logged
/// here and come out as `None`.
fn watch<K>(api: Api<K>, config: watcher::Config) -> impl Stream<Item = Option<Event<K>>> + Send
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    watcher::watcher(api, config)
        .default_backoff()
        .map(|ev| match ev {
            Ok(ev) => Some(ev),
            Err(error) => {
                tracing::warn!(
                    kind = K::kind(&()).as_ref(),
                    %error,
                    "watch failed; retrying with backoff (the controller needs list and watch on \
                     namespaces, services, configmaps, discovery.k8s.io endpointslices and \
                     networking.k8s.io ingresses)"
                );
                None
            }
        })
}

/// The buffer of one watch's relist.
struct Relist<K> {
    page: Option<Vec<K>>,
    /// The first relist is complete.
    listed: bool,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Self {
            page: None,
            listed: false,
        }
    }
}

enum Step<K> {
    Apply(K),
    Delete(K),
    /// A complete fresh list of every object.
    Relisted(Vec<K>),
    Nothing,
}

impl<K> Relist<K> {
    fn step(&mut self, ev: Option<Event<K>>) -> Step<K> {
        match ev {
            None => Step::Nothing,
            Some(Event::Apply(o)) => Step::Apply(o),
            Some(Event::Delete(o)) => Step::Delete(o),
            Some(Event::Init) => {
                self.page = Some(Vec::new());
                Step::Nothing
            }
            Some(Event::InitApply(o)) => {
                self.page.get_or_insert_default().push(o);
                Step::Nothing
            }
            Some(Event::InitDone) => {
                self.listed = true;
                Step::Relisted(self.page.take().unwrap_or_default())
            }
        }
    }
}

/// Feeds the copier, if there is one.
fn feed(copies: &Option<Feed>, f: impl FnOnce(&mut Sources)) {
    if let Some(copies) = copies {
        copies.update(f);
    }
}

fn names(meta: &kube::api::ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use divert_proto::discovery::v1 as pb;
    use futures_util::stream;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use http_body_util::combinators::UnsyncBoxBody;

    use super::*;

    #[test]
    fn relist_buffers_the_page_until_init_done() {
        let mut r = Relist::<u32>::default();
        assert!(matches!(r.step(Some(Event::Apply(1))), Step::Apply(1)));
        assert!(matches!(r.step(Some(Event::Init)), Step::Nothing));
        assert!(matches!(r.step(Some(Event::InitApply(2))), Step::Nothing));
        assert!(matches!(r.step(None), Step::Nothing));
        assert!(matches!(r.step(Some(Event::InitApply(3))), Step::Nothing));
        assert!(!r.listed);
        assert!(matches!(r.step(Some(Event::InitDone)), Step::Relisted(v) if v == [2, 3]));
        assert!(r.listed);
        assert!(matches!(r.step(Some(Event::Delete(2))), Step::Delete(2)));
        // A restart that lists nothing: everything is gone.
        assert!(matches!(r.step(Some(Event::Init)), Step::Nothing));
        assert!(matches!(r.step(Some(Event::InitDone)), Step::Relisted(v) if v.is_empty()));
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_says_which_file_and_what_to_do() {
        let path = std::env::temp_dir().join("divert-no-such-kubeconfig");
        let Err(err) = client(Some(path.clone())).await else {
            panic!("a client from a missing file");
        };
        let msg = err.to_string();
        assert!(matches!(err, Error::ReadKubeconfig { .. }), "{msg}");
        assert_eq!(msg.matches("divert-no-such-kubeconfig").count(), 1, "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("--kubeconfig"), "{msg}");
    }

    #[tokio::test]
    async fn a_kubeconfig_file_makes_a_client() {
        let path = std::env::temp_dir().join(format!("divert-kubeconfig-{}", std::process::id()));
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: kind\n\
             clusters:\n- name: kind\n  cluster:\n    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\n\
             contexts:\n- name: kind\n  context:\n    cluster: kind\n    user: dev\n    namespace: staging\n\
             users:\n- name: dev\n  user:\n    token: not-a-real-token\n",
        )
        .unwrap();
        let made = client(Some(path.clone())).await;
        std::fs::remove_file(&path).unwrap();
        assert_eq!(made.unwrap().default_namespace(), "staging");
    }

    type Body = UnsyncBoxBody<Bytes, Infallible>;

    fn body(s: impl futures_util::Stream<Item = String> + Send + 'static) -> Body {
        UnsyncBoxBody::new(StreamBody::new(
            s.map(|chunk| Ok::<_, Infallible>(Frame::data(Bytes::from(chunk)))),
        ))
    }

    /// A list response as the API server sends it: typed kind, a
    /// resourceVersion, items without apiVersion and kind.
    fn list_response(
        fixture: &str,
        kind: &str,
        keep: impl Fn(&serde_json::Value) -> bool,
    ) -> String {
        let list: serde_json::Value = serde_json::from_str(fixture).unwrap();
        let items: Vec<serde_json::Value> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| keep(i))
            .map(|i| {
                let mut i = i.clone();
                let obj = i.as_object_mut().unwrap();
                obj.remove("apiVersion");
                obj.remove("kind");
                i
            })
            .collect();
        let api_version = match kind {
            "EndpointSliceList" => "discovery.k8s.io/v1",
            "IngressList" => "networking.k8s.io/v1",
            _ => "v1",
        };
        serde_json::json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"resourceVersion": "50000"},
            "items": items,
        })
        .to_string()
    }

    /// An API server that lists the fixtures, and on the first watch of
    /// services, once the table is synced, reports bob's rent deleted.
    fn fake_api(
        requests: Arc<Mutex<Vec<String>>>,
        synced: tokio::sync::watch::Receiver<bool>,
    ) -> Client {
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let uri = req.uri().to_string();
            requests.lock().unwrap().push(uri.clone());
            let mut synced = synced.clone();
            async move {
                let path = req.uri().path();
                let watching = uri.contains("watch=true");
                let resp = if !watching {
                    let json = match path {
                        "/api/v1/namespaces" => list_response(
                            include_str!("../testdata/namespaces.json"),
                            "NamespaceList",
                            |ns| {
                                ns["metadata"]["labels"]
                                    .get(SHARED_NAMESPACE_LABEL)
                                    .is_some()
                            },
                        ),
                        "/api/v1/services" => list_response(
                            include_str!("../testdata/services.json"),
                            "ServiceList",
                            |_| true,
                        ),
                        "/apis/discovery.k8s.io/v1/endpointslices" => list_response(
                            include_str!("../testdata/endpointslices.json"),
                            "EndpointSliceList",
                            |_| true,
                        ),
                        // No Ingresses: the table has no preview hosts.
                        "/apis/networking.k8s.io/v1/ingresses" => {
                            list_response(r#"{"items": []}"#, "IngressList", |_| true)
                        }
                        other => panic!("unexpected request {other}"),
                    };
                    body(stream::once(async { json }))
                } else if path == "/api/v1/services" {
                    let services: serde_json::Value =
                        serde_json::from_str(include_str!("../testdata/services.json")).unwrap();
                    let rent = services["items"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|s| s["metadata"]["namespace"] == "bob")
                        .unwrap()
                        .clone();
                    let event = serde_json::json!({"type": "DELETED", "object": rent});
                    body(
                        stream::once(async move {
                            let _ = synced.wait_for(|s| *s).await;
                            format!("{event}\n")
                        })
                        .chain(stream::pending()),
                    )
                } else {
                    body(stream::pending())
                };
                Ok::<_, Infallible>(http::Response::new(resp))
            }
        });
        Client::new(service, "default")
    }

    #[tokio::test]
    async fn run_sends_the_whole_table_once_synced_then_each_change() {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
        let client = fake_api(requests.clone(), synced_rx);
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let (tx, mut batches) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn({
            let log = log.clone();
            let log2 = log.clone();
            run(
                client,
                move |changes| {
                    log.lock()
                        .unwrap()
                        .push(format!("batch of {}", changes.len()));
                    tx.send(changes).unwrap();
                },
                move || {
                    log2.lock().unwrap().push("synced".to_owned());
                    synced_tx.send(true).unwrap();
                },
            )
        });
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(20), batches.recv())
                .await
                .expect("a batch within 20s")
                .unwrap()
        };

        let mut want = ClusterState::new();
        want.resync(
            &crate::translate::tests::namespaces(),
            &crate::translate::tests::services(),
            &crate::translate::tests::slices(),
        );
        let first = next().await;
        assert_eq!(first, want.table());
        let second = next().await;
        assert_eq!(
            second,
            vec![Change::DeleteService(pb::ServiceKey {
                namespace: "bob".to_owned(),
                name: "rent".to_owned(),
            })]
        );
        task.abort();
        assert_eq!(
            *log.lock().unwrap(),
            [
                format!("batch of {}", first.len()),
                "synced".to_owned(),
                "batch of 1".to_owned()
            ]
        );

        let requests = requests.lock().unwrap();
        let asked = |prefix: &str, selector: Option<&str>| {
            requests.iter().any(|r| {
                r.starts_with(prefix)
                    && selector.is_none_or(|s| r.contains(&format!("labelSelector={s}")))
            })
        };
        assert!(
            asked("/api/v1/namespaces?", Some("divert.dev%2Fshared-namespace")),
            "{requests:?}"
        );
        assert!(asked("/api/v1/services?", None), "{requests:?}");
        assert!(
            asked(
                "/apis/discovery.k8s.io/v1/endpointslices?",
                Some("kubernetes.io%2Fservice-name")
            ),
            "{requests:?}"
        );
    }
}
