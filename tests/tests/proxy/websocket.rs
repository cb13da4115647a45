//! A WebSocket upgrade routed by baggage and tunnelled both ways, between a
//! real client and real servers (Python websockets).

use divert_tests::ws::WsServer;
use divert_tests::*;

const PORT: u16 = 8080;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_routed_and_tunnelled() {
    if !have_python_modules(&["websockets"]) {
        return;
    }
    let staging = WsServer::start("chat@staging");
    let alice = WsServer::start("chat@alice");
    let ip = unique_ip();
    let mut yaml =
        String::from("namespaces:\n  - { name: alice, sharedNamespace: staging }\nservices:\n");
    yaml += &service_yaml("chat", "staging", ip, PORT, &[staging.addr]);
    yaml += &service_yaml("chat", "alice", unique_ip(), PORT, &[alice.addr]);
    let _p = TestProxy::start(&yaml).await;
    let url = format!("ws://{ip}:{PORT}/chat");

    let out = python(
        "ws.py",
        &["client".into(), url.clone(), "alice".into(), "3".into()],
    )
    .await;
    let replies: Vec<String> = serde_json::from_str(&out).expect("JSON");
    assert_eq!(replies, ["chat@alice:m0", "chat@alice:m1", "chat@alice:m2"]);

    let out = python("ws.py", &["client".into(), url, "-".into(), "2".into()]).await;
    let replies: Vec<String> = serde_json::from_str(&out).expect("JSON");
    assert_eq!(replies, ["chat@staging:m0", "chat@staging:m1"]);
}
