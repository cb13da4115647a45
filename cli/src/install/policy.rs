//! What the API server itself holds the controller to, beyond RBAC.
//!
//! RBAC cannot say "only objects labelled so" or "only in namespaces
//! labelled so", so the controller's ClusterRole allows writing Services,
//! EndpointSlices, Ingresses and HTTPRoutes everywhere, and patching every
//! Namespace. Two ValidatingAdmissionPolicies (GA since Kubernetes 1.30)
//! narrow that for requests made with the controller's own identity, so
//! that whoever gets its token (a bug in any of its servers is enough)
//! cannot redirect another namespace's Services:
//! - [`copies`]: those four kinds only if the object was the controller's
//!   (labelled `divert.dev/managed-by: divert-controller` before the write,
//!   or when it is created), and, but to delete, only in divert namespaces;
//! - [`namespaces`]: on a Namespace, only Divert's own labels and
//!   annotations (`divert.dev/…`) may change.

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};

use divert_controller::copies::istio::MESH_ROUTE_PREFIX;
use divert_core::names::label::{MANAGED_BY, MANAGED_BY_CONTROLLER, SHARED_NAMESPACE};
use divert_core::names::object::CONTROLLER;

use super::manifests::meta;

/// The policy on the copies' kinds.
pub const COPIES: &str = "divert-controller-copies";
/// The policy on Namespaces.
pub const NAMESPACES: &str = "divert-controller-namespaces";

/// Only requests of the controller's service account in `ns`.
fn the_controller(ns: &str) -> Vec<MatchCondition> {
    vec![MatchCondition {
        name: "the-divert-controller".to_owned(),
        expression: format!(
            "request.userInfo.username == 'system:serviceaccount:{ns}:{CONTROLLER}'"
        ),
    }]
}

