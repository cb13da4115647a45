//! The table from the controller: `divert-proxy proxy --discovery ADDR`.
//!
//! One `Watch` stream: a snapshot, then updates, each applied atomically as a
//! [`TablePatch`]. When the stream fails the proxy keeps routing with the last
//! table, reports it stale, and reconnects with exponential backoff and
//! jitter; the next snapshot replaces the table (keeping warm pools).
//!
//! In a cluster the stream is TLS, verified against the CA injection hands
//! the proxy, and each attempt presents the pod's token for the controller
//! (re-read every time: the kubelet renews it). The snapshot carries the
//! key the controller will present to this proxy's tap ([`ControllerKey`]).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::path::PathBuf;

use divert_proto::discovery::v1 as pb;
use divert_proto::discovery::v1::discovery_client::DiscoveryClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::table::{HostSpec, NamespaceSpec, PortSpec, ServiceSpec, TablePatch};
use crate::tables::Tables;

/// Where and how to reach the controller.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    /// `https://host:port` (or, on one host, `http://`) of the controller's
    /// gRPC service.
    pub endpoint: String,
    /// The CA (PEM) the controller's certificate must chain to: required
    /// for `https://`. No system roots are trusted.
    pub ca: Option<String>,
    /// The file holding the pod's token for the controller, read at each
    /// connection.
    pub token_file: Option<PathBuf>,
    /// The name the controller's certificate must carry, when it is not the
    /// URL's host (an address, say).
    pub server_name: Option<String>,
    /// How this proxy describes itself to the controller.
    pub proxy: pb::ProxyInfo,
    pub connect_timeout: Duration,
    /// The first and the longest wait between reconnection attempts.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl DiscoverySettings {
    pub fn new(endpoint: impl Into<String>) -> Self {
        DiscoverySettings {
            endpoint: endpoint.into(),
            ca: None,
            token_file: None,
            server_name: None,
            proxy: pb::ProxyInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                ..pb::ProxyInfo::default()
            },
            connect_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// Where the table came from and whether it is current.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableStatus {
    /// A stream to the controller is open and its snapshot was applied.
    pub connected: bool,
    /// The controller revision the table reflects (0: none yet).
    pub revision: u64,
    /// Since when the table may be out of date (no stream), if it may.
    pub stale_since: Option<Instant>,
    /// Why the last stream ended, if it failed.
    pub last_error: Option<String>,
    /// Snapshots and updates applied.
    pub updates_applied: u64,
}

