//! Judging: one verdict per check from a [`ClusterView`], without I/O, so
//! each is tested on fixtures shaped like the API server's objects.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::manifest::Driver;
use crate::preview::Preview;
use divert_controller::translate::{self, NamespaceRole, Skip};
use divert_core::names::container::PROXY as PROXY_CONTAINER;
use divert_core::names::label::{
    INJECT as INJECT_LABEL, SHARED_NAMESPACE as SHARED_NAMESPACE_LABEL,
};
use divert_core::names::object::CONTROLLER;
use divert_core::names::port::CONTROLLER_ADMIN_NAME as ADMIN_PORT_NAME;
use divert_inject::SkipReason;
use divert_inject::meshes::{self, MeshSwitches};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;

use super::certs::*;
use super::{CheckResult, ClusterView, INSTALL, copies_path, key_drops_path, proxies_path};

/// Judges a view of the cluster: one result per check, in a fixed order.
pub fn evaluate(view: &ClusterView, install_ns: &str, now: SystemTime) -> Vec<CheckResult> {
    let now = unix_seconds(now);
    let serving = serving_certificate(view, install_ns);
    let leaf = match &serving {
        Ok(pems) => pems
            .first()
            .ok_or_else(|| "no certificate".to_owned())
            .and_then(|pem| {
                pem.parse_x509()
                    .map_err(|e| format!("tls.crt does not parse as X.509: {e}"))
            }),
        Err(e) => Err(e.to_string()),
    };
    let roles = view.namespaces.as_ref().map(|all| roles(all, install_ns));
    let roles = roles.as_ref().map_err(|e| e.as_str());
    vec![
        controller(view, install_ns),
        certificate(leaf.as_ref(), install_ns, now),
        ca_bundle(view, leaf.as_ref(), install_ns, now),
        namespaces(roles, view.previews.as_deref().ok()),
        pods_injected(view, roles),
        proxies_connected(view, roles, install_ns),
        key_propagation(view, install_ns),
        copies_made(view, install_ns),
    ]
}

pub(super) const CONTROLLER_CHECK: &str = "the controller is running and ready";

pub(super) fn controller(view: &ClusterView, ns: &str) -> CheckResult {
    let id = "controller";
    let describe = format!("kubectl -n {ns} describe deployment {CONTROLLER}");
    let deployment = match &view.deployment {
        Err(e) => {
            return CheckResult::fail(
                id,
                CONTROLLER_CHECK,
                vec![format!("cannot read Deployment {ns}/{CONTROLLER}: {e}")],
                vec![format!(
                    "check that you may read it: kubectl -n {ns} get deployment {CONTROLLER}"
                )],
            );
        }
        Ok(None) => {
            return CheckResult::fail(
                id,
                CONTROLLER_CHECK,
                vec![format!(
                    "Deployment {ns}/{CONTROLLER} not found: Divert is not installed in namespace {ns}"
                )],
                vec![
                    format!("install it: {INSTALL}"),
                    "installed in another namespace? pass --namespace".into(),
                ],
            );
        }
        Ok(Some(d)) => d,
    };
    let want = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let observed =
        status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
    let mut problems = Vec::new();
    let mut hint = Vec::new();
    if want == 0 {
        problems.push("it is scaled to 0 replicas".to_owned());
        hint.push(format!(
            "scale it up: kubectl -n {ns} scale deployment {CONTROLLER} --replicas=1"
        ));
    } else if ready < 1 {
        problems.push(format!("0 of {want} replicas ready"));
        hint.push(format!("see why: {describe}"));
        hint.push(format!(
            "and its logs: kubectl -n {ns} logs deployment/{CONTROLLER}"
        ));
        hint.push(format!("reinstall if it was changed: {INSTALL}"));
    }
    if want > 0 && (!observed || updated < want) {
        problems.push(format!(
            "a rollout is in progress: {updated} of {want} replicas updated"
        ));
        hint.push(format!(
            "wait for it: kubectl -n {ns} rollout status deployment/{CONTROLLER}"
        ));
        if ready >= 1 {
            hint.push(format!("if it does not finish, see why: {describe}"));
        }
    }
    if problems.is_empty() {
        CheckResult::pass(
            id,
            CONTROLLER_CHECK,
            vec![format!(
                "Deployment {ns}/{CONTROLLER}: {ready} of {want} replicas ready, all updated"
            )],
        )
    } else {
        let detail = problems
            .into_iter()
            .map(|p| format!("Deployment {ns}/{CONTROLLER}: {p}"))
            .collect();
        hint.dedup();
        CheckResult::fail(id, CONTROLLER_CHECK, detail, hint)
    }
}