fn rule(group: &str, resource: &str, operations: &[&str]) -> NamedRuleWithOperations {
    NamedRuleWithOperations {
        api_groups: Some(vec![group.to_owned()]),
        api_versions: Some(vec!["*".to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        operations: Some(operations.iter().map(|o| (*o).to_owned()).collect()),
        ..NamedRuleWithOperations::default()
    }
}

fn validation(expression: String, message: &str) -> Validation {
    Validation {
        expression,
        message: Some(message.to_owned()),
        reason: Some("Forbidden".to_owned()),
        ..Validation::default()
    }
}

/// The copies' kinds: only the controller's objects, only in divert
/// namespaces (deletes excepted: a namespace that stopped diverting loses
/// its copies after its label).
///
/// With the istio driver (`istio`: the cluster's DNS domain),
/// VirtualServices too; outside divert namespaces only the shape of a mesh
/// route of a shared Service ([`divert_controller::copies::istio`]): named
/// `divert-…`, for the mesh's sidecars only (no gateway), and for hosts that
/// are Services of its own namespace. So the controller's token cannot claim
/// an outside host on a gateway, nor route another namespace's Service from
/// afar. Still only the controller's own objects.
pub fn copies(ns: &str, istio: Option<&str>) -> ValidatingAdmissionPolicy {
    let writes = ["CREATE", "UPDATE", "DELETE"];
    let mut resource_rules = vec![
        rule("", "services", &writes),
        rule("discovery.k8s.io", "endpointslices", &writes),
        rule("networking.k8s.io", "ingresses", &writes),
        rule("gateway.networking.k8s.io", "httproutes", &writes),
    ];
    let mut variables = vec![
        Variable {
            name: "before".to_owned(),
            expression: "request.operation == 'CREATE' ? object : oldObject".to_owned(),
        },
        Variable {
            name: "managed".to_owned(),
            expression: format!(
                "has(variables.before.metadata.labels) && \
                 '{MANAGED_BY}' in variables.before.metadata.labels && \
                 variables.before.metadata.labels['{MANAGED_BY}'] == '{MANAGED_BY_CONTROLLER}'"
            ),
        },
        Variable {
            name: "divertNamespace".to_owned(),
            expression: format!(
                "has(namespaceObject.metadata.labels) && \
                 '{SHARED_NAMESPACE}' in namespaceObject.metadata.labels"
            ),
        },
    ];
    let (where_, message) = match istio {
        None => (
            "request.operation == 'DELETE' || variables.divertNamespace",
            "the divert controller may write only in divert namespaces (labelled \
             divert.dev/shared-namespace)",
        ),
        Some(domain) => {
            resource_rules.push(rule("networking.istio.io", "virtualservices", &writes));
            variables.push(Variable {
                name: "meshRoute".to_owned(),
                expression: format!(
                    "request.resource.resource == 'virtualservices' && \
                     object.metadata.name.startsWith('{MESH_ROUTE_PREFIX}') && \
                     (!has(object.spec.gateways) || object.spec.gateways.all(g, g == 'mesh')) && \
                     has(object.spec.hosts) && size(object.spec.hosts) > 0 && \
                     object.spec.hosts.all(h, h.endsWith('.' + request.namespace + '.svc.{domain}'))"
                ),
            });
            (
                "request.operation == 'DELETE' || variables.divertNamespace || variables.meshRoute",
                "the divert controller may write only in divert namespaces (labelled \
                 divert.dev/shared-namespace), but for the istio driver's mesh routes \
                 (VirtualServices named divert-…, without gateways, for Services of their own \
                 namespace)",
            )
        }
    };
    ValidatingAdmissionPolicy {
        metadata: meta(COPIES, None),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".to_owned()),
            match_conditions: Some(the_controller(ns)),
            match_constraints: Some(MatchResources {
                resource_rules: Some(resource_rules),
                ..MatchResources::default()
            }),
            variables: Some(variables),
            validations: Some(vec![
                validation(
                    "variables.managed".to_owned(),
                    "the divert controller may write only objects it made (labelled \
                     divert.dev/managed-by=divert-controller)",
                ),
                validation(where_.to_owned(), message),
            ]),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        status: None,
    }
}

/// `field` (labels or annotations) of a Namespace may change only in its
/// `divert.dev/` keys: every other key keeps its value, and none comes or
/// goes.
fn only_divert_keys(field: &str) -> String {
    let (new, old) = (
        format!("object.metadata.{field}"),
        format!("oldObject.metadata.{field}"),
    );
    format!(
        "(!has({new}) || {new}.all(k, k.startsWith('divert.dev/') || \
           (has({old}) && k in {old} && {old}[k] == {new}[k]))) && \
         (!has({old}) || {old}.all(k, k.startsWith('divert.dev/') || \
           (has({new}) && k in {new})))"
    )
}

/// Namespaces: only Divert's own labels and annotations.
pub fn namespaces(ns: &str) -> ValidatingAdmissionPolicy {
    ValidatingAdmissionPolicy {
        metadata: meta(NAMESPACES, None),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".to_owned()),
            match_conditions: Some(the_controller(ns)),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![rule(
                    "",
                    "namespaces",
                    &["CREATE", "UPDATE", "DELETE"],
                )]),
                ..MatchResources::default()
            }),
            validations: Some(vec![
                validation(
                    "request.operation == 'UPDATE'".to_owned(),
                    "the divert controller may not create or delete namespaces",
                ),
                validation(
                    only_divert_keys("labels"),
                    "the divert controller may change only divert.dev/ labels of a namespace",
                ),
                validation(
                    only_divert_keys("annotations"),
                    "the divert controller may change only divert.dev/ annotations of a namespace",
                ),
                validation(
                    "has(object.metadata.finalizers) == has(oldObject.metadata.finalizers) && \
                     (!has(object.metadata.finalizers) || \
                      object.metadata.finalizers == oldObject.metadata.finalizers)"
                        .to_owned(),
                    "the divert controller may not change a namespace's finalizers",
                ),
            ]),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        status: None,
    }
}

/// Binds `policy` cluster-wide, denying what it refuses.
pub fn binding(policy: &str) -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: meta(policy, None),
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(policy.to_owned()),
            validation_actions: Some(vec!["Deny".to_owned()]),
            ..ValidatingAdmissionPolicyBindingSpec::default()
        }),
    }
}
