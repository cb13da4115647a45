use k8s_openapi::api::core::v1::Namespace;
use serde_json::json;

use super::*;
use crate::copies::plan::{Object, Op, Plan, plan as plan_all};
use crate::copies::sources;
use divert_core::names::label::SHARED_NAMESPACE;

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

fn namespace(name: &str, shared: &str) -> Namespace {
    from(json!({"metadata": {"name": name, "labels": {SHARED_NAMESPACE: shared}}}))
}

fn service(namespace: &str, name: &str, ports: &[i32]) -> Service {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({"name": format!("p{p}"), "port": p, "protocol": "TCP"}))
        .collect();
    from(
        json!({"metadata": {"namespace": namespace, "name": name, "resourceVersion": "7"},
        "spec": {"selector": {"app": name}, "ports": ports}}),
    )
}

fn vs(namespace: &str, name: &str, spec: Value) -> DynamicObject {
    from(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"namespace": namespace, "name": name, "resourceVersion": "5"},
        "spec": spec,
    }))
}

/// staging runs frontend, api and catalog (HTTP on 8080, gRPC on 9090);
/// alice runs frontend and catalog (HTTP only), bob runs api. The istio
/// driver is on, and the cluster's VirtualServices are listed.
fn movies() -> Sources {
    let mut s = Sources::default();
    s.enable_istio("cluster.local");
    s.replace_namespaces(&[namespace("alice", "staging"), namespace("bob", "staging")]);
    for (ns, name, ports) in [
        ("staging", "frontend", &[8080][..]),
        ("staging", "api", &[8080]),
        ("staging", "catalog", &[8080, 9090]),
        ("alice", "frontend", &[8080]),
        ("alice", "catalog", &[8080]),
        ("bob", "api", &[8080]),
    ] {
        sources::apply(s.services(), service(ns, name, ports));
    }
    s.virtual_services().expect("the istio driver is on");
    s.set_listed();
    s
}

fn made(s: &Sources) -> BTreeMap<(String, String), Value> {
    let (objects, problems) = plan(s, s.istio.as_ref().expect("on"));
    assert!(problems.is_empty(), "{problems:?}");
    objects
        .into_iter()
        .map(|o| {
            let key = (
                o.metadata.namespace.clone().unwrap_or_default(),
                o.metadata.name.clone().unwrap_or_default(),
            );
            (key, o.data["spec"].clone())
        })
        .collect()
}

/// Each route of a mesh VirtualService as `name → host:port`.
fn routes(spec: &Value) -> Vec<(String, String)> {
    spec["http"]
        .as_array()
        .expect("http routes")
        .iter()
        .map(|r| {
            let d = &r["route"][0]["destination"];
            (
                r["name"].as_str().unwrap_or_default().to_owned(),
                format!(
                    "{}:{}",
                    d["host"].as_str().unwrap_or_default(),
                    d["port"]["number"]
                ),
            )
        })
        .collect()
}

fn k(ns: &str, name: &str) -> (String, String) {
    (ns.to_owned(), name.to_owned())
}

