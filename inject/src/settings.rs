//! How to inject ([`Settings`], the same for every pod of a cluster, from
//! the controller's flags), and what the pod's namespace says
//! ([`NamespaceInfo`]), each checked before any pod is touched.

use std::collections::BTreeMap;

use divert_core::names::{self, check_dns_label};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::InjectError;
use crate::meshes::MeshSwitches;

/// The default image of both containers: `divert:<version>`.
pub const DEFAULT_IMAGE: &str = concat!("divert:", env!("CARGO_PKG_VERSION"));
/// The cluster's DNS domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// What [`names::annotation::DEBUG`] adds to the proxy's log filter.
pub const DEBUG_LOG_DIRECTIVE: &str = "divert::decision=debug";

/// How to inject: the same for every pod of a cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The image of both containers; its entrypoint must be `divert`.
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`; none leaves Kubernetes' default.
    pub image_pull_policy: Option<String>,
    /// The controller's discovery address (`divert-proxy proxy --discovery`).
    pub controller_url: String,
    /// The CA (PEM) that signed the controller's certificate, handed to the
    /// proxy (`DIVERT_CONTROLLER_CA`) to verify it. Required for an
    /// `https://` controller URL.
    pub controller_ca: Option<String>,
    /// Where redirected outbound connections reach the proxy.
    pub proxy_port: u16,
    /// Where redirected inbound connections reach the proxy.
    pub inbound_port: u16,
    /// The proxy's admin port, on all addresses so the kubelet's probes reach it.
    pub admin_port: u16,
    /// The proxy's UID and GID.
    pub proxy_uid: i64,
    /// The proxy as a native sidecar (an init container with `restartPolicy:
    /// Always`, Kubernetes 1.29+); false makes it the first regular container.
    pub native_sidecar: bool,
    /// The cluster's DNS domain, for the search path of divert namespaces.
    pub cluster_domain: String,
    /// Whether `divert-proxy init` proves that redirection works (`--validate`).
    pub validate: bool,
    /// The proxy's `--log-level`.
    pub log_level: String,
    /// The proxy container's resources.
    pub proxy_resources: ResourceRequirements,
    /// The init container's resources.
    pub init_resources: ResourceRequirements,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            image: DEFAULT_IMAGE.into(),
            image_pull_policy: None,
            controller_url: names::default_controller_url(),
            controller_ca: None,
            proxy_port: names::port::PROXY,
            inbound_port: names::port::PROXY_INBOUND,
            admin_port: names::port::PROXY_ADMIN,
            proxy_uid: i64::from(names::PROXY_UID),
            native_sidecar: true,
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.into(),
            validate: true,
            log_level: "info".into(),
            proxy_resources: resources(
                &[("cpu", "10m"), ("memory", "20Mi")],
                &[("memory", "128Mi")],
            ),
            init_resources: resources(
                &[("cpu", "10m"), ("memory", "10Mi")],
                &[("cpu", "100m"), ("memory", "50Mi")],
            ),
        }
    }
}

fn resources(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> ResourceRequirements {
    let map = |list: &[(&str, &str)]| -> BTreeMap<String, Quantity> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
            .collect()
    };
    ResourceRequirements {
        requests: Some(map(requests)),
        limits: Some(map(limits)),
        ..ResourceRequirements::default()
    }
}

impl Settings {
    /// Checks what would make a broken pod. Called by [`inject`]; call it at
    /// start-up to fail early.
    pub fn validate(&self) -> Result<(), InjectError> {
        let bad =
            |field: &'static str, reason: String| Err(InjectError::Settings { field, reason });
        if self.image.trim().is_empty() || self.image.contains(char::is_whitespace) {
            return bad(
                "image",
                format!("{:?} is not an image reference", self.image),
            );
        }
        if let Some(policy) = &self.image_pull_policy
            && !matches!(policy.as_str(), "Always" | "IfNotPresent" | "Never")
        {
            return bad(
                "image_pull_policy",
                format!("{policy:?} is not Always, IfNotPresent or Never"),
            );
        }
        let url = &self.controller_url;
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
            return bad(
                "controller_url",
                format!("{url:?} is not an http:// or https:// URL"),
            );
        }
        let has_ca = self
            .controller_ca
            .as_deref()
            .is_some_and(|ca| ca.contains("-----BEGIN CERTIFICATE-----"));
        if url.starts_with("https://") && !has_ca {
            return bad(
                "controller_ca",
                "an https:// controller needs the CA of its certificate, so the proxies can \
                 verify it: the ca.crt of the ConfigMap divert-ca in the controller's namespace"
                    .into(),
            );
        }
        let ports = [
            ("proxy_port", self.proxy_port),
            ("inbound_port", self.inbound_port),
            ("admin_port", self.admin_port),
        ];
        for (i, &(field, port)) in ports.iter().enumerate() {
            if port == 0 {
                return bad(field, "port 0 is not a port".into());
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| *p == port) {
                return bad(field, format!("{field} and {other} are both {port}"));
            }
        }
        if !(1..=i64::from(u32::MAX)).contains(&self.proxy_uid) {
            return bad(
                "proxy_uid",
                format!("{} is not a non-root UID", self.proxy_uid),
            );
        }
        let domain = &self.cluster_domain;
        if domain.is_empty() || domain.split('.').any(|l| check_dns_label(l).is_err()) {
            return bad("cluster_domain", format!("{domain:?} is not a DNS domain"));
        }
        if self.log_level.trim().is_empty() || self.log_level.contains(char::is_whitespace) {
            return bad(
                "log_level",
                format!("{:?} is not a log level", self.log_level),
            );
        }
        Ok(())
    }
}

/// The pod's namespace, as the webhook knows it from the Namespace's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// What the namespace says to Linkerd and Istio, where known
    /// ([`crate::meshes`]): their pods are left to them.
    pub meshes: MeshSwitches,
    /// The namespace's name.
    pub name: String,
    /// `Some(S)`: a divert namespace of the shared namespace `S` (the
    /// [`names::label::SHARED_NAMESPACE`] label). `None`: a shared namespace.
    pub shared_namespace: Option<String>,
    /// The namespace's [`names::annotation::DEBUG`] is `true`: its pods'
    /// proxies log every decision unless a pod's own annotation says not.
    pub debug: bool,
}

impl NamespaceInfo {
    /// A shared namespace.
    pub fn shared(name: impl Into<String>) -> NamespaceInfo {
        NamespaceInfo {
            name: name.into(),
            shared_namespace: None,
            debug: false,
            meshes: MeshSwitches::default(),
        }
    }

    /// A divert namespace of `shared`.
    pub fn divert(name: impl Into<String>, shared: impl Into<String>) -> NamespaceInfo {
        NamespaceInfo {
            name: name.into(),
            shared_namespace: Some(shared.into()),
            debug: false,
            meshes: MeshSwitches::default(),
        }
    }

    /// Both names must be DNS labels, and a namespace cannot divert from itself.
    pub fn validate(&self) -> Result<(), InjectError> {
        let bad = |name: &str, reason: String| {
            Err(InjectError::Namespace {
                name: name.to_owned(),
                reason,
            })
        };
        if let Err(reason) = check_dns_label(&self.name) {
            return bad(&self.name, reason.to_string());
        }
        if let Some(shared) = &self.shared_namespace {
            if let Err(reason) = check_dns_label(shared) {
                return bad(shared, reason.to_string());
            }
            if *shared == self.name {
                return bad(
                    shared,
                    "a namespace cannot be a divert namespace of itself".into(),
                );
            }
        }
        Ok(())
    }
}
