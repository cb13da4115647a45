use super::*;
use crate::reason::Reason;

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
    (r.to_string(), r.reason)
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
        key_cookie: false,
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
