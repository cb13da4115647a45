//! The dropped-key detector through a real proxy and a real app (the Movies
//! app): staging's api pod, whose app calls catalog through the pod's
//! proxy; with alice's key in, a call out without it is counted against
//! catalog, and a call that keeps it is not.

use std::net::SocketAddr;

use divert_proxy::protocol::Protocol;
use divert_proxy::shared::Config;
use divert_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_calls_on_without_the_key_is_counted_against_the_destination() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let catalog = Upstream::start("catalog", "staging").await;
    // The api app, on a port of its own.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut app = std::process::Command::new(env!("CARGO_BIN_EXE_movieapp"));
    app.args([format!("-listen=:{port}"), "-text=api@staging".into()]);
    let app = divert_tests::netns::Process::spawn(app, "listening");
    let api: SocketAddr = ([127, 0, 0, 1], port).into();
    let catalog_ip = unique_ip();
    let mut yaml = String::from(
        "namespaces:\n  - name: staging\n  - { name: alice, sharedNamespace: staging }\nservices:\n",
    );
    yaml += &service_yaml("api", "staging", unique_ip(), 8080, &[api]);
    yaml += &service_yaml("catalog", "staging", catalog_ip, 9090, &[catalog.addr]);
    let config = Config {
        namespace: Some("staging".into()),
        ..Config::default()
    };
    let proxy = TestProxy::start_with(&yaml, config).await;
    let inbound = crate::pod::listen(Protocol::Http1, api, proxy.proxy.shared.clone()).await;
    let as_alice = |path: &str| {
        let url = format!("http://{inbound}{path}");
        async move {
            // The app answers 502: catalog's answer (the test upstream's)
            // is not the JSON it expects. What catalog saw is the proof.
            let (_, body) = curl(&[
                "-H",
                "baggage: okteto-divert=alice",
                "-H",
                "divert-outbound-hop: 00abcdef01234567",
                &url,
            ])
            .await;
            body
        }
    };
    as_alice(&format!("/call/{catalog_ip}:9090/kept")).await;
    assert!(
        proxy.proxy.shared.drops.counts().is_empty(),
        "it kept the key"
    );
    // Keyed and unkeyed at once: every call is right.
    let keyed = format!("/wait/1000/call/{catalog_ip}:9090/kept");
    let plain = format!("http://{inbound}/wait/200/call/{catalog_ip}:9090/plain");
    let calls = (0..6).map(|i| {
        let (keyed, plain) = (keyed.clone(), plain.clone());
        async move {
            if i % 3 == 0 {
                as_alice(&keyed).await;
            } else {
                curl(&[&plain]).await;
            }
        }
    });
    futures_util::future::join_all(calls).await;
    assert!(
        proxy.proxy.shared.drops.counts().is_empty(),
        "nothing dropped"
    );
    as_alice(&format!("/drop/{catalog_ip}:9090/lost")).await;
    let counts: Vec<(String, String, u64)> = proxy
        .proxy
        .shared
        .drops
        .counts()
        .into_iter()
        .map(|c| (c.service, c.destination, c.count))
        .collect();
    assert_eq!(counts, [("api".into(), "catalog.staging".into(), 1)]);
    let seen = catalog.seen();
    assert_eq!(seen.len(), 8);
    assert_eq!(seen[0].baggage, ["okteto-divert=alice"]);
    assert!(seen[7].baggage.is_empty(), "{:?}", seen[7]);
    drop(app);
}
