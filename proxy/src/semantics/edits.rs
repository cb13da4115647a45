//! What the proxy changes in a request on its way, besides the hop-by-hop
//! fields ([`super::fields`]): the receiving side's part of routing
//! (ARCHITECTURE.md, step 7). Both HTTP paths ask here what to change and
//! write it their own way.
//!
//! - A request that reaches a pod's inbound proxy without a key gets one
//!   from the edge ([`key_from_edge`]): a preview host's namespace, or, from
//!   a caller without a sidecar where the shared namespace allows it, the
//!   key cookie's ([`super::cookie`]). The key joins its baggage ([`join`]),
//!   so the app passes it on down the call chain.
//! - A request an inbound proxy sends on to another pod's copy carries the
//!   hop mark ([`MARK`]), and the receiving copy's proxy delivers it there
//!   and removes the mark: one extra hop at most, whatever the two proxies'
//!   tables say. The mark means something only between inbound proxies, so
//!   an inbound proxy always removes it and an outbound one never reads it.
//! - A request an outbound proxy sends to a service carries the outbound
//!   mark ([`OUTBOUND_MARK`]), which the receiving inbound proxy removes: a
//!   request without it came from a caller without a sidecar. Setting it
//!   only turns the key cookie off for the one who sets it.

use divert_core::direction::Direction;
use divert_core::names::header::{INBOUND_HOP, OUTBOUND_HOP};

use super::cookie::{self, Cookie};
use crate::table::{Table, Target};

/// The hop mark, name and value.
pub const MARK: (&str, &str) = (INBOUND_HOP, "1");

/// The outbound mark, name and value.
pub const OUTBOUND_MARK: (&str, &str) = (OUTBOUND_HOP, "1");

/// Where an edge key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// A preview host.
    Host,
    /// The key cookie.
    Cookie,
}

/// What the edge said about the key of a request coming into the pod
/// without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKey<'t> {
    /// Nothing: the request goes on without a key.
    None,
    Key(&'t str, Edge),
    /// A key cookie that was not used: bad, or naming a namespace that is
    /// not a divert namespace of the pod's shared namespace (`None`).
    CookieIgnored(Option<cookie::Bad>),
}

/// What the request says, for [`key_from_edge`]: asked only for a request
/// coming into the pod without a key.
pub struct Edges<'r, H, C>
where
    H: FnOnce() -> Option<&'r str>,
    C: FnOnce() -> Cookie<'r>,
{
    /// The key cookie counts for it: it came from a caller without a
    /// sidecar (no [`OUTBOUND_MARK`]) to a pod whose shared namespace
    /// allows the cookie ([`Table::key_cookie_allowed`]).
    pub cookie_allowed: bool,
    /// The host it asked for.
    pub host: H,
    /// Its key cookie.
    pub cookie: C,
}

/// The key a request gets at the edge: a preview host's namespace, else,
/// from a caller without a sidecar in a pod whose shared namespace allows
/// it, the key cookie's namespace if it names a divert namespace of that
/// shared namespace. Only for a request coming into the pod without a key
/// of its own: an outbound request pays nothing.
pub fn key_from_edge<'t, 'r, H, C>(
    direction: Direction,
    key: Option<&str>,
    request: Edges<'r, H, C>,
    table: &'t Table,
    own_ns: Option<&str>,
) -> EdgeKey<'t>
where
    H: FnOnce() -> Option<&'r str>,
    C: FnOnce() -> Cookie<'r>,
{
    if direction != Direction::Inbound || key.is_some() {
        return EdgeKey::None;
    }
    if let Some(k) = (request.host)().and_then(|h| table.host_key(h)) {
        return EdgeKey::Key(k, Edge::Host);
    }
    let own = match own_ns {
        Some(own) if request.cookie_allowed => own,
        _ => return EdgeKey::None,
    };
    match (request.cookie)() {
        Cookie::Absent => EdgeKey::None,
        Cookie::Bad(b) => EdgeKey::CookieIgnored(Some(b)),
        Cookie::Value(v) => match table.cookie_key(v, own) {
            Some(k) => EdgeKey::Key(k, Edge::Cookie),
            None => EdgeKey::CookieIgnored(None),
        },
    }
}

/// Whether the request leaves with the outbound mark: a pod's own request
/// to a service of the table.
pub fn marks_outbound(direction: Direction, target: &Target<'_>) -> bool {
    direction == Direction::Outbound && matches!(target, Target::Service { .. })
}

/// Whether the request's own marks (the hop mark, the outbound mark) are
/// read and removed: on the inbound side only.
pub fn takes_mark(direction: Direction) -> bool {
    direction == Direction::Inbound
}

/// Whether the request leaves with the hop mark: an inbound request sent
/// on to a copy of the service rather than to this pod's app.
pub fn marks(direction: Direction, target: &Target<'_>) -> bool {
    direction == Direction::Inbound && matches!(target, Target::Service { .. })
}

/// How a key joins a request's `baggage` fields (W3C Baggage: all of them
/// are one list of members).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// The one field, not blank, is extended in place
    /// ([`extended`]), for apps that read only one.
    Extend,
    /// The one field is blank: the member replaces it.
    Replace,
    /// No field, or several: the member is a field of its own.
    Append,
}

