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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use divert_core::names::check_dns_label;
use serde::Deserialize;

use crate::metrics::{Metrics, TargetStats};
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
    /// This port's own endpoints as `IP:PORT`, used instead of the service's
    /// `endpoints` (Kubernetes can map one service port to different pod
    /// ports; this is what the controller sends).
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
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
    /// Made on first use: a large table lists many endpoints a pod never
    /// calls, and an empty pool is still a few hundred bytes.
    pool: OnceLock<Arc<Pool>>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            pool: OnceLock::new(),
        }
    }

    /// The endpoint's connection pool.
    pub fn pool(&self) -> &Arc<Pool> {
        self.pool.get_or_init(Arc::default)
    }

    /// Whether a pool was ever made (a request went to this endpoint).
    pub fn has_pool(&self) -> bool {
        self.pool.get().is_some()
    }
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
    /// The addresses clients dial.
    pub addresses: Box<[IpAddr]>,
    pub ports: Box<[ServicePort]>,
    /// The request counters of this service's namespace, found on first use.
    stats: OnceLock<Arc<TargetStats>>,
}

impl Service {
    /// The request counters of requests routed to this service.
    pub fn stats(&self, metrics: &Metrics) -> &Arc<TargetStats> {
        self.stats.get_or_init(|| metrics.target(&self.namespace))
    }

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

/// One namespace's services by name.
type ServicesIn = HashMap<Box<str>, Arc<Service>>;

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
/// The routing table. Cloning it is shallow (services are shared), which is
/// what makes [`Table::patch`] cheap.
#[derive(Debug, Default, Clone)]
pub struct Table {
    version: u64,
    namespaces: HashMap<Box<str>, NamespaceKind>,
    /// namespace → service name → service. Each namespace's map is shared
    /// between table versions until a patch touches it.
    services: HashMap<Box<str>, Arc<ServicesIn>>,
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
            let kind = namespace_kind(ns, &path)?;
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
                t.endpoints()
                    .filter(|e| e.has_pool())
                    .map(|e| (e.addr, e.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut new_endpoints: HashMap<SocketAddr, Arc<Endpoint>> = HashMap::new();
        let mut endpoint = |addr: SocketAddr| -> Arc<Endpoint> {
            new_endpoints
                .entry(addr)
                .or_insert_with(|| {
                    old_endpoints
                        .get(&addr)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Endpoint::new(addr)))
                })
                .clone()
        };

