//! Preview hosts: each divert namespace's hosts for its shared namespace's
//! Ingresses, mapped to that namespace, which the proxies stream with the
//! table. A pod's inbound proxy gives a request for one of them, arriving
//! without a key, that namespace as its key (ARCHITECTURE.md, "The edge:
//! preview URLs").
//!
//! A preview host is made, never read off an object in a divert namespace:
//! for every divert namespace `K` of `S`, each host of each Ingress of `S`
//! is renamed as the copier renames it ([`crate::copies::rename`]), so the
//! map holds exactly the hosts of the copies the controller keeps. A
//! developer with `edit` in `K` can write any Ingress there, with any
//! hosts, class or labels (the controller's own included): none of it
//! claims a host. What the rename makes is left out when it would take
//! traffic that is not the developer's:
//! - a name the cluster's DNS answers (`api`, `api.alice.svc.cluster.local`,
//!   [`is_cluster_local`], or `api.alice` where `alice` is a namespace):
//!   pods call each other by those;
//! - a host an Ingress outside the divert namespaces also serves (the
//!   shared environment's own URL, say);
//! - a host two divert namespaces would both get.
//!
//! Each one left out is logged.

use std::collections::{BTreeMap, BTreeSet};

use divert_core::names::is_cluster_local;
use divert_proto::discovery::v1 as pb;
use k8s_openapi::api::networking::v1::Ingress;

use crate::copies::rename::Rename;
use crate::copies::sources::{Divert, Key};

/// The hosts of every Ingress seen, the divert namespaces, and the map
/// last emitted.
#[derive(Debug, Default)]
pub struct PreviewHosts {
    ingresses: BTreeMap<Key, BTreeSet<String>>,
    divert: BTreeMap<String, Divert>,
    emitted: Vec<pb::PreviewHost>,
}

impl PreviewHosts {
    /// An Ingress was added or changed; false if its hosts are the same.
    pub fn apply(&mut self, namespace: &str, name: &str, ingress: &Ingress) -> bool {
        let hosts = ingress_hosts(ingress);
        let key = (namespace.to_owned(), name.to_owned());
        if self.ingresses.get(&key) == Some(&hosts) {
            return false;
        }
        self.ingresses.insert(key, hosts);
        true
    }

    /// An Ingress is gone; false if it was not known.
    pub fn delete(&mut self, namespace: &str, name: &str) -> bool {
        self.ingresses
            .remove(&(namespace.to_owned(), name.to_owned()))
            .is_some()
    }

    /// Replaces every Ingress with a fresh full list.
    pub fn replace(&mut self, ingresses: &[Ingress]) {
        self.ingresses = ingresses
            .iter()
            .filter_map(|i| {
                let m = &i.metadata;
                Some(((m.namespace.clone()?, m.name.clone()?), ingress_hosts(i)))
            })
            .collect();
    }

    /// `namespace` is a divert namespace (`Some`) or no longer one.
    pub fn set_namespace(&mut self, namespace: &str, divert: Option<Divert>) {
        match divert {
            Some(d) => self.divert.insert(namespace.to_owned(), d),
            None => self.divert.remove(namespace),
        };
    }

    /// The map as it stands, if it differs from the one emitted last
    /// (which it then becomes).
    pub fn changed(&mut self) -> Option<Vec<pb::PreviewHost>> {
        let now = self.map();
        if now == self.emitted {
            return None;
        }
        self.emitted = now.clone();
        Some(now)
    }

    /// The map last emitted (for a consumer that starts empty).
    pub fn current(&self) -> &[pb::PreviewHost] {
        &self.emitted
    }

    /// Whether `host` is `<service>.<namespace>` for a namespace the
    /// controller knows of: the cluster's DNS answers it through a pod's
    /// search list.
    fn is_service_name(&self, host: &str) -> bool {
        let mut labels = host.split('.');
        match (labels.next(), labels.next(), labels.next()) {
            (Some(_), Some(namespace), None) => {
                self.divert.contains_key(namespace)
                    || self.divert.values().any(|d| d.shared == namespace)
                    || self.ingresses.keys().any(|(ns, _)| ns == namespace)
            }
            _ => false,
        }
    }

