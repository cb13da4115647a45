//! The controller's watches of the cluster, and the one loop that takes
//! their events: every watched kind is a row of one table ([`Kind`]),
//! saying how its objects reach the routing table's state
//! ([`ClusterState`], whose changes go to the sink) and the preview
//! copier's ([`Sources`]).
//!
//! | kind | selection | table | copier |
//! |---|---|---|---|
//! | Namespace | labelled `divert.dev/shared-namespace` | ✔ | ✔ |
//! | Namespace | labelled `divert.dev/inject` (the key cookie's annotation) | ✔ | |
//! | Service | all | ✔ | ✔ |
//! | EndpointSlice | labelled `kubernetes.io/service-name` | ✔ | ✔ |
//! | Ingress | all | ✔ (preview hosts) | ✔ |
//! | Namespace | all (opt-in by ConfigMap, expiry) | | ✔ |
//! | ConfigMap | labelled `divert.dev/shared-namespace` (opt-in requests) | | ✔ |
//! | HTTPRoute | all, when the cluster has Gateway API | | ✔ |
//! | VirtualService | all, with the istio driver | | ✔ |
//!
//! The copier's rows are watched only when there is a copier. A namespace
//! whose label is removed leaves the labelled selection, which the API
//! server reports as a delete.
//!
//! Each watch restart (the first list, and any relist after an expired
//! `resourceVersion` or a lost connection) arrives as `Init`, `InitApply`…,
//! `InitDone`; the page is buffered and replaces that kind's objects at
//! `InitDone`, so objects deleted while the watch was down disappear.
//! Errors are logged and retried with kube's default backoff; the table
//! the proxies have stays as it was meanwhile.
//!
//! Nothing reaches the sink until every kind the table is made from is
//! listed once: then the whole table goes out as one batch and
//! `on_synced` runs, so a proxy never sees a table with services but
//! without their endpoints.

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use crate::cluster::ClusterState;
use crate::copies::Feed;
use crate::copies::istio::virtual_service;
use crate::copies::plan::http_route;
use crate::copies::sources::{self, Sources};
use crate::store::Change;
use crate::translate::SERVICE_NAME_LABEL;
use divert_core::names::label::INJECT as INJECT_LABEL;
use divert_core::names::label::SHARED_NAMESPACE as SHARED_NAMESPACE_LABEL;

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
/// copier when `copies` is given (which adds the copier's watches). Unlike
/// [`run`], `sink` is also called with no changes when an event changed
/// nothing the proxies see (a skip count may still have changed), so a
/// sink that bumps a revision per call must check.
pub async fn run_with_state(
    client: Client,
    copies: Option<Feed>,
    mut sink: impl FnMut(Vec<Change>, &ClusterState) + Send,
    on_synced: impl FnOnce() + Send,
) {
    let mut streams: Vec<BoxStream<'static, Applied>> = vec![
        watch(&client, &SHARED_NAMESPACES, Some(SHARED_NAMESPACE_LABEL)),
        watch(&client, &INJECTED_NAMESPACES, Some(INJECT_LABEL)),
        watch(&client, &SERVICES, None),
        watch(&client, &SLICES, Some(SERVICE_NAME_LABEL)),
        watch(&client, &INGRESSES, None),
    ];
    if copies.is_some() {
        streams.push(watch(&client, &EVERY_NAMESPACE, None));
        streams.push(watch(&client, &REQUESTS, Some(SHARED_NAMESPACE_LABEL)));
        let istio = copies.as_ref().is_some_and(|f| f.lock().istio_enabled());
        streams.push(watch_dynamic(
            client.clone(),
            &ROUTES,
            http_route(),
            Absent::Expected(
                "no Gateway API HTTPRoutes in this cluster: only Ingresses get preview copies",
            ),
        ));
        if istio {
            streams.push(watch_dynamic(
                client,
                &VIRTUAL_SERVICES,
                virtual_service(),
                Absent::Wanted(
                    "no Istio VirtualServices in this cluster: the istio driver writes no \
                     routes until Istio's CRDs are installed",
                    Sources::virtual_services_missing,
                ),
            ));
        }
    }
    // The kinds the table is made from, until each is listed once.
    let mut unlisted = vec![
        SHARED_NAMESPACES.name,
        INJECTED_NAMESPACES.name,
        SERVICES.name,
        SLICES.name,
        INGRESSES.name,
    ];
    let mut events = futures_util::stream::select_all(streams);
    let mut state = ClusterState::new();
    let mut on_synced = Some(on_synced);
    while let Some(applied) = events.next().await {
        if applied.relisted {
            unlisted.retain(|k| *k != applied.kind);
        }
        let changes = (applied.apply)(&mut state, copies.as_ref());
        if !applied.table {
            continue;
        }
        if on_synced.is_some() {
            if !unlisted.is_empty() {
                // The first table goes out whole once everything is listed.
                continue;
            }
            if let Some(copies) = &copies {
                copies.update(Sources::set_listed);
            }
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

/// One row of the table of watched kinds: where the objects of kind `K`
/// go. Each function changes the routing table's state (returning its
/// changes, none for a kind the table is not made from) and feeds the
/// copier, if there is one.
struct Kind<K> {
    /// Its name in logs and in the listed set.
    name: &'static str,
    /// The routing table is made from it: the first table waits for it.
    table: bool,
    apply: fn(&mut ClusterState, Option<&Feed>, K) -> Vec<Change>,
    delete: fn(&mut ClusterState, Option<&Feed>, K) -> Vec<Change>,
    relisted: fn(&mut ClusterState, Option<&Feed>, Vec<K>) -> Vec<Change>,
}

const SHARED_NAMESPACES: Kind<Namespace> = Kind {
    name: "namespaces",
    table: true,
    apply: |state, copies, o| {
        feed(copies, |s| s.apply_namespace(&o));
        state.apply_namespace(&o)
    },
    delete: |state, copies, o| {
        let name = o.metadata.name.as_deref().unwrap_or_default();
        feed(copies, |s| s.delete_namespace(name));
        state.delete_namespace(name)
    },
    relisted: |state, copies, all| {
        feed(copies, |s| s.replace_namespaces(&all));
        state.resync_namespaces(&all)
    },
};

/// Injected namespaces, for the key cookie their annotation allows (a
/// shared namespace's pods run proxies only where it is labelled).
const INJECTED_NAMESPACES: Kind<Namespace> = Kind {
    name: "injected namespaces",
    table: true,
    apply: |state, _, o| state.apply_injected_namespace(&o),
    delete: |state, _, o| {
        let name = o.metadata.name.as_deref().unwrap_or_default();
        state.delete_injected_namespace(name)
    },
    relisted: |state, _, all| state.resync_injected_namespaces(&all),
};

const SERVICES: Kind<Service> = Kind {
    name: "services",
    table: true,
    apply: |state, copies, o| {
        let changes = state.apply_service(&o);
        feed(copies, |s| sources::apply(s.services(), o));
        changes
    },
    delete: |state, copies, o| {
        let (namespace, name) = names(&o.metadata);
        feed(copies, |s| sources::delete(s.services(), namespace, name));
        state.delete_service(namespace, name)
    },
    relisted: |state, copies, all| {
        let changes = state.resync_services(&all);
        feed(copies, |s| sources::replace(s.services(), all));
        changes
    },
};

const SLICES: Kind<EndpointSlice> = Kind {
    name: "endpointslices",
    table: true,
    apply: |state, copies, o| {
        let changes = state.apply_slice(&o);
        feed(copies, |s| sources::apply(s.slices(), o));
        changes
    },
    delete: |state, copies, o| {
        let (namespace, name) = names(&o.metadata);
        feed(copies, |s| sources::delete(s.slices(), namespace, name));
        state.delete_slice(namespace, name)
    },
    relisted: |state, copies, all| {
        let changes = state.resync_slices(&all);
        feed(copies, |s| sources::replace(s.slices(), all));
        changes
    },
};

const INGRESSES: Kind<Ingress> = Kind {
    name: "ingresses",
    table: true,
    apply: |state, copies, o| {
        let changes = state.apply_ingress(&o);
        feed(copies, |s| sources::apply(s.ingresses(), o));
        changes
    },
    delete: |state, copies, o| {
        let (namespace, name) = names(&o.metadata);
        feed(copies, |s| sources::delete(s.ingresses(), namespace, name));
        state.delete_ingress(namespace, name)
    },
    relisted: |state, copies, all| {
        let changes = state.resync_ingresses(&all);
        feed(copies, |s| sources::replace(s.ingresses(), all));
        changes
    },
};

/// Every namespace, for the opt-in requests and expiry.
const EVERY_NAMESPACE: Kind<Namespace> = Kind {
    name: "every namespace",
    table: false,
    apply: |_, copies, o| {
        feed(copies, |s| s.apply_any_namespace(&o));
        Vec::new()
    },
    delete: |_, copies, o| {
        let name = o.metadata.name.as_deref().unwrap_or_default();
        feed(copies, |s| s.delete_any_namespace(name));
        Vec::new()
    },
    relisted: |_, copies, all| {
        feed(copies, |s| s.replace_any_namespaces(&all));
        Vec::new()
    },
};

/// The labelled ConfigMaps: opt-in requests.
const REQUESTS: Kind<ConfigMap> = Kind {
    name: "opt-in configmaps",
    table: false,
    apply: |_, copies, o| {
        feed(copies, |s| s.apply_request(&o));
        Vec::new()
    },
    delete: |_, copies, o| {
        let (namespace, name) = names(&o.metadata);
        feed(copies, |s| s.delete_request(namespace, name));
        Vec::new()
    },
    relisted: |_, copies, all| {
        feed(copies, |s| s.replace_requests(&all));
        Vec::new()
    },
};

/// HTTPRoutes change nothing in the table: only the copier reads them.
const ROUTES: Kind<DynamicObject> = Kind {
    name: "httproutes",
    table: false,
    apply: |_, copies, o| {
        feed(copies, |s| sources::apply(s.routes(), o));
        Vec::new()
    },
    delete: |_, copies, o| {
        let (namespace, name) = names(&o.metadata);
        feed(copies, |s| sources::delete(s.routes(), namespace, name));
        Vec::new()
    },
    relisted: |_, copies, all| {
        feed(copies, |s| sources::replace(s.routes(), all));
        Vec::new()
    },
};

/// VirtualServices (the istio driver on): only the copier reads them.
const VIRTUAL_SERVICES: Kind<DynamicObject> = Kind {
    name: "virtualservices",
    table: false,
    apply: |_, copies, o| {
        feed(copies, |s| {
            if let Some(v) = s.virtual_services() {
                sources::apply(v, o);
            }
        });
        Vec::new()
    },
    delete: |_, copies, o| {
        let (namespace, name) = names(&o.metadata);
        feed(copies, |s| {
            if let Some(v) = s.virtual_services() {
                sources::delete(v, namespace, name);
            }
        });
        Vec::new()
    },
    relisted: |_, copies, all| {
        feed(copies, |s| {
            if let Some(v) = s.virtual_services() {
                sources::replace(v, all);
            }
        });
        Vec::new()
    },
};

/// What an event does to the table's state and the copier's sources.
type Apply = Box<dyn FnOnce(&mut ClusterState, Option<&Feed>) -> Vec<Change> + Send>;

/// An event of some kind, ready for the one loop.
struct Applied {
    kind: &'static str,
    table: bool,
    /// A complete list of the kind came: it is listed.
    relisted: bool,
    apply: Apply,
}

impl<K: Send + 'static> Kind<K> {
    /// What `step` of a watch of this kind does.
    fn applied(&'static self, step: Step<K>) -> Option<Applied> {
        let (relisted, apply): (bool, Apply) = match step {
            Step::Nothing => return None,
            Step::Apply(o) => (false, Box::new(move |st, c| (self.apply)(st, c, o))),
            Step::Delete(o) => (false, Box::new(move |st, c| (self.delete)(st, c, o))),
            Step::Relisted(all) => (true, Box::new(move |st, c| (self.relisted)(st, c, all))),
        };
        Some(Applied {
            kind: self.name,
            table: self.table,
            relisted,
            apply,
        })
    }
}

/// The watch of one kind, in all namespaces (only objects with `label`,
/// if given), with kube's default backoff; errors are logged here.
fn watch<K>(
    client: &Client,
    kind: &'static Kind<K>,
    label: Option<&str>,
) -> BoxStream<'static, Applied>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let config = match label {
        Some(l) => watcher::Config::default().labels(l),
        None => watcher::Config::default(),
    };
    let mut relist = Relist::default();
    watcher::watcher(Api::<K>::all(client.clone()), config)
        .default_backoff()
        .filter_map(move |ev| {
            let ev = match ev {
                Ok(ev) => Some(ev),
                Err(error) => {
                    tracing::warn!(
                        kind = kind.name,
                        %error,
                        "watch failed; retrying with backoff (the controller needs list and \
                         watch on namespaces, services, configmaps, discovery.k8s.io \
                         endpointslices and networking.k8s.io ingresses)"
                    );
                    None
                }
            };
            std::future::ready(kind.applied(relist.step(ev)))
        })
        .boxed()
}

