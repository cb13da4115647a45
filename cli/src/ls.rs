//! `divert ls`: every divert namespace with its shared namespace, the
//! services it runs (its own copies), its preview URLs, its pods (ready, with
//! the proxy, all), the proxies connected to the controller from it, its age
//! and what is left of its time (`divert.dev/expires-at`, set by `divert
//! deploy --ttl`).
//!
//! It reads the labelled namespaces, each one's preview (as `divert preview`)
//! and pods, and the controller's `/proxies` through the API server's
//! service proxy (as `divert check`); a part that cannot be read is shown as
//! unknown, not as zero. Exit status: 0 listed, 2 the cluster could not be
//! reached, 64 bad flags.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use divert_core::names::annotation::EXPIRES_AT;
use divert_core::names::label::SHARED_NAMESPACE;
use divert_core::names::object::NAMESPACE as INSTALL_NAMESPACE;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::check::{EXIT_UNREACHABLE, client, fetch_proxies, has_proxy, reachable};
use crate::preview::{fetch_one, shared_of};

#[derive(Args, Debug)]
pub struct LsArgs {
    /// The kubeconfig to use (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,

    /// The namespace Divert is installed in (for the connected proxies).
    #[arg(long, default_value = INSTALL_NAMESPACE, value_name = "NS")]
    install_namespace: String,

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

/// The pods of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pods {
    pub ready: usize,
    /// With the proxy.
    pub injected: usize,
    pub total: usize,
}

/// One divert namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    pub namespace: String,
    pub shared_namespace: String,
    pub services: Vec<String>,
    pub urls: Vec<String>,
    /// `None` when the pods could not be read.
    pub pods: Option<Pods>,
    /// `None` when the controller could not be asked.
    pub proxies: Option<usize>,
    pub age_seconds: Option<i64>,
    pub expires_at: Option<String>,
    /// Seconds until it expires (negative: past, about to be ended).
    pub ttl_seconds: Option<i64>,
}

pub fn main(args: LsArgs) -> ExitCode {
    let runtime = match divert_core::process::runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("divert ls: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listed = runtime.block_on(async {
        let (client, url) = client(args.kubeconfig.as_deref(), args.timeout)
            .await
            .map_err(|e| e.to_string())?;
        reachable(&client, &url, args.timeout)
            .await
            .map_err(|e| e.to_string())?;
        fetch(&client, &args.install_namespace, args.timeout).await
    });
    let listed = match listed {
        Ok(l) => l,
        Err(e) => {
            eprintln!("divert ls: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    match args.output {
        Output::Text => print!("{}", render_text(&listed)),
        Output::Json => match serde_json::to_string_pretty(&listed) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("divert ls: {e}");
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::SUCCESS
}

async fn fetch(
    client: &kube::Client,
    install_ns: &str,
    timeout: Duration,
) -> Result<Vec<Listed>, String> {
    let lp = ListParams::default().labels(SHARED_NAMESPACE);
    let namespaces = tokio::time::timeout(timeout, Api::<Namespace>::all(client.clone()).list(&lp))
        .await
        .map_err(|_| format!("listing the namespaces took longer than {timeout:?}"))?
        .map_err(|e| format!("cannot list the namespaces: {e}"))?
        .items;
    let proxies = fetch_proxies(client, install_ns, timeout).await.ok();
    let now = Timestamp::now();
    let mut out = Vec::new();
    for ns in &namespaces {
        let (Some(name), Some(shared)) = (ns.metadata.name.as_deref(), shared_of(ns)) else {
            continue;
        };
        let preview = fetch_one(client, name, shared, timeout).await?;
        let pods = tokio::time::timeout(
            timeout,
            Api::<Pod>::namespaced(client.clone(), name).list(&ListParams::default()),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|l| count(&l.items));
        let expires_at = ns
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EXPIRES_AT))
            .cloned();
        let ttl_seconds = expires_at
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map(|t| t.as_second() - now.as_second());
        out.push(Listed {
            namespace: name.to_owned(),
            shared_namespace: shared.to_owned(),
            services: preview.services,
            urls: preview.urls,
            pods,
            proxies: proxies
                .as_ref()
                .map(|p| p.iter().filter(|p| p.namespace == name).count()),
            age_seconds: ns
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| now.as_second() - t.0.as_second()),
            expires_at,
            ttl_seconds,
        });
    }
    out.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    Ok(out)
}

fn count(pods: &[Pod]) -> Pods {
    let ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    Pods {
        ready: pods.iter().filter(|p| ready(p)).count(),
        injected: pods.iter().filter(|p| has_proxy(p)).count(),
        total: pods.len(),
    }
}

/// `95s`, `12m`, `3h5m`, `2d4h`.
fn span(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// A table for people.
pub fn render_text(listed: &[Listed]) -> String {
    if listed.is_empty() {
        return format!(
            "no divert namespaces: divert deploy makes one, or kubectl label namespace NS \
             {SHARED_NAMESPACE}=<shared namespace>\n"
        );
    }
    let unknown = || "?".to_owned();
    let rows: Vec<[String; 8]> = listed
        .iter()
        .map(|l| {
            [
                l.namespace.clone(),
                l.shared_namespace.clone(),
                if l.services.is_empty() {
                    "-".into()
                } else {
                    l.services.join(",")
                },
                if l.urls.is_empty() {
                    "-".into()
                } else {
                    l.urls.join(" ")
                },
                l.pods.map_or_else(unknown, |p| {
                    format!("{}/{}/{}", p.ready, p.injected, p.total)
                }),
                l.proxies.map_or_else(unknown, |n| n.to_string()),
                l.age_seconds.map_or_else(unknown, span),
                match l.ttl_seconds {
                    None => "-".into(),
                    Some(t) if t <= 0 => "expired".into(),
                    Some(t) => span(t),
                },
            ]
        })
        .collect();
    let header = [
        "NAMESPACE",
        "SHARED",
        "SERVICES",
        "URLS",
        "PODS",
        "PROXIES",
        "AGE",
        "TTL",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out.push_str("PODS: ready/with the proxy/all\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lines_up_and_says_what_is_unknown() {
        let listed = [
            Listed {
                namespace: "alice".into(),
                shared_namespace: "staging".into(),
                services: vec!["frontend".into()],
                urls: vec!["http://frontend-alice.movies.test".into()],
                pods: Some(Pods {
                    ready: 1,
                    injected: 1,
                    total: 1,
                }),
                proxies: Some(1),
                age_seconds: Some(330),
                expires_at: Some("2026-12-01T20:00:00Z".into()),
                ttl_seconds: Some(7 * 3600 + 55 * 60),
            },
            Listed {
                namespace: "bob".into(),
                shared_namespace: "staging".into(),
                services: vec![],
                urls: vec![],
                pods: None,
                proxies: None,
                age_seconds: Some(2 * 86400 + 3600),
                expires_at: None,
                ttl_seconds: None,
            },
        ];
        assert_eq!(
            render_text(&listed),
            "NAMESPACE  SHARED   SERVICES  URLS                               PODS   PROXIES  AGE   TTL\n\
             alice      staging  frontend  http://frontend-alice.movies.test  1/1/1  1        5m    7h55m\n\
             bob        staging  -         -                                  ?      ?        2d1h  -\n\
             PODS: ready/with the proxy/all\n"
        );
        assert!(render_text(&[]).starts_with("no divert namespaces"));
    }
}
