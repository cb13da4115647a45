//! HTTP's rules as Divert applies them, written once. The proxy has two
//! HTTP paths: the general stack ([`crate::http`], hyper: HTTP/2, gRPC
//! and the HTTP/1.1 requests the fast path hands over) and the HTTP/1.1
//! fast path ([`crate::h1`], raw heads). Each reads and writes messages its
//! own way, but every rule that decides what a message means or becomes is
//! asked here, so the two cannot drift apart: a difference between them in
//! where a message ends is a request nobody routed (request smuggling).
//!
//! - [`fields`]: which fields describe one hop, `Connection` nominations,
//!   tokens, transfer codings.
//! - [`answer`]: why the proxy answers a request itself, and the answer:
//!   status, metric, cause, and its bytes for either path (with gRPC's
//!   trailers-only form).
//! - [`edits`]: what the proxy changes in a request on its way: the hop
//!   marks, and an edge key (a preview host's, or the key cookie's)
//!   joining the baggage.
//! - [`cookie`]: the key cookie and the parameter that sets it.
//! - Here: gRPC detection and idempotency.

pub mod answer;
pub mod cookie;
pub mod edits;
pub mod fields;

/// Whether a `Content-Type` value says gRPC (`application/grpc`, with any
/// `+proto` or `+json` suffix): its calls get gRPC's deadlines and
/// trailers-only error answers, and its statuses in `grpc-status`.
pub fn is_grpc(content_type: &[u8]) -> bool {
    content_type.starts_with(b"application/grpc")
}

/// Whether a method is idempotent (RFC 9110 §9.2.2): a bodiless request
/// with one may be sent again when a reused upstream connection fails
/// under it (the upstream may close an idle connection just as a request
/// goes out on it).
pub fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_methods_rfc_9110_calls_idempotent_are_replayed() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(m.as_bytes()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "get", "PROPFIND"] {
            assert!(!is_idempotent(m.as_bytes()), "{m}");
        }
    }

    #[test]
    fn grpc_is_known_by_its_content_type_with_any_suffix() {
        assert!(is_grpc(b"application/grpc"));
        assert!(is_grpc(b"application/grpc+proto"));
        assert!(!is_grpc(b"application/json"));
        assert!(!is_grpc(b"text/application/grpc"));
    }
}
