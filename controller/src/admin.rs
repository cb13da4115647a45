//! The controller's admin endpoints: `/live`, `/ready` (once the table is
//! complete), `/metrics` (Prometheus text format), and, as JSON for `divert
//! check`, `/proxies` (the proxies watching the table), `/copies` (the
//! copies and routes the controller could not make, and why) and
//! `/key-drops` (the apps that did not pass the key on, as their proxies
//! counted), served by the proxy's admin server.

use std::sync::Arc;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use divert_core::admin::{
    Handler, Mount, Options, boxed, counter, encode_registry, gauge, method_not_allowed, metrics,
    text,
};
use http::{HeaderValue, StatusCode, header};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::store::Store;

/// Labelled counts from elsewhere (services skipped, by reason).
pub type SkippedFn = Arc<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

#[derive(Clone)]
pub struct Admin {
    pub store: Arc<Store>,
    pub skipped: Option<SkippedFn>,
    /// The preview copier's counts, when it runs.
    pub copies: Option<Arc<crate::copies::Stats>>,
}

/// Serves the admin endpoints on `listener` forever.
pub async fn serve(listener: TcpListener, admin: Admin) {
    let drops = Arc::new(KeyDrops::new(admin.store.clone()));
    let mount = Mount::new(KEY_DROPS, move |req| {
        let drops = drops.clone();
        async move {
            if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
                return method_not_allowed("GET").map(boxed);
            }
            json(&drops.get().await).map(boxed)
        }
    });
    let options = Options {
        mounts: vec![mount],
        ..Options::default()
    };
    divert_core::admin::serve_with(listener, admin.handler(), options).await;
}

/// The path of the copies not made, for `divert check`.
pub const COPIES: &str = "/copies";

/// The path of the key drops, for `divert check`.
pub const KEY_DROPS: &str = "/key-drops";

/// How long one gathering of the key drops is served again: whoever can
/// reach the admin port must not make the controller dial every proxy at
/// will.
const KEY_DROPS_FRESH: Duration = Duration::from_secs(5);

/// `/key-drops`: the calls each proxy's app made without the key while it
/// served only requests with one, gathered from every proxy that reports
/// an admin port (`Tap/KeyDrops`, with the key each proxy's tap answers the
/// controller with): `{"drops": [{pod, namespace, service, destination,
/// count, lastSeconds}], "unreachable": ["namespace/pod (addr): why"]}`.
/// One gathering at a time; callers within [`KEY_DROPS_FRESH`] of the last
/// get its answer.
struct KeyDrops {
    store: Arc<Store>,
    last: tokio::sync::Mutex<Option<(Instant, serde_json::Value)>>,
}

impl KeyDrops {
    fn new(store: Arc<Store>) -> Self {
        KeyDrops {
            store,
            last: tokio::sync::Mutex::new(None),
        }
    }

    async fn get(&self) -> serde_json::Value {
        let mut last = self.last.lock().await;
        if let Some((at, value)) = &*last
            && at.elapsed() < KEY_DROPS_FRESH
        {
            return value.clone();
        }
        let targets = crate::tap::pick(&self.store.subscribers(), "").targets;
        let timeout = crate::tap::RelaySettings::default().connect_timeout;
        let gathered = crate::tap::key_drops(targets, timeout).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let drops: Vec<_> = gathered
            .drops
            .iter()
            .map(|d| {
                serde_json::json!({
                    "pod": d.proxy_pod,
                    "namespace": d.proxy_namespace,
                    "service": d.service,
                    "destination": d.destination,
                    "count": d.count,
                    "lastSeconds": now.saturating_sub(d.last_unix_micros) / 1_000_000,
                })
            })
            .collect();
        let value = serde_json::json!({
            "drops": drops,
            "unreachable": gathered.unreachable,
        });
        *last = Some((Instant::now(), value.clone()));
        value
    }
}