        let mut services: HashMap<Box<str>, ServicesIn> = HashMap::new();
        let mut dialed = HashMap::new();
        for (i, svc) in spec.services.iter().enumerate() {
            let path = format!("services[{i}]");
            let service = Arc::new(build_service(svc, &path, &mut endpoint)?);
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
            services: services
                .into_iter()
                .map(|(ns, m)| (ns, Arc::new(m)))
                .collect(),
            dialed,
            service_count,
        })
    }

    /// The table with `patch` applied, as version `version`.
    ///
    /// Unlike [`Table::build`], which checks a file a person wrote and rejects
    /// it whole, a patch comes from the controller, whose stream must never
    /// stall: an invalid entry is skipped with a warning (a service as if
    /// deleted, a namespace as if shared), and an address claimed by two
    /// services goes to the later one. Untouched namespaces' maps and services
    /// are shared with `self`; endpoint pools are kept for endpoints that stay.
    pub fn patch(&self, patch: &TablePatch, version: u64) -> Table {
        let mut next = if patch.replace {
            // Sized up front: a snapshot of a big cluster would otherwise
            // rehash its maps a dozen times.
            let dialed: usize = patch
                .services
                .iter()
                .map(|s| s.addresses.len() * s.ports.len())
                .sum();
            Table {
                dialed: HashMap::with_capacity(dialed),
                namespaces: HashMap::with_capacity(patch.namespaces.len()),
                ..Table::default()
            }
        } else {
            self.clone()
        };
        next.version = version;

        for name in &patch.deleted_namespaces {
            next.namespaces.remove(name.as_str());
        }
        for ns in &patch.namespaces {
            match namespace_kind(ns, &ns.name) {
                Ok(kind) => {
                    next.namespaces.insert(ns.name.as_str().into(), kind);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "namespace skipped");
                    next.namespaces.remove(ns.name.as_str());
                }
            }
        }
        let chained: Vec<Box<str>> = next
            .namespaces
            .iter()
            .filter(|(_, kind)| match kind {
                NamespaceKind::DivertOf(s) => {
                    matches!(next.namespaces.get(s), Some(NamespaceKind::DivertOf(_)))
                }
                NamespaceKind::Shared => false,
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in chained {
            tracing::warn!(namespace = %name, "its shared namespace is itself a divert namespace; treated as shared");
            next.namespaces.remove(&name);
        }

        // Pools to keep: on a snapshot, every endpoint of the old table; else
        // looked up per service below.
        let all_old: HashMap<SocketAddr, Arc<Endpoint>> = if patch.replace {
            // Only endpoints that were used have anything worth keeping.
            self.endpoints()
                .filter(|e| e.has_pool())
                .map(|e| (e.addr, e.clone()))
                .collect()
        } else {
            HashMap::new()
        };
        for (namespace, name) in &patch.deleted_services {
            next.remove_service(namespace, name);
        }
        for (i, svc) in patch.services.iter().enumerate() {
            let old = self.service(&svc.namespace, &svc.name);
            let mut endpoint = |addr: SocketAddr| -> Arc<Endpoint> {
                let kept = all_old.get(&addr).cloned().or_else(|| {
                    old.and_then(|o| {
                        o.ports
                            .iter()
                            .flat_map(|p| p.endpoints.iter())
                            .find(|e| e.addr == addr)
                            .cloned()
                    })
                });
                kept.unwrap_or_else(|| Arc::new(Endpoint::new(addr)))
            };
            next.remove_service(&svc.namespace, &svc.name);
            let service = match build_service(svc, &format!("services[{i}]"), &mut endpoint) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    tracing::warn!(service = %svc.name, namespace = %svc.namespace, error = %e, "service skipped");
                    continue;
                }
            };
            for ip in service.addresses.iter() {
                for (j, p) in service.ports.iter().enumerate() {
                    let sa = SocketAddr::new(*ip, p.port);
                    let entry = Dialed {
                        service: service.clone(),
                        port: j,
                    };
                    if let Some(other) = next.dialed.insert(sa, entry) {
                        tracing::warn!(address = %sa, from = %format!("{}.{}", other.service.name, other.service.namespace), to = %format!("{}.{}", service.name, service.namespace), "address moved to another service");
                    }
                }
            }
            Arc::make_mut(
                next.services
                    .entry(svc.namespace.as_str().into())
                    .or_default(),
            )
            .insert(svc.name.as_str().into(), service);
        }
        next.service_count = next.services.values().map(|m| m.len()).sum();
        next
    }

    /// Removes a service and the dialed addresses that still lead to it.
    fn remove_service(&mut self, namespace: &str, name: &str) {
        let Some(map) = self.services.get_mut(namespace) else {
            return;
        };
        let Some(old) = Arc::make_mut(map).remove(name) else {
            return;
        };
        if map.is_empty() {
            self.services.remove(namespace);
        }
        for ip in old.addresses.iter() {
            for p in old.ports.iter() {
                let sa = SocketAddr::new(*ip, p.port);
                if self
                    .dialed
                    .get(&sa)
                    .is_some_and(|d| Arc::ptr_eq(&d.service, &old))
                {
                    self.dialed.remove(&sa);
                }
            }
        }
    }

    /// Every endpoint of every service.
    fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.services
            .values()
            .flat_map(|m| m.values())
            .flat_map(|s| s.ports.iter())
            .flat_map(|p| p.endpoints.iter())
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

    /// Every namespace the table knows how to route, and how.
    pub fn namespaces(&self) -> impl Iterator<Item = (&str, &NamespaceKind)> {
        self.namespaces.iter().map(|(n, k)| (&**n, k))
    }

    /// Every service, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values().flat_map(|m| m.values())
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
        // 5. The key's copy of the service if it runs one, else the shared
        // copy. A copy runs when it has ready endpoints on the port: a
        // developer's copy scaled to zero (or not yet ready) must not turn
        // their key into 503s while the shared copy is up.
        if let Some(target) = self
            .copy_in(key, service, port)
            .filter(Target::has_endpoints)
        {
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

impl Target<'_> {
    /// Whether it is a service port with at least one endpoint.
    fn has_endpoints(&self) -> bool {
        match self {
            Target::Service { port, .. } => !port.endpoints.is_empty(),
            Target::Passthrough(_) => false,
        }
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

impl Reason {
    /// What the reason means, for a person reading the routes view.
    pub fn explain(self) -> &'static str {
        match self {
            Reason::Diverted => {
                "the key names a divert namespace of the service's shared namespace, and that namespace runs the service"
            }
            Reason::OwnNamespace => {
                "no key; the proxy's own namespace is a divert namespace that runs the service, so it is used as the key"
            }
            Reason::SharedFallback => {
                "the key counts, but its namespace does not run the service (no copy, or none of its endpoints is ready): sent to the shared copy"
            }
            Reason::NoKey => "no usable key: sent where the client dialed",
            Reason::KeyNotOptedIn => {
                "the key names a namespace that did not opt in as a divert namespace: ignored, sent where the client dialed"
            }
            Reason::KeyOfOtherSharedNamespace => {
                "the key names a divert namespace of another shared namespace: ignored, sent where the client dialed"
            }
            Reason::UnknownDestination => {
                "the destination is not in the routing table: forwarded unchanged"
            }
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

/// Changes to apply to a table (from the controller): upserts replace whole
/// entries.
#[derive(Debug, Clone, Default)]
pub struct TablePatch {
    /// Start from an empty table (a snapshot), keeping only warm pools.
    pub replace: bool,
    pub namespaces: Vec<NamespaceSpec>,
    pub deleted_namespaces: Vec<String>,
    pub services: Vec<ServiceSpec>,
    /// (namespace, name)
    pub deleted_services: Vec<(String, String)>,
}

/// What a namespace entry makes of its namespace; `path` names it in errors.
fn namespace_kind(ns: &NamespaceSpec, path: &str) -> Result<NamespaceKind, SpecError> {
    check_dns_label(&ns.name).map_err(|p| spec_err(format!("{path}.name"), p.to_string()))?;
    match &ns.shared_namespace {
        None => Ok(NamespaceKind::Shared),
        Some(s) => {
            check_dns_label(s)
                .map_err(|p| spec_err(format!("{path}.sharedNamespace"), p.to_string()))?;
            if *s == ns.name {
                return Err(spec_err(
                    format!("{path}.sharedNamespace"),
                    "a namespace cannot divert from itself",
                ));
            }
            Ok(NamespaceKind::DivertOf(s.as_str().into()))
        }
    }
}

/// Checks one service entry and builds it; `endpoint` hands out the pool of
/// each endpoint address (a kept one or a new one).
fn build_service(
    svc: &ServiceSpec,
    path: &str,
    endpoint: &mut impl FnMut(SocketAddr) -> Arc<Endpoint>,
) -> Result<Service, SpecError> {
    check_dns_label(&svc.name).map_err(|p| spec_err(format!("{path}.name"), p.to_string()))?;
    check_dns_label(&svc.namespace)
        .map_err(|p| spec_err(format!("{path}.namespace"), p.to_string()))?;
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
            check_dns_label(name).map_err(|e| spec_err(format!("{ppath}.name"), e.to_string()))?;
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
        let list: Vec<Arc<Endpoint>> = if p.endpoints.is_empty() {
            let target = p.target_port.unwrap_or(p.port);
            let mut list = Vec::with_capacity(svc.endpoints.len());
            for (k, e) in svc.endpoints.iter().enumerate() {
                let addr = match *e {
                    EndpointSpec::Ip(ip) => SocketAddr::new(ip, target),
                    EndpointSpec::Socket(sa) if svc.ports.len() == 1 => sa,
                    EndpointSpec::Socket(_) => {
                        return Err(spec_err(
                            format!("{path}.endpoints[{k}]"),
                            "IP:PORT endpoints are only allowed for single-port services; give an IP and set targetPort on each port, or list each port's endpoints",
                        ));
                    }
                };
                list.push(endpoint(addr));
            }
            list
        } else {
            p.endpoints.iter().map(|&addr| endpoint(addr)).collect()
        };
        ports.push(ServicePort {
            name: p.name.as_deref().map(Into::into),
            port: p.port,
            endpoints: Endpoints {
                list: list.into(),
                next: AtomicUsize::new(0),
            },
        });
    }
    Ok(Service {
        name: svc.name.as_str().into(),
        namespace: svc.namespace.as_str().into(),
        addresses: svc.addresses.clone().into(),
        ports: ports.into(),
        stats: OnceLock::new(),
    })
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
    fn a_copy_with_no_ready_endpoints_does_not_run_the_service() {
        // Alice's frontend scaled to zero: the Service is there, its
        // endpoints are not. Her key (and her own-namespace default) falls
        // back to staging's copy instead of failing with 503.
        let yaml = MOVIES.replace(
            "ports: [{name: http, port: 80, targetPort: 9090}], endpoints: [10.2.0.1]",
            "ports: [{name: http, port: 80, targetPort: 9090}], endpoints: []",
        );
        assert_ne!(yaml, MOVIES);
        let t = Table::build(&spec(&yaml), 1, None).unwrap();
        assert_eq!(
            target(&t, "10.0.0.1:80", Some("alice"), None),
            ("frontend.staging:80".into(), Reason::SharedFallback)
        );
        assert_eq!(
            target(&t, "10.0.0.1:80", None, Some("alice")),
            ("frontend.staging:80".into(), Reason::SharedFallback)
        );
        // The shared copy without endpoints is still where requests go (and
        // get 503): there is nothing else to fall back to.
        let yaml = MOVIES.replace(
            "ports: [{name: http, port: 80, targetPort: 8080}], endpoints: [10.1.0.1, 10.1.0.2]",
            "ports: [{name: http, port: 80, targetPort: 8080}], endpoints: []",
        );
        let t = Table::build(&spec(&yaml), 1, None).unwrap();
        assert_eq!(
            target(&t, "10.0.0.1:80", Some("bob"), None),
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
        let e1 = t1
            .by_dialed(sa("10.0.0.1:80"))
            .unwrap()
            .port()
            .endpoints
            .pick()
            .unwrap()
            .clone();
        // Only a pool in use is worth keeping; an unused endpoint makes none.
        assert!(!e1.has_pool());
        let pool = e1.pool().clone();
        let t2 = Table::build(&spec(MOVIES), 2, Some(&t1)).unwrap();
        let e2 = t2
            .by_dialed(sa("10.0.0.1:80"))
            .unwrap()
            .port()
            .endpoints
            .pick()
            .unwrap()
            .clone();
        assert!(Arc::ptr_eq(&e1, &e2));
        assert!(Arc::ptr_eq(&pool, e2.pool()));
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

    fn service_spec(yaml: &str) -> ServiceSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn ns_spec(name: &str, shared: Option<&str>) -> NamespaceSpec {
        NamespaceSpec {
            name: name.into(),
            shared_namespace: shared.map(Into::into),
        }
    }

    #[test]
    fn a_patch_changes_routes_and_shares_what_it_did_not_touch() {
        let t = table();
        assert_eq!(
            target(&t, "10.0.0.2:80", Some("alice"), None).0,
            "rent.staging:80"
        );
        let p = TablePatch {
            services: vec![service_spec(
                "{name: rent, namespace: alice, addresses: [10.0.1.2], ports: [{name: http, port: 80, endpoints: ['10.2.0.9:8080']}]}",
            )],
            ..TablePatch::default()
        };
        let n = t.patch(&p, 2);
        assert_eq!(n.version(), 2);
        assert_eq!(n.service_count(), t.service_count() + 1);
        assert_eq!(
            target(&n, "10.0.0.2:80", Some("alice"), None),
            ("rent.alice:80".into(), Reason::Diverted)
        );
        // The patched table dials the new address; the old one is unchanged.
        assert!(n.by_dialed(sa("10.0.1.2:80")).is_some());
        assert!(t.by_dialed(sa("10.0.1.2:80")).is_none());
        // staging's services are the same objects in both.
        assert!(Arc::ptr_eq(&t.services["staging"], &n.services["staging"]));
        assert!(!Arc::ptr_eq(&t.services["alice"], &n.services["alice"]));
    }

    #[test]
    fn a_patch_deletes_services_and_their_addresses() {
        let t = table();
        let p = TablePatch {
            deleted_services: vec![("alice".into(), "frontend".into())],
            deleted_namespaces: vec!["bob".into()],
            ..TablePatch::default()
        };
        let n = t.patch(&p, 2);
        assert_eq!(
            target(&n, "10.0.0.1:80", Some("alice"), None),
            ("frontend.staging:80".into(), Reason::SharedFallback)
        );
        assert_eq!(
            target(&n, "10.0.1.1:80", None, None),
            ("10.0.1.1:80".into(), Reason::UnknownDestination)
        );
        // bob is no longer a divert namespace: his key does not count.
        assert_eq!(
            target(&n, "10.0.0.2:80", Some("bob"), None).1,
            Reason::KeyNotOptedIn
        );
    }

    #[test]
    fn a_patch_keeps_the_pools_of_endpoints_that_stay() {
        let t = table();
        let before = t.service("staging", "frontend").unwrap().ports[0]
            .endpoints
            .iter()
            .find(|e| e.addr == sa("10.1.0.1:8080"))
            .unwrap()
            .clone();
        let p = TablePatch {
            services: vec![service_spec(
                "{name: frontend, namespace: staging, addresses: [10.0.0.1], ports: [{name: http, port: 80, targetPort: 8080}], endpoints: [10.1.0.1, 10.1.0.7]}",
            )],
            ..TablePatch::default()
        };
        for (n, replace) in [
            (t.patch(&p, 2), false),
            (
                t.patch(
                    &TablePatch {
                        replace: true,
                        ..p.clone()
                    },
                    2,
                ),
                true,
            ),
        ] {
            let eps = &n.service("staging", "frontend").unwrap().ports[0].endpoints;
            assert_eq!(eps.len(), 2);
            let kept = eps.iter().find(|e| e.addr == before.addr).unwrap();
            assert!(Arc::ptr_eq(kept, &before), "replace: {replace}");
        }
        // A snapshot forgets everything it does not list.
        let snap = t.patch(&TablePatch { replace: true, ..p }, 3);
        assert_eq!(snap.service_count(), 1);
        assert!(snap.namespace("alice").is_none());
    }

    #[test]
    fn a_patch_skips_what_is_invalid_and_lets_the_later_service_have_an_address() {
        let t = table();
        let p = TablePatch {
            namespaces: vec![ns_spec("carol", Some("alice")), ns_spec("Bad_Name", None)],
            services: vec![
                // Invalid: replaced by nothing, so the old rent.staging goes.
                service_spec("{name: rent, namespace: staging, addresses: [10.0.0.2], ports: []}"),
                // Takes frontend.staging's address.
                service_spec(
                    "{name: intruder, namespace: prod, addresses: [10.0.0.1], ports: [{name: http, port: 80}], endpoints: [10.9.9.9]}",
                ),
            ],
            ..TablePatch::default()
        };
        let n = t.patch(&p, 2);
        assert!(n.service("staging", "rent").is_none());
        assert_eq!(
            target(&n, "10.0.0.2:80", None, None).1,
            Reason::UnknownDestination
        );
        assert_eq!(target(&n, "10.0.0.1:80", None, None).0, "intruder.prod:80");
        // carol diverts from a divert namespace: treated as shared.
        assert!(n.namespace("carol").is_none());
        assert!(n.namespace("Bad_Name").is_none());
        // Deleting frontend.staging later must not take the intruder's address.
        let n2 = n.patch(
            &TablePatch {
                deleted_services: vec![("staging".into(), "frontend".into())],
                ..TablePatch::default()
            },
            3,
        );
        assert_eq!(target(&n2, "10.0.0.1:80", None, None).0, "intruder.prod:80");
    }
}
