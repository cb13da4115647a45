//! The call tree's links through real proxies (`divert trace`): while both
//! are tapped, a caller's proxy gives its outbound request a span and puts
//! it in the outbound mark, and the receiving pod's proxy reports its
//! inbound request as that span's child, over HTTP/1.1 (the fast path)
//! and h2c (the general stack); a `traceparent` is reported on both sides,
//! and the app never sees the mark. A request an inbound proxy sends on to
//! the key's copy hands its span over in the hop mark the same way.

use std::time::Duration;

use divert_proto::tap::v1::{TapEvent, TapRequest};
use divert_tests::*;
use tokio_stream::StreamExt;

use super::pod::{inbound, inbound_as};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn next(events: &mut divert_proxy::tap::EventStream) -> TapEvent {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event in time")
        .expect("the stream is open")
        .expect("an event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_hands_its_span_to_the_pod_it_reaches() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let staging = Upstream::start("web", "staging").await;
    let alice = Upstream::start("web", "alice").await;
    let pod = inbound(false, staging.addr, alice.addr).await;
    // The caller's pod calls `web` (HTTP/1.1) and `web2` (h2c), both
    // leading to the inbound side of staging's web pod.
    let (web, web2) = (unique_ip(), unique_ip());
    let mut yaml = String::from("namespaces:\n  - name: staging\nservices:\n");
    yaml += &service_yaml("web", "staging", web, 8080, &[pod.h1]);
    yaml += &service_yaml("web2", "staging", web2, 8080, &[pod.h2]);
    let caller = TestProxy::start(&yaml).await;
    let mut calls = caller
        .proxy
        .shared
        .tap
        .watch(&TapRequest::default())
        .expect("a watcher");
    let mut served = pod
        .proxy
        .proxy
        .shared
        .tap
        .watch(&TapRequest::default())
        .expect("a watcher");
    for (ip, h2) in [(web, false), (web2, true)] {
        let what = if h2 { "h2c" } else { "HTTP/1.1" };
        let url = format!("http://{ip}:8080/movies");
        let header = format!("traceparent: {TRACEPARENT}");
        let mut args = vec!["-H", header.as_str()];
        if h2 {
            args.push("--http2-prior-knowledge");
        }
        args.push(&url);
        let (code, body) = curl(&args).await;
        assert_eq!(code, 200, "{what}: {body}");
        let call = next(&mut calls).await;
        let arrival = next(&mut served).await;
        assert_eq!(call.direction, "outbound", "{what}");
        assert_eq!(arrival.direction, "inbound", "{what}");
        assert_ne!(call.span_id, 0, "{what}");
        assert_ne!(arrival.span_id, call.span_id, "{what}");
        assert_eq!(
            arrival.parent_span_id, call.span_id,
            "{what}: the caller's span"
        );
        assert_eq!(arrival.service, "web", "{what}: the pod's service");
        assert_eq!(
            call.parent_span_id, 0,
            "{what}: its app was serving nothing"
        );
        for e in [&call, &arrival] {
            assert_eq!(e.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{what}");
            assert_eq!(e.trace_parent_id, "00f067aa0ba902b7", "{what}");
        }
    }
    let seen = staging.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|s| !s.headers.contains_key("divert-outbound-hop")
                && s.headers
                    .get("traceparent")
                    .is_some_and(|v| v == TRACEPARENT)),
        "the mark is the proxies' and the traceparent the app's: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_on_to_the_keys_copy_hands_its_span_there() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let staging = Upstream::start("web", "staging").await;
    let alice = Upstream::start("web", "alice").await;
    // Alice's web pod, then staging's, whose table leads alice's key to the
    // inbound side of alice's pod.
    let alices = inbound_as("alice", false, staging.addr, alice.addr, alice.addr).await;
    let stagings = inbound_as("staging", false, staging.addr, alices.h1, staging.addr).await;
    let watch = |pod: &super::pod::Inbound| {
        pod.proxy
            .proxy
            .shared
            .tap
            .watch(&TapRequest::default())
            .expect("a watcher")
    };
    let (mut at_staging, mut at_alice) = (watch(&stagings), watch(&alices));
    let url = format!("http://{}/movies", stagings.h1);
    let (code, body) = curl(&["-H", "baggage: okteto-divert=alice", &url]).await;
    assert_eq!(code, 200, "{body}");
    let sent = next(&mut at_staging).await;
    let arrived = next(&mut at_alice).await;
    assert_eq!(
        (sent.direction.as_str(), sent.reason.as_str()),
        ("inbound", "diverted")
    );
    assert_eq!(arrived.reason, "forwarded");
    assert_ne!(sent.span_id, 0);
    assert_eq!(
        arrived.parent_span_id, sent.span_id,
        "sent on by staging's proxy"
    );
    assert_eq!(
        (sent.service.as_str(), arrived.service.as_str()),
        ("web", "web")
    );
    let seen = alice.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        !seen[0].headers.contains_key("divert-inbound-hop"),
        "{seen:?}"
    );
}

