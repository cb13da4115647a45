//! Opting a namespace in without the right to label it.
//!
//! Developers can usually edit their own namespace but not label it, and the
//! label `divert.dev/shared-namespace` is what makes a divert namespace. So a
//! developer may instead make a ConfigMap named [`OPT_IN`] in their namespace
//! `K`, labelled `divert.dev/shared-namespace: S`. The controller labels `K`
//! for them when `S` allows it: `S`'s annotation [`DIVERT_ALLOWED`] is `*`
//! (any namespace) or a label selector `K`'s labels must match (`team=movies`,
//! `env in (dev,preview)`, `!restricted`). Without the annotation only an
//! admin's label opts in. The controller marks the labels it sets
//! ([`OPTED_IN_BY`]) and removes them again when the ConfigMap goes, when `S`
//! stops allowing `K`, or when the ConfigMap's [`EXPIRES_AT`] has passed; it
//! never touches a label an admin set. What it decided is published as an
//! Event on the ConfigMap, which the developer can read.
//!
//! Why a ConfigMap and not a custom resource: the built-in `edit` role
//! already lets a developer make one in their namespace (a custom resource
//! would need its own aggregated role, and a CRD to install and upgrade),
//! and every tool can apply it. The price: the controller reads
//! ConfigMaps cluster-wide (it lists only those with the label).

use std::collections::{BTreeMap, BTreeSet};

use divert_core::names::annotation::{DEBUG, DIVERT_ALLOWED, EXPIRES_AT, OPTED_IN_BY};
use divert_core::names::label::SHARED_NAMESPACE;
use divert_core::names::object::OPT_IN;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::jiff::Timestamp;
use kube::core::{Expression, Selector, SelectorExt};

/// The value of [`OPTED_IN_BY`] the controller writes.
pub const BY_CONFIG_MAP: &str = "configmap";
/// The reasons of the Events on a request's ConfigMap.
pub const REASON_DIVERTING: &str = "Diverting";
pub const REASON_NOT_DIVERTING: &str = "NotDiverting";

/// Who may opt in as a divert namespace of a shared namespace.
#[derive(Debug, Clone, PartialEq)]
pub enum Allowed {
    Anyone,
    Matching(Selector),
}

impl Allowed {
    pub fn admits(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Allowed::Anyone => true,
            Allowed::Matching(s) => s.matches(labels),
        }
    }
}

/// Parses [`DIVERT_ALLOWED`]: `*`, or a label selector as `kubectl -l`
/// takes it (`a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`,
/// joined by commas).
pub fn parse_allowed(s: &str) -> Result<Allowed, String> {
    let s = s.trim();
    if s == "*" {
        return Ok(Allowed::Anyone);
    }
    if s.is_empty() {
        return Err("empty: write * or a label selector".to_owned());
    }
    let mut expressions = Vec::new();
    for term in split_terms(s)? {
        expressions.push(parse_term(term.trim())?);
    }
    Ok(Allowed::Matching(Selector::from_iter(expressions)))
}

/// Splits on the commas that are not inside `( )`.
fn split_terms(s: &str) -> Result<Vec<&str>, String> {
    let (mut depth, mut start, mut out) = (0usize, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or(format!("{s:?}: a ')' without '('"))?
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("{s:?}: a '(' without ')'"));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn parse_term(t: &str) -> Result<Expression, String> {
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        let ok = !k.is_empty()
            && k.len() <= 317
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        ok.then(|| k.to_owned())
            .ok_or(format!("{t:?}: {k:?} is not a label key"))
    };
    let set = |rest: &str| -> Result<BTreeSet<String>, String> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or(format!("{t:?}: expected (value, …)"))?;
        Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    if let Some(k) = t.strip_prefix('!') {
        return Ok(Expression::DoesNotExist(key(k)?));
    }
    if let Some((k, v)) = t.split_once("!=") {
        return Ok(Expression::NotEqual(key(k)?, v.trim().to_owned()));
    }
    if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
        return Ok(Expression::Equal(key(k)?, v.trim().to_owned()));
    }
    if let Some((k, rest)) = t.split_once(" notin ") {
        return Ok(Expression::NotIn(key(k)?, set(rest)?));
    }
    if let Some((k, rest)) = t.split_once(" in ") {
        return Ok(Expression::In(key(k)?, set(rest)?));
    }
    Ok(Expression::Exists(key(t)?))
}

