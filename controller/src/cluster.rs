//! The controller's view of the cluster: the Namespaces, Services and
//! EndpointSlices it has seen, and the routing table they translate to.
//!
//! [`ClusterState`] is fed one watch event at a time and answers with the
//! [`Change`]s that event causes: it recomputes only the namespace or service
//! the event touches, and compares the result with what it emitted last, so an
//! event that changes nothing the proxies see (a status update, a new
//! `resourceVersion`, an endpoint that stays unready) emits nothing.
//! [`ClusterState::resync`] and its per-kind variants take a fresh full list
//! (a watcher restart) and emit exactly the difference.
//!
//! It keeps slimmed copies of the objects (the fields translation reads, no
//! `managedFields` or annotations), so memory grows with the table, not with
//! the objects' bookkeeping.

use std::collections::{BTreeMap, BTreeSet};

use divert_proto::discovery::v1 as pb;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::copies::plan::SLICE_MANAGED_BY;
use crate::copies::sources::{Divert, divert_of};
use crate::hosts::PreviewHosts;
use crate::store::Change;
use crate::translate::{self, NamespaceRole, SERVICE_NAME_LABEL, Skip};

/// `(namespace, name)`.
type Key = (String, String);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// What each namespace that has the label is (shared ones are not kept).
    namespaces: BTreeMap<String, NamespaceRole>,
    /// Slimmed services by `(namespace, name)`.
    services: BTreeMap<Key, Service>,
    /// Slimmed slices by `(namespace, slice name)`.
    slices: BTreeMap<Key, EndpointSlice>,
    /// Slice names of each `(namespace, service name)`.
    slices_by_service: BTreeMap<Key, BTreeSet<String>>,
    /// The last translation of each service: emitted (`Ok`) or skipped.
    outcomes: BTreeMap<Key, Result<pb::Service, Skip>>,
    /// The Ingresses' hosts, the divert namespaces, and the preview host
    /// map last emitted.
    hosts: PreviewHosts,
    /// Shared namespaces (injected, without the label) that allow the key
    /// cookie: each is sent to the proxies as a namespace of its own.
    key_cookies: BTreeSet<String>,
}

impl ClusterState {
    pub fn new() -> Self {
        Self::default()
    }

    /// A namespace was added or changed.
    pub fn apply_namespace(&mut self, ns: &Namespace) -> Vec<Change> {
        let Some(name) = ns.metadata.name.clone() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        self.set_namespace(name, translate::namespace(ns), divert_of(ns), &mut out);
        self.recompute_hosts(&mut out);
        out
    }

    /// An injected namespace was added or changed: does it allow the key
    /// cookie? (A divert namespace's role comes from the labelled watch.)
    pub fn apply_injected_namespace(&mut self, ns: &Namespace) -> Vec<Change> {
        let Some(name) = ns.metadata.name.clone() else {
            return Vec::new();
        };
        let allows = matches!(translate::namespace(ns), NamespaceRole::SharedWithCookie(_));
        let mut out = Vec::new();
        self.set_key_cookie(name, allows, &mut out);
        out
    }

    /// An injected namespace is gone (or lost its label).
    pub fn delete_injected_namespace(&mut self, name: &str) -> Vec<Change> {
        let mut out = Vec::new();
        self.set_key_cookie(name.to_owned(), false, &mut out);
        out
    }

    /// Replaces the injected namespaces with a fresh full list and emits the
    /// difference.
    pub fn resync_injected_namespaces(&mut self, namespaces: &[Namespace]) -> Vec<Change> {
        let allowing: BTreeSet<String> = namespaces
            .iter()
            .filter(|ns| matches!(translate::namespace(ns), NamespaceRole::SharedWithCookie(_)))
            .filter_map(|ns| ns.metadata.name.clone())
            .collect();
        let mut out = Vec::new();
        let names: Vec<String> = self.key_cookies.union(&allowing).cloned().collect();
        for name in names {
            let allows = allowing.contains(&name);
            self.set_key_cookie(name, allows, &mut out);
        }
        out
    }

    /// Whether shared namespace `name` allows the key cookie, and the
    /// change proxies get if that changes what they are sent of it.
    fn set_key_cookie(&mut self, name: String, allows: bool, out: &mut Vec<Change>) {
        let before = self.sent_namespace(&name);
        if allows {
            self.key_cookies.insert(name.clone());
        } else {
            self.key_cookies.remove(&name);
        }
        self.emit_namespace(&name, before, out);
    }

