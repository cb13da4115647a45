//! Waiting for what the commands deployed: every Deployment and StatefulSet
//! of the namespace rolled out (its controller saw the latest spec, and
//! every replica is updated and ready), and which running pods have no
//! proxy.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::check::{has_proxy, is_running};
use divert_inject::SkipReason;
use divert_inject::meshes::{self, MeshSwitches};

/// How often the namespace is read while waiting.
const POLL: Duration = Duration::from_millis(500);

/// What is not rolled out yet: `deployment/frontend: 0 of 1 ready`.
async fn pending(client: &kube::Client, ns: &str) -> Result<Vec<String>, kube::Error> {
    let all = ListParams::default();
    let mut out = Vec::new();
    for d in Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&all)
        .await?
        .items
    {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let s = d.status.unwrap_or_default();
        let seen = s.observed_generation >= d.metadata.generation;
        let (updated, ready) = (
            s.updated_replicas.unwrap_or(0),
            s.ready_replicas.unwrap_or(0),
        );
        if !seen || updated < want || ready < want || s.replicas.unwrap_or(0) > want {
            let name = d.metadata.name.unwrap_or_default();
            out.push(format!(
                "deployment/{name}: {ready} of {want} ready, {updated} updated"
            ));
        }
    }
    for st in Api::<StatefulSet>::namespaced(client.clone(), ns)
        .list(&all)
        .await?
        .items
    {
        let want = st.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let s = st.status.unwrap_or_default();
        let seen = s.observed_generation >= st.metadata.generation;
        let (updated, ready) = (
            s.updated_replicas.unwrap_or(0),
            s.ready_replicas.unwrap_or(0),
        );
        if !seen || updated < want || ready < want {
            let name = st.metadata.name.unwrap_or_default();
            out.push(format!(
                "statefulset/{name}: {ready} of {want} ready, {updated} updated"
            ));
        }
    }
    Ok(out)
}

/// Waits up to `limit` for every Deployment and StatefulSet of `ns` to roll
/// out; on time-out, what is still pending.
pub async fn wait(client: &kube::Client, ns: &str, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = match pending(client, ns).await {
            Ok(left) if left.is_empty() => return Ok(()),
            Ok(left) => left.join("; "),
            Err(e) => format!("cannot read the workloads of {ns}: {e}"),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "not rolled out within {limit:?}: {left}; see kubectl -n {ns} get pods, \
                 or raise --wait"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The running pods of `ns` without the proxy, each with the mesh that
/// injected it instead, if one did (its proxy is in the pod by now).
pub async fn uninjected(
    client: &kube::Client,
    ns: &str,
) -> Result<Vec<(String, Option<SkipReason>)>, kube::Error> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| is_running(p) && !has_proxy(p))
        .filter_map(|p| {
            let mesh = meshes::injecting(&p, &MeshSwitches::default());
            Some((p.metadata.name?, mesh))
        })
        .collect())
}
