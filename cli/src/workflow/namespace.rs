//! The namespaces of a deploy: the checks of the shared namespace the
//! manifest names (each of the documentation's common mistakes gets its own
//! message), and opting the divert namespace in and out with the label
//! `divert.dev/shared-namespace`.

use std::time::Duration;

use divert_core::names::annotation::EXPIRES_AT;
use divert_core::names::label::{INJECT, SHARED_NAMESPACE};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::manifest::{Divert, Driver};

/// Why a namespace step failed.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error(
        "the shared namespace {shared} does not exist: divert.namespace in the manifest must name \
         your shared environment exactly (kubectl get namespaces), or set \
         OKTETO_SHARED_NAMESPACE (--var OKTETO_SHARED_NAMESPACE=NAME) if the manifest uses it"
    )]
    SharedMissing { shared: String },
    #[error(
        "the shared namespace {shared} is not set up for Divert: its pods have no proxy, so \
         nothing routes by the key. An admin runs kubectl label namespace {shared} \
         {INJECT}=enabled and restarts its workloads (kubectl -n {shared} rollout restart \
         deployment)"
    )]
    SharedNotInjected { shared: String },
    #[error(
        "{shared} is itself a divert namespace (of {theirs}): divert.namespace must name the \
         shared environment, {theirs} perhaps"
    )]
    SharedIsDivert { shared: String, theirs: String },
    #[error(
        "driver istio is not supported yet: Divert routes with its own proxies, which need no \
         Istio. Remove driver from the manifest's divert section (or set driver: divert) to use \
         them, or keep using Okteto's Istio driver"
    )]
    Istio,
    #[error("{0} is the shared namespace itself: deploy into a namespace of your own (-n NAME)")]
    Same(String),
    #[error(
        "{ns} already diverts from {theirs}, not from {shared} as the manifest says: fix \
         divert.namespace, or move it with kubectl label namespace {ns} \
         {SHARED_NAMESPACE}={shared} --overwrite"
    )]
    DivertsElsewhere {
        ns: String,
        theirs: String,
        shared: String,
    },
    #[error(
        "not allowed to {action} namespace {ns}: ask an admin to run kubectl create namespace \
         {ns} (if needed) and kubectl label namespace {ns} {SHARED_NAMESPACE}={shared}"
    )]
    Forbidden {
        action: &'static str,
        ns: String,
        shared: String,
    },
    #[error("cannot {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("namespace {0} is still there after {1:?}: see kubectl get namespace {0} -o yaml")]
    NotGone(String, Duration),
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> NamespaceError {
    let what = what.into();
    move |source| NamespaceError::Api { what, source }
}

fn label<'a>(ns: &'a Namespace, key: &str) -> Option<&'a str> {
    ns.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// Checks the manifest's driver and shared namespace; a note to show, if
/// any.
pub async fn check_shared(
    client: &kube::Client,
    divert: &Divert,
    namespace: &str,
) -> Result<Option<String>, NamespaceError> {
    let note = match divert.driver {
        Driver::Divert => None,
        Driver::Nginx => Some(
            "driver nginx: Divert does the work of Okteto's nginx driver and Linkerd with its \
             own proxies; nothing else is needed"
                .to_owned(),
        ),
        Driver::Istio => return Err(NamespaceError::Istio),
    };
    let shared = &divert.namespace;
    if shared == namespace {
        return Err(NamespaceError::Same(namespace.to_owned()));
    }
    let ns = Api::<Namespace>::all(client.clone())
        .get_opt(shared)
        .await
        .map_err(api_err(format!("read namespace {shared}")))?
        .ok_or_else(|| NamespaceError::SharedMissing {
            shared: shared.clone(),
        })?;
    if let Some(theirs) = label(&ns, SHARED_NAMESPACE) {
        return Err(NamespaceError::SharedIsDivert {
            shared: shared.clone(),
            theirs: theirs.to_owned(),
        });
    }
    if label(&ns, INJECT) != Some("enabled") {
        return Err(NamespaceError::SharedNotInjected {
            shared: shared.clone(),
        });
    }
    Ok(note)
}

/// How the namespace came to divert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptIn {
    Created,
    Labelled,
    Already,
}

