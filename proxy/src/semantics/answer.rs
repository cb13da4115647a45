//! The proxy's own answers: why it answers a request itself ([`Failure`]),
//! with which status, counted under which metric, and the answer's bytes
//! for either HTTP path. Both paths go through here, so a failure gets the
//! same status, the same count and the same text however it came.
//!
//! Every answer names what failed and why, in its body and in the
//! `divert-proxy-error` field. A gRPC call gets a trailers-only response
//! instead (status 200, `grpc-status`, `grpc-message`), as gRPC clients
//! read only those ("gRPC over HTTP2", "HTTP to gRPC Status Code Mapping").

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use divert_core::names::header::PROXY_ERROR;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::body::BodyError;
use crate::limits::Timeout;
use crate::metrics::{Metrics, UpstreamFailure};
use crate::upstream::UpstreamError;

/// [`PROXY_ERROR`], as hyper's header maps take it.
static PROXY_ERROR_NAME: HeaderName = HeaderName::from_static(PROXY_ERROR);

/// Why the cause of a 503: the service has no endpoints.
pub const NO_ENDPOINTS: &str = "the service has no endpoints";

/// Why a 101 becomes a 502: it would switch the client's connection to a
/// protocol it never offered (RFC 9110 §15.2.2: only in answer to an
/// `Upgrade` request).
pub const UNASKED_SWITCH: &str =
    "the upstream switched protocols (101) on a request that did not ask to upgrade";

/// Why the proxy answers a routed request itself.
#[derive(Debug)]
pub enum Failure<'e> {
    /// The chosen service has no endpoints: 503.
    NoEndpoints,
    /// The client's body failed (malformed, cut short, stalled): the
    /// client's fault, 400 or 408. A stall is counted where it is seen.
    Body(&'e BodyError),
    /// The upstream could not be reached or failed the exchange: 502.
    Upstream(&'e UpstreamError),
    /// No response head within this limit: 504.
    NoResponse(Duration),
    /// A `101` nobody asked for: 502.
    Switched,
}

impl Failure<'_> {
    /// The answer's status (for gRPC, mapped by [`grpc_status`]).
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::NoEndpoints => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Body(BodyError::Stalled(_)) => StatusCode::REQUEST_TIMEOUT,
            Failure::Body(_) => StatusCode::BAD_REQUEST,
            Failure::Upstream(_) | Failure::Switched => StatusCode::BAD_GATEWAY,
            Failure::NoResponse(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Counts the failure in its metric.
    pub fn count(&self, metrics: &Metrics) {
        match self {
            Failure::NoEndpoints => metrics.upstream_failure(UpstreamFailure::NoEndpoints),
            Failure::Body(_) => {}
            Failure::Upstream(e) => metrics.upstream_failure(upstream_failure(e)),
            Failure::NoResponse(_) => metrics.timeout(Timeout::ResponseHead),
            Failure::Switched => metrics.upstream_failure(UpstreamFailure::Request),
        }
    }

    /// What failed, as the answer names it: the request (its body), or the
    /// route's target and, once one was chosen, its endpoint.
    pub fn target(&self, route: &dyn fmt::Display, endpoint: Option<SocketAddr>) -> String {
        match (self, endpoint) {
            (Failure::Body(_), _) => "request".to_owned(),
            (_, Some(addr)) => format!("{route} ({addr})"),
            (_, None) => route.to_string(),
        }
    }
}

/// The cause, as the answer and the decision log say it.
impl fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoEndpoints => f.write_str(NO_ENDPOINTS),
            Failure::Body(e) => e.fmt(f),
            Failure::Upstream(e) => e.fmt(f),
            Failure::NoResponse(limit) => write!(f, "no response head within {limit:?}"),
            Failure::Switched => f.write_str(UNASKED_SWITCH),
        }
    }
}

/// The `upstream_connect_errors_total` or `upstream_request_errors_total`
/// label of an upstream failure.
pub fn upstream_failure(e: &UpstreamError) -> UpstreamFailure {
    use std::io::ErrorKind;
    match e {
        UpstreamError::ConnectTimeout(_) => UpstreamFailure::ConnectTimeout,
        UpstreamError::Connect(io) => match io.kind() {
            ErrorKind::ConnectionRefused => UpstreamFailure::ConnectRefused,
            ErrorKind::TimedOut => UpstreamFailure::ConnectTimeout,
            ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                UpstreamFailure::ConnectUnreachable
            }
            _ => UpstreamFailure::ConnectOther,
        },
        UpstreamError::Handshake(_) | UpstreamError::H2Handshake(_) => UpstreamFailure::Handshake,
        UpstreamError::Request(_)
        | UpstreamError::H2(_)
        | UpstreamError::Body(_)
        | UpstreamError::Exchange(_)
        | UpstreamError::Response(_) => UpstreamFailure::Request,
    }
}

/// The text of an answer: what failed, and why.
pub fn text(target: &str, cause: &dyn fmt::Display) -> String {
    format!("divert: {target}: {cause}")
}

/// An answer for the general stack: `text` in [`PROXY_ERROR`] and in the
/// body, or for gRPC a trailers-only response with the gRPC status of
/// `status` and `text` as its message.
pub fn response(status: StatusCode, text: &str, grpc: bool) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(text) {
        h.insert(&PROXY_ERROR_NAME, v);
    }
    if grpc {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static(grpc_status(status)));
        if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(text)) {
            h.insert("grpc-message", v);
        }
    } else {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        *resp.status_mut() = status;
        *resp.body_mut() = Full::new(Bytes::from(format!("{text}\n")));
    }
    resp
}