#[test]
fn every_service_a_divert_namespace_runs_gets_one_mesh_route_per_host() {
    let made = made(&movies());
    let keys: Vec<_> = made.keys().cloned().collect();
    assert_eq!(
        keys,
        [
            k("alice", "divert-catalog"),
            k("alice", "divert-frontend"),
            k("bob", "divert-api"),
            k("staging", "divert-api"),
            k("staging", "divert-catalog"),
            k("staging", "divert-frontend"),
        ]
    );
    let shared = &made[&k("staging", "divert-catalog")];
    assert_eq!(
        shared["hosts"],
        json!(["catalog.staging.svc.cluster.local"])
    );
    assert_eq!(shared["exportTo"], json!(["*"]));
    let c = |s: &str| format!("catalog.{s}.svc.cluster.local");
    assert_eq!(
        routes(shared),
        [
            // Keys first: alice runs catalog on 8080, bob does not.
            ("key-alice-8080".into(), format!("{}:8080", c("alice"))),
            ("key-shared-8080".into(), format!("{}:8080", c("staging"))),
            // Then alice's own pods, without a key.
            ("own-alice-8080".into(), format!("{}:8080", c("alice"))),
            ("default-8080".into(), format!("{}:8080", c("staging"))),
            // alice's catalog has no 9090: every key stays on the shared copy.
            ("key-shared-9090".into(), format!("{}:9090", c("staging"))),
            ("default-9090".into(), format!("{}:9090", c("staging"))),
        ]
    );
    let matches = &shared["http"][1]["match"];
    assert_eq!(matches.as_array().map(Vec::len), Some(1), "{matches}");
    assert_eq!(
        matches[0]["headers"]["baggage"]["regex"],
        json!(baggage_regex("bob"))
    );
    assert_eq!(shared["http"][2]["match"][0]["sourceNamespace"], "alice");

    // alice's own host: bob's key still reaches the shared copy, and alice's
    // pods need no route of their own there.
    let own = &made[&k("alice", "divert-catalog")];
    assert_eq!(own["hosts"], json!([c("alice")]));
    assert_eq!(
        routes(own),
        [
            ("key-alice-8080".into(), format!("{}:8080", c("alice"))),
            ("key-shared-8080".into(), format!("{}:8080", c("staging"))),
            ("default-8080".into(), format!("{}:8080", c("alice"))),
        ]
    );
}

#[test]
fn the_baggage_regex_finds_the_member_wherever_the_list_has_it() {
    let re = regex::Regex::new(&baggage_regex("alice")).expect("RE2 syntax");
    for yes in [
        "okteto-divert=alice",
        "  okteto-divert = alice ",
        "userId=7,okteto-divert=alice",
        "okteto-divert=alice;ttl=60,userId=7",
        "a=1, okteto-divert=alice\t;p, b=2",
        // Two headers, joined as RFC 9110 joins a list.
        "userId=7,okteto-divert=alice",
    ] {
        assert!(re.is_match(yes), "{yes:?} should match");
    }
    for no in [
        "",
        "okteto-divert=alice2",
        "okteto-divert=bob",
        "xokteto-divert=alice",
        "okteto-divert=bob,other=okteto-divert=alice",
        "userId=alice",
        "okteto-divert=al",
    ] {
        assert!(!re.is_match(no), "{no:?} should not match");
    }
}

#[test]
fn a_users_virtual_service_for_the_host_is_left_alone_and_named() {
    let mut s = movies();
    let v = s.virtual_services().expect("on");
    sources::apply(
        v,
        vs(
            "staging",
            "catalog-retries",
            json!({"hosts": ["catalog"], "http": [{"retries": {"attempts": 3},
            "route": [{"destination": {"host": "catalog"}}]}]}),
        ),
    );
    // A gateway's route for a host of the same name is not the mesh's.
    sources::apply(
        v,
        vs(
            "staging",
            "edge",
            json!({"hosts": ["frontend.staging.svc.cluster.local"],
            "gateways": ["public"], "http": [{"route": [{"destination": {"host": "frontend"}}]}]}),
        ),
    );
    let (objects, problems) = plan(&s, s.istio.as_ref().expect("on"));
    let names: Vec<_> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o.metadata.namespace.as_deref().unwrap_or_default(),
                o.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    assert!(
        !names.contains(&"staging/divert-catalog".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"alice/divert-catalog".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"staging/divert-frontend".to_owned()),
        "{names:?}"
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        (problems[0].namespace.as_str(), problems[0].name.as_str()),
        ("staging", "divert-catalog")
    );
    assert!(
        problems[0].why.contains("staging/catalog-retries")
            && problems[0]
                .why
                .contains("catalog.staging.svc.cluster.local"),
        "{}",
        problems[0].why
    );
}