/// A developer's request: their ConfigMap [`OPT_IN`], read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub shared: String,
    /// The ConfigMap's [`EXPIRES_AT`], as written.
    pub expires_at: Option<String>,
    /// The ConfigMap's version, which the outcome names (so whoever wrote
    /// it knows the answer is to their write).
    pub resource_version: String,
    /// The ConfigMap's [`DEBUG`] is `true`: so is the namespace's.
    pub debug: bool,
}

/// The request a ConfigMap makes, if it is one (named [`OPT_IN`], with the
/// label).
pub fn request(cm: &ConfigMap) -> Option<(String, Request)> {
    if cm.metadata.name.as_deref() != Some(OPT_IN) {
        return None;
    }
    let shared = cm.metadata.labels.as_ref()?.get(SHARED_NAMESPACE)?.clone();
    let expires_at = cm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXPIRES_AT))
        .cloned();
    Some((
        cm.metadata.namespace.clone()?,
        Request {
            shared,
            expires_at,
            resource_version: cm.metadata.resource_version.clone().unwrap_or_default(),
            debug: cm
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEBUG))
                .is_some_and(|v| v == "true"),
        },
    ))
}

/// How an outcome names the request it answers, at the end of its message:
/// `[ConfigMap divert at version 123]`.
pub fn answer_to(resource_version: &str) -> String {
    format!("[ConfigMap {OPT_IN} at version {resource_version}]")
}

/// A write to a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Label `namespace` a divert namespace of `shared` (marked as the
    /// controller's, with the request's end).
    Label {
        namespace: String,
        shared: String,
        expires_at: Option<String>,
        debug: bool,
        resource_version: String,
    },
    /// Remove a label the controller set.
    Unlabel {
        namespace: String,
        resource_version: String,
    },
}

impl Op {
    /// The namespace it writes.
    pub fn namespace(&self) -> &str {
        match self {
            Op::Label { namespace, .. } | Op::Unlabel { namespace, .. } => namespace,
        }
    }
}

/// What was decided for one request, for its Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub namespace: String,
    /// Whether the namespace diverts (now or once the op is written).
    pub diverting: bool,
    pub message: String,
}

fn labels(ns: &Namespace) -> BTreeMap<String, String> {
    ns.metadata.labels.clone().unwrap_or_default()
}

fn annotation<'a>(ns: &'a Namespace, name: &str) -> Option<&'a str> {
    ns.metadata
        .annotations
        .as_ref()?
        .get(name)
        .map(String::as_str)
}

