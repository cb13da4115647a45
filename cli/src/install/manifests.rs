//! The manifests, each built from its k8s-openapi type (so well-formed by
//! construction) and serialized in apply order.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, HTTPGetAction, Namespace,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    Secret, SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::serde::Serialize;

use divert_core::names::annotation::TLS_CHECKSUM as TLS_CHECKSUM_ANNOTATION;
use divert_core::names::label::{
    INJECT as INJECT_LABEL, SHARED_NAMESPACE as SHARED_NAMESPACE_LABEL,
};
use divert_core::names::object::{CA, CONTROLLER, TLS_SECRET, WEBHOOK_CONFIGURATION};
use divert_core::names::port;

use super::{InstallArgs, Tls};
use crate::manifest::Driver;

/// Where the Secret is mounted in the controller's container.
const TLS_DIR: &str = "/var/run/divert/tls";
/// The key of the CA ConfigMap that says the install's driver, for
/// `divert deploy` to check a manifest's `driver` against.
pub const DRIVER_KEY: &str = "driver";
/// The controller's UID and GID (the proxy's is 2102).
const CONTROLLER_UID: i64 = 2103;

const HEADER: &str = "\
# Divert: the controller, its RBAC, and the webhook that injects `divert-proxy init`
# and `divert-proxy proxy` into the pods of opted-in namespaces.
# Printed by `divert install`; apply with `divert install | kubectl apply -f -`.
# The webhook certificate was generated for this output: running
# `divert install` again makes a new one and restarts the controller on apply.
";

/// Every manifest, in apply order (the webhook last, once what it calls
/// exists), as one multi-document YAML stream.
pub fn render(args: &InstallArgs, tls: &Tls) -> Result<String, serde_yaml_ng::Error> {
    let ns = args.namespace.as_str();
    let mut out = String::from(HEADER);
    let mut doc = |yaml: String| {
        out.push_str("---\n");
        out.push_str(&yaml);
    };
    doc(yaml(&namespace(ns))?);
    doc(yaml(&service_account(ns))?);
    let istio = args.driver == Driver::Istio;
    doc(yaml(&cluster_role(istio))?);
    doc(yaml(&cluster_role_binding(ns))?);
    // Before the controller runs: its writes are held to these from its
    // first one.
    let istio_domain = istio.then_some(args.cluster_domain.as_str());
    doc(yaml(&super::policy::copies(ns, istio_domain))?);
    doc(yaml(&super::policy::binding(super::policy::COPIES))?);
    doc(yaml(&super::policy::namespaces(ns))?);
    doc(yaml(&super::policy::binding(super::policy::NAMESPACES))?);
    doc(yaml(&client_ca_reader(ns))?);
    doc(yaml(&secret(ns, tls))?);
    doc(yaml(&ca_config_map(ns, tls, args.driver))?);
    doc(yaml(&ca_reader_role(ns))?);
    doc(yaml(&ca_reader_binding(ns))?);
    doc(yaml(&service(ns))?);
    doc(yaml(&deployment(
        ns,
        &args.image,
        &args.cluster_domain,
        istio,
        &tls.checksum(),
    ))?);
    doc(yaml(&webhook_configuration(ns, tls))?);
    Ok(out)
}

fn yaml<T: Serialize>(object: &T) -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(object)
}

fn strings<const N: usize>(items: [&str; N]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn map<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Labels every object carries.
fn labels() -> BTreeMap<String, String> {
    map([
        ("app.kubernetes.io/name", CONTROLLER),
        ("app.kubernetes.io/part-of", "divert"),
    ])
}

pub(super) fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels()),
        ..ObjectMeta::default()
    }
}

