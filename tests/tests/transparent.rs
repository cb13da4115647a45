//! Transparent interception as a pod sees it, in network namespaces with real
//! iptables: `divert-proxy init` programs the client pod, the proxy runs there as
//! UID 2102, and real clients (curl, nghttp, Python grpcio, raw TCP) dial
//! service addresses that look like ClusterIPs. Upstream pods play staging's
//! and alice's services; what they record proves where each request went.
//! Everything runs once with the iptables-legacy backend and once with nft.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use divert_proxy::silent::CLIENT_SPOKE_FIRST;
use divert_tests::grpc::GrpcUpstream;
use divert_tests::netns::{self, Lan, Netns, Pod, Process, run_ok, sidecar_bin};
use divert_tests::tcp::{self, banner_server, echo_after_eof_server};
use divert_tests::{TempDir, Upstream, curl_with, have_python_modules, have_tool, python_with};

const PROXY_UID: u32 = 2102;
/// Long enough that "waited for it" and "did not wait" cannot be confused.
const DETECT_TIMEOUT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_traffic_is_routed_with_iptables_legacy() {
    pod_traffic_is_routed("legacy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_traffic_is_routed_with_iptables_nft() {
    pod_traffic_is_routed("nft").await;
}

/// `iptables-save` (all tables) of the pod, for the backend under test.
fn iptables_save(ns: &Netns, mode: &str, family: &str) -> String {
    let out = run_ok(&mut ns.command(format!("{family}-{mode}-save")));
    // Drop the "# Generated/Completed … on <date>" comment lines, and the
    // built-in chains' packet counters, which traffic moves (legacy prints them).
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(at)) => format!("{}\n", &l[..at]),
            _ => format!("{l}\n"),
        })
        .collect()
}

fn divert_init(ns: &Netns, args: &[&str]) {
    run_ok(ns.command(sidecar_bin()).arg("init").args(args));
}

/// Raw TCP from the client pod: sends `msg`, closes its write side, reads all.
fn raw_exchange(pod: &Pod, addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    tcp::exchange(pod.ns.connect(addr).expect("raw connect"), msg)
}

/// Connects, sends nothing, and times the server's first line.
fn first_line_after(pod: &Pod, addr: SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let mut s = pod.ns.connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).expect("banner");
    (
        String::from_utf8_lossy(&buf[..n]).into_owned(),
        started.elapsed(),
    )
}

