//! Injection into manifests, for `divert inject`: YAML (or JSON) documents of
//! any kind, of which the pod templates of workloads are injected.
//!
//! Injected kinds and where their pod template is: `Pod` (the object),
//! `Deployment`, `StatefulSet`, `DaemonSet`, `ReplicaSet` (`apps`), `Job`
//! (`batch`) and `ReplicationController` (`v1`) at `spec.template`, `CronJob`
//! (`batch`) at `spec.jobTemplate.spec.template`; the items of a `List` are
//! handled one by one. Every other object is left as it is.
//!
//! A template is injected by [`crate::inject`], and the change is applied as
//! the same JSON patch the webhook would send, to the document as read: keys
//! keep their order and fields `k8s-openapi` does not know are kept. What is
//! lost is what YAML parsing loses: comments, anchors, and the quoting style of
//! strings.

use std::collections::BTreeMap;

use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use divert_core::names;

use crate::{InjectError, NamespaceInfo, Outcome, Settings, SkipReason};

/// How to choose each object's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// The namespace of every object (`--namespace`); else each object's
    /// `metadata.namespace`, else `default`.
    pub namespace: Option<String>,
    /// Treat every object's namespace as a divert namespace of this one
    /// (`--shared-namespace`).
    pub shared_namespace: Option<String>,
    /// Divert namespaces and their shared namespace, from Namespace objects
    /// labelled `divert.dev/shared-namespace` (see [`divert_namespaces`]);
    /// used when `shared_namespace` is not given.
    pub divert_namespaces: BTreeMap<String, String>,
}

impl Options {
    /// The namespace an object lives in, as injection sees it.
    pub fn namespace_of(&self, object: &Value) -> NamespaceInfo {
        let name = self
            .namespace
            .clone()
            .or_else(|| str_at(object, &["metadata", "namespace"]).map(str::to_owned))
            .unwrap_or_else(|| "default".to_owned());
        let shared_namespace = self
            .shared_namespace
            .clone()
            .or_else(|| self.divert_namespaces.get(&name).cloned());
        NamespaceInfo {
            name,
            shared_namespace,
            debug: false,
            // A pod template's own switches are still read.
            meshes: crate::meshes::MeshSwitches::default(),
        }
    }
}

/// What happened to one object.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// `Kind namespace/name`, or `Kind name` for an object with no namespace.
    pub object: String,
    pub change: Change,
}

/// What happened to one workload's pod template.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Injected,
    AlreadyInjected,
    Skipped(SkipReason),
    /// A workload kind without a pod template (a partial manifest, such as a
    /// patch for kustomize): left as it is.
    NoTemplate,
}

/// Why a document could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The pod template cannot be injected: a bad annotation, a port
    /// conflict, bad settings (see [`InjectError`]).
    #[error("{object}: {source}")]
    Inject { object: String, source: InjectError },
    /// The pod template is not one Kubernetes would accept.
    #[error("{object}: the pod template is not valid: {reason}")]
    Template { object: String, reason: String },
    /// A document that YAML cannot write back (a collection as a mapping key).
    #[error("cannot write the document as YAML: {0}")]
    Render(#[from] crate::yaml::YamlError),
}

impl ManifestError {
    /// Whether the cause is a setting or an annotation (the user's to fix,
    /// exit status 64) rather than unreadable input.
    pub fn is_usage(&self) -> bool {
        match self {
            ManifestError::Inject { source, .. } => !matches!(source, InjectError::Json(_)),
            ManifestError::Template { .. } | ManifestError::Render(_) => false,
        }
    }
}

/// A YAML stream's documents (`---` separated; JSON is YAML too), without the
/// empty ones. An error comes with the 1-based index of the document at fault.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, (usize, serde_yaml_ng::Error)> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let doc = Value::deserialize(de).map_err(|e| (i + 1, e))?;
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// Documents as one YAML stream, `---` between them, written so that YAML
/// 1.1 readers such as `kubectl` read the same values (see the `yaml` module:
/// strings like `yes` or `0755` are quoted).
pub fn render_documents(docs: &[Value]) -> Result<String, ManifestError> {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&crate::yaml::to_string(doc)?);
    }
    Ok(out)
}

