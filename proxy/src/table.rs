//! The routing table and the routing rule of DESIGN.md.
//!
//! A [`Table`] is immutable once built; the proxy swaps whole tables atomically
//! (see [`crate::Tables`]) so readers never block and never see half an update.
//! It is built from a [`TableSpec`], which the registry file (and later the
//! controller) produces.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;

use crate::upstream::Pool;

/// The input a table is built from: what the registry file describes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TableSpec {
    /// Namespaces that need saying something about. A namespace that is not
    /// listed but holds services is a plain shared namespace.
    #[serde(default)]
    pub namespaces: Vec<NamespaceSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSpec {
    pub name: String,
    /// Set for a divert namespace: the shared namespace it diverts from. This is
    /// how a namespace opts in as a key target.
    #[serde(default)]
    pub shared_namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    /// The addresses clients dial (a Kubernetes ClusterIP, or a loopback address
    /// in bind mode). Each is combined with every port.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<PortSpec>,
    /// Where the proxy sends: `IP` (then the port's `targetPort` is used) or
    /// `IP:PORT` (only for a service with a single port).
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    /// The endpoints' port; defaults to `port`.
    #[serde(default)]
    pub target_port: Option<u16>,
}

/// An endpoint as written: an IP, or an IP and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSpec {
    Ip(IpAddr),
    Socket(SocketAddr),
}

impl<'de> Deserialize<'de> for EndpointSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(EndpointSpec::Socket(sa));
        }
        s.parse::<IpAddr>().map(EndpointSpec::Ip).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid endpoint {s:?}: expected an IP (10.0.0.7, fd00::7) or IP:PORT (10.0.0.7:8080, [fd00::7]:8080)"
            ))
        })
    }
}

/// Why a spec cannot become a table. `path` names the field, as in
/// `services[2].ports[0].name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct SpecError {
    pub path: String,
    pub problem: String,
}

fn spec_err(path: impl Into<String>, problem: impl Into<String>) -> SpecError {
    SpecError {
        path: path.into(),
        problem: problem.into(),
    }
}

/// How a namespace takes part in routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceKind {
    Shared,
    /// A divert namespace of the named shared namespace.
    DivertOf(Box<str>),
}

/// One upstream address and its connection pool. Kept across table swaps for
/// the same address, so a reload does not drop warm connections.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub pool: Arc<Pool>,
}

/// The endpoints of one service port, balanced round-robin per request.
#[derive(Debug)]
pub struct Endpoints {
    list: Box<[Arc<Endpoint>]>,
    next: AtomicUsize,
}

