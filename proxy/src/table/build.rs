//! Building a table and patching one. Both go the same way: each namespace
//! is classified by [`namespace_kind`], each service checked and made by
//! [`build_service`] with its endpoints from a [`CarryOver`], and inserted
//! by [`Table::insert`]. They differ only in what they do with a bad entry:
//! a file a person wrote ([`Table::build`]) is rejected whole, naming the
//! field; the controller's stream ([`Table::patch`]) must never stall, so a
//! bad entry is skipped with a warning.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};

use divert_core::names::check_dns_label;

use super::hosts::Strictness;
use super::spec::spec_err;
use super::{
    Dialed, Endpoint, EndpointSpec, Endpoints, NamespaceKind, NamespaceSpec, Service, ServicePort,
    ServiceSpec, SpecError, Table, TablePatch, TableSpec,
};

/// The endpoints a new table takes over from the one it replaces, so that
/// a reload or an update keeps the warm connection pools of the addresses
/// that stay. Each address gets one [`Endpoint`] in the new table.
struct CarryOver<'t> {
    /// Endpoints of the old table that were used (only they have a pool
    /// worth keeping), when the whole table is rebuilt.
    warm: HashMap<SocketAddr, Arc<Endpoint>>,
    /// The table replaced: a service keeps the endpoints it had there.
    old: Option<&'t Table>,
    /// Endpoints handed out so far.
    given: HashMap<SocketAddr, Arc<Endpoint>>,
}

impl<'t> CarryOver<'t> {
    /// For a table rebuilt whole from `old`: every used endpoint of it is
    /// kept, wherever it shows up in the new table.
    fn whole(old: Option<&'t Table>) -> CarryOver<'t> {
        let warm = old
            .map(|t| {
                t.endpoints()
                    .filter(|e| e.has_pool())
                    .map(|e| (e.addr, e.clone()))
                    .collect()
            })
            .unwrap_or_default();
        CarryOver {
            warm,
            old,
            given: HashMap::new(),
        }
    }

    /// For a table patched in place: each service keeps its own endpoints.
    fn per_service(old: &'t Table) -> CarryOver<'t> {
        CarryOver {
            warm: HashMap::new(),
            old: Some(old),
            given: HashMap::new(),
        }
    }

    /// The endpoint for `addr` of service `namespace/name`: one already
    /// handed out, a kept one, or a new one.
    fn endpoint(&mut self, addr: SocketAddr, namespace: &str, name: &str) -> Arc<Endpoint> {
        if let Some(e) = self.given.get(&addr) {
            return e.clone();
        }
        let kept = self.warm.get(&addr).cloned().or_else(|| {
            self.old?
                .service(namespace, name)?
                .ports
                .iter()
                .flat_map(|p| p.endpoints.iter())
                .find(|e| e.addr == addr)
                .cloned()
        });
        let e = kept.unwrap_or_else(|| Arc::new(Endpoint::new(addr)));
        self.given.insert(addr, e.clone());
        e
    }
}

impl Table {
    /// Builds a table from a spec, all or nothing, reusing the endpoint pools
    /// of `previous` for addresses it already had.
    pub fn build(
        spec: &TableSpec,
        version: u64,
        previous: Option<&Table>,
    ) -> Result<Self, SpecError> {
        let mut table = Table {
            version,
            ..Table::default()
        };
        for (i, ns) in spec.namespaces.iter().enumerate() {
            let path = format!("namespaces[{i}]");
            let kind = namespace_kind(ns, &path)?;
            if table
                .namespaces
                .insert(ns.name.as_str().into(), kind)
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
                && let Some(NamespaceKind::DivertOf(_)) = table.namespaces.get(s.as_str())
            {
                return Err(spec_err(
                    format!("namespaces[{i}].sharedNamespace"),
                    format!("{s:?} is itself a divert namespace; name a shared namespace"),
                ));
            }
        }

        let mut carry = CarryOver::whole(previous);
        for (i, svc) in spec.services.iter().enumerate() {
            let path = format!("services[{i}]");
            let service = build_service(svc, &path, &mut carry)?;
            if table.service(&svc.namespace, &svc.name).is_some() {
                return Err(spec_err(
                    format!("{path}.name"),
                    format!("service {}.{} is listed twice", svc.name, svc.namespace),
                ));
            }
            if let Some((sa, other)) = table.insert(Arc::new(service)).first() {
                let k = svc
                    .addresses
                    .iter()
                    .position(|ip| *ip == sa.ip())
                    .unwrap_or_default();
                return Err(spec_err(
                    format!("{path}.addresses[{k}]"),
                    format!(
                        "{sa} is already the address of {}.{}",
                        other.service.name, other.service.namespace
                    ),
                ));
            }
        }
        table.set_hosts(&spec.hosts, "hosts", Strictness::Reject)?;
        table.service_count = table.services.values().map(|m| m.len()).sum();
        Ok(table)
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
        let (mut next, mut carry) = if patch.replace {
            // Sized up front: a snapshot of a big cluster would otherwise
            // rehash its maps a dozen times.
            let dialed: usize = patch
                .services
                .iter()
                .map(|s| s.addresses.len() * s.ports.len())
                .sum();
            let empty = Table {
                dialed: HashMap::with_capacity(dialed),
                namespaces: HashMap::with_capacity(patch.namespaces.len()),
                ..Table::default()
            };
            (empty, CarryOver::whole(Some(self)))
        } else {
            (self.clone(), CarryOver::per_service(self))
        };
        next.version = version;
        // What the old table's endpoints served is not what the new one's do.
        next.served = OnceLock::new();

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
                NamespaceKind::Shared { .. } => false,
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in chained {
            tracing::warn!(namespace = %name, "its shared namespace is itself a divert namespace; treated as shared");
            next.namespaces.remove(&name);
        }

        for (namespace, name) in &patch.deleted_services {
            next.remove_service(namespace, name);
        }
        for (i, svc) in patch.services.iter().enumerate() {
            next.remove_service(&svc.namespace, &svc.name);
            let service = match build_service(svc, &format!("services[{i}]"), &mut carry) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    tracing::warn!(service = %svc.name, namespace = %svc.namespace, error = %e, "service skipped");
                    continue;
                }
            };
            for (sa, other) in next.insert(service.clone()) {
                tracing::warn!(address = %sa, from = %format!("{}.{}", other.service.name, other.service.namespace), to = %format!("{}.{}", service.name, service.namespace), "address moved to another service");
            }
        }
        if let Some(hosts) = &patch.hosts {
            // Skipping never fails.
            let _ = next.set_hosts(hosts, "hosts", Strictness::Skip);
        } else if patch.replace {
            next.hosts = self.hosts.clone();
        }
        next.service_count = next.services.values().map(|m| m.len()).sum();
        next
    }

