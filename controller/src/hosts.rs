//! Preview hosts: the hosts of the Ingresses in divert namespaces, each
//! mapped to its namespace, which the proxies stream with the table. A pod's
//! inbound proxy gives a request for one of them, arriving without a key,
//! that namespace as its key (DESIGN.md, "The receiving side and the edge").
//!
//! A host that an Ingress outside the divert namespaces also serves (the
//! shared environment's own URL, say) is never a preview host: mapping it
//! would send everyone's requests for the shared URL to one developer.
//! A host claimed by two divert namespaces goes to neither, for the same
//! reason; both are logged.

use std::collections::{BTreeMap, BTreeSet};

use divert_proto::discovery::v1 as pb;
use k8s_openapi::api::networking::v1::Ingress;

/// `(namespace, name)`.
type Key = (String, String);

/// The hosts of every Ingress seen, and the map last emitted.
#[derive(Debug, Default)]
pub struct PreviewHosts {
    ingresses: BTreeMap<Key, BTreeSet<String>>,
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

    /// The map as it stands, given which namespaces are divert namespaces,
    /// if it differs from the one emitted last (which it then becomes).
    pub fn changed(&mut self, is_divert: impl Fn(&str) -> bool) -> Option<Vec<pb::PreviewHost>> {
        let now = self.map(is_divert);
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

    /// Host → namespace, sorted by host.
    fn map(&self, is_divert: impl Fn(&str) -> bool) -> Vec<pb::PreviewHost> {
        let mut shared: BTreeSet<&str> = BTreeSet::new();
        let mut claims: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for ((namespace, _), hosts) in &self.ingresses {
            for host in hosts {
                if is_divert(namespace) {
                    claims.entry(host).or_default().insert(namespace);
                } else {
                    shared.insert(host);
                }
            }
        }
        claims
            .into_iter()
            .filter_map(|(host, namespaces)| {
                if shared.contains(host) {
                    tracing::warn!(host, namespaces = ?namespaces, "an Ingress outside the divert namespaces serves this host too: it is not a preview host");
                    return None;
                }
                let mut namespaces = namespaces.into_iter();
                let (Some(namespace), None) = (namespaces.next(), namespaces.next()) else {
                    tracing::warn!(host, "several divert namespaces' Ingresses claim this host: it is a preview host of none");
                    return None;
                };
                Some(pb::PreviewHost {
                    host: host.to_owned(),
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
    use serde_json::json;

    fn ingress(namespace: &str, name: &str, hosts: &[&str], tls: &[&str]) -> Ingress {
        let rules: Vec<_> = hosts.iter().map(|h| json!({"host": h})).collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": namespace, "name": name},
            "spec": {"rules": rules, "tls": [{"hosts": tls}]}
        }))
        .unwrap()
    }

    fn divert(ns: &str) -> bool {
        matches!(ns, "alice" | "bob")
    }

    fn pairs(map: &[pb::PreviewHost]) -> Vec<(&str, &str)> {
        map.iter()
            .map(|h| (h.host.as_str(), h.namespace.as_str()))
            .collect()
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
    fn divert_namespaces_hosts_are_mapped_and_shared_ones_never() {
        let mut h = PreviewHosts::default();
        assert!(h.apply(
            "staging",
            "web",
            &ingress("staging", "web", &["frontend-staging.example.com"], &[])
        ));
        assert!(h.apply(
            "alice",
            "web",
            &ingress("alice", "web", &["frontend-alice.example.com"], &[])
        ));
        let map = h.changed(divert).expect("a first map");
        assert_eq!(pairs(&map), [("frontend-alice.example.com", "alice")]);
        assert_eq!(h.changed(divert), None, "nothing changed");
        assert!(!h.apply(
            "alice",
            "web",
            &ingress("alice", "web", &["frontend-alice.example.com"], &[])
        ));

        // Alice's Ingress names staging's host too: that one is not hers.
        h.apply(
            "alice",
            "web",
            &ingress(
                "alice",
                "web",
                &["frontend-alice.example.com", "frontend-staging.example.com"],
                &[],
            ),
        );
        assert_eq!(h.changed(divert), None, "the shared host is left out");

        // Bob claims alice's host: neither gets it.
        h.apply(
            "bob",
            "web",
            &ingress(
                "bob",
                "web",
                &["frontend-alice.example.com", "frontend-bob.example.com"],
                &[],
            ),
        );
        let map = h.changed(divert).expect("changed");
        assert_eq!(pairs(&map), [("frontend-bob.example.com", "bob")]);

        // Bob's Ingress gone: alice's host is hers again.
        assert!(h.delete("bob", "web"));
        assert!(!h.delete("bob", "web"));
        let map = h.changed(divert).expect("changed");
        assert_eq!(pairs(&map), [("frontend-alice.example.com", "alice")]);
        // Alice no longer a divert namespace: no preview hosts.
        assert_eq!(h.changed(|ns| ns == "bob"), Some(Vec::new()));
        assert!(h.current().is_empty());
    }

    #[test]
    fn a_fresh_list_replaces_everything() {
        let mut h = PreviewHosts::default();
        h.apply(
            "alice",
            "old",
            &ingress("alice", "old", &["old-alice.example.com"], &[]),
        );
        h.replace(&[ingress("alice", "new", &["new-alice.example.com"], &[])]);
        let map = h.changed(divert).expect("a map");
        assert_eq!(pairs(&map), [("new-alice.example.com", "alice")]);
    }
}
