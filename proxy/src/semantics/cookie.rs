//! The key cookie: a browser's key without an extension
//! (ARCHITECTURE.md, "The edge: the key cookie").
//!
//! Browsers cannot add a header to a page navigation or a WebSocket
//! handshake, but they send cookies with both. Where a shared namespace
//! allows it, `?divert=alice` on a GET or HEAD gets a `303` to the same
//! target without the parameter and a host-only cookie `divert=alice`;
//! later requests with the cookie and no key get alice's key, as a preview
//! host's requests do. `?divert=` clears the cookie.
//!
//! Here are the message rules, for both HTTP paths: finding the cookie
//! (RFC 6265 §4.2.1, over every `Cookie` field, which HTTP/2 may split:
//! RFC 9113 §8.2.3), finding the parameter in a query
//! (`application/x-www-form-urlencoded` pairs), the target without it, and
//! the `Set-Cookie` value (RFC 6265 §4.1). A value is a namespace name, so
//! anything that is not an RFC 1123 label is refused rather than decoded.

use std::time::Duration;

use divert_core::names::{KEY_COOKIE, check_dns_label};

/// Why a cookie or parameter was not used. Closed: it labels a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Not a namespace name (empty quotes, an encoded byte, upper case…).
    Malformed,
    /// Longer than a namespace name can be (63).
    TooLong,
    /// Two cookies or parameters of that name with different values.
    Ambiguous,
}

/// What became of a key cookie or parameter. Closed: it labels
/// `key_cookie_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `?divert=NS`: answered with the cookie set.
    Set,
    /// `?divert=`: answered with the cookie cleared.
    Cleared,
    /// The cookie gave a request its key.
    Applied,
    /// A bad cookie or parameter, ignored.
    Ignored(Bad),
    /// A cookie or parameter naming a namespace that is not a divert
    /// namespace of the pod's shared namespace, ignored.
    NotDivertNamespace,
    /// The parameter on a method other than GET or HEAD, ignored.
    Method,
}

impl Outcome {
    /// Every outcome, in the order of [`Outcome::index`].
    pub const ALL: [Outcome; 8] = [
        Outcome::Set,
        Outcome::Cleared,
        Outcome::Applied,
        Outcome::Ignored(Bad::Malformed),
        Outcome::Ignored(Bad::TooLong),
        Outcome::Ignored(Bad::Ambiguous),
        Outcome::NotDivertNamespace,
        Outcome::Method,
    ];

    pub const fn index(self) -> usize {
        match self {
            Outcome::Set => 0,
            Outcome::Cleared => 1,
            Outcome::Applied => 2,
            Outcome::Ignored(Bad::Malformed) => 3,
            Outcome::Ignored(Bad::TooLong) => 4,
            Outcome::Ignored(Bad::Ambiguous) => 5,
            Outcome::NotDivertNamespace => 6,
            Outcome::Method => 7,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Set => "set",
            Outcome::Cleared => "cleared",
            Outcome::Applied => "applied",
            Outcome::Ignored(Bad::Malformed) => "ignored_malformed",
            Outcome::Ignored(Bad::TooLong) => "ignored_too_long",
            Outcome::Ignored(Bad::Ambiguous) => "ignored_ambiguous",
            Outcome::NotDivertNamespace => "ignored_not_a_divert_namespace",
            Outcome::Method => "ignored_method",
        }
    }
}

/// The `divert` cookie of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cookie<'a> {
    /// None, or an empty one (a browser may send a cleared cookie).
    Absent,
    Value(&'a str),
    Bad(Bad),
}

/// The `divert` parameter of a request's query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param<'a> {
    Absent,
    /// `?divert=alice`: set the cookie.
    Set(&'a str),
    /// `?divert=` (or `?divert`): clear it.
    Clear,
    Bad(Bad),
}

/// How long the cookie lasts unless the proxy is told otherwise
/// (`--key-cookie-max-age`): a working day.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(8 * 3600);

/// The longest value looked at: a namespace name.
const MAX_VALUE: usize = 63;

/// A value as a namespace name.
fn checked(value: &[u8]) -> Result<&str, Bad> {
    if value.len() > MAX_VALUE {
        return Err(Bad::TooLong);
    }
    let text = std::str::from_utf8(value).map_err(|_| Bad::Malformed)?;
    check_dns_label(text).map_err(|_| Bad::Malformed)?;
    Ok(text)
}