    /// Adds a service under its namespace and name, and each of its
    /// addresses and ports as a dialed address. Returns the dialed entries it
    /// took over from other services.
    fn insert(&mut self, service: Arc<Service>) -> Vec<(SocketAddr, Dialed)> {
        let mut displaced = Vec::new();
        for ip in service.addresses.iter() {
            for (j, p) in service.ports.iter().enumerate() {
                let sa = SocketAddr::new(*ip, p.port);
                let entry = Dialed {
                    service: service.clone(),
                    port: j,
                };
                if let Some(other) = self.dialed.insert(sa, entry) {
                    displaced.push((sa, other));
                }
            }
        }
        Arc::make_mut(self.services.entry(service.namespace.clone()).or_default())
            .insert(service.name.clone(), service);
        displaced
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
}

/// What a namespace entry makes of its namespace; `path` names it in errors.
fn namespace_kind(ns: &NamespaceSpec, path: &str) -> Result<NamespaceKind, SpecError> {
    check_dns_label(&ns.name).map_err(|p| spec_err(format!("{path}.name"), p.to_string()))?;
    match &ns.shared_namespace {
        None => Ok(NamespaceKind::Shared {
            key_cookie: ns.key_cookie,
        }),
        Some(s) => {
            check_dns_label(s)
                .map_err(|p| spec_err(format!("{path}.sharedNamespace"), p.to_string()))?;
            if ns.key_cookie {
                return Err(spec_err(
                    format!("{path}.keyCookie"),
                    "only a shared namespace allows the key cookie",
                ));
            }
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

/// Checks one service entry and builds it, with its endpoints from `carry`.
fn build_service(
    svc: &ServiceSpec,
    path: &str,
    carry: &mut CarryOver<'_>,
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
                list.push(carry.endpoint(addr, &svc.namespace, &svc.name));
            }
            list
        } else {
            p.endpoints
                .iter()
                .map(|&addr| carry.endpoint(addr, &svc.namespace, &svc.name))
                .collect()
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
