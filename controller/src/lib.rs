//! Divert's controller: watches Namespaces, Services, EndpointSlices and
//! Ingresses and streams the routing table to every proxy over gRPC; keeps
//! the objects Divert writes (the preview copies of Ingresses and
//! HTTPRoutes, the labels of namespaces opted in by ConfigMap or past their
//! time); injects the proxy into pods (the admission webhook); relays the
//! tap.
//!
//! - [`store`]: the table, its revisions, and per-proxy coalesced updates.
//! - [`translate`]: Kubernetes Namespaces, Services and EndpointSlices → table messages.
//! - [`cluster`]: the watched objects' index; each event → the table changes it causes.
//! - [`hosts`]: preview hosts, the shared Ingresses' hosts renamed for each divert namespace.
//! - [`copies`]: the preview copies of shared Ingresses and HTTPRoutes in
//!   each divert namespace, and the Services they lead to.
//! - [`namespaces`]: the loop that keeps the divert namespaces' labels:
//!   [`optin`] (labelling namespaces whose developers asked with a
//!   ConfigMap) and [`expiry`] (ending those whose `divert.dev/expires-at`
//!   passed).
//! - [`webhook`]: the mutating admission webhook (HTTPS, AdmissionReview v1).
//! - [`kubernetes`]: the kube-rs client, found one way for the controller
//!   and the CLI.
//! - [`watches`]: the watched kinds, one table of them, and the one loop
//!   that feeds [`cluster`] (into a sink) and the copier.
//! - [`tap`]: the Tap relay, merging the live decisions of many proxies.
//! - [`auth`]: who calls the gRPC API (proxies by their pod's token, people
//!   by their Kubernetes credentials) and what they may see.
//! - [`server`]: the gRPC API, over TLS.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod copies;
pub mod expiry;
pub mod hosts;
pub mod kubernetes;
pub mod namespaces;
pub mod optin;
pub mod server;
pub mod store;
pub mod tap;
pub mod translate;
pub mod watches;
pub mod webhook;

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;

use crate::store::Store;

/// The admission webhook's listener, certificate and injection settings.
pub struct WebhookConfig {
    pub listener: TcpListener,
    pub cert: Arc<webhook::ReloadingCert>,
    /// The TLS configuration serving `cert` ([`webhook::ReloadingCert::server_config`]).
    pub tls: Arc<rustls::ServerConfig>,
    pub settings: divert_inject::Settings,
}

/// How often the webhook's certificate files are checked for a new pair.
const CERT_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the controller until `shutdown`: the Kubernetes watches feed the
/// store, which the Discovery API serves on `grpc` (with the Tap relay),
/// over `grpc_tls`, every call authenticated with the cluster's identities;
/// `admin` serves `/live`, `/ready` and `/metrics`; the webhook, if
/// configured, injects new pods. With `istio` (the cluster's DNS domain),
/// the istio driver is on: the copier also writes Istio's routes
/// ([`copies::istio`]).
pub async fn run(
    client: ::kube::Client,
    grpc: TcpListener,
    grpc_tls: Option<server::Tls>,
    admin: TcpListener,
    webhook: Option<WebhookConfig>,
    istio: Option<String>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let store = Store::new();
    let feed = copies::Feed::default();
    if let Some(domain) = istio {
        feed.update(|s| s.enable_istio(&domain));
    }
    let mut background = tokio::task::JoinSet::new();
    if let Some(w) = webhook {
        background.spawn(w.cert.clone().watch(CERT_RELOAD_INTERVAL));
        background.spawn(webhook::serve(
            w.listener,
            w.tls,
            webhook::pod_mutator(store.clone(), feed.clone(), w.settings),
        ));
    }
    let skipped: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let copy_stats = Arc::new(copies::Stats::default());
    background.spawn(copies::run(
        client.clone(),
        feed.clone(),
        copy_stats.clone(),
    ));
    background.spawn(namespaces::run(
        client.clone(),
        feed.clone(),
        copy_stats.clone(),
    ));
    let watches = {
        let store = store.clone();
        let skipped = skipped.clone();
        let synced = store.clone();
        watches::run_with_state(
            client.clone(),
            Some(feed.clone()),
            move |changes, state| {
                if !changes.is_empty() {
                    store.apply(changes);
                }
                if let Ok(mut s) = skipped.lock() {
                    *s = state
                        .skipped()
                        .into_iter()
                        .map(|(reason, n)| (reason.as_str().to_string(), n as u64))
                        .collect();
                }
            },
            move || {
                tracing::info!("namespaces, services and endpoint slices listed; ready");
                synced.set_synced();
            },
        )
    };
    let admin_task = tokio::spawn(admin::serve(
        admin,
        admin::Admin {
            store: store.clone(),
            skipped: Some(Arc::new(move || {
                skipped.lock().map(|s| s.clone()).unwrap_or_default()
            })),
            copies: Some(copy_stats),
        },
    ));
    let watch_task = tokio::spawn(watches);
    let access = auth::Access::Kubernetes(auth::Authenticator::new(client));
    let result = server::serve(grpc, store, access, grpc_tls, shutdown).await;
    admin_task.abort();
    watch_task.abort();
    background.abort_all();
    result
}
