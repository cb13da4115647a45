//! `divert preview [-n K]`: each divert namespace's preview URLs and the
//! services it runs, so a developer knows what to open and what is theirs.
//!
//! A namespace's URLs are the hosts of its Ingresses (TLS hosts as
//! `https://`), less those its shared namespace's Ingresses also serve:
//! the controller does not make those preview hosts (a shared URL stays
//! shared), so neither is listed; with the istio driver, also the hosts of
//! the controller's copies of a gateway's VirtualServices (as `http://`:
//! the gateway, not the route, says whether it serves TLS). It reads the
//! divert namespaces (one `get`, or a labelled `list`), then each one's
//! Ingresses, VirtualServices (none on a cluster without Istio's CRDs) and
//! Services and its shared namespace's Ingresses.
//!
//! Exit status: 0 when something was listed, 1 when `-n K` is not a divert
//! namespace, 2 when the cluster could not be read, 64 for bad flags.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use divert_controller::copies::istio::virtual_service;
use divert_controller::hosts::ingress_hosts;
use divert_core::names::label::SHARED_NAMESPACE;
use divert_core::names::label::{MANAGED_BY, MANAGED_BY_CONTROLLER};
use divert_core::names::parse_dns_label;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DynamicObject, ListParams};
use serde::Serialize;

use crate::check::{EXIT_UNREACHABLE, client, reachable};

#[derive(Args, Debug)]
pub struct PreviewArgs {
    /// The kubeconfig to use (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,

    /// One divert namespace (default: every one).
    #[arg(long, short = 'n', value_name = "NS", value_parser = parse_dns_label)]
    namespace: Option<String>,

    /// `text` for people, `json` for machines.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,

    /// How long to wait for each request to the API server.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = divert_core::duration::parse)]
    timeout: Duration,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

/// One divert namespace's preview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    pub namespace: String,
    pub shared_namespace: String,
    /// `http://` or `https://` URLs, sorted.
    pub urls: Vec<String>,
    /// The services it runs (its own copies), sorted.
    pub services: Vec<String>,
}

