//! Fetching: what the checks need, read from the API server (and the
//! controller's admin `/proxies`, through the API server's service proxy)
//! into a [`ClusterView`]. Every request has a time limit; a failed one is
//! recorded in the view, for the check that needs it to report.

use std::collections::BTreeSet;
use std::error::Error as _;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use divert_core::names::object::{CONTROLLER, TLS_SECRET, WEBHOOK_CONFIGURATION};
use divert_core::names::port::CONTROLLER_ADMIN_NAME as ADMIN_PORT_NAME;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::Client;
use kube::api::{Api, ListParams};

use divert_controller::admin::{COPIES, KEY_DROPS};

use super::{ClusterView, ConnectedProxy, Copies, Fetched, KeyDrops, Unreachable, opted_in};
use crate::preview::{Preview, fetch_one, shared_of};

/// A client for the API server, and its URL: from `kubeconfig` when given;
/// else the in-cluster config in a pod; else `KUBECONFIG`, then
/// `~/.kube/config` (as `divert_controller::kubernetes::client` finds it).
/// Unlike the controller's client, it does not retry 429, 503 and 504
/// answers: the controller's `/proxies` through the service proxy answers 503
/// when the controller has no ready pod, and that answer is the news. It
/// gives up connecting and reading after `timeout`.
pub async fn client(
    kubeconfig: Option<&Path>,
    timeout: Duration,
) -> Result<(Client, String), Unreachable> {
    let mut config = divert_controller::kubernetes::config(kubeconfig).await?;
    config.default_retry = false;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .map_err(|e| Unreachable::Config(divert_controller::kubernetes::Error::Client(e)))?;
    Ok((client, url))
}

/// Asks the API server for its version: the cheapest request that proves it
/// answers (every authenticated user, and usually anyone, may make it).
pub async fn reachable(client: &Client, url: &str, timeout: Duration) -> Result<(), Unreachable> {
    within(timeout, client.apiserver_version())
        .await
        .map(drop)
        .map_err(|reason| Unreachable::ApiServer {
            url: url.trim_end_matches('/').to_owned(),
            reason,
        })
}

/// Reads everything [`super::evaluate`] judges. Each part that cannot be read is
/// recorded as its error; it never gives up on the others.
pub async fn fetch(client: &Client, install_ns: &str, timeout: Duration) -> ClusterView {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), install_ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), install_ns);
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let all = ListParams::default();
    let (deployment, secret, webhook, namespaces, proxies, key_drops, copies) = tokio::join!(
        within(timeout, deployments.get_opt(CONTROLLER)),
        within(timeout, secrets.get_opt(TLS_SECRET)),
        within(timeout, webhooks.get_opt(WEBHOOK_CONFIGURATION)),
        within(timeout, namespaces.list(&all)),
        fetch_proxies(client, install_ns, timeout),
        fetch_key_drops(client, install_ns, timeout),
        fetch_copies(client, install_ns, timeout),
    );
    let namespaces = namespaces.map(|list| list.items);
    let pods = match &namespaces {
        Ok(all) => fetch_pods(client, &opted_in(all, install_ns), timeout).await,
        Err(e) => Err(format!("the namespaces could not be listed: {e}")),
    };
    let previews = match &namespaces {
        Ok(all) => fetch_previews(client, all, timeout).await,
        Err(e) => Err(format!("the namespaces could not be listed: {e}")),
    };
    ClusterView {
        deployment,
        secret,
        webhook,
        namespaces,
        pods,
        proxies,
        previews,
        key_drops,
        copies,
    }
}

/// The preview of each divert namespace.
async fn fetch_previews(
    client: &Client,
    namespaces: &[Namespace],
    timeout: Duration,
) -> Fetched<Vec<Preview>> {
    let mut previews = Vec::new();
    for ns in namespaces {
        if let (Some(name), Some(shared)) = (ns.metadata.name.as_deref(), shared_of(ns)) {
            previews.push(fetch_one(client, name, shared, timeout).await?);
        }
    }
    Ok(previews)
}

/// The pods of each opted-in namespace.
pub(super) async fn fetch_pods(
    client: &Client,
    namespaces: &BTreeSet<String>,
    timeout: Duration,
) -> Fetched<Vec<Pod>> {
    let mut pods = Vec::new();
    for ns in namespaces {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let list = within(timeout, api.list(&ListParams::default()))
            .await
            .map_err(|e| format!("cannot list the pods of namespace {ns}: {e}"))?;
        pods.extend(list.items);
    }
    Ok(pods)
}

/// The API server path of the controller's `/proxies`, through the service
/// proxy (`divert-controller:admin`).
pub fn proxies_path(install_ns: &str) -> String {
    format!("/api/v1/namespaces/{install_ns}/services/{CONTROLLER}:{ADMIN_PORT_NAME}/proxy/proxies")
}

/// The proxies connected to the controller, from its `/proxies` through
/// the API server's service proxy.
pub async fn fetch_proxies(
    client: &Client,
    install_ns: &str,
    timeout: Duration,
) -> Fetched<Vec<ConnectedProxy>> {
    let request = http::Request::get(proxies_path(install_ns))
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    within(timeout, client.request::<Vec<ConnectedProxy>>(request)).await
}

/// The API server path of the controller's `/key-drops`, through the
/// service proxy.
pub fn key_drops_path(install_ns: &str) -> String {
    format!(
        "/api/v1/namespaces/{install_ns}/services/{CONTROLLER}:{ADMIN_PORT_NAME}/proxy{KEY_DROPS}"
    )
}

/// The key drops the controller gathered from its proxies.
pub async fn fetch_key_drops(
    client: &Client,
    install_ns: &str,
    timeout: Duration,
) -> Fetched<KeyDrops> {
    let request = http::Request::get(key_drops_path(install_ns))
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    // The controller asks every proxy, each within its own limit.
    within(timeout * 2, client.request::<KeyDrops>(request)).await
}

/// The API server path of the controller's `/copies`, through the service
/// proxy.
pub fn copies_path(install_ns: &str) -> String {
    format!("/api/v1/namespaces/{install_ns}/services/{CONTROLLER}:{ADMIN_PORT_NAME}/proxy{COPIES}")
}

/// The copies and routes the controller could not make.
pub async fn fetch_copies(client: &Client, install_ns: &str, timeout: Duration) -> Fetched<Copies> {
    let request = http::Request::get(copies_path(install_ns))
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    within(timeout, client.request::<Copies>(request)).await
}

/// Runs one request with a deadline; its error as a one-line message.
pub(super) async fn within<T>(
    timeout: Duration,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Fetched<T> {
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// A kube error as one line: the API server's own message for a refusal,
/// else the chain of causes (kube's top-level message alone is often just
/// "client error (Connect)").
pub(super) fn describe(e: &kube::Error) -> String {
    if let kube::Error::Api(status) = e {
        let mut s = format!("{} {}", status.code, status.reason);
        if !status.message.is_empty() {
            s.push_str(": ");
            s.push_str(&status.message);
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}
