//! A WebSocket upgrade routed by baggage and tunnelled both ways, between a
//! real client and real servers (Python websockets).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use divert_tests::*;

const PORT: u16 = 8080;

/// A Python WebSocket echo server, killed on drop.
struct WsServer {
    child: Child,
    addr: SocketAddr,
}

impl WsServer {
    fn start(name: &str) -> WsServer {
        let mut child = Command::new("python3")
            .arg(crate_dir().join("python/ws.py"))
            .args(["server", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start ws server");
        // The server prints its port once it listens.
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read port");
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("ws server said {line:?}"));
        WsServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
