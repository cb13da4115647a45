//! Hot reload of the registry file while requests are flowing: no request
//! fails, the new table takes effect, listeners follow it, and an invalid edit
//! keeps the table that was there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use divert_tests::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const PORT: u16 = 8080;

fn registry(
    web_ip: std::net::IpAddr,
    staging: &Upstream,
    alice: Option<(std::net::IpAddr, &Upstream)>,
) -> String {
    let mut yaml =
        String::from("namespaces:\n  - { name: alice, sharedNamespace: staging }\nservices:\n");
    yaml += &service_yaml("web", "staging", web_ip, PORT, &[staging.addr]);
    if let Some((ip, a)) = alice {
        yaml += &service_yaml("web", "alice", ip, PORT, &[a.addr]);
    }
    yaml
}

async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
) -> Result<String, String> {
    let req = http::Request::get(format!("http://{addr}/"))
        .header("baggage", "okteto-divert=alice")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body)
        .split(' ')
        .next()
        .unwrap_or("")
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_during_traffic_loses_no_request() {
    let staging = Upstream::start("web", "staging").await;
    let alice = Upstream::start("web", "alice").await;
    let (web_ip, alice_ip) = (unique_ip(), unique_ip());
    let p = TestProxy::start(&registry(web_ip, &staging, None)).await;
    let web = SocketAddr::new(web_ip, PORT);

    // Clients that keep sending alice's key until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http();
            let mut served = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match get(&client, web).await {
                    Ok(s) => served.push(s),
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            served
        }));
    }
    // Until the clients have made `n` requests in all, within a deadline.
    let wait_for = |n: usize| {
        let (done, failures) = (done.clone(), failures.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while done.load(Ordering::Relaxed) < n {
                assert!(
                    Instant::now() < deadline,
                    "the clients made {} of {n} requests in 30 s ({} failed)",
                    done.load(Ordering::Relaxed),
                    failures.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    wait_for(200).await;
    assert_eq!(
        alice.count(),
        0,
        "alice has no service yet: staging serves her key"
    );
    // Alice deploys her copy: the registry gains it.
    p.reload(&registry(web_ip, &staging, Some((alice_ip, &alice))))
        .await;
    let after_add = done.load(Ordering::Relaxed);
    wait_for(after_add + 200).await;
    // An invalid edit is ignored: alice's copy stays.
    let bad =
        registry(web_ip, &staging, Some((alice_ip, &alice))).replace("port: 8080", "port: eighty");
    let before_bad = p.proxy.table_version();
    let mut rejected = p.proxy.shared.tables.rejected_updates();
    let tmp = p.registry.with_extension("bad");
    std::fs::write(&tmp, bad).expect("write bad registry");
    std::fs::rename(&tmp, &p.registry).expect("rename bad registry");
    rejected
        .wait_for(|n| *n == 1)
        .await
        .expect("rejection seen");
    let mid = done.load(Ordering::Relaxed);
    wait_for(mid + 200).await;
    assert_eq!(
        p.proxy.table_version(),
        before_bad,
        "an invalid edit must not replace the table"
    );
    // Alice removes her copy: back to staging, and her listener closes.
    p.reload(&registry(web_ip, &staging, None)).await;
    let after_remove = done.load(Ordering::Relaxed);
    wait_for(after_remove + 200).await;
    stop.store(true, Ordering::Relaxed);

    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.expect("client task"));
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request may fail across reloads"
    );
    assert!(all.iter().any(|s| s == "web@alice"));
    assert!(
        alice.count() >= 400,
        "alice served {} requests",
        alice.count()
    );
    let l = p.proxy.listening(p.proxy.table_version()).await;
    assert_eq!(
        l.bound,
        vec![web],
        "alice's listener is closed after her service left"
    );
    // The last requests all went back to staging.
    let last = get(&Client::builder(TokioExecutor::new()).build_http(), web).await;
    assert_eq!(last.as_deref(), Ok("web@staging"));
}
