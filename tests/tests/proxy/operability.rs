//! Operability of a real `divert-proxy proxy` process: its admin endpoints
//! (`/live`, `/ready`, `/metrics`, `/routes`, `/log-level`), the values of its
//! metrics after known traffic, decision logs switched on at run time, and
//! `divert tap` watching its decisions.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use divert_tests::netns::{Process, divert_bin, sidecar_bin};
use divert_tests::*;

const PORT: u16 = 8080;

struct World {
    staging: Upstream,
    alice: Upstream,
    web: SocketAddr,
    down: SocketAddr,
    admin: SocketAddr,
    proxy: Process,
    _dir: TempDir,
}

/// web in staging and in alice (a divert namespace of staging); `down` in
/// staging has an endpoint nobody listens on. The proxy runs in bind mode.
async fn world(log_level: &str) -> World {
    let staging = Upstream::start("web", "staging").await;
    let alice = Upstream::start("web", "alice").await;
    // A port that refuses: bound, then closed.
    let refused = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        l.local_addr().expect("addr")
    };
    let (web_ip, alice_ip, down_ip) = (unique_ip(), unique_ip(), unique_ip());
    let mut yaml = String::from(
        "namespaces:\n  - name: staging\n  - { name: alice, sharedNamespace: staging }\nservices:\n",
    );
    yaml += &service_yaml("web", "staging", web_ip, PORT, &[staging.addr]);
    yaml += &service_yaml("web", "alice", alice_ip, PORT, &[alice.addr]);
    yaml += &service_yaml("down", "staging", down_ip, PORT, &[refused]);
    let dir = TempDir::new("operability");
    let registry = dir.path().join("registry.yaml");
    std::fs::write(&registry, yaml).expect("write registry");
    let mut cmd = Command::new(sidecar_bin());
    cmd.args(["--log-level", log_level, "proxy", "--registry"])
        .arg(&registry)
        .args(["--admin-addr", "127.0.0.1:0"]);
    let proxy = tokio::task::block_in_place(|| Process::spawn(cmd, "divert proxy ready"));
    let admin = admin_addr(&proxy.log());
    World {
        staging,
        alice,
        web: SocketAddr::new(web_ip, PORT),
        down: SocketAddr::new(down_ip, PORT),
        admin,
        proxy,
        _dir: dir,
    }
}

