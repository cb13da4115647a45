//! Call trees from the tap's events: what every proxy saw for one key,
//! grouped by the links the proxies reported (`proxy/src/spans.rs`), with
//! W3C `traceparent` where those leave a pair open.
//!
//! One request between two pods is seen by up to three proxies: the
//! caller's (an outbound event, the **call**), an inbound proxy that sends
//! it on to the key's copy (an inbound event whose reason is `diverted`,
//! the **forward**), and the inbound proxy of the pod whose app serves it
//! (the **arrival**). They are one [`Node`]. A node's children are the calls
//! its app made while serving it.

use std::collections::{BTreeMap, HashMap, HashSet};

use divert_proto::tap::v1::TapEvent;

/// One request of a call tree, as the proxies along its way saw it; each
/// of the three may be missing (a caller without a sidecar has no call; a
/// request served where it was sent has no forward; a service outside the
/// mesh has no arrival).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    pub call: Option<TapEvent>,
    pub forward: Option<TapEvent>,
    pub arrival: Option<TapEvent>,
    pub children: Vec<Node>,
}

impl Node {
    /// The first proxy's view of the request: what the client asked for,
    /// and what it got.
    pub fn first(&self) -> Option<&TapEvent> {
        self.call
            .as_ref()
            .or(self.forward.as_ref())
            .or(self.arrival.as_ref())
    }

    /// When the request started, for ordering.
    pub fn started(&self) -> u64 {
        self.first().map_or(0, |e| e.unix_micros)
    }

    /// Whether the request went out without the key its app was serving.
    pub fn key_dropped(&self) -> bool {
        self.call.as_ref().is_some_and(|c| c.key_dropped)
    }

    /// The nodes below it, and it, depth first.
    pub fn count(&self) -> usize {
        1 + self.children.iter().map(Node::count).sum::<usize>()
    }

    /// Its events and those below it, handed back.
    pub fn into_events(self, out: &mut Vec<TapEvent>) {
        out.extend(self.call);
        out.extend(self.forward);
        out.extend(self.arrival);
        for c in self.children {
            c.into_events(out);
        }
    }

    /// The drops in it and below it.
    pub fn drops(&self) -> usize {
        usize::from(self.key_dropped()) + self.children.iter().map(Node::drops).sum::<usize>()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Call,
    Forward,
    Arrival,
}

fn role(e: &TapEvent) -> Role {
    match (e.direction.as_str(), e.reason.as_str()) {
        ("inbound", "diverted") => Role::Forward,
        ("inbound", _) => Role::Arrival,
        _ => Role::Call,
    }
}

/// `traceparent` as the pair a request carries: the same on the caller's
/// call and on its arrival.
fn traceparent(e: &TapEvent) -> Option<(&str, &str)> {
    (!e.trace_id.is_empty()).then_some((e.trace_id.as_str(), e.trace_parent_id.as_str()))
}

/// The call trees of `events`, each request once, the trees and each
/// node's children in the order they started.
pub fn build(events: Vec<TapEvent>) -> Vec<Node> {
    let roles: Vec<Role> = events.iter().map(role).collect();
    let by_span: HashMap<u64, usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.span_id != 0)
        .map(|(i, e)| (e.span_id, i))
        .collect();
    let parent_of = |i: usize| -> Option<usize> {
        let p = events[i].parent_span_id;
        (p != 0).then(|| by_span.get(&p).copied()).flatten()
    };

    // Where each forward and arrival came from: its parent by span, or,
    // without one, the call that carried the same traceparent.
    let mut came_from: HashMap<usize, usize> = HashMap::new();
    let mut taken: HashSet<usize> = HashSet::new();
    for i in 0..events.len() {
        if roles[i] == Role::Call {
            continue;
        }
        if let Some(p) = parent_of(i).filter(|p| roles[*p] != Role::Arrival) {
            came_from.insert(i, p);
            taken.insert(p);
        }
    }
    // The calls and forwards by the traceparent they carried, in order.
    let mut carried: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (j, e) in events.iter().enumerate() {
        if let (Role::Call | Role::Forward, Some(tp)) = (roles[j], traceparent(e)) {
            carried.entry(tp).or_default().push(j);
        }
    }
    for i in 0..events.len() {
        if roles[i] == Role::Call || came_from.contains_key(&i) || events[i].parent_span_id != 0 {
            continue;
        }
        let Some(tp) = traceparent(&events[i]) else {
            continue;
        };
        // An arrival may come from a forward; a forward only from a call.
        let caller =
            carried.get(&tp).into_iter().flatten().copied().find(|j| {
                !taken.contains(j) && (roles[i] == Role::Arrival || roles[*j] == Role::Call)
            });
        if let Some(c) = caller {
            came_from.insert(i, c);
            taken.insert(c);
        }
    }
    // Each event's next on its way (the earliest, should links repeat).
    let mut next_of: HashMap<usize, usize> = HashMap::new();
    for (&next, &from) in &came_from {
        let e = next_of.entry(from).or_insert(next);
        *e = (*e).min(next);
    }

    // Each request: the event that starts it, and the rest of its way.
    let mut nodes: Vec<Node> = Vec::new();
    let mut node_of: HashMap<usize, usize> = HashMap::new();
    for start in (0..events.len()).filter(|i| !came_from.contains_key(i)) {
        let mut node = Node::default();
        let mut at = Some(start);
        while let Some(i) = at {
            node_of.insert(i, nodes.len());
            let slot = match roles[i] {
                Role::Call => &mut node.call,
                Role::Forward => &mut node.forward,
                Role::Arrival => &mut node.arrival,
            };
            *slot = Some(events[i].clone());
            at = next_of
                .get(&i)
                .copied()
                .filter(|n| !node_of.contains_key(n));
        }
        nodes.push(node);
    }

