//! What the copier reads: the divert namespaces, and every Ingress,
//! HTTPRoute, Service and EndpointSlice, fed from the controller's watches
//! (the same ones that build the routing table, so the API server serves
//! each kind once). Objects are kept without their `managedFields` and
//! `status`, the bookkeeping that the copies never read.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{DynamicObject, ObjectMeta};

use super::istio::IstioSources;
use crate::translate::{self, NamespaceRole};
use divert_core::names::annotation::{EXPIRES_AT, HOST_TEMPLATE};
use k8s_openapi::jiff::Timestamp;

/// `(namespace, name)`.
pub type Key = (String, String);

/// A divert namespace, as the copies need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divert {
    pub shared: String,
    /// Its [`HOST_TEMPLATE`] annotation.
    pub template: Option<String>,
    /// Its [`EXPIRES_AT`] annotation, if it holds a time.
    pub expires_at: Option<Timestamp>,
    /// The namespace's version, for writes that must not race the user.
    pub resource_version: Option<String>,
}

/// Every namespace by name, and the opt-in requests by namespace.
pub type OptIns<'a> = (
    &'a BTreeMap<String, Namespace>,
    &'a BTreeMap<String, crate::optin::Request>,
);

/// The objects of one kind, by `(namespace, name)`.
pub type Objects<K> = BTreeMap<Key, K>;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Sources {
    pub(super) divert: BTreeMap<String, Divert>,
    pub(super) ingresses: Objects<Ingress>,
    /// `None` until HTTPRoutes are listed (empty when the cluster has no
    /// Gateway API): until then no HTTPRoute copy is made or removed.
    pub(super) routes: Option<Objects<DynamicObject>>,
    pub(super) services: Objects<Service>,
    pub(super) slices: Objects<EndpointSlice>,
    /// The table's four watches are listed (set by the controller once).
    pub(super) listed: bool,
    /// Every namespace, labelled or not (for the opt-in requests), by name;
    /// `None` until listed.
    pub(super) all_namespaces: Option<BTreeMap<String, Namespace>>,
    /// The opt-in requests (ConfigMaps), by namespace; `None` until listed.
    pub(super) requests: Option<BTreeMap<String, crate::optin::Request>>,
    /// The istio driver's sources; `None` when the controller does not
    /// write Istio's routes.
    pub(super) istio: Option<IstioSources>,
}

/// An object the copier keeps: its metadata and what its kind holds.
pub trait Kept: Sized {
    fn meta(&self) -> &ObjectMeta;
    /// The object without what the copier never reads.
    fn slim(self) -> Self;
}

fn slim_meta(mut meta: ObjectMeta) -> ObjectMeta {
    meta.managed_fields = None;
    meta
}

impl Kept for Ingress {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn slim(self) -> Self {
        Ingress {
            metadata: slim_meta(self.metadata),
            spec: self.spec,
            status: None,
        }
    }
}

impl Kept for Service {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn slim(self) -> Self {
        Service {
            metadata: slim_meta(self.metadata),
            spec: self.spec,
            status: None,
        }
    }
}

impl Kept for EndpointSlice {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn slim(mut self) -> Self {
        self.metadata = slim_meta(self.metadata);
        self
    }
}

impl Kept for DynamicObject {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn slim(mut self) -> Self {
        self.metadata = slim_meta(self.metadata);
        if let Some(o) = self.data.as_object_mut() {
            o.remove("status");
        }
        self
    }
}

fn key(meta: &ObjectMeta) -> Option<Key> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

/// Adds or replaces `object`.
pub fn apply<K: Kept>(objects: &mut Objects<K>, object: K) {
    if let Some(k) = key(object.meta()) {
        objects.insert(k, object.slim());
    }
}

/// Removes the object `namespace/name`.
pub fn delete<K>(objects: &mut Objects<K>, namespace: &str, name: &str) {
    objects.remove(&(namespace.to_owned(), name.to_owned()));
}

/// Replaces every object with a fresh full list.
pub fn replace<K: Kept>(objects: &mut Objects<K>, all: Vec<K>) {
    objects.clear();
    for o in all {
        apply(objects, o);
    }
}

impl Sources {
    /// A namespace with the divert label was added or changed.
    pub fn apply_namespace(&mut self, ns: &Namespace) {
        let Some(name) = ns.metadata.name.clone() else {
            return;
        };
        match divert_of(ns) {
            Some(d) => self.divert.insert(name, d),
            None => self.divert.remove(&name),
        };
    }

    /// A namespace left the selection (deleted, or its label removed).
    pub fn delete_namespace(&mut self, name: &str) {
        self.divert.remove(name);
    }

    /// A fresh list of the labelled namespaces.
    pub fn replace_namespaces(&mut self, all: &[Namespace]) {
        self.divert = all
            .iter()
            .filter_map(|ns| Some((ns.metadata.name.clone()?, divert_of(ns)?)))
            .collect();
    }

    /// A namespace (any) was added or changed.
    pub fn apply_any_namespace(&mut self, ns: &Namespace) {
        if let Some(name) = &ns.metadata.name {
            let slim = Namespace {
                metadata: slim_meta(ns.metadata.clone()),
                ..Namespace::default()
            };
            self.all_namespaces
                .get_or_insert_default()
                .insert(name.clone(), slim);
        }
    }