/// The admin address from the proxy's ready line (`admin=IP:PORT`).
fn admin_addr(log: &str) -> SocketAddr {
    log.split_whitespace()
        .find_map(|w| w.strip_prefix("admin="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no admin address in the ready line:\n{log}"))
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Samples by (name, sorted labels).
pub(super) type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// Prometheus text → (name, sorted labels) → value. Also checks every sample
/// belongs to a family declared with `# TYPE`.
fn parse_metrics(text: &str) -> Samples {
    let mut typed = Vec::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(rest.split(' ').next().unwrap_or("").to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        assert!(
            typed.iter().any(|t| name.starts_with(t.as_str())),
            "sample {name} has no # TYPE line before it:\n{text}"
        );
        let mut labels: Vec<(String, String)> = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("label=value");
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        labels.sort();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert((name.to_owned(), labels), value);
    }
    out
}

pub(super) fn value(m: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    want.sort();
    // Absent is not zero: a series the proxy should write must be there.
    m.get(&(name.to_owned(), want.clone()))
        .copied()
        .unwrap_or_else(|| panic!("no sample {name}{want:?} in the scrape"))
}

pub(super) async fn scrape(admin: SocketAddr) -> Samples {
    let (code, body) = curl(&[&url(admin, "/metrics")]).await;
    assert_eq!(code, 200, "{body}");
    parse_metrics(&body)
}

async fn json(admin: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = curl(&[&url(admin, path)]).await;
    let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    (code, v)
}

/// Polls `f` until it is true, for at most 10 s.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let w = world("info").await;
    let web = url(w.web, "/");
    let alice = "baggage: okteto-divert=alice";
    for _ in 0..3 {
        assert_eq!(curl(&["-H", alice, &web]).await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(curl(&[&web]).await.0, 200);
    }
    // A key that never opted in, and baggage that does not parse.
    assert_eq!(
        curl(&["-H", "baggage: okteto-divert=lonely", &web]).await.0,
        200
    );
    assert_eq!(curl(&["-H", "baggage: =nokey", &web]).await.0, 200);
    assert_eq!(
        curl(&["--http2-prior-knowledge", "-H", alice, &web])
            .await
            .0,
        200
    );
    let (code, body) = curl(&[&url(w.down, "/")]).await;
    assert_eq!(code, 502, "{body}");
    // Prove the traffic went where the metrics will say.
    assert_eq!(w.alice.count(), 4);
    assert_eq!(w.staging.count(), 4);

    let requests = |m: &Samples, proto: &str, decision: &str, reason: &str, ns: &str| {
        value(
            m,
            "divert_proxy_requests_total",
            &[
                ("protocol", proto),
                ("decision", decision),
                ("reason", reason),
                ("target_namespace", ns),
            ],
        )
    };
    let responses = |m: &Samples, proto: &str, decision: &str, ns: &str, class: &str| {
        value(
            m,
            "divert_proxy_responses_total",
            &[
                ("protocol", proto),
                ("decision", decision),
                ("target_namespace", ns),
                ("status_class", class),
            ],
        )
    };
    // Connections close a moment after curl exits; the gauge settles at 0.
    eventually("every client connection to close", || async {
        value(
            &scrape(w.admin).await,
            "divert_proxy_tcp_open_connections",
            &[("protocol", "http")],
        ) == 0.0
    })
    .await;
    let m = scrape(w.admin).await;
    assert_eq!(requests(&m, "http1", "diverted", "diverted", "alice"), 3.0);
    assert_eq!(requests(&m, "http2", "diverted", "diverted", "alice"), 1.0);
    // Two without baggage, one with baggage that did not parse, and `down`.
    assert_eq!(requests(&m, "http1", "shared", "no_key", "staging"), 4.0);
    assert_eq!(
        requests(&m, "http1", "shared", "key_not_opted_in", "staging"),
        1.0
    );
    assert_eq!(responses(&m, "http1", "diverted", "alice", "2xx"), 3.0);
    assert_eq!(responses(&m, "http2", "diverted", "alice", "2xx"), 1.0);
    assert_eq!(responses(&m, "http1", "shared", "staging", "2xx"), 4.0);
    assert_eq!(responses(&m, "http1", "shared", "staging", "5xx"), 1.0);
    let rejected = |reason| {
        value(
            &m,
            "divert_proxy_baggage_rejected_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(rejected("not_opted_in"), 1.0);
    assert_eq!(rejected("malformed"), 1.0);
    assert_eq!(rejected("too_long"), 0.0);
    assert_eq!(
        value(
            &m,
            "divert_proxy_upstream_connect_errors_total",
            &[("reason", "refused")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "divert_proxy_response_latency_seconds_count",
            &[("protocol", "http1"), ("decision", "diverted")]
        ),
        3.0
    );
    // Every request was faster than 10 s: all counted by the last finite
    // bucket (buckets are cumulative).
    assert_eq!(
        value(
            &m,
            "divert_proxy_response_latency_seconds_bucket",
            &[
                ("protocol", "http1"),
                ("decision", "diverted"),
                ("le", "10")
            ]
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            "divert_proxy_tcp_connections_total",
            &[("protocol", "http")]
        ),
        9.0
    );
    assert!(
        value(
            &m,
            "divert_proxy_tcp_read_bytes_total",
            &[("protocol", "http")]
        ) > 0.0
    );
    assert!(
        value(
            &m,
            "divert_proxy_tcp_written_bytes_total",
            &[("protocol", "http")]
        ) > 0.0
    );
    assert_eq!(value(&m, "divert_proxy_table_version", &[]), 1.0);
    assert_eq!(value(&m, "divert_proxy_table_services", &[]), 3.0);
    let age = value(&m, "divert_proxy_table_age_seconds", &[]);
    assert!((0.0..60.0).contains(&age), "table age {age}");
    assert_eq!(value(&m, "divert_proxy_draining", &[]), 0.0);
    // Bounded cardinality: no label carries a key, a path or a peer.
    for (name, labels) in m.keys() {
        for (k, _) in labels {
            assert!(
                [
                    "protocol",
                    "decision",
                    "reason",
                    "target_namespace",
                    "status_class",
                    "timeout",
                    "le"
                ]
                .contains(&k.as_str()),
                "{name} has an unexpected label {k}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_the_routes_view() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let w = world("info").await;
    let (code, body) = curl(&[&url(w.admin, "/live")]).await;
    assert_eq!((code, body.as_str()), (200, "live\n"));
    let (code, body) = curl(&[&url(w.admin, "/ready")]).await;
    assert_eq!(code, 200);
    assert!(
        body.starts_with("ready: table version 1, 3 services"),
        "{body}"
    );
    let (code, _) = curl(&["-X", "POST", &url(w.admin, "/metrics")]).await;
    assert_eq!(code, 405);
    let (code, body) = curl(&[&url(w.admin, "/nope")]).await;
    assert_eq!(code, 404);
    assert!(body.contains("/routes"), "{body}");

    // The whole table.
    let (code, table) = json(w.admin, "/routes").await;
    assert_eq!(code, 200, "{table}");
    assert_eq!(table["version"], 1);
    assert_eq!(table["services"].as_array().map(Vec::len), Some(3));
    let alice_ns = table["namespaces"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "alice"))
        .cloned()
        .expect("alice in the table");
    assert_eq!(alice_ns["kind"], "divert");
    assert_eq!(alice_ns["sharedNamespace"], "staging");
    let (_, only) = json(w.admin, "/routes?namespace=alice").await;
    assert_eq!(only["services"].as_array().map(Vec::len), Some(1));

    // Where would a request go, and why.
    let (code, r) = json(w.admin, "/routes?dst=web.staging:8080&key=alice").await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["target"], "web.alice:8080");
    assert_eq!(r["decision"], "diverted");
    assert_eq!(r["reason"], "diverted");
    assert_eq!(r["endpoints"][0], w.alice.addr.to_string());
    assert_eq!(r["dialedService"], "web.staging:8080");
    assert!(
        r["why"]
            .as_str()
            .is_some_and(|s| s.contains("divert namespace"))
    );

    let dst = format!("/routes?dst={}&key=lonely", w.web);
    let (_, r) = json(w.admin, &dst).await;
    assert_eq!(r["target"], "web.staging:8080");
    assert_eq!(r["reason"], "key_not_opted_in");
    let (_, r) = json(w.admin, &format!("/routes?dst={}", w.web)).await;
    assert_eq!(r["reason"], "no_key");
    assert_eq!(r["decision"], "shared");
    let (_, r) = json(w.admin, "/routes?dst=10.9.9.9:80&key=alice").await;
    assert_eq!(r["decision"], "passthrough");
    assert_eq!(r["reason"], "unknown_destination");
    assert_eq!(r["target"], "10.9.9.9:80");
    let (code, _) = json(w.admin, "/routes?dst=nowhere").await;
    assert_eq!(code, 400);
    // Percent-encoded IPv6 literal.
    let (code, r) = json(w.admin, "/routes?dst=%5B::1%5D:80").await;
    assert_eq!(code, 200);
    assert_eq!(r["dst"], "[::1]:80");
    drop(w.proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_logs_follow_the_log_level_set_at_run_time() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let w = world("info").await;
    let level = url(w.admin, "/log-level");
    assert_eq!(curl(&[&level]).await, (200, "info\n".to_owned()));
    // Not logged: decisions are at debug.
    assert_eq!(curl(&[&url(w.web, "/before")]).await.0, 200);

    let (code, body) = curl(&["-X", "PUT", "--data", "info,divert::decision=debug", &level]).await;
    assert_eq!(
        (code, body.as_str()),
        (200, "info,divert::decision=debug\n")
    );
    let (code, body) = curl(&["-X", "PUT", "--data", "info,[", &level]).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("invalid log filter"), "{body}");
    assert_eq!(
        curl(&[&level]).await,
        (200, "info,divert::decision=debug\n".to_owned())
    );

    assert_eq!(
        curl(&["-H", "baggage: okteto-divert=alice", &url(w.web, "/after")])
            .await
            .0,
        200
    );
    let line = format!("dst={}", w.web);
    assert!(
        w.proxy.wait_for_log("routed", Duration::from_secs(10)),
        "no decision line:\n{}",
        w.proxy.log()
    );
    let log = w.proxy.log();
    let routed: Vec<&str> = log.lines().filter(|l| l.contains("routed")).collect();
    // One line per request, and only for the request after the change: the
    // one before would have been written first.
    assert_eq!(routed.len(), 1, "{log}");
    let l = routed[0];
    for want in [
        "DEBUG",
        "protocol=http1",
        "key=alice",
        line.as_str(),
        "target=web.alice:8080",
        "decision=diverted",
        "reason=diverted",
        "status=200",
    ] {
        assert!(l.contains(want), "{want} missing from {l:?}");
    }
    // A failure is logged at info whatever the level.
    assert_eq!(curl(&["-X", "PUT", "--data", "info", &level]).await.0, 200);
    assert_eq!(curl(&[&url(w.down, "/")]).await.0, 502);
    assert!(
        w.proxy
            .wait_for_log("request failed", Duration::from_secs(10)),
        "{}",
        w.proxy.log()
    );
}

/// Starts `divert tap` with `args` against the proxy's admin address and
/// returns its output once it exits (it is given `-n`).
fn spawn_tap(admin: SocketAddr, args: &[&str]) -> std::process::Child {
    Command::new(divert_bin())
        .args(["tap", "--proxy", &admin.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start divert tap")
}

async fn tap_watchers(admin: SocketAddr) -> f64 {
    value(&scrape(admin).await, "divert_proxy_tap_watchers", &[])
}

async fn finish(child: std::process::Child) -> String {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("divert tap output");
    assert!(
        out.status.success(),
        "divert tap failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_streams_decisions_filtered_by_key_and_service() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let w = world("info").await;
    assert_eq!(tap_watchers(w.admin).await, 0.0);
    let by_key = spawn_tap(w.admin, &["--key", "alice", "-n", "2", "--output", "json"]);
    let by_service = spawn_tap(w.admin, &["--service", "down", "-n", "1"]);
    eventually("both tap watchers to connect", || async {
        tap_watchers(w.admin).await == 2.0
    })
    .await;

    let web = url(w.web, "/movies?page=2");
    assert_eq!(
        curl(&["-H", "baggage: okteto-divert=bob", &web]).await.0,
        200
    );
    assert_eq!(
        curl(&["-H", "baggage: okteto-divert=alice", &web]).await.0,
        200
    );
    assert_eq!(
        curl(&[
            "--http2-prior-knowledge",
            "-H",
            "baggage: okteto-divert=alice",
            &web
        ])
        .await
        .0,
        200
    );
    assert_eq!(curl(&[&url(w.down, "/")]).await.0, 502);

    let json_lines = finish(by_key).await;
    let events: Vec<serde_json::Value> = json_lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(events.len(), 2, "{json_lines}");
    for (e, protocol) in events.iter().zip(["http1", "http2"]) {
        assert_eq!(e["key"], "alice", "{e}");
        assert_eq!(e["protocol"], protocol, "{e}");
        assert_eq!(e["target"], "web.alice:8080", "{e}");
        assert_eq!(e["targetNamespace"], "alice", "{e}");
        assert_eq!(e["decision"], "diverted", "{e}");
        assert_eq!(e["status"], 200, "{e}");
        assert_eq!(e["method"], "GET", "{e}");
        assert_eq!(e["originalDst"], w.web.to_string(), "{e}");
        assert_eq!(e["endpoint"], w.alice.addr.to_string(), "{e}");
        // The query string is not sent: it may carry secrets.
        assert_eq!(e["path"], "/movies", "{e}");
    }

    let text = finish(by_service).await;
    let line = text.lines().next().unwrap_or_default();
    assert!(line.contains("down.staging:8080"), "{text}");
    assert!(line.contains("error="), "{text}");
    eprintln!(
        "divert tap (text) printed:\n{text}\ndivert tap --output json printed:\n{json_lines}"
    );
    // Both watchers went away with their processes.
    eventually("the tap watchers to go", || async {
        tap_watchers(w.admin).await == 0.0
    })
    .await;
}
