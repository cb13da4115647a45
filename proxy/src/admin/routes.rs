//! `/routes`: the routing table as JSON, or where one request would go and
//! why: the rule of [`crate::table`] asked directly, for `divert check` and
//! people debugging a route.

use std::net::SocketAddr;

use bytes::Bytes;
use divert_core::admin::{AdminRequest, json, text};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::Tables;
use crate::reason::Decision;
use crate::table::{NamespaceKind, Table, Target};

/// `GET /routes`: the table. With `dst` (and optionally `key`): where a
/// request to `dst` carrying `key` would go, and why.
pub(super) fn answer(
    tables: &Tables,
    own: Option<&str>,
    req: &AdminRequest,
) -> Response<Full<Bytes>> {
    let table = tables.load();
    match req.query("dst") {
        Some(dst) => route_of(&table, own, &dst, req.query("key")),
        None => json(
            StatusCode::OK,
            &table_json(&table, req.query("namespace").as_deref()),
        ),
    }
}

fn route_of(
    table: &Table,
    own: Option<&str>,
    dst: &str,
    key: Option<String>,
) -> Response<Full<Bytes>> {
    let Some(addr) = resolve_dst(table, dst) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "dst {dst:?} is neither IP:PORT nor SERVICE.NAMESPACE:PORT of a service in the table\n"
            ),
        );
    };
    let key = key.filter(|k| !k.is_empty());
    let route = table.route(addr, key.as_deref(), own);
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
            "dialedService": dialed,
            "key": key,
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
            NamespaceKind::Shared => json!({"name": name, "kind": "shared"}),
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
    json!({
        "version": table.version(),
        "namespaces": namespaces,
        "services": services,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
