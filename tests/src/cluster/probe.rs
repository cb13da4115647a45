//! Probes as the kubelet runs them, from the node's namespace to the pod's
//! address: `httpGet` (a 2xx or 3xx status within `timeoutSeconds`) and
//! `tcpSocket` (the connection opens).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs `probe` of `container` once against `ip`; `Err` says why it failed.
pub async fn run(
    node_ns: &str,
    ip: Ipv4Addr,
    container: &Container,
    probe: &Probe,
) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let (port, http) = if let Some(h) = &probe.http_get {
        (&h.port, Some(h.path.clone().unwrap_or_else(|| "/".into())))
    } else if let Some(t) = &probe.tcp_socket {
        (&t.port, None)
    } else {
        return Err("only httpGet and tcpSocket probes are supported".into());
    };
    let port = resolve_port(container, port)?;
    let addr = SocketAddr::from((ip, port));
    let attempt = async {
        let socket = crate::netns::socket_in(node_ns, addr).map_err(|e| e.to_string())?;
        let mut stream = socket
            .connect(addr)
            .await
            .map_err(|e| format!("dial {addr}: {e}"))?;
        let Some(path) = http else {
            return Ok(());
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let got = stream
                .read(&mut head[n..])
                .await
                .map_err(|e| e.to_string())?;
            if got == 0 {
                break;
            }
            n += got;
        }
        let line = String::from_utf8_lossy(&head[..n]);
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {line:?}"))?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {status}"))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("timed out after {timeout:?}"))?
}

/// A probe's port: a number, or the name of one of the container's ports.
pub fn resolve_port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("bad port {n}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("the container has no port named {name}")),
    }
}