#[test]
fn a_gateways_routes_are_copied_with_the_preview_host_the_key_and_qualified_destinations() {
    let mut s = movies();
    sources::apply(
        s.virtual_services().expect("on"),
        vs(
            "staging",
            "movies",
            json!({
                "hosts": ["movies-staging.example.com", "frontend"],
                "exportTo": ["."],
                "gateways": ["public", "istio-ingress/shared", "mesh"],
                "tls": [{"match": [{"sniHosts": ["movies-staging.example.com"]}], "route": []}],
                "http": [
                    {"match": [{"uri": {"prefix": "/api"}}],
                     "headers": {"request": {"add": {"baggage": "team=movies"}}},
                     "route": [{"destination": {"host": "api", "port": {"number": 8080}}}]},
                    {"route": [{"destination": {"host": "frontend.staging.svc.cluster.local"}, "weight": 100}],
                     "mirror": {"host": "shadow"}},
                    // Handed to a VirtualService that is not copied: left out.
                    {"match": [{"uri": {"prefix": "/admin"}}],
                     "delegate": {"name": "admin", "namespace": "ops"}}
                ]
            }),
        ),
    );
    let (objects, _) = plan(&s, s.istio.as_ref().expect("on"));
    let copy = |ns: &str| {
        objects
            .iter()
            .find(|o| {
                o.metadata.namespace.as_deref() == Some(ns)
                    && o.metadata.name.as_deref() == Some("movies")
            })
            .unwrap_or_else(|| panic!("no copy in {ns}"))
    };
    let alice = copy("alice");
    assert_eq!(
        alice
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(COPIED_FROM))
            .map(String::as_str),
        Some("staging/movies")
    );
    let spec = &alice.data["spec"];
    assert_eq!(spec["hosts"], json!(["movies-alice.example.com"]));
    assert_eq!(
        spec["gateways"],
        json!(["staging/public", "istio-ingress/shared"])
    );
    assert!(spec.get("tls").is_none(), "{spec}");
    assert_eq!(spec["exportTo"], json!(["*"]));
    let http = &spec["http"];
    assert_eq!(
        http[0]["headers"]["request"]["add"]["baggage"],
        "team=movies,okteto-divert=alice"
    );
    assert_eq!(
        http[1]["headers"]["request"]["add"]["baggage"],
        "okteto-divert=alice"
    );
    // alice does not run api: the shared copy, by its full name.
    assert_eq!(
        http[0]["route"][0]["destination"]["host"],
        "api.staging.svc.cluster.local"
    );
    assert_eq!(http[0]["route"][0]["destination"]["port"]["number"], 8080);
    // She runs frontend: her copy, straight from the gateway.
    assert_eq!(
        http[1]["route"][0]["destination"]["host"],
        "frontend.alice.svc.cluster.local"
    );
    assert_eq!(http[1]["route"][0]["weight"], 100);
    assert_eq!(
        http[1]["mirror"]["host"],
        "shadow.staging.svc.cluster.local"
    );
    assert_eq!(http.as_array().map(Vec::len), Some(2), "{http}");

    let bob = &copy("bob").data["spec"];
    assert_eq!(bob["hosts"], json!(["movies-bob.example.com"]));
    assert_eq!(
        bob["http"][0]["route"][0]["destination"]["host"],
        "api.bob.svc.cluster.local"
    );
    assert_eq!(
        bob["http"][1]["route"][0]["destination"]["host"],
        "frontend.staging.svc.cluster.local"
    );
}

#[test]
fn a_mesh_only_or_hostless_virtual_service_is_not_copied() {
    let mut s = movies();
    let v = s.virtual_services().expect("on");
    sources::apply(
        v,
        vs(
            "staging",
            "internal",
            json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
        ),
    );
    sources::apply(
        v,
        vs(
            "staging",
            "local",
            json!({"hosts": ["api.staging.svc.cluster.local"], "gateways": ["public"],
        "http": [{"route": [{"destination": {"host": "api"}}]}]}),
        ),
    );
    let (objects, _) = plan(&s, s.istio.as_ref().expect("on"));
    assert!(
        objects.iter().all(|o| o
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with(MESH_ROUTE_PREFIX))),
        "{objects:?}"
    );
}