fn namespace(ns: &str) -> Namespace {
    let mut labels = labels();
    // Never inject into the controller's own namespace.
    labels.insert(INJECT_LABEL.to_owned(), "disabled".to_owned());
    Namespace {
        metadata: ObjectMeta {
            name: Some(ns.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn service_account(ns: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(CONTROLLER, Some(ns)),
        ..ServiceAccount::default()
    }
}

/// Read access to exactly what the controller watches, write access to
/// exactly the kinds of the preview copies it keeps in divert namespaces,
/// `patch` on namespaces (the label of one whose time has passed, or of one
/// a developer asked for with a ConfigMap), and Events for those requests;
/// with the istio driver, Istio's VirtualServices too.
fn cluster_role(istio: bool) -> ClusterRole {
    let write = || {
        strings([
            "get", "list", "watch", "create", "update", "patch", "delete",
        ])
    };
    let rule = |group: &str, resources: &[&str], verbs: Vec<String>| PolicyRule {
        api_groups: Some(strings([group])),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs,
        ..PolicyRule::default()
    };
    let mut rules = vec![
        // patch: ending divert namespaces past divert.dev/expires-at.
        rule(
            "",
            &["namespaces"],
            strings(["get", "list", "watch", "patch"]),
        ),
        rule("", &["services"], write()),
        // The opt-in requests of developers who may not label namespaces.
        rule("", &["configmaps"], strings(["get", "list", "watch"])),
        // Their outcomes, as Events on the requests.
        rule("events.k8s.io", &["events"], strings(["create", "patch"])),
        rule("discovery.k8s.io", &["endpointslices"], write()),
        rule("networking.k8s.io", &["ingresses"], write()),
        rule("gateway.networking.k8s.io", &["httproutes"], write()),
        // Who calls the gRPC API: a proxy's token names its pod, which
        // must exist and be injected; a person's token names them, and
        // RBAC says what they may see.
        rule("", &["pods"], strings(["get"])),
        rule(
            "authentication.k8s.io",
            &["tokenreviews"],
            strings(["create"]),
        ),
        rule(
            "authorization.k8s.io",
            &["subjectaccessreviews"],
            strings(["create"]),
        ),
    ];
    if istio {
        rules.push(rule("networking.istio.io", &["virtualservices"], write()));
    }
    ClusterRole {
        metadata: meta(CONTROLLER, None),
        rules: Some(rules),
        ..ClusterRole::default()
    }
}

fn cluster_role_binding(ns: &str) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(CONTROLLER, None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: CONTROLLER.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: CONTROLLER.to_owned(),
            namespace: Some(ns.to_owned()),
            ..Subject::default()
        }]),
    }
}

fn role_binding(name: &str, ns: &str, role: RoleRef, subjects: Vec<Subject>) -> RoleBinding {
    RoleBinding {
        metadata: meta(name, Some(ns)),
        role_ref: role,
        subjects: Some(subjects),
    }
}

fn controller_subject(ns: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".to_owned(),
        name: CONTROLLER.to_owned(),
        namespace: Some(ns.to_owned()),
        ..Subject::default()
    }
}

/// The controller reads the cluster's client CA (the API server's
/// `extension-apiserver-authentication` ConfigMap, through the role
/// Kubernetes keeps for that), to verify people's client certificates.
fn client_ca_reader(ns: &str) -> RoleBinding {
    role_binding(
        &format!("{CONTROLLER}-{ns}-client-ca"),
        "kube-system",
        RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: "extension-apiserver-authentication-reader".to_owned(),
        },
        vec![controller_subject(ns)],
    )
}

/// The CA of the controller's certificate, for `divert tap` to verify it,
/// and the install's driver, for `divert deploy`: public, and readable by
/// every authenticated user.
fn ca_config_map(ns: &str, tls: &Tls, driver: Driver) -> ConfigMap {
    ConfigMap {
        metadata: meta(CA, Some(ns)),
        data: Some(BTreeMap::from([
            ("ca.crt".to_owned(), tls.ca_pem.clone()),
            (DRIVER_KEY.to_owned(), driver.as_str().to_owned()),
        ])),
        ..ConfigMap::default()
    }
}

fn ca_reader_role(ns: &str) -> Role {
    Role {
        metadata: meta(CA, Some(ns)),
        rules: Some(vec![PolicyRule {
            api_groups: Some(strings([""])),
            resources: Some(strings(["configmaps"])),
            resource_names: Some(strings([CA])),
            verbs: strings(["get"]),
            ..PolicyRule::default()
        }]),
    }
}