/// The same answer as [`response`] (never gRPC: the fast path hands gRPC
/// over), as HTTP/1.1 bytes in `out`; `close`: the connection ends after it.
pub fn write(out: &mut Vec<u8>, status: StatusCode, text: &str, close: bool) {
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    if HeaderValue::from_str(text).is_ok() {
        let _ = write!(out, "{PROXY_ERROR}: {text}\r\n");
    }
    let _ = write!(out, "content-length: {}\r\n", text.len() + 1);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(text.as_bytes());
    out.push(b'\n');
}

/// The gRPC status for one of the proxy's own HTTP answers, as gRPC maps
/// HTTP statuses ("HTTP to gRPC Status Code Mapping"), except that a timeout
/// is DEADLINE_EXCEEDED (4) and a refused method UNIMPLEMENTED (12).
fn grpc_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => "4",
        StatusCode::NOT_IMPLEMENTED => "12",
        StatusCode::BAD_REQUEST => "13",
        _ => "14",
    }
}

/// grpc-message is percent-encoded: everything outside printable ASCII, and '%'.
fn grpc_percent_encode(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_answers_are_trailers_only_unavailable() {
        let r = response(
            StatusCode::BAD_GATEWAY,
            &text("api.staging:80", &"connection refused"),
            true,
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(
            r.headers()["grpc-message"],
            "divert: api.staging:80: connection refused"
        );
        let r = response(StatusCode::BAD_GATEWAY, &text("x", &"50% \u{2713}"), true);
        assert_eq!(r.headers()["grpc-message"], "divert: x: 50%25 %E2%9C%93");
    }

    #[test]
    fn grpc_answers_carry_the_status_of_what_went_wrong() {
        let status = |s| {
            response(s, "y", true).headers()["grpc-status"]
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(status(StatusCode::GATEWAY_TIMEOUT), "4");
        assert_eq!(status(StatusCode::REQUEST_TIMEOUT), "4");
        assert_eq!(status(StatusCode::NOT_IMPLEMENTED), "12");
        assert_eq!(status(StatusCode::BAD_REQUEST), "13");
        assert_eq!(status(StatusCode::BAD_GATEWAY), "14");
        assert_eq!(status(StatusCode::SERVICE_UNAVAILABLE), "14");
    }

    #[test]
    fn both_paths_answer_with_the_same_status_field_and_body() {
        let t = text("api.staging:80", &"no endpoints");
        let r = response(StatusCode::SERVICE_UNAVAILABLE, &t, false);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.headers()["divert-proxy-error"],
            "divert: api.staging:80: no endpoints"
        );
        let mut out = Vec::new();
        write(&mut out, StatusCode::SERVICE_UNAVAILABLE, &t, false);
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(len) = parsed.parse(&out).unwrap() else {
            panic!("a whole head: {out:?}");
        };
        assert_eq!(parsed.code, Some(503));
        let field = |name: &str| {
            parsed
                .headers
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case(name))
                .map(|f| f.value.to_vec())
        };
        assert_eq!(
            field("divert-proxy-error").as_deref(),
            Some(r.headers()["divert-proxy-error"].as_bytes())
        );
        assert_eq!(
            field("content-type").as_deref(),
            Some(r.headers()["content-type"].as_bytes())
        );
        assert_eq!(&out[len..], b"divert: api.staging:80: no endpoints\n");
        assert_eq!(field("connection"), None);
        write(&mut out, StatusCode::BAD_REQUEST, &t, true);
        assert!(out.windows(19).any(|w| w == b"connection: close\r\n"));
    }

    #[test]
    fn each_failure_has_its_status_metric_and_target() {
        let metrics = std::sync::Arc::new(Metrics::default());
        let refused = UpstreamError::Connect(std::io::ErrorKind::ConnectionRefused.into());
        let stalled = BodyError::Stalled(Duration::from_secs(1));
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let cases = [
            (Failure::NoEndpoints, 503, "api.staging:80"),
            (Failure::Body(&BodyError::Closed), 400, "request"),
            (Failure::Body(&stalled), 408, "request"),
            (
                Failure::Upstream(&refused),
                502,
                "api.staging:80 (10.0.0.1:80)",
            ),
            (
                Failure::NoResponse(Duration::from_secs(2)),
                504,
                "api.staging:80 (10.0.0.1:80)",
            ),
            (Failure::Switched, 502, "api.staging:80 (10.0.0.1:80)"),
        ];
        for (failure, status, target) in &cases {
            assert_eq!(failure.status().as_u16(), *status, "{failure:?}");
            let endpoint = (!matches!(failure, Failure::NoEndpoints)).then_some(addr);
            assert_eq!(failure.target(&"api.staging:80", endpoint), *target);
            failure.count(&metrics);
        }
        assert_eq!(
            Failure::NoResponse(Duration::from_secs(2)).to_string(),
            "no response head within 2s"
        );
        assert_eq!(upstream_failure(&refused), UpstreamFailure::ConnectRefused);
        let text = crate::metrics::scrape(&metrics);
        for line in [
            "divert_proxy_upstream_connect_errors_total{reason=\"refused\"} 1",
            "divert_proxy_upstream_request_errors_total{reason=\"no_endpoints\"} 1",
            "divert_proxy_upstream_request_errors_total{reason=\"request\"} 1",
            "divert_proxy_timeouts_total{timeout=\"response_head\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
