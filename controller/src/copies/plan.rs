//! What the copies should be, against what they are: the writes that make
//! one into the other.
//!
//! For each divert namespace `K` of a shared namespace `S`:
//! - each Ingress and HTTPRoute of `S` gets a copy of the same name in `K`,
//!   its hosts renamed ([`super::rename`]); rules, TLS entries and
//!   hostnames whose host does not change are left out (they would take the
//!   shared URL's traffic), and so is the whole object if none is left;
//! - each HTTPRoute copy's rules add `baggage: okteto-divert=K` to the
//!   request with the standard `RequestHeaderModifier` filter, and its
//!   parent references that relied on the route's own namespace name `S`;
//! - each backend Service the copies name that `K` does not run (no Service
//!   of the user's by that name in `K`) is made in `K`: a Service without a
//!   selector, with `S`'s ports, and copies of `S`'s EndpointSlices for it,
//!   so that it leads to `S`'s pods for any ingress controller or proxy
//!   that reads endpoints, as `kube-proxy` does.
//!
//! Every copy carries [`MANAGED_BY`] and [`COPIED_FROM`], and a hash of its
//! content in [`CONTENT_HASH`], compared instead of the object (which the
//! API server fills with defaults) to decide whether it needs writing. An
//! object without [`MANAGED_BY`] is the user's: it is never written, and a
//! copy that would take its name is not made ([`Plan::problems`]). A
//! managed Service that has since been given a selector was taken over by
//! the user (`kubectl apply` of their own Service over ours, when they
//! deploy a service the controller had made lead to the shared copy): the
//! controller removes its marks from it, and it is the user's from then on.

use std::collections::{BTreeMap, BTreeSet};

use divert_core::names::BAGGAGE_KEY;
use divert_core::names::annotation::{CONTENT_HASH, COPIED_FROM};
use divert_core::names::label::{MANAGED_BY, MANAGED_BY_CONTROLLER, SLICE_MANAGER};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::api::networking::v1::{Ingress, IngressRule, IngressTLS};
use kube::api::{ApiResource, DynamicObject, ObjectMeta, TypeMeta};
use serde_json::{Value, json};

use super::istio::virtual_service;
use super::rename::{Rename, RenameError};
use super::sources::{Kept, Key, Objects, Sources};
use crate::translate::SERVICE_NAME_LABEL;

/// The EndpointSlice label that tells Kubernetes' own EndpointSlice
/// controllers that a slice is not theirs.
pub const SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Labels and annotations of the source that are not copied: tools'
/// ownership records, which would make the copy look like theirs.
const NOT_COPIED: [&str; 3] = [
    "app.kubernetes.io/managed-by",
    "kubectl.kubernetes.io/last-applied-configuration",
    "meta.helm.sh/",
];

/// The kinds of copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Ingress,
    HttpRoute,
    Service,
    EndpointSlice,
    /// The istio driver's routes ([`super::istio`]).
    VirtualService,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Ingress,
        Kind::HttpRoute,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::VirtualService,
    ];

    /// The label value in metrics, the kind's name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ingress => "Ingress",
            Kind::HttpRoute => "HTTPRoute",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::VirtualService => "VirtualService",
        }
    }

    /// The API resource of a kind without a type in `k8s-openapi`.
    pub fn dynamic(self) -> Option<ApiResource> {
        match self {
            Kind::HttpRoute => Some(http_route()),
            Kind::VirtualService => Some(virtual_service()),
            Kind::Ingress | Kind::Service | Kind::EndpointSlice => None,
        }
    }
}

/// Gateway API's HTTPRoute (`gateway.networking.k8s.io/v1`), which has no
/// type in `k8s-openapi`.
pub fn http_route() -> ApiResource {
    ApiResource {
        group: "gateway.networking.k8s.io".to_owned(),
        version: "v1".to_owned(),
        api_version: "gateway.networking.k8s.io/v1".to_owned(),
        kind: "HTTPRoute".to_owned(),
        plural: "httproutes".to_owned(),
    }
}

