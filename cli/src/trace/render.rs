//! A call tree for people (a tree of lines, coloured only on a terminal)
//! or for tools (JSON).
//!
//! Each node is one line: the request (method, host, path), where the rule
//! sent it (`service@namespace`: the key's copy or the shared one) and
//! why, the status and the time the first proxy measured, and, where the
//! app that made the call had a key and the call did not, the drop.

use serde_json::{Value, json};

use super::tree::Node;
use crate::tap::format_latency;

/// ANSI colours, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub colour: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// Every tree, one line per request, with the tree drawn in front.
pub fn text(trees: &[Node], key: &str, style: Style) -> String {
    let mut out = String::new();
    for tree in trees {
        let drops = tree.drops();
        let lost = match drops {
            0 => "kept all the way".to_owned(),
            1 => style.paint("31", "lost once"),
            n => style.paint("31", &format!("lost {n} times")),
        };
        let requests = match tree.count() {
            1 => "1 request".to_owned(),
            n => format!("{n} requests"),
        };
        out.push_str(&format!(
            "{}  key {key}, {requests}, {lost}\n",
            tree.first().map_or_else(
                || "-".to_owned(),
                |e| crate::utc::rfc3339_millis(e.unix_micros)
            ),
        ));
        line(&mut out, tree, "", "", None, style);
    }
    out
}

/// One node's line (under the node of the app that made the call,
/// `caller`), then its children's.
fn line(
    out: &mut String,
    node: &Node,
    lead: &str,
    branch: &str,
    caller: Option<&str>,
    style: Style,
) {
    out.push_str(lead);
    out.push_str(branch);
    out.push_str(&describe(node, caller, style));
    out.push('\n');
    let (service, _) = served_by(node);
    let lead = format!(
        "{lead}{}",
        match branch {
            "" => "",
            "├─ " => "│  ",
            _ => "   ",
        }
    );
    for (i, child) in node.children.iter().enumerate() {
        let branch = if i + 1 == node.children.len() {
            "└─ "
        } else {
            "├─ "
        };
        line(out, child, &lead, branch, Some(&service), style);
    }
}

/// The line of one request.
fn describe(node: &Node, caller: Option<&str>, style: Style) -> String {
    let Some(first) = node.first() else {
        return "-".to_owned();
    };
    let mut s = format!(
        "{} {}{}",
        or_dash(&first.method),
        first.authority,
        first.path
    );
    let (service, copy) = served_by(node);
    let copy = if copy.is_empty() {
        "-".to_owned()
    } else {
        copy
    };
    let whose = format!("{service}@{copy}");
    let diverted = node
        .call
        .as_ref()
        .or(node.forward.as_ref())
        .is_some_and(|e| e.decision == "diverted");
    s.push_str(" → ");
    s.push_str(&if diverted {
        style.paint("32", &whose)
    } else {
        whose
    });
    s.push_str(&format!(" ({})", reasons(node)));
    if first.status != 0 {
        s.push_str(&format!(" {}", first.status));
    }
    s.push(' ');
    s.push_str(&format_latency(first.latency_micros));
    if !first.error.is_empty() {
        s.push_str(&format!(" error={:?}", first.error));
    }
    if node.key_dropped() {
        let lost = format!(
            "  ✘ key lost: {} called {service} without it",
            caller.unwrap_or("the app")
        );
        s.push_str(&style.paint("31", &lost));
    }
    s
}

/// The service, and the namespace whose copy served it (its pod's, where
/// an arrival was seen; else where the rule sent it).
fn served_by(node: &Node) -> (String, String) {
    let sent = node.forward.as_ref().or(node.call.as_ref());
    let service = sent.map(|e| e.service.clone()).filter(|s| !s.is_empty());
    let copy = node
        .arrival
        .as_ref()
        .map(|a| a.proxy_namespace.clone())
        .or_else(|| sent.map(|e| e.target_namespace.clone()))
        .unwrap_or_default();
    let arrival = node.arrival.as_ref();
    let service = service
        .or_else(|| arrival.map(|a| a.service.clone()).filter(|s| !s.is_empty()))
        .or_else(|| arrival.map(|a| a.proxy_pod.clone()))
        .unwrap_or_else(|| "-".to_owned());
    (service, copy)
}

/// Why, hop by hop: the rule at the caller, at a pod that sent it on, and
/// at the pod that served it (each said once where they agree).
fn reasons(node: &Node) -> String {
    let mut said: Vec<&str> = [&node.call, &node.forward, &node.arrival]
        .into_iter()
        .flatten()
        .map(|e| e.reason.as_str())
        .filter(|r| !r.is_empty())
        .collect();
    said.dedup();
    said.join(", then ")
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Every tree as JSON: `[{request, service, copy, reasons, status,
/// latencyMicros, keyDropped, key, at, children}]`.
pub fn json(trees: &[Node]) -> Value {
    Value::Array(trees.iter().map(node_json).collect())
}

fn node_json(node: &Node) -> Value {
    let first = node.first();
    let (service, copy) = served_by(node);
    let reasons: Vec<String> = [&node.call, &node.forward, &node.arrival]
        .into_iter()
        .flatten()
        .map(|e| e.reason.clone())
        .collect();
    json!({
        "request": first.map(|e| json!({
            "method": e.method,
            "authority": e.authority,
            "path": e.path,
        })),
        "key": first.map(|e| e.key.clone()),
        "service": service,
        "copy": copy,
        "reasons": reasons,
        "status": first.map(|e| e.status),
        "latencyMicros": first.map(|e| e.latency_micros),
        "keyDropped": node.key_dropped(),
        "unixMicros": first.map(|e| e.unix_micros),
        "children": node.children.iter().map(node_json).collect::<Vec<_>>(),
    })
}
