//! The namespaces of a deploy: the checks of the shared namespace the
//! manifest names (each of the documentation's common mistakes gets its own
//! message), and opting the divert namespace in and out with the label
//! `divert.dev/shared-namespace`.

use std::time::Duration;

use divert_core::names::annotation::{DEBUG, EXPIRES_AT};
use divert_core::names::label::{INJECT, SHARED_NAMESPACE};
use divert_core::names::object::{CA, NAMESPACE as CONTROLLER_NAMESPACE, OPT_IN};
use divert_inject::SkipReason;
use divert_inject::meshes;
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::install::DRIVER_KEY;
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
        "driver istio: this cluster's Divert was installed without the istio driver, so nothing \
         writes Istio's routes. Remove driver from the manifest's divert section (or set driver: \
         divert) to route with Divert's own proxies, or ask an admin to run divert install \
         --driver istio | kubectl apply -f -"
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
    #[error("the controller did not opt the namespace in: {message}")]
    NotGranted { message: String },
    #[error(
        "no answer from the controller to the ConfigMap {OPT_IN} in {0} within {1:?}: is it \
         running? (kubectl -n {0} get events, divert check)"
    )]
    NoAnswer(String, Duration),
}

/// The field manager of `divert deploy`'s own writes.
const FIELD_MANAGER: &str = "divert-deploy";

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
        Driver::Istio => match installed_driver(client).await? {
            Driver::Istio => Some(
                "driver istio: the controller writes Istio's VirtualServices for the services \
                 this namespace runs"
                    .to_owned(),
            ),
            Driver::Divert | Driver::Nginx => return Err(NamespaceError::Istio),
        },
    };
    let shared = &divert.namespace;
    if shared == namespace {
        return Err(NamespaceError::Same(namespace.to_owned()));
    }
    let ns = match Api::<Namespace>::all(client.clone()).get_opt(shared).await {
        Ok(ns) => ns.ok_or_else(|| NamespaceError::SharedMissing {
            shared: shared.clone(),
        })?,
        // A developer who may only edit their own namespace cannot read
        // others: the controller checks the shared namespace when it takes
        // the request, and its answer says what is wrong.
        Err(kube::Error::Api(s)) if s.is_forbidden() => {
            let rights = format!(
                "cannot read namespace {shared} with your rights: the controller checks it"
            );
            return Ok(Some(match note {
                Some(n) => format!("{n}; {rights}"),
                None => rights,
            }));
        }
        Err(e) => return Err(api_err(format!("read namespace {shared}"))(e)),
    };
    if let Some(theirs) = label(&ns, SHARED_NAMESPACE) {
        return Err(NamespaceError::SharedIsDivert {
            shared: shared.clone(),
            theirs: theirs.to_owned(),
        });
    }
    let istio_injects = divert.driver == Driver::Istio
        && meshes::injecting(
            &Pod::default(),
            &meshes::MeshSwitches::of(
                ns.metadata.labels.as_ref(),
                ns.metadata.annotations.as_ref(),
            ),
        ) == Some(SkipReason::Istio);
    if label(&ns, INJECT) != Some("enabled") && !istio_injects {
        return Err(NamespaceError::SharedNotInjected {
            shared: shared.clone(),
        });
    }
    Ok(note)
}

/// The driver `divert install` was run with, from the controller's public
/// ConfigMap; an install that does not say is older than the istio driver.
pub(super) async fn installed_driver(client: &kube::Client) -> Result<Driver, NamespaceError> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), CONTROLLER_NAMESPACE)
        .get_opt(CA)
        .await
        .map_err(api_err(format!(
            "read ConfigMap {CONTROLLER_NAMESPACE}/{CA} (is Divert installed?)"
        )))?;
    let said = cm
        .as_ref()
        .and_then(|cm| cm.data.as_ref()?.get(DRIVER_KEY))
        .and_then(|d| Driver::parse_installed(d).ok());
    Ok(said.unwrap_or(Driver::Divert))
}

