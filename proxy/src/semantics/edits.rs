//! What the proxy changes in a request on its way, besides the hop-by-hop
//! fields ([`super::fields`]): the receiving side's part of routing
//! (ARCHITECTURE.md, step 7). Both HTTP paths ask here what to change and
//! write it their own way.
//!
//! - A request that reaches a pod's inbound proxy without a key, for one of
//!   the table's preview hosts, gets that host's namespace as its key, and
//!   the key joins its baggage ([`key_from_host`], [`join`]), so the app
//!   passes it on down the call chain.
//! - A request an inbound proxy sends on to another pod's copy carries the
//!   hop mark ([`MARK`]), and the receiving copy's proxy delivers it there
//!   and removes the mark: one extra hop at most, whatever the two proxies'
//!   tables say. The mark means something only between inbound proxies, so
//!   an inbound proxy always removes it and an outbound one never reads it.

use divert_core::direction::Direction;
use divert_core::names::header::INBOUND_HOP;

use crate::table::{Table, Target};

/// The hop mark, name and value.
pub const MARK: (&str, &str) = (INBOUND_HOP, "1");

/// The key a request gets from the host it asked for: a preview host's
/// namespace, for a request coming into the pod without a key of its own.
/// `host` is asked only then: an outbound request pays nothing.
pub fn key_from_host<'t, 'h>(
    direction: Direction,
    key: Option<&str>,
    host: impl FnOnce() -> Option<&'h str>,
    table: &'t Table,
) -> Option<&'t str> {
    if direction != Direction::Inbound || key.is_some() {
        return None;
    }
    table.host_key(host()?)
}

/// Whether the request's own hop mark is read and removed: on the inbound
/// side only.
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

    #[test]
    fn only_an_inbound_request_to_a_copy_is_marked_and_only_inbound_reads_the_mark() {
        let addr = "10.0.0.1:80".parse().unwrap();
        assert!(!marks(Direction::Inbound, &Target::Passthrough(addr)));
        assert!(!marks(Direction::Outbound, &Target::Passthrough(addr)));
        assert!(takes_mark(Direction::Inbound));
        assert!(!takes_mark(Direction::Outbound));
    }
}
