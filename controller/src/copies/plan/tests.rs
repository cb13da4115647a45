use k8s_openapi::api::core::v1::Namespace;
use serde_json::json;

use super::*;
use crate::copies::sources::{self, Sources};
use divert_core::names::annotation::HOST_TEMPLATE;
use divert_core::names::label::SHARED_NAMESPACE;

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

fn namespace(name: &str, shared: &str, template: Option<&str>) -> Namespace {
    let mut ns = json!({"metadata": {"name": name, "labels": {SHARED_NAMESPACE: shared}}});
    if let Some(t) = template {
        ns["metadata"]["annotations"] = json!({ HOST_TEMPLATE: t });
    }
    from(ns)
}

fn ingress(namespace: &str, name: &str, host: &str, backend: &str) -> Ingress {
    from(json!({
        "metadata": {"namespace": namespace, "name": name, "resourceVersion": "1",
            "labels": {"app": "movies", "app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "8m",
                "meta.helm.sh/release-name": "movies"}},
        "spec": {
            "ingressClassName": "nginx",
            "defaultBackend": {"service": {"name": backend, "port": {"number": 80}}},
            "tls": [{"hosts": [host, "static.example.com"], "secretName": "wildcard"}],
            "rules": [
                {"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": backend, "port": {"number": 80}}}}]}},
                {"host": "static.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "cdn", "port": {"number": 80}}}}]}},
                {"http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "fallback", "port": {"number": 80}}}}]}}
            ]
        }
    }))
}

fn service(namespace: &str, name: &str, selector: bool, labels: Value) -> Service {
    let mut spec = json!({"type": "NodePort", "clusterIP": "10.96.0.20",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}]});
    if selector {
        spec["selector"] = json!({"app": name});
    }
    from(
        json!({"metadata": {"namespace": namespace, "name": name, "resourceVersion": "7", "labels": labels},
        "spec": spec}),
    )
}

