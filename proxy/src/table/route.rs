//! The routing rule (ARCHITECTURE.md, "The routing rule"): where one request
//! goes, given where it was dialed and its key, and the [`Reason`] why.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use super::{NamespaceKind, Service, ServicePort, Table};
use crate::reason::Reason;

impl Table {
    /// Applies the routing rule (ARCHITECTURE.md steps 1–5) to one request.
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

    /// Namespace `ns`'s copy of `service`, at the port matching `port`.
    pub(super) fn copy_in<'t>(
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
    pub(super) fn has_endpoints(&self) -> bool {
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

#[derive(Debug)]
pub struct Route<'t> {
    pub target: Target<'t>,
    pub reason: Reason,
}

/// `name.namespace:port` of the target, or the address for passthrough.
impl fmt::Display for Route<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Service {
                service,
                port,
                namespace,
            } => write!(f, "{}.{}:{}", service.name, namespace, port.port),
            Target::Passthrough(a) => a.fmt(f),
        }
    }
}
