//! The istio driver: the routing rule written as Istio's own
//! VirtualServices, for pods whose proxy is Istio's (ARCHITECTURE.md,
//! "Beside a mesh").
//!
//! Istio takes one VirtualService per host for its sidecars (a second one
//! for the same host is ignored, IST0109), so every divert namespace's
//! routes for one service live in one object:
//! - **Mesh routes.** For each Service `N` of a shared namespace `S` that at
//!   least one divert namespace runs, a VirtualService `divert-N` in `S` for
//!   the host `N.S.svc.<domain>`, and one in each divert namespace `K` that
//!   runs `N`, for `N.K.svc.<domain>` (a pod of `K` that dials `N` reaches
//!   its own copy first). For each port `P`, in this order:
//!   1. a request whose `baggage` names `K` (a divert namespace of `S`) goes
//!      to `N.K:P` if `K` runs `N` with `P`, else to the shared copy;
//!   2. a request from a pod of `K` that runs `N` goes to `N.K:P` (the own
//!      namespace default: `sourceNamespace`, the namespace of the sidecar
//!      that routes the request, which is the caller's);
//!   3. anything else goes where it was sent.
//! - **Edge copies.** Each VirtualService of `S` bound to a gateway gets a
//!   copy in each divert namespace `K`, with `K`'s hosts (as the Ingress
//!   and HTTPRoute copies, [`super::rename`]), the key added to every
//!   request (`headers.request.add`), and destinations qualified: a
//!   gateway's routes are not the mesh's, so a destination `K` runs is sent
//!   to `K`'s copy directly, and any other to `S`'s.
//!
//! A VirtualService of the user's for a host that a mesh route needs is left
//! alone, and the mesh route is not made ([`super::plan::Problem`]): Istio
//! would use only one of the two.

use std::collections::{BTreeMap, BTreeSet};

use divert_core::names::BAGGAGE_KEY;
use k8s_openapi::api::core::v1::Service;
use kube::api::{ApiResource, DynamicObject, ObjectMeta, TypeMeta};
use serde_json::{Map, Value, json};

use super::plan::{Kind, Problem, copy_meta, in_namespace, is_managed, is_own_service};
use super::rename::{Rename, RenameError};
use super::sources::{Key, Objects, Sources};
use divert_core::names::annotation::COPIED_FROM;
use divert_core::names::label::{MANAGED_BY, MANAGED_BY_CONTROLLER};

/// The prefix of a mesh route's name: `divert-<service>`.
pub const MESH_ROUTE_PREFIX: &str = "divert-";
/// The gateway name that stands for every sidecar of the mesh.
const MESH: &str = "mesh";

/// Istio's VirtualService (`networking.istio.io/v1`), which has no type in
/// `k8s-openapi`.
pub fn virtual_service() -> ApiResource {
    ApiResource {
        group: "networking.istio.io".to_owned(),
        version: "v1".to_owned(),
        api_version: "networking.istio.io/v1".to_owned(),
        kind: "VirtualService".to_owned(),
        plural: "virtualservices".to_owned(),
    }
}

/// What the istio driver reads besides the copier's other sources.
#[derive(Debug, Clone)]
pub struct IstioSources {
    /// The cluster's DNS domain (`cluster.local`), for the hosts written.
    pub domain: String,
    /// Every VirtualService; `None` until listed (until then none is made
    /// or removed).
    pub virtual_services: Option<Objects<DynamicObject>>,
    /// The cluster does not serve the kind (no Istio CRDs).
    pub missing: bool,
}

