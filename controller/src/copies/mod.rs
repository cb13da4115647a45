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
//! wake-up or an edit of a copy by hand heals on its own. The same loop ends
//! divert namespaces whose time has passed ([`crate::expiry`]), waking when
//! the next one is due.

pub mod plan;
pub mod rename;
pub mod sources;
pub mod write;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use divert_core::names::object::{CONTROLLER, OPT_IN};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::Notify;

pub use plan::{Kind, is_managed, is_own_service};
pub use sources::Sources;

/// How soon a failed write is tried again.
pub const RETRY: Duration = Duration::from_secs(5);
/// How often everything is compared even without a change.
pub const RESYNC: Duration = Duration::from_secs(300);

/// The watches' side: where they put what they see, and how they wake the
/// copier.
#[derive(Clone, Default)]
pub struct Feed {
    sources: Arc<Mutex<Sources>>,
    wake: Arc<Notify>,
}

impl Feed {
    /// Runs `f` on the sources and wakes the copier.
    pub fn update(&self, f: impl FnOnce(&mut Sources)) {
        f(&mut self.lock());
        self.wake.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, Sources> {
        // A panic while holding the lock leaves plain data behind: use it.
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the copier did, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    copies: Mutex<BTreeMap<Kind, usize>>,
    problems: AtomicU64,
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
    let mut next_expiry: Option<Timestamp> = None;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER.to_owned(),
            instance: std::env::var("HOSTNAME").ok(),
        },
    );
    // The outcome last published for each opt-in request.
    let mut announced: BTreeMap<String, crate::optin::Outcome> = BTreeMap::new();
    loop {
        let mut wait = if failed { RETRY } else { RESYNC };
        if let Some(at) = next_expiry {
            let left = at.duration_since(Timestamp::now());
            wait = wait.min(Duration::try_from(left).unwrap_or(Duration::ZERO));
        }
        // A timeout is a round too.
        let _ = tokio::time::timeout(wait, feed.wake.notified()).await;
        let now = Timestamp::now();
        let (plan, due, opt_ins) = {
            let sources = feed.lock();
            let (due, next) = if sources.is_listed() {
                crate::expiry::due(sources.divert_namespaces(), now)
            } else {
                (Vec::new(), None)
            };
            next_expiry = next;
            let opt_ins = sources
                .opt_ins()
                .map(|(namespaces, requests)| crate::optin::plan(namespaces, requests, now));
            (plan::plan(&sources), due, opt_ins)
        };
        failed = false;
        if let Some((ops, outcomes)) = opt_ins {
            // An outcome is told only once its label is written: a developer
            // who reads "diverting" then deploys pods that get the proxy.
            let mut unwritten = std::collections::BTreeSet::new();
            for op in &ops {
                if let Err(error) = crate::optin::write(&client, op).await {
                    tracing::warn!(?op, %error, "cannot write an opt-in (the controller needs patch on namespaces); retrying");
                    unwritten.insert(op.namespace().to_owned());
                    failed = true;
                }
            }
            announced.retain(|ns, _| outcomes.iter().any(|o| &o.namespace == ns));
            for o in outcomes {
                if announced.get(&o.namespace) == Some(&o) || unwritten.contains(&o.namespace) {
                    continue;
                }
                tracing::info!(namespace = %o.namespace, diverting = o.diverting, "opt-in: {}", o.message);
                if announce(&recorder, &o).await.is_ok() {
                    announced.insert(o.namespace.clone(), o);
                }
            }
        }
        for (namespace, resource_version) in due {
            match crate::expiry::expire(&client, &namespace, &resource_version).await {
                Ok(()) => {
                    stats.expired.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(%namespace, %error, "cannot end an expired divert namespace (the controller needs patch on namespaces); retrying");
                    failed = true;
                }
            }
        }
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

/// Publishes an opt-in outcome as an Event on the request's ConfigMap,
/// where the developer who made it can read it (`kubectl get events`,
/// `divert deploy`).
async fn announce(recorder: &Recorder, o: &crate::optin::Outcome) -> Result<(), kube::Error> {
    let reference = ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("ConfigMap".to_owned()),
        namespace: Some(o.namespace.clone()),
        name: Some(OPT_IN.to_owned()),
        ..ObjectReference::default()
    };
    let event = Event {
        type_: if o.diverting {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: if o.diverting {
            crate::optin::REASON_DIVERTING
        } else {
            crate::optin::REASON_NOT_DIVERTING
        }
        .to_owned(),
        note: Some(o.message.clone()),
        action: "OptIn".to_owned(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await.inspect_err(|error| {
        tracing::warn!(namespace = %o.namespace, %error, "cannot publish the opt-in's Event (the controller needs create on events.k8s.io events)");
    })
}
