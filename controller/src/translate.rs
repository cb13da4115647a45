//! Kubernetes objects → routing-table messages (pure functions, no I/O).
//!
//! # Namespaces
//!
//! A namespace opts in as a *divert namespace* with the label
//! `divert.dev/shared-namespace: <S>` ([`SHARED_NAMESPACE_LABEL`]), where `S` is
//! the shared namespace whose services it may replace. `S` must be a valid
//! RFC 1123 label (what Kubernetes accepts as a namespace name) and must not be
//! the namespace itself; a namespace whose label breaks either rule is not a
//! divert namespace, and [`namespace`] says why ([`Skip`]). Every namespace
//! without the label is a shared namespace and is not sent to the proxies at
//! all: the routing rule (ARCHITECTURE.md) treats any namespace it does not know as shared.
//!
//! # Services
//!
//! [`service`] turns a Service and its EndpointSlices (those labelled
//! `kubernetes.io/service-name: <name>` in the same namespace) into one
//! [`pb::Service`]:
//!
//! - addresses: `spec.clusterIPs` (falling back to `spec.clusterIP`), both
//!   families of a dual-stack service, as 4- or 16-byte IPs;
//! - ports: each TCP entry of `spec.ports`, in spec order (UDP and SCTP ports
//!   are dropped: the proxy only intercepts TCP);
//! - endpoints of a port: from every IPv4 and IPv6 slice (FQDN slices are
//!   ignored), the slice port with the same name (`""` and unset both mean the
//!   unnamed port) and protocol TCP, and every endpoint that is ready (`ready`
//!   true, or unset, which Kubernetes defines as ready) and not terminating;
//!   deduplicated and sorted, so the same cluster state always gives the same
//!   message. The port number is the slice's (the resolved `targetPort`), never
//!   the service's.
//!
//! Headless services (`clusterIP: None`) are sent with no addresses. Clients
//! reach them by pod IP, and a pod IP is not a stable key to route by: it
//! belongs to one pod, is reused after that pod dies, and a request dialed to
//! one specific pod (a StatefulSet member, a database replica) must reach that
//! pod. So a headless service can never be the *origin* a request is routed
//! from, but it can be the *target*: when a request for `staging`'s `frontend`
//! (dialed by ClusterIP) carries `okteto-divert=alice`, alice's headless
//! `frontend` receives it at its endpoints.
//!
//! Services that cannot be routed at all are skipped with a [`Skip`] reason,
//! which is not an error: ExternalName services (the cluster DNS answers with a
//! CNAME, so there is no IP to intercept; traffic goes to the external name
//! as dialed), services with no TCP port, and services without a usable
//! ClusterIP (the API server always allocates one, so only hand-made objects
//! hit this).

use std::collections::BTreeSet;
use std::net::IpAddr;

use divert_core::names::label::SHARED_NAMESPACE as SHARED_NAMESPACE_LABEL;
use divert_proto::discovery::v1 as pb;
use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

/// The label the EndpointSlice controller (and any well-behaved custom one)
/// puts on each slice: the name of the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Why an object is not in the routing table. Not an error: the cluster is
/// allowed to contain these; they are counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// A namespace labelled with a shared namespace that is not a valid
    /// namespace name.
    InvalidSharedNamespace,
    /// A namespace labelled with its own name as its shared namespace.
    SharedNamespaceIsItself,
    /// An ExternalName service: DNS answers with a CNAME, there is no IP to
    /// intercept.
    ExternalName,
    /// A service without any TCP port.
    NoTcpPorts,
    /// A non-headless service without a parseable ClusterIP.
    NoClusterIp,
}

impl Skip {
    /// Every reason, in a stable order (for metrics that report zeros too).
    pub const ALL: [Skip; 5] = [
        Skip::InvalidSharedNamespace,
        Skip::SharedNamespaceIsItself,
        Skip::ExternalName,
        Skip::NoTcpPorts,
        Skip::NoClusterIp,
    ];