/// The VirtualServices the istio driver wants, and the ones it cannot make.
pub fn plan(sources: &Sources, istio: &IstioSources) -> (Vec<DynamicObject>, Vec<Problem>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    if istio.missing {
        problems.push(Problem {
            kind: Kind::VirtualService,
            namespace: String::new(),
            name: String::new(),
            why: "this cluster serves no VirtualService kind, so the istio driver writes no \
                  route and pods that Istio injects are not diverted: install Istio (its CRDs)"
                .to_owned(),
        });
        return (out, problems);
    }
    let Some(existing) = &istio.virtual_services else {
        return (out, problems);
    };
    let taken = mesh_hosts(existing, &istio.domain);
    let mut by_shared: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (namespace, divert) in &sources.divert {
        by_shared
            .entry(divert.shared.as_str())
            .or_default()
            .push(namespace.as_str());
    }
    for (shared, diverts) in &by_shared {
        let runs = |k: &str, n: &str| {
            sources
                .services
                .get(&(k.to_owned(), n.to_owned()))
                .filter(|s| !is_own_service(s))
                .map(ports)
        };
        for (key, service) in in_namespace(&sources.services, shared) {
            if is_managed(&service.metadata) {
                continue;
            }
            let name = key.1.as_str();
            let running: Vec<(&str, BTreeSet<i32>)> = diverts
                .iter()
                .filter_map(|k| Some((*k, runs(k, name)?)))
                .collect();
            if running.is_empty() {
                continue;
            }
            let routes = Routes {
                service: name,
                shared,
                diverts,
                running: &running,
                shared_ports: ports(service),
                domain: &istio.domain,
            };
            let homes = std::iter::once((*shared, routes.shared_ports.clone()))
                .chain(running.iter().map(|(k, p)| (*k, p.clone())));
            for (home, home_ports) in homes {
                let host = fqdn(name, home, &istio.domain);
                if let Some(theirs) = taken.get(&host) {
                    problems.push(Problem {
                        kind: Kind::VirtualService,
                        namespace: home.to_owned(),
                        name: format!("{MESH_ROUTE_PREFIX}{name}"),
                        why: format!(
                            "the VirtualService {}/{} of the user's already routes {host}, and \
                             Istio uses one VirtualService per host: requests to it are not \
                             diverted (move its routes into a VirtualService for another host, \
                             or divert with Divert's own proxies)",
                            theirs.0, theirs.1
                        ),
                    });
                    continue;
                }
                out.push(routes.object(home, &home_ports));
            }
        }
        for (key, vs) in in_namespace(existing, shared) {
            if is_managed(&vs.metadata) {
                continue;
            }
            for k in diverts {
                let Some(divert) = sources.divert.get(*k) else {
                    continue;
                };
                let rename = Rename {
                    shared,
                    namespace: k,
                    template: divert.template.as_deref(),
                };
                let runs = |n: &str| {
                    sources
                        .services
                        .get(&((*k).to_owned(), n.to_owned()))
                        .is_some_and(|s| !is_own_service(s))
                };
                match copy_gateway_routes(vs, &rename, &istio.domain, &runs) {
                    Ok(Some(copy)) => out.push(copy),
                    Ok(None) => {}
                    Err(e) => problems.push(Problem {
                        kind: Kind::VirtualService,
                        namespace: (*k).to_owned(),
                        name: key.1.clone(),
                        why: format!("the copy of {}/{}: {e}", key.0, key.1),
                    }),
                }
            }
        }
    }
    (out, problems)
}

/// The hosts that the user's VirtualServices route for the mesh's sidecars,
/// fully qualified, with the VirtualService that routes each.
fn mesh_hosts<'a>(existing: &'a Objects<DynamicObject>, domain: &str) -> BTreeMap<String, &'a Key> {
    let mut taken = BTreeMap::new();
    for (key, vs) in existing {
        if is_managed(&vs.metadata) {
            continue;
        }
        let spec = vs.data.get("spec");
        let gateways = strings(spec.and_then(|s| s.get("gateways")));
        if !gateways.is_empty() && !gateways.contains(&MESH) {
            continue;
        }
        for host in strings(spec.and_then(|s| s.get("hosts"))) {
            taken.insert(qualify(host, &key.0, domain), key);
        }
    }
    taken
}

