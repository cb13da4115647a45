//! The key cookie at a pod's inbound proxy, with real clients (curl over
//! HTTP/1.1 and h2c, Python websockets) against real upstreams: `?divert=`
//! sets and clears it, the cookie keys a request from a caller without a
//! sidecar, and everything else leaves the request as it came.
//!
//! The pod is staging's `web` ([`super::pod`]); alice runs her own copy.

use std::net::SocketAddr;

use divert_tests::ws::WsServer;
use divert_tests::*;

use super::operability::{scrape, value};
use super::pod::inbound;

/// curl with `args`, over h2c (prior knowledge) when `h2`.
async fn get(h2: bool, args: &[&str]) -> Headed {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-D", "-"]);
    if h2 {
        cmd.arg("--http2-prior-knowledge");
    }
    cmd.args(args);
    let out = run(cmd).await;
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    Headed::parse(&String::from_utf8_lossy(&out.stdout))
}

fn url(addr: SocketAddr, target: &str) -> String {
    format!("http://{addr}{target}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_cookie_is_set_followed_and_cleared_over_http_1_1_and_h2c() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let staging = Upstream::start("web", "staging").await;
    let alice = Upstream::start("web", "alice").await;
    let pod = inbound(true, staging.addr, alice.addr).await;
    for (h2, addr) in [(false, pod.h1), (true, pod.h2)] {
        let what = if h2 { "h2c" } else { "HTTP/1.1" };
        // Set: a 303 to the same target without the parameter.
        let set = get(h2, &[&url(addr, "/movies?page=2&divert=alice")]).await;
        assert_eq!(set.status, 303, "{what}: {}", set.body);
        assert_eq!(set.field("location"), Some("/movies?page=2"), "{what}");
        assert_eq!(
            set.field("set-cookie"),
            Some("divert=alice; Path=/; Max-Age=28800; HttpOnly; SameSite=Lax"),
            "{what}"
        );
        assert_eq!(set.field("cache-control"), Some("no-store"), "{what}");
        let secure = get(
            h2,
            &[
                "-H",
                "X-Forwarded-Proto: https",
                &url(addr, "/?divert=alice"),
            ],
        )
        .await;
        assert!(
            secure
                .field("set-cookie")
                .is_some_and(|c| c.ends_with("; Secure")),
            "{what}: over TLS the cookie is Secure"
        );
        // Follow: curl keeps the cookie and follows the 303 to alice's copy
        // (curl 7.88's h2c cannot reuse a prior-knowledge connection, so
        // over h2c the second request is a curl of its own).
        let dir = TempDir::new("cookies");
        let jar = dir.path().join("jar");
        let jar = jar.to_str().expect("a path");
        let start = url(addr, "/movies?divert=alice");
        let followed = if h2 {
            let set = get(h2, &["-c", jar, &start]).await;
            let next = url(addr, set.field("location").unwrap_or("?"));
            get(h2, &["-b", jar, &next]).await
        } else {
            get(h2, &["-L", "-c", jar, "-b", jar, &start]).await
        };
        assert_eq!(followed.status, 200, "{what}");
        assert_eq!(followed.field("x-served-by"), Some("web@alice"), "{what}");
        assert_eq!(followed.field("cache-control"), Some("no-store"), "{what}");
        let seen = alice.seen();
        let last = seen.last().expect("alice's copy saw it");
        assert_eq!(last.path, "/movies", "{what}");
        assert_eq!(last.baggage, ["okteto-divert=alice"], "{what}");
        assert!(
            !last.headers.contains_key("divert-outbound-hop"),
            "{what}: the mark is not the app's"
        );
        // Clear.
        let cleared = get(h2, &["-c", jar, "-b", jar, &url(addr, "/?divert=")]).await;
        assert_eq!(cleared.status, 303, "{what}");
        assert_eq!(
            cleared.field("set-cookie"),
            Some("divert=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"),
            "{what}"
        );
        let after = get(h2, &["-b", jar, &url(addr, "/movies")]).await;
        assert_eq!(after.field("x-served-by"), Some("web@staging"), "{what}");
        assert_eq!(after.field("cache-control"), None, "{what}");
    }
    let m = scrape(pod.admin).await;
    let count = |result: &str| value(&m, "divert_proxy_key_cookie_total", &[("result", result)]);
    assert_eq!(count("set"), 6.0);
    assert_eq!(count("cleared"), 2.0);
    assert_eq!(count("applied"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_but_a_good_cookie_from_outside_leaves_the_request_as_it_came() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let staging = Upstream::start("web", "staging").await;
    let alice = Upstream::start("web", "alice").await;
    let pod = inbound(true, staging.addr, alice.addr).await;
    let cases: &[(&str, &[&str], &str)] = &[
        ("bob diverts from prod", &["-H", "Cookie: divert=bob"], "/a"),
        ("malformed", &["-H", "Cookie: divert=ALICE"], "/a"),
        (
            "too long",
            &[
                "-H",
                "Cookie: divert=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ],
            "/a",
        ),
        (
            "through a sidecar",
            &["-H", "Cookie: divert=alice", "-H", "divert-outbound-hop: 1"],
            "/a",
        ),
        (
            "a parameter on a POST",
            &["-X", "POST", "-d", "x"],
            "/a?divert=alice",
        ),
        ("a parameter naming bob", &[], "/a?divert=bob"),
    ];
    for (h2, addr) in [(false, pod.h1), (true, pod.h2)] {
        for (what, args, target) in cases {
            let mut all: Vec<&str> = args.to_vec();
            let u = url(addr, target);
            all.push(&u);
            let got = get(h2, &all).await;
            assert_eq!(got.status, 200, "{what} (h2: {h2}): {}", got.body);
            assert_eq!(got.field("x-served-by"), Some("web@staging"), "{what}");
            assert_eq!(got.field("set-cookie"), None, "{what}");
            assert_eq!(got.field("cache-control"), None, "{what}");
        }
    }
    assert_eq!(alice.count(), 0, "nothing reached alice's copy");
    assert!(
        staging
            .seen()
            .iter()
            .all(|s| s.baggage.is_empty() && !s.headers.contains_key("divert-outbound-hop")),
        "requests went on as they came, without the mark"
    );
    let m = scrape(pod.admin).await;
    let count = |result: &str| value(&m, "divert_proxy_key_cookie_total", &[("result", result)]);
    assert_eq!(count("ignored_not_a_divert_namespace"), 4.0);
    assert_eq!(count("ignored_malformed"), 2.0);
    assert_eq!(count("ignored_too_long"), 2.0);
    assert_eq!(count("ignored_method"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_shared_namespace_does_not_allow_it_nothing_happens() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let staging = Upstream::start("web", "staging").await;
    let alice = Upstream::start("web", "alice").await;
    let pod = inbound(false, staging.addr, alice.addr).await;
    for (h2, addr) in [(false, pod.h1), (true, pod.h2)] {
        let set = get(h2, &[&url(addr, "/movies?divert=alice")]).await;
        assert_eq!(set.status, 200);
        assert_eq!(set.field("x-served-by"), Some("web@staging"));
        assert_eq!(set.field("set-cookie"), None);
        let keyed = get(h2, &["-H", "Cookie: divert=alice", &url(addr, "/movies")]).await;
        assert_eq!(keyed.field("x-served-by"), Some("web@staging"));
    }
    assert_eq!(alice.count(), 0);
    let m = scrape(pod.admin).await;
    assert!(
        !m.keys()
            .any(|(name, _)| name == "divert_proxy_key_cookie_total"),
        "nothing was even counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_with_the_cookie_reaches_alices_copy() {
    if !have_python_modules(&["websockets"]) {
        return;
    }
    let staging = WsServer::start("chat@staging");
    let alice = WsServer::start("chat@alice");
    let pod = inbound(true, staging.addr, alice.addr).await;
    let ws = format!("ws://{}/chat", pod.h1);
    let out = python(
        "ws.py",
        &[
            "client".into(),
            ws.clone(),
            "cookie=alice".into(),
            "2".into(),
        ],
    )
    .await;
    let replies: Vec<String> = serde_json::from_str(&out).expect("JSON");
    assert_eq!(replies, ["chat@alice:m0", "chat@alice:m1"]);
    let out = python("ws.py", &["client".into(), ws, "-".into(), "1".into()]).await;
    let replies: Vec<String> = serde_json::from_str(&out).expect("JSON");
    assert_eq!(replies, ["chat@staging:m0"]);
}
