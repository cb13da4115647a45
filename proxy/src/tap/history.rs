//! What a proxy remembers for `divert trace --since`: its last requests with
//! a key, and the calls that dropped one.
//!
//! Every request with a key pays for this, watched or not, so keeping one
//! must cost far less than routing it. The history is a ring of slots,
//! allocated [`CHUNK`] at a time as requests first reach them, so that a
//! proxy that has kept a few requests holds a few slots. A request takes
//! the next slot by one atomic add and overwrites it under that slot's own lock, which
//! only a writer `cap` requests later, or a reader, can want at the same
//! time; the writer never waits for it, and skips the request instead.
//! A slot's strings keep their buffers, so once the ring has gone
//! round, keeping a request copies a few short strings and allocates
//! nothing. Events are built only when a watch asks for the history.
//!
//! Memory: each of a slot's ten texts is kept up to [`FIELD_MAX`] bytes,
//! cut at a character boundary, and a buffer is at most twice what it
//! holds, so whatever the requests were like the ring holds at most
//! `cap` × 10 × 2 × [`FIELD_MAX`] bytes (640 KiB for the default 256);
//! usual paths and names take a few KiB.

use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
// Each slot's lock is taken by one writer at a time (the ring spreads
// them), with try_lock: the request path never waits on it.
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use divert_core::direction::Direction;

use super::{Record, unix_micros};
use crate::reason::Reason;
use crate::spans::Links;

/// The most bytes of one text kept: the start of a long path is enough to
/// tell requests apart in a trace.
pub const FIELD_MAX: usize = 128;

/// Slots allocated at once, when a request first reaches one of them.
pub const CHUNK: usize = 16;

/// The last `cap` requests kept, oldest overwritten first.
#[derive(Debug)]
#[allow(clippy::disallowed_types)]
pub(super) struct History {
    cap: usize,
    /// The sequence number of the last request kept (the first is 1).
    last: AtomicU64,
    /// The `cap` slots, [`CHUNK`] to a chunk.
    chunks: Box<[OnceLock<Chunk>]>,
}

/// Up to [`CHUNK`] slots.
#[allow(clippy::disallowed_types)]
type Chunk = Box<[Mutex<Kept>]>;

impl History {
    /// A history of `cap` requests; `None` for 0.
    pub(super) fn new(cap: usize) -> Option<History> {
        (cap > 0).then(|| History {
            cap,
            last: AtomicU64::new(0),
            chunks: (0..cap.div_ceil(CHUNK)).map(|_| OnceLock::new()).collect(),
        })
    }

    /// Slot `i` (below `cap`), its chunk allocated if it was not.
    #[allow(clippy::disallowed_types)]
    fn slot(&self, i: usize) -> Option<&Mutex<Kept>> {
        let first = i / CHUNK * CHUNK;
        let len = CHUNK.min(self.cap.checked_sub(first)?);
        self.chunks
            .get(i / CHUNK)?
            .get_or_init(|| (0..len).map(|_| Mutex::default()).collect())
            .get(i - first)
    }

    /// Keeps one request, in place of the oldest.
    pub(super) fn keep(&self, r: &Record<'_>) {
        let seq = self.last.fetch_add(1, Ordering::Relaxed) + 1;
        // `cap` fits a usize, so the remainder does too.
        let i = usize::try_from(seq % self.cap as u64).unwrap_or(0);
        // Never waits: a slot someone else holds (a reader copying it out,
        // or a writer a whole ring ahead) is left to them, and this request
        // is not kept.
        let Some(Ok(mut slot)) = self.slot(i).map(|s| s.try_lock()) else {
            return;
        };
        // A writer a whole ring later may have got here first.
        if slot.seq < seq {
            slot.fill(seq, r);
        }
    }