/// One copy to write (boxed: the kinds differ much in size).
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Ingress(Box<Ingress>),
    HttpRoute(Box<DynamicObject>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    VirtualService(Box<DynamicObject>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Ingress(_) => Kind::Ingress,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::VirtualService(_) => Kind::VirtualService,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Ingress(o) => &o.metadata,
            Object::HttpRoute(o) | Object::VirtualService(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Ingress(o) => &mut o.metadata,
            Object::HttpRoute(o) | Object::VirtualService(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
        }
    }

    fn to_json(&self) -> String {
        match self {
            Object::Ingress(o) => serde_json::to_string(o),
            Object::HttpRoute(o) | Object::VirtualService(o) => serde_json::to_string(o),
            Object::Service(o) => serde_json::to_string(o),
            Object::EndpointSlice(o) => serde_json::to_string(o),
        }
        .unwrap_or_default()
    }
}

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A new copy (fails if an object of that name appeared meanwhile).
    Create(Object),
    /// A copy whose content changed; applied only if it is still at
    /// `resource_version`, the version seen as the controller's.
    Update {
        object: Object,
        resource_version: String,
    },
    /// A Service of the controller's that the user has given a selector
    /// (their own Service applied over it): the controller's marks are
    /// removed, at `resource_version`, and it is the user's from then on.
    Release {
        namespace: String,
        name: String,
        resource_version: String,
    },
    /// A copy nothing asks for any more, deleted only if still at
    /// `resource_version`.
    Delete {
        kind: Kind,
        namespace: String,
        name: String,
        resource_version: String,
    },
}

/// A copy that could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub why: String,
}

/// The outcome of one comparison.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub ops: Vec<Op>,
    /// How many copies of each kind should exist.
    pub copies: BTreeMap<Kind, usize>,
    /// Copies not made: a user's object has the name, or a host could not
    /// be made.
    pub problems: Vec<Problem>,
}

/// Whether `meta` is of an object the controller made.
pub fn is_managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|v| v == MANAGED_BY_CONTROLLER)
}

/// Whether `slice` is one of the controller's copies of a shared Service's
/// EndpointSlices. Told by the EndpointSlice manager label, not by
/// [`MANAGED_BY`]: Kubernetes copies a Service's labels onto the slices it
/// makes, so a Service the user took over (below) passes [`MANAGED_BY`] on
/// to slices that are not the controller's.
pub fn is_copied_slice(slice: &EndpointSlice) -> bool {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SLICE_MANAGED_BY))
        .is_some_and(|v| v == SLICE_MANAGER)
}

/// Whether `svc` is a Service the controller made and still owns (one the
/// user gave a selector to is the user's).
pub fn is_own_service(svc: &Service) -> bool {
    is_managed(&svc.metadata)
        && svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_none_or(|s| s.is_empty())
}