    /// Host → namespace, sorted by host.
    fn map(&self) -> Vec<pb::PreviewHost> {
        let mut outside: BTreeSet<&str> = BTreeSet::new();
        let mut shared_hosts: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for ((namespace, _), hosts) in &self.ingresses {
            if self.divert.contains_key(namespace) {
                continue;
            }
            outside.extend(hosts.iter().map(String::as_str));
            shared_hosts
                .entry(namespace)
                .or_default()
                .extend(hosts.iter().map(String::as_str));
        }
        let mut claims: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for (namespace, d) in &self.divert {
            let rename = Rename {
                shared: &d.shared,
                namespace,
                template: d.template.as_deref(),
            };
            for host in shared_hosts.get(d.shared.as_str()).into_iter().flatten() {
                // A host the template cannot make is the copier's problem
                // to report; it has no preview either way.
                let Ok(Some(made)) = rename.host(host) else {
                    continue;
                };
                if is_cluster_local(&made) || self.is_service_name(&made) {
                    tracing::warn!(host = %made, %namespace, "a name the cluster's DNS answers is never a preview host");
                    continue;
                }
                claims.entry(made).or_default().insert(namespace);
            }
        }
        claims
            .into_iter()
            .filter_map(|(host, namespaces)| {
                if outside.contains(host.as_str()) {
                    tracing::warn!(host, namespaces = ?namespaces, "an Ingress outside the divert namespaces serves this host too: it is not a preview host");
                    return None;
                }
                let mut namespaces = namespaces.into_iter();
                let (Some(namespace), None) = (namespaces.next(), namespaces.next()) else {
                    tracing::warn!(host, "several divert namespaces would get this host: it is a preview host of none");
                    return None;
                };
                Some(pb::PreviewHost {
                    host,
                    namespace: namespace.to_owned(),
                })
            })
            .collect()
    }
}

