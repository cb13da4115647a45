//! The rule at the receiving pod (ARCHITECTURE.md, step 7): a request that
//! reached this pod's app address goes to the key's copy of the pod's
//! service when the key counts and its namespace runs one; otherwise it is
//! delivered here, to the app, unchanged.
//!
//! Callers without a sidecar (ingress controllers, pods that did not opt in)
//! dial pod IPs, so the caller's rule never ran for them; this is where it
//! runs instead. The pod's service is found from the address the request
//! reached: the pod IP and target port are one of the service's endpoints.
//! So a pod that is not ready (in no endpoint list yet) delivers locally.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::route::{Route, Target};
use super::{Dialed, NamespaceKind, Service, Table};
use crate::reason::Reason;

/// Endpoint address → the service ports it serves. Only the services of the
/// proxy's own namespace are indexed (when it knows it): those are the only
/// ones its pod can be an endpoint of, and a namespace is small where the
/// whole table may not be.
pub(super) type Served = HashMap<SocketAddr, Vec<Dialed>>;

/// The namespace an index was made for, and the index.
pub(super) type ServedIn = (Option<Box<str>>, Served);

impl Table {
    /// Applies step 7 to one request that arrived at `dst` (the pod's own
    /// address and port) with `key` (none if the request had no usable one).
    /// `own_ns` is the proxy's own namespace, when known.
    ///
    /// A [`Target::Passthrough`] of `dst` is local delivery.
    pub fn route_inbound<'t>(
        &'t self,
        dst: SocketAddr,
        key: Option<&str>,
        own_ns: Option<&str>,
    ) -> Route<'t> {
        let local = |reason| Route {
            target: Target::Passthrough(dst),
            reason,
        };
        // A proxy's namespace never changes, so the index made for the first
        // request serves them all; asked for another namespace (tests do),
        // the table indexes that one for this call.
        let made = self
            .served
            .get_or_init(|| (own_ns.map(Box::from), self.index_served(own_ns)));
        let fresh;
        let served = if made.0.as_deref() == own_ns {
            &made.1
        } else {
            fresh = self.index_served(own_ns);
            &fresh
        };
        let Some(services) = served.get(&dst) else {
            return local(Reason::UnknownDestination);
        };
        let Some(key) = key else {
            return local(Reason::NoKey);
        };
        // An address can serve several services (two Services selecting the
        // same pods); the first whose key copy runs wins, and otherwise the
        // first one's reason is reported.
        let mut first = None;
        for dialed in services {
            let service = &dialed.service;
            let shared = self.shared_of(&service.namespace);
            let reason = match self.namespaces.get(key) {
                Some(NamespaceKind::DivertOf(s)) if **s == *shared => {
                    if *key == *service.namespace {
                        Reason::ThisCopy
                    } else if let Some(target) = self
                        .copy_in(key, service, dialed.port())
                        .filter(Target::has_endpoints)
                    {
                        return Route {
                            target,
                            reason: Reason::Diverted,
                        };
                    } else {
                        Reason::SharedFallback
                    }
                }
                Some(NamespaceKind::DivertOf(_)) => Reason::KeyOfOtherSharedNamespace,
                _ => Reason::KeyNotOptedIn,
            };
            first.get_or_insert(reason);
        }
        local(first.unwrap_or(Reason::UnknownDestination))
    }

    /// The service whose endpoint `dst` is (this pod's, for a request that
    /// arrived there), by the index [`Table::route_inbound`] uses (made
    /// here if no request made it yet); `None` for another namespace than
    /// the one it was made for. For reports.
    pub fn serves(&self, dst: SocketAddr, own_ns: Option<&str>) -> Option<&str> {
        let (ns, served) = self
            .served
            .get_or_init(|| (own_ns.map(Box::from), self.index_served(own_ns)));
        if ns.as_deref() != own_ns {
            return None;
        }
        served.get(&dst)?.first().map(|d| &*d.service.name)
    }

    /// The name of the service a pod at `ip` serves (the first by name, for
    /// a pod that several select), searched in `own_ns` (or everywhere when
    /// it is not known). For reports only: it walks the endpoints.
    pub fn service_at(&self, ip: std::net::IpAddr, own_ns: Option<&str>) -> Option<&str> {
        let services: Box<dyn Iterator<Item = &Arc<Service>>> = match own_ns {
            Some(ns) => Box::new(self.services.get(ns).into_iter().flat_map(|m| m.values())),
            None => Box::new(self.services()),
        };
        services
            .filter(|s| {
                s.ports
                    .iter()
                    .any(|p| p.endpoints.iter().any(|e| e.addr.ip() == ip))
            })
            .map(|s| &*s.name)
            .min()
    }

    /// Which service ports each endpoint of `own_ns` (or of every namespace,
    /// when it is not known) serves.
    fn index_served(&self, own_ns: Option<&str>) -> Served {
        let mut served = Served::new();
        let services: Box<dyn Iterator<Item = _>> = match own_ns {
            Some(ns) => Box::new(self.services.get(ns).into_iter().flat_map(|m| m.values())),
            None => Box::new(self.services()),
        };
        for service in services {
            for (j, port) in service.ports.iter().enumerate() {
                for endpoint in port.endpoints.iter() {
                    served.entry(endpoint.addr).or_default().push(Dialed {
                        service: service.clone(),
                        port: j,
                    });
                }
            }
        }
        // The same order whatever the maps' order was.
        for list in served.values_mut() {
            list.sort_by(|a, b| {
                (&a.service.namespace, &a.service.name, a.port).cmp(&(
                    &b.service.namespace,
                    &b.service.name,
                    b.port,
                ))
            });
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{TablePatch, TableSpec};

    /// Staging's frontend on two pods, alice's on one; bob runs no frontend;
    /// `prod-dev` diverts from another shared namespace.
    const APP: &str = r#"
namespaces:
  - name: staging
  - name: alice
    sharedNamespace: staging
  - name: bob
    sharedNamespace: staging
  - name: prod-dev
    sharedNamespace: prod
services:
  - { name: frontend, namespace: staging, addresses: [10.0.0.1], ports: [{name: http, port: 80, targetPort: 8080}], endpoints: [10.1.0.1, 10.1.0.2] }
  - { name: frontend, namespace: alice, addresses: [10.0.1.1], ports: [{name: http, port: 80, targetPort: 9090}], endpoints: [10.2.0.1] }
  - { name: rent, namespace: bob, addresses: [10.0.2.2], ports: [{name: http, port: 80}], endpoints: [10.3.0.1] }
"#;

    fn table(yaml: &str) -> Table {
        let spec: TableSpec = serde_yaml_ng::from_str(yaml).unwrap();
        Table::build(&spec, 1, None).unwrap()
    }

    fn inbound(t: &Table, dst: &str, key: Option<&str>, own: Option<&str>) -> (String, Reason) {
        let r = t.route_inbound(dst.parse().unwrap(), key, own);
        (r.to_string(), r.reason)
    }

    #[test]
    fn a_key_whose_namespace_runs_the_pods_service_goes_to_that_copy() {
        let t = table(APP);
        for own in [Some("staging"), None] {
            assert_eq!(
                inbound(&t, "10.1.0.2:8080", Some("alice"), own),
                ("frontend.alice:80".into(), Reason::Diverted)
            );
        }
        let r = t.route_inbound("10.1.0.1:8080".parse().unwrap(), Some("alice"), None);
        let Target::Service { port, .. } = r.target else {
            panic!("not sent to a service: {r}")
        };
        assert_eq!(
            port.endpoints.pick().map(|e| e.addr),
            Some("10.2.0.1:9090".parse().unwrap())
        );
    }

    #[test]
    fn every_other_request_is_delivered_to_this_pod() {
        let t = table(APP);
        let here = "10.1.0.1:8080";
        let cases = [
            (None, Reason::NoKey),
            (Some("bob"), Reason::SharedFallback),
            (Some("mallory"), Reason::KeyNotOptedIn),
            (Some("staging"), Reason::KeyNotOptedIn),
            (Some("prod-dev"), Reason::KeyOfOtherSharedNamespace),
        ];
        for (key, reason) in cases {
            assert_eq!(
                inbound(&t, here, key, Some("staging")),
                (here.to_string(), reason),
                "key {key:?}"
            );
        }
        // At alice's own pod, her key is already home.
        assert_eq!(
            inbound(&t, "10.2.0.1:9090", Some("alice"), Some("alice")),
            ("10.2.0.1:9090".into(), Reason::ThisCopy)
        );
        // An address no service lists (a pod not ready yet, a port no
        // Service exposes): delivered, whatever the key.
        assert_eq!(
            inbound(&t, "10.1.0.1:9999", Some("alice"), Some("staging")),
            ("10.1.0.1:9999".into(), Reason::UnknownDestination)
        );
    }

    #[test]
    fn only_the_proxys_own_namespace_is_looked_at() {
        let t = table(APP);
        // Alice's pod address, seen by a proxy that says it is in staging:
        // not one of staging's endpoints.
        assert_eq!(
            inbound(&t, "10.2.0.1:9090", Some("alice"), Some("staging")),
            ("10.2.0.1:9090".into(), Reason::UnknownDestination)
        );
        assert_eq!(
            inbound(&t, "10.2.0.1:9090", Some("alice"), None),
            ("10.2.0.1:9090".into(), Reason::ThisCopy)
        );
    }

    #[test]
    fn a_pod_behind_two_services_goes_to_the_copy_the_key_runs() {
        let yaml = format!(
            "{APP}  - {{ name: admin, namespace: staging, addresses: [10.0.0.9], ports: [{{name: http, port: 80, targetPort: 8080}}], endpoints: [10.1.0.1] }}\n  - {{ name: zadmin, namespace: staging, addresses: [10.0.0.8], ports: [{{name: http, port: 80, targetPort: 8080}}], endpoints: [10.1.0.1] }}\n  - {{ name: zadmin, namespace: bob, addresses: [10.0.2.8], ports: [{{name: http, port: 80, targetPort: 8080}}], endpoints: [10.3.0.8] }}\n"
        );
        let t = table(&yaml);
        assert_eq!(
            inbound(&t, "10.1.0.1:8080", Some("bob"), Some("staging")),
            ("zadmin.bob:80".into(), Reason::Diverted)
        );
        assert_eq!(
            inbound(&t, "10.1.0.1:8080", Some("alice"), Some("staging")),
            ("frontend.alice:80".into(), Reason::Diverted)
        );
    }

    #[test]
    fn a_new_table_version_is_looked_at_afresh() {
        let t = table(APP);
        assert_eq!(
            inbound(&t, "10.1.0.1:8080", Some("alice"), Some("staging")).1,
            Reason::Diverted
        );
        let patched = t.patch(
            &TablePatch {
                deleted_services: vec![("alice".into(), "frontend".into())],
                ..TablePatch::default()
            },
            2,
        );
        assert_eq!(
            inbound(&patched, "10.1.0.1:8080", Some("alice"), Some("staging")).1,
            Reason::SharedFallback
        );
        // A moved pod: staging's frontend now on 10.1.0.7 only.
        let moved = patched.patch(
            &TablePatch {
                services: vec![
                    serde_yaml_ng::from_str(
                        "{ name: frontend, namespace: staging, addresses: [10.0.0.1], ports: [{name: http, port: 80, targetPort: 8080}], endpoints: [10.1.0.7] }",
                    )
                    .unwrap(),
                ],
                ..TablePatch::default()
            },
            3,
        );
        assert_eq!(
            inbound(&moved, "10.1.0.1:8080", Some("bob"), Some("staging")).1,
            Reason::UnknownDestination
        );
        assert_eq!(
            inbound(&moved, "10.1.0.7:8080", Some("bob"), Some("staging")).1,
            Reason::SharedFallback
        );
    }
}