/// Compares the copies `sources` asks for with the managed objects it holds.
pub fn plan(sources: &Sources) -> Plan {
    let mut out = Plan::default();
    if !sources.listed {
        return out;
    }
    let mut want: BTreeMap<(Kind, String, String), Object> = BTreeMap::new();
    for (namespace, divert) in &sources.divert {
        let rename = Rename {
            shared: &divert.shared,
            namespace,
            template: divert.template.as_deref(),
        };
        let mut backends = BTreeSet::new();
        let mut made = Vec::new();
        for (key, ingress) in in_namespace(&sources.ingresses, &divert.shared) {
            if is_managed(&ingress.metadata) {
                continue;
            }
            match copy_ingress(ingress, &rename) {
                Ok(Some((copy, names))) => {
                    backends.extend(names);
                    made.push(Object::Ingress(Box::new(copy)));
                }
                Ok(None) => {}
                Err(e) => out.problems.push(problem(Kind::Ingress, namespace, key, e)),
            }
        }
        for (key, route) in sources
            .routes
            .iter()
            .flat_map(|r| in_namespace(r, &divert.shared))
        {
            if is_managed(&route.metadata) {
                continue;
            }
            match copy_route(route, &rename) {
                Ok(Some((copy, names))) => {
                    backends.extend(names);
                    made.push(Object::HttpRoute(Box::new(copy)));
                }
                Ok(None) => {}
                Err(e) => out
                    .problems
                    .push(problem(Kind::HttpRoute, namespace, key, e)),
            }
        }
        for backend in &backends {
            let users = sources
                .services
                .get(&(namespace.clone(), backend.clone()))
                .is_some_and(|s| !is_own_service(s));
            if users {
                continue;
            }
            let Some(shared) = sources
                .services
                .get(&(divert.shared.clone(), backend.clone()))
                .filter(|s| !is_managed(&s.metadata))
            else {
                continue;
            };
            made.push(Object::Service(Box::new(lead_service(shared, namespace))));
            for (_, slice) in in_namespace(&sources.slices, &divert.shared) {
                let of = slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL));
                if of == Some(backend) && !is_copied_slice(slice) {
                    made.push(Object::EndpointSlice(Box::new(copy_slice(
                        slice, namespace,
                    ))));
                }
            }
        }
        for object in made {
            wanted(&mut want, object);
        }
    }
    if let Some(istio) = &sources.istio {
        let (made, problems) = super::istio::plan(sources, istio);
        for object in made {
            wanted(&mut want, Object::VirtualService(Box::new(object)));
        }
        out.problems.extend(problems);
    }

    // What exists: the managed objects by kind, and whether a name is taken.
    let routes_listed = sources.routes.is_some();
    let virtual_services = sources
        .istio
        .as_ref()
        .and_then(|i| i.virtual_services.as_ref());
    let exists = |kind: Kind, key: &Key| -> Option<(bool, &ObjectMeta)> {
        match kind {
            Kind::Ingress => sources
                .ingresses
                .get(key)
                .map(|o| (is_managed(o.meta()), o.meta())),
            Kind::HttpRoute => sources
                .routes
                .as_ref()?
                .get(key)
                .map(|o| (is_managed(o.meta()), o.meta())),
            Kind::Service => sources
                .services
                .get(key)
                .map(|o| (is_own_service(o), o.meta())),
            Kind::EndpointSlice => sources
                .slices
                .get(key)
                .map(|o| (is_copied_slice(o), o.meta())),
            Kind::VirtualService => virtual_services?
                .get(key)
                .map(|o| (is_managed(o.meta()), o.meta())),
        }
    };
    for ((kind, namespace, name), object) in &want {
        if *kind == Kind::HttpRoute && !routes_listed {
            continue;
        }
        *out.copies.entry(*kind).or_default() += 1;
        let key = (namespace.clone(), name.clone());
        match exists(*kind, &key) {
            None => out.ops.push(Op::Create(object.clone())),
            Some((false, _)) => out.problems.push(Problem {
                kind: *kind,
                namespace: namespace.clone(),
                name: name.clone(),
                why: format!(
                    "{namespace} has a {} {name} of its own (without the label {MANAGED_BY}); \
                     it is left as it is, and this copy is not made",
                    kind.as_str()
                ),
            }),
            Some((true, meta)) => {
                if annotation(meta, CONTENT_HASH) != annotation(object.meta(), CONTENT_HASH) {
                    out.ops.push(Op::Update {
                        object: object.clone(),
                        resource_version: meta.resource_version.clone().unwrap_or_default(),
                    });
                }
            }
        }
    }
    for o in sources
        .services
        .values()
        .filter(|o| is_managed(o.meta()) && !is_own_service(o))
    {
        let meta = o.meta();
        out.ops.push(Op::Release {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
        });
    }
    let mut delete = |kind: Kind, meta: &ObjectMeta| {
        let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) else {
            return;
        };
        if !want.contains_key(&(kind, namespace.clone(), name.clone())) {
            out.ops.push(Op::Delete {
                kind,
                namespace: namespace.clone(),
                name: name.clone(),
                resource_version: meta.resource_version.clone().unwrap_or_default(),
            });
        }
    };
    for o in sources.ingresses.values().filter(|o| is_managed(o.meta())) {
        delete(Kind::Ingress, o.meta());
    }
    for o in sources
        .routes
        .iter()
        .flat_map(|r| r.values())
        .filter(|o| is_managed(o.meta()))
    {
        delete(Kind::HttpRoute, o.meta());
    }
    for o in virtual_services
        .into_iter()
        .flat_map(|v| v.values())
        .filter(|o| is_managed(o.meta()))
    {
        delete(Kind::VirtualService, o.meta());
    }
    for o in sources.services.values().filter(|o| is_own_service(o)) {
        delete(Kind::Service, o.meta());
    }
    for o in sources.slices.values().filter(|o| is_copied_slice(o)) {
        delete(Kind::EndpointSlice, o.meta());
    }
    out
}