/// The writes that make the namespaces' labels what the requests ask for,
/// and the outcome of each request.
pub fn plan(
    namespaces: &BTreeMap<String, Namespace>,
    requests: &BTreeMap<String, Request>,
    now: Timestamp,
) -> (Vec<Op>, Vec<Outcome>) {
    let mut ops = Vec::new();
    let mut outcomes = Vec::new();
    let mut granted = BTreeSet::new();
    for (k, req) in requests {
        let Some(ns) = namespaces.get(k) else {
            continue;
        };
        let rv = ns.metadata.resource_version.clone().unwrap_or_default();
        let ours = annotation(ns, OPTED_IN_BY) == Some(BY_CONFIG_MAP);
        let label = labels(ns).get(SHARED_NAMESPACE).cloned();
        let mut decide = |diverting: bool, message: String| {
            outcomes.push(Outcome {
                namespace: k.clone(),
                diverting,
                message: format!("{message} {}", answer_to(&req.resource_version)),
            });
        };
        if let Some(l) = &label
            && !ours
        {
            let same = l == &req.shared;
            decide(
                same,
                if same {
                    format!("{k} diverts from {l} (labelled by an admin)")
                } else {
                    format!(
                        "{k} diverts from {l} (labelled by an admin), not {}",
                        req.shared
                    )
                },
            );
            continue;
        }
        let expired = req
            .expires_at
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .is_some_and(|t| t <= now);
        if expired {
            decide(
                false,
                format!("{EXPIRES_AT} has passed: {k} no longer diverts"),
            );
            continue;
        }
        let Some(shared) = namespaces.get(&req.shared) else {
            decide(false, format!("namespace {} does not exist", req.shared));
            continue;
        };
        if labels(shared).contains_key(SHARED_NAMESPACE) {
            decide(
                false,
                format!("{} is itself a divert namespace", req.shared),
            );
            continue;
        }
        let allowed = match annotation(shared, DIVERT_ALLOWED).map(parse_allowed) {
            None => {
                decide(
                    false,
                    format!(
                        "{} does not let namespaces opt in: its owner annotates it \
                         {DIVERT_ALLOWED}=* (or a label selector), or an admin labels {k} \
                         {SHARED_NAMESPACE}={}",
                        req.shared, req.shared
                    ),
                );
                continue;
            }
            Some(Err(e)) => {
                decide(
                    false,
                    format!("{} has a bad {DIVERT_ALLOWED}: {e}", req.shared),
                );
                continue;
            }
            Some(Ok(a)) => a,
        };
        if !allowed.admits(&labels(ns)) {
            decide(
                false,
                format!(
                    "{}'s {DIVERT_ALLOWED} does not match {k}'s labels",
                    req.shared
                ),
            );
            continue;
        }
        granted.insert(k.clone());
        let current = label.as_deref() == Some(req.shared.as_str())
            && annotation(ns, EXPIRES_AT) == req.expires_at.as_deref()
            && (annotation(ns, DEBUG) == Some("true")) == req.debug;
        if !current {
            ops.push(Op::Label {
                namespace: k.clone(),
                shared: req.shared.clone(),
                expires_at: req.expires_at.clone(),
                debug: req.debug,
                resource_version: rv,
            });
        }
        decide(true, format!("{k} diverts from {}", req.shared));
    }
    for (name, ns) in namespaces {
        let ours = annotation(ns, OPTED_IN_BY) == Some(BY_CONFIG_MAP);
        let labelled = labels(ns).contains_key(SHARED_NAMESPACE);
        if ours && labelled && !granted.contains(name) {
            ops.push(Op::Unlabel {
                namespace: name.clone(),
                resource_version: ns.metadata.resource_version.clone().unwrap_or_default(),
            });
        }
    }
    (ops, outcomes)
}

/// Writes `op` (a JSON merge patch at the version seen).
pub async fn write(client: &kube::Client, op: &Op) -> Result<(), kube::Error> {
    use kube::api::{Api, Patch, PatchParams};
    let (name, patch) = match op {
        Op::Label {
            namespace,
            shared,
            expires_at,
            debug,
            resource_version,
        } => (
            namespace,
            serde_json::json!({"metadata": {
                "resourceVersion": resource_version,
                "labels": {SHARED_NAMESPACE: shared},
                "annotations": {
                    OPTED_IN_BY: BY_CONFIG_MAP,
                    EXPIRES_AT: expires_at,
                    DEBUG: debug.then_some("true"),
                },
            }}),
        ),
        Op::Unlabel {
            namespace,
            resource_version,
        } => (
            namespace,
            serde_json::json!({"metadata": {
                "resourceVersion": resource_version,
                "labels": {SHARED_NAMESPACE: null},
                "annotations": {OPTED_IN_BY: null},
            }}),
        ),
    };
    Api::<Namespace>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(drop)
}

#[cfg(test)]
mod tests;