/// The divert namespaces declared by the Namespace objects among `docs`
/// (and inside `List`s): name → shared namespace.
pub fn divert_namespaces(docs: &[Value]) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for doc in docs {
        collect_namespaces(doc, &mut found);
    }
    found
}

fn collect_namespaces(doc: &Value, found: &mut BTreeMap<String, String>) {
    match kind(doc) {
        Some(("", "List")) => {
            for item in items(doc) {
                collect_namespaces(item, found);
            }
        }
        Some(("", "Namespace")) => {
            let name = str_at(doc, &["metadata", "name"]);
            let shared = doc
                .get("metadata")
                .and_then(|m| m.get("labels"))
                .and_then(|l| l.get(names::label::SHARED_NAMESPACE))
                .and_then(Value::as_str);
            if let (Some(name), Some(shared)) = (name, shared) {
                found.insert(name.to_owned(), shared.to_owned());
            }
        }
        _ => {}
    }
}

/// Injects the pod templates in `doc` in place, and says what happened to
/// each workload (nothing for other objects).
pub fn inject_document(
    doc: &mut Value,
    options: &Options,
    settings: &Settings,
) -> Result<Vec<Report>, ManifestError> {
    let mut reports = Vec::new();
    inject_object(doc, options, settings, &mut reports)?;
    Ok(reports)
}

fn inject_object(
    doc: &mut Value,
    options: &Options,
    settings: &Settings,
    reports: &mut Vec<Report>,
) -> Result<(), ManifestError> {
    let Some((group, kind)) = kind(doc) else {
        return Ok(());
    };
    let template: &[&str] = match (group, kind) {
        ("", "List") => {
            if let Some(Value::Sequence(items)) = doc.get_mut("items") {
                for item in items {
                    inject_object(item, options, settings, reports)?;
                }
            }
            return Ok(());
        }
        ("", "Pod") => &[],
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job")
        | ("", "ReplicationController") => &["spec", "template"],
        ("batch", "CronJob") => &["spec", "jobTemplate", "spec", "template"],
        _ => return Ok(()),
    };
    let object = describe(doc);
    let ns = options.namespace_of(doc);
    let change = match value_at_mut(doc, template) {
        Some(template @ Value::Mapping(_)) => {
            inject_template(template, &ns, settings).map_err(|e| match e {
                TemplateError::Inject(source) => ManifestError::Inject {
                    object: object.clone(),
                    source,
                },
                TemplateError::Invalid(e) => ManifestError::Template {
                    object: object.clone(),
                    reason: e.to_string(),
                },
                TemplateError::Patch(e) => ManifestError::Template {
                    object: object.clone(),
                    reason: e.to_string(),
                },
            })?
        }
        _ => Change::NoTemplate,
    };
    reports.push(Report { object, change });
    Ok(())
}

enum TemplateError {
    Inject(InjectError),
    /// Not a pod template Kubernetes would read.
    Invalid(serde_json::Error),
    /// The injection's patch did not fit the document.
    Patch(PatchError),
}

/// Why a patch operation could not be applied to a YAML document.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("unexpected patch operation {0}")]
    Unexpected(String),
    #[error("{path}: {source}")]
    Value {
        path: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{0}: no such place")]
    NoSuchPlace(String),
}

/// Injects one pod template (or a Pod, whose metadata and spec are where a
/// template has them).
fn inject_template(
    template: &mut Value,
    ns: &NamespaceInfo,
    settings: &Settings,
) -> Result<Change, TemplateError> {
    let json = serde_json::to_value(&*template).map_err(TemplateError::Invalid)?;
    let typed: PodTemplateSpec = serde_json::from_value(json).map_err(TemplateError::Invalid)?;
    let pod = Pod {
        metadata: typed.metadata.unwrap_or_default(),
        spec: typed.spec,
        status: None,
    };
    let injected = match crate::inject(&pod, ns, settings).map_err(TemplateError::Inject)? {
        Outcome::Injected(injected) => injected,
        Outcome::AlreadyInjected => return Ok(Change::AlreadyInjected),
        // The webhook gives such a pod the DNS search at admission; a
        // manifest is left as its mesh expects it.
        Outcome::Skipped(reason) | Outcome::LeftToMesh { mesh: reason, .. } => {
            return Ok(Change::Skipped(reason));
        }
    };
    let json = |p: &Pod| serde_json::to_value(p).map_err(|e| TemplateError::Inject(e.into()));
    let patch = crate::diff(&json(&pod)?, &json(&injected)?);
    // The typed pod always has metadata; the template may not.
    if let Value::Mapping(map) = template
        && !map.contains_key("metadata")
    {
        map.insert("metadata".into(), Value::Mapping(Mapping::new()));
    }
    for op in &patch.0 {
        apply(template, op).map_err(TemplateError::Patch)?;
    }
    Ok(Change::Injected)
}