fn ops(plan: &Plan) -> Vec<String> {
    plan.ops
        .iter()
        .map(|op| match op {
            Op::Create(o) => format!(
                "create {:?} {}/{}",
                o.kind(),
                o.meta().namespace.as_deref().unwrap_or_default(),
                o.meta().name.as_deref().unwrap_or_default()
            ),
            Op::Update { object, .. } => format!(
                "update {:?} {}/{}",
                object.kind(),
                object.meta().namespace.as_deref().unwrap_or_default(),
                object.meta().name.as_deref().unwrap_or_default()
            ),
            Op::Delete {
                kind,
                namespace,
                name,
                ..
            } => format!("delete {kind:?} {namespace}/{name}"),
            Op::Release { name, .. } => format!("release {name}"),
        })
        .collect()
}

#[test]
fn the_copier_creates_the_routes_then_removes_them_when_the_divert_namespace_goes() {
    let mut s = movies();
    let first = plan_all(&s);
    let created: Vec<_> = ops(&first)
        .into_iter()
        .filter(|o| o.contains("VirtualService"))
        .collect();
    assert_eq!(created.len(), 6, "{created:?}");
    assert_eq!(first.copies.get(&Kind::VirtualService), Some(&6));
    // The watch reports them back.
    for op in &first.ops {
        if let Op::Create(Object::VirtualService(o)) = op {
            let mut o = (**o).clone();
            o.metadata.resource_version = Some("100".into());
            sources::apply(s.virtual_services().expect("on"), o);
        }
    }
    let again = plan_all(&s);
    assert!(
        ops(&again).iter().all(|o| !o.contains("VirtualService")),
        "{:?}",
        ops(&again)
    );

    // bob leaves: his api's routes go; alice's lose bob's key.
    s.delete_namespace("bob");
    let after = plan_all(&s);
    let mut changed: Vec<_> = ops(&after)
        .into_iter()
        .filter(|o| o.contains("VirtualService"))
        .collect();
    changed.sort();
    assert_eq!(
        changed,
        [
            "delete VirtualService bob/divert-api",
            "delete VirtualService staging/divert-api",
            "update VirtualService alice/divert-catalog",
            "update VirtualService alice/divert-frontend",
            "update VirtualService staging/divert-catalog",
            "update VirtualService staging/divert-frontend",
        ]
    );
    for op in &after.ops {
        if let Op::Update {
            object: Object::VirtualService(o),
            ..
        } = op
        {
            let regexes: Vec<&str> = o.data["spec"]["http"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r["match"].as_array().into_iter().flatten())
                .filter_map(|m| m["headers"]["baggage"]["regex"].as_str())
                .collect();
            assert!(
                regexes.contains(&baggage_regex("alice").as_str()),
                "{regexes:?}"
            );
            assert!(
                !regexes.contains(&baggage_regex("bob").as_str()),
                "{regexes:?}"
            );
        }
    }
}

#[test]
fn without_the_istio_driver_no_virtual_service_is_made_or_removed() {
    let mut s = Sources::default();
    s.replace_namespaces(&[namespace("alice", "staging")]);
    sources::apply(s.services(), service("staging", "catalog", &[8080]));
    sources::apply(s.services(), service("alice", "catalog", &[8080]));
    assert!(s.virtual_services().is_none());
    s.set_listed();
    let p = plan_all(&s);
    assert!(
        ops(&p).iter().all(|o| !o.contains("VirtualService")),
        "{:?}",
        ops(&p)
    );
    assert_eq!(p.copies.get(&Kind::VirtualService), None);
}

#[test]
fn without_istios_crds_the_driver_writes_nothing_and_says_why() {
    let mut s = movies();
    s.virtual_services_missing();
    let (objects, problems) = plan(&s, s.istio.as_ref().expect("on"));
    assert!(objects.is_empty(), "{objects:?}");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].why.contains("serves no VirtualService kind"),
        "{}",
        problems[0].why
    );
    // A list of the kind (Istio installed since) clears it.
    s.virtual_services().expect("on");
    let (objects, problems) = plan(&s, s.istio.as_ref().expect("on"));
    assert_eq!(objects.len(), 6);
    assert!(problems.is_empty(), "{problems:?}");
}