impl TableStatus {
    pub fn is_stale(&self) -> bool {
        self.stale_since.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("invalid controller address {0:?}: {1}")]
    Address(String, #[source] tonic::transport::Error),
    #[error(
        "the controller is at an https:// address, but no CA was given to verify it (--controller-ca)"
    )]
    NoCa,
    #[error("cannot read the token for the controller from {}: {source}", path.display())]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to the controller at {url}: {}", divert_core::error::chain(.source))]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("the controller refused the watch ({:?}): {}", .0.code(), .0.message())]
    Watch(#[source] tonic::Status),
    #[error("the stream broke ({:?}): {}", .0.code(), .0.message())]
    Stream(#[source] tonic::Status),
    #[error("the controller's first message was not a snapshot")]
    NoSnapshot,
    #[error("the controller closed the stream")]
    Closed,
    #[error("applying an update failed: {0}")]
    Apply(#[source] tokio::task::JoinError),
}

/// The key the controller presents (`authorization: Bearer <key>`) when it
/// opens this proxy's tap or reads its routes: the one the current stream's
/// snapshot carried. None without a stream.
#[derive(Debug, Default)]
pub struct ControllerKey(arc_swap::ArcSwapOption<String>);

impl ControllerKey {
    fn set(&self, key: Option<Arc<String>>) {
        self.0.store(key);
    }

    /// Whether `authorization` (a header's value) presents the key.
    pub fn presented_by(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(|a| a.strip_prefix(b"Bearer ")) else {
            return false;
        };
        self.0
            .load()
            .as_ref()
            .is_some_and(|k| same(k.as_bytes(), given.trim_ascii()))
    }
}

/// Compares in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Follows the controller forever.
pub async fn run(settings: DiscoverySettings, tables: Arc<Tables>, key: Arc<ControllerKey>) {
    let mut backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
    loop {
        let got_snapshot = watch_once(&settings, &tables, &key).await;
        key.set(None);
        let (ok, error) = match got_snapshot {
            (got, Err(e)) => (got, e),
            (got, Ok(())) => (got, StreamError::Closed),
        };
        if ok {
            backoff.reset();
        }
        let wait = backoff.next();
        tables.update_status(|s| {
            s.connected = false;
            s.stale_since.get_or_insert_with(Instant::now);
            s.last_error = Some(error.to_string());
        });
        tracing::warn!(controller = %settings.endpoint, error = %error, retry_in = ?wait, "routing with the last table until the controller is back");
        tokio::time::sleep(wait).await;
    }
}

/// One stream; returns whether a snapshot was applied, and how it ended.
async fn watch_once(
    settings: &DiscoverySettings,
    tables: &Arc<Tables>,
    key: &ControllerKey,
) -> (bool, Result<(), StreamError>) {
    let token = match &settings.token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(source) => {
                let path = path.clone();
                return (false, Err(StreamError::Token { path, source }));
            }
        },
        None => None,
    };
    let endpoint = match Endpoint::from_shared(settings.endpoint.clone()) {
        Ok(e) => e
            .connect_timeout(settings.connect_timeout)
            // Notice a controller that vanished without closing the stream.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true),
        Err(e) => {
            return (
                false,
                Err(StreamError::Address(settings.endpoint.clone(), e)),
            );
        }
    };
    let endpoint = if settings.endpoint.starts_with("https://") {
        let Some(ca) = &settings.ca else {
            return (false, Err(StreamError::NoCa));
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some(name) = &settings.server_name {
            tls = tls.domain_name(name.clone());
        }
        match endpoint.tls_config(tls) {
            Ok(e) => e,
            Err(e) => {
                return (
                    false,
                    Err(StreamError::Address(settings.endpoint.clone(), e)),
                );
            }
        }
    } else {
        endpoint
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            return (
                false,
                Err(StreamError::Connect {
                    url: settings.endpoint.clone(),
                    source: e,
                }),
            );
        }
    };
    let mut client = DiscoveryClient::new(channel).max_decoding_message_size(256 << 20);
    let mut request = tonic::Request::new(pb::WatchRequest {
        proxy: Some(settings.proxy.clone()),
    });
    if let Some(token) = token
        && let Ok(v) = format!("Bearer {token}").parse()
    {
        request.metadata_mut().insert("authorization", v);
    }
    let mut stream = match client.watch(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return (false, Err(StreamError::Watch(status))),
    };
    let mut got_snapshot = false;
    loop {
        let update = match stream.message().await {
            Ok(Some(u)) => u,
            Ok(None) => return (got_snapshot, Ok(())),
            Err(status) => return (got_snapshot, Err(StreamError::Stream(status))),
        };
        if !got_snapshot && !update.snapshot {
            return (false, Err(StreamError::NoSnapshot));
        }
        let started = Instant::now();
        let (snapshot, revision) = (update.snapshot, update.revision);
        if snapshot && !update.tap_key.is_empty() {
            key.set(String::from_utf8(update.tap_key.clone()).ok().map(Arc::new));
        }
        // A snapshot of a large cluster takes a while to build: it is built
        // on a blocking thread, off the serving path, and swapped in whole.
        let applying = tables.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let patch = to_patch(&update);
            let version = applying.patch(&patch);
            (version, patch.services.len(), patch.namespaces.len())
        })
        .await;
        let (version, services, namespaces) = match applied {
            Ok(a) => a,
            Err(e) => return (got_snapshot, Err(StreamError::Apply(e))),
        };
        if snapshot {
            got_snapshot = true;
            tracing::info!(revision, services, namespaces, took = ?started.elapsed(), "table snapshot from the controller");
        } else {
            tracing::debug!(revision, version, took = ?started.elapsed(), "table update from the controller");
        }
        tables.update_status(|s| {
            s.connected = true;
            s.revision = revision;
            s.stale_since = None;
            s.last_error = None;
            s.updates_applied += 1;
        });
    }
}

/// The controller's message as a table patch. Malformed entries (an address
/// of the wrong length, a port out of range) are dropped with a warning.
pub fn to_patch(u: &pb::TableUpdate) -> TablePatch {
    TablePatch {
        replace: u.snapshot,
        namespaces: u
            .namespaces
            .iter()
            .map(|n| NamespaceSpec {
                name: n.name.clone(),
                shared_namespace: (!n.shared_namespace.is_empty())
                    .then(|| n.shared_namespace.clone()),
                key_cookie: n.key_cookie,
            })
            .collect(),
        deleted_namespaces: u.deleted_namespaces.clone(),
        services: u.services.iter().filter_map(service_spec).collect(),
        deleted_services: u
            .deleted_services
            .iter()
            .map(|k| (k.namespace.clone(), k.name.clone()))
            .collect(),
        hosts: u.hosts_changed.then(|| {
            u.hosts
                .iter()
                .map(|h| HostSpec {
                    host: h.host.clone(),
                    namespace: h.namespace.clone(),
                })
                .collect()
        }),
    }
}

fn service_spec(s: &pb::Service) -> Option<ServiceSpec> {
    let bad = |what: &str| {
        tracing::warn!(service = %s.name, namespace = %s.namespace, "service from the controller skipped: {what}");
    };
    let mut addresses = Vec::with_capacity(s.addresses.len());
    for a in &s.addresses {
        let Some(ip) = ip(a) else {
            bad("an address is neither 4 nor 16 bytes");
            return None;
        };
        addresses.push(ip);
    }
    let mut ports = Vec::with_capacity(s.ports.len());
    for p in &s.ports {
        let Ok(port) = u16::try_from(p.port) else {
            bad("a port is out of range");
            return None;
        };
        let mut endpoints = Vec::with_capacity(p.endpoints.len());
        for e in &p.endpoints {
            match (ip(&e.ip), u16::try_from(e.port)) {
                (Some(ip), Ok(port)) if port != 0 => endpoints.push(SocketAddr::new(ip, port)),
                _ => {
                    bad("an endpoint is malformed");
                    return None;
                }
            }
        }
        ports.push(PortSpec {
            name: (!p.name.is_empty()).then(|| p.name.clone()),
            port,
            target_port: None,
            endpoints,
        });
    }
    Some(ServiceSpec {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        addresses,
        ports,
        endpoints: Vec::new(),
    })
}

