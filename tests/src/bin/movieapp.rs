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
//!   whose replies carry the service, namespace and baggage.

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
            let svc = service_fn(move |req: Request<Incoming>| {
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
                    Ok(answer(req, &text, &client).await)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
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
