use super::*;
use crate::VERSION;
use divert_core::names;

const STREAM: &str = r#"
# a comment, lost
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: staging
spec:
  selector: {app: api}
  ports: [{port: 8080, name: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  namespace: staging
  labels: {expose: "yes"}
spec:
  replicas: 2
  selector:
    matchLabels: {app: api}
  template:
    metadata:
      labels: {app: api}
    spec:
      containers:
      - name: api
        image: api:1
        resources:
          requests: {cpu: 1}
        futureField: kept
---
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - name: report
            image: report:1
"#;

fn docs(text: &str) -> Vec<Value> {
    parse_documents(text).unwrap()
}

fn run(docs: &mut [Value], options: &Options) -> Vec<Report> {
    let mut reports = Vec::new();
    for doc in docs {
        reports.extend(inject_document(doc, options, &crate::tests::settings()).unwrap());
    }
    reports
}

fn template_names<'a>(doc: &'a Value, path: &[&str]) -> Vec<&'a str> {
    let spec = path.iter().try_fold(doc, |v, k| v.get(*k)).unwrap();
    let mut names = Vec::new();
    for list in ["initContainers", "containers"] {
        for c in spec
            .get(list)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            names.push(c.get("name").and_then(Value::as_str).unwrap());
        }
    }
    names
}

#[test]
fn injects_workloads_and_keeps_the_rest() {
    let mut docs = docs(STREAM);
    assert_eq!(docs.len(), 3, "empty documents are dropped");
    let before = docs.clone();
    let reports = run(&mut docs, &Options::default());
    assert_eq!(
        reports,
        [
            Report {
                object: "Deployment staging/api".into(),
                change: Change::Injected
            },
            Report {
                object: "CronJob nightly".into(),
                change: Change::Injected
            },
        ]
    );
    assert_eq!(docs[0], before[0]);
    assert_eq!(
        template_names(&docs[1], &["spec", "template", "spec"]),
        ["divert-init", "divert-proxy", "api"]
    );
    assert_eq!(
        template_names(
            &docs[2],
            &["spec", "jobTemplate", "spec", "template", "spec"]
        ),
        ["divert-init", "divert-proxy", "report"]
    );
    // What k8s-openapi does not know, and how numbers were written, stay.
    let api = &docs[1]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(api["futureField"], Value::from("kept"));
    assert_eq!(api["resources"]["requests"]["cpu"], Value::from(1));
    assert_eq!(
        docs[1]["spec"]["template"]["metadata"]["annotations"]["divert.dev/injected"],
        Value::from(VERSION)
    );
    // Key order is kept: the template's metadata still comes first.
    let keys: Vec<&str> = docs[1]["spec"]["template"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(keys, ["metadata", "spec"]);

    // Idempotent.
    let once = docs.clone();
    let reports = run(&mut docs, &Options::default());
    assert!(reports.iter().all(|r| r.change == Change::AlreadyInjected));
    assert_eq!(docs, once);

    // Written and read back, the same; "yes" stays a string for kubectl.
    let text = render_documents(&docs).unwrap();
    assert!(text.contains("expose: \"yes\""), "{text}");
    assert_eq!(parse_documents(&text).unwrap(), docs);
}

#[test]
fn pods_lists_and_namespaces() {
    let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata:
    name: alice
    labels: {divert.dev/shared-namespace: staging}
- apiVersion: v1
  kind: Pod
  metadata: {name: p, namespace: alice}
  spec:
    containers: [{name: app, image: app:1}]
- apiVersion: v1
  kind: Pod
  metadata: {name: q}
  spec:
    hostNetwork: true
    containers: [{name: app, image: app:1}]
- apiVersion: example.com/v1
  kind: Deployment
  metadata: {name: not-apps}
  spec: {template: {spec: {containers: [{name: x}]}}}
"#;
    let mut docs = docs(text);
    let options = Options {
        divert_namespaces: divert_namespaces(&docs),
        ..Options::default()
    };
    assert_eq!(
        options.divert_namespaces,
        BTreeMap::from([("alice".to_owned(), "staging".to_owned())])
    );
    let reports = run(&mut docs, &options);
    assert_eq!(
        reports,
        [
            Report {
                object: "Pod alice/p".into(),
                change: Change::Injected
            },
            Report {
                object: "Pod q".into(),
                change: Change::Skipped(SkipReason::HostNetwork)
            },
        ]
    );
    let pod = &docs[0]["items"][1];
    assert_eq!(
        template_names(pod, &["spec"]),
        ["divert-init", "divert-proxy", "app"]
    );
    assert_eq!(
        pod["spec"]["dnsConfig"]["searches"][0],
        Value::from("staging.svc.cluster.local")
    );
    let typed: Pod = serde_json::from_value(serde_json::to_value(pod).unwrap()).unwrap();
    assert_eq!(
        typed.spec.unwrap().init_containers.unwrap()[1].name,
        names::container::PROXY
    );
}

#[test]
fn options_choose_the_namespace() {
    let object = docs("metadata: {namespace: team}\n").remove(0);
    let none = docs("metadata: {name: x}\n").remove(0);
    let options = Options::default();
    assert_eq!(options.namespace_of(&object), NamespaceInfo::shared("team"));
    assert_eq!(
        options.namespace_of(&none),
        NamespaceInfo::shared("default")
    );
    let options = Options {
        namespace: Some("bob".into()),
        shared_namespace: Some("staging".into()),
        ..Options::default()
    };
    assert_eq!(
        options.namespace_of(&object),
        NamespaceInfo::divert("bob", "staging")
    );
    let options = Options {
        divert_namespaces: BTreeMap::from([("team".to_owned(), "staging".to_owned())]),
        ..Options::default()
    };
    assert_eq!(
        options.namespace_of(&object),
        NamespaceInfo::divert("team", "staging")
    );
}

#[test]
fn errors_name_the_object() {
    let mut doc = docs(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: staging}
spec:
  template:
    metadata:
      annotations: {divert.dev/skip-outbound-ports: "http"}
    spec:
      containers: [{name: db, image: db:1}]
"#,
    )
    .remove(0);
    let err =
        inject_document(&mut doc, &Options::default(), &crate::tests::settings()).unwrap_err();
    assert!(err.is_usage());
    assert!(
        err.to_string()
            .starts_with("StatefulSet staging/db: annotation divert.dev/skip-outbound-ports:"),
        "{err}"
    );

    let mut doc = docs(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n      containers: 3\n",
    )
    .remove(0);
    let err =
        inject_document(&mut doc, &Options::default(), &crate::tests::settings()).unwrap_err();
    assert!(!err.is_usage());
    assert!(
        err.to_string()
            .starts_with("DaemonSet d: the pod template is not valid"),
        "{err}"
    );

    // A workload without a template (a kustomize patch) is left alone.
    let mut doc =
        docs("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 3}\n")
            .remove(0);
    let before = doc.clone();
    let reports =
        inject_document(&mut doc, &Options::default(), &crate::tests::settings()).unwrap();
    assert_eq!(reports[0].change, Change::NoTemplate);
    assert_eq!(doc, before);
}

#[test]
fn parse_errors_give_the_document() {
    let (index, _) = parse_documents("a: 1\n---\nb: [\n").unwrap_err();
    assert_eq!(index, 2);
    // JSON is YAML.
    let docs = parse_documents(r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}"#)
        .unwrap();
    assert_eq!(describe(&docs[0]), "Pod p");
}
