//! `divert check`: is Divert installed and working in this cluster?
//!
//! Like `linkerd check`: each check on its own line, `✔` or `✘`, with what
//! was found and, for each failure, a hint saying how to fix it; or the same
//! as JSON with `--output json`.
//!
//! Fetching and judging are apart. [`fetch`] reads what the checks need from
//! the API server (and the controller's admin `/proxies`, through the API
//! server's service proxy) into a [`ClusterView`]; [`evaluate`] judges a view
//! and does no I/O, so every verdict is tested on fixtures shaped like the API
//! server's objects (`cli/testdata/check/`).
//!
//! Exit status: 0 when every check passed, 1 when any failed, 2 when the
//! cluster could not be reached at all (no usable kubeconfig, or the API
//! server did not answer), 64 for bad flags.

mod certs;
mod checks;
mod fetch;
mod render;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use divert_core::names::object::NAMESPACE as DEFAULT_NAMESPACE;
use divert_core::names::parse_dns_label;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use serde::{Deserialize, Serialize};

pub use checks::{evaluate, has_proxy, is_running, opted_in};
pub use fetch::{
    client, copies_path, fetch, fetch_proxies, key_drops_path, proxies_path, reachable,
};
pub use render::{render_json, render_json_error, render_text};

/// A webhook certificate that expires sooner than this fails the check.
pub const MIN_DAYS_LEFT: i64 = 60;

/// Exit status when the cluster cannot be reached at all.
pub const EXIT_UNREACHABLE: u8 = 2;

const DAY: i64 = 86_400;
const INSTALL: &str = "divert install | kubectl apply -f -";

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The kubeconfig to use (default: KUBECONFIG, then ~/.kube/config; in a
    /// pod, its service account).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,

    /// The namespace Divert is installed in.
    #[arg(
        long,
        short = 'n',
        default_value = DEFAULT_NAMESPACE,
        value_name = "NS",
        value_parser = parse_dns_label
    )]
    namespace: String,

    /// `text` for people, `json` for machines.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,

    /// How long to wait for each request to the API server (250ms, 10s, 1m).
    #[arg(
        long,
        default_value = "10s",
        value_name = "DURATION",
        value_parser = divert_core::duration::parse
    )]
    timeout: Duration,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// What a fetch found, or why it could not be read (a message: forbidden,
/// a timeout, a controller that does not answer).
pub type Fetched<T> = Result<T, String>;

/// Everything the checks judge, as read from the cluster.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// Deployment `divert-controller` in the install namespace (`None`: not found).
    pub deployment: Fetched<Option<Deployment>>,
    /// Secret `divert-webhook-tls` in the install namespace.
    pub secret: Fetched<Option<Secret>>,
    /// MutatingWebhookConfiguration `divert-injector`.
    pub webhook: Fetched<Option<MutatingWebhookConfiguration>>,
    /// Every namespace.
    pub namespaces: Fetched<Vec<Namespace>>,
    /// The pods of the opted-in namespaces (pods elsewhere are ignored).
    pub pods: Fetched<Vec<Pod>>,
    /// The controller's `/proxies`.
    pub proxies: Fetched<Vec<ConnectedProxy>>,
    /// Each divert namespace's preview URLs and services (what `divert
    /// preview` lists), shown beside the namespace.
    pub previews: Fetched<Vec<crate::preview::Preview>>,
    /// The controller's `/key-drops`: the apps that did not pass the key on.
    pub key_drops: Fetched<KeyDrops>,
    /// The controller's `/copies`: the copies and routes it could not make.
    pub copies: Fetched<Copies>,
}

/// The controller's `/copies`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Copies {
    pub problems: Vec<CopyProblem>,
}

/// A copy or route the controller could not make, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CopyProblem {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub why: String,
}

/// The controller's `/key-drops`, as its proxies counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyDrops {
    pub drops: Vec<KeyDrop>,
    /// Proxies that did not answer ("namespace/pod (addr): why").
    pub unreachable: Vec<String>,
}

/// Calls from one pod's service to one destination made without the key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KeyDrop {
    pub pod: String,
    pub namespace: String,
    pub service: String,
    pub destination: String,
    pub count: u64,
    pub last_seconds: u64,
}

/// One proxy watching the controller's table, as its admin `/proxies` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectedProxy {
    pub pod: String,
    pub namespace: String,
    pub version: String,
    pub remote_addr: String,
    pub revision: u64,
    pub connected_seconds: u64,
}

/// The verdict of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// A stable identifier, for machines.
    pub id: &'static str,
    /// What is checked, as a statement that holds when it passes.
    pub name: &'static str,
    pub passed: bool,
    /// What was found, one line each.
    pub detail: Vec<String>,
    /// How to fix it (empty when it passed without a warning).
    pub hint: Vec<String>,
    /// It passed, but found something to look at: not Divert's fault, so
    /// the exit status stays 0 (the apps' key drops).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warning: bool,
}

impl CheckResult {
    fn pass(id: &'static str, name: &'static str, detail: Vec<String>) -> Self {
        CheckResult {
            id,
            name,
            passed: true,
            detail,
            hint: Vec::new(),
            warning: false,
        }
    }

    fn warn(id: &'static str, name: &'static str, detail: Vec<String>, hint: Vec<String>) -> Self {
        CheckResult {
            id,
            name,
            passed: true,
            detail,
            hint,
            warning: true,
        }
    }

    fn fail(id: &'static str, name: &'static str, detail: Vec<String>, hint: Vec<String>) -> Self {
        CheckResult {
            id,
            name,
            passed: false,
            detail,
            hint,
            warning: false,
        }
    }
}

/// Why the cluster could not be reached at all.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// No kubeconfig or in-cluster config to go by.
    #[error(transparent)]
    Config(#[from] divert_controller::kubernetes::Error),
    #[error(
        "cannot reach the Kubernetes API server at {url}: {reason}; check that the cluster is up \
         and that the kubeconfig's current context points at it (kubectl cluster-info)"
    )]
    ApiServer { url: String, reason: String },
}

pub fn main(args: CheckArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("divert check: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let fetched = runtime.block_on(async {
        let (client, url) = client(args.kubeconfig.as_deref(), args.timeout).await?;
        reachable(&client, &url, args.timeout).await?;
        Ok::<_, Unreachable>(fetch(&client, &args.namespace, args.timeout).await)
    });
    match fetched {
        Ok(view) => {
            let results = evaluate(&view, &args.namespace, SystemTime::now());
            match args.output {
                Output::Text => print!("{}", render_text(&results)),
                Output::Json => println!("{}", render_json(&args.namespace, &results)),
            }
            ExitCode::from(exit_status(&results))
        }
        Err(e) => {
            eprintln!("divert check: {e}");
            if args.output == Output::Json {
                println!("{}", render_json_error(&args.namespace, &e.to_string()));
            }
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

/// 0 when every check passed, else 1.
pub fn exit_status(results: &[CheckResult]) -> u8 {
    u8::from(!results.iter().all(|r| r.passed))
}
