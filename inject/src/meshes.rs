//! Pods another mesh injects: Linkerd or Istio has put its proxy in the
//! pod, or its webhook is about to.
//!
//! Divert does not run beside another mesh's proxy in one pod: Linkerd's
//! takes the same UID and ports as Divert's, and each mesh's iptables rules
//! would take the other's connections. Finding the mesh's containers is not
//! enough. The API server calls mutating webhooks in the order of their
//! configurations' names, and `divert-injector` sorts before
//! `istio-sidecar-injector` and `linkerd-proxy-injector-webhook-config`, so
//! when Divert's webhook sees a pod that a mesh will inject, the mesh's
//! containers are not there yet. What tells is the switch each mesh reads,
//! on the pod and on its namespace ([`MeshSwitches`]), read here as that
//! mesh reads it:
//!
//! - Linkerd: the annotation `linkerd.io/inject` on the pod, or else on its
//!   namespace, is `enabled` or `ingress`.
//! - Istio: the namespace label `istio-injection` is `enabled`, or it has
//!   none and the namespace has the revision label `istio.io/rev` or the
//!   pod the label `sidecar.istio.io/inject: "true"`; `istio-injection:
//!   disabled` on the namespace, or `sidecar.istio.io/inject: "false"` on
//!   the pod, turns it off.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::SkipReason;

/// Linkerd's switch: an annotation, on a pod or its namespace.
pub const LINKERD_INJECT: &str = "linkerd.io/inject";
/// Istio's switch on a pod: a label.
pub const ISTIO_POD_INJECT: &str = "sidecar.istio.io/inject";
/// Istio's switch on a namespace: a label.
pub const ISTIO_NAMESPACE_INJECT: &str = "istio-injection";
/// Istio's revision label: a namespace with it is injected by that revision.
pub const ISTIO_REVISION: &str = "istio.io/rev";

/// Container names that mean Linkerd injected the pod.
const LINKERD_CONTAINERS: [&str; 3] =
    ["linkerd-proxy", "linkerd-init", "linkerd-network-validator"];
/// Container names that mean Istio injected the pod.
const ISTIO_CONTAINERS: [&str; 3] = ["istio-proxy", "istio-init", "istio-validation"];

/// What a namespace says to the meshes: the labels and annotations they
/// read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshSwitches {
    /// Its `linkerd.io/inject` annotation.
    pub linkerd: Option<String>,
    /// Its `istio-injection` label.
    pub istio_injection: Option<String>,
    /// It has the `istio.io/rev` label.
    pub istio_revision: bool,
}

impl MeshSwitches {
    /// The switches among a namespace's labels and annotations.
    pub fn of(
        labels: Option<&BTreeMap<String, String>>,
        annotations: Option<&BTreeMap<String, String>>,
    ) -> MeshSwitches {
        let label = |key: &str| labels.and_then(|l| l.get(key));
        MeshSwitches {
            linkerd: annotations
                .and_then(|a| a.get(LINKERD_INJECT))
                .map(|v| v.trim().to_owned()),
            istio_injection: label(ISTIO_NAMESPACE_INJECT).map(|v| v.trim().to_owned()),
            istio_revision: label(ISTIO_REVISION).is_some(),
        }
    }
}

/// The mesh that injected `pod`, or whose webhook will, in a namespace
/// whose switches are `ns`.
pub fn injecting(pod: &Pod, ns: &MeshSwitches) -> Option<SkipReason> {
    let names = pod.spec.iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .map(|c| c.name.as_str())
    });
    for name in names {
        if LINKERD_CONTAINERS.contains(&name) {
            return Some(SkipReason::Linkerd);
        }
        if ISTIO_CONTAINERS.contains(&name) {
            return Some(SkipReason::Istio);
        }
    }
    let meta = &pod.metadata;
    let pod_linkerd = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(LINKERD_INJECT))
        .map(|v| v.trim());
    if matches!(
        pod_linkerd.or(ns.linkerd.as_deref()),
        Some("enabled" | "ingress")
    ) {
        return Some(SkipReason::Linkerd);
    }
    let pod_istio = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(ISTIO_POD_INJECT))
        .map(|v| v.trim());
    let istio = match (ns.istio_injection.as_deref(), pod_istio) {
        (Some("disabled"), _) | (_, Some("false")) => false,
        (Some("enabled"), _) | (_, Some("true")) => true,
        (None, _) => ns.istio_revision,
        (Some(_), _) => false,
    };
    istio.then_some(SkipReason::Istio)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn map(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn pod(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                labels: map(labels),
                annotations: map(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn ns(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> MeshSwitches {
        MeshSwitches::of(map(labels).as_ref(), map(annotations).as_ref())
    }

    #[test]
    fn linkerd_injects_by_the_pods_annotation_or_else_the_namespaces() {
        let none = MeshSwitches::default();
        let enabled = ns(&[], &[(LINKERD_INJECT, "enabled")]);
        for (pod, ns, want) in [
            (pod(&[], &[]), &none, None),
            (pod(&[], &[]), &enabled, Some(SkipReason::Linkerd)),
            (
                pod(&[], &[(LINKERD_INJECT, "ingress")]),
                &none,
                Some(SkipReason::Linkerd),
            ),
            (pod(&[], &[(LINKERD_INJECT, "disabled")]), &enabled, None),
            // A label of that name is not Linkerd's switch.
            (pod(&[(LINKERD_INJECT, "enabled")], &[]), &none, None),
        ] {
            assert_eq!(injecting(&pod, ns), want, "{:?} in {ns:?}", pod.metadata);
        }
    }

    #[test]
    fn istio_injects_by_the_namespace_label_its_revision_or_the_pods_label() {
        let plain = pod(&[], &[]);
        let yes = pod(&[(ISTIO_POD_INJECT, "true")], &[]);
        let no = pod(&[(ISTIO_POD_INJECT, "false")], &[]);
        let enabled = ns(&[(ISTIO_NAMESPACE_INJECT, "enabled")], &[]);
        let disabled = ns(&[(ISTIO_NAMESPACE_INJECT, "disabled")], &[]);
        let revision = ns(&[(ISTIO_REVISION, "1-24")], &[]);
        let none = MeshSwitches::default();
        let istio = Some(SkipReason::Istio);
        for (pod, ns, want) in [
            (&plain, &none, None),
            (&plain, &enabled, istio),
            (&plain, &revision, istio),
            (&yes, &none, istio),
            (&no, &enabled, None),
            (&no, &revision, None),
            (&yes, &disabled, None),
            (&plain, &disabled, None),
        ] {
            assert_eq!(injecting(pod, ns), want, "{:?} in {ns:?}", pod.metadata);
        }
    }

    #[test]
    fn a_meshs_containers_tell_whatever_the_switches_say() {
        for (name, want) in [
            ("linkerd-proxy", SkipReason::Linkerd),
            ("linkerd-init", SkipReason::Linkerd),
            ("istio-proxy", SkipReason::Istio),
            ("istio-validation", SkipReason::Istio),
        ] {
            let mut p = pod(&[], &[(LINKERD_INJECT, "disabled")]);
            if let Some(spec) = p.spec.as_mut() {
                spec.init_containers = Some(vec![Container {
                    name: name.into(),
                    ..Container::default()
                }]);
            }
            assert_eq!(injecting(&p, &MeshSwitches::default()), Some(want));
        }
    }
}