    /// A short snake_case name, for metric labels and structured logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::InvalidSharedNamespace => "invalid_shared_namespace",
            Skip::SharedNamespaceIsItself => "shared_namespace_is_itself",
            Skip::ExternalName => "external_name",
            Skip::NoTcpPorts => "no_tcp_ports",
            Skip::NoClusterIp => "no_cluster_ip",
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::InvalidSharedNamespace => {
                "the value of label divert.dev/shared-namespace is not a valid namespace name \
                 (RFC 1123 label); not a divert namespace"
            }
            Skip::SharedNamespaceIsItself => {
                "label divert.dev/shared-namespace names the namespace itself; \
                 not a divert namespace"
            }
            Skip::ExternalName => {
                "ExternalName service: DNS answers with a CNAME, no IP to intercept"
            }
            Skip::NoTcpPorts => "no TCP port (the proxy only intercepts TCP)",
            Skip::NoClusterIp => "no valid spec.clusterIPs on a service that is not headless",
        })
    }
}

/// What a namespace is to the routing table.
#[derive(Debug, Clone, PartialEq)]
pub enum NamespaceRole {
    /// A shared namespace (the default): not sent to proxies.
    Shared,
    /// A shared namespace whose `divert.dev/key-cookie` annotation is
    /// `enabled`: sent to proxies for that alone (`key_cookie`).
    SharedWithCookie(pb::Namespace),
    /// A divert namespace of `shared_namespace`.
    Divert(pb::Namespace),
    /// Labelled, but the label is unusable: treated as shared.
    Skipped(Skip),
}

impl NamespaceRole {
    /// What proxies are sent of it, if anything.
    pub fn sent(&self) -> Option<&pb::Namespace> {
        match self {
            NamespaceRole::Divert(ns) | NamespaceRole::SharedWithCookie(ns) => Some(ns),
            NamespaceRole::Shared | NamespaceRole::Skipped(_) => None,
        }
    }
}

/// Classifies a namespace by its [`SHARED_NAMESPACE_LABEL`] (and, for a
/// shared one, its key cookie annotation).
pub fn namespace(ns: &Namespace) -> NamespaceRole {
    let name = ns.metadata.name.as_deref().unwrap_or_default();
    let Some(shared) = ns
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(SHARED_NAMESPACE_LABEL))
    else {
        let cookie = ns
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(divert_core::names::annotation::KEY_COOKIE))
            .is_some_and(|v| v == "enabled");
        return if cookie {
            NamespaceRole::SharedWithCookie(pb::Namespace {
                name: name.to_owned(),
                key_cookie: true,
                ..pb::Namespace::default()
            })
        } else {
            NamespaceRole::Shared
        };
    };
    if divert_core::names::check_dns_label(shared).is_err() {
        NamespaceRole::Skipped(Skip::InvalidSharedNamespace)
    } else if shared == name {
        NamespaceRole::Skipped(Skip::SharedNamespaceIsItself)
    } else {
        NamespaceRole::Divert(pb::Namespace {
            name: name.to_owned(),
            shared_namespace: shared.clone(),
            debug: ns
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(divert_core::names::annotation::DEBUG))
                .is_some_and(|v| v == "true"),
            key_cookie: false,
        })
    }
}

/// The service an EndpointSlice belongs to (its [`SERVICE_NAME_LABEL`]).
/// The controller's own copies of a shared service's slices (which make a
/// preview Service lead to the shared pods) belong to none: a namespace
/// runs a service only with endpoints of its own.
pub fn slice_service(slice: &EndpointSlice) -> Option<&str> {
    if crate::copies::plan::is_copied_slice(slice) {
        return None;
    }
    slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

/// Translates a service and its endpoints. `slices` may hold any slices:
/// only those of this service (same namespace, [`SERVICE_NAME_LABEL`] equal
/// to its name) are used.
pub fn service<'a>(
    svc: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Result<pb::Service, Skip> {
    let namespace = svc.metadata.namespace.as_deref().unwrap_or_default();
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let spec = svc.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return Err(Skip::ExternalName);
    }
    let tcp_ports: Vec<&ServicePort> = spec
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|p| is_tcp(p.protocol.as_deref()) && port_number(p.port).is_some())
        .collect();
    if tcp_ports.is_empty() {
        return Err(Skip::NoTcpPorts);
    }
    let addresses = cluster_ips(svc)?;

    let slices: Vec<&EndpointSlice> = slices
        .into_iter()
        .filter(|s| {
            s.metadata.namespace.as_deref().unwrap_or_default() == namespace
                && slice_service(s) == Some(name)
                && matches!(s.address_type.as_str(), "IPv4" | "IPv6")
        })
        .collect();

    let ports = tcp_ports
        .into_iter()
        .map(|sp| {
            let port_name = sp.name.as_deref().unwrap_or_default();
            let mut endpoints = BTreeSet::<(IpAddr, u16)>::new();
            for slice in &slices {
                let slice_ports = slice.ports.as_deref().unwrap_or_default();
                for number in slice_ports
                    .iter()
                    .filter(|p| {
                        p.name.as_deref().unwrap_or_default() == port_name
                            && is_tcp(p.protocol.as_deref())
                    })
                    .filter_map(|p| p.port.and_then(port_number))
                {
                    for ep in slice.endpoints.iter().filter(|ep| routable(ep)) {
                        for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                            endpoints.insert((ip, number));
                        }
                    }
                }
            }
            pb::Port {
                name: port_name.to_owned(),
                port: u32::from(port_number(sp.port).unwrap_or_default()),
                endpoints: endpoints
                    .into_iter()
                    .map(|(ip, port)| pb::Endpoint {
                        ip: ip_bytes(ip),
                        port: u32::from(port),
                    })
                    .collect(),
            }
        })
        .collect();

    Ok(pb::Service {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        addresses,
        ports,
    })
}

