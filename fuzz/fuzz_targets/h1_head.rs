//! The HTTP/1.1 fast path's own parsing (divert_proxy::h1): request and
//! response heads, and the chunked body scanner. Beyond not panicking:
//! every head the fast path takes is written so that the same parser reads
//! back the same request (method, target, Host, framing), and a chunked
//! body ends at the same byte however its bytes are split between reads.
//! The end-to-end target (http1_request) drives the same code through a
//! real listener; this one reaches the corners of each parser faster.
#![no_main]

use divert_proxy::h1::chunked::Chunked;
use divert_proxy::h1::head::{self, Edits, MAX_HEADERS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    requests(data);
    responses(data, cut & 1 == 1);
    chunks(data, usize::from(cut));
});

fn requests(data: &[u8]) {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (head::Request::Ready(h), fields) = head::parse_request(data, &mut fields) else {
        return;
    };
    let edits = Edits {
        baggage_member: Some(("okteto-divert", "alice")),
        drop: &["divert-inbound-hop", "divert-outbound-hop"],
        add: Some(("divert-inbound-hop", "1")),
    };
    assert!(
        h.target.parse::<http::Uri>().is_ok(),
        "a target the fast path takes is one the next hop's parser takes: {:?}",
        h.target
    );
    let mut out = Vec::new();
    head::write_request(&mut out, &h, fields, &edits);
    let mut again = [httparse::EMPTY_HEADER; MAX_HEADERS + 3];
    match head::parse_request(&out, &mut again).0 {
        head::Request::Ready(w) => {
            assert_eq!(w.len, out.len(), "the written head is one whole head");
            assert_eq!((w.method, w.target, w.host), (h.method, h.target, h.host));
            assert_eq!(w.framing, h.framing, "the body is framed the same way");
        }
        other => panic!("the forwarded head does not read back: {other:?}"),
    }
}

fn responses(data: &[u8], head_request: bool) {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Ok(Some((h, fields))) = head::parse_response(data, &mut fields, head_request) else {
        return;
    };
    let mut out = Vec::new();
    head::write_response(&mut out, &h, fields, h.close);
    let mut again = [httparse::EMPTY_HEADER; MAX_HEADERS + 1];
    match head::parse_response(&out, &mut again, head_request) {
        Ok(Some((w, _))) => {
            assert_eq!(w.len, out.len());
            assert_eq!(w.status, h.status);
            assert_eq!(
                w.framing, h.framing,
                "the client reads the body as the proxy did"
            );
        }
        other => panic!("the forwarded response head does not read back: {other:?}"),
    }
}

fn chunks(data: &[u8], cut: usize) {
    let mut whole = Chunked::new();
    let all = whole.scan(data);
    let cut = cut.min(data.len());
    let mut split = Chunked::new();
    let pieces = split
        .scan(&data[..cut])
        .and_then(|a| split.scan(&data[cut..]).map(|b| a + b));
    match (all, pieces) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            assert_eq!(whole.is_done(), split.is_done());
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("whole {a:?} and split {b:?} disagree"),
    }
}