/// The annotations a deploy writes on the divert namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Marks<'a> {
    /// [`EXPIRES_AT`], from `--ttl`; kept as it is when `None`.
    pub expires_at: Option<&'a str>,
    /// [`DEBUG`], from the manifest's `debug`: set when true, removed when
    /// false.
    pub debug: bool,
}

impl Marks<'_> {
    /// As a JSON merge patch of the namespace's annotations.
    fn annotations(&self) -> serde_json::Value {
        let mut a = serde_json::Map::new();
        if let Some(t) = self.expires_at {
            a.insert(EXPIRES_AT.to_owned(), json!(t));
        }
        a.insert(
            DEBUG.to_owned(),
            if self.debug {
                json!("true")
            } else {
                json!(null)
            },
        );
        serde_json::Value::Object(a)
    }

    /// Whether `ns` carries them already.
    fn current(&self, ns: &Namespace) -> bool {
        let get = |k: &str| ns.metadata.annotations.as_ref()?.get(k).map(String::as_str);
        self.expires_at.is_none_or(|t| get(EXPIRES_AT) == Some(t))
            && (get(DEBUG) == Some("true")) == self.debug
    }
}

/// How the namespace came to divert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptIn {
    Created,
    Labelled,
    Already,
    /// Asked for with the ConfigMap [`OPT_IN`] (no right to label
    /// namespaces), and granted by the controller.
    Requested,
}

/// Makes `ns` a divert namespace of `shared`: creates it with the label, or
/// labels it; with `expires_at`, (re)sets its end ([`EXPIRES_AT`]). Without
/// the right to read or label namespaces, asks the controller with the
/// ConfigMap [`OPT_IN`] and waits up to `wait` for its answer.
pub async fn opt_in(
    client: &kube::Client,
    ns: &str,
    shared: &str,
    marks: &Marks<'_>,
    wait: Duration,
) -> Result<OptIn, NamespaceError> {
    let annotations = marks.annotations();
    let api = Api::<Namespace>::all(client.clone());
    let forbidden = |action| NamespaceError::Forbidden {
        action,
        ns: ns.to_owned(),
        shared: shared.to_owned(),
    };
    let existing = match api.get_opt(ns).await {
        Ok(existing) => existing,
        Err(kube::Error::Api(s)) if s.is_forbidden() => {
            return request(client, ns, shared, marks, wait).await;
        }
        Err(e) => return Err(api_err(format!("read namespace {ns}"))(e)),
    };
    let Some(existing) = existing else {
        let new: Namespace = serde_json::from_value(json!({
            "metadata": {"name": ns, "labels": {SHARED_NAMESPACE: shared},
                "annotations": annotations}
        }))
        .map_err(|e| api_err("make the namespace")(kube::Error::SerdeError(e)))?;
        return match api.create(&PostParams::default(), &new).await {
            Ok(_) => Ok(OptIn::Created),
            Err(kube::Error::Api(s)) if s.is_forbidden() => Err(forbidden("create")),
            Err(e) => Err(api_err(format!("create namespace {ns}"))(e)),
        };
    };
    let (patch, done) = match label(&existing, SHARED_NAMESPACE) {
        Some(s) if s == shared && marks.current(&existing) => return Ok(OptIn::Already),
        Some(s) if s == shared => (
            json!({"metadata": {"annotations": annotations}}),
            OptIn::Already,
        ),
        Some(theirs) => {
            return Err(NamespaceError::DivertsElsewhere {
                ns: ns.to_owned(),
                theirs: theirs.to_owned(),
                shared: shared.to_owned(),
            });
        }
        None => (
            json!({"metadata": {"labels": {SHARED_NAMESPACE: shared},
                "annotations": annotations}}),
            OptIn::Labelled,
        ),
    };
    match api
        .patch(ns, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(done),
        // May see the namespace but not label it: ask the controller.
        Err(kube::Error::Api(s)) if s.is_forbidden() => {
            request(client, ns, shared, marks, wait).await
        }
        Err(e) => Err(api_err(format!("label namespace {ns}"))(e)),
    }
}