fn ca_reader_binding(ns: &str) -> RoleBinding {
    role_binding(
        CA,
        ns,
        RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: CA.to_owned(),
        },
        vec![Subject {
            kind: "Group".to_owned(),
            name: "system:authenticated".to_owned(),
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            ..Subject::default()
        }],
    )
}

fn secret(ns: &str, tls: &Tls) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: meta(TLS_SECRET, Some(ns)),
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            ("ca.crt".to_owned(), bytes(&tls.ca_pem)),
            ("tls.crt".to_owned(), bytes(&tls.cert_pem)),
            ("tls.key".to_owned(), bytes(&tls.key_pem)),
        ])),
        ..Secret::default()
    }
}

fn service(ns: &str) -> Service {
    let port = |name: &str, port: i32, app_protocol: Option<&str>| ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        app_protocol: app_protocol.map(str::to_owned),
        ..ServicePort::default()
    };
    Service {
        metadata: meta(CONTROLLER, Some(ns)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels()),
            ports: Some(vec![
                port(
                    port::CONTROLLER_GRPC_NAME,
                    port::CONTROLLER_GRPC.into(),
                    Some("grpc"),
                ),
                port(port::CONTROLLER_WEBHOOK_NAME, 443, None),
                port(
                    port::CONTROLLER_ADMIN_NAME,
                    port::CONTROLLER_ADMIN.into(),
                    None,
                ),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn selector_labels() -> BTreeMap<String, String> {
    map([("app.kubernetes.io/name", CONTROLLER)])
}

fn deployment(
    ns: &str,
    image: &str,
    cluster_domain: &str,
    istio: bool,
    tls_checksum: &str,
) -> Deployment {
    let mut pod_labels = labels();
    // Belt and braces: the objectSelector never sends the controller's own
    // pods to the webhook they serve.
    pod_labels.insert(INJECT_LABEL.to_owned(), "disabled".to_owned());
    let addr = |p: u16| format!("0.0.0.0:{p}");
    let mut args = vec![
        "controller".to_owned(),
        "--grpc-addr".to_owned(),
        addr(port::CONTROLLER_GRPC),
        "--admin-addr".to_owned(),
        addr(port::CONTROLLER_ADMIN),
        "--webhook-addr".to_owned(),
        addr(port::CONTROLLER_WEBHOOK),
        "--webhook-cert".to_owned(),
        format!("{TLS_DIR}/tls.crt"),
        "--webhook-key".to_owned(),
        format!("{TLS_DIR}/tls.key"),
        // What the injector puts into pods: the same image, this cluster's
        // DNS domain, and where the injected proxies find this controller.
        "--image".to_owned(),
        image.to_owned(),
        "--cluster-domain".to_owned(),
        cluster_domain.to_owned(),
        "--controller-url".to_owned(),
        format!("https://{CONTROLLER}.{ns}.svc:{}", port::CONTROLLER_GRPC),
        "--controller-ca".to_owned(),
        format!("{TLS_DIR}/ca.crt"),
    ];
    if istio {
        args.extend(["--driver".to_owned(), Driver::Istio.as_str().to_owned()]);
    }
    let container_port = |name: &str, port: i32| ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port::CONTROLLER_ADMIN_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    let seccomp = || SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..SeccompProfile::default()
    };
    let container = Container {
        name: "controller".to_owned(),
        image: Some(image.to_owned()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        args: Some(args),
        ports: Some(vec![
            container_port(port::CONTROLLER_GRPC_NAME, port::CONTROLLER_GRPC.into()),
            container_port(
                port::CONTROLLER_WEBHOOK_NAME,
                port::CONTROLLER_WEBHOOK.into(),
            ),
            container_port(port::CONTROLLER_ADMIN_NAME, port::CONTROLLER_ADMIN.into()),
        ]),
        liveness_probe: Some(probe("/live", 10)),
        readiness_probe: Some(probe("/ready", 5)),
        resources: Some(ResourceRequirements {
            requests: Some(quantities("50m", "64Mi")),
            limits: Some(quantities("500m", "256Mi")),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(CONTROLLER_UID),
            run_as_group: Some(CONTROLLER_UID),
            capabilities: Some(Capabilities {
                drop: Some(strings(["ALL"])),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(seccomp()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "webhook-tls".to_owned(),
            mount_path: TLS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    Deployment {
        metadata: meta(CONTROLLER, Some(ns)),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector_labels()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(map([(TLS_CHECKSUM_ANNOTATION, tls_checksum)])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(CONTROLLER.to_owned()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(CONTROLLER_UID),
                        run_as_group: Some(CONTROLLER_UID),
                        // The Secret's files are group-owned by this GID, so
                        // they can be 0440 and still readable.
                        fs_group: Some(CONTROLLER_UID),
                        seccomp_profile: Some(seccomp()),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "webhook-tls".to_owned(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some(TLS_SECRET.to_owned()),
                            default_mode: Some(0o440),
                            ..SecretVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// Two webhooks, because the terms of one namespaceSelector are ANDed: one
/// for shared namespaces that opted in with `divert.dev/inject=enabled`, one
/// for divert namespaces (those with `divert.dev/shared-namespace`). They never
/// both match a namespace, so a pod is sent to the injector at most once.
fn webhook_configuration(ns: &str, tls: &Tls) -> MutatingWebhookConfiguration {
    let requirement = |key: &str, operator: &str, values: &[&str]| LabelSelectorRequirement {
        key: key.to_owned(),
        operator: operator.to_owned(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
    };
    // Never the controller's own namespace, whatever its labels say.
    let not_own_namespace = || requirement("kubernetes.io/metadata.name", "NotIn", &[ns]);
    let webhook = |name: &str, namespace_selector: LabelSelector| MutatingWebhook {
        name: name.to_owned(),
        admission_review_versions: strings(["v1"]),
        client_config: WebhookClientConfig {
            ca_bundle: Some(ByteString(tls.ca_pem.as_bytes().to_vec())),
            service: Some(ServiceReference {
                name: CONTROLLER.to_owned(),
                namespace: ns.to_owned(),
                path: Some("/inject".to_owned()),
                port: Some(443),
            }),
            ..WebhookClientConfig::default()
        },
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(strings([""])),
            api_versions: Some(strings(["v1"])),
            operations: Some(strings(["CREATE"])),
            resources: Some(strings(["pods"])),
            scope: Some("Namespaced".to_owned()),
        }]),
        namespace_selector: Some(namespace_selector),
        // objectSelector sees labels only: pods labelled
        // divert.dev/inject=disabled never reach the webhook; the annotation
        // of the same name is honoured by the webhook itself.
        object_selector: Some(LabelSelector {
            match_expressions: Some(vec![requirement(INJECT_LABEL, "NotIn", &["disabled"])]),
            ..LabelSelector::default()
        }),
        side_effects: "None".to_owned(),
        failure_policy: Some("Ignore".to_owned()),
        timeout_seconds: Some(5),
        reinvocation_policy: Some("Never".to_owned()),
        ..MutatingWebhook::default()
    };
    MutatingWebhookConfiguration {
        metadata: meta(WEBHOOK_CONFIGURATION, None),
        webhooks: Some(vec![
            webhook(
                "inject-shared.divert.dev",
                LabelSelector {
                    match_labels: Some(map([(INJECT_LABEL, "enabled")])),
                    match_expressions: Some(vec![
                        requirement(SHARED_NAMESPACE_LABEL, "DoesNotExist", &[]),
                        not_own_namespace(),
                    ]),
                },
            ),
            webhook(
                "inject-divert.divert.dev",
                LabelSelector {
                    match_expressions: Some(vec![
                        requirement(SHARED_NAMESPACE_LABEL, "Exists", &[]),
                        requirement(INJECT_LABEL, "NotIn", &["disabled"]),
                        not_own_namespace(),
                    ]),
                    ..LabelSelector::default()
                },
            ),
        ]),
    }
}