/// Adds `object`, marked with its content's hash, to the copies wanted.
fn wanted(want: &mut BTreeMap<(Kind, String, String), Object>, mut object: Object) {
    let hash = content_hash(&object);
    object
        .meta_mut()
        .annotations
        .get_or_insert_default()
        .insert(CONTENT_HASH.to_owned(), hash);
    let meta = object.meta();
    let key = (
        object.kind(),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    );
    want.insert(key, object);
}

fn problem(kind: Kind, namespace: &str, source: &Key, e: RenameError) -> Problem {
    Problem {
        kind,
        namespace: namespace.to_owned(),
        name: source.1.clone(),
        why: format!("the copy of {}/{}: {e}", source.0, source.1),
    }
}

pub(super) fn in_namespace<'a, K>(
    objects: &'a Objects<K>,
    namespace: &'a str,
) -> impl Iterator<Item = (&'a Key, &'a K)> {
    objects
        .range((namespace.to_owned(), String::new())..)
        .take_while(move |((ns, _), _)| ns == namespace)
}

fn annotation<'a>(meta: &'a ObjectMeta, name: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(name).map(String::as_str)
}

/// A 64-bit FNV-1a hash of the object as JSON, in hex: stable across
/// releases, unlike `std`'s hasher.
fn content_hash(object: &Object) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in object.to_json().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The metadata of the copy of `source` in `namespace`: its name, its labels
/// and annotations but for tools' ownership records, and the controller's
/// marks.
pub(super) fn copy_meta(source: &ObjectMeta, namespace: &str) -> ObjectMeta {
    let keep = |(k, _): &(&String, &String)| !NOT_COPIED.iter().any(|n| k.starts_with(n));
    let mut labels: BTreeMap<String, String> = source
        .labels
        .iter()
        .flatten()
        .filter(keep)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(MANAGED_BY.to_owned(), MANAGED_BY_CONTROLLER.to_owned());
    let mut annotations: BTreeMap<String, String> = source
        .annotations
        .iter()
        .flatten()
        .filter(keep)
        .filter(|(k, _)| k.as_str() != CONTENT_HASH)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(
        COPIED_FROM.to_owned(),
        format!(
            "{}/{}",
            source.namespace.as_deref().unwrap_or_default(),
            source.name.as_deref().unwrap_or_default()
        ),
    );
    ObjectMeta {
        name: source.name.clone(),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    }
}

