//! HTTP/1.1 message heads on the fast path: parsing them (httparse, the
//! parser hyper uses), deciding how their bodies are framed (RFC 9112 §6),
//! and writing the head the next hop gets.
//!
//! A request head the fast path does not take is not an error here: it is
//! a [`Handoff`], and the connection goes to the general HTTP stack, which
//! answers it as it always has (400, 431, 501, 100-continue, upgrades). So
//! this module only needs to be sure about the common case, and it can be:
//! an origin-form HTTP/1.1 request with one Host, framed by one
//! Content-Length or by one `Transfer-Encoding` that ends in `chunked`.
//!
//! The framing decided here is the one the next hop gets: the fields it was
//! decided by are never dropped, whatever `Connection` names
//! ([`crate::semantics::fields`]).

use crate::semantics::edits::{self as baggage_edit, Join};
use crate::semantics::{self, fields};

/// Header fields parsed per head, as hyper allows; past it a request is
/// handed off (hyper answers 431) and a response is refused (502).
pub const MAX_HEADERS: usize = 100;

/// Why a request head goes to the general HTTP stack instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// Not a valid head, or too many fields: hyper answers 400 or 431.
    Malformed,
    /// HTTP/1.0 (its own keep-alive rules).
    Http10,
    /// CONNECT, `*`, an absolute-form target, or one with a byte outside
    /// RFC 3986's path and query characters (a fragment, `<`, raw UTF-8):
    /// hyper refuses or re-encodes those, and so must decide.
    Target,
    /// No Host, or more than one.
    Host,
    /// `Upgrade` (WebSocket and friends) or `Expect` (100-continue).
    UpgradeOrExpect,
    /// Anything but one valid Content-Length, or one `Transfer-Encoding`
    /// that ends in `chunked`.
    Framing,
    /// `content-type: application/grpc` over HTTP/1.1 (deadlines, trailers).
    Grpc,
    /// The key cookie or `?divert=`, from a caller without a sidecar where
    /// the shared namespace allows it: the general stack answers, or keys
    /// the request and keeps its response out of caches.
    KeyCookie,
}

impl Handoff {
    pub fn as_str(self) -> &'static str {
        match self {
            Handoff::Malformed => "malformed",
            Handoff::Http10 => "http/1.0",
            Handoff::Target => "target",
            Handoff::Host => "host",
            Handoff::UpgradeOrExpect => "upgrade or expect",
            Handoff::Framing => "framing",
            Handoff::Grpc => "grpc",
            Handoff::KeyCookie => "key cookie",
        }
    }
}

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding, forwarded as it came.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// A request head the fast path takes.
#[derive(Debug)]
pub struct RequestHead<'b> {
    /// Bytes of the head, the empty line included.
    pub len: usize,
    pub method: &'b str,
    /// Origin form: starts with `/`.
    pub target: &'b str,
    pub host: &'b str,
    pub framing: Framing,
    /// The client asked to close after this exchange.
    pub close: bool,
}

/// The outcome of reading a request head from what has arrived so far.
#[derive(Debug)]
pub enum Request<'b> {
    /// More bytes are needed.
    Partial,
    Handoff(Handoff),
    Ready(RequestHead<'b>),
}

/// Whether `buf` may hold a whole head: an empty line has come (LF or
/// CRLF line ends, as httparse reads them). Cheap enough to ask after every
/// read; [`parse_request`] is the judge. The usual head ends the buffer,
/// so the end is looked at first.
pub fn may_be_whole(buf: &[u8]) -> bool {
    buf.ends_with(b"\n\n")
        || buf.ends_with(b"\n\r\n")
        || buf
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' && matches!(&buf[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

/// Parses the request head at the start of `buf`, with `fields` as room
/// for its header fields.
pub fn parse_request<'b, 'h>(
    buf: &'b [u8],
    fields: &'h mut [httparse::Header<'b>],
) -> (Request<'b>, &'h [httparse::Header<'b>]) {
    let mut req = httparse::Request::new(fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return (Request::Partial, &[]),
        Err(_) => return (Request::Handoff(Handoff::Malformed), &[]),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return (Request::Handoff(Handoff::Malformed), &[]);
    };
    let fields: &'h [httparse::Header<'b>] = req.headers;
    let head = classify_request(len, method, target, version, fields);
    (head, fields)
}

