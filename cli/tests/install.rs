//! `divert install`: every document parses into its Kubernetes type, the RBAC
//! grants nothing beyond reads of what the controller watches, the generated
//! certificate chains to the webhook's caBundle and names the Service, and
//! deploy/install/divert.yaml is exactly what it prints (with the generated
//! certificate material replaced by placeholders).
//!
//! To regenerate the rendered copy after changing the manifests:
//! `DIVERT_RENDER_INSTALL=1 cargo test -p divert-cli --test install`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::serde::Deserialize;
use k8s_openapi::serde::de::DeserializeOwned;
use serde_yaml_ng::Value;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// The fields whose values `divert install` generates afresh each run.
const GENERATED: [&str; 5] = [
    "ca.crt",
    "tls.crt",
    "tls.key",
    "caBundle",
    "divert.dev/tls-checksum",
];
const PLACEHOLDER: &str = "GENERATED-BY-DIVERT-INSTALL";
const RENDERED_HEADER: &str = "\
# deploy/install/divert.yaml: what `divert install` prints, with the generated
# certificate material replaced by GENERATED-BY-DIVERT-INSTALL. For reading and
# review only: it does not apply (the placeholders are not base64). To install,
# run `divert install | kubectl apply -f -`. Regenerate this file with
# `DIVERT_RENDER_INSTALL=1 cargo test -p divert-cli --test install`.
";

fn divert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_divert"))
        .args(args)
        .output()
        .expect("run divert")
}

fn install(args: &[&str]) -> String {
    let mut all = vec!["install"];
    all.extend_from_slice(args);
    let out = divert(&all);
    assert!(
        out.status.success(),
        "divert install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The manifests, typed.
struct Manifests {
    namespace: Namespace,
    service_account: ServiceAccount,
    cluster_role: ClusterRole,
    cluster_role_binding: ClusterRoleBinding,
    policies: Vec<ValidatingAdmissionPolicy>,
    bindings: Vec<ValidatingAdmissionPolicyBinding>,
    client_ca_reader: RoleBinding,
    secret: Secret,
    ca: ConfigMap,
    ca_reader: Role,
    ca_reader_binding: RoleBinding,
    service: Service,
    deployment: Deployment,
    webhooks: MutatingWebhookConfiguration,
}

fn typed<T: DeserializeOwned>(doc: &Value) -> T {
    serde_yaml_ng::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e} in document:\n{doc:?}"))
}

fn parse(yaml: &str) -> Manifests {
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("a YAML document"))
        .collect();
    let kinds: Vec<&str> = docs
        .iter()
        .map(|d| d["kind"].as_str().expect("every document has a kind"))
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "RoleBinding",
            "Secret",
            "ConfigMap",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment",
            "MutatingWebhookConfiguration",
        ]
    );
    Manifests {
        namespace: typed(&docs[0]),
        service_account: typed(&docs[1]),
        cluster_role: typed(&docs[2]),
        cluster_role_binding: typed(&docs[3]),
        policies: vec![typed(&docs[4]), typed(&docs[6])],
        bindings: vec![typed(&docs[5]), typed(&docs[7])],
        client_ca_reader: typed(&docs[8]),
        secret: typed(&docs[9]),
        ca: typed(&docs[10]),
        ca_reader: typed(&docs[11]),
        ca_reader_binding: typed(&docs[12]),
        service: typed(&docs[13]),
        deployment: typed(&docs[14]),
        webhooks: typed(&docs[15]),
    }
}