/// The copy of an Ingress, and the backend Services it names; `None` if no
/// host of it has a preview host.
fn copy_ingress(
    ingress: &Ingress,
    rename: &Rename<'_>,
) -> Result<Option<(Ingress, BTreeSet<String>)>, RenameError> {
    let Some(spec) = &ingress.spec else {
        return Ok(None);
    };
    let mut rules: Vec<IngressRule> = Vec::new();
    for rule in spec.rules.iter().flatten() {
        let Some(host) = &rule.host else { continue };
        if let Some(host) = rename.host(host)? {
            rules.push(IngressRule {
                host: Some(host),
                http: rule.http.clone(),
            });
        }
    }
    if rules.is_empty() {
        return Ok(None);
    }
    let mut tls: Vec<IngressTLS> = Vec::new();
    for t in spec.tls.iter().flatten() {
        let mut hosts = Vec::new();
        for h in t.hosts.iter().flatten() {
            hosts.extend(rename.host(h)?);
        }
        if !hosts.is_empty() {
            tls.push(IngressTLS {
                hosts: Some(hosts),
                secret_name: t.secret_name.clone(),
            });
        }
    }
    let backends = rules
        .iter()
        .flat_map(|r| r.http.iter().flat_map(|h| &h.paths))
        .filter_map(|p| p.backend.service.as_ref().map(|s| s.name.clone()))
        .collect();
    let mut spec = spec.clone();
    spec.rules = Some(rules);
    spec.tls = (!tls.is_empty()).then_some(tls);
    // A default backend would compete with the shared Ingress's.
    spec.default_backend = None;
    let copy = Ingress {
        metadata: copy_meta(&ingress.metadata, rename.namespace),
        spec: Some(spec),
        status: None,
    };
    Ok(Some((copy, backends)))
}

/// The copy of an HTTPRoute, and the backend Services of its namespace it
/// names; `None` if it has no hostname with a preview host (a route without
/// hostnames takes every host of its listener, and is not copied).
fn copy_route(
    route: &DynamicObject,
    rename: &Rename<'_>,
) -> Result<Option<(DynamicObject, BTreeSet<String>)>, RenameError> {
    let shared = rename.shared;
    let mut spec = route.data.get("spec").cloned().unwrap_or(Value::Null);
    let Some(obj) = spec.as_object_mut() else {
        return Ok(None);
    };
    let mut hostnames = Vec::new();
    for h in obj
        .get("hostnames")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        hostnames.extend(rename.host(h)?.map(Value::String));
    }
    if hostnames.is_empty() {
        return Ok(None);
    }
    obj.insert("hostnames".to_owned(), Value::Array(hostnames));
    // Parent references default to the route's namespace: the copy's
    // Gateway is still the shared one.
    for parent in obj
        .get_mut("parentRefs")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        parent
            .entry("namespace")
            .or_insert_with(|| Value::String(shared.to_owned()));
    }
    let rules = obj
        .entry("rules")
        .or_insert_with(|| json!([{}]))
        .as_array_mut();
    let mut backends = BTreeSet::new();
    let member = format!("{BAGGAGE_KEY}={}", rename.namespace);
    for rule in rules.into_iter().flatten().filter_map(Value::as_object_mut) {
        for b in rule
            .get("backendRefs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let field = |f: &str| b.get(f).and_then(Value::as_str);
            let service = field("group").is_none_or(str::is_empty)
                && field("kind").is_none_or(|k| k == "Service")
                && field("namespace").is_none();
            if let (true, Some(name)) = (service, field("name")) {
                backends.insert(name.to_owned());
            }
        }
        add_baggage(rule, &member);
    }
    let mut copy = DynamicObject::new(
        route.metadata.name.as_deref().unwrap_or_default(),
        &http_route(),
    );
    copy.types = Some(TypeMeta {
        api_version: http_route().api_version,
        kind: http_route().kind,
    });
    copy.metadata = copy_meta(&route.metadata, rename.namespace);
    copy.data = json!({ "spec": spec });
    Ok(Some((copy, backends)))
}