fn classify_request<'b>(
    len: usize,
    method: &'b str,
    target: &'b str,
    version: u8,
    fields: &[httparse::Header<'b>],
) -> Request<'b> {
    if version != 1 {
        return Request::Handoff(Handoff::Http10);
    }
    if method == "CONNECT" || !target.starts_with('/') || !is_plain_target(target) {
        return Request::Handoff(Handoff::Target);
    }
    let mut host = None;
    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut lengths = 0;
    let mut chunked = false;
    let mut codings = 0;
    let mut close = false;
    for f in fields {
        let name = f.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host = std::str::from_utf8(f.value).ok();
        } else if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            length = parse_length(f.value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Codings before the final chunked (`gzip, chunked`) go on as
            // they came, with the body (RFC 9112 §6.1).
            codings += 1;
            chunked = fields::is_coding_list(f.value) && fields::ends_in_chunked(f.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= fields::has_token(f.value, b"close");
            if fields::has_token(f.value, b"upgrade") {
                return Request::Handoff(Handoff::UpgradeOrExpect);
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"expect") {
            return Request::Handoff(Handoff::UpgradeOrExpect);
        } else if name.eq_ignore_ascii_case(b"content-type") && semantics::is_grpc(f.value) {
            return Request::Handoff(Handoff::Grpc);
        }
    }
    let Some(host) = host.filter(|_| hosts == 1) else {
        return Request::Handoff(Handoff::Host);
    };
    let framing = match (lengths, codings) {
        (0, 0) => Framing::Empty,
        (1, 0) => match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => return Request::Handoff(Handoff::Framing),
        },
        (0, 1) if chunked => Framing::Chunked,
        _ => return Request::Handoff(Handoff::Framing),
    };
    Request::Ready(RequestHead {
        len,
        method,
        target,
        host,
        framing,
        close,
    })
}

/// A response head from the upstream.
#[derive(Debug)]
pub struct ResponseHead<'b> {
    pub len: usize,
    pub status: u16,
    pub reason: &'b str,
    pub framing: Framing,
    /// The upstream will close (or may: HTTP/1.0) after this response.
    pub close: bool,
}

/// Why a response head is refused (502 to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    #[error("the upstream's response head is malformed")]
    Malformed,
    #[error("the upstream's response head is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the upstream's response has an invalid or conflicting Content-Length")]
    Length,
    #[error("the upstream's response has a Transfer-Encoding that is not a list of codings")]
    Codings,
    #[error("the upstream closed the connection before a whole response head")]
    Closed,
}