/// Folds one more occurrence into what was found so far: the same value
/// twice is that value; two values are ambiguous; a bad one spoils all.
fn fold<T: PartialEq>(
    so_far: Option<Result<T, Bad>>,
    next: Result<T, Bad>,
) -> Option<Result<T, Bad>> {
    Some(match (so_far, next) {
        (None, n) => n,
        (Some(Err(b)), _) | (Some(Ok(_)), Err(b)) => Err(b),
        (Some(Ok(a)), Ok(b)) if a == b => Ok(a),
        (Some(Ok(_)), Ok(_)) => Err(Bad::Ambiguous),
    })
}

/// The `divert` cookie among a request's `Cookie` field values.
pub fn find<'a>(fields: impl Iterator<Item = &'a [u8]>) -> Cookie<'a> {
    let mut found: Option<Result<&'a str, Bad>> = None;
    for field in fields {
        for pair in field.split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            let (name, value) = (&pair[..eq], &pair[eq + 1..]);
            if name.trim_ascii() != KEY_COOKIE.as_bytes() {
                continue;
            }
            let value = value.trim_ascii();
            let value = match value {
                [b'"', inner @ .., b'"'] => inner,
                v => v,
            };
            if value.is_empty() {
                continue;
            }
            found = fold(found, checked(value));
        }
    }
    match found {
        None => Cookie::Absent,
        Some(Ok(v)) => Cookie::Value(v),
        Some(Err(b)) => Cookie::Bad(b),
    }
}

/// The `divert` parameter of a query (the part after `?`, without a
/// fragment).
pub fn param(query: &str) -> Param<'_> {
    let mut found: Option<Result<Option<&str>, Bad>> = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != KEY_COOKIE {
            continue;
        }
        let value = if value.is_empty() {
            Ok(None)
        } else {
            checked(value.as_bytes()).map(Some)
        };
        found = fold(found, value);
    }
    match found {
        None => Param::Absent,
        Some(Ok(Some(v))) => Param::Set(v),
        Some(Ok(None)) => Param::Clear,
        Some(Err(b)) => Param::Bad(b),
    }
}

/// The request target without its `divert` parameters: the path, and the
/// rest of the query if any is left. For the `303`'s `Location`, which may
/// be a relative reference (RFC 9110 §10.2.2).
pub fn without_param(path: &str, query: &str) -> String {
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            !pair.is_empty() && pair.split_once('=').map_or(*pair, |(n, _)| n) != KEY_COOKIE
        })
        .collect();
    let path = if path.is_empty() { "/" } else { path };
    if rest.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", rest.join("&"))
    }
}

/// The `Set-Cookie` value that sets the cookie to `namespace` for
/// `max_age`, or clears it (`None`). Host-only (no `Domain`), for the whole
/// site (`Path=/`), out of scripts' reach (`HttpOnly`), sent on top-level
/// navigations from other sites but not on their subrequests
/// (`SameSite=Lax`), and `Secure` when the client came over TLS.
pub fn set_cookie(namespace: Option<&str>, max_age: Duration, secure: bool) -> String {
    let (value, age) = match namespace {
        Some(ns) => (ns, max_age.as_secs()),
        None => ("", 0),
    };
    let secure = if secure { "; Secure" } else { "" };
    format!("{KEY_COOKIE}={value}; Path=/; Max-Age={age}; HttpOnly; SameSite=Lax{secure}")
}