fn slice(namespace: &str, name: &str, service: &str) -> EndpointSlice {
    from(
        json!({"metadata": {"namespace": namespace, "name": name, "resourceVersion": "9",
            "labels": {SERVICE_NAME_LABEL: service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "namespace": namespace, "name": "frontend-1"}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
    )
}

fn route(namespace: &str, name: &str, hostnames: Value, rules: Value) -> DynamicObject {
    from(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": namespace, "name": name, "resourceVersion": "3"},
        "spec": {"parentRefs": [{"name": "public"}, {"name": "internal", "namespace": "infra"}],
            "hostnames": hostnames, "rules": rules},
        "status": {"parents": []}
    }))
}

/// staging runs frontend behind an Ingress; alice runs her own frontend,
/// bob only rent.
fn movies() -> Sources {
    let mut s = Sources::default();
    s.replace_namespaces(&[
        namespace("alice", "staging", None),
        namespace("bob", "staging", None),
    ]);
    sources::apply(
        s.ingresses(),
        ingress(
            "staging",
            "frontend",
            "frontend-staging.movies.test",
            "frontend",
        ),
    );
    for (ns, name) in [
        ("staging", "frontend"),
        ("alice", "frontend"),
        ("bob", "rent"),
    ] {
        sources::apply(s.services(), service(ns, name, true, json!({"app": name})));
    }
    sources::apply(s.slices(), slice("staging", "frontend-abcde", "frontend"));
    sources::apply(s.slices(), slice("alice", "frontend-xyz", "frontend"));
    s.set_listed();
    s
}

fn created(plan: &Plan) -> Vec<(Kind, String, String)> {
    plan.ops
        .iter()
        .filter_map(|op| match op {
            Op::Create(o) => Some((
                o.kind(),
                o.meta().namespace.clone().unwrap_or_default(),
                o.meta().name.clone().unwrap_or_default(),
            )),
            _ => None,
        })
        .collect()
}

fn k(kind: Kind, ns: &str, name: &str) -> (Kind, String, String) {
    (kind, ns.to_owned(), name.to_owned())
}

/// Feeds every created object back as the watch would report it.
fn converge(s: &mut Sources, plan: &Plan) {
    for op in &plan.ops {
        let Op::Create(o) = op else { continue };
        let mut o = o.clone();
        o.meta_mut().resource_version = Some("100".into());
        match o {
            Object::Ingress(o) => sources::apply(s.ingresses(), *o),
            Object::HttpRoute(o) => sources::apply(s.routes(), *o),
            Object::Service(mut o) => {
                // The API server fills in defaults, which must not matter.
                o.spec.get_or_insert_default().cluster_ip = Some("10.96.0.99".into());
                sources::apply(s.services(), *o)
            }
            Object::EndpointSlice(o) => sources::apply(s.slices(), *o),
            Object::VirtualService(o) => {
                if let Some(v) = s.virtual_services() {
                    sources::apply(v, *o)
                }
            }
        }
    }
}

#[test]
fn each_divert_namespace_gets_a_copy_with_its_own_hosts_and_a_service_it_does_not_run() {
    let plan = plan(&movies());
    assert_eq!(
        created(&plan),
        [
            k(Kind::Ingress, "alice", "frontend"),
            k(Kind::Ingress, "bob", "frontend"),
            k(Kind::Service, "bob", "frontend"),
            k(Kind::EndpointSlice, "bob", "frontend-abcde"),
        ]
    );
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    assert_eq!(plan.copies.get(&Kind::Ingress), Some(&2));

    let Op::Create(Object::Ingress(copy)) = &plan.ops[1] else {
        panic!("{:?}", plan.ops[1]);
    };
    let spec = copy.spec.as_ref().unwrap();
    let rules = spec.rules.as_ref().unwrap();
    // Only the host naming the shared namespace: the shared static host and
    // the catch-all rule would take the shared URL's traffic.
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].host.as_deref(), Some("frontend-bob.movies.test"));
    let tls = spec.tls.as_ref().unwrap();
    assert_eq!(
        tls[0].hosts,
        Some(vec!["frontend-bob.movies.test".to_owned()])
    );
    assert_eq!(tls[0].secret_name.as_deref(), Some("wildcard"));
    assert!(spec.default_backend.is_none());
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let labels = copy.metadata.labels.as_ref().unwrap();
    assert_eq!(
        labels.get(MANAGED_BY).map(String::as_str),
        Some(MANAGED_BY_CONTROLLER)
    );
    assert_eq!(labels.get("app").map(String::as_str), Some("movies"));
    assert!(!labels.contains_key("app.kubernetes.io/managed-by"));
    let annotations = copy.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        annotations.get(COPIED_FROM).map(String::as_str),
        Some("staging/frontend")
    );
    assert!(annotations.contains_key("nginx.ingress.kubernetes.io/proxy-body-size"));
    assert!(!annotations.contains_key("meta.helm.sh/release-name"));
    assert!(annotations.contains_key(CONTENT_HASH));

    let Op::Create(Object::Service(lead)) = &plan.ops[2] else {
        panic!("{:?}", plan.ops[2]);
    };
    let spec = lead.spec.as_ref().unwrap();
    assert!(spec.selector.is_none(), "leads to the copied endpoints");
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert!(spec.cluster_ip.is_none(), "the API server picks one");
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!((port.port, port.node_port), (80, None));
    assert!(is_own_service(lead));

    let Op::Create(Object::EndpointSlice(slice)) = &plan.ops[3] else {
        panic!("{:?}", plan.ops[3]);
    };
    let labels = slice.metadata.labels.as_ref().unwrap();
    assert_eq!(
        labels.get(SERVICE_NAME_LABEL).map(String::as_str),
        Some("frontend")
    );
    assert_eq!(
        labels.get(SLICE_MANAGED_BY).map(String::as_str),
        Some(SLICE_MANAGER)
    );
    assert_eq!(slice.endpoints[0].addresses, ["10.244.0.5"]);
    assert!(slice.endpoints[0].target_ref.is_none());
}

#[test]
fn once_the_copies_exist_nothing_is_written_until_the_source_changes() {
    let mut s = movies();
    let first = plan(&s);
    converge(&mut s, &first);
    let second = plan(&s);
    assert_eq!(second.ops, [], "a converged state writes nothing");

    // An edit in staging reaches both copies, at the versions seen.
    let mut edited = ingress(
        "staging",
        "frontend",
        "frontend-staging.movies.test",
        "frontend",
    );
    edited.metadata.annotations.get_or_insert_default().insert(
        "nginx.ingress.kubernetes.io/proxy-body-size".into(),
        "16m".into(),
    );
    sources::apply(s.ingresses(), edited);
    let third = plan(&s);
    let updated: Vec<_> = third
        .ops
        .iter()
        .map(|op| {
            match op {
            Op::Update {
                object,
                resource_version,
            } => (
                object.meta().namespace.clone().unwrap(),
                resource_version.clone(),
                object.meta().annotations.as_ref().unwrap()
                    ["nginx.ingress.kubernetes.io/proxy-body-size"]
                    .clone(),
            ),
            other => panic!("{other:?}"),
        }
        })
        .collect();
    assert_eq!(
        updated,
        [
            ("alice".into(), "100".into(), "16m".into()),
            ("bob".into(), "100".into(), "16m".into())
        ]
    );
}