    /// What proxies are sent of namespace `name`: a divert namespace, or a
    /// shared namespace that allows the key cookie.
    fn sent_namespace(&self, name: &str) -> Option<pb::Namespace> {
        match self.namespaces.get(name) {
            Some(role) => role.sent().cloned(),
            None => self.key_cookies.contains(name).then(|| pb::Namespace {
                name: name.to_owned(),
                key_cookie: true,
                ..pb::Namespace::default()
            }),
        }
    }

    /// The change for namespace `name`, if what proxies are sent of it is
    /// no longer `before`.
    fn emit_namespace(&self, name: &str, before: Option<pb::Namespace>, out: &mut Vec<Change>) {
        match (before, self.sent_namespace(name)) {
            (before, Some(now)) if before.as_ref() != Some(&now) => {
                out.push(Change::Namespace(now))
            }
            (Some(_), None) => out.push(Change::DeleteNamespace(name.to_owned())),
            _ => {}
        }
    }

    /// A namespace is gone.
    pub fn delete_namespace(&mut self, name: &str) -> Vec<Change> {
        let mut out = Vec::new();
        self.set_namespace(name.to_owned(), NamespaceRole::Shared, None, &mut out);
        self.recompute_hosts(&mut out);
        out
    }

    /// An Ingress was added or changed: its hosts may be preview hosts.
    pub fn apply_ingress(&mut self, ingress: &Ingress) -> Vec<Change> {
        let Some((namespace, name)) = key(&ingress.metadata) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if self.hosts.apply(&namespace, &name, ingress) {
            self.recompute_hosts(&mut out);
        }
        out
    }

    /// An Ingress is gone.
    pub fn delete_ingress(&mut self, namespace: &str, name: &str) -> Vec<Change> {
        let mut out = Vec::new();
        if self.hosts.delete(namespace, name) {
            self.recompute_hosts(&mut out);
        }
        out
    }

    /// Replaces all Ingresses with a fresh full list and emits the
    /// difference.
    pub fn resync_ingresses(&mut self, ingresses: &[Ingress]) -> Vec<Change> {
        let mut out = Vec::new();
        self.hosts.replace(ingresses);
        self.recompute_hosts(&mut out);
        out
    }

    /// A service was added or changed.
    pub fn apply_service(&mut self, svc: &Service) -> Vec<Change> {
        let Some(key) = key(&svc.metadata) else {
            return Vec::new();
        };
        self.services.insert(key.clone(), slim_service(svc));
        let mut out = Vec::new();
        self.recompute_service(&key, &mut out);
        out
    }

    /// A service is gone.
    pub fn delete_service(&mut self, namespace: &str, name: &str) -> Vec<Change> {
        let key = (namespace.to_owned(), name.to_owned());
        self.services.remove(&key);
        let mut out = Vec::new();
        self.recompute_service(&key, &mut out);
        out
    }

    /// An EndpointSlice was added or changed. Recomputes its service, and the
    /// service it belonged to before if its service-name label changed.
    pub fn apply_slice(&mut self, slice: &EndpointSlice) -> Vec<Change> {
        let Some(key) = key(&slice.metadata) else {
            return Vec::new();
        };
        let old = self.remove_slice(&key);
        let slim = slim_slice(slice);
        let new = translate::slice_service(&slim).map(|s| (key.0.clone(), s.to_owned()));
        if let Some(svc) = &new {
            self.slices_by_service
                .entry(svc.clone())
                .or_default()
                .insert(key.1.clone());
        }
        self.slices.insert(key, slim);
        let mut out = Vec::new();
        for svc in old
            .iter()
            .chain(new.iter().filter(|n| old.as_ref() != Some(*n)))
        {
            self.recompute_service(svc, &mut out);
        }
        out
    }

