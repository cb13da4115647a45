//! What links the tap's events into call trees (`divert trace`): each
//! request a watched proxy routes gets a span id; an outbound request's
//! parent is the request its pod's app was serving (the dropped-key
//! detector's pairing, [`crate::drops`]), and an inbound request's parent
//! is the caller's outbound request, whose span id the caller's proxy put
//! in the outbound mark's value ([`crate::semantics::edits::OUTBOUND_MARK`]).
//! Where apps propagate W3C Trace Context, the request's `traceparent` is
//! reported too, for the pairs the in-flight pairing cannot decide.
//!
//! Only requests the tap looks at get a span ([`crate::tap::Tap::looks`]:
//! someone watches, or the request has a key and the proxy keeps a
//! history); every other request has span 0 and its mark says `1`.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Span ids: a random base per proxy plus a counter, so that two proxies'
/// ids do not meet. Never 0, which means "none".
#[derive(Debug)]
pub struct Spans {
    base: u64,
    next: AtomicU64,
}

impl Default for Spans {
    fn default() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        Spans {
            base: h.finish(),
            next: AtomicU64::new(0),
        }
    }
}

impl Spans {
    /// A fresh span id.
    pub fn next(&self) -> u64 {
        match self
            .base
            .wrapping_add(self.next.fetch_add(1, Ordering::Relaxed))
        {
            0 => 1,
            id => id,
        }
    }
}

/// How one request links into its call tree (all 0 and `None` unless the
/// tap looks at it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Links {
    pub span: u64,
    /// The caller's outbound request (inbound), or the request the app was
    /// serving (outbound); 0 when not known.
    pub parent: u64,
    pub trace: Option<Trace>,
}

/// A `traceparent` (W3C Trace Context §3.2): the trace, and the span of
/// the caller that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    pub id: [u8; 16],
    pub parent: [u8; 8],
}

impl Trace {
    /// A `traceparent` value of version 00 (or a later version, read as
    /// 00 says); `None` for anything else, an all-zero id included.
    pub fn parse(value: &[u8]) -> Option<Trace> {
        let mut parts = value.trim_ascii().split(|b| *b == b'-');
        let version = parts.next()?;
        let (id, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == b"ff" || flags.len() != 2 {
            return None;
        }
        if version == b"00" && parts.next().is_some() {
            return None;
        }
        let id: [u8; 16] = unhex(id)?;
        let parent: [u8; 8] = unhex(parent)?;
        (id != [0; 16] && parent != [0; 8]).then_some(Trace { id, parent })
    }

    /// The trace id, as 32 lowercase hex digits.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    /// The caller's span id, as 16 lowercase hex digits.
    pub fn parent_hex(&self) -> String {
        hex(&self.parent)
    }
}

/// Lowercase hex digits, exactly `2 * N` of them (W3C Trace Context allows
/// no upper case).
fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The outbound mark's value for a request of span `span`: its id in 16
/// hex digits, written into `buf`, or `1` for span 0 (not looked at).
pub fn mark_value(span: u64, buf: &mut [u8; 16]) -> &str {
    if span == 0 {
        return "1";
    }
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in buf.iter_mut().enumerate() {
        *b = DIGITS[((span >> (60 - 4 * i)) & 0xf) as usize];
    }
    std::str::from_utf8(buf).unwrap_or("1")
}

/// The caller's span id from an outbound mark's value; 0 for `1` or
/// anything that is not one.
pub fn caller_of(mark: &[u8]) -> u64 {
    unhex::<8>(mark.trim_ascii()).map_or(0, u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_ids_are_never_zero_and_do_not_repeat() {
        let spans = Spans {
            base: u64::MAX,
            next: AtomicU64::new(0),
        };
        let ids: Vec<u64> = (0..3).map(|_| spans.next()).collect();
        assert_eq!(ids, [u64::MAX, 1, 1]);
        let spans = Spans::default();
        let (a, b) = (spans.next(), spans.next());
        assert_ne!(a, b);
        assert_ne!(Spans::default().next(), Spans::default().next());
    }

    #[test]
    fn the_mark_carries_the_span_and_reads_back() {
        let mut buf = [0u8; 16];
        assert_eq!(mark_value(0, &mut buf), "1");
        assert_eq!(
            mark_value(0x00ab_cdef_0123_4567, &mut buf),
            "00abcdef01234567"
        );
        assert_eq!(caller_of(b"00abcdef01234567"), 0x00ab_cdef_0123_4567);
        assert_eq!(caller_of(b"1"), 0);
        assert_eq!(caller_of(b"00ABCDEF01234567"), 0, "upper case is not ours");
        assert_eq!(caller_of(b"00abcdef0123456"), 0);
        assert_eq!(caller_of(b"zzabcdef01234567"), 0);
    }

    #[test]
    fn traceparent_follows_w3c_trace_context() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = Trace::parse(good).unwrap();
        assert_eq!(t.id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_hex(), "00f067aa0ba902b7");
        // A later version may add fields; version 00 may not.
        assert!(
            Trace::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some()
        );
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"",
            b"00",
        ] {
            assert_eq!(Trace::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