    /// Hands `each` the requests kept at or after `since_micros` (since the
    /// Unix epoch), oldest first.
    pub(super) fn since(&self, since_micros: u64, mut each: impl FnMut(&Record<'_>)) {
        // Copied out, so that no slot stays locked while `each` runs.
        let mut kept: Vec<Kept> = self
            .chunks
            .iter()
            .filter_map(OnceLock::get)
            .flat_map(|chunk| chunk.iter())
            .filter_map(|s| s.lock().ok())
            .filter(|k| k.seq != 0 && unix_micros(k.at) >= since_micros)
            .map(|k| k.clone())
            .collect();
        kept.sort_unstable_by_key(|k| k.seq);
        for k in &kept {
            each(&k.record());
        }
    }
}

/// One request, as [`Record`] has it, owned; "" stands for an absent text.
#[derive(Debug, Clone)]
struct Kept {
    /// 0: never written.
    seq: u64,
    at: SystemTime,
    direction: Direction,
    protocol: &'static str,
    method: String,
    authority: String,
    path: String,
    key: String,
    original_dst: SocketAddr,
    target: String,
    target_namespace: String,
    service: String,
    endpoint: Option<SocketAddr>,
    reason: Reason,
    status: u16,
    latency: Duration,
    error: String,
    baggage_rejected: Option<&'static str>,
    key_dropped: bool,
    dropped_key: String,
    dropped_during: String,
    links: Links,
}

impl Default for Kept {
    fn default() -> Self {
        Kept {
            seq: 0,
            at: SystemTime::UNIX_EPOCH,
            direction: Direction::Outbound,
            protocol: "",
            method: String::new(),
            authority: String::new(),
            path: String::new(),
            key: String::new(),
            original_dst: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            target: String::new(),
            target_namespace: String::new(),
            service: String::new(),
            endpoint: None,
            reason: Reason::ALL[0],
            status: 0,
            latency: Duration::ZERO,
            error: String::new(),
            baggage_rejected: None,
            key_dropped: false,
            dropped_key: String::new(),
            dropped_during: String::new(),
            links: Links::default(),
        }
    }
}

impl Kept {
    /// Overwrites this slot with `r`, reusing its buffers.
    fn fill(&mut self, seq: u64, r: &Record<'_>) {
        self.seq = seq;
        self.at = r.at;
        self.direction = r.direction;
        self.protocol = r.protocol;
        put_str(&mut self.method, r.method);
        put_str(&mut self.authority, r.authority);
        put_str(&mut self.path, r.path);
        put_str(&mut self.key, r.key.unwrap_or_default());
        self.original_dst = r.original_dst;
        put(&mut self.target, r.target);
        put_str(&mut self.target_namespace, r.target_namespace);
        put_str(&mut self.service, r.service);
        self.endpoint = r.endpoint;
        self.reason = r.reason;
        self.status = r.status;
        self.latency = r.latency;
        match r.error {
            Some(e) => put(&mut self.error, e),
            None => self.error.clear(),
        }
        self.baggage_rejected = r.baggage_rejected;
        self.key_dropped = r.key_dropped;
        put_str(&mut self.dropped_key, r.dropped_key.unwrap_or_default());
        put_str(
            &mut self.dropped_during,
            r.dropped_during.unwrap_or_default(),
        );
        self.links = r.links;
    }

    fn record(&self) -> Record<'_> {
        Record {
            at: self.at,
            direction: self.direction,
            protocol: self.protocol,
            method: &self.method,
            authority: &self.authority,
            path: &self.path,
            key: some(&self.key),
            original_dst: self.original_dst,
            target: &self.target,
            target_namespace: &self.target_namespace,
            service: &self.service,
            endpoint: self.endpoint,
            reason: self.reason,
            status: self.status,
            latency: self.latency,
            error: (!self.error.is_empty()).then_some(&self.error as &dyn fmt::Display),
            baggage_rejected: self.baggage_rejected,
            key_dropped: self.key_dropped,
            dropped_key: some(&self.dropped_key),
            dropped_during: some(&self.dropped_during),
            links: self.links,
        }
    }
}

/// A kept text: "" is none.
fn some(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Writes `v` into `s` in place of what it held, up to [`FIELD_MAX`] bytes.
fn put_str(s: &mut String, v: &str) {
    s.clear();
    let _ = Capped(s).write_str(v);
}

/// [`put_str`] for what is written by formatting.
fn put(s: &mut String, v: &dyn fmt::Display) {
    s.clear();
    // Capped never fails; a Display that does leaves what it wrote.
    let _ = write!(Capped(s), "{v}");
}

/// A `String` that takes at most [`FIELD_MAX`] bytes, cut at a character
/// boundary, and ignores the rest.
struct Capped<'a>(&'a mut String);