/// The items of a JSON array (none if it is not one).
fn items(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

/// The strings of a JSON array.
fn strings(v: Option<&Value>) -> Vec<&str> {
    items(v).filter_map(Value::as_str).collect()
}

/// `host` as Istio reads it in a VirtualService of `namespace`: a name
/// without a dot is a Service of that namespace.
fn qualify(host: &str, namespace: &str, domain: &str) -> String {
    if host.contains('.') {
        host.trim_end_matches('.').to_ascii_lowercase()
    } else {
        fqdn(host, namespace, domain)
    }
}

fn fqdn(service: &str, namespace: &str, domain: &str) -> String {
    format!("{service}.{namespace}.svc.{domain}")
}

/// The TCP ports of a Service.
fn ports(service: &Service) -> BTreeSet<i32> {
    service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .map(|p| p.port)
        .collect()
}

/// A header match, RE2, whole value: the W3C baggage list (RFC 9110 lists,
/// so several `baggage` headers are matched joined with commas) has a
/// member `okteto-divert=<namespace>`, with optional whitespace and
/// properties.
pub fn baggage_regex(namespace: &str) -> String {
    format!("^(.*,)?[ \\t]*{BAGGAGE_KEY}[ \\t]*=[ \\t]*{namespace}[ \\t]*(;[^,]*)?(,.*)?$")
}

/// The mesh routes of one Service.
struct Routes<'a> {
    service: &'a str,
    shared: &'a str,
    /// Every divert namespace of `shared`.
    diverts: &'a [&'a str],
    /// The divert namespaces that run the Service, with their ports.
    running: &'a [(&'a str, BTreeSet<i32>)],
    shared_ports: BTreeSet<i32>,
    domain: &'a str,
}