/// Connects to `addr` from `pod`, says nothing for `silence` (the
/// condition under test), then sends a GET with `header`; the whole answer.
fn request_after_silence(pod: &Pod, addr: SocketAddr, silence: Duration, header: &str) -> String {
    let mut s = pod.ns.connect(addr).expect("connect");
    std::thread::sleep(silence);
    write!(
        s,
        "GET /silent HTTP/1.1\r\nHost: web\r\n{header}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("answer");
    String::from_utf8_lossy(&answer).into_owned()
}

fn sock(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

async fn pod_traffic_is_routed(mode: &str) {
    if !netns::available()
        || !have_tool("curl", &["--version"])
        || !have_tool("nghttp", &["--version"])
        || !have_python_modules(&["grpc", "grpc_tools"])
    {
        return;
    }
    let mut lan = Lan::new();
    let client = lan.pod("client");
    let staging = lan.pod("staging");
    let alice = lan.pod("alice");

    // The upstream pods.
    let web_staging = Upstream::serve(
        staging.ns.listen(sock(staging.ipv4, 8080)),
        "web",
        "staging",
    );
    let web_alice = Upstream::serve(alice.ns.listen(sock(alice.ipv4, 8080)), "web", "alice");
    let grpc_staging = GrpcUpstream::serve(staging.ns.listen(sock(staging.ipv4, 9090)), "staging");
    let grpc_alice = GrpcUpstream::serve(alice.ns.listen(sock(alice.ipv4, 9090)), "alice");
    let servers = [
        tokio::spawn(echo_after_eof_server(
            staging.ns.listen(sock(staging.ipv4, 7000)),
        )),
        tokio::spawn(banner_server(
            staging.ns.listen(sock(staging.ipv4, 5432)),
            "PG ready\n",
        )),
        tokio::spawn(banner_server(
            staging.ns.listen(sock(staging.ipv4, 7001)),
            "220 smtp ready\n",
        )),
    ];

    // A real TLS server (openssl s_server -www answers GET with a status page).
    let tls_dir = TempDir::new("tls");
    let (key, cert) = (
        tls_dir.path().join("key.pem"),
        tls_dir.path().join("cert.pem"),
    );
    run_ok(
        std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=db.staging",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    let mut tls_cmd = staging.ns.command("sh");
    tls_cmd.arg("-c").arg(format!(
        "exec openssl s_server -www -accept {}:8443 -key {} -cert {} 1>&2",
        staging.ipv4,
        key.display(),
        cert.display()
    ));
    let _tls_server = Process::spawn(tls_cmd, "ACCEPT");

    // A foreign rule in the pod before us, to prove --cleanup leaves it alone.
    run_ok(
        client
            .ns
            .command(format!("iptables-{mode}"))
            .args(["-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN"]),
    );
    run_ok(
        client
            .ns
            .command(format!("iptables-{mode}"))
            .args(["-A", "OUTPUT", "-p", "icmp", "-j", "ACCEPT"]),
    );
    run_ok(
        client
            .ns
            .command(format!("ip6tables-{mode}"))
            .args(["-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN"]),
    );
    let before_v4 = iptables_save(&client.ns, mode, "iptables");
    let before_v6 = iptables_save(&client.ns, mode, "ip6tables");

    // The init container: program, then prove redirection works.
    divert_init(&client.ns, &["--mode", mode, "--validate"]);
    let after_init_v4 = iptables_save(&client.ns, mode, "iptables");
    let after_init_v6 = iptables_save(&client.ns, mode, "ip6tables");
    assert!(after_init_v4.contains("DIVERT_OUTPUT"), "{after_init_v4}");
    assert!(after_init_v6.contains("DIVERT_OUTPUT"), "{after_init_v6}");
    // Running it again changes nothing.
    divert_init(&client.ns, &["--mode", mode]);
    assert_eq!(iptables_save(&client.ns, mode, "iptables"), after_init_v4);
    assert_eq!(iptables_save(&client.ns, mode, "ip6tables"), after_init_v6);

    // The proxy, as its own UID, from a registry of ClusterIP-like addresses.
    let dir = TempDir::readable_by_all("transparent");
    let registry = dir.path().join("registry.yaml");
    let (s4, a4) = (staging.ipv4, alice.ipv4);
    std::fs::write(
        &registry,
        format!(
            "namespaces:
  - {{ name: staging }}
  - {{ name: alice, sharedNamespace: staging }}
services:
  - {{ name: web, namespace: staging, addresses: ['10.96.0.10', 'fd00:96::10'], ports: [{{ name: http, port: 80, targetPort: 8080 }}], endpoints: ['{s4}'] }}
  - {{ name: web, namespace: alice, addresses: ['10.96.1.10'], ports: [{{ name: http, port: 80, targetPort: 8080 }}], endpoints: ['{a4}'] }}
  - {{ name: catalog, namespace: staging, addresses: ['10.96.0.20'], ports: [{{ name: grpc, port: 9090 }}], endpoints: ['{s4}'] }}
  - {{ name: catalog, namespace: alice, addresses: ['10.96.1.20'], ports: [{{ name: grpc, port: 9090 }}], endpoints: ['{a4}'] }}
  - {{ name: db, namespace: staging, addresses: ['10.96.0.30'], ports: [{{ name: echo, port: 7000 }}, {{ name: pg, port: 5432 }}, {{ name: smtp, port: 7001 }}, {{ name: tls, port: 8443 }}], endpoints: ['{s4}'] }}
"
        ),
    )
    .expect("write registry");
    let mut proxy_cmd = client.ns.command_as(PROXY_UID, sidecar_bin());
    proxy_cmd
        .args([
            "--log-level",
            "debug",
            "proxy",
            "--transparent",
            "--registry",
        ])
        .arg(&registry)
        .args(["--detect-timeout", "3s"]);
    let proxy = Process::spawn(proxy_cmd, "divert proxy ready");

    let curl = || client.ns.command("curl");
    let alice_key = "baggage: okteto-divert=alice";

    // HTTP/1.1: no key → staging; alice's key → alice; over IPv6 too.
    let (code, body) = curl_with(curl(), &["http://10.96.0.10/a"]).await;
    assert_eq!((code, body.trim()), (200, "web@staging 0"));
    let (code, body) = curl_with(curl(), &["-H", alice_key, "http://10.96.0.10/b"]).await;
    assert_eq!((code, body.trim()), (200, "web@alice 0"));
    let (code, body) = curl_with(curl(), &["-H", alice_key, "http://[fd00:96::10]/c"]).await;
    assert_eq!((code, body.trim()), (200, "web@alice 0"), "IPv6 ClusterIP");
    // h2c with prior knowledge.
    let (code, body) = curl_with(
        curl(),
        &[
            "--http2-prior-knowledge",
            "-H",
            alice_key,
            "http://10.96.0.10/d",
        ],
    )
    .await;
    assert_eq!((code, body.trim()), (200, "web@alice 0"));
    // nghttp: four streams on one connection.
    let out = run_ok(client.ns.command("nghttp").args([
        "-H",
        alice_key,
        "http://10.96.0.10/e1",
        "http://10.96.0.10/e2",
        "http://10.96.0.10/e3",
        "http://10.96.0.10/e4",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("web@alice")
            .count(),
        4
    );
    let mut alice_seen: Vec<(String, http::Version)> = web_alice
        .seen()
        .into_iter()
        .map(|s| (s.path, s.version))
        .collect();
    assert_eq!(alice_seen.len(), 7, "{alice_seen:?}");
    assert_eq!(alice_seen[2], ("/d".to_string(), http::Version::HTTP_2));
    let mut paths: Vec<&str> = alice_seen.iter().map(|(p, _)| p.as_str()).collect();
    paths[3..].sort();
    assert_eq!(paths, ["/b", "/c", "/d", "/e1", "/e2", "/e3", "/e4"]);
    alice_seen.clear();
    assert_eq!(
        web_staging
            .seen()
            .iter()
            .map(|s| s.path.clone())
            .collect::<Vec<_>>(),
        ["/a"]
    );
    for s in web_alice.seen() {
        assert_eq!(
            s.baggage,
            ["okteto-divert=alice"],
            "baggage is forwarded unchanged"
        );
    }

    // gRPC from another stack, routed per call.
    let grpc = |key: &'static str| {
        let cmd = client.ns.command("python3");
        async move {
            let args = [
                "10.96.0.20:9090".to_string(),
                "unary".to_string(),
                key.to_string(),
            ];
            python_with(cmd, "grpc_client.py", &args).await
        }
    };
    let out = grpc("alice").await;
    assert!(out.contains("\"namespace\": \"alice\""), "{out}");
    let out = grpc("-").await;
    assert!(out.contains("\"namespace\": \"staging\""), "{out}");
    assert_eq!(
        (grpc_alice.calls().len(), grpc_staging.calls().len()),
        (1, 1)
    );

    // Opaque TCP, client first, through a service address and passthrough to a
    // pod address: the half-close reaches the server, its answer comes back.
    let got = raw_exchange(&client, sock([10, 96, 0, 30], 7000), b"hello\n");
    assert_eq!(got, b"echo: hello\n");
    let got = raw_exchange(&client, sock(staging.ipv4, 7000), b"direct\n");
    assert_eq!(got, b"echo: direct\n");

    // TLS passes through untouched: curl's handshake reaches a real TLS server.
    let (code, body) = curl_with(curl(), &["-k", "https://10.96.0.30:8443/"]).await;
    assert_eq!(code, 200);
    assert!(body.contains("s_server"), "{body}");
    assert!(
        proxy.wait_for_log(
            "routed direction=outbound protocol=tls",
            Duration::from_secs(10)
        ),
        "{}",
        proxy.log()
    );

    // Server speaks first. On an opaque port nothing waits for the client.
    let (line, took) = first_line_after(&client, sock([10, 96, 0, 30], 5432));
    assert_eq!(line, "PG ready\n");
    assert!(took < DETECT_TIMEOUT, "opaque port waited {took:?}");
    // On another port, detection gives up after its timeout, then passes the
    // connection through.
    let (line, took) = first_line_after(&client, sock([10, 96, 0, 30], 7001));
    assert_eq!(line, "220 smtp ready\n");
    assert!(took >= DETECT_TIMEOUT, "answered after {took:?}");
    // A client silent past the detect timeout (an HTTP client pool's spare
    // connection) and then speaking HTTP is still routed by key: silence
    // alone does not make a connection opaque.
    let answer = request_after_silence(
        &client,
        sock([10, 96, 0, 10], 80),
        DETECT_TIMEOUT + Duration::from_millis(500),
        alice_key,
    );
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("web@alice"),
        "{answer}"
    );
    // It went the silent way, not into detection late.
    assert!(
        proxy.wait_for_log(CLIENT_SPOKE_FIRST, Duration::from_secs(10)),
        "{}",
        proxy.log()
    );

    // The proxy's own upstream connections were exempt (its UID's RETURN rule
    // counted them) rather than redirected back to itself.
    let counted = run_ok(
        client
            .ns
            .command(format!("iptables-{mode}-save"))
            .args(["-c", "-t", "nat"]),
    );
    let counted = String::from_utf8_lossy(&counted.stdout).into_owned();
    let uid_rule = counted
        .lines()
        .find(|l| l.contains("--uid-owner 2102"))
        .unwrap_or_else(|| panic!("no UID rule in\n{counted}"));
    let packets: u64 = uid_rule
        .trim_start_matches('[')
        .split(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {uid_rule}"));
    // nat rules see each connection's first packet only, so this counts the
    // proxy's upstream connections; had one been redirected instead, its
    // request would have looped and failed above.
    assert!(
        packets > 0,
        "the proxy's connections did not match its UID rule: {uid_rule}"
    );

    // Dialing the proxy's port directly is a loop: refused, and said so.
    let mut direct = client.ns.command("curl");
    direct.args(["-s", "--max-time", "10", "http://127.0.0.1:4140/"]);
    let out = direct.output().expect("curl");
    // Reset by the proxy at once: curl fails with no response (which of
    // "couldn't connect", "send" or "recv failure" depends on when the reset
    // lands), and not by waiting out its timeout (28).
    assert!(
        !out.status.success() && out.status.code() != Some(28),
        "curl exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        proxy.wait_for_log("redirect loop", Duration::from_secs(10)),
        "{}",
        proxy.log()
    );

    // Cleanup leaves the pod's rules exactly as they were.
    drop(proxy);
    divert_init(&client.ns, &["--mode", mode, "--cleanup"]);
    assert_eq!(iptables_save(&client.ns, mode, "iptables"), before_v4);
    assert_eq!(iptables_save(&client.ns, mode, "ip6tables"), before_v6);
    for s in servers {
        s.abort();
    }
}