pub fn main(args: PreviewArgs) -> ExitCode {
    let runtime = match divert_core::process::runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("divert preview: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let previews = runtime.block_on(async {
        let (client, url) = client(args.kubeconfig.as_deref(), args.timeout)
            .await
            .map_err(|e| e.to_string())?;
        reachable(&client, &url, args.timeout)
            .await
            .map_err(|e| e.to_string())?;
        fetch(&client, args.namespace.as_deref(), args.timeout).await
    });
    let previews = match previews {
        Ok(p) => p,
        Err(e) => {
            eprintln!("divert preview: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    if let Some(ns) = &args.namespace
        && previews.is_empty()
    {
        eprintln!(
            "divert preview: {ns} is not a divert namespace; make it one with \
             kubectl label namespace {ns} {SHARED_NAMESPACE}=<shared namespace>"
        );
        return ExitCode::FAILURE;
    }
    match args.output {
        Output::Text => print!("{}", render_text(&previews)),
        Output::Json => match serde_json::to_string_pretty(&previews) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("divert preview: {e}");
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::SUCCESS
}

/// Reads the divert namespaces (one, or all) and each one's Ingresses and
/// Services, and its shared namespace's Ingresses.
async fn fetch(
    client: &kube::Client,
    only: Option<&str>,
    timeout: Duration,
) -> Result<Vec<Preview>, String> {
    let namespaces: Vec<Namespace> = match only {
        Some(ns) => {
            let api = Api::<Namespace>::all(client.clone());
            limited("the namespace", timeout, api.get_opt(ns))
                .await?
                .into_iter()
                .collect()
        }
        None => {
            let api = Api::<Namespace>::all(client.clone());
            let lp = ListParams::default().labels(SHARED_NAMESPACE);
            limited("the namespaces", timeout, api.list(&lp))
                .await?
                .items
        }
    };
    let mut previews = Vec::new();
    for ns in &namespaces {
        let (Some(name), Some(shared)) = (ns.metadata.name.as_deref(), shared_of(ns)) else {
            continue;
        };
        previews.push(fetch_one(client, name, shared, timeout).await?);
    }
    previews.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    Ok(previews)
}

/// The shared namespace a namespace's label names, if it has the label.
pub fn shared_of(ns: &Namespace) -> Option<&str> {
    ns.metadata
        .labels
        .as_ref()?
        .get(SHARED_NAMESPACE)
        .map(String::as_str)
}

/// One divert namespace's preview: its Ingresses and Services, and its
/// shared namespace's Ingresses, read and judged.
pub async fn fetch_one(
    client: &kube::Client,
    name: &str,
    shared: &str,
    timeout: Duration,
) -> Result<Preview, String> {
    let ingresses = |n: &str| Api::<Ingress>::namespaced(client.clone(), n);
    let all = ListParams::default();
    let own = limited("the Ingresses", timeout, ingresses(name).list(&all))
        .await?
        .items;
    // A developer who may only read their own namespace cannot read the
    // shared one's Ingresses: its hosts are then not left out (the
    // controller's copies never claim them anyway).
    let of_shared = match tokio::time::timeout(timeout, ingresses(shared).list(&all)).await {
        Ok(Err(kube::Error::Api(s))) if s.is_forbidden() => Vec::new(),
        other => {
            other
                .map_err(|_| format!("reading the shared Ingresses took longer than {timeout:?}"))?
                .map_err(|e| format!("cannot read the shared Ingresses: {e}"))?
                .items
        }
    };
    let services = limited(
        "the Services",
        timeout,
        Api::<Service>::namespaced(client.clone(), name).list(&all),
    )
    .await?
    .items;
    let virtual_services =
        Api::<DynamicObject>::namespaced_with(client.clone(), name, &virtual_service());
    let managed = ListParams::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_CONTROLLER}"));
    let gateway_routes = match tokio::time::timeout(timeout, virtual_services.list(&managed)).await
    {
        // No Istio (the API server's plain "404 page not found" for a
        // group it does not serve), or no right to read its objects: no
        // such URLs.
        Ok(Err(kube::Error::Api(s))) if s.code == 404 || s.is_forbidden() => Vec::new(),
        other => {
            other
                .map_err(|_| format!("reading the VirtualServices took longer than {timeout:?}"))?
                .map_err(|e| format!("cannot read the VirtualServices: {e}"))?
                .items
        }
    };
    Ok(preview(
        name,
        shared,
        &Routes {
            ingresses: &own,
            shared_ingresses: &of_shared,
            gateway_routes: &gateway_routes,
        },
        &services,
    ))
}

/// `f`, a request to the API server, within `timeout`.
async fn limited<T>(
    what: &str,
    timeout: Duration,
    f: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, String> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| format!("reading {what} took longer than {timeout:?}"))?
        .map_err(|e| format!("cannot read {what}: {e}"))
}

/// What a namespace's URLs come from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Routes<'a> {
    /// The namespace's Ingresses.
    pub ingresses: &'a [Ingress],
    /// Its shared namespace's Ingresses.
    pub shared_ingresses: &'a [Ingress],
    /// Its VirtualServices (the istio driver).
    pub gateway_routes: &'a [DynamicObject],
}