fn ip(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Exponential backoff with full jitter: each wait is uniform in
/// [min, current], and current doubles up to max.
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            current: min,
        }
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    fn next(&mut self) -> Duration {
        let span = self.current.saturating_sub(self.min);
        let wait = self.min + span.mul_f64(random_unit());
        self.current = (self.current * 2).min(self.max);
        wait
    }
}

/// A number in [0, 1) from the standard library's per-process random keys:
/// enough to spread reconnects, no generator crate needed.
fn random_unit() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..8).map(|_| b.next()).collect();
        assert_eq!(waits[0], Duration::from_millis(100));
        for w in &waits {
            assert!(
                *w >= Duration::from_millis(100) && *w <= Duration::from_secs(1),
                "{w:?}"
            );
        }
        assert_eq!(b.current, Duration::from_secs(1));
        // Jitter: not every wait at the cap is the same.
        let capped: Vec<Duration> = (0..16).map(|_| b.next()).collect();
        assert!(capped.iter().any(|w| *w != capped[0]), "{capped:?}");
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(100));
    }

    #[test]
    fn only_the_key_of_the_current_stream_opens_the_tap() {
        let key = ControllerKey::default();
        assert!(!key.presented_by(Some(b"Bearer ")), "no stream, no key");
        key.set(Some(Arc::new("k3y".to_owned())));
        assert!(key.presented_by(Some(b"Bearer k3y")));
        for wrong in [
            &b"Bearer k3"[..],
            b"Bearer k3yy",
            b"bearer k3y",
            b"k3y",
            b"",
        ] {
            assert!(!key.presented_by(Some(wrong)), "{wrong:?}");
        }
        assert!(!key.presented_by(None));
        key.set(None);
        assert!(!key.presented_by(Some(b"Bearer k3y")), "the stream ended");
    }

    #[test]
    fn controller_messages_become_patches_and_malformed_services_are_dropped() {
        let u = pb::TableUpdate {
            revision: 7,
            snapshot: true,
            namespaces: vec![
                pb::Namespace {
                    name: "alice".into(),
                    shared_namespace: "staging".into(),
                    debug: false,
                    key_cookie: false,
                },
                pb::Namespace {
                    name: "staging".into(),
                    key_cookie: true,
                    ..pb::Namespace::default()
                },
            ],
            deleted_namespaces: vec!["bob".into()],
            services: vec![
                pb::Service {
                    namespace: "staging".into(),
                    name: "api".into(),
                    addresses: vec![
                        vec![10, 96, 0, 1],
                        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1].to_vec(),
                    ],
                    ports: vec![pb::Port {
                        name: "http".into(),
                        port: 80,
                        endpoints: vec![pb::Endpoint {
                            ip: vec![10, 244, 1, 2],
                            port: 8080,
                        }],
                    }],
                },
                pb::Service {
                    namespace: "staging".into(),
                    name: "broken".into(),
                    addresses: vec![vec![10, 96]],
                    ports: vec![],
                },
            ],
            deleted_services: vec![pb::ServiceKey {
                namespace: "alice".into(),
                name: "rent".into(),
            }],
            hosts: vec![pb::PreviewHost {
                host: "frontend-alice.example.com".into(),
                namespace: "alice".into(),
            }],
            hosts_changed: true,
            tap_key: Vec::new(),
        };
        let p = to_patch(&u);
        assert!(p.replace);
        assert_eq!(
            p.hosts,
            Some(vec![HostSpec {
                host: "frontend-alice.example.com".into(),
                namespace: "alice".into(),
            }])
        );
        // A delta that leaves the hosts alone says so.
        let unchanged = to_patch(&pb::TableUpdate {
            hosts_changed: false,
            ..u.clone()
        });
        assert_eq!(unchanged.hosts, None);
        assert_eq!(p.namespaces[0].shared_namespace.as_deref(), Some("staging"));
        assert!(!p.namespaces[0].key_cookie);
        assert_eq!(
            (
                p.namespaces[1].shared_namespace.as_deref(),
                p.namespaces[1].key_cookie
            ),
            (None, true)
        );
        assert_eq!(p.deleted_namespaces, ["bob"]);
        assert_eq!(p.services.len(), 1);
        let s = &p.services[0];
        assert_eq!(
            s.addresses,
            [
                "10.96.0.1".parse::<IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
        assert_eq!(s.ports[0].name.as_deref(), Some("http"));
        assert_eq!(
            s.ports[0].endpoints,
            ["10.244.1.2:8080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            p.deleted_services,
            [("alice".to_string(), "rent".to_string())]
        );
    }
}
