//! Sidecar injection: adds `divert-proxy init` and the proxy to a pod.
//!
//! One function, [`inject`], serves both the admission webhook (through
//! [`patch`], which turns the change into an RFC 6902 JSON patch) and
//! `divert inject` (through [`manifest`], which applies the same patch to the
//! pod templates of workload manifests).
//!
//! # What an injected pod has
//!
//! The names below are a contract: the webhook, `divert check`, the tests and
//! users' tooling rely on them.
//!
//! - **Init container [`names::container::INIT`] (`divert-init`)**, first in
//!   `spec.initContainers`: `divert-proxy init --proxy-port 4140 --inbound-port
//!   4143 --admin-port 4191 --proxy-uid 2102 [--validate] [--skip-outbound-ports
//!   P] [--skip-outbound-cidrs C] [--skip-inbound-ports P]`, as
//!   root (`runAsUser: 0`, `runAsNonRoot: false`) with only `NET_ADMIN` and
//!   `NET_RAW` (every other capability dropped), no privilege escalation, a
//!   read-only root file system and the `RuntimeDefault` seccomp profile. It
//!   mounts the emptyDir volume [`names::container::XTABLES_VOLUME`] (`divert-xtables`) at `/run`,
//!   where iptables keeps its lock file.
//! - **The proxy [`names::container::PROXY`] (`divert-proxy`)**: `divert-proxy proxy
//!   --transparent --discovery <controller> --outbound-port 4140 --inbound-port
//!   4143 --admin-addr 0.0.0.0:4191 --log-level <level>`, as UID and GID 2102,
//!   non-root, no capabilities, a read-only root file system, `RuntimeDefault`
//!   seccomp. Its environment has `DIVERT_NAMESPACE`, `DIVERT_POD_NAME` and
//!   `DIVERT_POD_IP` from the downward API, the controller's CA
//!   (`DIVERT_CONTROLLER_CA`) and where its token for the controller is
//!   (`DIVERT_CONTROLLER_TOKEN`): the projected volume
//!   [`names::token::VOLUME`] (`divert-token`), the pod's service account
//!   token for the `divert` audience, one hour long and renewed by the
//!   kubelet, mounted read-only in this container alone at
//!   `/var/run/secrets/divert.dev/serviceaccount`. It declares the admin port 4191 as [`names::port::PROXY_ADMIN_NAME`]
//!   (`divert-admin`), with a startup and a readiness probe on `/ready` and a
//!   liveness probe on `/live`. With [`Settings::native_sidecar`] (the
//!   default, Kubernetes 1.29 and later) it is the second init container, with
//!   `restartPolicy: Always`: it starts before the app's own init containers
//!   (whose connections are thus redirected to a running proxy), the app's
//!   containers start once its startup probe passes, and it does not keep a
//!   Job's pod alive. Without, it is the first regular container (see
//!   "Legacy sidecar mode" below).
//! - **In a divert namespace** (one labelled [`names::label::SHARED_NAMESPACE`] with
//!   its shared namespace `S`): `S.svc.<cluster domain>` is appended to
//!   `spec.dnsConfig.searches`, so short names of services the developer does
//!   not run resolve to the shared copy; and every app container and app init
//!   container gets [`names::env::SHARED_NAMESPACE`] (`DIVERT_SHARED_NAMESPACE=S`),
//!   [`names::env::DIVERTED_NAMESPACE`] (`DIVERT_DIVERTED_NAMESPACE=<namespace>`) and,
//!   for apps written for Okteto, [`names::env::OKTETO_SHARED`]
//!   (`OKTETO_SHARED_ENVIRONMENT`) and [`names::env::OKTETO_DIVERTED`]
//!   (`OKTETO_DIVERTED_ENVIRONMENT`) with the same values. A variable the
//!   container already sets is left alone: the app's value wins.
//! - **The app's TCP probes**: a `tcpSocket` probe of a port the inbound
//!   redirect takes would always pass (the proxy accepts first), so it becomes
//!   an `httpGet` of [`names::path::TCP_PROBE`]`<port>` on the admin port, which
//!   dials the app. Probes of skipped ports or of another `host` stay. This is
//!   the one change to what the pod had.
//! - **The annotation [`names::annotation::INJECTED`]** (`divert.dev/injected`), whose
//!   value is the version of the injector ([`VERSION`]).
//!
//! # What is read from the pod
//!
//! | annotation | effect |
//! |---|---|
//! | `divert.dev/inject: disabled` | not injected ([`SkipReason::OptedOut`]); `enabled` (or no annotation) injects; any other value is an error. A pod *label* `divert.dev/inject: disabled` opts out too (the webhook's objectSelector sees labels only) |
//! | `divert.dev/skip-outbound-ports: "5432,6379-6380"` | these destination ports bypass the proxy (`divert-proxy init --skip-outbound-ports`) |
//! | `divert.dev/skip-outbound-cidrs: "10.0.0.0/8,fd00::/8"` | these destinations bypass the proxy (`divert-proxy init --skip-outbound-cidrs`) |
//! | `divert.dev/skip-inbound-ports: "9000,9100-9101"` | connections to these ports of the pod bypass the proxy (`divert-proxy init --skip-inbound-ports`) |
//! | `divert.dev/debug: "true"` | the proxy logs one line per routing decision (the docs' `debug: true`): its log level gets `divert::decision=debug`; `"false"` is the default |
//! | `linkerd.io/inject: enabled` (or `ingress`), on the pod or else on its namespace | not injected: Linkerd's ([`SkipReason::Linkerd`]) |
//! | label `sidecar.istio.io/inject: "true"`, or on the namespace `istio-injection: enabled` or `istio.io/rev` | not injected: Istio's ([`SkipReason::Istio`]); `"false"` on the pod or `istio-injection: disabled` turn Istio off |
//!
//! A malformed value is an [`InjectError::Annotation`] that names the
//! annotation. A pod is not injected (an [`Outcome`] other than
//! [`Outcome::Injected`]) when it already has a container or init container
//! named `divert-init` or `divert-proxy` ([`Outcome::AlreadyInjected`]), when
//! it uses the node's network (`hostNetwork: true`: iptables would rewrite the
//! node's traffic), or when Linkerd or Istio injected it or will: their
//! webhooks run after Divert's, so their switches on the pod and its
//! namespace are read too ([`meshes`]). Such a pod of a divert namespace
//! still gets the shared namespace's DNS search and variables
//! ([`Outcome::LeftToMesh`]): the istio driver's routes expect a pod of
//! `alice` to reach `staging`'s `catalog` by the name `catalog`.
//!
//! # Legacy sidecar mode
//!
//! For clusters older than 1.29 ([`Settings::native_sidecar`] false) the proxy
//! is the pod's first regular container. Then the app's init containers run
//! before any proxy, so their outbound TCP connections (other than to skipped
//! ports and CIDRs) are refused; the app may start before the proxy is ready;
//! and a Job's pod never completes, because the proxy keeps running.
//!
//! # Image
//!
//! The containers set `args` only: the image's entrypoint must be the `divert`
//! binary.