#[test]
fn a_namespace_that_stops_diverting_loses_every_copy_and_keeps_its_own_objects() {
    let mut s = movies();
    let first = plan(&s);
    converge(&mut s, &first);
    sources::apply(
        s.ingresses(),
        ingress("bob", "mine", "rent-bob.movies.test", "rent"),
    );
    s.delete_namespace("bob");
    let deleted: Vec<_> = plan(&s)
        .ops
        .into_iter()
        .map(|op| match op {
            Op::Delete {
                kind,
                namespace,
                name,
                resource_version,
            } => (kind, namespace, name, resource_version),
            other => panic!("{other:?}"),
        })
        .collect();
    let rv = || "100".to_owned();
    assert_eq!(
        deleted,
        [
            (Kind::Ingress, "bob".into(), "frontend".into(), rv()),
            (Kind::Service, "bob".into(), "frontend".into(), rv()),
            (
                Kind::EndpointSlice,
                "bob".into(),
                "frontend-abcde".into(),
                rv()
            ),
        ]
    );
}

#[test]
fn an_object_of_the_users_by_the_copys_name_is_left_alone_and_reported() {
    let mut s = movies();
    sources::apply(
        s.ingresses(),
        ingress("alice", "frontend", "mine.example.com", "frontend"),
    );
    let plan = plan(&s);
    assert!(!created(&plan).contains(&k(Kind::Ingress, "alice", "frontend")));
    assert!(
        plan.ops
            .iter()
            .all(|op| !matches!(op, Op::Delete { .. } | Op::Update { .. }))
    );
    assert_eq!(plan.problems.len(), 1, "{:?}", plan.problems);
    assert!(
        plan.problems[0].why.contains("of its own"),
        "{}",
        plan.problems[0].why
    );
}

#[test]
fn a_service_the_user_took_over_is_theirs_and_the_copied_endpoints_go() {
    let mut s = movies();
    let first = plan(&s);
    converge(&mut s, &first);
    // Bob applies his own frontend over the controller's Service, whose
    // labels Kubernetes copies onto the slices it makes for the selector.
    sources::apply(
        s.services(),
        service(
            "bob",
            "frontend",
            true,
            json!({MANAGED_BY: MANAGED_BY_CONTROLLER}),
        ),
    );
    let mut his = slice("bob", "frontend-bobs", "frontend");
    his.metadata
        .labels
        .get_or_insert_default()
        .insert(MANAGED_BY.into(), MANAGED_BY_CONTROLLER.into());
    assert!(!is_copied_slice(&his));
    assert_eq!(
        crate::translate::slice_service(&his),
        Some("frontend"),
        "his endpoints count"
    );
    sources::apply(s.slices(), his);
    let ops = plan(&s).ops;
    assert_eq!(
        ops,
        [
            Op::Release {
                namespace: "bob".into(),
                name: "frontend".into(),
                resource_version: "7".into(),
            },
            Op::Delete {
                kind: Kind::EndpointSlice,
                namespace: "bob".into(),
                name: "frontend-abcde".into(),
                resource_version: "100".into(),
            },
        ]
    );
}

#[test]
fn a_host_template_makes_the_hosts_and_a_bad_one_is_reported() {
    let mut s = movies();
    s.replace_namespaces(&[namespace(
        "alice",
        "staging",
        Some("{label}.{namespace}.preview.test"),
    )]);
    let plan_ = plan(&s);
    let Some(Op::Create(Object::Ingress(copy))) = plan_.ops.first() else {
        panic!("{:?}", plan_.ops);
    };
    let rules = copy.spec.as_ref().unwrap().rules.as_ref().unwrap();
    let hosts: Vec<_> = rules.iter().filter_map(|r| r.host.as_deref()).collect();
    // The template makes a preview host of the static one too.
    assert_eq!(
        hosts,
        [
            "frontend-staging.alice.preview.test",
            "static.alice.preview.test"
        ]
    );

    s.replace_namespaces(&[namespace("alice", "staging", Some("{nope}.test"))]);
    let bad = plan(&s);
    assert!(bad.ops.is_empty(), "{:?}", bad.ops);
    assert!(
        bad.problems[0].why.contains(HOST_TEMPLATE),
        "{:?}",
        bad.problems
    );
}

