//! A WebSocket echo server from another stack (Python websockets, our
//! `python/ws.py`), for the tests that prove upgrades are routed and
//! tunnelled both ways.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};

use crate::crate_dir;

/// A Python WebSocket echo server answering `NAME:<message>`, killed on drop.
pub struct WsServer {
    child: Child,
    pub addr: SocketAddr,
}

impl WsServer {
    /// On loopback, in this process's network namespace.
    pub fn start(name: &str) -> WsServer {
        Self::start_with(Command::new("python3"), name, Ipv4Addr::LOCALHOST.into())
    }

    /// Started by `python` (`ip netns exec NS python3`, say), listening on
    /// `host` at a port of its choosing.
    pub fn start_with(mut python: Command, name: &str, host: IpAddr) -> WsServer {
        let mut child = python
            .arg(crate_dir().join("python/ws.py"))
            .args(["server", name, &host.to_string()])
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
            addr: SocketAddr::new(host, port),
        }
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