/// `yaml` with each generated value replaced by the placeholder (a block
/// scalar's lines with it); also returns how many values were replaced.
fn mask(yaml: &str) -> (String, usize) {
    let mut masked = 0;
    let mut out = String::with_capacity(yaml.len());
    // The indent of a masked block scalar whose lines are being skipped.
    let mut skipping: Option<usize> = None;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(block) = skipping {
            if indent > block && !line.trim().is_empty() {
                continue;
            }
            skipping = None;
        }
        let key = GENERATED
            .iter()
            .find(|k| line[indent..].starts_with(&format!("{k}: ")));
        match key {
            Some(k) => {
                masked += 1;
                out.push_str(&format!("{}{k}: {PLACEHOLDER}\n", &line[..indent]));
                if line.trim_end().ends_with('|') || line.trim_end().ends_with("|-") {
                    skipping = Some(indent);
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    (out, masked)
}

fn rendered_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/install/divert.yaml")
}

#[test]
fn rendered_copy_is_what_install_prints() {
    let (masked, count) = mask(&install(&[]));
    // ca.crt (the Secret's and the public ConfigMap's), tls.crt, tls.key,
    // two caBundles, the checksum annotation.
    assert_eq!(count, 7, "generated fields masked:\n{masked}");
    let expected = format!("{RENDERED_HEADER}{masked}");
    let path = rendered_path();
    if std::env::var_os("DIVERT_RENDER_INSTALL").is_some() {
        std::fs::write(&path, &expected).expect("write the rendered copy");
        return;
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    if actual != expected {
        let line = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()));
        panic!(
            "{} is not what `divert install` prints (first difference at line {}: {:?} vs {:?}); \
             regenerate it with DIVERT_RENDER_INSTALL=1 cargo test -p divert-cli --test install",
            path.display(),
            line + 1,
            actual.lines().nth(line),
            expected.lines().nth(line),
        );
    }
}

#[test]
fn every_document_is_its_kubernetes_type() {
    let m = parse(&install(&[]));
    let label = |labels: &Option<std::collections::BTreeMap<String, String>>, key: &str| {
        labels.as_ref().and_then(|l| l.get(key)).cloned()
    };

    assert_eq!(m.namespace.metadata.name.as_deref(), Some("divert"));
    assert_eq!(
        label(&m.namespace.metadata.labels, "divert.dev/inject").as_deref(),
        Some("disabled")
    );
    assert_eq!(
        m.service_account.metadata.name.as_deref(),
        Some("divert-controller")
    );

    // The controller.
    let spec = m.deployment.spec.expect("deployment spec");
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("divert-controller")
    );
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(concat!("divert:", env!("CARGO_PKG_VERSION")))
    );
    let args = c.args.clone().expect("args").join(" ");
    assert!(
        args.starts_with(
            "controller --grpc-addr 0.0.0.0:8086 --admin-addr 0.0.0.0:9990 \
             --webhook-addr 0.0.0.0:8443 --webhook-cert /var/run/divert/tls/tls.crt \
             --webhook-key /var/run/divert/tls/tls.key"
        ),
        "{args}"
    );
    let sc = c.security_context.clone().expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(2103));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(
        sc.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let mount = &c.volume_mounts.as_ref().expect("mounts")[0];
    assert_eq!(mount.mount_path, "/var/run/divert/tls");
    assert_eq!(mount.read_only, Some(true));
    let volume = &pod.volumes.as_ref().expect("volumes")[0];
    assert_eq!(
        volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref()),
        Some("divert-webhook-tls")
    );
    for (probe, path) in [(&c.liveness_probe, "/live"), (&c.readiness_probe, "/ready")] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("http probe");
        assert_eq!(get.path.as_deref(), Some(path));
    }
    assert!(
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some()
    );

    // Its Service: grpc, the webhook on 443 → 8443, admin.
    let ports: Vec<(String, i32, Option<String>)> = m
        .service
        .spec
        .expect("service spec")
        .ports
        .expect("ports")
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.port, p.app_protocol))
        .collect();
    assert_eq!(
        ports,
        [
            ("grpc".to_owned(), 8086, Some("grpc".to_owned())),
            ("webhook".to_owned(), 443, None),
            ("admin".to_owned(), 9990, None),
        ]
    );
    let container_ports: Vec<(String, i32)> = c
        .ports
        .clone()
        .expect("container ports")
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.container_port))
        .collect();
    assert!(container_ports.contains(&("webhook".to_owned(), 8443)));

    // The webhooks: two, ORing the two kinds of opted-in namespace.
    let hooks = m.webhooks.webhooks.expect("webhooks");
    let names: Vec<&str> = hooks.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        ["inject-shared.divert.dev", "inject-divert.divert.dev"]
    );
    for h in &hooks {
        let svc = h.client_config.service.as_ref().expect("service reference");
        assert_eq!(
            (
                svc.namespace.as_str(),
                svc.name.as_str(),
                svc.path.as_deref(),
                svc.port
            ),
            ("divert", "divert-controller", Some("/inject"), Some(443))
        );
        assert_eq!(h.admission_review_versions, ["v1"]);
        assert_eq!(h.side_effects, "None");
        assert_eq!(h.failure_policy.as_deref(), Some("Ignore"));
        assert_eq!(h.timeout_seconds, Some(5));
        assert_eq!(h.reinvocation_policy.as_deref(), Some("Never"));
        let rules = h.rules.as_ref().expect("rules");
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].operations.as_deref(),
            Some(&["CREATE".to_owned()][..])
        );
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["pods".to_owned()][..])
        );
        assert_eq!(rules[0].api_groups.as_deref(), Some(&[String::new()][..]));
        assert_eq!(
            rules[0].api_versions.as_deref(),
            Some(&["v1".to_owned()][..])
        );
        let object = h.object_selector.as_ref().expect("objectSelector");
        let exclude = &object.match_expressions.as_ref().expect("expressions")[0];
        assert_eq!(
            (exclude.key.as_str(), exclude.operator.as_str()),
            ("divert.dev/inject", "NotIn")
        );
        assert_eq!(
            exclude.values.as_deref(),
            Some(&["disabled".to_owned()][..])
        );
    }
    let shared = hooks[0].namespace_selector.as_ref().expect("selector");
    assert_eq!(
        label(&shared.match_labels, "divert.dev/inject").as_deref(),
        Some("enabled")
    );
    let divert_ns = hooks[1].namespace_selector.as_ref().expect("selector");
    assert!(
        divert_ns
            .match_expressions
            .as_ref()
            .expect("expressions")
            .iter()
            .any(|e| e.key == "divert.dev/shared-namespace" && e.operator == "Exists")
    );
}