impl fmt::Write for Capped<'_> {
    fn write_str(&mut self, part: &str) -> fmt::Result {
        let room = FIELD_MAX.saturating_sub(self.0.len());
        let mut end = room.min(part.len());
        while !part.is_char_boundary(end) {
            end -= 1;
        }
        self.0.push_str(&part[..end]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at_micros: u64, path: &str) -> Record<'_> {
        Record {
            at: SystemTime::UNIX_EPOCH + Duration::from_micros(at_micros),
            path,
            ..Record::for_tests()
        }
    }

    fn kept(h: &History, since: u64) -> Vec<(u64, String)> {
        let mut all = Vec::new();
        h.since(since, |r| {
            all.push((unix_micros(r.at), r.path.to_owned()));
        });
        all
    }

    /// The lengths of the chunks allocated so far.
    fn allocated(h: &History) -> Vec<usize> {
        h.chunks
            .iter()
            .filter_map(OnceLock::get)
            .map(|c| c.len())
            .collect()
    }

    #[test]
    fn slots_are_allocated_a_chunk_at_a_time_as_requests_reach_them() {
        assert!(History::new(0).is_none());
        let h = History::new(4).unwrap();
        assert!(allocated(&h).is_empty());
        assert!(kept(&h, 0).is_empty());
        h.keep(&record(1, "/a"));
        assert_eq!(allocated(&h), [4], "a ring shorter than a chunk");
        let h = History::new(2 * CHUNK + 3).unwrap();
        h.keep(&record(1, "/a"));
        assert_eq!(allocated(&h), [CHUNK]);
        for at in 2..=3 * CHUNK as u64 {
            h.keep(&record(at, "/b"));
        }
        assert_eq!(allocated(&h), [CHUNK, CHUNK, 3]);
        // Round the ring across its chunks: the last 2 × CHUNK + 3, in order.
        let all: Vec<u64> = kept(&h, 0).into_iter().map(|(at, _)| at).collect();
        let want: Vec<u64> = (CHUNK as u64 - 2..=3 * CHUNK as u64).collect();
        assert_eq!(all, want);
    }

    #[test]
    fn the_last_cap_requests_are_kept_oldest_first() {
        let h = History::new(3).unwrap();
        for (at, path) in [(10, "/a"), (20, "/b"), (30, "/c"), (40, "/d"), (50, "/e")] {
            h.keep(&record(at, path));
        }
        assert_eq!(
            kept(&h, 0),
            [(30, "/c".into()), (40, "/d".into()), (50, "/e".into())]
        );
        assert_eq!(kept(&h, 40), [(40, "/d".into()), (50, "/e".into())]);
    }

    #[test]
    fn a_slot_someone_holds_is_skipped_not_waited_for() {
        let h = History::new(3).unwrap();
        h.keep(&record(1, "/a"));
        // Request n goes to slot n % 3.
        let held = h.slot(2).unwrap().lock().unwrap();
        // The second request's slot is held: it is not kept, and keep
        // returns (the test would hang otherwise).
        h.keep(&record(2, "/b"));
        drop(held);
        assert_eq!(kept(&h, 0), [(1, "/a".into())]);
        h.keep(&record(3, "/c"));
        assert_eq!(kept(&h, 0), [(1, "/a".into()), (3, "/c".into())]);
    }

    #[test]
    fn a_kept_request_reads_back_as_it_was_recorded() {
        let h = History::new(2).unwrap();
        let error = "connection refused";
        let r = Record {
            key: Some("alice"),
            error: Some(&error),
            dropped_key: Some("alice"),
            dropped_during: Some("GET api:8080/movies"),
            key_dropped: true,
            links: Links {
                span: 7,
                parent: 3,
                trace: None,
            },
            ..record(5, "/movies")
        };
        h.keep(&r);
        let tap = super::super::tests::tap();
        let mut got = None;
        h.since(0, |k| got = Some(tap.event(k)));
        assert_eq!(got, Some(tap.event(&r)));
        // Absent texts stay absent.
        h.keep(&Record {
            key: None,
            ..record(6, "/x")
        });
        h.since(6, |k| {
            assert_eq!(
                (k.key, k.error.is_none(), k.dropped_key),
                (None, true, None)
            );
        });
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary_and_buffers_are_reused() {
        let h = History::new(1).unwrap();
        let long = format!("/{}", "é".repeat(FIELD_MAX));
        h.keep(&record(1, &long));
        let path = kept(&h, 0).remove(0).1;
        assert_eq!(path.len(), FIELD_MAX - 1, "/ and 63 two-byte characters");
        assert!(long.starts_with(&path));
        let capacity = |h: &History| h.slot(0).unwrap().lock().unwrap().path.capacity();
        let before = capacity(&h);
        assert!(before <= 2 * FIELD_MAX);
        h.keep(&record(2, "/short"));
        assert_eq!(kept(&h, 0), [(2, "/short".into())]);
        assert_eq!(capacity(&h), before, "the buffer is kept, not reallocated");
    }
}