impl Admin {
    pub fn handler(self) -> Handler {
        Arc::new(move |req| match req.uri.path() {
            _ if !req.is_read() => method_not_allowed("GET"),
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" => self.ready(),
            "/metrics" => metrics(self.metrics()),
            "/proxies" => json(&self.proxies()),
            COPIES => json(&self.copies()),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /live, /ready, /metrics, /proxies, /copies or /key-drops\n".into(),
            ),
        })
    }

    fn ready(&self) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        let stats = self.store.stats();
        if self.store.is_synced() {
            text(
                StatusCode::OK,
                format!(
                    "ready: revision {}, {} services, {} divert namespaces, {} proxies\n",
                    stats.revision, stats.services, stats.namespaces, stats.subscribers
                ),
            )
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: still listing namespaces, services, endpoint slices and ingresses\n"
                    .into(),
            )
        }
    }

    /// The proxies watching the table now, sorted by namespace, pod and
    /// address: `[{pod, namespace, version, remoteAddr, revision,
    /// connectedSeconds}]` (the fields of `ListProxies`; `pod` and
    /// `namespace` are empty for a proxy outside a pod).
    /// The copies the controller could not make, each with why:
    /// `{"problems": [{kind, namespace, name, why}]}` (none without a
    /// copier).
    fn copies(&self) -> serde_json::Value {
        let problems: Vec<_> = self
            .copies
            .iter()
            .flat_map(|c| c.problem_list())
            .map(|p| {
                serde_json::json!({
                    "kind": p.kind.as_str(),
                    "namespace": p.namespace,
                    "name": p.name,
                    "why": p.why,
                })
            })
            .collect();
        serde_json::json!({ "problems": problems })
    }

    fn proxies(&self) -> serde_json::Value {
        let mut proxies: Vec<_> = self
            .store
            .subscribers()
            .iter()
            .map(|s| {
                (
                    s.info.namespace.clone(),
                    s.info.pod.clone(),
                    s.remote_addr.map(|a| a.to_string()).unwrap_or_default(),
                    s.info.version.clone(),
                    s.sent_revision(),
                    s.connected_at.elapsed().as_secs(),
                )
            })
            .collect();
        proxies.sort();
        proxies
            .into_iter()
            .map(
                |(namespace, pod, remote_addr, version, revision, connected_seconds)| {
                    serde_json::json!({
                        "pod": pod,
                        "namespace": namespace,
                        "version": version,
                        "remoteAddr": remote_addr,
                        "revision": revision,
                        "connectedSeconds": connected_seconds,
                    })
                },
            )
            .collect()
    }

    /// A fresh registry per scrape, filled from the store: scrapes are rare,
    /// and nothing on the update path has to touch a metric.
    fn metrics(&self) -> String {
        let stats = self.store.stats();
        let mut registry = Registry::with_prefix("divert_controller");
        gauge(
            &mut registry,
            "table_revision",
            "Revision of the routing table",
            stats.revision as f64,
        );
        gauge(
            &mut registry,
            "services",
            "Services in the routing table",
            stats.services as f64,
        );
        gauge(
            &mut registry,
            "divert_namespaces",
            "Namespaces opted in as divert namespaces",
            stats.namespaces as f64,
        );
        gauge(
            &mut registry,
            "proxies",
            "Proxies watching the table now",
            stats.subscribers as f64,
        );
        gauge(
            &mut registry,
            "synced",
            "1 once namespaces, services, endpoint slices and ingresses were listed",
            f64::from(u8::from(self.store.is_synced())),
        );
        counter(
            &mut registry,
            "updates_sent",
            "Table messages (snapshots and updates) handed to proxies",
            stats.updates_sent,
        );
        if let Some(skipped) = &self.skipped {
            let family = Family::<Vec<(String, String)>, Gauge>::default();
            for (reason, n) in skipped() {
                family
                    .get_or_create(&vec![("reason".to_string(), reason)])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            registry.register(
                "services_skipped",
                "Services left out of the table, by reason",
                family,
            );
        }
        if let Some(copies) = &self.copies {
            let family = Family::<Vec<(String, String)>, Gauge>::default();
            for (kind, n) in copies.copies() {
                family
                    .get_or_create(&vec![("kind".to_string(), kind.as_str().to_string())])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            registry.register(
                "preview_copies",
                "Preview copies that should exist in divert namespaces, by kind",
                family,
            );
            gauge(
                &mut registry,
                "preview_copies_not_made",
                "Preview copies not made: an object of the user's has the name, or a host template is wrong (logged)",
                copies.problems() as f64,
            );
            let family = Family::<Vec<(String, String)>, Counter>::default();
            for ((op, result), n) in copies.writes() {
                family
                    .get_or_create(&vec![
                        ("op".to_string(), op.to_string()),
                        ("result".to_string(), result.to_string()),
                    ])
                    .inc_by(n);
            }
            counter(
                &mut registry,
                "namespaces_expired",
                "Divert namespaces ended because their divert.dev/expires-at had passed",
                copies.expired(),
            );
            registry.register(
                "preview_copy_writes",
                "Writes of preview copies, by operation and result",
                family,
            );
        }
        encode_registry(&registry)
    }
}

/// A JSON response (compact, one trailing newline).
fn json(value: &serde_json::Value) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let mut r = text(StatusCode::OK, format!("{value}\n"));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use divert_proto::discovery::v1 as pb;
    use http_body_util::BodyExt;

    fn proxy(pod: &str, namespace: &str) -> pb::ProxyInfo {
        pb::ProxyInfo {
            pod: pod.into(),
            namespace: namespace.into(),
            version: "0.1.0".into(),
            admin_port: 0,
        }
    }

    async fn get(admin: &Admin, path: &str) -> (StatusCode, Option<HeaderValue>, String) {
        let req = divert_core::admin::AdminRequest::build(
            http::Method::GET,
            path,
            bytes::Bytes::new(),
            ([127, 0, 0, 1], 40000).into(),
        )
        .expect("a request");
        let response = (admin.clone().handler())(&req);
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).expect("UTF-8"),
        )
    }

    #[tokio::test]
    async fn proxies_lists_every_subscriber_sorted_as_json() {
        let store = Store::new();
        let admin = Admin {
            store: store.clone(),
            skipped: None,
            copies: None,
        };
        let (_, _, body) = get(&admin, "/proxies").await;
        assert_eq!(body, "[]\n");

        let addr = |s: &str| Some(s.parse().expect("an address"));
        let (_b, _) = store.subscribe(proxy("web-1", "staging"), addr("10.0.0.3:5000"));
        let (_a, _) = store.subscribe(proxy("api-1", "staging"), addr("10.0.0.2:5000"));
        let (_c, _) = store.subscribe(proxy("frontend-1", "alice"), addr("10.0.0.1:5000"));
        let (_d, _) = store.subscribe(pb::ProxyInfo::default(), None);

        let (status, content_type, body) = get(&admin, "/proxies").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            content_type,
            Some(HeaderValue::from_static("application/json"))
        );
        let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let list = list.as_array().expect("an array");
        let keys: Vec<(&str, &str)> = list
            .iter()
            .map(|p| {
                (
                    p["namespace"].as_str().unwrap_or("?"),
                    p["pod"].as_str().unwrap_or("?"),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("", ""),
                ("alice", "frontend-1"),
                ("staging", "api-1"),
                ("staging", "web-1")
            ]
        );
        assert_eq!(
            list[1],
            serde_json::json!({
                "pod": "frontend-1",
                "namespace": "alice",
                "version": "0.1.0",
                "remoteAddr": "10.0.0.1:5000",
                "revision": 0,
                "connectedSeconds": 0,
            })
        );
        assert_eq!(list[0]["remoteAddr"], "");
    }

    #[tokio::test]
    async fn unknown_paths_name_proxies_too() {
        let admin = Admin {
            store: Store::new(),
            skipped: None,
            copies: None,
        };
        let (status, _, body) = get(&admin, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("/proxies"), "{body}");
    }

    #[tokio::test]
    async fn copies_lists_each_copy_not_made_with_why_and_forgets_it_once_made() {
        use crate::copies::plan::{Plan, Problem};
        let stats = Arc::new(crate::copies::Stats::default());
        let problem = Problem {
            kind: crate::copies::Kind::VirtualService,
            namespace: "staging".into(),
            name: "divert-rent".into(),
            why: "the VirtualService staging/rent-retries of the user's already routes it".into(),
        };
        stats.set_plan(&Plan {
            problems: vec![problem],
            ..Plan::default()
        });
        let admin = Admin {
            store: Store::new(),
            skipped: None,
            copies: Some(stats.clone()),
        };
        let (status, content_type, body) = get(&admin, COPIES).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            content_type,
            Some(HeaderValue::from_static("application/json"))
        );
        let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            value,
            serde_json::json!({"problems": [{
                "kind": "VirtualService", "namespace": "staging", "name": "divert-rent",
                "why": "the VirtualService staging/rent-retries of the user's already routes it",
            }]})
        );
        stats.set_plan(&Plan::default());
        let (_, _, body) = get(&admin, COPIES).await;
        assert_eq!(body.trim(), r#"{"problems":[]}"#);
    }

    #[tokio::test]
    async fn metrics_count_the_preview_copies_by_kind_and_their_writes() {
        let stats = Arc::new(crate::copies::Stats::default());
        let plan = crate::copies::plan::Plan {
            copies: [(crate::copies::Kind::Ingress, 2)].into(),
            ..Default::default()
        };
        stats.set_plan(&plan);
        stats.count_write("create", "done");
        stats.count_write("create", "done");
        stats.count_write("delete", "raced");
        let admin = Admin {
            store: Store::new(),
            skipped: None,
            copies: Some(stats),
        };
        let (_, _, body) = get(&admin, "/metrics").await;
        for line in [
            "divert_controller_preview_copies{kind=\"Ingress\"} 2",
            "divert_controller_preview_copies{kind=\"HTTPRoute\"} 0",
            "divert_controller_preview_copies_not_made 0.0",
            "divert_controller_preview_copy_writes_total{op=\"create\",result=\"done\"} 2",
            "divert_controller_preview_copy_writes_total{op=\"delete\",result=\"raced\"} 1",
        ] {
            assert!(body.lines().any(|l| l == line), "{line} in:\n{body}");
        }
    }
}
