//! `divert trace`: the call tree of one key, from what every proxy saw.
//!
//! The tap's events for a key ([`crate::tap`], through the controller's
//! relay) are grouped into trees ([`tree`]) by the links the proxies
//! report, and shown as a tree of lines or as JSON ([`render`]): for each
//! request, which copy served it and why, its status and latency, and
//! where the key was lost (a call an app made without the key of the
//! request it was serving).

pub mod render;
pub mod tree;

use divert_proto::tap::v1::TapEvent;
use serde_json::Value;

/// An event from one line of `divert tap --output json` (the same names),
/// as the traces of tests and of `--from` files are kept. Missing fields
/// are empty.
pub fn event_from_json(v: &Value) -> TapEvent {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let n = |k: &str| v[k].as_u64().unwrap_or_default();
    TapEvent {
        unix_micros: n("unixMicros"),
        proxy_pod: s("proxyPod"),
        proxy_namespace: s("proxyNamespace"),
        protocol: s("protocol"),
        method: s("method"),
        authority: s("authority"),
        path: s("path"),
        key: s("key"),
        original_dst: s("originalDst"),
        target: s("target"),
        target_namespace: s("targetNamespace"),
        service: s("service"),
        endpoint: s("endpoint"),
        decision: s("decision"),
        reason: s("reason"),
        status: u32::try_from(n("status")).unwrap_or_default(),
        latency_micros: n("latencyMicros"),
        error: s("error"),
        dropped_before: n("droppedBefore"),
        baggage_rejected: s("baggageRejected"),
        direction: s("direction"),
        key_dropped: v["keyDropped"].as_bool().unwrap_or_default(),
        dropped_key: s("droppedKey"),
        dropped_during: s("droppedDuring"),
        span_id: n("spanId"),
        parent_span_id: n("parentSpanId"),
        trace_id: s("traceId"),
        trace_parent_id: s("traceParentId"),
    }
}

#[cfg(test)]
mod tests {
    use super::render::{Style, json, text};
    use super::*;

    /// The events of `cli/testdata/trace/NAME.jsonl`, one per line.
    fn events(name: &str) -> Vec<TapEvent> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/trace")
            .join(format!("{name}.jsonl"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| event_from_json(&serde_json::from_str(l).expect("JSON")))
            .collect()
    }

    /// Compares with `cli/testdata/trace/NAME.txt`; `DIVERT_BLESS=1`
    /// writes it instead.
    fn golden(name: &str, got: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/trace")
            .join(format!("{name}.txt"));
        if std::env::var("DIVERT_BLESS").is_ok_and(|v| v == "1") {
            std::fs::write(&path, got).expect("write the golden file");
            return;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (DIVERT_BLESS=1 writes it)", path.display()));
        assert_eq!(
            got, want,
            "{name}: the rendering changed (DIVERT_BLESS=1 writes it)"
        );
    }

    #[test]
    fn the_movies_chain_shows_where_api_lost_alices_key() {
        let trees = tree::build(events("movies-drop"));
        golden(
            "movies-drop",
            &text(&trees, "alice", Style { colour: false }),
        );
        let coloured = text(&trees, "alice", Style { colour: true });
        assert!(
            coloured.contains("\x1b[31m"),
            "the drop is red on a terminal"
        );
        let v = json(&trees);
        let api = &v[0]["children"][0];
        assert_eq!(api["service"], "api");
        assert_eq!(api["copy"], "staging");
        assert_eq!(api["keyDropped"], false);
        let catalog = &api["children"][0];
        assert_eq!(catalog["service"], "catalog");
        assert_eq!(catalog["keyDropped"], true);
        assert_eq!(catalog["reasons"], serde_json::json!(["no_key", "no_key"]));
    }

    #[test]
    fn calls_hang_under_the_request_they_were_made_for_in_the_order_they_started() {
        let trees = tree::build(events("movies-fanout"));
        golden(
            "movies-fanout",
            &text(&trees, "bob", Style { colour: false }),
        );
        assert_eq!(trees.len(), 1);
        let v = json(&trees);
        let children: Vec<&str> = v[0]["children"]
            .as_array()
            .expect("children")
            .iter()
            .map(|c| c["service"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(children, ["api", "rent"], "api's call started first");
        assert_eq!(v[0]["children"][1]["copy"], "bob");
    }

    #[test]
    fn an_event_reads_back_from_taps_json() {
        let e = TapEvent {
            unix_micros: 7,
            method: "GET".into(),
            key_dropped: true,
            span_id: 3,
            parent_span_id: 2,
            trace_id: "t".into(),
            ..TapEvent::default()
        };
        let line = crate::tap::format_json(&e).expect("JSON");
        let back = event_from_json(&serde_json::from_str(&line).expect("JSON"));
        assert_eq!(back, e);
    }
}
