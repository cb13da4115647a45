//! Preview hosts (ARCHITECTURE.md, "The edge: preview URLs"): a request
//! from outside the cluster has no key, but the host it asked for says
//! whose preview it is. Each divert namespace's copies of the shared
//! Ingresses have hosts of their own (`frontend-alice.example.com`); the
//! table maps each to its namespace, and a pod's inbound proxy gives a
//! request for one that namespace as its key.
//!
//! Hosts are compared as RFC 9110 §4.2.3 says URI hosts compare: without
//! case, and without the port (§7.2: `Host` may carry one). A trailing dot
//! (the absolute form of a DNS name) is the same host.
//!
//! The key cookie is the edge's other key ([`crate::semantics::cookie`]):
//! the table says which shared namespaces allow it, and which namespaces a
//! cookie may name.

use super::spec::{HostSpec, SpecError, spec_err};
use super::{NamespaceKind, Table};
use divert_core::names::check_dns_label;

/// The longest DNS name (RFC 1035 §2.3.4).
const MAX_HOST: usize = 253;

/// What a bad entry does: fail the whole input, or only itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Strictness {
    Reject,
    Skip,
}

impl Table {
    /// The namespace a request for `authority` (a `Host` header or an
    /// `:authority`, port and all) is a preview of, if any.
    pub fn host_key(&self, authority: &str) -> Option<&str> {
        if self.hosts.is_empty() {
            return None;
        }
        let host = host_of(authority);
        // Hosts are stored lowercase; most requests already are.
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hosts.get(host.to_ascii_lowercase().as_str())
        } else {
            self.hosts.get(host)
        }
        .map(|ns| &**ns)
    }

    /// Whether the pods of `own_ns` accept the key cookie: its shared
    /// namespace allows it.
    pub fn key_cookie_allowed(&self, own_ns: Option<&str>) -> bool {
        let Some(own) = own_ns else {
            return false;
        };
        matches!(
            self.namespaces.get(self.shared_of(own)),
            Some(NamespaceKind::Shared { key_cookie: true })
        )
    }

    /// The key a key cookie of `value` gives a pod of `own_ns`: `value`,
    /// if it names a divert namespace of the pod's shared namespace.
    pub fn cookie_key(&self, value: &str, own_ns: &str) -> Option<&str> {
        let shared = self.shared_of(own_ns);
        match self.namespaces.get_key_value(value) {
            Some((name, NamespaceKind::DivertOf(s))) if **s == *shared => Some(name),
            _ => None,
        }
    }

    /// Replaces the host map with `hosts`, checking each entry; `path`
    /// names the list in errors. A file a person wrote is rejected at its
    /// first bad entry (`Strictness::Reject`); the controller's stream must
    /// not stall, so there a bad entry is skipped with a warning and a host
    /// listed twice goes to the later namespace (`Strictness::Skip`).
    pub(super) fn set_hosts(
        &mut self,
        hosts: &[HostSpec],
        path: &str,
        strictness: Strictness,
    ) -> Result<(), SpecError> {
        self.hosts.clear();
        self.hosts.reserve(hosts.len());
        for (i, h) in hosts.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let entry = normalize(&h.host)
                .map_err(|p| spec_err(format!("{at}.host"), p))
                .and_then(|host| {
                    check_dns_label(&h.namespace)
                        .map_err(|p| spec_err(format!("{at}.namespace"), p.to_string()))?;
                    Ok(host)
                });
            let host = match (entry, strictness) {
                (Ok(host), _) => host,
                (Err(e), Strictness::Reject) => return Err(e),
                (Err(e), Strictness::Skip) => {
                    tracing::warn!(error = %e, "preview host skipped");
                    continue;
                }
            };
            let previous = self.hosts.insert(host.into(), h.namespace.as_str().into());
            if let (Some(other), Strictness::Reject) = (previous, strictness) {
                return Err(spec_err(
                    format!("{at}.host"),
                    format!("{:?} is listed twice (also for {other:?})", h.host),
                ));
            }
        }
        Ok(())
    }

    /// Every preview host and its namespace, in no particular order.
    pub fn hosts(&self) -> impl Iterator<Item = (&str, &str)> {
        self.hosts.iter().map(|(h, n)| (&**h, &**n))
    }
}