#![forbid(unsafe_code)]

mod containers;
pub mod diff;
pub mod manifest;
pub mod meshes;
mod probes;
mod settings;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;

use divert_core::names;

use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, EnvVar, Pod, PodDNSConfig, PodSpec, Volume,
};

pub use diff::diff;
/// Whether `s` is a DNS label (RFC 1123): what namespace names are.
pub use divert_core::names::check_dns_label;
pub use json_patch;
pub use settings::{
    DEBUG_LOG_DIRECTIVE, DEFAULT_CLUSTER_DOMAIN, DEFAULT_IMAGE, NamespaceInfo, Settings,
};

use containers::{Skipped, init_container, proxy_container, token_volume};
use probes::rewrite_tcp_probes;

/// The version of this injector; the value of [`names::annotation::INJECTED`].
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What [`inject`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The injected pod.
    Injected(Box<Pod>),
    /// The pod already has `divert-init` or `divert-proxy`; nothing to do.
    AlreadyInjected,
    /// The pod is left as it is, for this reason.
    Skipped(SkipReason),
    /// A pod of a divert namespace that another mesh injects (the reason):
    /// it gets no proxy of Divert's, only what makes the shared namespace's
    /// short names resolve in it (the DNS search and the namespace
    /// variables), which the mesh's own routes need too.
    LeftToMesh { mesh: SkipReason, pod: Box<Pod> },
}