/// Every `(group, resource, verb)` the ClusterRole grants.
fn granted(m: &Manifests) -> BTreeSet<(String, String, String)> {
    let mut granted = BTreeSet::new();
    for rule in m.cluster_role.rules.clone().expect("rules") {
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        assert!(rule.resource_names.is_none(), "{rule:?}");
        let verbs: Vec<&str> = rule.verbs.iter().map(String::as_str).collect();
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &verbs {
                    granted.insert((group.clone(), resource.clone(), (*verb).to_owned()));
                }
            }
        }
    }
    granted
}

#[test]
fn cluster_role_reads_what_the_controller_watches_and_writes_only_what_it_must() {
    let m = parse(&install(&[]));
    assert!(m.cluster_role.aggregation_rule.is_none());
    let granted = granted(&m);
    // Namespaces: read, and patch to end one whose time has passed.
    let namespaces = ["get", "list", "watch", "patch"];
    let write = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    let expected: BTreeSet<(String, String, String)> = [
        ("", "namespaces", &namespaces[..]),
        ("", "services", &write[..]),
        ("", "configmaps", &["get", "list", "watch"][..]),
        ("events.k8s.io", "events", &["create", "patch"][..]),
        ("discovery.k8s.io", "endpointslices", &write[..]),
        ("networking.k8s.io", "ingresses", &write[..]),
        ("gateway.networking.k8s.io", "httproutes", &write[..]),
        // Who calls the gRPC API: a proxy's pod, a person's rights.
        ("", "pods", &["get"][..]),
        ("authentication.k8s.io", "tokenreviews", &["create"][..]),
        (
            "authorization.k8s.io",
            "subjectaccessreviews",
            &["create"][..],
        ),
    ]
    .iter()
    .flat_map(|(g, r, verbs)| {
        verbs
            .iter()
            .map(|v| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
    })
    .collect();
    assert_eq!(granted, expected);

    let binding = m.cluster_role_binding;
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, "divert-controller");
    let subjects = binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, "divert-controller");
    assert_eq!(subjects[0].namespace.as_deref(), Some("divert"));
}

