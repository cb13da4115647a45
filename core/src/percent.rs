//! Percent-decoding (RFC 3986 §2.1), for baggage values (W3C Baggage §3.2)
//! and admin query strings alike.

use std::borrow::Cow;

/// Percent-decodes `v` into UTF-8, borrowing when there is nothing to
/// decode. `None`: a `%` not followed by two hex digits, or bytes that do
/// not decode to UTF-8.
pub fn decode(v: &[u8]) -> Option<Cow<'_, str>> {
    if !v.contains(&b'%') {
        return std::str::from_utf8(v).ok().map(Cow::Borrowed);
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' {
            let hi = hex(*v.get(i + 1)?)?;
            let lo = hex(*v.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The value of one hexadecimal digit.
pub fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_are_borrowed_and_escapes_decoded() {
        assert!(matches!(decode(b"alice"), Some(Cow::Borrowed("alice"))));
        assert_eq!(decode(b"a%20b%2Fc").as_deref(), Some("a b/c"));
        assert_eq!(decode(b"%C3%A4").as_deref(), Some("ä"));
    }

    #[test]
    fn broken_escapes_and_bad_utf8_are_refused() {
        for bad in [&b"%"[..], b"%2", b"%zz", b"a%G0", b"%FF"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
