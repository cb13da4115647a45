//! Divert namespaces with an end. `divert deploy --ttl 8h` writes
//! [`EXPIRES_AT`] on the namespace; once it has passed, the controller stops
//! diverting to it: it removes the namespace's label (at the version it saw,
//! so a later `divert deploy` that renewed the time wins), which drops it from
//! the routing table and has the copier delete its preview copies. The
//! namespace and everything in it stay: the data is the developer's.
//!
//! The mark that the controller set the label for an opt-in request
//! ([`OPTED_IN_BY`]) goes with it: left behind, it would make a label an
//! admin sets by hand later look like the controller's, to be taken back.

use std::collections::BTreeMap;

use divert_core::names::annotation::{EXPIRES_AT, OPTED_IN_BY};
use divert_core::names::label::SHARED_NAMESPACE;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};

use crate::copies::sources::Divert;

/// The namespaces past their time now (name and version), and the soonest
/// time still to come.
pub fn due(
    namespaces: &BTreeMap<String, Divert>,
    now: Timestamp,
) -> (Vec<(String, String)>, Option<Timestamp>) {
    let mut due = Vec::new();
    let mut next: Option<Timestamp> = None;
    for (name, d) in namespaces {
        let Some(at) = d.expires_at else { continue };
        if at <= now {
            due.push((name.clone(), d.resource_version.clone().unwrap_or_default()));
        } else {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
    (due, next)
}

/// The merge patch that ends a divert namespace at `resource_version`: its
/// label, and the controller's mark of having set it.
fn patch(resource_version: &str) -> serde_json::Value {
    serde_json::json!({"metadata": {
        "resourceVersion": resource_version,
        "labels": {SHARED_NAMESPACE: null},
        "annotations": {OPTED_IN_BY: null},
    }})
}

/// Removes `namespace`'s label, if it is still at `resource_version`.
pub async fn expire(
    client: &kube::Client,
    namespace: &str,
    resource_version: &str,
) -> Result<(), kube::Error> {
    Api::<Namespace>::all(client.clone())
        .patch(
            namespace,
            &PatchParams::default(),
            &Patch::Merge(patch(resource_version)),
        )
        .await?;
    tracing::info!(
        namespace,
        "{EXPIRES_AT} has passed: the namespace no longer diverts (its label is removed; its \
         workloads stay)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn divert(at: Option<&str>, rv: &str) -> Divert {
        Divert {
            shared: "staging".into(),
            template: None,
            expires_at: at.map(|t| t.parse().expect("a time")),
            resource_version: Some(rv.into()),
        }
    }

    #[test]
    fn the_end_takes_the_label_and_the_controllers_mark_of_it_at_the_version_seen() {
        let p = patch("7");
        let meta = &p["metadata"];
        assert_eq!(meta["resourceVersion"], "7");
        // A merge patch removes a key given as null (RFC 7396), and only it.
        assert_eq!(
            meta["labels"]
                .as_object()
                .map(|l| l.keys().collect::<Vec<_>>()),
            Some(vec![&SHARED_NAMESPACE.to_owned()])
        );
        assert!(meta["labels"][SHARED_NAMESPACE].is_null());
        assert_eq!(
            meta["annotations"]
                .as_object()
                .map(|a| a.keys().collect::<Vec<_>>()),
            Some(vec![&OPTED_IN_BY.to_owned()])
        );
        assert!(meta["annotations"][OPTED_IN_BY].is_null());
        // With no mark left, an admin's later label is not the controller's
        // to remove.
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {
            "name": "dana", "resourceVersion": "8",
            "labels": {SHARED_NAMESPACE: "staging"},
            "annotations": {EXPIRES_AT: "2026-12-01T10:00:00Z"},
        }}))
        .expect("a namespace");
        let namespaces = BTreeMap::from([("dana".to_owned(), ns)]);
        let (ops, _) = crate::optin::plan(&namespaces, &BTreeMap::new(), Timestamp::now());
        assert!(ops.is_empty(), "{ops:?}");
    }

    #[test]
    fn namespaces_past_their_time_are_due_and_the_next_one_is_known() {
        let namespaces = BTreeMap::from([
            (
                "alice".to_owned(),
                divert(Some("2026-12-01T10:00:00Z"), "5"),
            ),
            ("bob".to_owned(), divert(Some("2026-12-01T14:00:00Z"), "6")),
            (
                "carol".to_owned(),
                divert(Some("2026-12-01T12:00:00Z"), "7"),
            ),
            ("dave".to_owned(), divert(None, "8")),
        ]);
        let now: Timestamp = "2026-12-01T11:00:00Z".parse().unwrap();
        let (due, next) = due(&namespaces, now);
        assert_eq!(due, [("alice".to_owned(), "5".to_owned())]);
        assert_eq!(next, Some("2026-12-01T12:00:00Z".parse().unwrap()));
    }
}