/// The hosts an Ingress serves (its rules' and its TLS sections'),
/// lowercase, without a trailing dot. Wildcards (`*.example.com`) name no
/// single host: left out.
pub fn ingress_hosts(ingress: &Ingress) -> BTreeSet<String> {
    let Some(spec) = &ingress.spec else {
        return BTreeSet::new();
    };
    let rules = spec
        .rules
        .iter()
        .flatten()
        .filter_map(|r| r.host.as_deref());
    let tls = spec
        .tls
        .iter()
        .flatten()
        .flat_map(|t| t.hosts.iter().flatten().map(String::as_str));
    rules
        .chain(tls)
        .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|h| !h.is_empty() && !h.starts_with('*'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use divert_core::names::annotation::COPIED_FROM;
    use divert_core::names::label::{MANAGED_BY, MANAGED_BY_CONTROLLER};
    use serde_json::json;

    fn ingress(namespace: &str, name: &str, hosts: &[&str], tls: &[&str]) -> Ingress {
        let rules: Vec<_> = hosts.iter().map(|h| json!({"host": h})).collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": namespace, "name": name},
            "spec": {"rules": rules, "tls": [{"hosts": tls}]}
        }))
        .unwrap()
    }

    fn divert(shared: &str) -> Option<Divert> {
        with_template(shared, None)
    }

    fn with_template(shared: &str, template: Option<&str>) -> Option<Divert> {
        Some(Divert {
            shared: shared.to_owned(),
            template: template.map(str::to_owned),
            expires_at: None,
            resource_version: None,
        })
    }

    fn pairs(map: &[pb::PreviewHost]) -> Vec<(&str, &str)> {
        map.iter()
            .map(|h| (h.host.as_str(), h.namespace.as_str()))
            .collect()
    }

    /// Staging serves `frontend-staging.example.com`; alice and bob divert
    /// from it.
    fn staging() -> PreviewHosts {
        let mut h = PreviewHosts::default();
        h.apply(
            "staging",
            "web",
            &ingress("staging", "web", &["frontend-staging.example.com"], &[]),
        );
        h.set_namespace("alice", divert("staging"));
        h.set_namespace("bob", divert("staging"));
        h
    }

    #[test]
    fn an_ingress_serves_its_rules_and_tls_hosts() {
        let i = ingress(
            "alice",
            "web",
            &["Frontend-Alice.example.com.", "*.example.com", ""],
            &["secure-alice.example.com"],
        );
        assert_eq!(
            ingress_hosts(&i).into_iter().collect::<Vec<_>>(),
            ["frontend-alice.example.com", "secure-alice.example.com"]
        );
        assert!(ingress_hosts(&Ingress::default()).is_empty());
    }

    #[test]
    fn each_divert_namespace_gets_the_shared_hosts_renamed() {
        let mut h = staging();
        let map = h.changed().expect("a first map");
        assert_eq!(
            pairs(&map),
            [
                ("frontend-alice.example.com", "alice"),
                ("frontend-bob.example.com", "bob")
            ]
        );
        assert_eq!(h.changed(), None, "nothing changed");
        // A template makes bob's hosts instead.
        h.set_namespace(
            "bob",
            with_template("staging", Some("{label}-{namespace}.preview.example.com")),
        );
        let map = h.changed().expect("changed");
        assert_eq!(
            pairs(&map),
            [
                ("frontend-alice.example.com", "alice"),
                ("frontend-staging-bob.preview.example.com", "bob")
            ]
        );
        // Alice no longer diverts: her host goes.
        h.set_namespace("alice", None);
        let map = h.changed().expect("changed");
        assert_eq!(
            pairs(&map),
            [("frontend-staging-bob.preview.example.com", "bob")]
        );
        // The shared Ingress gone: no preview hosts.
        assert!(h.delete("staging", "web"));
        assert!(!h.delete("staging", "web"));
        assert_eq!(h.changed(), Some(Vec::new()));
        assert!(h.current().is_empty());
    }

    /// The takeover of the isolation issue: a developer's own Ingress,
    /// hand-made or dressed as the controller's copy, naming staging's
    /// service by its cluster names and staging's public host, and a host
    /// of her own.
    #[test]
    fn an_ingress_a_developer_writes_in_her_namespace_claims_no_host() {
        let mut h = staging();
        let expected = h.changed().expect("a first map");
        let mut forged = ingress(
            "alice",
            "takeover",
            &[
                "api",
                "api.staging",
                "api.staging.svc.cluster.local",
                "frontend-staging.example.com",
                "shop.example.com",
            ],
            &["api.staging.svc"],
        );
        forged.metadata.labels =
            Some([(MANAGED_BY.to_owned(), MANAGED_BY_CONTROLLER.to_owned())].into());
        forged.metadata.annotations =
            Some([(COPIED_FROM.to_owned(), "staging/web".to_owned())].into());
        assert!(h.apply("alice", "takeover", &forged));
        assert_eq!(h.changed(), None, "the map is as it was: {expected:?}");
    }

    #[test]
    fn cluster_local_renames_shared_hosts_and_collisions_are_no_preview() {
        let mut h = staging();
        // Staging's Ingress names its service by cluster names too, and a
        // template makes the same host for alice and bob.
        h.apply(
            "staging",
            "api",
            &ingress(
                "staging",
                "api",
                &[
                    "api.staging.svc.cluster.local",
                    "api-staging",
                    "api.staging",
                ],
                &[],
            ),
        );
        h.apply(
            "other",
            "taken",
            &ingress("other", "taken", &["frontend-alice.example.com"], &[]),
        );
        let same = with_template("staging", Some("{label}.preview.example.com"));
        h.set_namespace("carol", same.clone());
        h.set_namespace("dave", same);
        let map = h.changed().expect("a map");
        assert_eq!(pairs(&map), [("frontend-bob.example.com", "bob")]);
    }
}