/// Why a pod is not injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// `divert.dev/inject: disabled` (annotation or label).
    OptedOut,
    /// `spec.hostNetwork: true`: iptables would change the node's network.
    HostNetwork,
    /// Linkerd injected it, or will ([`meshes`]).
    Linkerd,
    /// Istio injected it, or will ([`meshes`]).
    Istio,
}

impl SkipReason {
    /// A short stable name, for logs, metrics and the webhook's answer.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::OptedOut => "opted-out",
            SkipReason::HostNetwork => "host-network",
            SkipReason::Linkerd => "linkerd",
            SkipReason::Istio => "istio",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::OptedOut => "the pod opted out (divert.dev/inject: disabled)",
            SkipReason::HostNetwork => {
                "the pod uses the node's network (hostNetwork: true); redirecting it would redirect the node's traffic"
            }
            SkipReason::Linkerd => {
                "Linkerd injects the pod (its proxy, or linkerd.io/inject on the pod or its namespace); Divert does not run beside another mesh's proxy, whose redirects would fight its own"
            }
            SkipReason::Istio => {
                "Istio injects the pod (its proxy, or sidecar.istio.io/inject, istio-injection or istio.io/rev); Divert does not run beside another mesh's proxy, whose redirects would fight its own"
            }
        })
    }
}