/// The resources the policy on the copies holds the controller to.
fn copies_kinds(m: &Manifests) -> Vec<String> {
    m.policies[0]
        .spec
        .as_ref()
        .expect("spec")
        .match_constraints
        .as_ref()
        .and_then(|c| c.resource_rules.clone())
        .unwrap_or_default()
        .into_iter()
        .flat_map(|r| r.resources.unwrap_or_default())
        .collect()
}

/// The API server holds the controller to its own objects in divert
/// namespaces and Divert's own keys on Namespaces (the proof is on the test
/// control plane, tests/tests/cluster.rs); people may read the CA, nothing
/// more; the controller reads the cluster's client CA.
#[test]
fn policies_narrow_the_controller_and_the_ca_is_public() {
    let m = parse(&install(&[]));
    let names: Vec<&str> = m
        .policies
        .iter()
        .map(|p| p.metadata.name.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        ["divert-controller-copies", "divert-controller-namespaces"]
    );
    for (policy, binding) in m.policies.iter().zip(&m.bindings) {
        let spec = policy.spec.as_ref().expect("spec");
        assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
        let conditions = spec.match_conditions.as_ref().expect("match conditions");
        assert_eq!(
            conditions[0].expression,
            "request.userInfo.username == 'system:serviceaccount:divert:divert-controller'"
        );
        let b = binding.spec.as_ref().expect("binding spec");
        assert_eq!(b.policy_name.as_deref(), policy.metadata.name.as_deref());
        assert_eq!(
            b.validation_actions.as_deref(),
            Some(&["Deny".to_owned()][..])
        );
    }
    assert_eq!(
        copies_kinds(&m),
        ["services", "endpointslices", "ingresses", "httproutes"]
    );

    assert_eq!(
        m.client_ca_reader.metadata.namespace.as_deref(),
        Some("kube-system")
    );
    assert_eq!(
        m.client_ca_reader.role_ref.name,
        "extension-apiserver-authentication-reader"
    );
    let ca = m.ca.data.as_ref().expect("data");
    let secret_ca = &m.secret.data.as_ref().expect("secret data")["ca.crt"];
    assert_eq!(
        ca["ca.crt"].as_bytes(),
        secret_ca.0,
        "the public CA is the Secret's"
    );
    let rule = &m.ca_reader.rules.as_ref().expect("rules")[0];
    assert_eq!(
        rule.resource_names.as_deref(),
        Some(&["divert-ca".to_owned()][..])
    );
    assert_eq!(rule.verbs, ["get"]);
    let subjects = m.ca_reader_binding.subjects.as_ref().expect("subjects");
    assert_eq!(
        (subjects[0].kind.as_str(), subjects[0].name.as_str()),
        ("Group", "system:authenticated")
    );
}