impl Endpoints {
    /// The next endpoint, or `None` when the service has none.
    pub fn pick(&self) -> Option<&Arc<Endpoint>> {
        match self.list.len() {
            0 => None,
            1 => self.list.first(),
            n => self.list.get(self.next.fetch_add(1, Ordering::Relaxed) % n),
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.list.iter()
    }
}

#[derive(Debug)]
pub struct ServicePort {
    pub name: Option<Box<str>>,
    pub port: u16,
    pub endpoints: Endpoints,
}

#[derive(Debug)]
pub struct Service {
    pub name: Box<str>,
    pub namespace: Box<str>,
    pub ports: Box<[ServicePort]>,
}

impl Service {
    /// The port matching `want`: by name when both sides name it, else by number.
    pub fn port_matching(&self, want: &ServicePort) -> Option<&ServicePort> {
        if let Some(name) = want.name.as_deref()
            && let Some(p) = self.ports.iter().find(|p| p.name.as_deref() == Some(name))
        {
            return Some(p);
        }
        self.ports
            .iter()
            .find(|p| p.port == want.port && (p.name.is_none() || want.name.is_none()))
    }
}

/// A dialed address resolved to a service port.
#[derive(Debug, Clone)]
pub struct Dialed {
    pub service: Arc<Service>,
    pub port: usize,
}

impl Dialed {
    pub fn port(&self) -> &ServicePort {
        &self.service.ports[self.port]
    }
}

/// The routing table.
#[derive(Debug, Default)]
pub struct Table {
    version: u64,
    namespaces: HashMap<Box<str>, NamespaceKind>,
    /// namespace → service name → service.
    services: HashMap<Box<str>, HashMap<Box<str>, Arc<Service>>>,
    dialed: HashMap<SocketAddr, Dialed>,
    service_count: usize,
}

impl Table {
    /// Builds a table, reusing the endpoint pools of `previous` for addresses it
    /// already had.
    pub fn build(
        spec: &TableSpec,
        version: u64,
        previous: Option<&Table>,
    ) -> Result<Self, SpecError> {
        let mut namespaces = HashMap::new();
        for (i, ns) in spec.namespaces.iter().enumerate() {
            let path = format!("namespaces[{i}]");
            check_dns_label(&ns.name).map_err(|p| spec_err(format!("{path}.name"), p))?;
            let kind = match &ns.shared_namespace {
                None => NamespaceKind::Shared,
                Some(s) => {
                    check_dns_label(s)
                        .map_err(|p| spec_err(format!("{path}.sharedNamespace"), p))?;
                    if *s == ns.name {
                        return Err(spec_err(
                            format!("{path}.sharedNamespace"),
                            "a namespace cannot divert from itself",
                        ));
                    }
                    NamespaceKind::DivertOf(s.as_str().into())
                }
            };
            if namespaces
                .insert(Box::<str>::from(ns.name.as_str()), kind)
                .is_some()
            {
                return Err(spec_err(
                    format!("{path}.name"),
                    format!("namespace {:?} is listed twice", ns.name),
                ));
            }
        }
        // A shared namespace must be one: diverting from a divert namespace would
        // make chains the routing rule does not define.
        for (i, ns) in spec.namespaces.iter().enumerate() {
            if let Some(s) = &ns.shared_namespace
                && let Some(NamespaceKind::DivertOf(_)) = namespaces.get(s.as_str())
            {
                return Err(spec_err(
                    format!("namespaces[{i}].sharedNamespace"),
                    format!("{s:?} is itself a divert namespace; name a shared namespace"),
                ));
            }
        }

        let old_endpoints: HashMap<SocketAddr, Arc<Endpoint>> = previous
            .map(|t| {
                t.services
                    .values()
                    .flat_map(|m| m.values())
                    .flat_map(|s| s.ports.iter())
                    .flat_map(|p| p.endpoints.iter())
                    .map(|e| (e.addr, e.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut new_endpoints: HashMap<SocketAddr, Arc<Endpoint>> = HashMap::new();
        let mut endpoint = |addr: SocketAddr| -> Arc<Endpoint> {
            new_endpoints
                .entry(addr)
                .or_insert_with(|| {
                    old_endpoints.get(&addr).cloned().unwrap_or_else(|| {
                        Arc::new(Endpoint {
                            addr,
                            pool: Arc::default(),
                        })
                    })
                })
                .clone()
        };

        let mut services: HashMap<Box<str>, HashMap<Box<str>, Arc<Service>>> = HashMap::new();
        let mut dialed = HashMap::new();
        for (i, svc) in spec.services.iter().enumerate() {
            let path = format!("services[{i}]");
            check_dns_label(&svc.name).map_err(|p| spec_err(format!("{path}.name"), p))?;
            check_dns_label(&svc.namespace)
                .map_err(|p| spec_err(format!("{path}.namespace"), p))?;
            if svc.ports.is_empty() {
                return Err(spec_err(
                    format!("{path}.ports"),
                    "a service needs at least one port",
                ));
            }
            let mut ports = Vec::with_capacity(svc.ports.len());
            for (j, p) in svc.ports.iter().enumerate() {
                let ppath = format!("{path}.ports[{j}]");
                if p.port == 0 {
                    return Err(spec_err(format!("{ppath}.port"), "port must be 1-65535"));
                }
                if p.target_port == Some(0) {
                    return Err(spec_err(
                        format!("{ppath}.targetPort"),
                        "targetPort must be 1-65535",
                    ));
                }
                if let Some(name) = &p.name {
                    check_dns_label(name).map_err(|e| spec_err(format!("{ppath}.name"), e))?;
                }
                for (k, q) in svc.ports[..j].iter().enumerate() {
                    if q.port == p.port {
                        return Err(spec_err(
                            format!("{ppath}.port"),
                            format!("port {} is already used by ports[{k}]", p.port),
                        ));
                    }
                    if p.name.is_some() && q.name == p.name {
                        return Err(spec_err(
                            format!("{ppath}.name"),
                            format!("name is already used by ports[{k}]"),
                        ));
                    }
                }
                if svc.ports.len() > 1 && p.name.is_none() {
                    return Err(spec_err(
                        format!("{ppath}.name"),
                        "every port of a multi-port service needs a name",
                    ));
                }
                let target = p.target_port.unwrap_or(p.port);
                let mut list = Vec::with_capacity(svc.endpoints.len());
                for (k, e) in svc.endpoints.iter().enumerate() {
                    let addr = match *e {
                        EndpointSpec::Ip(ip) => SocketAddr::new(ip, target),
                        EndpointSpec::Socket(sa) if svc.ports.len() == 1 => sa,
                        EndpointSpec::Socket(_) => {
                            return Err(spec_err(
                                format!("{path}.endpoints[{k}]"),
                                "IP:PORT endpoints are only allowed for single-port services; give an IP and set targetPort on each port",
                            ));
                        }
                    };
                    list.push(endpoint(addr));
                }
                ports.push(ServicePort {
                    name: p.name.as_deref().map(Into::into),
                    port: p.port,
                    endpoints: Endpoints {
                        list: list.into(),
                        next: AtomicUsize::new(0),
                    },
                });
            }
            let service = Arc::new(Service {
                name: svc.name.as_str().into(),
                namespace: svc.namespace.as_str().into(),
                ports: ports.into(),
            });
            match services
                .entry(svc.namespace.as_str().into())
                .or_default()
                .entry(svc.name.as_str().into())
            {
                Entry::Occupied(_) => {
                    return Err(spec_err(
                        format!("{path}.name"),
                        format!("service {}.{} is listed twice", svc.name, svc.namespace),
                    ));
                }
                Entry::Vacant(v) => {
                    v.insert(service.clone());
                }
            }
            for (k, ip) in svc.addresses.iter().enumerate() {
                for (j, p) in service.ports.iter().enumerate() {
                    let sa = SocketAddr::new(*ip, p.port);
                    if let Some(other) = dialed.insert(
                        sa,
                        Dialed {
                            service: service.clone(),
                            port: j,
                        },
                    ) {
                        return Err(spec_err(
                            format!("{path}.addresses[{k}]"),
                            format!(
                                "{sa} is already the address of {}.{}",
                                other.service.name, other.service.namespace
                            ),
                        ));
                    }
                }
            }
        }
        let service_count = services.values().map(HashMap::len).sum();
        Ok(Table {
            version,
            namespaces,
            services,
            dialed,
            service_count,
        })
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn service_count(&self) -> usize {
        self.service_count
    }

    /// Every address:port clients dial; bind mode listens on each.
    pub fn dialed_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.dialed.keys().copied()
    }

    pub fn by_dialed(&self, addr: SocketAddr) -> Option<&Dialed> {
        self.dialed.get(&addr)
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.services.get(namespace)?.get(name)
    }

    pub fn namespace(&self, name: &str) -> Option<&NamespaceKind> {
        self.namespaces.get(name)
    }

    /// The shared namespace of `ns`: its own name unless it diverts from one.
    pub fn shared_of<'a>(&'a self, ns: &'a str) -> &'a str {
        match self.namespaces.get(ns) {
            Some(NamespaceKind::DivertOf(s)) => s,
            _ => ns,
        }
    }

    /// Applies the routing rule (DESIGN.md steps 1–5) to one request.
    ///
    /// `key` is the request's divert key, if its baggage had one; `own_ns` is the
    /// proxy's own namespace when the own-namespace default is on.
    pub fn route<'t>(
        &'t self,
        dst: SocketAddr,
        key: Option<&str>,
        own_ns: Option<&str>,
    ) -> Route<'t> {
        // 1. Unknown destination: forward unchanged.
        let Some(dialed) = self.dialed.get(&dst) else {
            return Route {
                target: Target::Passthrough(dst),
                reason: Reason::UnknownDestination,
            };
        };
        let service = &dialed.service;
        let port = dialed.port();
        // 2. The shared namespace of the dialed service's namespace.
        let shared = self.shared_of(&service.namespace);
        // 3. The key, or the proxy's own namespace when there is none.
        let (key, defaulted) = match (key, own_ns) {
            (Some(k), _) => (k, false),
            (None, Some(own)) => (own, true),
            (None, None) => {
                return Route {
                    target: Target::Service {
                        service,
                        port,
                        namespace: &service.namespace,
                    },
                    reason: Reason::NoKey,
                };
            }
        };
        // 4. The key counts only for a divert namespace of this shared namespace.
        match self.namespaces.get(key) {
            Some(NamespaceKind::DivertOf(s)) if **s == *shared => {}
            other => {
                let reason = if defaulted {
                    Reason::NoKey
                } else if matches!(other, Some(NamespaceKind::DivertOf(_))) {
                    Reason::KeyOfOtherSharedNamespace
                } else {
                    Reason::KeyNotOptedIn
                };
                return Route {
                    target: Target::Service {
                        service,
                        port,
                        namespace: &service.namespace,
                    },
                    reason,
                };
            }
        }
        // 5. The key's copy of the service if it runs one, else the shared copy.
        if let Some(target) = self.copy_in(key, service, port) {
            let reason = if defaulted {
                Reason::OwnNamespace
            } else {
                Reason::Diverted
            };
            return Route { target, reason };
        }
        if let Some(target) = self.copy_in(shared, service, port) {
            return Route {
                target,
                reason: Reason::SharedFallback,
            };
        }
        // The shared namespace does not run it either (the client dialed a
        // divert-only service): where the client meant to go is all there is.
        Route {
            target: Target::Service {
                service,
                port,
                namespace: &service.namespace,
            },
            reason: Reason::SharedFallback,
        }
    }
}

impl Table {
    /// Namespace `ns`'s copy of `service`, at the port matching `port`.
    fn copy_in<'t>(
        &'t self,
        ns: &str,
        service: &Service,
        port: &ServicePort,
    ) -> Option<Target<'t>> {
        let (namespace, services) = self.services.get_key_value(ns)?;
        let svc = services.get(&*service.name)?;
        let port = svc.port_matching(port)?;
        Some(Target::Service {
            service: svc,
            port,
            namespace,
        })
    }
}

/// Where a request goes.
#[derive(Debug)]
pub enum Target<'t> {
    /// One of a service port's endpoints.
    Service {
        service: &'t Arc<Service>,
        port: &'t ServicePort,
        namespace: &'t str,
    },
    /// Not in the table: exactly where the client dialed.
    Passthrough(SocketAddr),
}