/// One namespace's preview, from what was read.
pub fn preview(
    namespace: &str,
    shared: &str,
    routes: &Routes<'_>,
    services: &[Service],
) -> Preview {
    let taken: BTreeSet<String> = routes
        .shared_ingresses
        .iter()
        .flat_map(ingress_hosts)
        .collect();
    let mut urls = BTreeSet::new();
    for ingress in routes.ingresses {
        let tls: BTreeSet<String> = ingress
            .spec
            .iter()
            .flat_map(|s| s.tls.iter().flatten())
            .flat_map(|t| t.hosts.iter().flatten())
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        for host in ingress_hosts(ingress) {
            if taken.contains(&host) {
                continue;
            }
            let scheme = if tls.contains(&host) { "https" } else { "http" };
            urls.insert(format!("{scheme}://{host}"));
        }
    }
    // The controller's copies of a gateway's routes: those it made only.
    for vs in routes
        .gateway_routes
        .iter()
        .filter(|v| divert_controller::copies::is_managed(&v.metadata))
    {
        let spec = &vs.data["spec"];
        let strings = |field: &str| -> Vec<String> {
            spec[field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .collect()
        };
        if strings("gateways").iter().all(|g| g == "mesh") {
            continue;
        }
        for host in strings("hosts") {
            urls.insert(format!("http://{host}"));
        }
    }
    // The controller's Services lead to the shared copy: not run here.
    let services: BTreeSet<String> = services
        .iter()
        .filter(|s| !divert_controller::copies::is_own_service(s))
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    Preview {
        namespace: namespace.to_owned(),
        shared_namespace: shared.to_owned(),
        urls: urls.into_iter().collect(),
        services: services.into_iter().collect(),
    }
}

/// The previews for people: a block per namespace.
pub fn render_text(previews: &[Preview]) -> String {
    if previews.is_empty() {
        return format!(
            "no divert namespaces: label one with kubectl label namespace NS {SHARED_NAMESPACE}=<shared namespace>\n"
        );
    }
    let mut out = String::new();
    for p in previews {
        out.push_str(&format!(
            "{} (diverts from {})\n",
            p.namespace, p.shared_namespace
        ));
        let urls = if p.urls.is_empty() {
            "none: no Ingress in this namespace has a host of its own".to_owned()
        } else {
            p.urls.join("  ")
        };
        let services = if p.services.is_empty() {
            format!("none: every request goes to {}", p.shared_namespace)
        } else {
            p.services.join(", ")
        };
        out.push_str(&format!("  URLs:     {urls}\n  services: {services}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(ns: &str, hosts: &[&str], tls: &[&str]) -> Ingress {
        let rules: Vec<_> = hosts.iter().map(|h| json!({"host": h})).collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": "web"},
            "spec": {"rules": rules, "tls": [{"hosts": tls}]}
        }))
        .unwrap()
    }

    fn service(name: &str) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    }

    #[test]
    fn urls_are_the_namespaces_own_ingress_hosts() {
        let own = [ingress(
            "alice",
            &[
                "frontend-alice.example.com",
                "frontend-staging.example.com",
                "api-alice.example.com",
            ],
            &["frontend-alice.example.com"],
        )];
        let shared = [ingress("staging", &["frontend-staging.example.com"], &[])];
        let routes = Routes {
            ingresses: &own,
            shared_ingresses: &shared,
            gateway_routes: &[],
        };
        let p = preview(
            "alice",
            "staging",
            &routes,
            &[service("frontend"), service("api")],
        );
        assert_eq!(
            p.urls,
            [
                "http://api-alice.example.com",
                "https://frontend-alice.example.com"
            ]
        );
        assert_eq!(p.services, ["api", "frontend"]);
        let text = render_text(&[p]);
        assert_eq!(
            text,
            "alice (diverts from staging)\n  URLs:     http://api-alice.example.com  https://frontend-alice.example.com\n  services: api, frontend\n"
        );
    }

    #[test]
    fn with_the_istio_driver_the_copies_of_a_gateways_routes_are_urls() {
        let vs = |name: &str, managed: bool, gateways: &[&str], hosts: &[&str]| -> DynamicObject {
            let labels = if managed {
                json!({MANAGED_BY: MANAGED_BY_CONTROLLER})
            } else {
                json!({})
            };
            serde_json::from_value(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"namespace": "alice", "name": name, "labels": labels},
                "spec": {"hosts": hosts, "gateways": gateways}
            }))
            .unwrap()
        };
        let routes = [
            vs(
                "movies",
                true,
                &["staging/public"],
                &["Movies-Alice.example.com."],
            ),
            // The mesh routes are not URLs, nor is a route of alice's own.
            vs(
                "divert-frontend",
                true,
                &[],
                &["frontend.alice.svc.cluster.local"],
            ),
            vs("mine", false, &["staging/public"], &["mine.example.com"]),
        ];
        let p = preview(
            "alice",
            "staging",
            &Routes {
                gateway_routes: &routes,
                ..Routes::default()
            },
            &[],
        );
        assert_eq!(p.urls, ["http://movies-alice.example.com"]);
    }

    #[test]
    fn an_empty_namespace_says_what_it_lacks() {
        let text = render_text(&[preview("bob", "staging", &Routes::default(), &[])]);
        assert!(text.contains("URLs:     none: no Ingress"), "{text}");
        assert!(
            text.contains("services: none: every request goes to staging"),
            "{text}"
        );
        assert!(render_text(&[]).starts_with("no divert namespaces"));
    }
}