/// What each namespace is to Divert, by name.
pub(super) struct Roles {
    all: BTreeMap<String, NamespaceInfo>,
    install_ns: String,
}

pub(super) struct NamespaceInfo {
    role: NamespaceRole,
    /// The value of its `divert.dev/inject` label.
    inject: Option<String>,
    /// The value of its `divert.dev/shared-namespace` label.
    label: Option<String>,
}

impl NamespaceInfo {
    /// Whether the injector's namespace selectors (`divert install`) match
    /// it: labelled with a shared namespace and not `divert.dev/inject=disabled`,
    /// or a shared namespace labelled `divert.dev/inject=enabled`.
    fn injected(&self) -> bool {
        match (&self.label, self.inject.as_deref()) {
            (Some(_), inject) => inject != Some("disabled"),
            (None, inject) => inject == Some("enabled"),
        }
    }
}

pub(super) fn roles(namespaces: &[Namespace], install_ns: &str) -> Roles {
    let all = namespaces
        .iter()
        .map(|ns| {
            let labels = ns.metadata.labels.as_ref();
            let info = NamespaceInfo {
                role: translate::namespace(ns),
                inject: labels.and_then(|l| l.get(INJECT_LABEL)).cloned(),
                label: labels.and_then(|l| l.get(SHARED_NAMESPACE_LABEL)).cloned(),
            };
            (ns.name_any(), info)
        })
        .collect();
    Roles {
        all,
        install_ns: install_ns.to_owned(),
    }
}

