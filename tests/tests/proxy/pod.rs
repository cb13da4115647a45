//! A pod's inbound side for the tests that need one: staging's `web` pod
//! (its upstream's address is the pod address the inbound proxy delivers
//! to), alice's copy of `web`, and the proxy's inbound side served on
//! loopback listeners of the test's, as the transparent listener would
//! hand it connections.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use divert_core::direction::Direction;
use divert_proxy::conn::{Conn, NotHttp, serve_detected};
use divert_proxy::protocol::Protocol;
use divert_proxy::shared::{Config, Shared};
use divert_tests::*;
use tokio::net::TcpListener;

const PORT: u16 = 8080;

/// staging (allowing the key cookie, or not) with `web` on `staging` and
/// alice's copy on `alice`; bob is a divert namespace of prod.
fn registry(cookie: bool, staging: SocketAddr, alice: SocketAddr) -> String {
    let mut yaml = format!(
        "namespaces:\n  - {{ name: staging, keyCookie: {cookie} }}\n  - {{ name: alice, sharedNamespace: staging }}\n  - {{ name: bob, sharedNamespace: prod }}\nservices:\n"
    );
    yaml += &service_yaml("web", "staging", unique_ip(), PORT, &[staging]);
    yaml += &service_yaml("web", "alice", unique_ip(), PORT, &[alice]);
    yaml
}

/// The inbound side of staging's pod at `pod`: a listener per protocol,
/// and the admin server.
pub(super) struct Inbound {
    pub h1: SocketAddr,
    pub h2: SocketAddr,
    pub admin: SocketAddr,
    pub proxy: TestProxy,
}

pub(super) async fn inbound(cookie: bool, pod: SocketAddr, alice: SocketAddr) -> Inbound {
    inbound_as("staging", cookie, pod, alice, pod).await
}

/// The inbound side of a pod at `pod` in `namespace`, with staging's `web`
/// at `staging` and alice's at `alice`.
pub(super) async fn inbound_as(
    namespace: &str,
    cookie: bool,
    staging: SocketAddr,
    alice: SocketAddr,
    pod: SocketAddr,
) -> Inbound {
    let config = Config {
        namespace: Some(namespace.into()),
        ..Config::default()
    };
    let proxy = TestProxy::start_with(&registry(cookie, staging, alice), config).await;
    let shared = proxy.proxy.shared.clone();
    let h1 = listen(Protocol::Http1, pod, shared.clone()).await;
    let h2 = listen(Protocol::Http2, pod, shared.clone()).await;
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = admin_listener.local_addr().expect("addr");
    tokio::spawn(divert_proxy::admin::serve(
        admin_listener,
        divert_proxy::admin::ProxyAdmin::new(shared, true),
    ));
    Inbound {
        h1,
        h2,
        admin,
        proxy,
    }
}

/// Serves connections as the pod's inbound proxy serves those that were
/// going to `pod` and spoke `protocol`.
pub(crate) async fn listen(protocol: Protocol, pod: SocketAddr, shared: Arc<Shared>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let conn = Conn {
                dst: pod,
                peer,
                direction: Direction::Inbound,
            };
            tokio::spawn(serve_detected(
                stream,
                protocol,
                Bytes::new(),
                NotHttp::Refuse,
                conn,
                shared.clone(),
            ));
        }
    });
    addr
}