/// The host part of an authority: without the port, the brackets of an
/// IPv6 literal and a trailing dot.
fn host_of(authority: &str) -> &str {
    let host = match authority.strip_prefix('[') {
        // `[::1]:8080`: the literal inside the brackets.
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _port)| host),
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// A host as written in a table entry: a DNS name, stored lowercase,
/// without a trailing dot.
fn normalize(host: &str) -> Result<String, String> {
    let lower = host.trim().trim_end_matches('.').to_ascii_lowercase();
    if lower.starts_with("*.") {
        return Err(format!(
            "{host:?}: wildcard hosts are not supported; list each preview host"
        ));
    }
    if lower.is_empty() || lower.len() > MAX_HOST {
        return Err(format!(
            "{host:?} is not a DNS name (1 to {MAX_HOST} characters)"
        ));
    }
    if let Some(bad) = lower.split('.').find(|l| check_dns_label(l).is_err()) {
        return Err(format!(
            "{host:?} is not a DNS name: {bad:?} is not a label (letters, digits and inner dashes, at most 63)"
        ));
    }
    if divert_core::names::is_cluster_local(&lower) {
        return Err(format!(
            "{host:?} is a name the cluster's DNS answers: it is how pods call a service, so it is never a preview host"
        ));
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::TableSpec;

    /// `staging` allows the key cookie, `prod` does not; alice diverts from
    /// staging, carol from prod.
    const COOKIES: &str = r#"
namespaces:
  - { name: staging, keyCookie: true }
  - { name: prod }
  - { name: alice, sharedNamespace: staging }
  - { name: carol, sharedNamespace: prod }
"#;

    #[test]
    fn the_key_cookie_counts_where_the_shared_namespace_allows_it_and_names_its_divert_namespaces()
    {
        let spec: TableSpec = serde_yaml_ng::from_str(COOKIES).unwrap();
        let t = Table::build(&spec, 1, None).unwrap();
        assert!(t.key_cookie_allowed(Some("staging")));
        assert!(
            t.key_cookie_allowed(Some("alice")),
            "alice's pods follow staging"
        );
        assert!(!t.key_cookie_allowed(Some("prod")));
        assert!(!t.key_cookie_allowed(Some("carol")));
        assert!(!t.key_cookie_allowed(Some("elsewhere")));
        assert!(!t.key_cookie_allowed(None));
        assert_eq!(t.cookie_key("alice", "staging"), Some("alice"));
        assert_eq!(
            t.cookie_key("carol", "staging"),
            None,
            "another shared namespace's"
        );
        assert_eq!(
            t.cookie_key("staging", "staging"),
            None,
            "not a divert namespace"
        );
        assert_eq!(t.cookie_key("mallory", "staging"), None);
    }

    #[test]
    fn only_a_shared_namespace_may_allow_the_key_cookie() {
        let yaml = "namespaces:\n  - { name: staging }\n  - { name: alice, sharedNamespace: staging, keyCookie: true }\n";
        let spec: TableSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let e = Table::build(&spec, 1, None).unwrap_err().to_string();
        assert!(e.contains("namespaces[1].keyCookie"), "{e}");
    }

    fn table(hosts: &[(&str, &str)]) -> Result<Table, SpecError> {
        let spec = TableSpec {
            hosts: hosts
                .iter()
                .map(|(h, n)| HostSpec {
                    host: (*h).into(),
                    namespace: (*n).into(),
                })
                .collect(),
            ..TableSpec::default()
        };
        Table::build(&spec, 1, None)
    }

    #[test]
    fn a_host_matches_without_case_port_or_trailing_dot() {
        let t = table(&[("Frontend-Alice.Example.com.", "alice")]).unwrap();
        for authority in [
            "frontend-alice.example.com",
            "FRONTEND-alice.example.COM",
            "frontend-alice.example.com:8080",
            "frontend-alice.example.com.",
            "frontend-alice.example.com.:443",
        ] {
            assert_eq!(t.host_key(authority), Some("alice"), "{authority}");
        }
        for other in [
            "frontend-staging.example.com",
            "alice.example.com",
            "example.com",
            "[fd00::1]:8080",
            "10.0.0.1:80",
            "",
        ] {
            assert_eq!(t.host_key(other), None, "{other}");
        }
        assert_eq!(
            table(&[]).unwrap().host_key("frontend-alice.example.com"),
            None
        );
    }

    #[test]
    fn bad_entries_name_their_field() {
        let cases = [
            (
                vec![("*.example.com", "alice")],
                "hosts[0].host",
                "wildcard",
            ),
            (
                vec![("bad_host.example.com", "alice")],
                "hosts[0].host",
                "not a label",
            ),
            (vec![("", "alice")], "hosts[0].host", "not a DNS name"),
            (vec![("api", "alice")], "hosts[0].host", "cluster's DNS"),
            (
                vec![("api.staging.svc.cluster.local", "alice")],
                "hosts[0].host",
                "cluster's DNS",
            ),
            (
                vec![("a.example.com", "Alice")],
                "hosts[0].namespace",
                "Alice",
            ),
            (
                vec![("a.example.com", "alice"), ("A.example.com", "bob")],
                "hosts[1].host",
                "twice",
            ),
        ];
        for (hosts, path, problem) in cases {
            match table(&hosts) {
                Err(e) => {
                    assert_eq!(e.path, path, "{hosts:?}");
                    assert!(e.problem.contains(problem), "{hosts:?}: {e}");
                }
                Ok(_) => panic!("{hosts:?} accepted"),
            }
        }
    }

    #[test]
    fn the_authority_loses_its_port_and_brackets() {
        assert_eq!(host_of("a.example.com:8080"), "a.example.com");
        assert_eq!(host_of("a.example.com"), "a.example.com");
        assert_eq!(host_of("[fd00::1]:8080"), "fd00::1");
        assert_eq!(host_of("[fd00::1]"), "fd00::1");
        assert_eq!(host_of("a.example.com.:80"), "a.example.com");
    }

    #[test]
    fn a_patch_replaces_the_map_and_skips_bad_entries() {
        let t = table(&[("old.example.com", "alice")]).unwrap();
        let hosts = vec![
            HostSpec {
                host: "*.example.com".into(),
                namespace: "alice".into(),
            },
            HostSpec {
                host: "new.example.com".into(),
                namespace: "alice".into(),
            },
            HostSpec {
                host: "web.staging.svc".into(),
                namespace: "alice".into(),
            },
            HostSpec {
                host: "new.example.com".into(),
                namespace: "bob".into(),
            },
        ];
        let patched = t.patch(
            &crate::table::TablePatch {
                hosts: Some(hosts),
                ..Default::default()
            },
            2,
        );
        assert_eq!(patched.host_key("old.example.com"), None);
        assert_eq!(patched.host_key("new.example.com"), Some("bob"));
        assert_eq!(patched.hosts().count(), 1);
        // A patch that does not mention hosts keeps them.
        let kept = patched.patch(&crate::table::TablePatch::default(), 3);
        assert_eq!(kept.host_key("new.example.com"), Some("bob"));
    }
}