    /// An EndpointSlice is gone.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) -> Vec<Change> {
        let mut out = Vec::new();
        if let Some(svc) = self.remove_slice(&(namespace.to_owned(), name.to_owned())) {
            self.recompute_service(&svc, &mut out);
        }
        out
    }

    /// Replaces everything with a fresh full list of all three kinds (for
    /// example after a restart) and emits the difference to the last table.
    pub fn resync(
        &mut self,
        namespaces: &[Namespace],
        services: &[Service],
        slices: &[EndpointSlice],
    ) -> Vec<Change> {
        let mut out = Vec::new();
        self.replace_namespaces(namespaces, &mut out);
        self.replace_services(services);
        self.replace_slices(slices);
        self.recompute_all_services(&mut out);
        self.recompute_hosts(&mut out);
        out
    }

    /// Replaces all namespaces with a fresh full list (the namespace watcher
    /// restarted) and emits the difference.
    pub fn resync_namespaces(&mut self, namespaces: &[Namespace]) -> Vec<Change> {
        let mut out = Vec::new();
        self.replace_namespaces(namespaces, &mut out);
        self.recompute_hosts(&mut out);
        out
    }

    /// Replaces all services with a fresh full list and emits the difference.
    pub fn resync_services(&mut self, services: &[Service]) -> Vec<Change> {
        let mut out = Vec::new();
        self.replace_services(services);
        self.recompute_all_services(&mut out);
        out
    }

    /// Replaces all EndpointSlices with a fresh full list and emits the
    /// difference.
    pub fn resync_slices(&mut self, slices: &[EndpointSlice]) -> Vec<Change> {
        let mut out = Vec::new();
        self.replace_slices(slices);
        self.recompute_all_services(&mut out);
        out
    }

    /// The whole table as upserts (for a consumer that starts empty), in a
    /// stable order: namespaces, then services, each sorted by name, then
    /// the preview hosts if there are any.
    pub fn table(&self) -> Vec<Change> {
        let names: BTreeSet<&String> = self.namespaces.keys().chain(&self.key_cookies).collect();
        let namespaces = names
            .into_iter()
            .filter_map(|name| self.sent_namespace(name).map(Change::Namespace));
        let services = self
            .outcomes
            .values()
            .filter_map(|o| o.as_ref().ok().map(|s| Change::Service(s.clone())));
        let hosts = self.hosts.current();
        let hosts = (!hosts.is_empty()).then(|| Change::Hosts(hosts.to_vec()));
        namespaces.chain(services).chain(hosts).collect()
    }

    /// Emits the preview host map if a namespace or an Ingress changed it.
    fn recompute_hosts(&mut self, out: &mut Vec<Change>) {
        if let Some(map) = self.hosts.changed() {
            out.push(Change::Hosts(map));
        }
    }

    /// How many namespaces and services are skipped now, by reason (every
    /// reason, zeros included, in [`Skip::ALL`] order).
    pub fn skipped(&self) -> Vec<(Skip, usize)> {
        let mut counts: BTreeMap<Skip, usize> = Skip::ALL.iter().map(|s| (*s, 0)).collect();
        let skips = self
            .namespaces
            .values()
            .filter_map(|role| match role {
                NamespaceRole::Skipped(s) => Some(*s),
                _ => None,
            })
            .chain(
                self.outcomes
                    .values()
                    .filter_map(|o| o.as_ref().err().copied()),
            );
        for skip in skips {
            *counts.entry(skip).or_default() += 1;
        }
        Skip::ALL
            .iter()
            .map(|s| (*s, counts.get(s).copied().unwrap_or_default()))
            .collect()
    }

    /// `divert`: the namespace as its preview hosts are made from it.
    fn set_namespace(
        &mut self,
        name: String,
        role: NamespaceRole,
        divert: Option<Divert>,
        out: &mut Vec<Change>,
    ) {
        self.hosts.set_namespace(&name, divert);
        let before = self.sent_namespace(&name);
        let old = self.namespaces.remove(&name);
        if let NamespaceRole::Skipped(skip) = role
            && old != Some(NamespaceRole::Skipped(skip))
        {
            tracing::warn!(
                namespace = %name,
                reason = skip.as_str(),
                "namespace {name}: {skip}"
            );
        }
        // A labelled namespace is a divert one or a skipped one; the key
        // cookie of a shared one comes from the injected namespaces' watch.
        if matches!(role, NamespaceRole::Divert(_) | NamespaceRole::Skipped(_)) {
            self.namespaces.insert(name.clone(), role);
        }
        self.emit_namespace(&name, before, out);
    }

    fn replace_namespaces(&mut self, namespaces: &[Namespace], out: &mut Vec<Change>) {
        let fresh: BTreeMap<String, (NamespaceRole, Option<Divert>)> = namespaces
            .iter()
            .filter_map(|ns| {
                let role = (translate::namespace(ns), divert_of(ns));
                Some((ns.metadata.name.clone()?, role))
            })
            .collect();
        let gone: Vec<String> = self
            .namespaces
            .keys()
            .filter(|n| !fresh.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            self.set_namespace(name, NamespaceRole::Shared, None, out);
        }
        for (name, (role, divert)) in fresh {
            self.set_namespace(name, role, divert, out);
        }
    }

    fn replace_services(&mut self, services: &[Service]) {
        self.services = services
            .iter()
            .filter_map(|svc| Some((key(&svc.metadata)?, slim_service(svc))))
            .collect();
    }

    fn replace_slices(&mut self, slices: &[EndpointSlice]) {
        self.slices.clear();
        self.slices_by_service.clear();
        for slice in slices {
            let Some(key) = key(&slice.metadata) else {
                continue;
            };
            let slim = slim_slice(slice);
            if let Some(svc) = translate::slice_service(&slim) {
                self.slices_by_service
                    .entry((key.0.clone(), svc.to_owned()))
                    .or_default()
                    .insert(key.1.clone());
            }
            self.slices.insert(key, slim);
        }
    }

    /// Recomputes every known service, and drops those that are gone.
    fn recompute_all_services(&mut self, out: &mut Vec<Change>) {
        let keys: BTreeSet<Key> = self
            .services
            .keys()
            .chain(self.outcomes.keys())
            .cloned()
            .collect();
        for key in keys {
            self.recompute_service(&key, out);
        }
    }

    /// Removes a slice from the indexes; returns the service it belonged to.
    fn remove_slice(&mut self, key: &Key) -> Option<Key> {
        let old = self.slices.remove(key)?;
        let svc = (key.0.clone(), translate::slice_service(&old)?.to_owned());
        if let Some(names) = self.slices_by_service.get_mut(&svc) {
            names.remove(&key.1);
            if names.is_empty() {
                self.slices_by_service.remove(&svc);
            }
        }
        Some(svc)
    }

    fn recompute_service(&mut self, key: &Key, out: &mut Vec<Change>) {
        let new = self.services.get(key).map(|svc| {
            let names = self.slices_by_service.get(key);
            let slices = names
                .into_iter()
                .flatten()
                .filter_map(|slice| self.slices.get(&(key.0.clone(), slice.clone())));
            translate::service(svc, slices)
        });
        let old = match new {
            None => self.outcomes.remove(key),
            Some(new) => self.outcomes.insert(key.clone(), new),
        };
        let old_emitted = old.as_ref().and_then(|o| o.as_ref().ok());
        match self.outcomes.get(key) {
            Some(Ok(svc)) => {
                if old_emitted != Some(svc) {
                    out.push(Change::Service(svc.clone()));
                }
            }
            new => {
                if old_emitted.is_some() {
                    out.push(Change::DeleteService(pb::ServiceKey {
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                    }));
                }
                if let Some(Err(skip)) = new
                    && old.as_ref().and_then(|o| o.as_ref().err()) != Some(skip)
                {
                    let (namespace, name) = key;
                    if *skip == Skip::NoClusterIp {
                        tracing::warn!(%namespace, service = %name, reason = skip.as_str(), "service skipped: {skip}");
                    } else {
                        tracing::debug!(%namespace, service = %name, reason = skip.as_str(), "service skipped: {skip}");
                    }
                }
            }
        }
    }
}