impl Routes<'_> {
    /// The VirtualService for the Service's host in `home` (the shared
    /// namespace, or a divert namespace that runs it), whose copy serves
    /// `home_ports`.
    fn object(&self, home: &str, home_ports: &BTreeSet<i32>) -> DynamicObject {
        let name = self.service;
        let destination = |ns: &str, port: i32| json!({"destination": {"host": fqdn(name, ns, self.domain), "port": {"number": port}}});
        let header = |k: &str, port: i32| json!({"port": port, "headers": {"baggage": {"regex": baggage_regex(k)}}});
        let mut http = Vec::new();
        for &port in home_ports {
            let runs = |k: &str| {
                self.running
                    .iter()
                    .any(|(r, ports)| *r == k && ports.contains(&port))
            };
            // Keys first, whoever calls.
            for (k, _) in self.running.iter().filter(|(k, _)| runs(k)) {
                http.push(json!({
                    "name": format!("key-{k}-{port}"),
                    "match": [header(k, port)],
                    "route": [destination(k, port)],
                }));
            }
            let others: Vec<Value> = self
                .diverts
                .iter()
                .filter(|k| !runs(k))
                .map(|k| header(k, port))
                .collect();
            if !others.is_empty() {
                let to = if self.shared_ports.contains(&port) {
                    self.shared
                } else {
                    home
                };
                http.push(json!({
                    "name": format!("key-shared-{port}"),
                    "match": others,
                    "route": [destination(to, port)],
                }));
            }
            // Then the caller's own namespace.
            for (k, _) in self.running.iter().filter(|(k, _)| runs(k) && *k != home) {
                http.push(json!({
                    "name": format!("own-{k}-{port}"),
                    "match": [{"port": port, "sourceNamespace": k}],
                    "route": [destination(k, port)],
                }));
            }
            http.push(json!({
                "name": format!("default-{port}"),
                "match": [{"port": port}],
                "route": [destination(home, port)],
            }));
        }
        let mut labels = BTreeMap::new();
        labels.insert(MANAGED_BY.to_owned(), MANAGED_BY_CONTROLLER.to_owned());
        let mut annotations = BTreeMap::new();
        annotations.insert(COPIED_FROM.to_owned(), format!("{}/{name}", self.shared));
        dynamic(
            ObjectMeta {
                name: Some(format!("{MESH_ROUTE_PREFIX}{name}")),
                namespace: Some(home.to_owned()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            json!({
                "hosts": [fqdn(name, home, self.domain)],
                "exportTo": ["*"],
                "http": http,
            }),
        )
    }
}

fn dynamic(metadata: ObjectMeta, spec: Value) -> DynamicObject {
    let resource = virtual_service();
    DynamicObject {
        types: Some(TypeMeta {
            api_version: resource.api_version,
            kind: resource.kind,
        }),
        metadata,
        data: json!({ "spec": spec }),
    }
}

/// The copy of a gateway's VirtualService of the shared namespace for one
/// divert namespace; `None` if it is not bound to a gateway or has no host
/// with a preview host. `runs` says whether the divert namespace runs a
/// Service of that name.
fn copy_gateway_routes(
    vs: &DynamicObject,
    rename: &Rename<'_>,
    domain: &str,
    runs: &dyn Fn(&str) -> bool,
) -> Result<Option<DynamicObject>, RenameError> {
    let shared = rename.shared;
    let Some(spec) = vs.data.get("spec").and_then(Value::as_object) else {
        return Ok(None);
    };
    let gateways: Vec<Value> = strings(spec.get("gateways"))
        .into_iter()
        .filter(|g| *g != MESH)
        .map(|g| {
            // A gateway without a namespace is one of the route's own.
            Value::String(if g.contains('/') {
                g.to_owned()
            } else {
                format!("{shared}/{g}")
            })
        })
        .collect();
    if gateways.is_empty() || spec.contains_key("delegate") {
        return Ok(None);
    }
    let mut hosts = Vec::new();
    for host in strings(spec.get("hosts")) {
        let local = !host.contains('.') || host.contains(".svc.") || host.ends_with(".svc");
        if local {
            continue;
        }
        hosts.extend(rename.host(host)?.map(Value::String));
    }
    if hosts.is_empty() {
        return Ok(None);
    }
    let member = format!("{BAGGAGE_KEY}={}", rename.namespace);
    // A delegated route hands its requests to another VirtualService, which
    // is not copied: the route is left out (without its delegate it would
    // route nowhere, which Istio rejects).
    let mut http: Vec<Value> = items(spec.get("http"))
        .filter(|r| r.get("delegate").is_none())
        .cloned()
        .collect();
    if http.is_empty() {
        return Ok(None);
    }
    for route in http.iter_mut().filter_map(Value::as_object_mut) {
        add_baggage(route, &member);
        for d in route
            .get_mut("route")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(|r| r.get_mut("destination"))
            .filter_map(Value::as_object_mut)
        {
            if let Some(host) = d.get("host").and_then(Value::as_str) {
                let to = destination(host, shared, rename.namespace, domain, runs);
                d.insert("host".to_owned(), Value::String(to));
            }
        }
        if let Some(mirror) = route.get_mut("mirror").and_then(Value::as_object_mut)
            && let Some(host) = mirror.get("host").and_then(Value::as_str)
        {
            let to = qualify(host, shared, domain);
            mirror.insert("host".to_owned(), Value::String(to));
        }
    }
    let mut copy = Map::new();
    copy.insert("hosts".to_owned(), Value::Array(hosts));
    copy.insert("gateways".to_owned(), Value::Array(gateways));
    copy.insert("http".to_owned(), Value::Array(http));
    // Seen by the gateway, wherever it runs and whatever the mesh's default:
    // the route binds to its gateways only.
    copy.insert("exportTo".to_owned(), json!(["*"]));
    Ok(Some(dynamic(
        copy_meta(&vs.metadata, rename.namespace),
        Value::Object(copy),
    )))
}

/// Where a gateway route's destination `host` (as written in the shared
/// namespace) goes in the divert namespace's copy.
fn destination(
    host: &str,
    shared: &str,
    namespace: &str,
    domain: &str,
    runs: &dyn Fn(&str) -> bool,
) -> String {
    let full = qualify(host, shared, domain);
    let shared_suffix = format!(".{shared}.svc.{domain}");
    match full.strip_suffix(&shared_suffix) {
        Some(service) if !service.contains('.') && runs(service) => {
            fqdn(service, namespace, domain)
        }
        _ => full,
    }
}

/// Adds `baggage: member` to a route's `headers.request.add`, joining it to
/// a `baggage` the route already adds.
fn add_baggage(route: &mut Map<String, Value>, member: &str) {
    let headers = route.entry("headers").or_insert_with(|| json!({}));
    let Some(add) = headers
        .as_object_mut()
        .map(|h| h.entry("request").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
        .map(|r| r.entry("add").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let joined = match add.get("baggage").and_then(Value::as_str) {
        Some(v) if !v.is_empty() => format!("{v},{member}"),
        _ => member.to_owned(),
    };
    add.insert("baggage".to_owned(), Value::String(joined));
}

#[cfg(test)]
mod tests;