/// Why the rule chose the target. Closed, so it can label metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The key's namespace runs the service.
    Diverted,
    /// No key; the proxy's own divert namespace runs the service.
    OwnNamespace,
    /// The key counts but its namespace does not run the service.
    SharedFallback,
    /// No usable key: sent where the client dialed.
    NoKey,
    /// The key names a namespace that did not opt in as a divert namespace.
    KeyNotOptedIn,
    /// The key names a divert namespace of another shared namespace.
    KeyOfOtherSharedNamespace,
    /// The destination is not in the table.
    UnknownDestination,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Diverted => "diverted",
            Reason::OwnNamespace => "own_namespace",
            Reason::SharedFallback => "shared_fallback",
            Reason::NoKey => "no_key",
            Reason::KeyNotOptedIn => "key_not_opted_in",
            Reason::KeyOfOtherSharedNamespace => "key_of_other_shared_namespace",
            Reason::UnknownDestination => "unknown_destination",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
pub struct Route<'t> {
    pub target: Target<'t>,
    pub reason: Reason,
}

impl Route<'_> {
    /// `name.namespace:port` of the target, or the address for passthrough.
    pub fn describe(&self) -> String {
        match &self.target {
            Target::Service {
                service,
                port,
                namespace,
            } => format!("{}.{}:{}", service.name, namespace, port.port),
            Target::Passthrough(a) => a.to_string(),
        }
    }
}

