//! Which header fields describe one hop, and which no message can make so:
//! the one answer both HTTP/1.1 paths ([`crate::h1`] and [`crate::http`])
//! ask, so that they cannot drift apart.
//!
//! RFC 9110 §7.6.1 lets a sender name fields in `Connection`, and an
//! intermediary drops every field so named before it forwards the message.
//! A field the message is framed or routed by must never go that way: a
//! request framed by its `Content-Length` and forwarded without it ends,
//! for the next hop, where the proxy's framing did not, and the rest of
//! its body is read as a request that no routing, tap or metric ever saw
//! (request smuggling). So a nomination of a [protected](is_protected)
//! field is ignored: the field stays, and the framing decided when the
//! message was read is the one the next hop gets. Refusing the message
//! instead would break clients that list such fields harmlessly, for no
//! gain; nginx and HAProxy do not act on nominations at all, and Envoy
//! acts only on `TE`'s.

use divert_core::names::header::{INBOUND_HOP, OUTBOUND_HOP};

/// Fields every hop drops whatever `Connection` says (RFC 9110 §7.6.1,
/// RFC 9112 §6.1): the connection's own options. `Transfer-Encoding` is
/// not here: what it says about the body's codings is end to end, and each
/// path decides how it is forwarded ([`forwarded_codings`]).
const ALWAYS: [&str; 3] = ["connection", "keep-alive", "proxy-connection"];

/// Fields the message is framed or routed by: a `Connection` nomination of
/// one is ignored (see the module docs).
const PROTECTED: [&str; 7] = [
    "content-length",
    "transfer-encoding",
    "host",
    "baggage",
    "cookie",
    INBOUND_HOP,
    OUTBOUND_HOP,
];

/// Whether a `Connection` nomination of `name` is ignored.
pub fn is_protected(name: &[u8]) -> bool {
    PROTECTED
        .iter()
        .any(|p| name.eq_ignore_ascii_case(p.as_bytes()))
}

/// Whether the field `name` (with `value`) describes one hop, given the
/// values of the message's `Connection` fields: one of [`ALWAYS`], a `TE`
/// other than `trailers` (gRPC's, end to end), or a field `Connection`
/// names that is not [protected](is_protected). `Transfer-Encoding` is
/// left to the caller.
pub fn is_hop_by_hop<'v>(
    name: &[u8],
    value: &[u8],
    connection: impl IntoIterator<Item = &'v [u8]>,
) -> bool {
    if ALWAYS
        .iter()
        .any(|a| name.eq_ignore_ascii_case(a.as_bytes()))
    {
        return true;
    }
    if name.eq_ignore_ascii_case(b"te") {
        return !value.trim_ascii().eq_ignore_ascii_case(b"trailers");
    }
    !is_protected(name) && connection.into_iter().any(|c| has_token(c, name))
}

/// A comma-separated list (`Connection`, `Transfer-Encoding`) holds
/// `token`, in any case.
pub fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether `list` is a list of transfer codings every parser reads alike:
/// comma-separated RFC 9110 tokens (§5.6.2), no parameters, at least one.
/// Anything else (a byte outside the token characters, an empty element)
/// is a message the next hop may frame otherwise or refuse, so it goes no
/// further as it came.
pub fn is_coding_list(list: &[u8]) -> bool {
    list.split(|&b| b == b',').all(|c| {
        let c = c.trim_ascii();
        !c.is_empty()
            && c.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    })
}

/// Whether a `Transfer-Encoding` list ends in `chunked` (RFC 9112 §6.3:
/// only then is a body framed by it; a response otherwise runs to the
/// close).
pub fn ends_in_chunked(list: &[u8]) -> bool {
    list.rsplit(|&b| b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The codings of a `Transfer-Encoding` list that the next hop must still
/// be told of once the body has been unchunked by this hop: the list
/// without its final `chunked` (`gzip, chunked` → `gzip`), or `None` if
/// nothing is left. A body re-framed by the next hop's own chunking keeps
/// its other codings, so the client can still decode what it gets.
pub fn forwarded_codings(list: &[u8]) -> Option<&[u8]> {
    let list = list.trim_ascii();
    let rest = if ends_in_chunked(list) {
        match list.iter().rposition(|&b| b == b',') {
            Some(comma) => list[..comma].trim_ascii(),
            None => &[],
        }
    } else {
        list
    };
    (!rest.is_empty()).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(name: &str, value: &str, connection: &[&str]) -> bool {
        is_hop_by_hop(
            name.as_bytes(),
            value.as_bytes(),
            connection.iter().map(|c| c.as_bytes()),
        )
    }

    #[test]
    fn a_connection_nomination_drops_a_field_but_never_a_framing_or_routing_one() {
        let conn = [
            "close, X-Hop",
            "Content-Length, transfer-encoding, Host, BAGGAGE, divert-inbound-hop",
            "Cookie, divert-outbound-hop",
        ];
        assert!(hop("x-hop", "1", &conn));
        assert!(hop("X-HOP", "1", &conn));
        for kept in [
            "content-length",
            "Transfer-Encoding",
            "host",
            "baggage",
            "Divert-Inbound-Hop",
            "cookie",
            "divert-outbound-hop",
        ] {
            assert!(!hop(kept, "1", &conn), "{kept}");
        }
        assert!(!hop("x-end", "1", &conn));
    }

    #[test]
    fn the_connections_own_options_are_always_one_hops() {
        for name in ["Connection", "keep-alive", "Proxy-Connection"] {
            assert!(hop(name, "x", &[]), "{name}");
        }
        assert!(hop("te", "gzip", &[]));
        assert!(!hop("TE", " trailers ", &[]));
    }

    #[test]
    fn only_token_codings_are_a_coding_list() {
        for good in [
            "chunked",
            "gzip, chunked",
            "x-gzip,chunked",
            " deflate ,  chunked ",
        ] {
            assert!(is_coding_list(good.as_bytes()), "{good}");
        }
        // Found by the http1_request fuzz target: bytes past ASCII before
        // the final chunked, which hyper refuses.
        for bad in [
            &b"\xaact\xe1, chunked"[..],
            b"gzip;q=1, chunked",
            b", chunked",
            b"",
            b"gzip chunked",
        ] {
            assert!(!is_coding_list(bad), "{bad:?}");
        }
    }

    #[test]
    fn codings_other_than_the_final_chunked_are_forwarded() {
        let fwd = |v: &str| {
            forwarded_codings(v.as_bytes()).map(|c| String::from_utf8_lossy(c).into_owned())
        };
        assert_eq!(fwd("chunked"), None);
        assert_eq!(fwd(" Chunked "), None);
        assert_eq!(fwd("gzip, chunked"), Some("gzip".into()));
        assert_eq!(fwd("gzip,deflate ,chunked"), Some("gzip,deflate".into()));
        assert_eq!(fwd("gzip"), Some("gzip".into()));
        assert!(ends_in_chunked(b"gzip, chunked"));
        assert!(!ends_in_chunked(b"chunked, gzip"));
    }
}
