//! The routing table: every service the proxy can route to, by the address
//! clients dial and by namespace and name.
//!
//! A [`Table`] is immutable once built; the proxy swaps whole tables atomically
//! (see [`crate::Tables`]) so readers never block and never see half an update.
//!
//! - `spec`: what a table is built from (the registry file, the
//!   controller's changes);
//! - `build`: building a table and patching one, keeping warm pools;
//! - `route`: the routing rule;
//! - `inbound`: the rule at the receiving pod (step 7);
//! - `hosts`: preview hosts, the key of a request from outside.

mod build;
mod hosts;
mod inbound;
mod route;
mod spec;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

pub use route::{Route, Target};
pub use spec::{
    EndpointSpec, HostSpec, NamespaceSpec, PortSpec, ServiceSpec, SpecError, TablePatch, TableSpec,
};

use crate::metrics::{Metrics, TargetStats};
use crate::upstream::Pool;

/// How a namespace takes part in routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceKind {
    /// `key_cookie`: its pods accept the key cookie
    /// ([`crate::semantics::cookie`]).
    Shared { key_cookie: bool },
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
    /// Preview host (lowercase, no port) → the namespace it stands for.
    hosts: HashMap<Box<str>, Box<str>>,
    service_count: usize,
    /// The services each of this pod's endpoints serves, made on the first
    /// inbound request (see `inbound`); every new table starts without it.
    served: OnceLock<inbound::ServedIn>,
}

impl Table {
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
}