/// Kubernetes names namespaces, services and port names with RFC 1123 labels.
fn check_dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid name: use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn spec(yaml: &str) -> TableSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const MOVIES: &str = r#"
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
  - { name: rent, namespace: staging, addresses: [10.0.0.2], ports: [{name: http, port: 80, targetPort: 8080}], endpoints: [10.1.0.3] }
  - { name: frontend, namespace: alice, addresses: [10.0.1.1], ports: [{name: http, port: 80, targetPort: 9090}], endpoints: [10.2.0.1] }
  - { name: rent, namespace: bob, addresses: [10.0.2.2], ports: [{name: web, port: 80}], endpoints: [10.3.0.1] }
  - { name: rent, namespace: lonely, addresses: [10.0.3.2], ports: [{port: 80}], endpoints: [10.4.0.1] }
  - { name: frontend, namespace: prod, addresses: [10.9.0.1], ports: [{name: http, port: 80}], endpoints: [10.9.1.1] }
  - { name: frontend, namespace: prod-dev, addresses: [10.9.0.2], ports: [{name: http, port: 80}], endpoints: [10.9.2.1] }
"#;

    fn table() -> Table {
        Table::build(&spec(MOVIES), 1, None).unwrap()
    }

    fn target(t: &Table, dst: &str, key: Option<&str>, own: Option<&str>) -> (String, Reason) {
        let r = t.route(sa(dst), key, own);
        (r.describe(), r.reason)
    }

    #[test]
    fn valid_key_and_the_namespace_runs_the_service() {
        let t = table();
        assert_eq!(
            target(&t, "10.0.0.1:80", Some("alice"), None),
            ("frontend.alice:80".into(), Reason::Diverted)
        );
        let r = t.route(sa("10.0.0.1:80"), Some("alice"), None);
        let Target::Service { port, .. } = r.target else {
            panic!()
        };
        assert_eq!(port.endpoints.pick().unwrap().addr, sa("10.2.0.1:9090"));
    }

    #[test]
    fn valid_key_without_the_service_goes_to_the_shared_copy() {
        let t = table();
        assert_eq!(
            target(&t, "10.0.0.1:80", Some("bob"), None),
            ("frontend.staging:80".into(), Reason::SharedFallback)
        );
        // Even when the client dialed alice's copy directly.
        assert_eq!(
            target(&t, "10.0.1.1:80", Some("bob"), None),
            ("frontend.staging:80".into(), Reason::SharedFallback)
        );
    }

    #[test]
    fn port_matched_by_number_when_one_side_has_no_name() {
        let t = table();
        // staging's rent port is "http", bob's is "web": names differ, both named,
        // so no match by name and no match by number either: shared copy.
        assert_eq!(
            target(&t, "10.0.0.2:80", Some("bob"), None),
            ("rent.staging:80".into(), Reason::SharedFallback)
        );
        let mut s = spec(MOVIES);
        s.services[3].ports[0].name = None;
        let t = Table::build(&s, 2, None).unwrap();
        assert_eq!(
            target(&t, "10.0.0.2:80", Some("bob"), None),
            ("rent.bob:80".into(), Reason::Diverted)
        );
    }

    #[test]
    fn key_of_another_shared_namespace_is_ignored() {
        let t = table();
        assert_eq!(
            target(&t, "10.0.0.1:80", Some("prod-dev"), None),
            (
                "frontend.staging:80".into(),
                Reason::KeyOfOtherSharedNamespace
            )
        );
    }

    #[test]
    fn key_of_a_namespace_that_did_not_opt_in_is_ignored() {
        let t = table();
        for k in ["lonely", "staging", "nosuch", "prod"] {
            assert_eq!(
                target(&t, "10.0.0.2:80", Some(k), None),
                ("rent.staging:80".into(), Reason::KeyNotOptedIn),
                "{k}"
            );
        }
    }

    #[test]
    fn no_key_goes_where_the_client_dialed() {
        let t = table();
        assert_eq!(
            target(&t, "10.0.0.1:80", None, None),
            ("frontend.staging:80".into(), Reason::NoKey)
        );
        assert_eq!(
            target(&t, "10.0.1.1:80", None, None),
            ("frontend.alice:80".into(), Reason::NoKey)
        );
    }

    #[test]
    fn own_namespace_default() {
        let t = table();
        assert_eq!(
            target(&t, "10.0.0.1:80", None, Some("alice")),
            ("frontend.alice:80".into(), Reason::OwnNamespace)
        );
        // An explicit key beats the default.
        assert_eq!(
            target(&t, "10.0.0.2:80", Some("bob"), Some("alice")),
            ("rent.staging:80".into(), Reason::SharedFallback)
        );
        // The default only counts where it would count as a key.
        assert_eq!(
            target(&t, "10.0.0.1:80", None, Some("staging")),
            ("frontend.staging:80".into(), Reason::NoKey)
        );
    }

    #[test]
    fn unknown_destination_passes_through() {
        let t = table();
        assert_eq!(
            target(&t, "192.0.2.1:5432", Some("alice"), None),
            ("192.0.2.1:5432".into(), Reason::UnknownDestination)
        );
        // A known address on another port is unknown too.
        assert_eq!(
            target(&t, "10.0.0.1:81", None, None).1,
            Reason::UnknownDestination
        );
    }

    #[test]
    fn round_robin_over_endpoints() {
        let t = table();
        let d = t.by_dialed(sa("10.0.0.1:80")).unwrap();
        let picks: Vec<_> = (0..4)
            .map(|_| d.port().endpoints.pick().unwrap().addr)
            .collect();
        assert_eq!(picks[0], picks[2]);
        assert_eq!(picks[1], picks[3]);
        assert_ne!(picks[0], picks[1]);
    }

    #[test]
    fn pools_survive_a_rebuild() {
        let t1 = table();
        let t2 = Table::build(&spec(MOVIES), 2, Some(&t1)).unwrap();
        let e1 = t1
            .by_dialed(sa("10.0.0.1:80"))
            .unwrap()
            .port()
            .endpoints
            .pick()
            .unwrap()
            .clone();
        let e2 = t2
            .by_dialed(sa("10.0.0.1:80"))
            .unwrap()
            .port()
            .endpoints
            .pick()
            .unwrap()
            .clone();
        assert!(Arc::ptr_eq(&e1, &e2));
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let cases = [
            (
                "services: [{name: a, namespace: s, ports: []}]",
                "services[0].ports",
            ),
            (
                "services: [{name: A, namespace: s, ports: [{port: 1}]}]",
                "services[0].name",
            ),
            (
                "services: [{name: a, namespace: s, ports: [{port: 0}]}]",
                "services[0].ports[0].port",
            ),
            (
                "services: [{name: a, namespace: s, ports: [{name: x, port: 1}, {port: 2}]}]",
                "services[0].ports[1].name",
            ),
            (
                "services: [{name: a, namespace: s, ports: [{name: x, port: 1}, {name: y, port: 1}]}]",
                "services[0].ports[1].port",
            ),
            (
                "services: [{name: a, namespace: s, ports: [{name: x, port: 1}, {name: y, port: 2}], endpoints: ['10.0.0.1:5']}]",
                "services[0].endpoints[0]",
            ),
            (
                "services: [{name: a, namespace: s, addresses: [10.0.0.1], ports: [{port: 1}]}, {name: b, namespace: s, addresses: [10.0.0.1], ports: [{port: 1}]}]",
                "services[1].addresses[0]",
            ),
            (
                "services: [{name: a, namespace: s, ports: [{port: 1}]}, {name: a, namespace: s, ports: [{port: 2}]}]",
                "services[1].name",
            ),
            (
                "namespaces: [{name: a, sharedNamespace: a}]",
                "namespaces[0].sharedNamespace",
            ),
            (
                "namespaces: [{name: a, sharedNamespace: b}, {name: b, sharedNamespace: c}]",
                "namespaces[0].sharedNamespace",
            ),
            ("namespaces: [{name: a}, {name: a}]", "namespaces[1].name"),
        ];
        for (yaml, path) in cases {
            let err = Table::build(&spec(yaml), 1, None).unwrap_err();
            assert_eq!(err.path, path, "{yaml}: {err}");
        }
    }
}