/// Makes `ns` a divert namespace of `shared`: creates it with the label, or
/// labels it; with `expires_at`, (re)sets its end ([`EXPIRES_AT`]).
pub async fn opt_in(
    client: &kube::Client,
    ns: &str,
    shared: &str,
    expires_at: Option<&str>,
) -> Result<OptIn, NamespaceError> {
    let annotations = match expires_at {
        Some(t) => json!({ EXPIRES_AT: t }),
        None => json!({}),
    };
    let api = Api::<Namespace>::all(client.clone());
    let forbidden = |action| NamespaceError::Forbidden {
        action,
        ns: ns.to_owned(),
        shared: shared.to_owned(),
    };
    match api
        .get_opt(ns)
        .await
        .map_err(api_err(format!("read namespace {ns}")))?
    {
        None => {
            let new: Namespace = serde_json::from_value(json!({
                "metadata": {"name": ns, "labels": {SHARED_NAMESPACE: shared},
                    "annotations": annotations}
            }))
            .map_err(|e| api_err("make the namespace")(kube::Error::SerdeError(e)))?;
            match api.create(&PostParams::default(), &new).await {
                Ok(_) => Ok(OptIn::Created),
                Err(kube::Error::Api(s)) if s.is_forbidden() => Err(forbidden("create")),
                Err(e) => Err(api_err(format!("create namespace {ns}"))(e)),
            }
        }
        Some(existing) => match label(&existing, SHARED_NAMESPACE) {
            Some(s) if s == shared && expires_at.is_none() => Ok(OptIn::Already),
            Some(s) if s == shared => {
                let patch = json!({"metadata": {"annotations": annotations}});
                match api
                    .patch(ns, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(_) => Ok(OptIn::Already),
                    Err(kube::Error::Api(s)) if s.is_forbidden() => Err(forbidden("annotate")),
                    Err(e) => Err(api_err(format!("annotate namespace {ns}"))(e)),
                }
            }
            Some(theirs) => Err(NamespaceError::DivertsElsewhere {
                ns: ns.to_owned(),
                theirs: theirs.to_owned(),
                shared: shared.to_owned(),
            }),
            None => {
                let patch = json!({"metadata": {"labels": {SHARED_NAMESPACE: shared},
                    "annotations": annotations}});
                match api
                    .patch(ns, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(_) => Ok(OptIn::Labelled),
                    Err(kube::Error::Api(s)) if s.is_forbidden() => Err(forbidden("label")),
                    Err(e) => Err(api_err(format!("label namespace {ns}"))(e)),
                }
            }
        },
    }
}

/// Stops `ns` diverting from `shared` (removes the label if it names
/// `shared`); whether it did.
pub async fn opt_out(
    client: &kube::Client,
    ns: &str,
    shared: &str,
) -> Result<bool, NamespaceError> {
    let api = Api::<Namespace>::all(client.clone());
    let Some(existing) = api
        .get_opt(ns)
        .await
        .map_err(api_err(format!("read namespace {ns}")))?
    else {
        return Ok(false);
    };
    if label(&existing, SHARED_NAMESPACE) != Some(shared) {
        return Ok(false);
    }
    let patch = json!({"metadata": {"labels": {SHARED_NAMESPACE: null}}});
    match api
        .patch(ns, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_forbidden() => Err(NamespaceError::Forbidden {
            action: "unlabel",
            ns: ns.to_owned(),
            shared: shared.to_owned(),
        }),
        Err(e) => Err(api_err(format!("unlabel namespace {ns}"))(e)),
    }
}

/// Deletes `ns` and waits up to `limit` until it is gone.
pub async fn delete(
    client: &kube::Client,
    ns: &str,
    limit: Duration,
) -> Result<(), NamespaceError> {
    let api = Api::<Namespace>::all(client.clone());
    match api.delete(ns, &Default::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(()),
        Err(e) => return Err(api_err(format!("delete namespace {ns}"))(e)),
    }
    let deadline = std::time::Instant::now() + limit;
    while api
        .get_opt(ns)
        .await
        .map_err(api_err(format!("read namespace {ns}")))?
        .is_some()
    {
        if std::time::Instant::now() >= deadline {
            return Err(NamespaceError::NotGone(ns.to_owned(), limit));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