/// Applies one operation of the kinds [`crate::diff`] makes (add, remove,
/// replace) to a YAML value, keeping the order of mapping keys.
fn apply(doc: &mut Value, op: &PatchOperation) -> Result<(), PatchError> {
    let (path, value) = match op {
        PatchOperation::Add(op) => (&op.path, Some(&op.value)),
        PatchOperation::Replace(op) => (&op.path, Some(&op.value)),
        PatchOperation::Remove(op) => (&op.path, None),
        other => return Err(PatchError::Unexpected(other.to_string())),
    };
    let value = value
        .map(serde_yaml_ng::to_value)
        .transpose()
        .map_err(|source| PatchError::Value {
            path: path.to_string(),
            source,
        })?;
    let tokens: Vec<String> = path.tokens().map(|t| t.decoded().into_owned()).collect();
    let Some((last, parents)) = tokens.split_last() else {
        if let Some(value) = value {
            *doc = value;
        }
        return Ok(());
    };
    let mut target = doc;
    for token in parents {
        target = child(target, token).ok_or_else(|| PatchError::NoSuchPlace(path.to_string()))?;
    }
    let missing = || PatchError::NoSuchPlace(path.to_string());
    match (target, value, op) {
        (Value::Mapping(map), Some(value), _) => {
            map.insert(Value::String(last.clone()), value);
        }
        (Value::Mapping(map), None, _) => {
            map.shift_remove(last.as_str()).ok_or_else(missing)?;
        }
        (Value::Sequence(seq), Some(value), PatchOperation::Add(_)) => {
            let i = if last == "-" {
                seq.len()
            } else {
                index(last)
                    .filter(|i| *i <= seq.len())
                    .ok_or_else(missing)?
            };
            seq.insert(i, value);
        }
        (Value::Sequence(seq), Some(value), _) => {
            let slot = index(last)
                .and_then(|i| seq.get_mut(i))
                .ok_or_else(missing)?;
            *slot = value;
        }
        (Value::Sequence(seq), None, _) => {
            let i = index(last).filter(|i| *i < seq.len()).ok_or_else(missing)?;
            seq.remove(i);
        }
        _ => return Err(missing()),
    }
    Ok(())
}

fn child<'a>(value: &'a mut Value, token: &str) -> Option<&'a mut Value> {
    match value {
        Value::Mapping(map) => map.get_mut(token),
        Value::Sequence(seq) => index(token).and_then(|i| seq.get_mut(i)),
        _ => None,
    }
}

fn index(token: &str) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

fn value_at_mut<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, key| v.get_mut(*key))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(*key))
        .and_then(Value::as_str)
}

fn items(doc: &Value) -> impl Iterator<Item = &Value> {
    doc.get("items")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
}

/// The API group (`""` for the core group) and kind of an object.
fn kind(doc: &Value) -> Option<(&str, &str)> {
    let api_version = doc.get("apiVersion").and_then(Value::as_str)?;
    let kind = doc.get("kind").and_then(Value::as_str)?;
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    Some((group, kind))
}

/// `Deployment staging/frontend`.
pub fn describe(doc: &Value) -> String {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("object");
    let name = str_at(doc, &["metadata", "name"])
        .or_else(|| str_at(doc, &["metadata", "generateName"]))
        .unwrap_or("(no name)");
    match str_at(doc, &["metadata", "namespace"]) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

#[cfg(test)]
mod tests;