/// The ClusterIPs as raw bytes; empty for a headless service.
fn cluster_ips(svc: &Service) -> Result<Vec<Vec<u8>>, Skip> {
    let spec = svc.spec.as_ref();
    let ips: Vec<&str> = match spec.and_then(|s| s.cluster_ips.as_deref()) {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec
            .and_then(|s| s.cluster_ip.as_deref())
            .into_iter()
            .collect(),
    };
    if ips.first() == Some(&"None") {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(ips.len());
    for ip in ips {
        let bytes = ip_bytes(ip.parse().map_err(|_| Skip::NoClusterIp)?);
        if !out.contains(&bytes) {
            out.push(bytes);
        }
    }
    if out.is_empty() {
        return Err(Skip::NoClusterIp);
    }
    Ok(out)
}

/// Kubernetes: unset `ready` means ready; a terminating endpoint takes no new
/// requests even while it still serves.
fn routable(ep: &Endpoint) -> bool {
    let c = ep.conditions.as_ref();
    c.and_then(|c| c.ready).unwrap_or(true) && !c.and_then(|c| c.terminating).unwrap_or(false)
}

/// Protocol unset means TCP, as in Kubernetes.
fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

fn port_number(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;

    use k8s_openapi::api::discovery::v1::EndpointConditions;
    use k8s_openapi::serde::de::DeserializeOwned;

    use super::*;

    /// Parses a `kubectl get … -o json` list (kind List) into typed items.
    fn list<T: DeserializeOwned>(json: &str) -> Vec<T> {
        let mut list: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(list["kind"], "List");
        let serde_json::Value::Array(items) = list["items"].take() else {
            panic!("no items");
        };
        items
            .into_iter()
            .map(|item| serde_json::from_value(item).unwrap())
            .collect()
    }

    pub(crate) fn namespaces() -> Vec<Namespace> {
        list(include_str!("../testdata/namespaces.json"))
    }

    pub(crate) fn services() -> Vec<Service> {
        list(include_str!("../testdata/services.json"))
    }

    pub(crate) fn slices() -> Vec<EndpointSlice> {
        list(include_str!("../testdata/endpointslices.json"))
    }

    pub(crate) fn find<'a, T: k8s_openapi::Metadata<Ty = ObjectMeta>>(
        items: &'a [T],
        namespace: &str,
        name: &str,
    ) -> &'a T {
        items
            .iter()
            .find(|o| {
                o.metadata().name.as_deref() == Some(name)
                    && o.metadata().namespace.as_deref().unwrap_or_default() == namespace
            })
            .unwrap_or_else(|| panic!("no {namespace}/{name} in the fixtures"))
    }

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ip(s: &str) -> Vec<u8> {
        ip_bytes(s.parse().unwrap())
    }

    pub(crate) fn port(name: &str, port: u32, endpoints: &[&str]) -> pb::Port {
        pb::Port {
            name: name.to_owned(),
            port,
            endpoints: endpoints
                .iter()
                .map(|e| {
                    let addr: SocketAddr = e.parse().unwrap();
                    pb::Endpoint {
                        ip: ip_bytes(addr.ip()),
                        port: u32::from(addr.port()),
                    }
                })
                .collect(),
        }
    }

    pub(crate) fn svc(
        namespace: &str,
        name: &str,
        addresses: &[&str],
        ports: Vec<pb::Port>,
    ) -> pb::Service {
        pb::Service {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            addresses: addresses.iter().map(|a| ip(a)).collect(),
            ports,
        }
    }

    /// The translation of every service in the fixtures, sorted by
    /// namespace and name.
    pub(crate) fn expected_services() -> Vec<(&'static str, &'static str, Result<pb::Service, Skip>)>
    {
        let ok = |s: pb::Service| Ok(s);
        vec![
            (
                "alice",
                "frontend",
                ok(svc(
                    "alice",
                    "frontend",
                    &["10.96.200.15"],
                    vec![port("", 80, &["10.244.2.88:8080"])],
                )),
            ),
            (
                "bob",
                "rent",
                ok(svc(
                    "bob",
                    "rent",
                    &["10.96.210.40"],
                    vec![port("http", 8080, &["10.244.3.77:8080"])],
                )),
            ),
            (
                "kube-system",
                "kube-dns",
                // UDP 53 dropped; the TCP ports keep their endpoints.
                ok(svc(
                    "kube-system",
                    "kube-dns",
                    &["10.96.0.10"],
                    vec![
                        port("dns-tcp", 53, &["10.244.0.2:53", "10.244.0.3:53"]),
                        port("metrics", 9153, &["10.244.0.2:9153", "10.244.0.3:9153"]),
                    ],
                )),
            ),
            (
                "staging",
                "api",
                // Named targetPorts: the numbers come from the slices; the
                // endpoint listed by both slices appears once.
                ok(svc(
                    "staging",
                    "api",
                    &["10.96.34.21"],
                    vec![
                        port(
                            "http",
                            80,
                            &["10.244.1.15:8080", "10.244.2.20:8080", "10.244.3.4:8080"],
                        ),
                        port(
                            "admin",
                            9000,
                            &["10.244.1.15:9901", "10.244.2.20:9901", "10.244.3.4:9901"],
                        ),
                    ],
                )),
            ),
            (
                "staging",
                "billing",
                // Hand-written slice: conditions empty or absent mean ready;
                // the FQDN slice is ignored.
                ok(svc(
                    "staging",
                    "billing",
                    &["10.96.90.4"],
                    vec![port("", 8443, &["192.168.10.7:8443", "192.168.10.8:8443"])],
                )),
            ),
            (
                "staging",
                "catalog",
                ok(svc(
                    "staging",
                    "catalog",
                    &["10.96.45.90"],
                    vec![port("grpc", 9090, &["10.244.2.31:9090", "10.244.3.8:9090"])],
                )),
            ),
            (
                "staging",
                "frontend",
                // LoadBalancer: the ClusterIP only. Not ready and
                // terminating endpoints are left out.
                ok(svc(
                    "staging",
                    "frontend",
                    &["10.96.12.10"],
                    vec![port("", 80, &["10.244.1.12:8080"])],
                )),
            ),
            (
                "staging",
                "mongodb",
                // Headless: a target only.
                ok(svc(
                    "staging",
                    "mongodb",
                    &[],
                    vec![port("mongodb", 27017, &["10.244.3.60:27017"])],
                )),
            ),
            ("staging", "payments", Err(Skip::ExternalName)),
            (
                "staging",
                "ratings",
                ok(svc(
                    "staging",
                    "ratings",
                    &["10.96.41.7", "fd00:10:96::4a1b"],
                    vec![port(
                        "http",
                        8080,
                        &[
                            "10.244.1.51:8080",
                            "10.244.2.52:8080",
                            "[fd00:10:244:1::33]:8080",
                            "[fd00:10:244:2::34]:8080",
                        ],
                    )],
                )),
            ),
            (
                "staging",
                "rent",
                ok(svc(
                    "staging",
                    "rent",
                    &["10.96.77.3"],
                    vec![port("http", 8080, &["10.244.1.40:8080"])],
                )),
            ),
            ("staging", "statsd", Err(Skip::NoTcpPorts)),
        ]
    }

    #[test]
    fn fixtures_translate_exactly() {
        let slices = slices();
        let mut got: Vec<_> = services()
            .iter()
            .map(|s| {
                (
                    s.metadata.namespace.clone().unwrap(),
                    s.metadata.name.clone().unwrap(),
                    service(s, &slices),
                )
            })
            .collect();
        got.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let want: Vec<_> = expected_services()
            .into_iter()
            .map(|(ns, n, r)| (ns.to_owned(), n.to_owned(), r))
            .collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w);
        }
    }

    #[test]
    fn fixture_namespaces() {
        let roles: Vec<_> = namespaces()
            .iter()
            .map(|ns| (ns.metadata.name.clone().unwrap(), namespace(ns)))
            .collect();
        let divert = |name: &str| {
            NamespaceRole::Divert(pb::Namespace {
                name: name.to_owned(),
                shared_namespace: "staging".to_owned(),
                debug: false,
                key_cookie: false,
            })
        };
        assert_eq!(
            roles,
            vec![
                ("kube-system".to_owned(), NamespaceRole::Shared),
                ("staging".to_owned(), NamespaceRole::Shared),
                ("alice".to_owned(), divert("alice")),
                ("bob".to_owned(), divert("bob")),
            ]
        );
    }

    #[test]
    fn namespace_label_must_name_another_valid_namespace() {
        let mut alice = find(&namespaces(), "", "alice").clone();
        let mut with = |value: &str| {
            alice
                .metadata
                .labels
                .get_or_insert_default()
                .insert(SHARED_NAMESPACE_LABEL.to_owned(), value.to_owned());
            namespace(&alice)
        };
        for bad in [
            "",
            "Staging",
            "staging.prod",
            "-staging",
            "staging-",
            &"a".repeat(64),
        ] {
            assert_eq!(
                with(bad),
                NamespaceRole::Skipped(Skip::InvalidSharedNamespace),
                "{bad:?}"
            );
        }
        assert_eq!(
            with("alice"),
            NamespaceRole::Skipped(Skip::SharedNamespaceIsItself)
        );
        assert!(matches!(with(&"a".repeat(63)), NamespaceRole::Divert(_)));
        assert!(
            matches!(with("prod-2"), NamespaceRole::Divert(ns) if ns.shared_namespace == "prod-2")
        );
    }

    #[test]
    fn ready_unset_counts_terminating_never_does() {
        let services = services();
        let mut slices = slices();
        let frontend = find(&services, "staging", "frontend");
        let conditions = |ready, terminating| EndpointConditions {
            ready,
            serving: Some(true),
            terminating,
        };
        let slice = slices
            .iter_mut()
            .find(|s| s.metadata.name.as_deref() == Some("frontend-kgdhg"))
            .unwrap();
        slice.endpoints[0].conditions = Some(conditions(None, Some(true)));
        slice.endpoints[1].conditions = Some(conditions(None, None));
        slice.endpoints[2].conditions = Some(conditions(Some(true), Some(false)));
        assert_eq!(
            service(frontend, &slices),
            Ok(svc(
                "staging",
                "frontend",
                &["10.96.12.10"],
                vec![port("", 80, &["10.244.1.9:8080", "10.244.2.17:8080"])],
            ))
        );
    }

    #[test]
    fn slices_of_other_services_and_namespaces_are_ignored() {
        let services = services();
        let mut slices = slices();
        for s in &mut slices {
            s.metadata.namespace = Some("alice".to_owned());
        }
        // Only alice's frontend slice names frontend now: staging's frontend
        // gets no endpoints from slices in another namespace.
        assert_eq!(
            service(find(&services, "staging", "frontend"), &slices),
            Ok(svc(
                "staging",
                "frontend",
                &["10.96.12.10"],
                vec![port("", 80, &[])]
            ))
        );
    }

    #[test]
    fn cluster_ip_fallback_and_bad_ips() {
        let services = services();
        let mut rent = find(&services, "staging", "rent").clone();
        let spec = rent.spec.as_mut().unwrap();
        spec.cluster_ips = None;
        assert_eq!(
            service(&rent, []).map(|s| s.addresses),
            Ok(vec![ip("10.96.77.3")])
        );
        let spec = rent.spec.as_mut().unwrap();
        spec.cluster_ip = None;
        assert_eq!(service(&rent, []), Err(Skip::NoClusterIp));
        let spec = rent.spec.as_mut().unwrap();
        spec.cluster_ips = Some(vec!["10.96.77.300".to_owned()]);
        assert_eq!(service(&rent, []), Err(Skip::NoClusterIp));
    }

    #[test]
    fn skip_names_are_distinct() {
        let names: BTreeSet<_> = Skip::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names.len(), Skip::ALL.len());
    }
}