    // Which node's app made each call: the arrival its parent names, or,
    // without one, the one arrival in the same pod with the call's trace.
    let mut by_arrival: HashMap<u64, usize> = HashMap::new();
    let mut by_pod_trace: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
    for (k, n) in nodes.iter().enumerate() {
        if let Some(a) = &n.arrival {
            if a.span_id != 0 {
                by_arrival.insert(a.span_id, k);
            }
            if !a.trace_id.is_empty() {
                by_pod_trace
                    .entry((&a.proxy_namespace, &a.proxy_pod, &a.trace_id))
                    .or_default()
                    .push(k);
            }
        }
    }
    let mut under: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut attached: HashSet<usize> = HashSet::new();
    for (k, node) in nodes.iter().enumerate() {
        let Some(call) = &node.call else { continue };
        let by_parent = (call.parent_span_id != 0)
            .then(|| by_arrival.get(&call.parent_span_id).copied())
            .flatten();
        let by_trace = || match by_pod_trace
            .get(&(&call.proxy_namespace, &call.proxy_pod, &call.trace_id))?
            .as_slice()
        {
            [only] if !call.trace_id.is_empty() => Some(*only),
            _ => None,
        };
        if let Some(p) = by_parent.or_else(by_trace).filter(|p| *p != k) {
            under.entry(p).or_default().push(k);
            attached.insert(k);
        }
    }
    let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    let roots: Vec<usize> = (0..slots.len()).filter(|k| !attached.contains(k)).collect();
    let mut trees: Vec<Node> = roots
        .into_iter()
        .filter_map(|k| assemble(k, &mut slots, &under, 0))
        .collect();
    trees.sort_by_key(Node::started);
    trees
}

/// The tree below node `k`, taking each node once (a loop of bad links
/// cannot recurse forever: a node is taken before its children).
fn assemble(
    k: usize,
    slots: &mut [Option<Node>],
    under: &BTreeMap<usize, Vec<usize>>,
    depth: usize,
) -> Option<Node> {
    const MAX_DEPTH: usize = 64;
    let mut node = slots.get_mut(k)?.take()?;
    if depth < MAX_DEPTH {
        for c in under.get(&k).into_iter().flatten() {
            if let Some(child) = assemble(*c, slots, under, depth + 1) {
                node.children.push(child);
            }
        }
    }
    node.children.sort_by_key(Node::started);
    Some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(direction: &str, reason: &str, span: u64, parent: u64) -> TapEvent {
        TapEvent {
            direction: direction.into(),
            reason: reason.into(),
            span_id: span,
            parent_span_id: parent,
            unix_micros: span,
            ..TapEvent::default()
        }
    }

    fn spans(n: &Node) -> (u64, u64, u64) {
        let s = |e: &Option<TapEvent>| e.as_ref().map_or(0, |e| e.span_id);
        (s(&n.call), s(&n.forward), s(&n.arrival))
    }

    #[test]
    fn a_request_seen_by_three_proxies_is_one_node_and_its_calls_its_children() {
        let trees = build(vec![
            // The app's call, listed before the request it was made for.
            event("outbound", "shared_fallback", 30, 20),
            event("inbound", "diverted", 10, 0),
            event("inbound", "forwarded", 20, 10),
            event("inbound", "shared_fallback", 40, 30),
        ]);
        assert_eq!(trees.len(), 1);
        let root = &trees[0];
        assert_eq!(spans(root), (0, 10, 20));
        assert_eq!(root.children.len(), 1);
        assert_eq!(spans(&root.children[0]), (30, 0, 40));
        assert_eq!(root.count(), 2);
    }

    #[test]
    fn without_spans_traceparent_pairs_a_call_with_its_arrival_and_its_server() {
        let tp = |mut e: TapEvent, trace: &str, parent: &str, pod: &str| {
            e.trace_id = trace.into();
            e.trace_parent_id = parent.into();
            e.proxy_pod = pod.into();
            e
        };
        let trees = build(vec![
            tp(event("inbound", "no_key", 1, 0), "t1", "aa", "web-1"),
            tp(event("outbound", "no_key", 2, 0), "t1", "bb", "web-1"),
            tp(event("inbound", "no_key", 3, 0), "t1", "bb", "api-1"),
            // Another trace's request, alone.
            tp(event("inbound", "no_key", 4, 0), "t2", "cc", "web-1"),
        ]);
        assert_eq!(trees.len(), 2);
        assert_eq!(spans(&trees[0]), (0, 0, 1));
        assert_eq!(spans(&trees[0].children[0]), (2, 0, 3));
        assert_eq!(spans(&trees[1]), (0, 0, 4));
    }

    #[test]
    fn links_that_loop_or_lead_nowhere_still_give_every_event_once() {
        let trees = build(vec![
            event("outbound", "no_key", 1, 2),
            event("inbound", "no_key", 2, 1),
            event("outbound", "no_key", 3, 99),
            event("inbound", "no_key", 0, 0),
        ]);
        let total: usize = trees.iter().map(Node::count).sum();
        let events: usize = trees
            .iter()
            .map(|t| {
                fn count(n: &Node) -> usize {
                    usize::from(n.call.is_some())
                        + usize::from(n.forward.is_some())
                        + usize::from(n.arrival.is_some())
                        + n.children.iter().map(count).sum::<usize>()
                }
                count(t)
            })
            .sum();
        assert_eq!(events, 4, "{trees:#?}");
        assert!(total >= 2, "{trees:#?}");
    }
}