/// How a member joins baggage fields with these values.
pub fn join<'v>(mut values: impl Iterator<Item = &'v [u8]>) -> Join {
    match (values.next(), values.next()) {
        (Some(only), None) if only.trim_ascii().is_empty() => Join::Replace,
        (Some(_), None) => Join::Extend,
        _ => Join::Append,
    }
}

/// Writes the member `key=value`.
pub fn member(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
}

/// Writes a field's value with the member `key=value` after its own.
pub fn extended(out: &mut Vec<u8>, value: &[u8], key: &str, member_value: &str) {
    out.extend_from_slice(value.trim_ascii_end());
    out.push(b',');
    member(out, key, member_value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_extends_the_only_field_replaces_a_blank_one_and_else_stands_alone() {
        assert_eq!(join([&b"a=1"[..]].into_iter()), Join::Extend);
        assert_eq!(join([&b"  "[..]].into_iter()), Join::Replace);
        assert_eq!(join(std::iter::empty()), Join::Append);
        assert_eq!(join([&b"a=1"[..], b"b=2"].into_iter()), Join::Append);
        let mut out = Vec::new();
        extended(&mut out, b"a=1 ", "okteto-divert", "alice");
        assert_eq!(out, b"a=1,okteto-divert=alice");
    }

    /// staging allows the key cookie and has a preview host of alice's.
    fn cookie_table() -> Table {
        let yaml = r#"
namespaces:
  - { name: staging, keyCookie: true }
  - { name: alice, sharedNamespace: staging }
hosts:
  - { host: web-alice.example.com, namespace: alice }
"#;
        let spec: crate::table::TableSpec = serde_yaml_ng::from_str(yaml).unwrap();
        Table::build(&spec, 1, None).unwrap()
    }

    fn edge<'t>(
        t: &'t Table,
        direction: Direction,
        key: Option<&str>,
        cookie_allowed: bool,
        host: &'static str,
        value: Cookie<'static>,
    ) -> EdgeKey<'t> {
        key_from_edge(
            direction,
            key,
            Edges {
                cookie_allowed,
                host: || Some(host),
                cookie: || value,
            },
            t,
            Some("staging"),
        )
    }

    #[test]
    fn an_edge_key_comes_from_a_preview_host_first_then_from_the_cookie() {
        let t = cookie_table();
        let (inbound, outbound) = (Direction::Inbound, Direction::Outbound);
        let (preview, plain) = ("web-alice.example.com", "web.example.com");
        let alice = Cookie::Value("alice");
        let too_long = Cookie::Bad(cookie::Bad::TooLong);
        let cases = [
            (
                inbound,
                None,
                true,
                preview,
                Cookie::Absent,
                EdgeKey::Key("alice", Edge::Host),
            ),
            (
                inbound,
                None,
                true,
                plain,
                alice,
                EdgeKey::Key("alice", Edge::Cookie),
            ),
            // A key of its own, an outbound request, or a caller through a
            // sidecar: the cookie is not read.
            (inbound, Some("bob"), true, plain, alice, EdgeKey::None),
            (outbound, None, true, plain, alice, EdgeKey::None),
            (inbound, None, false, plain, alice, EdgeKey::None),
            // A cookie that is bad, or names no divert namespace of staging.
            (
                inbound,
                None,
                true,
                plain,
                too_long,
                EdgeKey::CookieIgnored(Some(cookie::Bad::TooLong)),
            ),
            (
                inbound,
                None,
                true,
                plain,
                Cookie::Value("staging"),
                EdgeKey::CookieIgnored(None),
            ),
        ];
        for (i, (direction, key, allowed, host, value, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                edge(&t, direction, key, allowed, host, value),
                want,
                "case {i}"
            );
        }
    }

    #[test]
    fn the_outbound_mark_goes_on_a_pods_request_to_a_service_only() {
        let yaml = "services:\n  - { name: web, namespace: staging, addresses: [10.0.0.1], ports: [{port: 80}], endpoints: [10.1.0.1] }\n";
        let spec: crate::table::TableSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let t = Table::build(&spec, 1, None).unwrap();
        let service = t.route("10.0.0.1:80".parse().unwrap(), None, None).target;
        assert!(marks_outbound(Direction::Outbound, &service));
        assert!(!marks_outbound(Direction::Inbound, &service));
        let addr = "192.0.2.1:80".parse().unwrap();
        assert!(!marks_outbound(
            Direction::Outbound,
            &Target::Passthrough(addr)
        ));
        assert!(!marks_outbound(
            Direction::Inbound,
            &Target::Passthrough(addr)
        ));
    }

    #[test]
    fn only_an_inbound_request_to_a_copy_is_marked_and_only_inbound_reads_the_mark() {
        let addr = "10.0.0.1:80".parse().unwrap();
        assert!(!marks(Direction::Inbound, &Target::Passthrough(addr)));
        assert!(!marks(Direction::Outbound, &Target::Passthrough(addr)));
        assert!(takes_mark(Direction::Inbound));
        assert!(!takes_mark(Direction::Outbound));
    }
}