    /// Namespace `name` (its metadata), once every namespace was listed.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.all_namespaces.as_ref()?.get(name)
    }

    /// A namespace (any) is gone.
    pub fn delete_any_namespace(&mut self, name: &str) {
        self.all_namespaces.get_or_insert_default().remove(name);
    }

    /// A fresh list of every namespace.
    pub fn replace_any_namespaces(&mut self, all: &[Namespace]) {
        self.all_namespaces = Some(BTreeMap::new());
        for ns in all {
            self.apply_any_namespace(ns);
        }
    }

    /// A labelled ConfigMap was added or changed: a request if it is one.
    pub fn apply_request(&mut self, cm: &k8s_openapi::api::core::v1::ConfigMap) {
        let requests = self.requests.get_or_insert_default();
        let namespace = cm.metadata.namespace.clone().unwrap_or_default();
        if cm.metadata.name.as_deref() != Some(divert_core::names::object::OPT_IN) {
            return;
        }
        match crate::optin::request(cm) {
            Some((ns, r)) => requests.insert(ns, r),
            None => requests.remove(&namespace),
        };
    }

    /// A labelled ConfigMap is gone (or lost its label).
    pub fn delete_request(&mut self, namespace: &str, name: &str) {
        if name == divert_core::names::object::OPT_IN {
            self.requests.get_or_insert_default().remove(namespace);
        }
    }

    /// A fresh list of the labelled ConfigMaps.
    pub fn replace_requests(&mut self, all: &[k8s_openapi::api::core::v1::ConfigMap]) {
        self.requests = Some(all.iter().filter_map(crate::optin::request).collect());
    }

    /// The namespaces and the opt-in requests, once both are listed.
    pub fn opt_ins(&self) -> Option<OptIns<'_>> {
        Some((self.all_namespaces.as_ref()?, self.requests.as_ref()?))
    }

    /// Whether the table's watches are all listed.
    pub fn is_listed(&self) -> bool {
        self.listed
    }

    /// The divert namespaces, by name.
    pub fn divert_namespaces(&self) -> &BTreeMap<String, Divert> {
        &self.divert
    }

    pub fn ingresses(&mut self) -> &mut Objects<Ingress> {
        &mut self.ingresses
    }

    pub fn services(&mut self) -> &mut Objects<Service> {
        &mut self.services
    }

    pub fn slices(&mut self) -> &mut Objects<EndpointSlice> {
        &mut self.slices
    }

    /// The HTTPRoutes; listed (as empty) on first use.
    pub fn routes(&mut self) -> &mut Objects<DynamicObject> {
        self.routes.get_or_insert_default()
    }

    /// Turns the istio driver on: Istio's routes are written for the
    /// cluster domain `domain`, once the VirtualServices are listed.
    pub fn enable_istio(&mut self, domain: &str) {
        self.istio = Some(IstioSources {
            domain: domain.to_owned(),
            virtual_services: None,
            missing: false,
        });
    }

    /// Whether the istio driver is on.
    pub fn istio_enabled(&self) -> bool {
        self.istio.is_some()
    }

    /// The VirtualServices, listed (as empty) on first use; `None` when the
    /// istio driver is off. Any list or event means the kind is served.
    pub fn virtual_services(&mut self) -> Option<&mut Objects<DynamicObject>> {
        let istio = self.istio.as_mut()?;
        istio.missing = false;
        Some(istio.virtual_services.get_or_insert_default())
    }

    /// The cluster serves no VirtualService kind (Istio's CRDs are not
    /// installed): the istio driver can write nothing.
    pub fn virtual_services_missing(&mut self) {
        if let Some(istio) = self.istio.as_mut() {
            istio.missing = true;
        }
    }

    /// The table's watches are all listed: copies may now be made and
    /// removed (before, a missing source could be one not listed yet).
    pub fn set_listed(&mut self) {
        self.listed = true;
    }
}

/// The namespace as a divert namespace, if it is one that can hold copies
/// (a namespace being deleted takes no new objects).
pub fn divert_of(ns: &Namespace) -> Option<Divert> {
    if ns.metadata.deletion_timestamp.is_some() {
        return None;
    }
    match translate::namespace(ns) {
        NamespaceRole::Divert(d) => {
            let annotation = |name: &str| ns.metadata.annotations.as_ref()?.get(name).cloned();
            let expires_at = annotation(EXPIRES_AT).and_then(|t| match t.parse() {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(namespace = d.name, value = t, error = %e, "{EXPIRES_AT} is not an RFC 3339 time: the namespace does not expire");
                    None
                }
            });
            Some(Divert {
                shared: d.shared_namespace,
                template: annotation(HOST_TEMPLATE),
                expires_at,
                resource_version: ns.metadata.resource_version.clone(),
            })
        }
        NamespaceRole::Shared | NamespaceRole::SharedWithCookie(_) | NamespaceRole::Skipped(_) => {
            None
        }
    }
}
