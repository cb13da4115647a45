use serde_json::json;

use super::*;

fn ns(
    name: &str,
    labels: serde_json::Value,
    annotations: serde_json::Value,
) -> (String, Namespace) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {
        "name": name, "resourceVersion": "3", "labels": labels, "annotations": annotations}}))
    .expect("a namespace");
    (name.to_owned(), ns)
}

fn req(shared: &str, expires_at: Option<&str>) -> Request {
    Request {
        shared: shared.to_owned(),
        expires_at: expires_at.map(str::to_owned),
        resource_version: "9".to_owned(),
        debug: false,
    }
}

fn now() -> Timestamp {
    "2026-12-01T12:00:00Z".parse().unwrap()
}

#[test]
fn allowed_is_anyone_or_a_label_selector_as_kubectl_takes_it() {
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    };
    assert_eq!(parse_allowed(" * ").unwrap(), Allowed::Anyone);
    let a = parse_allowed("team=movies, env in (dev, preview),!restricted").unwrap();
    assert!(a.admits(&labels(&[("team", "movies"), ("env", "dev")])));
    assert!(!a.admits(&labels(&[("team", "movies"), ("env", "prod")])));
    assert!(!a.admits(&labels(&[
        ("team", "movies"),
        ("env", "dev"),
        ("restricted", "")
    ])));
    let b = parse_allowed("example.com/tier!=prod,owner,kind notin (system)").unwrap();
    assert!(b.admits(&labels(&[("owner", "alice")])));
    assert!(!b.admits(&labels(&[("owner", "alice"), ("kind", "system")])));
    assert!(!b.admits(&labels(&[])));
    for bad in ["", "a in (b", "a)", "bad key=1", "a in b"] {
        assert!(parse_allowed(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_request_the_shared_namespace_allows_labels_the_namespace_as_the_controllers() {
    let namespaces = BTreeMap::from([
        ns("staging", json!({}), json!({DIVERT_ALLOWED: "team=movies"})),
        ns("dana", json!({"team": "movies"}), json!({})),
        ns("eve", json!({"team": "books"}), json!({})),
    ]);
    let requests = BTreeMap::from([
        (
            "dana".to_owned(),
            Request {
                debug: true,
                ..req("staging", Some("2026-12-01T20:00:00Z"))
            },
        ),
        ("eve".to_owned(), req("staging", None)),
    ]);
    let (ops, outcomes) = plan(&namespaces, &requests, now());
    assert_eq!(
        ops,
        [Op::Label {
            namespace: "dana".into(),
            shared: "staging".into(),
            expires_at: Some("2026-12-01T20:00:00Z".into()),
            debug: true,
            resource_version: "3".into(),
        }]
    );
    assert!(outcomes[0].diverting);
    assert!(
        outcomes[0]
            .message
            .ends_with("[ConfigMap divert at version 9]"),
        "{outcomes:?}"
    );
    assert!(!outcomes[1].diverting);
    assert!(
        outcomes[1].message.contains("does not match eve's labels"),
        "{outcomes:?}"
    );
}

#[test]
fn without_the_shared_namespaces_consent_nothing_is_labelled_and_the_reason_says_how() {
    let namespaces = BTreeMap::from([
        ns("staging", json!({}), json!({})),
        ns("dana", json!({}), json!({})),
    ]);
    let requests = BTreeMap::from([("dana".to_owned(), req("staging", None))]);
    let (ops, outcomes) = plan(&namespaces, &requests, now());
    assert!(ops.is_empty());
    assert!(outcomes[0].message.contains(DIVERT_ALLOWED), "{outcomes:?}");
    let missing = BTreeMap::from([("dana".to_owned(), req("nosuch", None))]);
    let (_, outcomes) = plan(&namespaces, &missing, now());
    assert!(
        outcomes[0].message.contains("does not exist"),
        "{outcomes:?}"
    );
}

#[test]
fn an_admins_label_is_never_touched_and_the_controllers_goes_with_its_reason() {
    let namespaces = BTreeMap::from([
        ns("staging", json!({}), json!({DIVERT_ALLOWED: "*"})),
        ns("alice", json!({SHARED_NAMESPACE: "staging"}), json!({})),
        ns(
            "dana",
            json!({SHARED_NAMESPACE: "staging"}),
            json!({OPTED_IN_BY: BY_CONFIG_MAP}),
        ),
        ns(
            "fred",
            json!({SHARED_NAMESPACE: "staging"}),
            json!({OPTED_IN_BY: BY_CONFIG_MAP}),
        ),
    ]);
    // alice's ConfigMap changes nothing (an admin labelled her); dana's
    // request stays and is current; fred's ConfigMap is gone.
    let requests = BTreeMap::from([
        ("alice".to_owned(), req("staging", None)),
        ("dana".to_owned(), req("staging", None)),
    ]);
    let (ops, outcomes) = plan(&namespaces, &requests, now());
    assert_eq!(
        ops,
        [Op::Unlabel {
            namespace: "fred".into(),
            resource_version: "3".into(),
        }]
    );
    assert!(outcomes.iter().all(|o| o.diverting), "{outcomes:?}");
    // Once its time has passed, dana's request no longer counts.
    let expired = BTreeMap::from([(
        "dana".to_owned(),
        req("staging", Some("2026-12-01T11:00:00Z")),
    )]);
    let (ops, outcomes) = plan(&namespaces, &expired, now());
    assert!(ops.contains(&Op::Unlabel {
        namespace: "dana".into(),
        resource_version: "3".into()
    }));
    assert!(!outcomes[0].diverting);
}

#[test]
fn only_a_labelled_config_map_named_divert_is_a_request() {
    let cm = |name: &str, labels: serde_json::Value| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "dana",
            "resourceVersion": "9",
            "labels": labels, "annotations": {EXPIRES_AT: "2026-12-01T20:00:00Z"}}}))
        .unwrap()
    };
    assert_eq!(
        request(&cm(OPT_IN, json!({SHARED_NAMESPACE: "staging"}))),
        Some(("dana".into(), req("staging", Some("2026-12-01T20:00:00Z"))))
    );
    assert_eq!(
        request(&cm("other", json!({SHARED_NAMESPACE: "staging"}))),
        None
    );
    assert_eq!(request(&cm(OPT_IN, json!({}))), None);
}