#[test]
fn an_httproute_copy_adds_the_key_with_the_standard_filter() {
    let mut s = movies();
    let rules = json!([
        {"backendRefs": [{"name": "frontend", "port": 80}]},
        {"filters": [{"type": "RequestHeaderModifier",
            "requestHeaderModifier": {"add": [{"name": "Baggage", "value": "tenant=a"}]}}],
         "backendRefs": [{"name": "api", "namespace": "staging", "port": 80}]}
    ]);
    sources::apply(
        s.routes(),
        route("staging", "web", json!(["web-staging.movies.test"]), rules),
    );
    sources::apply(s.routes(), route("staging", "any", json!([]), json!([])));
    let plan = plan(&s);
    let copy = plan
        .ops
        .iter()
        .find_map(|op| match op {
            Op::Create(Object::HttpRoute(r))
                if r.metadata.namespace.as_deref() == Some("alice") =>
            {
                Some(r)
            }
            _ => None,
        })
        .expect("alice's copy");
    assert_eq!(
        copy.types
            .as_ref()
            .map(|t| (t.api_version.as_str(), t.kind.as_str())),
        Some(("gateway.networking.k8s.io/v1", "HTTPRoute"))
    );
    let spec = &copy.data["spec"];
    assert_eq!(spec["hostnames"], json!(["web-alice.movies.test"]));
    assert_eq!(
        spec["parentRefs"],
        json!([{"name": "public", "namespace": "staging"}, {"name": "internal", "namespace": "infra"}])
    );
    assert_eq!(
        spec["rules"][0]["filters"],
        json!([{"type": "RequestHeaderModifier",
            "requestHeaderModifier": {"add": [{"name": "baggage", "value": "okteto-divert=alice"}]}}])
    );
    assert_eq!(
        spec["rules"][1]["filters"][0]["requestHeaderModifier"]["add"],
        json!([{"name": "Baggage", "value": "tenant=a,okteto-divert=alice"}])
    );
    assert!(copy.data.get("status").is_none());
    // A route without hostnames takes every host: not copied.
    assert!(created(&plan).iter().all(|(_, _, name)| name != "any"));
    // alice runs frontend; only bob gets a Service for it, none for the
    // explicitly namespaced api.
    let services: Vec<_> = created(&plan)
        .into_iter()
        .filter(|(kind, _, _)| *kind == Kind::Service)
        .collect();
    assert_eq!(services, [k(Kind::Service, "bob", "frontend")]);
}

#[test]
fn nothing_is_planned_before_the_watches_listed_and_routes_wait_for_theirs() {
    let mut s = Sources::default();
    s.replace_namespaces(&[namespace("alice", "staging", None)]);
    sources::apply(
        s.ingresses(),
        ingress(
            "alice",
            "frontend",
            "frontend-alice.movies.test",
            "frontend",
        ),
    );
    let mut managed = ingress("alice", "old", "old-alice.movies.test", "frontend");
    managed
        .metadata
        .labels
        .get_or_insert_default()
        .insert(MANAGED_BY.into(), MANAGED_BY_CONTROLLER.into());
    sources::apply(s.ingresses(), managed);
    assert_eq!(
        plan(&s),
        Plan::default(),
        "not listed: a source may be missing"
    );
    s.set_listed();
    assert_eq!(plan(&s).ops.len(), 1, "the stale copy goes once listed");
    assert!(s.routes.is_none());
}

#[test]
fn a_namespace_being_deleted_gets_no_new_copies() {
    let mut s = movies();
    let mut bob = namespace("bob", "staging", None);
    bob.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-12-01T00:00:00Z".parse().expect("a time"),
    ));
    s.apply_namespace(&bob);
    let made = created(&plan(&s));
    assert_eq!(made, [k(Kind::Ingress, "alice", "frontend")]);
}
