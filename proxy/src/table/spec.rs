//! What a table is built from: the registry file's YAML (a [`TableSpec`],
//! read whole and checked strictly) and the controller's changes (a
//! [`TablePatch`], applied entry by entry).

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

/// The input a table is built from: what the registry file describes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TableSpec {
    /// Namespaces that need saying something about. A namespace that is not
    /// listed but holds services is a plain shared namespace.
    #[serde(default)]
    pub namespaces: Vec<NamespaceSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Preview hosts: a request for one of these hosts that reaches a pod's
    /// inbound proxy without a key gets the namespace as its key.
    #[serde(default)]
    pub hosts: Vec<HostSpec>,
}

/// One preview host and the divert namespace it stands for
/// (`frontend-alice.example.com` → `alice`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostSpec {
    pub host: String,
    pub namespace: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSpec {
    pub name: String,
    /// Set for a divert namespace: the shared namespace it diverts from. This is
    /// how a namespace opts in as a key target.
    #[serde(default)]
    pub shared_namespace: Option<String>,
    /// For a shared namespace: its pods accept the key cookie from callers
    /// without a sidecar (ARCHITECTURE.md, "The edge: the key cookie").
    #[serde(default)]
    pub key_cookie: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    /// The addresses clients dial (a Kubernetes ClusterIP, or a loopback address
    /// in bind mode). Each is combined with every port.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<PortSpec>,
    /// Where the proxy sends: `IP` (then the port's `targetPort` is used) or
    /// `IP:PORT` (only for a service with a single port).
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    /// The endpoints' port; defaults to `port`.
    #[serde(default)]
    pub target_port: Option<u16>,
    /// This port's own endpoints as `IP:PORT`, used instead of the service's
    /// `endpoints` (Kubernetes can map one service port to different pod
    /// ports; this is what the controller sends).
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
}

/// An endpoint as written: an IP, or an IP and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSpec {
    Ip(IpAddr),
    Socket(SocketAddr),
}

impl<'de> Deserialize<'de> for EndpointSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(EndpointSpec::Socket(sa));
        }
        s.parse::<IpAddr>().map(EndpointSpec::Ip).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid endpoint {s:?}: expected an IP (10.0.0.7, fd00::7) or IP:PORT (10.0.0.7:8080, [fd00::7]:8080)"
            ))
        })
    }
}

/// Why a spec cannot become a table. `path` names the field, as in
/// `services[2].ports[0].name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct SpecError {
    pub path: String,
    pub problem: String,
}

pub(super) fn spec_err(path: impl Into<String>, problem: impl Into<String>) -> SpecError {
    SpecError {
        path: path.into(),
        problem: problem.into(),
    }
}

/// Changes to apply to a table (from the controller): upserts replace whole
/// entries.
#[derive(Debug, Clone, Default)]
pub struct TablePatch {
    /// Start from an empty table (a snapshot), keeping only warm pools.
    pub replace: bool,
    pub namespaces: Vec<NamespaceSpec>,
    pub deleted_namespaces: Vec<String>,
    pub services: Vec<ServiceSpec>,
    /// (namespace, name)
    pub deleted_services: Vec<(String, String)>,
    /// The whole host map, when it changed (it is small: one entry per
    /// preview host); `None` keeps the current one.
    pub hosts: Option<Vec<HostSpec>>,
}
