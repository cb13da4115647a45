//! The ingress controller stand-in's configuration: the cluster's Ingress
//! objects rendered as an nginx configuration the way ingress-nginx renders
//! them, each host a `server`, each path a `location`, and each backend the
//! ready endpoints of its Service (found through the Service's port and the
//! EndpointSlices of the same port name), which nginx dials directly, as
//! ingress-nginx does: no ClusterIP, no `kube-proxy`, no sidecar.
//!
//! The binary `ingress-standin` (tests/src/bin) watches the objects and
//! reloads nginx with this; this module is the pure part.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressServiceBackend};

/// The ready `IP:port`s behind an Ingress backend in `namespace`.
pub fn endpoints(
    namespace: &str,
    backend: &IngressServiceBackend,
    services: &[&Service],
    slices: &[&EndpointSlice],
) -> Vec<String> {
    let Some(svc) = services.iter().find(|s| {
        s.metadata.namespace.as_deref() == Some(namespace)
            && s.metadata.name.as_deref() == Some(&backend.name)
    }) else {
        return Vec::new();
    };
    let want = backend.port.as_ref();
    let Some(port) = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .find(|p| {
            want.is_none_or(|w| w.number == Some(p.port) || (w.name.is_some() && w.name == p.name))
        })
    else {
        return Vec::new();
    };
    let port_name = port.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    for slice in slices.iter().filter(|s| {
        s.metadata.namespace.as_deref() == Some(namespace)
            && s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                == Some(&backend.name)
    }) {
        let Some(number) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.clone().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in &ep.addresses {
                out.push(format!("{a}:{number}"));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The ingress class the stand-in serves, as ingress-nginx's default
/// install does; an Ingress without a class is served too (the stand-in
/// is the cluster's default class).
pub const CLASS: &str = "nginx";

/// Where the same servers speak h2c (HTTP/2 with prior knowledge) for a
/// configuration served on `port`: the next port. nginx proxies to the
/// pods in HTTP/1.1 either way, as ingress-nginx does.
pub fn h2c_port(port: u16) -> u16 {
    port.saturating_add(1)
}

/// The whole nginx configuration: the rules with a host of every Ingress
/// of [`CLASS`], served on `port` (and in h2c on [`h2c_port`]), with
/// nginx's working files under `dir`.
pub fn render(
    ingresses: &[&Ingress],
    services: &[&Service],
    slices: &[&EndpointSlice],
    port: u16,
    dir: &Path,
) -> String {
    let dir = dir.display();
    let h2c = h2c_port(port);
    let mut upstreams = String::new();
    let mut count = 0;
    // host → (location, upstream or None for no endpoints)
    let mut hosts: BTreeMap<String, BTreeMap<String, Option<String>>> = BTreeMap::new();
    for ing in ingresses {
        let class = ing
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref());
        if class.is_some_and(|c| c != CLASS) {
            continue;
        }
        let namespace = ing.metadata.namespace.as_deref().unwrap_or_default();
        for rule in ing.spec.iter().flat_map(|s| s.rules.iter().flatten()) {
            let Some(host) = &rule.host else { continue };
            for path in rule.http.iter().flat_map(|h| &h.paths) {
                let Some(backend) = &path.backend.service else {
                    continue;
                };
                let location = match (path.path_type.as_str(), path.path.as_deref()) {
                    ("Exact", Some(p)) => format!("= {p}"),
                    (_, Some(p)) => p.to_owned(),
                    (_, None) => "/".to_owned(),
                };
                let eps = endpoints(namespace, backend, services, slices);
                let upstream = if eps.is_empty() {
                    None
                } else {
                    let name = format!("upstream_{count}");
                    count += 1;
                    let _ = writeln!(upstreams, "  upstream {name} {{");
                    for ep in &eps {
                        let _ = writeln!(upstreams, "    server {ep};");
                    }
                    upstreams.push_str("  }\n");
                    Some(name)
                };
                hosts
                    .entry(host.to_ascii_lowercase())
                    .or_default()
                    .entry(location)
                    .or_insert(upstream);
            }
        }
    }
    let mut servers = String::new();
    for (host, locations) in &hosts {
        let _ = writeln!(
            servers,
            "  server {{\n    listen {port};\n    listen {h2c} http2;\n    server_name {host};"
        );
        for (location, upstream) in locations {
            let _ = writeln!(servers, "    location {location} {{");
            match upstream {
                Some(u) => {
                    let _ = writeln!(
                        servers,
                        "      proxy_pass http://{u};\n      proxy_http_version 1.1;\n      \
                         proxy_set_header Host $host;\n      proxy_set_header Upgrade $http_upgrade;\n      \
                         proxy_set_header Connection $connection_upgrade;\n      \
                         proxy_set_header X-Forwarded-For $remote_addr;"
                    );
                }
                None => servers.push_str("      return 503 \"no ready endpoints\\n\";\n"),
            }
            servers.push_str("    }\n");
        }
        servers.push_str("  }\n");
    }
    format!(
        "pid {dir}/nginx.pid;\nworker_processes 1;\nerror_log stderr warn;\n\
         events {{\n  worker_connections 1024;\n}}\n\
         http {{\n  access_log off;\n\
         \x20 client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
         \x20 fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
         \x20 map $http_upgrade $connection_upgrade {{\n    default upgrade;\n    '' close;\n  }}\n\
         \x20 server {{\n    listen {port} default_server;\n    listen {h2c} http2 default_server;\n    location / {{\n      return 404 \"no Ingress serves this host\\n\";\n    }}\n  }}\n\
         {upstreams}{servers}}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from<T: k8s_openapi::serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn each_host_is_a_server_whose_paths_lead_to_the_ready_endpoints_of_the_backend_port() {
        let ing: Ingress = from(serde_json::json!({
            "metadata": {"namespace": "bob", "name": "frontend"},
            "spec": {"rules": [{"host": "Frontend-Bob.movies.test", "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "frontend", "port": {"name": "http"}}}},
                {"path": "/health", "pathType": "Exact",
                 "backend": {"service": {"name": "missing", "port": {"number": 80}}}}
            ]}}]}
        }));
        let svc: Service = from(serde_json::json!({
            "metadata": {"namespace": "bob", "name": "frontend"},
            "spec": {"ports": [{"name": "admin", "port": 9000}, {"name": "http", "port": 8080}]}
        }));
        let slice: EndpointSlice = from(serde_json::json!({
            "metadata": {"namespace": "bob", "name": "frontend-1",
                "labels": {"kubernetes.io/service-name": "frontend"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.0.9"], "conditions": {"ready": true}},
                {"addresses": ["10.244.0.8"], "conditions": {"ready": false}}
            ],
            "ports": [{"name": "admin", "port": 9001}, {"name": "http", "port": 18080}]
        }));
        let conf = render(&[&ing], &[&svc], &[&slice], 8080, Path::new("/run/x"));
        assert!(
            conf.contains("server_name frontend-bob.movies.test;"),
            "{conf}"
        );
        assert!(
            conf.contains("upstream upstream_0 {\n    server 10.244.0.9:18080;\n  }"),
            "{conf}"
        );
        assert!(!conf.contains("10.244.0.8"), "not ready: {conf}");
        assert!(
            conf.contains("location = /health {\n      return 503"),
            "{conf}"
        );
        assert!(conf.contains("pid /run/x/nginx.pid;"), "{conf}");
        assert!(conf.contains("listen 8081 http2;"), "{conf}");
    }

    #[test]
    fn an_ingress_of_another_class_is_not_served() {
        let ing = |name: &str, class: Option<&str>| -> Ingress {
            from(serde_json::json!({
                "metadata": {"namespace": "bob", "name": name},
                "spec": {"ingressClassName": class, "rules": [{"host": format!("{name}.movies.test"),
                    "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "frontend", "port": {"number": 80}}}}]}}]}
            }))
        };
        let (ours, default, other) = (
            ing("ours", Some(CLASS)),
            ing("default", None),
            ing("other", Some("traefik")),
        );
        let conf = render(
            &[&ours, &default, &other],
            &[],
            &[],
            8080,
            Path::new("/run/x"),
        );
        assert!(conf.contains("server_name ours.movies.test;"), "{conf}");
        assert!(conf.contains("server_name default.movies.test;"), "{conf}");
        assert!(!conf.contains("other.movies.test"), "{conf}");
    }
}
