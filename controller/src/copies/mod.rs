//! Preview copies: the edge's half in the controller (ARCHITECTURE.md,
//! "The edge: preview URLs").
//!
//! Each Ingress and Gateway API HTTPRoute of a shared namespace `S` gets a
//! managed copy in every divert namespace `K` of `S`, with `K`'s hosts, so
//! that whichever ingress controller or gateway serves `S`'s URLs serves
//! `K`'s preview URLs too; a backend Service `K` does not run is made in `K`
//! leading to `S`'s. The HTTPRoute copies add the key to the request
//! themselves; for the Ingress copies the proxies add it from the preview
//! hosts ([`crate::hosts`]).
//!
//! The copier is level-based: after any change of what it reads
//! ([`Sources`], fed by the controller's watches through a [`Feed`]), it
//! compares every copy that should exist with every managed object that
//! does ([`plan`]) and writes the difference ([`write`]). Changes that
//! arrive during a round wake it again; a failed write is retried after
//! [`RETRY`], and everything is compared again every [`RESYNC`], so a missed
//! wake-up, a copy deleted by hand, or one whose content hash
//! (`divert.dev/content-hash`) no longer matches, heals on its own. An edit
//! of a copy that leaves the hash as it was is not noticed until the source
//! changes. The divert
//! namespaces' own labels (opt-in, expiry) are kept by a loop of their own
//! ([`crate::namespaces`]) over the same sources.

pub mod istio;
pub mod plan;
pub mod rename;
pub mod sources;
pub mod write;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kube::Client;
use tokio::sync::Notify;

pub use plan::{Kind, is_managed, is_own_service};
pub use sources::Sources;

/// How soon a failed write is tried again.
pub const RETRY: Duration = Duration::from_secs(5);
/// How often everything is compared even without a change.
pub const RESYNC: Duration = Duration::from_secs(300);

/// The watches' side: where they put what they see, and how they wake the
/// loops that read it: the copier, and the one that keeps the divert
/// namespaces' labels ([`crate::namespaces`]).
#[derive(Clone, Default)]
pub struct Feed {
    sources: Arc<Mutex<Sources>>,
    wakes: Arc<[Notify; 2]>,
}

/// A loop that reads the [`Feed`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reader {
    Copier = 0,
    Namespaces = 1,
}

impl Feed {
    /// Runs `f` on the sources and wakes every reader.
    pub fn update(&self, f: impl FnOnce(&mut Sources)) {
        f(&mut self.lock());
        for wake in self.wakes.iter() {
            wake.notify_one();
        }
    }

    /// Waits until the sources change (since `reader` last waited), or for
    /// `limit`.
    pub(crate) async fn changed(&self, reader: Reader, limit: Duration) {
        // A timeout is a round too.
        let _ = tokio::time::timeout(limit, self.wakes[reader as usize].notified()).await;
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Sources> {
        // A panic while holding the lock leaves plain data behind: use it.
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the copier did, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    copies: Mutex<BTreeMap<Kind, usize>>,
    problems: AtomicU64,
    /// This round's problems, for `/copies`.
    problem_list: Mutex<Vec<plan::Problem>>,
    writes: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    expired: AtomicU64,
}

impl Stats {
    /// Copies that should exist now, by kind (every kind, zeros included).
    pub fn copies(&self) -> Vec<(Kind, usize)> {
        let copies = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        Kind::ALL
            .iter()
            .map(|k| (*k, copies.get(k).copied().unwrap_or_default()))
            .collect()
    }

    /// Copies not made now (a user's object in the way, a bad host template).
    pub fn problems(&self) -> u64 {
        self.problems.load(Ordering::Relaxed)
    }

    /// The copies not made now, each with why (`/copies`).
    pub fn problem_list(&self) -> Vec<plan::Problem> {
        self.problem_list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Divert namespaces ended because their time had passed.
    pub fn expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }

    /// Writes so far, by operation and result.
    pub fn writes(&self) -> Vec<((&'static str, &'static str), u64)> {
        let writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        writes.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Records one round's plan.
    pub(crate) fn set_plan(&self, plan: &plan::Plan) {
        *self.copies.lock().unwrap_or_else(|e| e.into_inner()) = plan.copies.clone();
        self.problems
            .store(plan.problems.len() as u64, Ordering::Relaxed);
        plan.problems
            .clone_into(&mut self.problem_list.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Counts a divert namespace ended because its time had passed.
    pub(crate) fn count_expired(&self) {
        self.expired.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_write(&self, op: &'static str, result: &'static str) {
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        *writes.entry((op, result)).or_default() += 1;
    }
}

/// Keeps the copies until the task is dropped: a round after each wake-up
/// from `feed`, after a failed write, and every [`RESYNC`].
pub async fn run(client: Client, feed: Feed, stats: Arc<Stats>) {
    let mut failed = false;
    let mut reported = Vec::new();
    loop {
        let wait = if failed { RETRY } else { RESYNC };
        feed.changed(Reader::Copier, wait).await;
        let plan = plan::plan(&feed.lock());
        failed = false;
        stats.set_plan(&plan);
        if plan.problems != reported {
            for p in plan.problems.iter().filter(|p| !reported.contains(p)) {
                tracing::warn!(kind = p.kind.as_str(), namespace = %p.namespace, name = %p.name, "preview copy not made: {}", p.why);
            }
            reported = plan.problems;
        }
        for op in plan.ops {
            let (name, result) = write::write(&client, &op).await;
            stats.count_write(name, result.as_str());
            failed |= result.retry();
        }
    }
}
