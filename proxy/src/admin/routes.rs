//! `/routes`: the routing table as JSON, or where one request would go and
//! why: the rule of [`crate::table`] asked directly, for people debugging a
//! route (`divert demo` prints examples). With `direction=inbound`, where a
//! request that came into this pod would go (step 7), its key from `key` or
//! from the preview host `host`.

use std::net::SocketAddr;

use bytes::Bytes;
use divert_core::admin::{AdminRequest, json, text};
use divert_core::direction::Direction;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::reason::Decision;
use crate::table::{NamespaceKind, Table, Target};
use crate::tables::Tables;

/// Whose namespace is asked about: the proxy's own, and the one it uses as
/// the key of outbound requests without one (if that default is on).
pub(super) struct Namespaces<'a> {
    pub own: Option<&'a str>,
    pub default_key: Option<&'a str>,
}

/// `GET /routes`: the table. With `dst` (and optionally `key`, `direction`,
/// `host`): where a request to `dst` carrying `key` would go, and why.
pub(super) fn answer(
    tables: &Tables,
    namespaces: &Namespaces<'_>,
    req: &AdminRequest,
) -> Response<Full<Bytes>> {
    let table = tables.load();
    let Some(dst) = req.query("dst") else {
        return json(
            StatusCode::OK,
            &table_json(&table, req.query("namespace").as_deref()),
        );
    };
    let direction = match req.query("direction").as_deref() {
        None | Some("outbound") => Direction::Outbound,
        Some("inbound") => Direction::Inbound,
        Some(other) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("direction {other:?} is neither outbound nor inbound\n"),
            );
        }
    };
    let asked = Asked {
        dst: &dst,
        key: req.query("key").filter(|k| !k.is_empty()),
        host: req.query("host"),
        direction,
    };
    route_of(&table, namespaces, &asked)
}

/// One request, as `/routes` was asked about it.
struct Asked<'a> {
    dst: &'a str,
    key: Option<String>,
    /// Its host, for the preview host mapping (inbound only).
    host: Option<String>,
    direction: Direction,
}

fn route_of(
    table: &Table,
    namespaces: &Namespaces<'_>,
    asked: &Asked<'_>,
) -> Response<Full<Bytes>> {
    let dst = asked.dst;
    let Some(addr) = resolve_dst(table, dst) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "dst {dst:?} is neither IP:PORT nor SERVICE.NAMESPACE:PORT of a service in the table\n"
            ),
        );
    };
    // Inbound, a request without a key for a preview host gets its namespace.
    let from_host = match (&asked.key, asked.direction, &asked.host) {
        (None, Direction::Inbound, Some(host)) => table.host_key(host),
        _ => None,
    };
    let key = asked.key.as_deref().or(from_host);
    let (route, own) = match asked.direction {
        Direction::Outbound => (
            table.route(addr, key, namespaces.default_key),
            namespaces.default_key,
        ),
        Direction::Inbound => (table.route_inbound(addr, key, namespaces.own), None),
    };
    let dialed = table.by_dialed(addr).map(|d| {
        format!(
            "{}.{}:{}",
            d.service.name,
            d.service.namespace,
            d.port().port
        )
    });
    let (target_namespace, endpoints): (&str, Vec<String>) = match &route.target {
        Target::Service {
            port, namespace, ..
        } => (
            namespace,
            port.endpoints.iter().map(|e| e.addr.to_string()).collect(),
        ),
        Target::Passthrough(a) => ("", vec![a.to_string()]),
    };
    json(
        StatusCode::OK,
        &json!({
            "dst": addr.to_string(),
            "direction": asked.direction.as_str(),
            "dialedService": dialed,
            "key": key,
            "keyFromHost": from_host.is_some(),
            "ownNamespaceDefault": own,
            "target": route.to_string(),
            "targetNamespace": target_namespace,
            "endpoints": endpoints,
            "decision": Decision::of(route.reason).as_str(),
            "reason": route.reason.as_str(),
            "why": route.reason.explain(),
            "tableVersion": table.version(),
        }),
    )
}

/// `IP:PORT`, or `NAME.NAMESPACE:PORT` of a service in the table (its first
/// address).
fn resolve_dst(table: &Table, dst: &str) -> Option<SocketAddr> {
    if let Ok(a) = dst.parse() {
        return Some(a);
    }
    let (host, port) = dst.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host
        .strip_suffix(".svc.cluster.local")
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(host);
    let (name, namespace) = host.split_once('.')?;
    let service = table.service(namespace, name)?;
    service
        .addresses
        .first()
        .map(|&ip| SocketAddr::new(ip, port))
}