/// Why a pod cannot be injected. Every variant but [`InjectError::Json`] is
/// the pod's or the configuration's fault, and says which field.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("annotation {annotation}: {reason}")]
    Annotation {
        annotation: &'static str,
        reason: String,
    },
    #[error("namespace {name:?}: {reason}")]
    Namespace { name: String, reason: String },
    #[error("the pod has no spec")]
    NoSpec,
    #[error(
        "container {container:?} declares port {port}, which the proxy uses; change the divert settings or the container"
    )]
    PortConflict { container: String, port: u16 },
    #[error(
        "the pod already has a volume named {:?} that is not an emptyDir",
        names::container::XTABLES_VOLUME
    )]
    VolumeConflict,
    #[error(
        "the pod already has a volume named {:?}, the proxy's token for the controller",
        names::token::VOLUME
    )]
    TokenVolumeConflict,
    #[error("injection setting {field}: {reason}")]
    Settings { field: &'static str, reason: String },
    #[error("cannot represent the pod as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Injects `pod`, which lives in namespace `ns`. Pure: the same input always
/// gives the same pod.
pub fn inject(pod: &Pod, ns: &NamespaceInfo, settings: &Settings) -> Result<Outcome, InjectError> {
    let spec = pod.spec.as_ref().ok_or(InjectError::NoSpec)?;
    let names: Vec<&str> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| c.name.as_str())
        .collect();
    if names
        .iter()
        .any(|n| *n == names::container::PROXY || *n == names::container::INIT)
    {
        return Ok(Outcome::AlreadyInjected);
    }
    let annotations = pod.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(|v| v.trim());
    // The label is what the webhook's objectSelector sees; other values of a
    // label are not ours to judge.
    let label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(names::annotation::INJECT));
    if label.is_some_and(|v| v == "disabled") {
        return Ok(Outcome::Skipped(SkipReason::OptedOut));
    }
    match annotation(names::annotation::INJECT) {
        None | Some("enabled") => {}
        Some("disabled") => return Ok(Outcome::Skipped(SkipReason::OptedOut)),
        Some(other) => {
            return Err(InjectError::Annotation {
                annotation: names::annotation::INJECT,
                reason: format!("{other:?} is neither enabled nor disabled"),
            });
        }
    }
    if spec.host_network == Some(true) {
        return Ok(Outcome::Skipped(SkipReason::HostNetwork));
    }
    if let Some(mesh) = meshes::injecting(pod, &ns.meshes) {
        let Some(shared) = &ns.shared_namespace else {
            return Ok(Outcome::Skipped(mesh));
        };
        ns.validate()?;
        let mut pod = pod.clone();
        if let Some(spec) = pod.spec.as_mut() {
            divert_namespace(spec, &ns.name, shared, settings);
        }
        return Ok(Outcome::LeftToMesh {
            mesh,
            pod: Box::new(pod),
        });
    }

    settings.validate()?;
    ns.validate()?;
    let skip_ports = annotation(names::annotation::SKIP_OUTBOUND_PORTS)
        .map(|v| {
            divert_init::ports::parse_port_list(v)
                .map(|_| normalize_list(v))
                .map_err(|e| InjectError::Annotation {
                    annotation: names::annotation::SKIP_OUTBOUND_PORTS,
                    reason: e.to_string(),
                })
        })
        .transpose()?
        .filter(|v| !v.is_empty());
    // Kept parsed too: the probes of these ports are left alone.
    let (skip_inbound, skipped_inbound) = match annotation(names::annotation::SKIP_INBOUND_PORTS) {
        Some(v) => {
            let ranges =
                divert_init::ports::parse_port_list(v).map_err(|e| InjectError::Annotation {
                    annotation: names::annotation::SKIP_INBOUND_PORTS,
                    reason: e.to_string(),
                })?;
            (Some(normalize_list(v)).filter(|v| !v.is_empty()), ranges)
        }
        None => (None, Vec::new()),
    };
    let skip_cidrs = annotation(names::annotation::SKIP_OUTBOUND_CIDRS)
        .map(|v| {
            divert_init::cidr::parse_cidr_list(v)
                .map(|_| normalize_list(v))
                .map_err(|e| InjectError::Annotation {
                    annotation: names::annotation::SKIP_OUTBOUND_CIDRS,
                    reason: e.to_string(),
                })
        })
        .transpose()?
        .filter(|v| !v.is_empty());
    let debug_log = || format!("{},{DEBUG_LOG_DIRECTIVE}", settings.log_level);
    let log_level = match annotation(names::annotation::DEBUG) {
        None if ns.debug => debug_log(),
        None | Some("false") => settings.log_level.clone(),
        Some("true") => debug_log(),
        Some(other) => {
            return Err(InjectError::Annotation {
                annotation: names::annotation::DEBUG,
                reason: format!("{other:?} is neither true nor false"),
            });
        }
    };
    check_ports(spec, settings)?;

    let mut pod = pod.clone();
    let Some(spec) = pod.spec.as_mut() else {
        return Err(InjectError::NoSpec);
    };
    if let Some(shared) = &ns.shared_namespace {
        divert_namespace(spec, &ns.name, shared, settings);
    }
    rewrite_tcp_probes(spec, settings, &skipped_inbound);

    match spec.volumes.as_mut().and_then(|v| {
        v.iter()
            .find(|v| v.name == names::container::XTABLES_VOLUME)
    }) {
        Some(volume) if is_plain_empty_dir(volume) => {}
        Some(_) => return Err(InjectError::VolumeConflict),
        None => spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: names::container::XTABLES_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }),
    }
    if spec
        .volumes
        .iter()
        .flatten()
        .any(|v| v.name == names::token::VOLUME)
    {
        return Err(InjectError::TokenVolumeConflict);
    }
    spec.volumes
        .get_or_insert_with(Vec::new)
        .push(token_volume());

    let init = init_container(
        settings,
        Skipped {
            outbound_ports: skip_ports,
            outbound_cidrs: skip_cidrs,
            inbound_ports: skip_inbound,
        },
    );
    let proxy = proxy_container(settings, log_level);
    let init_containers = spec.init_containers.get_or_insert_with(Vec::new);
    if settings.native_sidecar {
        init_containers.splice(0..0, [init, proxy]);
    } else {
        init_containers.insert(0, init);
        spec.containers.insert(0, proxy);
    }

    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(names::annotation::INJECTED.into(), VERSION.into());
    Ok(Outcome::Injected(Box::new(pod)))
}