/// Adds `baggage: member` to a rule's `RequestHeaderModifier` filter (one
/// per rule, as Gateway API allows), making the filter if there is none.
fn add_baggage(rule: &mut serde_json::Map<String, Value>, member: &str) {
    let filters = rule.entry("filters").or_insert_with(|| json!([]));
    let Some(filters) = filters.as_array_mut() else {
        return;
    };
    let modifier = filters
        .iter_mut()
        .find(|f| f.get("type").and_then(Value::as_str) == Some("RequestHeaderModifier"));
    let Some(modifier) = modifier else {
        filters.push(json!({
            "type": "RequestHeaderModifier",
            "requestHeaderModifier": { "add": [{ "name": "baggage", "value": member }] },
        }));
        return;
    };
    let Some(add) = modifier
        .as_object_mut()
        .map(|m| {
            m.entry("requestHeaderModifier")
                .or_insert_with(|| json!({}))
        })
        .and_then(Value::as_object_mut)
        .map(|m| m.entry("add").or_insert_with(|| json!([])))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    let existing = add.iter_mut().find(|h| {
        h.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.eq_ignore_ascii_case("baggage"))
    });
    match existing {
        // Header names are unique in the list: join the members.
        Some(h) => {
            let value = h.get("value").and_then(Value::as_str).unwrap_or_default();
            let joined = if value.is_empty() {
                member.to_owned()
            } else {
                format!("{value},{member}")
            };
            h["value"] = Value::String(joined);
        }
        None => add.push(json!({ "name": "baggage", "value": member })),
    }
}

/// A Service in `namespace` that leads to `shared`, the shared copy: the
/// same ports, no selector (its endpoints are copies of the shared ones).
fn lead_service(shared: &Service, namespace: &str) -> Service {
    let mut meta = copy_meta(&shared.metadata, namespace);
    // Only the marks: the shared Service's labels select its pods for
    // tools, and its annotations configure load balancers.
    meta.labels
        .get_or_insert_default()
        .retain(|k, _| k == MANAGED_BY);
    meta.annotations
        .get_or_insert_default()
        .retain(|k, _| k == COPIED_FROM);
    let spec = shared.spec.clone().unwrap_or_default();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let external = spec.type_.as_deref() == Some("ExternalName");
    let ports = spec.ports.map(|ports| {
        ports
            .into_iter()
            .map(|p| ServicePort {
                app_protocol: p.app_protocol,
                name: p.name,
                port: p.port,
                protocol: p.protocol,
                target_port: p.target_port,
                node_port: None,
            })
            .collect()
    });
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(
                if external {
                    "ExternalName"
                } else {
                    "ClusterIP"
                }
                .to_owned(),
            ),
            external_name: spec.external_name.filter(|_| external),
            cluster_ip: headless.then(|| "None".to_owned()),
            ports,
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// A copy in `namespace` of one of the shared Service's EndpointSlices.
fn copy_slice(slice: &EndpointSlice, namespace: &str) -> EndpointSlice {
    let mut meta = copy_meta(&slice.metadata, namespace);
    let labels = meta.labels.get_or_insert_default();
    labels.retain(|k, _| k == MANAGED_BY || k == SERVICE_NAME_LABEL);
    labels.insert(SLICE_MANAGED_BY.to_owned(), SLICE_MANAGER.to_owned());
    meta.annotations
        .get_or_insert_default()
        .retain(|k, _| k == COPIED_FROM);
    EndpointSlice {
        metadata: meta,
        address_type: slice.address_type.clone(),
        endpoints: slice
            .endpoints
            .iter()
            .map(|e| Endpoint {
                addresses: e.addresses.clone(),
                conditions: e.conditions.clone(),
                hostname: e.hostname.clone(),
                node_name: e.node_name.clone(),
                zone: e.zone.clone(),
                ..Endpoint::default()
            })
            .collect(),
        ports: slice.ports.clone(),
    }
}

#[cfg(test)]
mod tests;
