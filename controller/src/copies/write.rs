//! The writes of a [`Plan`](super::plan::Plan), each one request with a
//! time limit, and each safe against the user: a copy is created only where
//! no object of its name exists (the API server refuses otherwise), and
//! changed or deleted only at the version the controller saw as its own.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::plan::{Kind, Object, Op, http_route};
use divert_core::names::annotation::{CONTENT_HASH, COPIED_FROM};
use divert_core::names::label::MANAGED_BY;

/// The field manager of the controller's writes.
const FIELD_MANAGER: &str = "divert-controller";
/// How long one write may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The object changed or appeared meanwhile (409) or was gone (404):
    /// the watch brings the news, and the next round decides again.
    Raced,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Raced => "raced",
            Outcome::Failed => "failed",
        }
    }

    /// Whether the round should be tried again soon.
    pub fn retry(self) -> bool {
        self == Outcome::Failed
    }
}

/// Writes `op`: its name (`create`, `update`, `release`, `delete`) and how
/// it ended.
pub async fn write(client: &Client, op: &Op) -> (&'static str, Outcome) {
    let (name, kind, namespace, object_name) = match op {
        Op::Create(o) => ("create", o.kind(), ns(o), name(o)),
        Op::Update { object: o, .. } => ("update", o.kind(), ns(o), name(o)),
        Op::Release {
            namespace, name, ..
        } => ("release", Kind::Service, namespace.as_str(), name.as_str()),
        Op::Delete {
            kind,
            namespace,
            name,
            ..
        } => ("delete", *kind, namespace.as_str(), name.as_str()),
    };
    let result = tokio::time::timeout(TIMEOUT, send(client, op)).await;
    let outcome = match result {
        Ok(Ok(())) => Outcome::Done,
        Ok(Err(kube::Error::Api(s)))
            if s.is_conflict() || s.is_already_exists() || s.is_not_found() =>
        {
            tracing::debug!(
                kind = kind.as_str(),
                namespace,
                name = object_name,
                "preview copy {name}: {}",
                s.message
            );
            Outcome::Raced
        }
        Ok(Err(e)) => {
            let hint = match &e {
                kube::Error::Api(s) if s.is_forbidden() => {
                    "; the controller's ClusterRole needs create, update, patch and delete on \
                     ingresses, httproutes, services and endpointslices (divert install)"
                }
                _ => "",
            };
            tracing::warn!(kind = kind.as_str(), namespace, name = object_name, error = %e, "preview copy {name} failed{hint}; retrying");
            Outcome::Failed
        }
        Err(_) => {
            tracing::warn!(
                kind = kind.as_str(),
                namespace,
                name = object_name,
                "preview copy {name}: no answer within {TIMEOUT:?}; retrying"
            );
            Outcome::Failed
        }
    };
    if outcome == Outcome::Done {
        tracing::info!(
            kind = kind.as_str(),
            namespace,
            name = object_name,
            "preview copy: {name}d"
        );
    }
    (name, outcome)
}

fn ns(o: &Object) -> &str {
    namespace_of(o.meta())
}

fn name(o: &Object) -> &str {
    o.meta().name.as_deref().unwrap_or_default()
}

async fn send(client: &Client, op: &Op) -> Result<(), kube::Error> {
    match op {
        Op::Create(object) => match object {
            Object::Ingress(o) => create(typed::<Ingress>(client, o), o).await,
            Object::Service(o) => create(typed::<Service>(client, o), o).await,
            Object::EndpointSlice(o) => create(typed::<EndpointSlice>(client, o), o).await,
            Object::HttpRoute(o) | Object::VirtualService(o) => {
                create(dynamic(client, object.kind(), ns(object)), o).await
            }
        },
        Op::Update {
            object,
            resource_version,
        } => {
            let kind = object.kind();
            let mut object = object.clone();
            match &mut object {
                Object::Ingress(o) => {
                    o.metadata.resource_version = Some(resource_version.clone());
                    apply(typed::<Ingress>(client, o), o).await
                }
                Object::Service(o) => {
                    o.metadata.resource_version = Some(resource_version.clone());
                    apply(typed::<Service>(client, o), o).await
                }
                Object::EndpointSlice(o) => {
                    o.metadata.resource_version = Some(resource_version.clone());
                    apply(typed::<EndpointSlice>(client, o), o).await
                }
                Object::HttpRoute(o) | Object::VirtualService(o) => {
                    o.metadata.resource_version = Some(resource_version.clone());
                    apply(dynamic(client, kind, namespace_of(&o.metadata)), o).await
                }
            }
        }
        Op::Release {
            namespace,
            name,
            resource_version,
        } => {
            // A JSON merge patch: null removes a key; the resourceVersion
            // makes it apply only to the object as seen.
            let patch = serde_json::json!({"metadata": {
                "resourceVersion": resource_version,
                "labels": {MANAGED_BY: null},
                "annotations": {COPIED_FROM: null, CONTENT_HASH: null},
            }});
            Api::<Service>::namespaced(client.clone(), namespace)
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(drop)
        }
        Op::Delete {
            kind,
            namespace,
            name,
            resource_version,
        } => {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: Some(resource_version.clone()),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            match kind {
                Kind::Ingress => {
                    delete::<Ingress>(Api::namespaced(client.clone(), namespace), name, &params)
                        .await
                }
                Kind::Service => {
                    delete::<Service>(Api::namespaced(client.clone(), namespace), name, &params)
                        .await
                }
                Kind::EndpointSlice => {
                    delete::<EndpointSlice>(
                        Api::namespaced(client.clone(), namespace),
                        name,
                        &params,
                    )
                    .await
                }
                Kind::HttpRoute | Kind::VirtualService => {
                    delete(dynamic(client, *kind, namespace), name, &params).await
                }
            }
        }
    }
}

fn typed<K>(client: &Client, o: &K) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(
        client.clone(),
        o.meta().namespace.as_deref().unwrap_or_default(),
    )
}

/// The API of a kind without a type in `k8s-openapi` (HTTPRoute,
/// VirtualService), in `namespace`.
fn dynamic(client: &Client, kind: Kind, namespace: &str) -> Api<DynamicObject> {
    // Only the dynamic kinds come here.
    let resource = kind.dynamic().unwrap_or_else(http_route);
    Api::namespaced_with(client.clone(), namespace, &resource)
}

fn namespace_of(meta: &kube::api::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}

async fn create<K>(api: Api<K>, o: &K) -> Result<(), kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    api.create(&PostParams::default(), o).await.map(drop)
}

/// A server-side apply of the whole copy, forced (the object is the
/// controller's: its label says so at the version the body carries, which
/// the API server checks), so fields the copy no longer has are removed.
async fn apply<K>(api: Api<K>, o: &K) -> Result<(), kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = o.meta().name.clone().unwrap_or_default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(o)).await.map(drop)
}

async fn delete<K>(api: Api<K>, name: &str, params: &DeleteParams) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.delete(name, params).await.map(drop)
}
