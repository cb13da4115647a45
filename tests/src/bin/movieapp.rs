//! The Movies example's app on the test cluster: the pod runner runs it for
//! the example's stand-in image (`hashicorp/http-echo`), with that image's
//! flags, `-listen=:PORT -text=SERVICE@NAMESPACE`.
//!
//! It tells a client what it saw, so a test proves routing by what the
//! upstream recorded:
//! - any HTTP/1.1 or h2c request: a JSON object with `servedBy`, the `pod`
//!   (its `HOSTNAME`), the `protocol` and every `baggage` header it received;
//! - `/call/HOST:PORT/PATH`: it calls `http://HOST:PORT/PATH` itself (HOST
//!   resolved through the pod's DNS), passing the `baggage` headers on as an
//!   app must, and nests that answer as `downstream`;
//! - `/drop/HOST:PORT/PATH`: the same call without the `baggage` headers, as
//!   an app that does not pass the key on;
//! - `/wait/MS/REST`: waits MS milliseconds (at most 5 s), then answers as
//!   for `/REST`, so that requests overlap when a test needs them to;
//! - gRPC (`content-type: application/grpc…`): the demo's Catalog service,
//!   whose replies carry the service, namespace and baggage;
//! - a WebSocket handshake (RFC 6455): it answers each text or binary
//!   message with `SERVICE@NAMESPACE:MESSAGE`.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tower::ServiceExt;