/// Whether the client came over TLS, as the first `X-Forwarded-Proto`
/// value (the one the client-facing proxy wrote) says.
pub fn came_over_tls<'a>(mut forwarded_proto: impl Iterator<Item = &'a [u8]>) -> bool {
    forwarded_proto
        .next()
        .and_then(|v| v.split(|b| *b == b',').next())
        .is_some_and(|p| p.trim_ascii().eq_ignore_ascii_case(b"https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie<'a>(fields: &[&'a str]) -> Cookie<'a> {
        find(fields.iter().map(|f| f.as_bytes()))
    }

    #[test]
    fn the_cookie_is_found_among_others_and_across_fields() {
        assert_eq!(cookie(&[]), Cookie::Absent);
        assert_eq!(cookie(&["session=abc"]), Cookie::Absent);
        assert_eq!(cookie(&["divert=alice"]), Cookie::Value("alice"));
        assert_eq!(
            cookie(&["session=abc; divert=alice; theme=dark"]),
            Cookie::Value("alice")
        );
        // HTTP/2 splits cookies over fields.
        assert_eq!(
            cookie(&["session=abc", "divert=alice"]),
            Cookie::Value("alice")
        );
        assert_eq!(cookie(&[r#"divert="alice""#]), Cookie::Value("alice"));
        assert_eq!(
            cookie(&["divert=alice; divert=alice"]),
            Cookie::Value("alice")
        );
        // A cleared cookie a browser still sends, and a name that only
        // ends like it.
        assert_eq!(cookie(&["divert="]), Cookie::Absent);
        assert_eq!(cookie(&["xdivert=alice"]), Cookie::Absent);
    }

    #[test]
    fn a_bad_or_doubtful_cookie_is_refused_with_why() {
        assert_eq!(cookie(&["divert=Alice"]), Cookie::Bad(Bad::Malformed));
        assert_eq!(cookie(&["divert=al%69ce"]), Cookie::Bad(Bad::Malformed));
        assert_eq!(cookie(&["divert=a b"]), Cookie::Bad(Bad::Malformed));
        assert_eq!(cookie(&[r#"divert="""#]), Cookie::Absent);
        assert_eq!(cookie(&[r#"divert=""#]), Cookie::Bad(Bad::Malformed));
        assert_eq!(
            cookie(&[&format!("divert={}", "a".repeat(64))]),
            Cookie::Bad(Bad::TooLong)
        );
        assert_eq!(
            cookie(&["divert=alice", "divert=bob"]),
            Cookie::Bad(Bad::Ambiguous)
        );
        assert_eq!(
            cookie(&["divert=alice; divert=B"]),
            Cookie::Bad(Bad::Malformed)
        );
        let raw: &[u8] = b"divert=\xffalice";
        assert_eq!(find([raw].into_iter()), Cookie::Bad(Bad::Malformed));
    }

    #[test]
    fn the_parameter_sets_clears_or_is_refused() {
        assert_eq!(param(""), Param::Absent);
        assert_eq!(param("q=1"), Param::Absent);
        assert_eq!(param("divert=alice"), Param::Set("alice"));
        assert_eq!(param("q=1&divert=alice&x"), Param::Set("alice"));
        assert_eq!(param("divert="), Param::Clear);
        assert_eq!(param("divert"), Param::Clear);
        assert_eq!(param("divert=alice&divert=bob"), Param::Bad(Bad::Ambiguous));
        assert_eq!(param("divert=al%69ce"), Param::Bad(Bad::Malformed));
        assert_eq!(param("divert=ALICE"), Param::Bad(Bad::Malformed));
        assert_eq!(
            param(&format!("divert={}", "a".repeat(64))),
            Param::Bad(Bad::TooLong)
        );
        assert_eq!(param("diverted=alice"), Param::Absent);
    }

    #[test]
    fn the_target_loses_only_the_parameter() {
        assert_eq!(without_param("/movies", "divert=alice"), "/movies");
        assert_eq!(
            without_param("/movies", "page=2&divert=alice&sort=name"),
            "/movies?page=2&sort=name"
        );
        assert_eq!(without_param("/", "divert=&divert"), "/");
        assert_eq!(without_param("", "divert=alice"), "/");
        assert_eq!(without_param("/a", "diverted=1&&b"), "/a?diverted=1&b");
    }

    #[test]
    fn every_outcome_has_its_own_index() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i, "{o:?}");
        }
    }

    #[test]
    fn set_cookie_is_host_only_http_only_lax_and_secure_over_tls() {
        let eight_hours = Duration::from_secs(8 * 3600);
        assert_eq!(
            set_cookie(Some("alice"), eight_hours, false),
            "divert=alice; Path=/; Max-Age=28800; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            set_cookie(None, eight_hours, true),
            "divert=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure"
        );
    }

    #[test]
    fn tls_is_what_the_first_forwarded_proto_says() {
        let tls = |vals: &[&'static str]| came_over_tls(vals.iter().map(|v| v.as_bytes()));
        assert!(tls(&["https"]));
        assert!(tls(&["HTTPS"]));
        assert!(tls(&["https, http"]));
        assert!(!tls(&["http, https"]));
        assert!(!tls(&["http"]));
        assert!(!tls(&[]));
    }
}
