//! W3C Baggage: finding the divert key in a request's `baggage` headers.
//!
//! The grammar (W3C Baggage, "Header Content"):
//!
//! ```text
//! baggage-string = list-member *( OWS "," OWS list-member )
//! list-member    = key OWS "=" OWS value *( OWS ";" OWS property )
//! property       = key OWS "=" OWS value / key OWS
//! key            = token
//! value          = *baggage-octet     ; percent-encoded UTF-8
//! ```
//!
//! Several `baggage` headers are one list, in order. Any input past the limits
//! (64 members, 8192 bytes) or not matching the grammar is *rejected*: the caller
//! treats it as carrying no key. Nothing here allocates unless the key's value is
//! percent-encoded.

use std::borrow::Cow;

/// The most list-members a baggage list may hold.
pub const MAX_MEMBERS: usize = 64;
/// The most bytes all `baggage` header values may hold together (including the
/// commas that join several headers).
pub const MAX_BYTES: usize = 8192;

/// What looking for a key in the baggage found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The first member with the key; its value percent-decoded.
    Found(Cow<'a, str>),
    /// Well-formed baggage (or none at all) without the key.
    Absent,
    /// The baggage was unusable as a whole; treat as no key.
    Rejected(Rejection),
}

/// Why a baggage list was rejected. Kept small and closed so it can label metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Rejection {
    #[error("more than {MAX_MEMBERS} list members")]
    TooManyMembers,
    #[error("more than {MAX_BYTES} bytes")]
    TooLong,
    #[error("malformed list member")]
    Malformed,
    #[error("value is not valid percent-encoded UTF-8")]
    BadEncoding,
}

impl Rejection {
    /// A stable, lowercase name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::TooManyMembers => "too_many_members",
            Rejection::TooLong => "too_long",
            Rejection::Malformed => "malformed",
            Rejection::BadEncoding => "bad_encoding",
        }
    }
}

/// Finds `key` in the baggage list made of `values` (each one `baggage` header
/// value, in the order they arrived). The whole list is validated: a malformed
/// member anywhere rejects it, even after the key was seen.
pub fn lookup<'a, I>(values: I, key: &str) -> Lookup<'a>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut total = 0usize;
    let mut members = 0usize;
    let mut found: Option<&'a [u8]> = None;
    for (i, value) in values.into_iter().enumerate() {
        // Several headers are joined with ",": count that byte too.
        total += value.len() + usize::from(i > 0);
        if total > MAX_BYTES {
            return Lookup::Rejected(Rejection::TooLong);
        }
        for raw in value.split(|&b| b == b',') {
            let member = trim_ows(raw);
            // HTTP lists tolerate empty elements ("a=1,,b=2"); they are not members.
            if member.is_empty() {
                continue;
            }
            members += 1;
            if members > MAX_MEMBERS {
                return Lookup::Rejected(Rejection::TooManyMembers);
            }
            let Some((k, v)) = parse_member(member) else {
                return Lookup::Rejected(Rejection::Malformed);
            };
            if found.is_none() && k == key.as_bytes() {
                found = Some(v);
            }
        }
    }
    match found {
        None => Lookup::Absent,
        Some(v) => match divert_core::percent::decode(v) {
            Some(s) => Lookup::Found(s),
            None => Lookup::Rejected(Rejection::BadEncoding),
        },
    }
}

