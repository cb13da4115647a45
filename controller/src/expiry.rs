//! Divert namespaces with an end. `divert deploy --ttl 8h` writes
//! [`EXPIRES_AT`] on the namespace; once it has passed, the controller stops
//! diverting to it: it removes the namespace's label (at the version it saw,
//! so a later `divert deploy` that renewed the time wins), which drops it from
//! the routing table and has the copier delete its preview copies. The
//! namespace and everything in it stay: the data is the developer's.

use std::collections::BTreeMap;

use divert_core::names::annotation::EXPIRES_AT;
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

/// Removes `namespace`'s label, if it is still at `resource_version`.
pub async fn expire(
    client: &kube::Client,
    namespace: &str,
    resource_version: &str,
) -> Result<(), kube::Error> {
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": resource_version,
        "labels": {SHARED_NAMESPACE: null},
    }});
    Api::<Namespace>::all(client.clone())
        .patch(namespace, &PatchParams::default(), &Patch::Merge(patch))
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