impl Roles {
    /// Divert namespaces and their shared namespace.
    fn divert(&self) -> BTreeMap<&str, &str> {
        self.all
            .iter()
            .filter_map(|(name, info)| match &info.role {
                NamespaceRole::Divert(ns) => Some((name.as_str(), ns.shared_namespace.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Shared namespaces labelled `divert.dev/inject=enabled`.
    fn injected_shared(&self) -> BTreeSet<&str> {
        self.all
            .iter()
            .filter(|(name, info)| {
                info.label.is_none() && info.injected() && **name != self.install_ns
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Namespaces whose new pods the injector sees (never Divert's own).
    fn opted_in(&self) -> BTreeSet<String> {
        self.all
            .iter()
            .filter(|(name, info)| info.injected() && **name != self.install_ns)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Namespaces whose pods should run the proxy: divert namespaces (unless
/// labelled `divert.dev/inject=disabled`), and shared ones labelled
/// `divert.dev/inject=enabled`; never `install_ns`.
pub fn opted_in(namespaces: &[Namespace], install_ns: &str) -> BTreeSet<String> {
    roles(namespaces, install_ns).opted_in()
}

pub(super) const NAMESPACES_CHECK: &str = "every divert namespace has its shared namespace";

/// `: runs a, b; http://…` for a divert namespace whose preview was read
/// and has something to show, else nothing.
fn preview_of(previews: Option<&[Preview]>, name: &str) -> String {
    let Some(p) = previews.and_then(|all| all.iter().find(|p| p.namespace == name)) else {
        return String::new();
    };
    let mut parts = Vec::new();
    if !p.services.is_empty() {
        parts.push(format!("runs {}", p.services.join(", ")));
    }
    if !p.urls.is_empty() {
        parts.push(p.urls.join(" "));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join("; "))
    }
}

pub(super) fn namespaces(roles: Result<&Roles, &str>, previews: Option<&[Preview]>) -> CheckResult {
    let id = "namespaces";
    let roles = match roles {
        Ok(r) => r,
        Err(e) => {
            return CheckResult::fail(
                id,
                NAMESPACES_CHECK,
                vec![format!("cannot list namespaces: {e}")],
                vec!["check that you may list them: kubectl get namespaces".into()],
            );
        }
    };
    let divert = roles.divert();
    let injected = roles.injected_shared();
    let mut detail = Vec::new();
    let mut hint = Vec::new();
    let relabel = |ns: &str| {
        format!(
            "kubectl label namespace {ns} {SHARED_NAMESPACE_LABEL}=<shared namespace> --overwrite"
        )
    };
    for (name, info) in &roles.all {
        let label = info.label.as_deref().unwrap_or_default();
        match &info.role {
            NamespaceRole::Divert(_) => {
                let shared = label;
                if !roles.all.contains_key(shared) {
                    detail.push(format!(
                        "{name} → {shared}: namespace {shared} does not exist"
                    ));
                    hint.push(format!(
                        "create it: kubectl create namespace {shared}; or fix the label: {}",
                        relabel(name)
                    ));
                } else if let Some(theirs) = divert.get(shared) {
                    detail.push(format!(
                        "{name} → {shared}: {shared} is itself a divert namespace (of {theirs})"
                    ));
                    hint.push(format!(
                        "point {name} at a shared namespace: kubectl label namespace {name} {SHARED_NAMESPACE_LABEL}={theirs} --overwrite"
                    ));
                } else if injected.contains(shared) {
                    detail.push(format!("{name} → {shared}{}", preview_of(previews, name)));
                } else {
                    detail.push(format!(
                        "{name} → {shared}{} (note: {shared} is not labelled {INJECT_LABEL}=enabled, \
                         so its pods run no proxy and cannot send requests on to {name}'s services)",
                        preview_of(previews, name)
                    ));
                }
            }
            NamespaceRole::Skipped(skip) => {
                let why = match skip {
                    Skip::SharedNamespaceIsItself => "names the namespace itself".to_owned(),
                    _ => "is not a namespace name".to_owned(),
                };
                detail.push(format!(
                    "{name}: label {SHARED_NAMESPACE_LABEL}={label:?} {why}, so {name} is ignored"
                ));
                hint.push(format!("fix the label: {}", relabel(name)));
            }
            NamespaceRole::SharedWithCookie(_) => detail.push(format!(
                "{name}: accepts the key cookie (?divert=NAMESPACE) from callers without a sidecar"
            )),
            NamespaceRole::Shared => {}
        }
    }
    let passed = hint.is_empty();
    if divert.is_empty() && passed {
        detail.push(format!(
            "no divert namespace yet: opt one in with kubectl label namespace NAME {SHARED_NAMESPACE_LABEL}=SHARED"
        ));
    }
    detail.push(if injected.is_empty() {
        format!("shared namespaces with injection ({INJECT_LABEL}=enabled): none")
    } else {
        format!(
            "shared namespaces with injection ({INJECT_LABEL}=enabled): {}",
            injected.into_iter().collect::<Vec<_>>().join(", ")
        )
    });
    if passed {
        CheckResult::pass(id, NAMESPACES_CHECK, detail)
    } else {
        CheckResult::fail(id, NAMESPACES_CHECK, detail, hint)
    }
}

/// A pod that the checks expect to run the proxy: in an opted-in namespace,
/// not finished, not being deleted, not on the host's network, not opted out.
pub(super) fn expects_proxy(pod: &Pod, opted_in: &BTreeSet<String>) -> bool {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    // The webhook skips pods annotated divert.dev/inject=disabled; its
    // objectSelector, pods labelled so.
    let disabled = [&pod.metadata.annotations, &pod.metadata.labels]
        .into_iter()
        .any(|m| {
            m.as_ref()
                .and_then(|m| m.get(INJECT_LABEL))
                .is_some_and(|v| v == "disabled")
        });
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    opted_in.contains(ns)
        && !matches!(phase, Some("Succeeded" | "Failed"))
        && pod.metadata.deletion_timestamp.is_none()
        && !disabled
        && !host_network
}

/// Whether the pod runs the proxy (as a native sidecar or a container).
pub fn has_proxy(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER)
    })
}

pub fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

pub(super) fn pod_key(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.name_any(),
    )
}

/// How to get a pod made again, now that its namespace is opted in.
pub(super) fn restart_hint(pod: &Pod) -> String {
    let (ns, name) = pod_key(pod);
    let owner = pod
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.controller == Some(true));
    let rollout =
        |kind: &str, owner: &str| format!("kubectl -n {ns} rollout restart {kind}/{owner}");
    match owner {
        Some(o) if o.kind == "ReplicaSet" => {
            let hash = pod.labels().get("pod-template-hash");
            match hash.and_then(|h| o.name.strip_suffix(&format!("-{h}"))) {
                Some(deployment) => rollout("deployment", deployment),
                None => format!(
                    "kubectl -n {ns} delete pod {name} (ReplicaSet {} makes a new one)",
                    o.name
                ),
            }
        }
        Some(o) if o.kind == "StatefulSet" => rollout("statefulset", &o.name),
        Some(o) if o.kind == "DaemonSet" => rollout("daemonset", &o.name),
        _ => format!("delete pod {ns}/{name} and create it again"),
    }
}

pub(super) const PODS_CHECK: &str = "pods in opted-in namespaces run the proxy";

pub(super) fn pods_injected(view: &ClusterView, roles: Result<&Roles, &str>) -> CheckResult {
    let id = "pods-injected";
    let (opted_in, pods) = match (roles, &view.pods) {
        (Err(e), _) => {
            return CheckResult::fail(
                id,
                PODS_CHECK,
                vec![format!("cannot tell which namespaces are opted in: {e}")],
                vec!["check that you may list them: kubectl get namespaces".into()],
            );
        }
        (_, Err(e)) => {
            return CheckResult::fail(
                id,
                PODS_CHECK,
                vec![e.clone()],
                vec![
                    "check that you may list pods: kubectl auth can-i list pods -n NAMESPACE"
                        .into(),
                ],
            );
        }
        (Ok(roles), Ok(pods)) => (roles.opted_in(), pods),
    };
    let expected: Vec<&Pod> = pods
        .iter()
        .filter(|p| expects_proxy(p, &opted_in))
        .collect();
    let missing: Vec<&Pod> = expected.iter().copied().filter(|p| !has_proxy(p)).collect();
    // Pods another mesh injects are left to it: no restart brings Divert in.
    let switches: BTreeMap<&str, MeshSwitches> = view
        .namespaces
        .as_ref()
        .map(|all| {
            all.iter()
                .filter_map(|ns| {
                    let m = &ns.metadata;
                    Some((
                        m.name.as_deref()?,
                        MeshSwitches::of(m.labels.as_ref(), m.annotations.as_ref()),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let (meshed, missing): (Vec<&Pod>, Vec<&Pod>) = missing.into_iter().partition(|p| {
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        meshes::injecting(p, switches.get(ns).unwrap_or(&MeshSwitches::default())).is_some()
    });
    // With the istio driver, Istio's routes divert the pods Istio injects,
    // unless the cluster has no VirtualService kind for them.
    let no_routes = view.copies.as_ref().is_ok_and(|c| {
        c.problems
            .iter()
            .any(|p| p.kind == "VirtualService" && p.namespace.is_empty())
    });
    let istio_routes = installed_driver(view) == Driver::Istio && !no_routes;
    let (routed, meshed): (Vec<&Pod>, Vec<&Pod>) = meshed.into_iter().partition(|p| {
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        istio_routes
            && meshes::injecting(p, switches.get(ns).unwrap_or(&MeshSwitches::default()))
                == Some(SkipReason::Istio)
    });
    if missing.is_empty() && meshed.is_empty() {
        let detail = if opted_in.is_empty() {
            "no opted-in namespace".to_owned()
        } else if routed.is_empty() {
            format!(
                "{} pod{} in {} opted-in namespace{}, each with {PROXY_CONTAINER}",
                expected.len(),
                plural(expected.len()),
                opted_in.len(),
                plural(opted_in.len())
            )
        } else {
            let proxied = expected.len() - routed.len();
            format!(
                "{} pod{} in {} opted-in namespace{}: {proxied} with {PROXY_CONTAINER}, {} \
                 routed by Istio (the istio driver)",
                expected.len(),
                plural(expected.len()),
                opted_in.len(),
                plural(opted_in.len()),
                routed.len()
            )
        };
        return CheckResult::pass(id, PODS_CHECK, vec![detail]);
    }
    fn sorted(pods: Vec<&Pod>) -> Vec<(String, String, &Pod)> {
        let mut all: Vec<(String, String, &Pod)> = pods
            .into_iter()
            .map(|p| {
                let (ns, name) = pod_key(p);
                (ns, name, p)
            })
            .collect();
        all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        all
    }
    let (missing, meshed) = (sorted(missing), sorted(meshed));
    let mut detail: Vec<String> = missing
        .iter()
        .map(|(ns, name, _)| format!("{ns}/{name} has no {PROXY_CONTAINER} container"))
        .collect();
    let mut hint = Vec::new();
    if !missing.is_empty() {
        hint.push(
            "pods created before their namespace was opted in, before Divert was installed, \
             or while the webhook was unreachable (its failurePolicy is Ignore, so the API server \
             created them without it) are not injected; make them again:"
                .to_owned(),
        );
        let mut seen = BTreeSet::new();
        for (_, _, pod) in &missing {
            let h = restart_hint(pod);
            if seen.insert(h.clone()) {
                hint.push(h);
            }
        }
    }
    for (ns, name, pod) in &meshed {
        let why = meshes::injecting(
            pod,
            switches
                .get(ns.as_str())
                .unwrap_or(&MeshSwitches::default()),
        );
        if let Some(why) = why {
            detail.push(format!("{ns}/{name} is not diverted: {why}"));
        }
    }
    if !meshed.is_empty() {
        hint.push(format!(
            "Divert does not divert a pod that Linkerd or Istio injects: take such pods out of \
             that mesh (Linkerd: {linkerd}: disabled on the pod, or remove it from the namespace; \
             Istio: the pod label {istio}: \"false\"), or their namespace out of Divert; for \
             Istio's pods, an admin can instead install the istio driver (divert install \
             --driver istio | kubectl apply -f -), which routes them with Istio's own \
             VirtualServices",
            linkerd = meshes::LINKERD_INJECT,
            istio = meshes::ISTIO_POD_INJECT,
        ));
    }
    CheckResult::fail(id, PODS_CHECK, detail, hint)
}

/// The driver the controller runs with (its `--driver` argument), as
/// `divert install` wrote it.
fn installed_driver(view: &ClusterView) -> Driver {
    let args = view
        .deployment
        .as_ref()
        .ok()
        .and_then(Option::as_ref)
        .and_then(|d| d.spec.as_ref()?.template.spec.as_ref())
        .into_iter()
        .flat_map(|spec| spec.containers.iter())
        .flat_map(|c| c.args.iter().flatten());
    let mut args = args.map(String::as_str);
    while let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--driver") {
            Some("") => args.next(),
            Some(v) => v.strip_prefix('='),
            None => None,
        };
        if let Some(d) = value.and_then(|v| Driver::parse_installed(v).ok()) {
            return d;
        }
    }
    Driver::Divert
}

pub(super) const PROXIES_CHECK: &str = "every injected pod's proxy is connected to the controller";

pub(super) fn proxies_connected(
    view: &ClusterView,
    roles: Result<&Roles, &str>,
    install_ns: &str,
) -> CheckResult {
    let id = "proxies-connected";
    let proxies = match &view.proxies {
        Ok(p) => p,
        Err(e) => {
            return CheckResult::fail(
                id,
                PROXIES_CHECK,
                vec![format!(
                    "cannot list the proxies from the controller (GET {}): {e}",
                    proxies_path(install_ns)
                )],
                vec![
                    format!(
                        "the controller must answer on its Service's port named {ADMIN_PORT_NAME}: \
                         kubectl -n {install_ns} get service {CONTROLLER} -o wide"
                    ),
                    format!("and be running: kubectl -n {install_ns} logs deployment/{CONTROLLER}"),
                ],
            );
        }
    };
    let (opted_in, pods) = match (roles, &view.pods) {
        (Err(e), _) => {
            return CheckResult::fail(
                id,
                PROXIES_CHECK,
                vec![format!("cannot tell which pods should be connected: {e}")],
                vec!["check that you may list namespaces: kubectl get namespaces".into()],
            );
        }
        (_, Err(e)) => {
            return CheckResult::fail(
                id,
                PROXIES_CHECK,
                vec![format!("cannot tell which pods should be connected: {e}")],
                vec![
                    "check that you may list pods: kubectl auth can-i list pods -n NAMESPACE"
                        .into(),
                ],
            );
        }
        (Ok(roles), Ok(pods)) => (roles.opted_in(), pods),
    };
    let connected: BTreeSet<(&str, &str)> = proxies
        .iter()
        .map(|p| (p.namespace.as_str(), p.pod.as_str()))
        .collect();
    let mut injected: Vec<(String, String)> = pods
        .iter()
        .filter(|p| expects_proxy(p, &opted_in) && has_proxy(p) && is_running(p))
        .map(pod_key)
        .collect();
    injected.sort();
    let missing: Vec<&(String, String)> = injected
        .iter()
        .filter(|(ns, name)| !connected.contains(&(ns.as_str(), name.as_str())))
        .collect();
    if missing.is_empty() {
        return CheckResult::pass(
            id,
            PROXIES_CHECK,
            vec![format!(
                "{} running injected pod{}, each connected ({} proxies connected in all)",
                injected.len(),
                plural(injected.len()),
                proxies.len()
            )],
        );
    }
    let detail = missing
        .iter()
        .map(|(ns, name)| format!("{ns}/{name}: its proxy is not connected"))
        .collect();
    let mut hint: Vec<String> = missing
        .iter()
        .map(|(ns, name)| format!("kubectl -n {ns} logs {name} -c {PROXY_CONTAINER}"))
        .collect();
    hint.insert(
        0,
        "see why in the proxy's logs (it reconnects by itself; a pod that just started may need a moment):"
            .into(),
    );
    CheckResult::fail(id, PROXIES_CHECK, detail, hint)
}

pub(super) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

pub(super) const KEY_CHECK: &str = "apps pass the divert key on";

/// Drops older than this are history: the app may have been fixed since.
pub const RECENT_SECONDS: u64 = 3600;

/// Whether the apps pass the key on, as their proxies saw: a service that
/// got requests with a key and called another without it is a warning, not
/// a failure (Divert works; the app loses the key).
pub(super) fn key_propagation(view: &ClusterView, install_ns: &str) -> CheckResult {
    let id = "key-propagation";
    let seen = match &view.key_drops {
        Ok(seen) => seen,
        Err(e) => {
            return CheckResult::warn(
                id,
                KEY_CHECK,
                vec![format!(
                    "cannot ask the controller which apps dropped the key (GET {}): {e}",
                    key_drops_path(install_ns)
                )],
                vec![format!(
                    "it gathers them from the proxies' admin ports: kubectl -n {install_ns} logs \
                     deployment/{CONTROLLER}"
                )],
            );
        }
    };
    /// One service's calls to one destination, over its pods.
    #[derive(Default)]
    struct Pair<'a> {
        count: u64,
        pods: BTreeSet<&'a str>,
        last: Option<u64>,
    }
    // By namespace, service and destination.
    let mut by_pair: BTreeMap<(&str, &str, &str), Pair> = BTreeMap::new();
    for d in seen
        .drops
        .iter()
        .filter(|d| d.last_seconds <= RECENT_SECONDS)
    {
        let e = by_pair
            .entry((&d.namespace, &d.service, &d.destination))
            .or_default();
        e.count += d.count;
        e.pods.insert(&d.pod);
        e.last = Some(e.last.map_or(d.last_seconds, |l| l.min(d.last_seconds)));
    }
    let mut detail: Vec<String> = by_pair
        .iter()
        .map(|((ns, service, destination), Pair { count, pods, last })| {
            let who = if service.is_empty() {
                format!("{ns}/{}", pods.first().copied().unwrap_or("?"))
            } else {
                format!("{ns}/{service}")
            };
            format!(
                "{who} → {destination}: {count} call{} without the key, while serving requests \
                 with one (last {} s ago, {} pod{})",
                plural(*count),
                last.unwrap_or_default(),
                pods.len(),
                plural(pods.len()),
            )
        })
        .collect();
    if !seen.unreachable.is_empty() {
        detail.push(format!(
            "{} proxies did not answer: {}",
            seen.unreachable.len(),
            seen.unreachable.join("; ")
        ));
    }
    if by_pair.is_empty() {
        detail.insert(
            0,
            format!("no call went out without the key in the last {RECENT_SECONDS} s"),
        );
        return CheckResult::pass(id, KEY_CHECK, detail);
    }
    CheckResult::warn(
        id,
        KEY_CHECK,
        detail,
        vec![
            "each request a service makes must carry the baggage header of the request it is \
             serving (HTTP: the header `baggage`; gRPC: the metadata `baggage`); past a drop, \
             every call falls back to the shared copies"
                .into(),
            "the usual fix: OpenTelemetry's W3C baggage propagator, with the request's context \
             passed from the handler to the client calls it makes"
                .into(),
            "see the calls as they happen: divert tap --controller URL --key KEY (they show \
             KEY DROPPED)"
                .into(),
        ],
    )
}

pub(super) const COPIES_CHECK: &str = "the controller made every preview copy and route";

/// The copies (preview copies, and the istio driver's routes) the
/// controller could not make: a warning, since what is in the way is an
/// object of the user's, not a fault of Divert's. A route not made is a
/// service whose requests Istio does not divert.
pub(super) fn copies_made(view: &ClusterView, install_ns: &str) -> CheckResult {
    let id = "copies";
    let copies = match &view.copies {
        Ok(c) => c,
        Err(e) => {
            return CheckResult::warn(
                id,
                COPIES_CHECK,
                vec![format!(
                    "cannot ask the controller which copies it could not make (GET {}): {e}",
                    copies_path(install_ns)
                )],
                vec![format!(
                    "it logs each one: kubectl -n {install_ns} logs deployment/{CONTROLLER}"
                )],
            );
        }
    };
    if copies.problems.is_empty() {
        return CheckResult::pass(id, COPIES_CHECK, vec!["none missing".to_owned()]);
    }
    let detail = copies
        .problems
        .iter()
        .map(|p| {
            if p.namespace.is_empty() {
                // Not one object: the whole kind (no Istio CRDs).
                format!("{}s: {}", p.kind, p.why)
            } else {
                format!(
                    "{} {}/{} is not made: {}",
                    p.kind, p.namespace, p.name, p.why
                )
            }
        })
        .collect();
    CheckResult::warn(
        id,
        COPIES_CHECK,
        detail,
        vec![
            "the controller never writes an object of yours: rename or remove the one in the \
             way (or fix the namespace's divert.dev/host-template), and the copy follows within \
             seconds"
                .to_owned(),
        ],
    )
}
