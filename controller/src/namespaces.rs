//! The divert namespaces' labels, kept by a loop of their own: the labels
//! asked for by ConfigMap ([`crate::optin`]), and the ends of namespaces
//! whose time has passed ([`crate::expiry`]). It reads what the watches put
//! in the copier's [`Sources`] (every namespace, the opt-in ConfigMaps, the
//! divert namespaces), and runs a round after each change, after a failed
//! write ([`RETRY`]), every [`RESYNC`], and when the next namespace's time
//! is due. What it writes (a namespace's label) comes back through the
//! watches like anyone's edit: the table and the copier follow from there.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use divert_core::names::object::{CONTROLLER, OPT_IN};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::copies::{Feed, RESYNC, RETRY, Reader, Sources, Stats};
use crate::{expiry, optin};

/// Keeps the labels until the task is dropped.
pub async fn run(client: Client, feed: Feed, stats: Arc<Stats>) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER.to_owned(),
            instance: std::env::var("HOSTNAME").ok(),
        },
    );
    // The outcome last published for each opt-in request.
    let mut announced: BTreeMap<String, optin::Outcome> = BTreeMap::new();
    let mut failed = false;
    let mut next_expiry: Option<Timestamp> = None;
    loop {
        let mut wait = if failed { RETRY } else { RESYNC };
        if let Some(at) = next_expiry {
            let left = at.duration_since(Timestamp::now());
            wait = wait.min(Duration::try_from(left).unwrap_or(Duration::ZERO));
        }
        feed.changed(Reader::Namespaces, wait).await;
        let now = Timestamp::now();
        let (due, opt_ins) = {
            let sources = feed.lock();
            let (due, next) = due(&sources, now);
            next_expiry = next;
            let opt_ins = sources
                .opt_ins()
                .map(|(namespaces, requests)| optin::plan(namespaces, requests, now));
            (due, opt_ins)
        };
        failed = false;
        if let Some((ops, outcomes)) = opt_ins {
            failed |= opt_in(&client, &recorder, &mut announced, ops, outcomes).await;
        }
        for (namespace, resource_version) in due {
            match expiry::expire(&client, &namespace, &resource_version).await {
                Ok(()) => stats.count_expired(),
                Err(error) => {
                    tracing::warn!(%namespace, %error, "cannot end an expired divert namespace (the controller needs patch on namespaces); retrying");
                    failed = true;
                }
            }
        }
    }
}

/// The divert namespaces past their time, and when the next one is due:
/// none before the watches have listed everything once.
fn due(sources: &Sources, now: Timestamp) -> (Vec<(String, String)>, Option<Timestamp>) {
    if sources.is_listed() {
        expiry::due(sources.divert_namespaces(), now)
    } else {
        (Vec::new(), None)
    }
}

/// Writes one round's opt-in labels and tells each request's outcome once
/// (as an Event on its ConfigMap). Whether a write failed.
async fn opt_in(
    client: &Client,
    recorder: &Recorder,
    announced: &mut BTreeMap<String, optin::Outcome>,
    ops: Vec<optin::Op>,
    outcomes: Vec<optin::Outcome>,
) -> bool {
    let mut failed = false;
    // An outcome is told only once its label is written: a developer who
    // reads "diverting" then deploys pods that get the proxy.
    let mut unwritten = BTreeSet::new();
    for op in &ops {
        if let Err(error) = optin::write(client, op).await {
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
        if announce(recorder, &o).await.is_ok() {
            announced.insert(o.namespace.clone(), o);
        }
    }
    failed
}

/// Publishes an opt-in outcome as an Event on the request's ConfigMap,
/// where the developer who made it can read it (`kubectl get events`,
/// `divert deploy`).
async fn announce(recorder: &Recorder, o: &optin::Outcome) -> Result<(), kube::Error> {
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
            optin::REASON_DIVERTING
        } else {
            optin::REASON_NOT_DIVERTING
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