fn key(meta: &ObjectMeta) -> Option<Key> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

/// The metadata translation reads: name, namespace, and the service-name label.
fn slim_meta(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        labels: meta.labels.as_ref().map(|labels| {
            labels
                .iter()
                .filter(|(k, _)| k.as_str() == SERVICE_NAME_LABEL || k.as_str() == SLICE_MANAGED_BY)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }),
        ..ObjectMeta::default()
    }
}

fn slim_service(svc: &Service) -> Service {
    Service {
        metadata: slim_meta(&svc.metadata),
        spec: svc.spec.clone(),
        status: None,
    }
}

fn slim_slice(slice: &EndpointSlice) -> EndpointSlice {
    EndpointSlice {
        metadata: slim_meta(&slice.metadata),
        address_type: slice.address_type.clone(),
        endpoints: slice
            .endpoints
            .iter()
            .map(|ep| Endpoint {
                addresses: ep.addresses.clone(),
                conditions: ep.conditions.clone(),
                ..Endpoint::default()
            })
            .collect(),
        ports: slice.ports.clone(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Namespace;

    use super::*;
    use crate::translate::tests::{
        expected_services, find, namespaces, port, services, slices, svc,
    };
    use divert_core::names::annotation::HOST_TEMPLATE;
    use divert_core::names::label::SHARED_NAMESPACE as SHARED_NAMESPACE_LABEL;

    fn ns_change(name: &str, shared: &str) -> Change {
        Change::Namespace(pb::Namespace {
            name: name.to_owned(),
            shared_namespace: shared.to_owned(),
            debug: false,
            key_cookie: false,
        })
    }

    fn delete_svc(namespace: &str, name: &str) -> Change {
        Change::DeleteService(pb::ServiceKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    fn slice<'a>(slices: &'a [EndpointSlice], name: &str) -> &'a EndpointSlice {
        slices
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap()
    }

    fn loaded() -> ClusterState {
        let mut state = ClusterState::new();
        state.resync(&namespaces(), &services(), &slices());
        state
    }

    fn full_table() -> Vec<Change> {
        let mut want = vec![ns_change("alice", "staging"), ns_change("bob", "staging")];
        want.extend(
            expected_services()
                .into_iter()
                .filter_map(|(_, _, r)| r.ok().map(Change::Service)),
        );
        want
    }

    #[test]
    fn resync_from_nothing_emits_the_whole_table() {
        let mut state = ClusterState::new();
        let changes = state.resync(&namespaces(), &services(), &slices());
        assert_eq!(changes, full_table());
        assert_eq!(state.table(), full_table());
        // The same lists again: nothing changed.
        assert_eq!(state.resync(&namespaces(), &services(), &slices()), vec![]);
        assert_eq!(state.resync_namespaces(&namespaces()), vec![]);
        assert_eq!(state.resync_services(&services()), vec![]);
        assert_eq!(state.resync_slices(&slices()), vec![]);
    }

    #[test]
    fn events_one_by_one_build_the_same_table() {
        let mut state = ClusterState::new();
        let mut all = Vec::new();
        for ns in namespaces() {
            all.extend(state.apply_namespace(&ns));
        }
        for s in slices() {
            all.extend(state.apply_slice(&s));
        }
        for s in services() {
            all.extend(state.apply_service(&s));
        }
        assert_eq!(state.table(), full_table());
        // Slices first, then services: each service came out once, whole.
        assert_eq!(all.len(), full_table().len());
    }

    #[test]
    fn skipped_counts_by_reason() {
        let mut state = loaded();
        let count = |state: &ClusterState, skip| {
            state
                .skipped()
                .into_iter()
                .find(|(s, _)| *s == skip)
                .map(|(_, n)| n)
        };
        assert_eq!(state.skipped().len(), Skip::ALL.len());
        assert_eq!(count(&state, Skip::ExternalName), Some(1));
        assert_eq!(count(&state, Skip::NoTcpPorts), Some(1));
        assert_eq!(count(&state, Skip::InvalidSharedNamespace), Some(0));

        let mut bob = find(&namespaces(), "", "bob").clone();
        bob.metadata
            .labels
            .get_or_insert_default()
            .insert(SHARED_NAMESPACE_LABEL.to_owned(), "bob".to_owned());
        assert_eq!(
            state.apply_namespace(&bob),
            vec![Change::DeleteNamespace("bob".to_owned())]
        );
        assert_eq!(count(&state, Skip::SharedNamespaceIsItself), Some(1));
        assert_eq!(state.delete_namespace("bob"), vec![]);
        assert_eq!(count(&state, Skip::SharedNamespaceIsItself), Some(0));

        assert_eq!(state.delete_service("staging", "payments"), vec![]);
        assert_eq!(count(&state, Skip::ExternalName), Some(0));
    }

    #[test]
    fn service_before_and_after_its_slices() {
        let services = services();
        let slices = slices();
        let frontend = find(&services, "staging", "frontend");
        let frontend_slice = slice(&slices, "frontend-kgdhg");
        let bare = svc(
            "staging",
            "frontend",
            &["10.96.12.10"],
            vec![port("", 80, &[])],
        );
        let full = svc(
            "staging",
            "frontend",
            &["10.96.12.10"],
            vec![port("", 80, &["10.244.1.12:8080"])],
        );

        // Service first: emitted with no endpoints, then the slice fills it.
        let mut state = ClusterState::new();
        assert_eq!(
            state.apply_service(frontend),
            vec![Change::Service(bare.clone())]
        );
        assert_eq!(
            state.apply_slice(frontend_slice),
            vec![Change::Service(full.clone())]
        );

        // Slice first: nothing until the service exists.
        let mut state = ClusterState::new();
        assert_eq!(state.apply_slice(frontend_slice), vec![]);
        assert_eq!(
            state.apply_service(frontend),
            vec![Change::Service(full.clone())]
        );

        // No-op events emit nothing: the same objects, a new resourceVersion,
        // an annotation, an unready endpoint that stays unready.
        assert_eq!(state.apply_service(frontend), vec![]);
        assert_eq!(state.apply_slice(frontend_slice), vec![]);
        let mut touched = frontend.clone();
        touched.metadata.resource_version = Some("99999".to_owned());
        touched
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("example.com/touched".to_owned(), "yes".to_owned());
        assert_eq!(state.apply_service(&touched), vec![]);
        let mut touched = frontend_slice.clone();
        touched.metadata.resource_version = Some("99999".to_owned());
        touched.endpoints[1].addresses = vec!["10.244.2.18".to_owned()];
        assert_eq!(state.apply_slice(&touched), vec![]);

        // An endpoint becomes ready.
        let mut ready = touched.clone();
        ready.endpoints[1].conditions.as_mut().unwrap().ready = Some(true);
        assert_eq!(
            state.apply_slice(&ready),
            vec![Change::Service(svc(
                "staging",
                "frontend",
                &["10.96.12.10"],
                vec![port("", 80, &["10.244.1.12:8080", "10.244.2.18:8080"])],
            ))]
        );

        // The slice goes: no endpoints.
        assert_eq!(
            state.delete_slice("staging", "frontend-kgdhg"),
            vec![Change::Service(bare)]
        );
        assert_eq!(state.delete_slice("staging", "frontend-kgdhg"), vec![]);
    }

    #[test]
    fn deleting_a_service_deletes_it_and_its_slices_wait() {
        let mut state = loaded();
        assert_eq!(
            state.delete_service("bob", "rent"),
            vec![delete_svc("bob", "rent")]
        );
        assert_eq!(state.delete_service("bob", "rent"), vec![]);
        assert_eq!(state.delete_service("bob", "no-such-service"), vec![]);
        // Its slice is still there (Kubernetes deletes it a moment later):
        // the service comes back whole if it is recreated first.
        let services = services();
        assert_eq!(
            state.apply_service(find(&services, "bob", "rent")),
            vec![Change::Service(svc(
                "bob",
                "rent",
                &["10.96.210.40"],
                vec![port("http", 8080, &["10.244.3.77:8080"])],
            ))]
        );
    }

    #[test]
    fn a_service_that_becomes_unroutable_is_deleted_and_counted() {
        let mut state = loaded();
        let services = services();
        let mut rent = find(&services, "staging", "rent").clone();
        let spec = rent.spec.as_mut().unwrap();
        spec.type_ = Some("ExternalName".to_owned());
        spec.external_name = Some("rent.example.com".to_owned());
        assert_eq!(
            state.apply_service(&rent),
            vec![delete_svc("staging", "rent")]
        );
        assert_eq!(state.apply_service(&rent), vec![]);
        assert!(state.skipped().contains(&(Skip::ExternalName, 2)));
        let rent = find(&services, "staging", "rent");
        assert_eq!(state.apply_service(rent).len(), 1);
        assert!(state.skipped().contains(&(Skip::ExternalName, 1)));
    }

    #[test]
    fn slice_moved_between_services_updates_both() {
        let mut state = loaded();
        let all = slices();
        let mut moved = slice(&all, "catalog-8ltlj").clone();
        moved
            .metadata
            .labels
            .get_or_insert_default()
            .insert(SERVICE_NAME_LABEL.to_owned(), "rent".to_owned());
        // rent's slice port is named http, catalog's grpc: rent gains nothing
        // from the moved slice, so only catalog changes.
        assert_eq!(
            state.apply_slice(&moved),
            vec![Change::Service(svc(
                "staging",
                "catalog",
                &["10.96.45.90"],
                vec![port("grpc", 9090, &[])],
            ))]
        );
        // Give it rent's port name: now rent changes too.
        moved.ports.as_mut().unwrap()[0].name = Some("http".to_owned());
        assert_eq!(
            state.apply_slice(&moved),
            vec![Change::Service(svc(
                "staging",
                "rent",
                &["10.96.77.3"],
                vec![port(
                    "http",
                    8080,
                    &["10.244.1.40:8080", "10.244.2.31:9090", "10.244.3.8:9090"],
                )],
            ))]
        );
        // And back to catalog: both change, the old owner first.
        let back = slice(&all, "catalog-8ltlj");
        assert_eq!(
            state.apply_slice(back),
            vec![
                Change::Service(svc(
                    "staging",
                    "rent",
                    &["10.96.77.3"],
                    vec![port("http", 8080, &["10.244.1.40:8080"])],
                )),
                Change::Service(svc(
                    "staging",
                    "catalog",
                    &["10.96.45.90"],
                    vec![port("grpc", 9090, &["10.244.2.31:9090", "10.244.3.8:9090"])],
                )),
            ]
        );
        // A slice that loses its service-name label leaves its service.
        let mut orphan = back.clone();
        orphan.metadata.labels = None;
        assert_eq!(
            state.apply_slice(&orphan),
            vec![Change::Service(svc(
                "staging",
                "catalog",
                &["10.96.45.90"],
                vec![port("grpc", 9090, &[])],
            ))]
        );
        assert_eq!(state.delete_slice("staging", "catalog-8ltlj"), vec![]);
    }

    #[test]
    fn preview_hosts_follow_the_divert_namespace_and_the_shared_ingress() {
        let mut state = ClusterState::new();
        let ns = |labels: serde_json::Value, annotations: serde_json::Value| -> Namespace {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "carol", "labels": labels, "annotations": annotations}
            }))
            .unwrap()
        };
        let ingress = |namespace: &str, host: &str| -> Ingress {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": namespace, "name": "web"},
                "spec": {"rules": [{"host": host}]}
            }))
            .unwrap()
        };
        let host = |h: &str| pb::PreviewHost {
            host: h.into(),
            namespace: "carol".into(),
        };
        let label = serde_json::json!({SHARED_NAMESPACE_LABEL: "staging"});
        // Carol's own Ingress is no preview, before she diverts or after.
        assert_eq!(
            state.apply_ingress(&ingress("carol", "web-carol.example.com")),
            vec![]
        );
        assert_eq!(
            state.apply_namespace(&ns(label.clone(), serde_json::json!({}))),
            vec![ns_change("carol", "staging")]
        );
        // Staging's Ingress is what makes her host.
        assert_eq!(
            state.apply_ingress(&ingress("staging", "web-staging.example.com")),
            vec![Change::Hosts(vec![host("web-carol.example.com")])]
        );
        assert!(
            state
                .table()
                .contains(&Change::Hosts(vec![host("web-carol.example.com")]))
        );
        // Her host template makes another.
        let template = serde_json::json!({HOST_TEMPLATE: "{label}.carol.example.com"});
        assert_eq!(
            state.apply_namespace(&ns(label.clone(), template)),
            vec![Change::Hosts(vec![host("web-staging.carol.example.com")])]
        );
        assert_eq!(
            state.apply_namespace(&ns(serde_json::json!({}), serde_json::json!({}))),
            vec![
                Change::DeleteNamespace("carol".to_owned()),
                Change::Hosts(Vec::new())
            ]
        );
        state.apply_namespace(&ns(label, serde_json::json!({})));
        assert_eq!(
            state.delete_ingress("staging", "web"),
            vec![Change::Hosts(Vec::new())]
        );
        assert!(!state.table().iter().any(|c| matches!(c, Change::Hosts(_))));
    }

    #[test]
    fn namespace_label_added_changed_and_removed() {
        let mut state = loaded();
        let base: Namespace = find(&namespaces(), "", "staging").clone();
        let mut dev = base.clone();
        dev.metadata.name = Some("carol".to_owned());
        let with = |value: Option<&str>| {
            let mut ns = dev.clone();
            let labels = ns.metadata.labels.get_or_insert_default();
            match value {
                Some(v) => labels.insert(SHARED_NAMESPACE_LABEL.to_owned(), v.to_owned()),
                None => labels.remove(SHARED_NAMESPACE_LABEL),
            };
            ns
        };
        assert_eq!(state.apply_namespace(&with(None)), vec![]);
        assert_eq!(
            state.apply_namespace(&with(Some("staging"))),
            vec![ns_change("carol", "staging")]
        );
        assert_eq!(state.apply_namespace(&with(Some("staging"))), vec![]);
        assert_eq!(
            state.apply_namespace(&with(Some("prod"))),
            vec![ns_change("carol", "prod")]
        );
        assert_eq!(
            state.apply_namespace(&with(Some("Not A Name"))),
            vec![Change::DeleteNamespace("carol".to_owned())]
        );
        assert!(state.skipped().contains(&(Skip::InvalidSharedNamespace, 1)));
        assert_eq!(state.apply_namespace(&with(None)), vec![]);
        assert!(state.skipped().contains(&(Skip::InvalidSharedNamespace, 0)));
        assert_eq!(
            state.apply_namespace(&with(Some("staging"))),
            vec![ns_change("carol", "staging")]
        );
        assert_eq!(
            state.apply_namespace(&with(None)),
            vec![Change::DeleteNamespace("carol".to_owned())]
        );
        assert_eq!(
            state.apply_namespace(&with(Some("staging"))),
            vec![ns_change("carol", "staging")]
        );
        assert_eq!(
            state.delete_namespace("carol"),
            vec![Change::DeleteNamespace("carol".to_owned())]
        );
        assert_eq!(state.delete_namespace("carol"), vec![]);
        assert_eq!(state.delete_namespace("staging"), vec![]);
    }

    #[test]
    fn the_key_cookie_annotation_sends_a_shared_namespace_and_its_removal_deletes_it() {
        let mut state = loaded();
        let staging: Namespace = find(&namespaces(), "", "staging").clone();
        let annotated = |ns: &Namespace, value: Option<&str>| {
            let mut ns = ns.clone();
            let annotations = ns.metadata.annotations.get_or_insert_default();
            match value {
                Some(v) => annotations.insert(
                    divert_core::names::annotation::KEY_COOKIE.to_owned(),
                    v.to_owned(),
                ),
                None => annotations.remove(divert_core::names::annotation::KEY_COOKIE),
            };
            ns
        };
        let with = |value| annotated(&staging, value);
        let opened = Change::Namespace(pb::Namespace {
            name: "staging".to_owned(),
            key_cookie: true,
            ..pb::Namespace::default()
        });
        let closed = Change::DeleteNamespace("staging".to_owned());
        assert_eq!(state.apply_injected_namespace(&with(None)), vec![]);
        assert_eq!(
            state.apply_injected_namespace(&with(Some("enabled"))),
            vec![opened.clone()]
        );
        assert_eq!(
            state.apply_injected_namespace(&with(Some("enabled"))),
            vec![]
        );
        assert!(state.table().contains(&opened), "a snapshot has it");
        assert_eq!(
            state.apply_injected_namespace(&with(Some("yes"))),
            vec![closed.clone()],
            "only `enabled` opens it"
        );
        assert_eq!(
            state.apply_injected_namespace(&with(Some("enabled"))),
            vec![opened.clone()]
        );
        assert_eq!(
            state.delete_injected_namespace("staging"),
            vec![closed.clone()]
        );
        assert_eq!(
            state.resync_injected_namespaces(&[with(Some("enabled"))]),
            vec![opened]
        );
        assert_eq!(
            state.resync_injected_namespaces(&[with(None)]),
            vec![closed]
        );
        assert!(
            !state
                .table()
                .iter()
                .any(|c| matches!(c, Change::Namespace(n) if n.name == "staging"))
        );
        // A divert namespace's annotation opens nothing: it is not shared.
        let alice: Namespace = find(&namespaces(), "", "alice").clone();
        assert_eq!(
            state.apply_injected_namespace(&annotated(&alice, Some("enabled"))),
            vec![]
        );
    }

    #[test]
    fn resync_emits_exactly_the_difference() {
        let mut state = loaded();
        // While the watches were down: bob's namespace went away with its
        // service and slice, staging's rent was deleted, a catalog replica
        // went unready, and carol opted in.
        let mut namespaces = namespaces();
        namespaces.retain(|n| n.metadata.name.as_deref() != Some("bob"));
        let mut carol = find(&namespaces, "", "alice").clone();
        carol.metadata.name = Some("carol".to_owned());
        namespaces.push(carol);
        let mut services = services();
        services.retain(|s| {
            let ns = s.metadata.namespace.as_deref();
            ns != Some("bob")
                && !(ns == Some("staging") && s.metadata.name.as_deref() == Some("rent"))
        });
        let mut slices = slices();
        slices.retain(|s| s.metadata.namespace.as_deref() != Some("bob"));
        for s in &mut slices {
            if s.metadata.name.as_deref() == Some("catalog-8ltlj") {
                s.endpoints[0].conditions.as_mut().unwrap().ready = Some(false);
            }
        }
        let catalog = Change::Service(svc(
            "staging",
            "catalog",
            &["10.96.45.90"],
            vec![port("grpc", 9090, &["10.244.2.31:9090"])],
        ));
        assert_eq!(
            state.resync(&namespaces, &services, &slices),
            vec![
                Change::DeleteNamespace("bob".to_owned()),
                ns_change("carol", "staging"),
                delete_svc("bob", "rent"),
                catalog.clone(),
                delete_svc("staging", "rent"),
            ]
        );
        assert_eq!(state.resync(&namespaces, &services, &slices), vec![]);

        // Per kind, as the watches restart one at a time.
        let mut state = loaded();
        assert_eq!(
            state.resync_namespaces(&namespaces),
            vec![
                Change::DeleteNamespace("bob".to_owned()),
                ns_change("carol", "staging"),
            ]
        );
        assert_eq!(
            state.resync_slices(&slices),
            vec![
                // bob's rent lost its slice before its service is gone.
                Change::Service(svc(
                    "bob",
                    "rent",
                    &["10.96.210.40"],
                    vec![port("http", 8080, &[])]
                )),
                catalog,
            ]
        );
        assert_eq!(
            state.resync_services(&services),
            vec![delete_svc("bob", "rent"), delete_svc("staging", "rent")]
        );
        assert_eq!(state.table(), {
            let mut fresh = ClusterState::new();
            fresh.resync(&namespaces, &services, &slices);
            fresh.table()
        });
    }
}