type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The longest `/wait/`.
const MAX_WAIT_MS: u64 = 5000;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut listen = ":5678".to_string();
    let mut text = "movieapp@default".to_string();
    for arg in std::env::args().skip(1) {
        if let Some(v) = arg.strip_prefix("-listen=") {
            listen = v.to_string();
        } else if let Some(v) = arg.strip_prefix("-text=") {
            text = v.to_string();
        } else {
            eprintln!(
                "movieapp: unknown argument {arg:?} (use -listen=:PORT -text=SERVICE@NAMESPACE)"
            );
            std::process::exit(64);
        }
    }
    let port: u16 = match listen.rsplit(':').next().and_then(|p| p.parse().ok()) {
        Some(p) => p,
        None => {
            eprintln!("movieapp: -listen={listen}: expected :PORT");
            std::process::exit(64);
        }
    };
    let (service, namespace) = text.split_once('@').unwrap_or((&text, "default"));
    let grpc = tonic::service::Routes::new(divert_tests::grpc::catalog(
        service,
        namespace,
        Arc::new(Mutex::new(Vec::new())),
    ));
    let listener = match tokio::net::TcpListener::bind(SocketAddr::from((
        Ipv4Addr::UNSPECIFIED,
        port,
    )))
    .await
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("movieapp: bind :{port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("movieapp: {text} listening on :{port}");
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let text: Arc<str> = text.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let (text, grpc, client) = (text.clone(), grpc.clone(), client.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let (text, grpc, client) = (text.clone(), grpc.clone(), client.clone());
                async move {
                    let is_grpc = req
                        .headers()
                        .get(http::header::CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                    if is_grpc {
                        let resp = match grpc.oneshot(req.map(tonic::body::Body::new)).await {
                            Ok(r) => r,
                            Err(never) => match never {},
                        };
                        return Ok::<_, Infallible>(
                            resp.map(|b| b.map_err(|e| e.into()).boxed_unsync()),
                        );
                    }
                    if let Some(resp) = websocket::accept(&mut req, &text) {
                        return Ok(resp);
                    }
                    Ok(answer(req, &text, &client).await)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    text: &str,
    client: &Client<HttpConnector, Empty<Bytes>>,
) -> Response<Body> {
    let baggage: Vec<String> = req
        .headers()
        .get_all("baggage")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let mut seen = json!({
        "servedBy": text,
        "pod": std::env::var("HOSTNAME").unwrap_or_default(),
        "protocol": format!("{:?}", req.version()),
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "baggage": baggage,
    });
    let mut status = StatusCode::OK;
    let mut path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/wait/") {
        let (ms, rest) = rest.split_once('/').unwrap_or((rest, ""));
        let ms = ms.parse::<u64>().unwrap_or(0).min(MAX_WAIT_MS);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        // `rest` ends the path: the path from its slash on.
        let full = req.uri().path();
        path = full.get(full.len() - rest.len() - 1..).unwrap_or("/");
        if rest.is_empty() {
            path = "/";
        }
    }
    let call = match (path.strip_prefix("/call/"), path.strip_prefix("/drop/")) {
        (Some(rest), _) => Some((rest, true)),
        (None, Some(rest)) => Some((rest, false)),
        (None, None) => None,
    };
    if let Some((rest, pass_key)) = call {
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut out = Request::get(format!("http://{host}/{path}"));
        for b in baggage.iter().filter(|_| pass_key) {
            out = out.header("baggage", b.as_str());
        }
        let downstream = match out.body(Empty::new()) {
            Err(e) => json!({"error": e.to_string()}),
            Ok(out) => {
                match tokio::time::timeout(std::time::Duration::from_secs(10), client.request(out))
                    .await
                {
                    Err(_) => json!({"error": "timed out"}),
                    Ok(Err(e)) => json!({"error": format!("{e:?}")}),
                    Ok(Ok(resp)) => {
                        let code = resp.status().as_u16();
                        match resp.into_body().collect().await {
                            Ok(b) => serde_json::from_slice::<Value>(&b.to_bytes())
                                .unwrap_or_else(|_| json!({"status": code, "error": "not JSON"})),
                            Err(e) => json!({"error": e.to_string()}),
                        }
                    }
                }
            }
        };
        if downstream.get("error").is_some() {
            status = StatusCode::BAD_GATEWAY;
        }
        seen["downstream"] = downstream;
    }
    let mut resp = Response::new(
        Full::new(Bytes::from(format!("{seen}\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The WebSocket echo (RFC 6455): the handshake's answer, and a task that
/// answers each message with who served it.
mod websocket {
    use super::Body;
    use bytes::Bytes;
    use http::{Request, Response, StatusCode, header};
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// RFC 6455 §1.3: appended to the client's key before hashing.
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    /// The largest message answered; a larger one closes the connection.
    const MAX_MESSAGE: u64 = 64 * 1024;

    /// The `101` for a WebSocket handshake (the echo then runs on the
    /// upgraded connection); `None` for any other request.
    pub fn accept(req: &mut Request<Incoming>, served_by: &str) -> Option<Response<Body>> {
        let upgrade = req.headers().get(header::UPGRADE)?.as_bytes();
        if !upgrade.eq_ignore_ascii_case(b"websocket") {
            return None;
        }
        let key = req.headers().get("sec-websocket-key")?.as_bytes().to_vec();
        let mut hashed = key;
        hashed.extend_from_slice(GUID.as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &hashed);
        use base64::Engine as _;
        let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        let upgraded = hyper::upgrade::on(req);
        let served_by = served_by.to_owned();
        tokio::spawn(async move {
            if let Ok(io) = upgraded.await {
                let _ = echo(TokioIo::new(io), &served_by).await;
            }
        });
        let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
        h.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("Upgrade"),
        );
        h.insert("sec-websocket-accept", accept.parse().ok()?);
        Some(resp)
    }

    /// Reads the client's frames (masked, RFC 6455 §5.3) and answers each
    /// message; a ping with a pong, a close with a close.
    async fn echo<I>(mut io: I, served_by: &str) -> std::io::Result<()>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        loop {
            let mut head = [0u8; 2];
            io.read_exact(&mut head).await?;
            let opcode = head[0] & 0x0f;
            let len = match u64::from(head[1] & 0x7f) {
                126 => u64::from(io.read_u16().await?),
                127 => io.read_u64().await?,
                n => n,
            };
            if len > MAX_MESSAGE {
                return Ok(());
            }
            let mut mask = [0u8; 4];
            if head[1] & 0x80 != 0 {
                io.read_exact(&mut mask).await?;
            }
            let mut payload = vec![0u8; usize::try_from(len).unwrap_or(0)];
            io.read_exact(&mut payload).await?;
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
            match opcode {
                0x1 | 0x2 => {
                    let text = format!("{served_by}:{}", String::from_utf8_lossy(&payload));
                    io.write_all(&frame(0x1, text.as_bytes())).await?;
                }
                0x9 => io.write_all(&frame(0xa, &payload)).await?,
                0x8 => {
                    io.write_all(&frame(0x8, &payload)).await?;
                    return Ok(());
                }
                _ => {}
            }
        }
    }

    /// One unmasked final frame (a server's, RFC 6455 §5.1).
    fn frame(opcode: u8, payload: &[u8]) -> Bytes {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= usize::from(u16::MAX) => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        Bytes::from(out)
    }
}