/// The Secret's and the webhooks' certificate material: the serving
/// certificate verifies against the caBundle and names the Service.
fn check_certificates(m: &Manifests, names: [&str; 2], days: i64) {
    assert_eq!(m.secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = m.secret.data.as_ref().expect("secret data");
    let get = |k: &str| String::from_utf8(data[k].0.clone()).expect("PEM is text");
    let (ca_pem, cert_pem, key_pem) = (get("ca.crt"), get("tls.crt"), get("tls.key"));
    for h in m.webhooks.webhooks.as_ref().expect("webhooks") {
        let bundle = h.client_config.ca_bundle.as_ref().expect("caBundle");
        assert_eq!(
            bundle.0,
            ca_pem.as_bytes(),
            "caBundle is the Secret's ca.crt"
        );
    }

    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).expect("CA PEM");
    let (_, ca) = X509Certificate::from_der(&ca_pem.contents).expect("CA certificate");
    let (_, cert_pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).expect("cert PEM");
    let (_, cert) = X509Certificate::from_der(&cert_pem.contents).expect("serving certificate");

    assert!(ca.is_ca());
    assert_eq!(cert.issuer(), ca.subject());
    cert.verify_signature(Some(ca.public_key()))
        .expect("the serving certificate is signed by the caBundle's CA");
    ca.verify_signature(None).expect("the CA is self-signed");
    assert!(!cert.is_ca());

    // ECDSA P-256 keys.
    for c in [&ca, &cert] {
        let spki = c.public_key();
        assert_eq!(spki.algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1");
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string());
        assert_eq!(curve.as_deref(), Some("1.2.840.10045.3.1.7"));
    }

    // The SANs are exactly the Service's names.
    let mut sans = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(n) => sans.push((*n).to_owned()),
                    other => panic!("unexpected SAN {other:?}"),
                }
            }
        }
    }
    assert_eq!(sans, names);
    assert!(
        cert.subject()
            .iter_common_name()
            .any(|cn| cn.as_str().ok() == Some(names[0]))
    );

    // Valid now, for the asked number of days (give or take the 5 minutes
    // of back-dating and the time the test took).
    let validity = cert.validity();
    assert!(validity.is_valid());
    let span = validity.not_after.timestamp() - validity.not_before.timestamp();
    assert!(
        (span - days * 86_400 - 300).abs() < 120,
        "validity {span}s for {days} days"
    );
    assert_eq!(ca.validity().not_after, validity.not_after);

    // The key is the certificate's.
    let key = rcgen::KeyPair::from_pem(&key_pem).expect("tls.key is a PKCS#8 PEM key");
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(
        rcgen::PublicKeyData::subject_public_key_info(&key),
        cert.public_key().raw
    );
}

#[test]
fn serving_certificate_chains_to_the_ca_bundle() {
    let m = parse(&install(&[]));
    check_certificates(
        &m,
        [
            "divert-controller.divert.svc",
            "divert-controller.divert.svc.cluster.local",
        ],
        365,
    );
}

#[test]
fn flags_change_namespace_domain_validity_and_image() {
    let m = parse(&install(&[
        "--namespace",
        "mesh",
        "--cluster-domain",
        "corp.example",
        "--cert-validity-days",
        "30",
        "--image",
        "registry.example/divert:dev",
    ]));
    check_certificates(
        &m,
        [
            "divert-controller.mesh.svc",
            "divert-controller.mesh.svc.corp.example",
        ],
        30,
    );
    assert_eq!(m.namespace.metadata.name.as_deref(), Some("mesh"));
    for ns in [
        &m.service_account.metadata.namespace,
        &m.secret.metadata.namespace,
        &m.service.metadata.namespace,
        &m.deployment.metadata.namespace,
    ] {
        assert_eq!(ns.as_deref(), Some("mesh"));
    }
    assert_eq!(
        m.cluster_role_binding.subjects.expect("subjects")[0]
            .namespace
            .as_deref(),
        Some("mesh")
    );
    for h in m.webhooks.webhooks.expect("webhooks") {
        assert_eq!(h.client_config.service.expect("service").namespace, "mesh");
    }
    let pod = m.deployment.spec.expect("spec").template.spec.expect("pod");
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.example/divert:dev"));
    let args = c.args.clone().expect("args").join(" ");
    assert!(
        args.contains("--image registry.example/divert:dev"),
        "{args}"
    );
    assert!(args.contains("--cluster-domain corp.example"), "{args}");
    assert!(
        args.contains("--controller-url https://divert-controller.mesh.svc:8086"),
        "{args}"
    );
}

#[test]
fn each_run_generates_a_new_certificate() {
    let a = parse(&install(&[]));
    let b = parse(&install(&[]));
    let key = |m: &Manifests| m.secret.data.as_ref().expect("data")["tls.key"].0.clone();
    let ca = |m: &Manifests| m.secret.data.as_ref().expect("data")["ca.crt"].0.clone();
    assert_ne!(key(&a), key(&b));
    assert_ne!(ca(&a), ca(&b));
    let checksum = |m: &Manifests| {
        m.deployment
            .spec
            .as_ref()
            .expect("spec")
            .template
            .metadata
            .as_ref()
            .and_then(|meta| meta.annotations.as_ref())
            .and_then(|a| a.get("divert.dev/tls-checksum").cloned())
            .expect("checksum annotation")
    };
    assert_ne!(checksum(&a), checksum(&b));
}