/// Splits one trimmed, non-empty list member into key and raw value, checking the
/// grammar of the member and of its properties.
fn parse_member(member: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut parts = member.split(|&b| b == b';');
    let kv = parts.next()?;
    let eq = kv.iter().position(|&b| b == b'=')?;
    let key = trim_ows(&kv[..eq]);
    let value = trim_ows(&kv[eq + 1..]);
    if !is_token(key) || !value.iter().all(|&b| is_baggage_octet(b)) {
        return None;
    }
    for prop in parts {
        let prop = trim_ows(prop);
        match prop.iter().position(|&b| b == b'=') {
            None => {
                if !is_token(prop) {
                    return None;
                }
            }
            Some(eq) => {
                let pk = trim_ows(&prop[..eq]);
                let pv = trim_ows(&prop[eq + 1..]);
                if !is_token(pk) || !pv.iter().all(|&b| is_baggage_octet(b)) {
                    return None;
                }
            }
        }
    }
    Some((key, value))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// RFC 9110 token: one or more tchar.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// baggage-octet: printable US-ASCII except space, `"`, `,`, `;` and `\`.
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K: &str = "okteto-divert";

    fn one(s: &str) -> Lookup<'_> {
        lookup([s.as_bytes()], K)
    }

    fn found(s: &str) -> Lookup<'_> {
        Lookup::Found(Cow::Borrowed(s))
    }

    #[test]
    fn finds_the_key_among_members() {
        assert_eq!(one("okteto-divert=alice"), found("alice"));
        assert_eq!(one("a=1,okteto-divert=bob,c=3"), found("bob"));
        assert_eq!(one("a=1"), Lookup::Absent);
        assert_eq!(one(""), Lookup::Absent);
        assert_eq!(lookup(std::iter::empty(), K), Lookup::Absent);
    }

    #[test]
    fn spec_examples() {
        // The examples of the W3C Baggage specification.
        let h = "key1=value1,key2=value2";
        assert_eq!(lookup([h.as_bytes()], "key2"), found("value2"));
        let h = "key1 = value1, key2 = value2";
        assert_eq!(lookup([h.as_bytes()], "key1"), found("value1"));
        let h = "key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue";
        assert_eq!(lookup([h.as_bytes()], "key1"), found("value1"));
        assert_eq!(lookup([h.as_bytes()], "key3"), found("value3"));
        let h = "userId=alice,serverNode=DF%2028,isProduction=false";
        assert_eq!(
            lookup([h.as_bytes()], "serverNode"),
            Lookup::Found(Cow::Owned("DF 28".to_string()))
        );
        let h = "key1=value1;property1;property2, key2 = value2";
        assert_eq!(lookup([h.as_bytes()], "key2"), found("value2"));
    }

    #[test]
    fn several_headers_are_one_list() {
        let hs: [&[u8]; 3] = [b"a=1", b"b=2, okteto-divert=carla", b"okteto-divert=dave"];
        assert_eq!(lookup(hs, K), found("carla"), "the first member wins");
    }

    #[test]
    fn whitespace_and_properties() {
        assert_eq!(one(" \tokteto-divert \t= alice \t"), found("alice"));
        assert_eq!(one("okteto-divert=alice;ttl=3;flag"), found("alice"));
        assert_eq!(one("okteto-divert=alice ; p = v"), found("alice"));
        assert_eq!(one("a=1,,okteto-divert=alice,"), found("alice"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            one("okteto-divert=al%69ce"),
            Lookup::Found(Cow::Owned("alice".into()))
        );
        assert_eq!(
            one("okteto-divert=%E2%9C%93"),
            Lookup::Found(Cow::Owned("\u{2713}".into()))
        );
        assert_eq!(
            one("okteto-divert=%zz"),
            Lookup::Rejected(Rejection::BadEncoding)
        );
        assert_eq!(
            one("okteto-divert=%4"),
            Lookup::Rejected(Rejection::BadEncoding)
        );
        assert_eq!(
            one("okteto-divert=%FF"),
            Lookup::Rejected(Rejection::BadEncoding)
        );
        // A bad encoding in a member we do not look at does not matter.
        assert_eq!(one("x=%zz,okteto-divert=a"), found("a"));
    }

    #[test]
    fn malformed_input_is_rejected_as_a_whole() {
        for bad in [
            "okteto-divert",
            "=alice",
            "okteto-divert=al ice",
            "okteto-divert=\"alice\"",
            "okteto divert=alice",
            "okteto-divert=alice;=x",
            "okteto-divert=alice;p=a b",
            "okteto-divert=alice,garbage",
            "garbage,okteto-divert=alice",
            "okteto-divert=ali\\ce",
        ] {
            assert_eq!(one(bad), Lookup::Rejected(Rejection::Malformed), "{bad:?}");
        }
        // The old, wrong header forms of the docs.
        assert_eq!(
            one("baggage.okteto-divert=alice"),
            Lookup::Absent,
            "a different key"
        );
    }

    /// The limits ARCHITECTURE.md promises (64 members, 8192 bytes), written
    /// out so that the code and the docs cannot drift apart unnoticed.
    #[test]
    fn limits() {
        let at_limit: String = (0..63)
            .map(|i| format!("k{i}=v"))
            .chain(std::iter::once("okteto-divert=alice".to_string()))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(one(&at_limit), found("alice"));
        let over = format!("{at_limit},one=more");
        assert_eq!(one(&over), Lookup::Rejected(Rejection::TooManyMembers));

        let long_value = "x".repeat(8192 - "okteto-divert=".len());
        let exactly = format!("okteto-divert={long_value}");
        assert_eq!(exactly.len(), 8192);
        assert!(matches!(one(&exactly), Lookup::Found(_)));
        let over = format!("{exactly}x");
        assert_eq!(one(&over), Lookup::Rejected(Rejection::TooLong));
        // The separator between two headers counts.
        let half = "a=".to_string() + &"x".repeat(8192 / 2 - 2);
        assert_eq!(
            lookup([half.as_bytes(), half.as_bytes()], K),
            Lookup::Rejected(Rejection::TooLong)
        );
    }

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9!#$&'*+.^_`|~-]{1,12}"
    }

    fn value() -> impl Strategy<Value = String> {
        // Any baggage-octets; "%" only as part of a valid escape.
        prop::collection::vec(
            prop_oneof![
                "[!#$&'()*+\\-./0-9:<=>?@A-Z\\[\\]^_`a-z{|}~]".prop_map(|s| s),
                "%[0-7][0-9A-F]".prop_map(|s| s),
            ],
            0..8,
        )
        .prop_map(|v| v.concat())
    }

    fn ows() -> impl Strategy<Value = String> {
        "[ \t]{0,2}"
    }

    fn member() -> impl Strategy<Value = String> {
        (
            token(),
            value(),
            ows(),
            ows(),
            prop::collection::vec((token(), prop::option::of(value())), 0..3),
        )
            .prop_map(|(k, v, a, b, props)| {
                let mut m = format!("{k}{a}={b}{v}");
                for (pk, pv) in props {
                    match pv {
                        Some(pv) => m.push_str(&format!("{a};{b}{pk}={pv}")),
                        None => m.push_str(&format!(";{pk}")),
                    }
                }
                m
            })
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(headers in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..4)) {
            let _ = lookup(headers.iter().map(Vec::as_slice), K);
        }

        #[test]
        fn a_well_formed_member_is_always_found(
            before in prop::collection::vec(member(), 0..20),
            after in prop::collection::vec(member(), 0..20),
            ns in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
            pad in ows(),
        ) {
            // Other members must not use our key, or they would win.
            let before: Vec<_> = before.into_iter().filter(|m| !m.starts_with(K)).collect();
            let mut all = before.clone();
            all.push(format!("{pad}{K}{pad}={pad}{ns};p=1{pad}"));
            all.extend(after);
            let header = all.join(&format!("{pad},{pad}"));
            prop_assert_eq!(lookup([header.as_bytes()], K), Lookup::Found(Cow::Borrowed(ns.as_str())));
        }

        #[test]
        fn percent_encoded_values_round_trip(s in "\\PC{0,16}") {
            let enc: String = s.bytes().map(|b| format!("%{b:02X}")).collect();
            let header = format!("{K}={enc}");
            let got = lookup([header.as_bytes()], K);
            prop_assert_eq!(got, Lookup::Found(Cow::Owned(s)));
        }
    }
}