/// The RFC 6902 patch that turns `pod` into the injected pod, or `None` when
/// the pod is not changed. Its paths are those of `pod` as JSON; arrays are
/// changed by inserting at an index, so the patch applies to the object the
/// API server sent even where `k8s-openapi` does not know every field.
pub fn patch(
    pod: &Pod,
    ns: &NamespaceInfo,
    settings: &Settings,
) -> Result<Option<json_patch::Patch>, InjectError> {
    match inject(pod, ns, settings)? {
        Outcome::Injected(changed) | Outcome::LeftToMesh { pod: changed, .. } => {
            let before = serde_json::to_value(pod)?;
            let after = serde_json::to_value(&*changed)?;
            let patch = diff(&before, &after);
            Ok((!patch.0.is_empty()).then_some(patch))
        }
        Outcome::AlreadyInjected | Outcome::Skipped(_) => Ok(None),
    }
}

/// `" 22, 80-90 "` → `"22,80-90"`: the annotation's own spelling, which
/// `divert-proxy init` parses the same way we just did.
fn normalize_list(v: &str) -> String {
    let v = v.trim();
    if v.is_empty() {
        return String::new();
    }
    v.split(',').map(str::trim).collect::<Vec<_>>().join(",")
}

fn is_plain_empty_dir(volume: &Volume) -> bool {
    let mut bare = volume.clone();
    bare.empty_dir = None;
    volume.empty_dir.is_some()
        && bare
            == Volume {
                name: names::container::XTABLES_VOLUME.into(),
                ..Volume::default()
            }
}

/// An app container that declares the proxy's ports would fail to start
/// beside it (one network namespace).
fn check_ports(spec: &PodSpec, settings: &Settings) -> Result<(), InjectError> {
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for p in c.ports.iter().flatten() {
            for ours in [
                settings.proxy_port,
                settings.inbound_port,
                settings.admin_port,
            ] {
                if p.container_port == i32::from(ours) {
                    return Err(InjectError::PortConflict {
                        container: c.name.clone(),
                        port: ours,
                    });
                }
            }
        }
    }
    Ok(())
}

fn divert_namespace(spec: &mut PodSpec, namespace: &str, shared: &str, settings: &Settings) {
    let domain = format!("{shared}.svc.{}", settings.cluster_domain);
    let searches = spec
        .dns_config
        .get_or_insert_with(PodDNSConfig::default)
        .searches
        .get_or_insert_with(Vec::new);
    if !searches.iter().any(|s| s.trim_end_matches('.') == domain) {
        searches.push(domain);
    }
    let vars = [
        (names::env::SHARED_NAMESPACE, shared),
        (names::env::DIVERTED_NAMESPACE, namespace),
        (names::env::OKTETO_SHARED, shared),
        (names::env::OKTETO_DIVERTED, namespace),
    ];
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        let env = c.env.get_or_insert_with(Vec::new);
        for (name, value) in vars {
            if !env.iter().any(|e| e.name == name) {
                env.push(EnvVar {
                    name: name.into(),
                    value: Some(value.into()),
                    value_from: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