/// The table as JSON, optionally one namespace's part of it.
fn table_json(table: &Table, only: Option<&str>) -> serde_json::Value {
    let mut namespaces: Vec<_> = table
        .namespaces()
        .filter(|(n, _)| only.is_none_or(|o| o == *n))
        .map(|(name, kind)| match kind {
            NamespaceKind::Shared { key_cookie } => {
                json!({"name": name, "kind": "shared", "keyCookie": key_cookie})
            }
            NamespaceKind::DivertOf(s) => {
                json!({"name": name, "kind": "divert", "sharedNamespace": &**s})
            }
        })
        .collect();
    namespaces.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut services: Vec<_> = table
        .services()
        .filter(|s| only.is_none_or(|o| o == &*s.namespace))
        .collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let services: Vec<_> = services
        .into_iter()
        .map(|s| {
            json!({
                "namespace": &*s.namespace,
                "name": &*s.name,
                "addresses": s.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "ports": s.ports.iter().map(|p| json!({
                    "name": p.name.as_deref(),
                    "port": p.port,
                    "endpoints": p.endpoints.iter().map(|e| e.addr.to_string()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut hosts: Vec<_> = table
        .hosts()
        .filter(|(_, n)| only.is_none_or(|o| o == *n))
        .map(|(host, namespace)| json!({"host": host, "namespace": namespace}))
        .collect();
    hosts.sort_by(|a, b| a["host"].as_str().cmp(&b["host"].as_str()));
    json!({
        "version": table.version(),
        "namespaces": namespaces,
        "services": services,
        "hosts": hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::ProxyAdmin;
    use crate::shared::{Config, Shared};
    use crate::table::TableSpec;
    use http::Method;

    /// A proxy of staging's web pod (10.1.0.1:8080), alice running her copy
    /// and owning a preview host.
    fn staging_pod() -> ProxyAdmin {
        let spec: TableSpec = serde_yaml_ng::from_str(
            "namespaces:\n  - name: staging\n  - { name: alice, sharedNamespace: staging }\nservices:\n  - { name: web, namespace: staging, addresses: ['10.0.0.1'], ports: [{ port: 80, targetPort: 8080 }], endpoints: ['10.1.0.1'] }\n  - { name: web, namespace: alice, addresses: ['10.0.1.1'], ports: [{ port: 80, targetPort: 8080 }], endpoints: ['10.2.0.1'] }\nhosts:\n  - { host: web-alice.example.com, namespace: alice }\n",
        )
        .unwrap();
        let config = Config {
            namespace: Some("staging".into()),
            ..Config::default()
        };
        ProxyAdmin::new(
            Shared::new(config, Table::build(&spec, 1, None).unwrap()),
            false,
        )
    }

    /// The status and body of `GET uri`. The admin's answers are whole
    /// (`Full`), so one poll of the body gives all of it.
    async fn get(admin: &ProxyAdmin, uri: &str) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        let req = AdminRequest::build(Method::GET, uri, Bytes::new(), ([127, 0, 0, 1], 1).into())
            .unwrap();
        let resp = admin.answer(&req);
        let status = resp.status();
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(never) => match never {},
        };
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn inbound_routes_are_answered_with_the_key_or_the_host() {
        let admin = staging_pod();
        let admin = &admin;
        let v = async |uri: &str| -> serde_json::Value {
            let (status, body) = get(admin, uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {body}");
            serde_json::from_str(&body).unwrap()
        };
        let by_key = v("/routes?dst=10.1.0.1:8080&direction=inbound&key=alice").await;
        assert_eq!(by_key["direction"], "inbound");
        assert_eq!(by_key["target"], "web.alice:80");
        assert_eq!(by_key["reason"], "diverted");
        assert_eq!(by_key["keyFromHost"], false);
        let by_host =
            v("/routes?dst=10.1.0.1:8080&direction=inbound&host=WEB-alice.example.com:443").await;
        assert_eq!(by_host["target"], "web.alice:80");
        assert_eq!(by_host["key"], "alice");
        assert_eq!(by_host["keyFromHost"], true);
        let plain = v("/routes?dst=10.1.0.1:8080&direction=inbound").await;
        assert_eq!(plain["target"], "10.1.0.1:8080");
        assert_eq!(plain["reason"], "no_key");
        // Outbound, the host means nothing.
        let outbound = v("/routes?dst=10.0.0.1:80&host=web-alice.example.com").await;
        assert_eq!(outbound["direction"], "outbound");
        assert_eq!(outbound["target"], "web.staging:80");
        // The table lists the preview hosts.
        let table = v("/routes").await;
        assert_eq!(
            table["hosts"],
            serde_json::json!([{"host": "web-alice.example.com", "namespace": "alice"}])
        );
        let (status, body) = get(admin, "/routes?dst=10.1.0.1:8080&direction=sideways").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("neither outbound nor inbound"), "{body}");
    }

    #[test]
    fn destinations_resolve_by_address_or_service_name() {
        let a = super::super::tests::admin();
        let table = a.shared.tables.load();
        let want: SocketAddr = "10.0.0.1:80".parse().unwrap();
        for dst in [
            "10.0.0.1:80",
            "web.staging:80",
            "web.staging.svc:80",
            "web.staging.svc.cluster.local:80",
        ] {
            assert_eq!(resolve_dst(&table, dst), Some(want), "{dst}");
        }
        assert_eq!(resolve_dst(&table, "web.nowhere:80"), None);
        assert_eq!(resolve_dst(&table, "web.staging"), None);
    }
}
