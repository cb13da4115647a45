//! Churn in the table and in the upstreams, one change at a time:
//! - every step, alice's web copy leaves the table or comes back (and the
//!   filler services are renamed, so each swap builds and frees a table);
//! - every few steps, staging's web or catalog copy is replaced: a new
//!   server starts, the table moves to it, and the old one shuts down
//!   gracefully, in the order Kubernetes uses (endpoints first, then the
//!   pod's termination, after a preStop pause).
//!
//! No request may fail because of any of it. While alice's copy comes or
//! goes, a request with her key may be answered by either copy; the
//! [`Epoch`] tells the clients when that is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use divert_tests::netns::Pod;

use crate::ledger::{Counts, ServiceCopy};
use crate::servers::{self, Server};
use crate::sidecar::Sidecar;
use crate::world::Layout;

/// Between the table leaving an endpoint and that endpoint's server
/// shutting down: what a pod's preStop pause gives every proxy to see the
/// change, since a request routed just before it may still be on its way.
const PRE_STOP: Duration = Duration::from_secs(1);
/// Steps between two replacements of one copy.
const REPLACE_EVERY: u64 = 6;

/// Counts table changes. Even: settled; odd: a change is being applied.
/// Alice's web copy is in the table in settled epochs 0, 4, 8, …
#[derive(Debug, Default)]
pub struct Epoch(AtomicU64);

impl Epoch {
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn step(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether alice's web copy was in the table for the whole of a request
    /// that started in epoch `start` and ended in `end`; `None` if the table
    /// changed in between, when either answer is right.
    pub fn alice_web(start: u64, end: u64) -> Option<bool> {
        (start == end && start.is_multiple_of(2)).then_some(start.is_multiple_of(4))
    }
}

/// What the churn did.
#[derive(Debug, Default)]
pub struct Report {
    pub toggles: u64,
    pub replacements: u64,
    pub slowest_apply: Duration,
}

/// A table change served later than this is logged as it happens.
const SLOW_APPLY: Duration = Duration::from_secs(1);

impl Report {
    fn applied(&mut self, step: u64, took: Duration) {
        if took > SLOW_APPLY {
            println!("soak: churn step {step}: the proxy served the new table after {took:?}");
        }
        self.slowest_apply = self.slowest_apply.max(took);
    }
}

/// The upstreams the churn replaces, and where new ones are started.
pub struct Upstreams {
    pub web_staging: Server,
    pub catalog_staging: Server,
    pub seen: Arc<Counts>,
}

/// Makes one change per `every` until `stop` turns true. Returns the
/// upstreams (for a graceful shutdown at the end) and what it did, or the
/// first change the proxy did not take.
pub async fn run(
    sidecar: &Sidecar,
    staging: &Pod,
    mut layout: Layout,
    mut upstreams: Upstreams,
    epoch: &Epoch,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (Upstreams, Result<Report, String>) {
    let mut report = Report::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    for step in 1u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        layout.generation = step;
        // Alice's copy comes or goes.
        layout.alice_web = !layout.alice_web;
        epoch.step();
        let applied = sidecar.apply(&layout).await;
        epoch.step();
        match applied {
            Ok(took) => report.applied(step, took),
            Err(e) => return (upstreams, Err(e)),
        }
        report.toggles += 1;
        // Now and then, a staging copy moves to a new server.
        let which = match step % REPLACE_EVERY {
            0 => Some(ServiceCopy::WebStaging),
            3 => Some(ServiceCopy::CatalogStaging),
            _ => None,
        };
        let Some(copy) = which else { continue };
        let listener = staging.ns.listen((staging.ipv4, 0).into());
        let (new, slot, addr) = match copy {
            ServiceCopy::WebStaging => (
                servers::http(listener, copy, upstreams.seen.clone()),
                &mut upstreams.web_staging,
                &mut layout.web_staging,
            ),
            _ => (
                servers::grpc(listener, copy, upstreams.seen.clone()),
                &mut upstreams.catalog_staging,
                &mut layout.catalog_staging,
            ),
        };
        *addr = new.addr;
        let old = std::mem::replace(slot, new);
        match sidecar.apply(&layout).await {
            Ok(took) => report.applied(step, took),
            Err(e) => return (upstreams, Err(e)),
        }
        tokio::time::sleep(PRE_STOP).await;
        old.shutdown().await;
        report.replacements += 1;
    }
    (upstreams, Ok(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alice_s_copy_is_known_only_for_requests_within_one_settled_epoch() {
        assert_eq!(Epoch::alice_web(0, 0), Some(true));
        assert_eq!(Epoch::alice_web(2, 2), Some(false));
        assert_eq!(Epoch::alice_web(4, 4), Some(true));
        assert_eq!(Epoch::alice_web(1, 1), None, "a change in flight");
        assert_eq!(Epoch::alice_web(0, 2), None, "a change came in between");
        let e = Epoch::default();
        e.step();
        e.step();
        assert_eq!(Epoch::alice_web(e.now(), e.now()), Some(false));
    }
}