/// Parses the response head at the start of `buf`; `None` if more bytes
/// are needed. `head_request`: the request was HEAD (no body follows,
/// whatever the head says).
pub fn parse_response<'b, 'h>(
    buf: &'b [u8],
    fields: &'h mut [httparse::Header<'b>],
    head_request: bool,
) -> Result<Option<(ResponseHead<'b>, &'h [httparse::Header<'b>])>, BadResponse> {
    let mut resp = httparse::Response::new(fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse::Malformed),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(BadResponse::Malformed);
    };
    let reason = resp.reason.unwrap_or("");
    let fields: &'h [httparse::Header<'b>] = resp.headers;
    let mut length: Option<u64> = None;
    let mut bad_length = false;
    let mut coded = false;
    let mut chunked_last = false;
    let mut close = version == 0;
    for f in fields {
        let name = f.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // Repeats of one value are one value (RFC 9110 §8.6).
            for v in f.value.split(|&b| b == b',') {
                match (parse_length(v.trim_ascii()), length) {
                    (Some(n), None) => length = Some(n),
                    (Some(n), Some(m)) if n == m => {}
                    _ => bad_length = true,
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !fields::is_coding_list(f.value) {
                return Err(BadResponse::Codings);
            }
            coded = true;
            chunked_last = fields::ends_in_chunked(f.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            if fields::has_token(f.value, b"close") {
                close = true;
            } else if version == 0 && fields::has_token(f.value, b"keep-alive") {
                close = false;
            }
        }
    }
    let no_body = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if no_body {
        Framing::Empty
    } else if coded {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3 item 3);
        // without chunked last, the body runs to the close.
        if chunked_last {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if bad_length {
        return Err(BadResponse::Length);
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    Ok(Some((
        ResponseHead {
            len,
            status,
            reason,
            framing,
            close: close || framing == Framing::UntilClose,
        },
        fields,
    )))
}

/// Changes to a request head on its way upstream, besides the hop-by-hop
/// fields every hop drops.
#[derive(Debug, Default, Clone, Copy)]
pub struct Edits<'a> {
    /// `key=value` to add to the baggage (a preview host's key).
    pub baggage_member: Option<(&'a str, &'a str)>,
    /// Drop these fields (the marks, at the receiving pod).
    pub drop: &'a [&'a str],
    /// Add this field.
    pub add: Option<(&'a str, &'a str)>,
}

/// Writes the request head for the upstream into `out`: the request line,
/// every end-to-end field as it came (name case kept), the edits, the
/// empty line.
pub fn write_request(
    out: &mut Vec<u8>,
    head: &RequestHead<'_>,
    fields: &[httparse::Header<'_>],
    edits: &Edits<'_>,
) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let join = edits.baggage_member.map(|_| {
        baggage_edit::join(
            fields
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case("baggage"))
                .map(|f| f.value),
        )
    });
    for f in fields {
        // Transfer-Encoding is kept: only a chunked body (its codings said
        // as they came) has one here, forwarded chunk by chunk as it came.
        if is_hop_by_hop(f, fields) || edits.drop.iter().any(|d| f.name.eq_ignore_ascii_case(d)) {
            continue;
        }
        if let Some((k, v)) = edits.baggage_member
            && f.name.eq_ignore_ascii_case("baggage")
        {
            match join {
                Some(Join::Extend) => {
                    out.extend_from_slice(f.name.as_bytes());
                    out.extend_from_slice(b": ");
                    baggage_edit::extended(out, f.value, k, v);
                    out.extend_from_slice(b"\r\n");
                    continue;
                }
                Some(Join::Replace) => {
                    out.extend_from_slice(f.name.as_bytes());
                    out.extend_from_slice(b": ");
                    baggage_edit::member(out, k, v);
                    out.extend_from_slice(b"\r\n");
                    continue;
                }
                _ => {}
            }
        }
        push_field(out, f.name.as_bytes(), f.value);
    }
    if let Some((k, v)) = edits.baggage_member
        && join == Some(Join::Append)
    {
        out.extend_from_slice(b"baggage: ");
        baggage_edit::member(out, k, v);
        out.extend_from_slice(b"\r\n");
    }
    if let Some((name, value)) = edits.add {
        push_field(out, name.as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the response head for the client into `out`, in HTTP/1.1 (an
/// intermediary sends its own version, RFC 9110 §6.2), without the
/// hop-by-hop fields, and with `connection: close` when the client's
/// connection ends after it.
pub fn write_response(
    out: &mut Vec<u8>,
    head: &ResponseHead<'_>,
    fields: &[httparse::Header<'_>],
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let s = head.status;
    out.extend_from_slice(&[
        b'0' + (s / 100 % 10) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let coded = matches!(head.framing, Framing::Chunked | Framing::UntilClose);
    for f in fields {
        let name = f.name.as_bytes();
        // Transfer-Encoding goes as it came: a chunked body is forwarded as
        // it came, and a body that runs to the close keeps its codings
        // (`gzip`), so the client can decode it. A Content-Length beside
        // it must not go (RFC 9112 §6.3).
        let dropped_length = coded && name.eq_ignore_ascii_case(b"content-length");
        if dropped_length || is_hop_by_hop(f, fields) {
            continue;
        }
        push_field(out, name, f.value);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Fields that describe one hop ([`fields::is_hop_by_hop`]): Connection,
/// Keep-Alive, Proxy-Connection, TE unless it is `trailers`, and every
/// field Connection names but those framing and routing read.
fn is_hop_by_hop(f: &httparse::Header<'_>, all: &[httparse::Header<'_>]) -> bool {
    fields::is_hop_by_hop(
        f.name.as_bytes(),
        f.value,
        all.iter()
            .filter(|c| c.name.eq_ignore_ascii_case("connection"))
            .map(|c| c.value),
    )
}

/// Only RFC 3986 path and query characters (§3.3, §3.4: unreserved,
/// percent signs, sub-delims, `:`, `@`, `/`, `?`), each of which every
/// parser downstream reads the same: httparse alone lets more through than
/// the next hop may take.
fn is_plain_target(target: &str) -> bool {
    target.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
                    | b'?'
            )
    })
}

/// A Content-Length value: digits only, without overflow.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &str) -> Result<(RequestHead<'_>, Vec<u8>), Handoff> {
        request_with(raw, &Edits::default())
    }

    fn request_with<'b>(
        raw: &'b str,
        edits: &Edits<'_>,
    ) -> Result<(RequestHead<'b>, Vec<u8>), Handoff> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse_request(raw.as_bytes(), &mut fields) {
            (Request::Ready(h), f) => {
                let mut out = Vec::new();
                write_request(&mut out, &h, f, edits);
                Ok((h, out))
            }
            (Request::Handoff(why), _) => Err(why),
            (Request::Partial, _) => panic!("partial: {raw:?}"),
        }
    }

    fn response(raw: &str, head_request: bool) -> Result<(ResponseHead<'_>, String), BadResponse> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (h, f) =
            parse_response(raw.as_bytes(), &mut fields, head_request)?.expect("a whole head");
        let mut out = Vec::new();
        write_response(&mut out, &h, f, h.close);
        Ok((h, String::from_utf8(out).unwrap()))
    }

    #[test]
    fn a_plain_get_is_forwarded_as_it_came() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: api.staging\r\nbaggage: okteto-divert=alice\r\nX-Y: z\r\n\r\nrest";
        let (h, out) = request(raw).unwrap();
        assert_eq!(h.len, raw.len() - 4);
        assert_eq!(
            (h.method, h.target, h.host),
            ("GET", "/a?b=1", "api.staging")
        );
        assert_eq!(h.framing, Framing::Empty);
        assert!(!h.close);
        assert_eq!(out, raw.as_bytes()[..h.len]);
    }

    #[test]
    fn a_head_in_pieces_is_partial_until_its_empty_line() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: a\n\n",
        ] {
            for cut in 0..raw.len() {
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                assert!(
                    matches!(parse_request(&raw[..cut], &mut fields).0, Request::Partial),
                    "{cut}"
                );
                assert!(!may_be_whole(&raw[..cut]), "{cut}");
            }
            assert!(may_be_whole(raw));
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            assert!(matches!(
                parse_request(raw, &mut fields).0,
                Request::Ready(_)
            ));
            let mut pipelined = raw.to_vec();
            pipelined.extend_from_slice(b"GET /next HTTP/1.1\r\nHo");
            assert!(may_be_whole(&pipelined));
        }
    }

    #[test]
    fn bodies_are_framed_by_one_length_or_chunked_alone() {
        let framing = |fields: &str| {
            request(&format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n")).map(|(h, _)| h.framing)
        };
        assert_eq!(framing("Content-Length: 12\r\n"), Ok(Framing::Length(12)));
        assert_eq!(framing("Content-Length: 0\r\n"), Ok(Framing::Empty));
        assert_eq!(
            framing("Transfer-Encoding: Chunked\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing("Transfer-Encoding: gzip, chunked\r\n"),
            Ok(Framing::Chunked)
        );
        // Everything RFC 9112 §6 makes a judgement call of goes to hyper.
        for odd in [
            "Content-Length: 1\r\nContent-Length: 1\r\n",
            "Content-Length: 1, 1\r\n",
            "Content-Length: +1\r\n",
            "Content-Length: 99999999999999999999\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            "Transfer-Encoding: chunked, gzip\r\n",
            // Found by the http1_request fuzz target: not a list of tokens.
            "Transfer-Encoding: \u{aa}ct, chunked\r\n",
            "Transfer-Encoding: gzip;q=1, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ] {
            assert_eq!(framing(odd), Err(Handoff::Framing), "{odd:?}");
        }
    }

    #[test]
    fn what_the_fast_path_does_not_take_is_handed_off() {
        let cases = [
            ("GET / HTTP/1.0\r\nHost: a\r\n\r\n", Handoff::Http10),
            ("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", Handoff::Target),
            (
                "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
                Handoff::Target,
            ),
            ("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Handoff::Target),
            // Found by the http1_request fuzz target: httparse takes `<`,
            // hyper's upstream does not; the general stack answers 400.
            (
                "POT /?r%-%%<%%t HTTP/1.1\r\nHost: bnue\r\n\r\n",
                Handoff::Target,
            ),
            ("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", Handoff::Target),
            (
                "GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n",
                Handoff::Target,
            ),
            ("GET /{x}|^` HTTP/1.1\r\nHost: a\r\n\r\n", Handoff::Target),
            ("GET / HTTP/1.1\r\n\r\n", Handoff::Host),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                Handoff::Host,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                Handoff::UpgradeOrExpect,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, upgrade\r\n\r\n",
                Handoff::UpgradeOrExpect,
            ),
            (
                "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
                Handoff::UpgradeOrExpect,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\ncontent-type: application/grpc\r\n\r\n",
                Handoff::Grpc,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
                Handoff::Malformed,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n",
                Handoff::Malformed,
            ),
        ];
        for (raw, why) in cases {
            assert_eq!(request(raw).err(), Some(why), "{raw:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(
            request(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")).err(),
            Some(Handoff::Malformed)
        );
    }

    #[test]
    fn hop_by_hop_fields_are_dropped_and_connection_cannot_name_host_or_baggage() {
        let raw = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Hop, Host, Baggage\r\nX-Hop: 1\r\n\
                   Keep-Alive: 5\r\nProxy-Connection: x\r\nTE: gzip\r\nbaggage: okteto-divert=bob\r\nX-End: 2\r\n\r\n";
        let (h, out) = request(raw).unwrap();
        assert!(h.close);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nHost: a\r\nbaggage: okteto-divert=bob\r\nX-End: 2\r\n\r\n"
        );
        let (_, out) = request("GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n").unwrap();
        assert!(String::from_utf8(out).unwrap().contains("TE: trailers\r\n"));
        // A chunked body goes as it came, so its coding is said again.
        let (_, out) =
            request("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("Transfer-Encoding: chunked\r\n")
        );
    }

    #[test]
    fn connection_cannot_name_away_what_a_request_is_framed_or_routed_by() {
        let raw = "POST /outer HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\
                   Connection: content-length, transfer-encoding, host, baggage, divert-inbound-hop, x-hop\r\n\
                   baggage: k=v\r\ndivert-inbound-hop: 1\r\nx-hop: 1\r\n\r\n";
        let (h, out) = request(raw).unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /outer HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nbaggage: k=v\r\ndivert-inbound-hop: 1\r\n\r\n"
        );
        let raw = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nConnection: transfer-encoding\r\n\r\n";
        let (h, out) = request(raw).unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        );
    }

    #[test]
    fn connection_cannot_name_away_what_a_response_is_framed_by() {
        let (h, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: content-length\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((h.framing, h.close), (Framing::Length(2), false));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
        let (h, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    }

    #[test]
    fn a_body_coded_to_the_close_keeps_its_codings() {
        let (h, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 7\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((h.framing, h.close), (Framing::UntilClose, true));
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn a_preview_key_joins_the_baggage_the_request_has() {
        let edits = Edits {
            baggage_member: Some(("okteto-divert", "alice")),
            ..Edits::default()
        };
        let with = |fields: &str| {
            let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
            let raw: &'static str = Box::leak(raw.into_boxed_str());
            let (_, out) = request_with(raw, &edits).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(with("").ends_with("Host: a\r\nbaggage: okteto-divert=alice\r\n\r\n"));
        assert!(
            with("Baggage:  \r\n").ends_with("Host: a\r\nBaggage: okteto-divert=alice\r\n\r\n")
        );
        assert!(
            with("baggage: team=movies \r\n")
                .contains("baggage: team=movies,okteto-divert=alice\r\n")
        );
        let two = with("baggage: a=1\r\nbaggage: b=2\r\n");
        assert!(
            two.ends_with("baggage: a=1\r\nbaggage: b=2\r\nbaggage: okteto-divert=alice\r\n\r\n"),
            "{two}"
        );
    }

    #[test]
    fn the_marks_are_dropped_or_added() {
        let raw =
            "GET / HTTP/1.1\r\nHost: a\r\ndivert-inbound-hop: 1\r\nDivert-Outbound-Hop: 1\r\n\r\n";
        let drop = Edits {
            drop: &["divert-inbound-hop", "divert-outbound-hop"],
            ..Edits::default()
        };
        let (_, out) = request_with(raw, &drop).unwrap();
        assert_eq!(out, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let add = Edits {
            add: Some(("divert-inbound-hop", "1")),
            ..Edits::default()
        };
        let (_, out) = request_with("GET / HTTP/1.1\r\nHost: a\r\n\r\n", &add).unwrap();
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nHost: a\r\ndivert-inbound-hop: 1\r\n\r\n"
        );
    }

    #[test]
    fn response_framing_follows_rfc_9112_section_6_3() {
        let framing =
            |raw: &str, head: bool| response(raw, head).map(|(h, _)| (h.framing, h.close));
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(framing(ok, false), Ok((Framing::Length(5), false)));
        assert_eq!(framing(ok, true), Ok((Framing::Empty, false)));
        for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
            let raw = format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n");
            assert_eq!(
                framing(&raw, false),
                Ok((Framing::Empty, false)),
                "{status}"
            );
        }
        let both = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (h, out) = response(both, false).unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        let gzip = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(framing(gzip, false), Ok((Framing::UntilClose, true)));
        let none = "HTTP/1.1 200 OK\r\n\r\n";
        let (h, out) = response(none, false).unwrap();
        assert_eq!((h.framing, h.close), (Framing::UntilClose, true));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", false),
            Ok((Framing::Length(5), false))
        );
        for bad in ["5, 6", "-1", "5 5", ""] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(framing(&raw, false), Err(BadResponse::Length), "{bad:?}");
        }
        assert_eq!(
            framing("HTTP/1.1 2000 OK\r\n\r\n", false),
            Err(BadResponse::Malformed)
        );
    }

    #[test]
    fn an_http_1_0_or_closing_upstream_is_not_reused_and_the_client_gets_http_1_1() {
        let (h, out) = response("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).unwrap();
        assert!(h.close);
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        let (h, _) = response(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!h.close);
        let (h, out) = response(
            "HTTP/1.1 404 Not Found\r\nConnection: close\r\nKeep-Alive: 1\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(h.close);
        assert_eq!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nconnection: close\r\n\r\n"
        );
    }
}