/// The watch of every object of a kind the copier reads that has no type
/// in `k8s-openapi`: HTTPRoutes, and Istio's VirtualServices. A cluster
/// without the kind's CRD answers 404, which is no objects (said once, and
/// taken as an empty list); the watch keeps retrying with backoff, so
/// installing the CRD later is picked up.
fn watch_dynamic(
    client: Client,
    kind: &'static Kind<DynamicObject>,
    resource: ApiResource,
    absent: Absent,
) -> BoxStream<'static, Applied> {
    let api = Api::<DynamicObject>::all_with(client, &resource);
    let mut said = false;
    let mut relist = Relist::default();
    let group = resource.group.clone();
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |ev| {
            let step = match ev {
                Ok(ev) => relist.step(Some(ev)),
                // A group the API server does not serve answers a plain
                // "404 page not found", not a Status with reason NotFound.
                Err(watcher::Error::InitialListFailed(kube::Error::Api(s))) if s.code == 404 => {
                    if !said {
                        said = true;
                        match absent {
                            Absent::Expected(why) => tracing::info!("{why}"),
                            Absent::Wanted(why, _) => tracing::warn!("{why}"),
                        }
                    }
                    let applied = kind.applied(Step::Relisted(Vec::new()));
                    return std::future::ready(match (applied, absent) {
                        // Listed as empty, then marked as missing.
                        (Some(a), Absent::Wanted(_, mark)) => Some(Applied {
                            apply: Box::new(move |st, c| {
                                let changes = (a.apply)(st, c);
                                feed(c, mark);
                                changes
                            }),
                            ..a
                        }),
                        (applied, _) => applied,
                    });
                }
                Err(error) => {
                    tracing::warn!(
                        %error,
                        kind = kind.name,
                        "watch failed; retrying with backoff (the controller needs list and \
                         watch on {group} {})",
                        kind.name
                    );
                    Step::Nothing
                }
            };
            std::future::ready(kind.applied(step))
        })
        .boxed()
}

/// What a cluster without a kind's CRD means.
#[derive(Clone, Copy)]
enum Absent {
    /// A cluster may well not have it (said at info).
    Expected(&'static str),
    /// The controller was told to use it (said as a warning, and recorded
    /// in the sources by the function, for `divert check`).
    Wanted(&'static str, fn(&mut Sources)),
}

/// The buffer of one watch's relist.
struct Relist<K> {
    page: Option<Vec<K>>,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Self { page: None }
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
            Some(Event::InitDone) => Step::Relisted(self.page.take().unwrap_or_default()),
        }
    }
}

/// Feeds the copier, if there is one.
fn feed(copies: Option<&Feed>, f: impl FnOnce(&mut Sources)) {
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
        assert!(matches!(r.step(Some(Event::InitDone)), Step::Relisted(v) if v == [2, 3]));
        assert!(matches!(r.step(Some(Event::Delete(2))), Step::Delete(2)));
        // A restart that lists nothing: everything is gone.
        assert!(matches!(r.step(Some(Event::Init)), Step::Nothing));
        assert!(matches!(r.step(Some(Event::InitDone)), Step::Relisted(v) if v.is_empty()));
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
