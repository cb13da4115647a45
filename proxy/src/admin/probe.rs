//! `GET /probe/tcp/<port>`: kubelet's `tcpSocket` probe, done for it.
//!
//! With inbound interception a connection to the app's port is accepted by
//! the proxy whether or not the app listens, so a `tcpSocket` probe of it
//! would always pass. Injection rewrites such probes into an `httpGet` of
//! this path on the admin port (which is never redirected), and the proxy
//! dials the app's port on the pod's IP itself: 200 if it accepts, 503 if
//! not. The dial is bounded; kubelet's own timeout bounds the rest.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use divert_core::admin::{Body, Mount};
use divert_core::names::path::TCP_PROBE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

/// The longest a probe's dial waits: kubelet's default probe timeout.
const DIAL_LIMIT: Duration = Duration::from_secs(1);

/// The mount that answers TCP probes of `pod_ip` (loopback if not known).
pub(super) fn mount(pod_ip: Option<IpAddr>) -> Mount {
    let ip = pod_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    Mount::new(TCP_PROBE, move |req: Request<hyper::body::Incoming>| {
        let asked = port_of(req.method(), req.uri().path());
        async move {
            let (status, text) = match asked {
                Err((status, why)) => (status, why),
                Ok(port) => dial(SocketAddr::new(ip, port)).await,
            };
            Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(
                    Full::new(Bytes::from(text))
                        .map_err(Into::into)
                        .boxed_unsync(),
                )
                .unwrap_or_else(|_| Response::new(Body::default()))
        }
    })
}

/// The port a probe asks about, or the answer to a bad request.
fn port_of(method: &Method, path: &str) -> Result<u16, (StatusCode, String)> {
    if method != Method::GET && method != Method::HEAD {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "a probe is a GET\n".into()));
    }
    path.strip_prefix(TCP_PROBE)
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                format!("not a probe: give {TCP_PROBE}PORT with PORT 1-65535\n"),
            )
        })
}

async fn dial(addr: SocketAddr) -> (StatusCode, String) {
    match tokio::time::timeout(DIAL_LIMIT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (StatusCode::OK, format!("{addr} accepts connections\n")),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{addr} refuses connections: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{addr} did not accept a connection within {DIAL_LIMIT:?}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_get_of_a_port_is_a_probe() {
        assert_eq!(port_of(&Method::GET, "/probe/tcp/8080"), Ok(8080));
        assert_eq!(port_of(&Method::HEAD, "/probe/tcp/1"), Ok(1));
        for bad in [
            "/probe/tcp/",
            "/probe/tcp/0",
            "/probe/tcp/65536",
            "/probe/tcp/http",
        ] {
            assert_eq!(
                port_of(&Method::GET, bad).map_err(|(s, _)| s),
                Err(StatusCode::BAD_REQUEST),
                "{bad}"
            );
        }
        assert_eq!(
            port_of(&Method::POST, "/probe/tcp/8080").map_err(|(s, _)| s),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
    }

    #[tokio::test]
    async fn a_listening_port_passes_and_a_closed_one_fails() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (status, text) = dial(open.local_addr().unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        // A port just freed: nothing listens there.
        let closed = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let (status, text) = dial(closed).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert!(text.contains("refuses"), "{text}");
    }
}
