//! Reporting one routing decision, the same way for an HTTP request and an
//! opaque connection: one `divert::decision` log line (at debug when routed,
//! at info when it failed, so failures show by default), and, while the
//! tap looks (someone watches, or it has a key and a history is kept), a
//! tap record. The `divert.dev/debug` annotation turns the debug
//! lines on for one pod.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use divert_core::direction::Direction;

use crate::drops::Dropped;
use crate::protocol::Protocol;
use crate::reason::{Decision, Reason};
use crate::spans::Links;
use crate::tap::{self, Tap};

/// What the rule decided, and for what.
pub(crate) struct Decided<'a> {
    /// The pod's own request, or one coming into it.
    pub direction: Direction,
    pub protocol: Protocol,
    pub key: Option<&'a str>,
    /// The client.
    pub peer: SocketAddr,
    pub dst: SocketAddr,
    /// `name.namespace:port` of the target, or the passthrough address.
    pub target: &'a dyn fmt::Display,
    pub target_namespace: &'a str,
    pub service: &'a str,
    pub reason: Reason,
    /// A call that went out without the key while keyed requests were in
    /// flight ([`crate::drops`]).
    pub dropped: Option<&'a Dropped>,
    /// Its place in its call tree ([`crate::spans`]).
    pub links: Links,
}

/// How it went.
pub(crate) struct Outcome<'a> {
    pub endpoint: Option<SocketAddr>,
    /// The status sent to the client; 0 for a connection.
    pub status: u16,
    pub latency: Duration,
    pub error: Option<&'a dyn fmt::Display>,
}

/// The request line, for the tap (empty for a connection).
#[derive(Default)]
pub(crate) struct RequestLine<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    /// Without its query, which may carry secrets.
    pub path: &'a str,
    pub baggage_rejected: Option<&'static str>,
}

/// Logs the decision and offers it to the tap. `request` is only asked
/// for while the tap looks ([`Tap::looks`]).
pub(crate) fn report<'r>(
    tap: &Tap,
    d: &Decided<'_>,
    o: &Outcome<'_>,
    request: impl FnOnce() -> RequestLine<'r>,
) {
    macro_rules! line {
        ($level:expr, $($extra:tt)*) => {
            tracing::event!(
                target: "divert::decision",
                $level,
                direction = %d.direction.as_str(),
                protocol = %d.protocol.as_str(),
                key = %d.key.unwrap_or(""),
                peer = %d.peer,
                dst = %d.dst,
                target = %d.target,
                endpoint = %OrDash(o.endpoint),
                decision = %Decision::of(d.reason).as_str(),
                reason = %d.reason,
                status = o.status,
                latency_us = u64::try_from(o.latency.as_micros()).unwrap_or(u64::MAX),
                $($extra)*
            )
        };
    }
    match (o.error, d.protocol) {
        (Some(e), Protocol::Tls | Protocol::Opaque) => {
            line!(tracing::Level::INFO, error = %e, "connection failed; resetting the client")
        }
        (Some(e), _) => line!(tracing::Level::INFO, error = %e, "request failed"),
        (None, _) => line!(tracing::Level::DEBUG, "routed"),
    }
    let keyed = d.key.is_some() || d.dropped.is_some_and(|x| x.key.is_some());
    if !tap.looks(keyed) {
        return;
    }
    let request = request();
    tap.publish(&tap::Record {
        at: SystemTime::now()
            .checked_sub(o.latency)
            .unwrap_or(SystemTime::UNIX_EPOCH),
        direction: d.direction,
        protocol: d.protocol.as_str(),
        method: request.method,
        authority: request.authority,
        path: request.path,
        key: d.key,
        original_dst: d.dst,
        target: d.target,
        target_namespace: d.target_namespace,
        service: d.service,
        endpoint: o.endpoint,
        reason: d.reason,
        status: o.status,
        latency: o.latency,
        error: o.error,
        baggage_rejected: request.baggage_rejected,
        key_dropped: d.dropped.is_some(),
        dropped_key: d.dropped.and_then(|x| x.key.as_deref()),
        dropped_during: d.dropped.and_then(|x| x.during.as_deref()),
        links: d.links,
    });
}

/// An optional value in a log line: the value, or `-`.
pub(crate) struct OrDash<T>(pub Option<T>);

impl<T: fmt::Display> fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}