/// Asks the controller to opt `ns` in (the ConfigMap [`OPT_IN`], applied),
/// and waits up to `wait` for its answer to this very request: the Event on
/// the ConfigMap that names its version.
async fn request(
    client: &kube::Client,
    ns: &str,
    shared: &str,
    marks: &Marks<'_>,
    wait: Duration,
) -> Result<OptIn, NamespaceError> {
    // Server-side apply: annotations left out are removed.
    let mut annotations = serde_json::Map::new();
    if let Some(t) = marks.expires_at {
        annotations.insert(EXPIRES_AT.to_owned(), json!(t));
    }
    if marks.debug {
        annotations.insert(DEBUG.to_owned(), json!("true"));
    }
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": OPT_IN, "namespace": ns, "labels": {SHARED_NAMESPACE: shared},
            "annotations": annotations},
    });
    let applied = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(
            OPT_IN,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(cm),
        )
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.is_forbidden() => NamespaceError::Forbidden {
                action: "make the ConfigMap divert in",
                ns: ns.to_owned(),
                shared: shared.to_owned(),
            },
            e => api_err(format!("apply ConfigMap {ns}/{OPT_IN}"))(e),
        })?;
    let version = applied.metadata.resource_version.unwrap_or_default();
    let mark = divert_controller::optin::answer_to(&version);
    let events = Api::<CoreEvent>::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!(
        "involvedObject.kind=ConfigMap,involvedObject.name={OPT_IN}"
    ));
    let deadline = std::time::Instant::now() + wait;
    loop {
        let list = events
            .list(&lp)
            .await
            .map_err(api_err(format!("read the events of {ns}")))?;
        let answer = list
            .items
            .iter()
            .find(|e| e.message.as_deref().is_some_and(|m| m.ends_with(&mark)));
        if let Some(e) = answer {
            let message = e.message.as_deref().unwrap_or_default();
            let message = message.trim_end_matches(&mark).trim_end().to_owned();
            return if e.reason.as_deref() == Some(divert_controller::optin::REASON_DIVERTING) {
                Ok(OptIn::Requested)
            } else {
                Err(NamespaceError::NotGranted { message })
            };
        }
        if std::time::Instant::now() >= deadline {
            return Err(NamespaceError::NoAnswer(ns.to_owned(), wait));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Stops `ns` diverting from `shared`: removes the label if it names
/// `shared`, or, without the right to, deletes the ConfigMap [`OPT_IN`] so
/// that the controller removes the label it set; whether it did either.
pub async fn opt_out(
    client: &kube::Client,
    ns: &str,
    shared: &str,
) -> Result<bool, NamespaceError> {
    let api = Api::<Namespace>::all(client.clone());
    let existing = match api.get_opt(ns).await {
        Ok(existing) => existing,
        Err(kube::Error::Api(s)) if s.is_forbidden() => return withdraw(client, ns).await,
        Err(e) => return Err(api_err(format!("read namespace {ns}"))(e)),
    };
    let Some(existing) = existing else {
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
        Err(kube::Error::Api(s)) if s.is_forbidden() => withdraw(client, ns).await,
        Err(e) => Err(api_err(format!("unlabel namespace {ns}"))(e)),
    }
}

/// Deletes the ConfigMap [`OPT_IN`] of `ns`; whether there was one.
async fn withdraw(client: &kube::Client, ns: &str) -> Result<bool, NamespaceError> {
    match Api::<ConfigMap>::namespaced(client.clone(), ns)
        .delete(OPT_IN, &Default::default())
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(false),
        Err(e) => Err(api_err(format!("delete ConfigMap {ns}/{OPT_IN}"))(e)),
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