/// `divert trace` watching a pod's proxy: alice's request into staging's
/// web pod, which its proxy sends on to alice's copy, printed as a tree once
/// it has answered; then the command ends (`--limit 1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divert_trace_prints_a_tree_once_its_root_has_answered() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let staging = Upstream::start("web", "staging").await;
    let alice = Upstream::start("web", "alice").await;
    let pod = inbound(false, staging.addr, alice.addr).await;
    let child = std::process::Command::new(divert_tests::netns::divert_bin())
        .args(["trace", "--proxy", &pod.admin.to_string()])
        .args(["--key", "alice", "--limit", "1", "--settle", "200ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start divert trace");
    let tap = &pod.proxy.proxy.shared.tap;
    tokio::time::timeout(Duration::from_secs(10), async {
        while tap.watchers() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("divert trace watches within 10 s");
    let url = format!("http://{}/movies", pod.h1);
    let (code, _) = curl(&["-H", "baggage: okteto-divert=alice", &url]).await;
    assert_eq!(code, 200);
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("divert trace ends after --limit 1")
    .expect("join")
    .expect("its output");
    one_tree_of_alice_sent_on(&out, pod.h1);
}

/// `divert trace --since` after the fact: nobody watched while alice's
/// request went through staging's pod, but its proxy kept the request (it
/// had a key) and hands it to the watch that asks since a minute ago; the
/// command prints the tree and ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divert_trace_since_shows_what_went_by_unwatched() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let staging = Upstream::start("web", "staging").await;
    let alice = Upstream::start("web", "alice").await;
    let pod = inbound(false, staging.addr, alice.addr).await;
    let url = format!("http://{}/movies", pod.h1);
    let (code, _) = curl(&["-H", "baggage: okteto-divert=alice", &url]).await;
    assert_eq!(code, 200);
    let (code, _) = curl(&[&url]).await;
    assert_eq!(code, 200, "a request without a key, which is not kept");
    assert_eq!(pod.proxy.proxy.shared.tap.watchers(), 0);
    let mut trace = std::process::Command::new(divert_tests::netns::divert_bin());
    trace
        .args(["trace", "--proxy", &pod.admin.to_string()])
        .args(["--key", "alice", "--since", "1m", "--settle", "300ms"]);
    let out = tokio::time::timeout(Duration::from_secs(10), run(trace))
        .await
        .expect("divert trace --since ends by itself");
    one_tree_of_alice_sent_on(&out, pod.h1);
}

/// What `divert trace` printed for alice's one request into the pod at
/// `h1`, which its proxy sent on to her copy: one tree of one line.
fn one_tree_of_alice_sent_on(out: &std::process::Output, h1: std::net::SocketAddr) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].ends_with("key alice, 1 request, kept all the way"),
        "{text}"
    );
    let want = format!("GET {h1}/movies → web@alice (diverted) 200 ");
    assert!(lines[1].starts_with(&want), "{text}");
}