/// The Deployment runs `divert controller` with flags this very binary
/// accepts (clap parses everything before `--help`, so an unknown flag or a
/// bad value fails here instead of in the cluster).
fn controller_args(m: &Manifests) -> Vec<String> {
    let pod = m
        .deployment
        .spec
        .clone()
        .expect("spec")
        .template
        .spec
        .expect("pod");
    pod.containers[0].args.clone().expect("args")
}

#[test]
fn controller_accepts_the_deployment_args() {
    for flags in [&[][..], &["--driver", "istio"]] {
        let mut args = controller_args(&parse(&install(flags)));
        args.push("--help".to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = divert(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "divert {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `--driver istio` adds exactly the rights to Istio's VirtualServices
/// (held by the policy to the controller's own), the controller's flag, and
/// the driver in the public ConfigMap that `divert deploy` reads.
#[test]
fn the_istio_driver_adds_virtual_services_and_nothing_else() {
    let plain = parse(&install(&[]));
    let istio = parse(&install(&["--driver", "istio"]));
    let added: Vec<_> = granted(&istio)
        .difference(&granted(&plain))
        .cloned()
        .collect();
    let write = [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ];
    assert_eq!(
        added,
        write
            .iter()
            .map(|v| (
                "networking.istio.io".to_owned(),
                "virtualservices".to_owned(),
                (*v).to_owned()
            ))
            .collect::<Vec<_>>()
    );
    assert!(granted(&plain).is_subset(&granted(&istio)));

    let copies = istio.policies[0].spec.as_ref().expect("spec");
    assert_eq!(
        copies_kinds(&istio),
        [
            "services",
            "endpointslices",
            "ingresses",
            "httproutes",
            "virtualservices"
        ]
    );
    let expressions: Vec<&str> = copies
        .validations
        .iter()
        .flatten()
        .map(|v| v.expression.as_str())
        .collect();
    assert!(
        expressions.contains(&"variables.managed"),
        "{expressions:?}"
    );
    assert!(
        expressions
            .iter()
            .any(|e| e.ends_with("|| variables.meshRoute")),
        "{expressions:?}"
    );
    // Outside divert namespaces: a mesh route's shape only, for the
    // install's cluster domain.
    let mesh_route = copies
        .variables
        .iter()
        .flatten()
        .find(|v| v.name == "meshRoute")
        .expect("the meshRoute variable");
    for part in [
        "request.resource.resource == 'virtualservices'",
        "startsWith('divert-')",
        "object.spec.gateways.all(g, g == 'mesh')",
        "'.svc.cluster.local'",
    ] {
        assert!(
            mesh_route.expression.contains(part),
            "{part}: {}",
            mesh_route.expression
        );
    }

    let args = controller_args(&istio);
    assert!(
        args.windows(2).any(|w| w == ["--driver", "istio"]),
        "{args:?}"
    );
    assert!(!controller_args(&plain).iter().any(|a| a == "--driver"));
    let driver = |m: &Manifests| m.ca.data.as_ref().and_then(|d| d.get("driver")).cloned();
    assert_eq!(driver(&plain).as_deref(), Some("divert"));
    assert_eq!(driver(&istio).as_deref(), Some("istio"));
}

#[test]
fn bad_flags_exit_64() {
    for args in [
        &["install", "--namespace", "Not_A_Label"][..],
        &["install", "--namespace", ""],
        &["install", "--cert-validity-days", "0"],
        &["install", "--cert-validity-days", "soon"],
        &["install", "--cluster-domain", "cluster.local."],
        &["install", "--image", ""],
        &["install", "--no-such-flag"],
        &["install", "--driver", "nginx"],
        &["install", "--driver", "linkerd"],
    ] {
        let out = divert(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed manifests");
        assert!(!out.stderr.is_empty(), "{args:?} said nothing");
    }
}
