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

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use divert_controller::translate::{self, NamespaceRole, SHARED_NAMESPACE_LABEL, Skip};
use divert_core::names::parse_dns_label;
use divert_inject::PROXY_CONTAINER;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, ListParams};
use kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Config, ResourceExt};
use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::install::{CONTROLLER, INJECT_LABEL, TLS_SECRET, WEBHOOK_CONFIGURATION};

/// The namespace `divert install` puts Divert in.
pub const DEFAULT_NAMESPACE: &str = "divert";
/// The name of the controller Service's port that serves `/live`, `/ready`,
/// `/metrics` and `/proxies`.
pub const ADMIN_PORT_NAME: &str = "admin";
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
    /// How to fix it (empty when it passed).
    pub hint: Vec<String>,
}

impl CheckResult {
    fn pass(id: &'static str, name: &'static str, detail: Vec<String>) -> Self {
        CheckResult {
            id,
            name,
            passed: true,
            detail,
            hint: Vec::new(),
        }
    }

    fn fail(id: &'static str, name: &'static str, detail: Vec<String>, hint: Vec<String>) -> Self {
        CheckResult {
            id,
            name,
            passed: false,
            detail,
            hint,
        }
    }
}

/// Why the cluster could not be reached at all.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("cannot read kubeconfig {}: {source}; pass --kubeconfig with a readable file", path.display())]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "kubeconfig {}: {source}; it needs a current context with a cluster \
         (kubectl config current-context), or pass --kubeconfig",
        path.as_ref().map_or("(KUBECONFIG or ~/.kube/config)".into(), |p| p.display().to_string())
    )]
    Kubeconfig {
        /// The file given, or `None` for the default search.
        path: Option<PathBuf>,
        #[source]
        source: KubeconfigError,
    },
    #[error("cannot load the in-cluster Kubernetes config: {0}; pass --kubeconfig")]
    InCluster(#[source] InClusterError),
    #[error("cannot create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error(
        "cannot reach the Kubernetes API server at {url}: {reason}; check that the cluster is up \
         and that the kubeconfig's current context points at it (kubectl cluster-info)"
    )]
    ApiServer { url: String, reason: String },
}

impl Unreachable {
    fn kubeconfig(path: Option<&Path>, source: KubeconfigError) -> Self {
        match source {
            KubeconfigError::ReadConfig(source, read) => Unreachable::ReadKubeconfig {
                path: path.map_or(read, Path::to_path_buf),
                source,
            },
            source => Unreachable::Kubeconfig {
                path: path.map(Path::to_path_buf),
                source,
            },
        }
    }
}

// ---------------------------------------------------------------------------
// The command.

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

// ---------------------------------------------------------------------------
// Fetching.

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
    let options = KubeConfigOptions::default();
    let mut config = match kubeconfig {
        Some(path) => {
            let error = |source| Unreachable::kubeconfig(Some(path), source);
            let file = Kubeconfig::read_from(path).map_err(error)?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(error)?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            Config::incluster().map_err(Unreachable::InCluster)?
        }
        None => Config::from_kubeconfig(&options)
            .await
            .map_err(|source| Unreachable::kubeconfig(None, source))?,
    };
    config.default_retry = false;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(Unreachable::Client)?;
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

/// Reads everything [`evaluate`] judges. Each part that cannot be read is
/// recorded as its error; it never gives up on the others.
pub async fn fetch(client: &Client, install_ns: &str, timeout: Duration) -> ClusterView {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), install_ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), install_ns);
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let all = ListParams::default();
    let (deployment, secret, webhook, namespaces, proxies) = tokio::join!(
        within(timeout, deployments.get_opt(CONTROLLER)),
        within(timeout, secrets.get_opt(TLS_SECRET)),
        within(timeout, webhooks.get_opt(WEBHOOK_CONFIGURATION)),
        within(timeout, namespaces.list(&all)),
        fetch_proxies(client, install_ns, timeout),
    );
    let namespaces = namespaces.map(|list| list.items);
    let pods = match &namespaces {
        Ok(all) => fetch_pods(client, &opted_in(all, install_ns), timeout).await,
        Err(e) => Err(format!("the namespaces could not be listed: {e}")),
    };
    ClusterView {
        deployment,
        secret,
        webhook,
        namespaces,
        pods,
        proxies,
    }
}

/// The pods of each opted-in namespace.
async fn fetch_pods(
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

async fn fetch_proxies(
    client: &Client,
    install_ns: &str,
    timeout: Duration,
) -> Fetched<Vec<ConnectedProxy>> {
    let request = http::Request::get(proxies_path(install_ns))
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    within(timeout, client.request::<Vec<ConnectedProxy>>(request)).await
}

/// Runs one request with a deadline; its error as a one-line message.
async fn within<T>(
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
fn describe(e: &kube::Error) -> String {
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

// ---------------------------------------------------------------------------
// Judging.

/// Judges a view of the cluster: one result per check, in a fixed order.
pub fn evaluate(view: &ClusterView, install_ns: &str, now: SystemTime) -> Vec<CheckResult> {
    let now = unix_seconds(now);
    let serving = serving_certificate(view, install_ns);
    let leaf = match &serving {
        Ok(pems) => pems
            .first()
            .ok_or_else(|| "no certificate".to_owned())
            .and_then(|pem| {
                pem.parse_x509()
                    .map_err(|e| format!("tls.crt does not parse as X.509: {e}"))
            }),
        Err(e) => Err(e.clone()),
    };
    let roles = view.namespaces.as_ref().map(|all| roles(all, install_ns));
    let roles = roles.as_ref().map_err(|e| e.as_str());
    vec![
        controller(view, install_ns),
        certificate(leaf.as_ref(), install_ns, now),
        ca_bundle(view, leaf.as_ref(), install_ns, now),
        namespaces(roles),
        pods_injected(view, roles),
        proxies_connected(view, roles, install_ns),
    ]
}

const CONTROLLER_CHECK: &str = "the controller is running and ready";

fn controller(view: &ClusterView, ns: &str) -> CheckResult {
    let id = "controller";
    let describe = format!("kubectl -n {ns} describe deployment {CONTROLLER}");
    let deployment = match &view.deployment {
        Err(e) => {
            return CheckResult::fail(
                id,
                CONTROLLER_CHECK,
                vec![format!("cannot read Deployment {ns}/{CONTROLLER}: {e}")],
                vec![format!(
                    "check that you may read it: kubectl -n {ns} get deployment {CONTROLLER}"
                )],
            );
        }
        Ok(None) => {
            return CheckResult::fail(
                id,
                CONTROLLER_CHECK,
                vec![format!(
                    "Deployment {ns}/{CONTROLLER} not found: Divert is not installed in namespace {ns}"
                )],
                vec![
                    format!("install it: {INSTALL}"),
                    "installed in another namespace? pass --namespace".into(),
                ],
            );
        }
        Ok(Some(d)) => d,
    };
    let want = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let observed =
        status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
    let mut problems = Vec::new();
    let mut hint = Vec::new();
    if want == 0 {
        problems.push("it is scaled to 0 replicas".to_owned());
        hint.push(format!(
            "scale it up: kubectl -n {ns} scale deployment {CONTROLLER} --replicas=1"
        ));
    } else if ready < 1 {
        problems.push(format!("0 of {want} replicas ready"));
        hint.push(format!("see why: {describe}"));
        hint.push(format!(
            "and its logs: kubectl -n {ns} logs deployment/{CONTROLLER}"
        ));
        hint.push(format!("reinstall if it was changed: {INSTALL}"));
    }
    if want > 0 && (!observed || updated < want) {
        problems.push(format!(
            "a rollout is in progress: {updated} of {want} replicas updated"
        ));
        hint.push(format!(
            "wait for it: kubectl -n {ns} rollout status deployment/{CONTROLLER}"
        ));
        if ready >= 1 {
            hint.push(format!("if it does not finish, see why: {describe}"));
        }
    }
    if problems.is_empty() {
        CheckResult::pass(
            id,
            CONTROLLER_CHECK,
            vec![format!(
                "Deployment {ns}/{CONTROLLER}: {ready} of {want} replicas ready, all updated"
            )],
        )
    } else {
        let detail = problems
            .into_iter()
            .map(|p| format!("Deployment {ns}/{CONTROLLER}: {p}"))
            .collect();
        hint.dedup();
        CheckResult::fail(id, CONTROLLER_CHECK, detail, hint)
    }
}

/// The PEM certificates of the webhook Secret's `tls.crt`, serving
/// certificate first.
fn serving_certificate(view: &ClusterView, ns: &str) -> Result<Vec<Pem>, String> {
    let secret = match &view.secret {
        Err(e) => return Err(format!("cannot read Secret {ns}/{TLS_SECRET}: {e}")),
        Ok(None) => return Err(format!("Secret {ns}/{TLS_SECRET} not found")),
        Ok(Some(s)) => s,
    };
    let crt = secret
        .data
        .as_ref()
        .and_then(|d| d.get("tls.crt"))
        .ok_or_else(|| format!("Secret {ns}/{TLS_SECRET} has no tls.crt"))?;
    certificates(&crt.0).map_err(|e| format!("Secret {ns}/{TLS_SECRET}: tls.crt: {e}"))
}

/// The CERTIFICATE blocks of a PEM bundle (at least one).
fn certificates(pem: &[u8]) -> Result<Vec<Pem>, String> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("not valid PEM: {e}"))?;
        if block.label == "CERTIFICATE" {
            out.push(block);
        }
    }
    if out.is_empty() {
        return Err("no PEM CERTIFICATE in it".into());
    }
    Ok(out)
}

/// The SAN the API server dials the webhook's Service by.
fn service_dns_name(ns: &str) -> String {
    format!("{CONTROLLER}.{ns}.svc")
}

const CERTIFICATE_CHECK: &str = "the webhook certificate is valid for more than 60 days";

fn rotate_hint() -> String {
    format!("rotate it: re-run `{INSTALL}` (it makes a new certificate and caBundle)")
}

fn certificate(leaf: Result<&X509Certificate, &String>, ns: &str, now: i64) -> CheckResult {
    let id = "webhook-certificate";
    let leaf = match leaf {
        Ok(leaf) => leaf,
        Err(e) => {
            return CheckResult::fail(
                id,
                CERTIFICATE_CHECK,
                vec![e.clone()],
                vec![format!("install or repair it: {INSTALL}")],
            );
        }
    };
    let want = service_dns_name(ns);
    let names = dns_names(leaf);
    let mut problems = Vec::new();
    let validity = validity(
        leaf.validity().not_before.timestamp(),
        leaf.validity().not_after.timestamp(),
        now,
    );
    if let Err(e) = &validity {
        problems.push(e.clone());
    }
    if !names.iter().any(|n| n.eq_ignore_ascii_case(&want)) {
        problems.push(if names.is_empty() {
            format!("it has no DNS name; the API server dials {want}")
        } else {
            format!(
                "it is not for {want} (the name the API server dials), only for {}",
                names.join(", ")
            )
        });
    }
    let subject = format!("Secret {ns}/{TLS_SECRET}: {want}");
    match (problems.is_empty(), validity) {
        (true, Ok(valid)) => {
            CheckResult::pass(id, CERTIFICATE_CHECK, vec![format!("{subject}, {valid}")])
        }
        _ => CheckResult::fail(
            id,
            CERTIFICATE_CHECK,
            problems
                .into_iter()
                .map(|p| format!("Secret {ns}/{TLS_SECRET}: {p}"))
                .collect(),
            vec![rotate_hint()],
        ),
    }
}

/// "valid until DATE (N days left)", or why not.
fn validity(not_before: i64, not_after: i64, now: i64) -> Result<String, String> {
    let left = not_after - now;
    if left < 0 {
        let ago = days(-left);
        return Err(format!(
            "expired on {} ({ago} day{} ago)",
            crate::utc::rfc3339(not_after),
            plural(ago)
        ));
    }
    if now < not_before {
        return Err(format!(
            "not valid before {}",
            crate::utc::rfc3339(not_before)
        ));
    }
    let days_left = days(left);
    if left < MIN_DAYS_LEFT * DAY {
        return Err(format!(
            "expires on {} ({days_left} day{} left, fewer than {MIN_DAYS_LEFT})",
            crate::utc::rfc3339(not_after),
            plural(days_left)
        ));
    }
    Ok(format!(
        "valid until {} ({days_left} days left)",
        crate::utc::rfc3339(not_after)
    ))
}

/// Whole days in `secs`, to the nearest.
fn days(secs: i64) -> i64 {
    (secs + DAY / 2).div_euclid(DAY)
}

fn plural<N: PartialEq + From<u8>>(n: N) -> &'static str {
    if n == N::from(1) { "" } else { "s" }
}

fn dns_names(cert: &X509Certificate) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(name) => Some((*name).to_owned()),
            _ => None,
        })
        .collect()
}

const CA_BUNDLE_CHECK: &str = "the webhook configuration trusts the certificate's CA";

fn ca_bundle(
    view: &ClusterView,
    leaf: Result<&X509Certificate, &String>,
    ns: &str,
    now: i64,
) -> CheckResult {
    let id = "webhook-ca-bundle";
    let config = match &view.webhook {
        Err(e) => {
            return CheckResult::fail(
                id,
                CA_BUNDLE_CHECK,
                vec![format!(
                    "cannot read MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION}: {e}"
                )],
                vec![format!(
                    "check that you may read it: kubectl get mutatingwebhookconfiguration {WEBHOOK_CONFIGURATION}"
                )],
            );
        }
        Ok(None) => {
            return CheckResult::fail(
                id,
                CA_BUNDLE_CHECK,
                vec![format!(
                    "MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION} not found: no pod is injected"
                )],
                vec![format!("install it: {INSTALL}")],
            );
        }
        Ok(Some(c)) => c,
    };
    let webhooks = config.webhooks.as_deref().unwrap_or_default();
    if webhooks.is_empty() {
        return CheckResult::fail(
            id,
            CA_BUNDLE_CHECK,
            vec![format!(
                "MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION} has no webhooks"
            )],
            vec![format!("reinstall it: {INSTALL}")],
        );
    }
    let mut detail = Vec::new();
    let mut failed = false;
    let mut service_hint = false;
    for webhook in webhooks {
        let name = &webhook.name;
        if let Some(service) = &webhook.client_config.service
            && (service.namespace != ns || service.name != CONTROLLER)
        {
            failed = true;
            service_hint = true;
            detail.push(format!(
                "webhook {name} calls Service {}/{}, not {ns}/{CONTROLLER}",
                service.namespace, service.name
            ));
        }
        let judged = match (&webhook.client_config.ca_bundle, leaf) {
            (None, _) => Err("has no caBundle".to_owned()),
            (Some(bundle), _) if bundle.0.is_empty() => Err("has no caBundle".to_owned()),
            (Some(_), Err(_)) => Err(
                "its caBundle cannot be checked: the serving certificate is unavailable".to_owned(),
            ),
            (Some(bundle), Ok(leaf)) => {
                trusts(&bundle.0, leaf, now).map_err(|e| format!("caBundle {e}"))
            }
        };
        match judged {
            Ok(how) => detail.push(format!("webhook {name}: {how}")),
            Err(why) => {
                failed = true;
                detail.push(format!("webhook {name}: {why}"));
            }
        }
    }
    if failed {
        let mut hint = vec![rotate_hint()];
        if service_hint {
            hint.push(format!(
                "or point it at the controller: kubectl edit mutatingwebhookconfiguration {WEBHOOK_CONFIGURATION}"
            ));
        }
        CheckResult::fail(id, CA_BUNDLE_CHECK, detail, hint)
    } else {
        CheckResult::pass(id, CA_BUNDLE_CHECK, detail)
    }
}

/// Whether a caBundle holds the CA that issued `leaf`: a certificate whose
/// subject is the leaf's issuer and whose key verifies the leaf's signature.
fn trusts(bundle: &[u8], leaf: &X509Certificate, now: i64) -> Result<String, String> {
    let pems = certificates(bundle)?;
    let issuer = leaf.issuer();
    let mut subjects = Vec::new();
    let mut same_name = false;
    for pem in &pems {
        let Ok(ca) = pem.parse_x509() else {
            continue;
        };
        subjects.push(ca.subject().to_string());
        if ca.subject().as_raw() != issuer.as_raw() {
            continue;
        }
        same_name = true;
        let verified = match leaf.verify_signature(Some(ca.public_key())) {
            Ok(()) => "which signed the certificate",
            Err(X509Error::SignatureUnsupportedAlgorithm) => {
                "the certificate's issuer (its signature algorithm is not one divert check verifies)"
            }
            Err(_) => continue,
        };
        let not_after = ca.validity().not_after.timestamp();
        let left = not_after - now;
        if left < MIN_DAYS_LEFT * DAY {
            let when = if left < 0 { "expired" } else { "expires" };
            return Err(format!(
                "CA {issuer} {when} on {} ({} days {})",
                crate::utc::rfc3339(not_after),
                days(left.abs()),
                if left < 0 { "ago" } else { "left" }
            ));
        }
        return Ok(format!("trusts CA {issuer}, {verified}"));
    }
    if same_name {
        Err(format!(
            "holds a CA named {issuer} that did not sign the certificate \
             (the certificate or the caBundle was replaced without the other)"
        ))
    } else if subjects.is_empty() {
        Err("holds no certificate that parses".to_owned())
    } else {
        Err(format!(
            "holds {}, not the certificate's issuer {issuer}",
            subjects.join("; ")
        ))
    }
}

/// What each namespace is to Divert, by name.
struct Roles {
    all: BTreeMap<String, NamespaceInfo>,
    install_ns: String,
}

struct NamespaceInfo {
    role: NamespaceRole,
    /// The value of its `divert.dev/inject` label.
    inject: Option<String>,
    /// The value of its `divert.dev/shared-namespace` label.
    label: Option<String>,
}

impl NamespaceInfo {
    /// Whether the injector's namespace selectors (`divert install`) match
    /// it: labelled with a shared namespace and not `divert.dev/inject=disabled`,
    /// or a shared namespace labelled `divert.dev/inject=enabled`.
    fn injected(&self) -> bool {
        match (&self.label, self.inject.as_deref()) {
            (Some(_), inject) => inject != Some("disabled"),
            (None, inject) => inject == Some("enabled"),
        }
    }
}

fn roles(namespaces: &[Namespace], install_ns: &str) -> Roles {
    let all = namespaces
        .iter()
        .map(|ns| {
            let labels = ns.metadata.labels.as_ref();
            let info = NamespaceInfo {
                role: translate::namespace(ns),
                inject: labels.and_then(|l| l.get(INJECT_LABEL)).cloned(),
                label: labels.and_then(|l| l.get(SHARED_NAMESPACE_LABEL)).cloned(),
            };
            (ns.name_any(), info)
        })
        .collect();
    Roles {
        all,
        install_ns: install_ns.to_owned(),
    }
}

impl Roles {
    /// Divert namespaces and their shared namespace.
    fn divert(&self) -> BTreeMap<&str, &str> {
        self.all
            .iter()
            .filter_map(|(name, info)| match &info.role {
                NamespaceRole::Divert(ns) => Some((name.as_str(), ns.shared_namespace.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Shared namespaces labelled `divert.dev/inject=enabled`.
    fn injected_shared(&self) -> BTreeSet<&str> {
        self.all
            .iter()
            .filter(|(name, info)| {
                info.label.is_none() && info.injected() && **name != self.install_ns
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Namespaces whose new pods the injector sees (never Divert's own).
    fn opted_in(&self) -> BTreeSet<String> {
        self.all
            .iter()
            .filter(|(name, info)| info.injected() && **name != self.install_ns)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Namespaces whose pods should run the proxy: divert namespaces (unless
/// labelled `divert.dev/inject=disabled`), and shared ones labelled
/// `divert.dev/inject=enabled`; never `install_ns`.
pub fn opted_in(namespaces: &[Namespace], install_ns: &str) -> BTreeSet<String> {
    roles(namespaces, install_ns).opted_in()
}

const NAMESPACES_CHECK: &str = "every divert namespace has its shared namespace";

fn namespaces(roles: Result<&Roles, &str>) -> CheckResult {
    let id = "namespaces";
    let roles = match roles {
        Ok(r) => r,
        Err(e) => {
            return CheckResult::fail(
                id,
                NAMESPACES_CHECK,
                vec![format!("cannot list namespaces: {e}")],
                vec!["check that you may list them: kubectl get namespaces".into()],
            );
        }
    };
    let divert = roles.divert();
    let injected = roles.injected_shared();
    let mut detail = Vec::new();
    let mut hint = Vec::new();
    let relabel = |ns: &str| {
        format!(
            "kubectl label namespace {ns} {SHARED_NAMESPACE_LABEL}=<shared namespace> --overwrite"
        )
    };
    for (name, info) in &roles.all {
        let label = info.label.as_deref().unwrap_or_default();
        match &info.role {
            NamespaceRole::Divert(_) => {
                let shared = label;
                if !roles.all.contains_key(shared) {
                    detail.push(format!(
                        "{name} → {shared}: namespace {shared} does not exist"
                    ));
                    hint.push(format!(
                        "create it: kubectl create namespace {shared}; or fix the label: {}",
                        relabel(name)
                    ));
                } else if let Some(theirs) = divert.get(shared) {
                    detail.push(format!(
                        "{name} → {shared}: {shared} is itself a divert namespace (of {theirs})"
                    ));
                    hint.push(format!(
                        "point {name} at a shared namespace: kubectl label namespace {name} {SHARED_NAMESPACE_LABEL}={theirs} --overwrite"
                    ));
                } else if injected.contains(shared) {
                    detail.push(format!("{name} → {shared}"));
                } else {
                    detail.push(format!(
                        "{name} → {shared} (note: {shared} is not labelled {INJECT_LABEL}=enabled, \
                         so its pods run no proxy and cannot send requests on to {name}'s services)"
                    ));
                }
            }
            NamespaceRole::Skipped(skip) => {
                let why = match skip {
                    Skip::SharedNamespaceIsItself => "names the namespace itself".to_owned(),
                    _ => "is not a namespace name".to_owned(),
                };
                detail.push(format!(
                    "{name}: label {SHARED_NAMESPACE_LABEL}={label:?} {why}, so {name} is ignored"
                ));
                hint.push(format!("fix the label: {}", relabel(name)));
            }
            NamespaceRole::Shared => {}
        }
    }
    let passed = hint.is_empty();
    if divert.is_empty() && passed {
        detail.push(format!(
            "no divert namespace yet: opt one in with kubectl label namespace NAME {SHARED_NAMESPACE_LABEL}=SHARED"
        ));
    }
    detail.push(if injected.is_empty() {
        format!("shared namespaces with injection ({INJECT_LABEL}=enabled): none")
    } else {
        format!(
            "shared namespaces with injection ({INJECT_LABEL}=enabled): {}",
            injected.into_iter().collect::<Vec<_>>().join(", ")
        )
    });
    if passed {
        CheckResult::pass(id, NAMESPACES_CHECK, detail)
    } else {
        CheckResult::fail(id, NAMESPACES_CHECK, detail, hint)
    }
}

/// A pod that the checks expect to run the proxy: in an opted-in namespace,
/// not finished, not being deleted, not on the host's network, not opted out.
fn expects_proxy(pod: &Pod, opted_in: &BTreeSet<String>) -> bool {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    // The webhook skips pods annotated divert.dev/inject=disabled; its
    // objectSelector, pods labelled so.
    let disabled = [&pod.metadata.annotations, &pod.metadata.labels]
        .into_iter()
        .any(|m| {
            m.as_ref()
                .and_then(|m| m.get(INJECT_LABEL))
                .is_some_and(|v| v == "disabled")
        });
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    opted_in.contains(ns)
        && !matches!(phase, Some("Succeeded" | "Failed"))
        && pod.metadata.deletion_timestamp.is_none()
        && !disabled
        && !host_network
}

fn has_proxy(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER)
    })
}

fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn pod_key(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.name_any(),
    )
}

/// How to get a pod made again, now that its namespace is opted in.
fn restart_hint(pod: &Pod) -> String {
    let (ns, name) = pod_key(pod);
    let owner = pod
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.controller == Some(true));
    let rollout =
        |kind: &str, owner: &str| format!("kubectl -n {ns} rollout restart {kind}/{owner}");
    match owner {
        Some(o) if o.kind == "ReplicaSet" => {
            let hash = pod.labels().get("pod-template-hash");
            match hash.and_then(|h| o.name.strip_suffix(&format!("-{h}"))) {
                Some(deployment) => rollout("deployment", deployment),
                None => format!(
                    "kubectl -n {ns} delete pod {name} (ReplicaSet {} makes a new one)",
                    o.name
                ),
            }
        }
        Some(o) if o.kind == "StatefulSet" => rollout("statefulset", &o.name),
        Some(o) if o.kind == "DaemonSet" => rollout("daemonset", &o.name),
        _ => format!("delete pod {ns}/{name} and create it again"),
    }
}

const PODS_CHECK: &str = "pods in opted-in namespaces run the proxy";

fn pods_injected(view: &ClusterView, roles: Result<&Roles, &str>) -> CheckResult {
    let id = "pods-injected";
    let (opted_in, pods) = match (roles, &view.pods) {
        (Err(e), _) => {
            return CheckResult::fail(
                id,
                PODS_CHECK,
                vec![format!("cannot tell which namespaces are opted in: {e}")],
                vec!["check that you may list them: kubectl get namespaces".into()],
            );
        }
        (_, Err(e)) => {
            return CheckResult::fail(
                id,
                PODS_CHECK,
                vec![e.clone()],
                vec![
                    "check that you may list pods: kubectl auth can-i list pods -n NAMESPACE"
                        .into(),
                ],
            );
        }
        (Ok(roles), Ok(pods)) => (roles.opted_in(), pods),
    };
    let expected: Vec<&Pod> = pods
        .iter()
        .filter(|p| expects_proxy(p, &opted_in))
        .collect();
    let missing: Vec<&Pod> = expected.iter().copied().filter(|p| !has_proxy(p)).collect();
    if missing.is_empty() {
        let detail = if opted_in.is_empty() {
            "no opted-in namespace".to_owned()
        } else {
            format!(
                "{} pod{} in {} opted-in namespace{}, each with {PROXY_CONTAINER}",
                expected.len(),
                plural(expected.len()),
                opted_in.len(),
                plural(opted_in.len())
            )
        };
        return CheckResult::pass(id, PODS_CHECK, vec![detail]);
    }
    let mut missing: Vec<(String, String, &Pod)> = missing
        .into_iter()
        .map(|p| {
            let (ns, name) = pod_key(p);
            (ns, name, p)
        })
        .collect();
    missing.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let detail = missing
        .iter()
        .map(|(ns, name, _)| format!("{ns}/{name} has no {PROXY_CONTAINER} container"))
        .collect();
    let mut hint = vec![
        "pods created before their namespace was opted in, before Divert was installed, \
         or while the webhook was unreachable (its failurePolicy is Ignore, so the API server \
         created them without it) are not injected; make them again:"
            .to_owned(),
    ];
    let mut seen = BTreeSet::new();
    for (_, _, pod) in &missing {
        let h = restart_hint(pod);
        if seen.insert(h.clone()) {
            hint.push(h);
        }
    }
    CheckResult::fail(id, PODS_CHECK, detail, hint)
}

const PROXIES_CHECK: &str = "every injected pod's proxy is connected to the controller";

fn proxies_connected(
    view: &ClusterView,
    roles: Result<&Roles, &str>,
    install_ns: &str,
) -> CheckResult {
    let id = "proxies-connected";
    let proxies = match &view.proxies {
        Ok(p) => p,
        Err(e) => {
            return CheckResult::fail(
                id,
                PROXIES_CHECK,
                vec![format!(
                    "cannot list the proxies from the controller (GET {}): {e}",
                    proxies_path(install_ns)
                )],
                vec![
                    format!(
                        "the controller must answer on its Service's port named {ADMIN_PORT_NAME}: \
                         kubectl -n {install_ns} get service {CONTROLLER} -o wide"
                    ),
                    format!("and be running: kubectl -n {install_ns} logs deployment/{CONTROLLER}"),
                ],
            );
        }
    };
    let (opted_in, pods) = match (roles, &view.pods) {
        (Err(e), _) => {
            return CheckResult::fail(
                id,
                PROXIES_CHECK,
                vec![format!("cannot tell which pods should be connected: {e}")],
                vec!["check that you may list namespaces: kubectl get namespaces".into()],
            );
        }
        (_, Err(e)) => {
            return CheckResult::fail(
                id,
                PROXIES_CHECK,
                vec![format!("cannot tell which pods should be connected: {e}")],
                vec![
                    "check that you may list pods: kubectl auth can-i list pods -n NAMESPACE"
                        .into(),
                ],
            );
        }
        (Ok(roles), Ok(pods)) => (roles.opted_in(), pods),
    };
    let connected: BTreeSet<(&str, &str)> = proxies
        .iter()
        .map(|p| (p.namespace.as_str(), p.pod.as_str()))
        .collect();
    let mut injected: Vec<(String, String)> = pods
        .iter()
        .filter(|p| expects_proxy(p, &opted_in) && has_proxy(p) && is_running(p))
        .map(pod_key)
        .collect();
    injected.sort();
    let missing: Vec<&(String, String)> = injected
        .iter()
        .filter(|(ns, name)| !connected.contains(&(ns.as_str(), name.as_str())))
        .collect();
    if missing.is_empty() {
        return CheckResult::pass(
            id,
            PROXIES_CHECK,
            vec![format!(
                "{} running injected pod{}, each connected ({} proxies connected in all)",
                injected.len(),
                plural(injected.len()),
                proxies.len()
            )],
        );
    }
    let detail = missing
        .iter()
        .map(|(ns, name)| format!("{ns}/{name}: its proxy is not connected"))
        .collect();
    let mut hint: Vec<String> = missing
        .iter()
        .map(|(ns, name)| format!("kubectl -n {ns} logs {name} -c {PROXY_CONTAINER}"))
        .collect();
    hint.insert(
        0,
        "see why in the proxy's logs (it reconnects by itself; a pod that just started may need a moment):"
            .into(),
    );
    CheckResult::fail(id, PROXIES_CHECK, detail, hint)
}

// ---------------------------------------------------------------------------
// Rendering.

/// One line per check (`✔` or `✘` and its name), what was found indented
/// below it, a `hint:` line for each way to fix a failure, and a summary.
pub fn render_text(results: &[CheckResult]) -> String {
    let mut out = String::new();
    for r in results {
        out.push_str(if r.passed { "✔ " } else { "✘ " });
        out.push_str(r.name);
        out.push('\n');
        for d in &r.detail {
            out.push_str("    ");
            out.push_str(d);
            out.push('\n');
        }
        for h in &r.hint {
            out.push_str("    hint: ");
            out.push_str(h);
            out.push('\n');
        }
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    out.push('\n');
    if failed == 0 {
        out.push_str(&format!("All {} checks passed.\n", results.len()));
    } else {
        out.push_str(&format!("{failed} of {} checks failed.\n", results.len()));
    }
    out
}

#[derive(Serialize)]
struct JsonReport<'a> {
    namespace: &'a str,
    passed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    checks: &'a [CheckResult],
}

/// `{"namespace", "passed", "checks": [{"id", "name", "passed", "detail", "hint"}]}`.
pub fn render_json(install_ns: &str, results: &[CheckResult]) -> String {
    json(&JsonReport {
        namespace: install_ns,
        passed: exit_status(results) == 0,
        error: None,
        checks: results,
    })
}

/// The JSON report when the cluster could not be reached: no checks, an `error`.
pub fn render_json_error(install_ns: &str, error: &str) -> String {
    json(&JsonReport {
        namespace: install_ns,
        passed: false,
        error: Some(error),
        checks: &[],
    })
}

fn json(report: &JsonReport) -> String {
    // Strings, booleans and lists only: serializing cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Time.

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use k8s_openapi::ByteString;
    use kube::core::ObjectList;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
        KeyPair,
    };
    use serde::de::DeserializeOwned;
    use time::OffsetDateTime;

    use super::*;

    const NS: &str = "divert";
    const CA_NAME: &str = "divert webhook CA (divert)";

    /// A fixture file: `testdata/check/<scenario>/<file>`, else the healthy
    /// install's.
    fn fixture<T: DeserializeOwned>(scenario: &str, file: &str) -> T {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/check");
        let path = dir.join(scenario).join(file);
        let path = if path.exists() {
            path
        } else {
            dir.join("healthy").join(file)
        };
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// A CA and a serving certificate, PEM.
    struct Tls {
        ca: String,
        cert: String,
    }

    fn days_from_now(days: i64) -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::days(days)
    }

    /// A CA called `ca_name` (valid from 400 days ago for `ca_days` from
    /// now) and a certificate for `dns` it signed, valid from `from` to
    /// `until` days from now.
    fn tls_with(ca_name: &str, ca_days: i64, dns: &[&str], from: i64, until: i64) -> Tls {
        let ca_key = KeyPair::generate().expect("a key");
        let mut ca = CertificateParams::default();
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.not_before = days_from_now(-400);
        ca.not_after = days_from_now(ca_days);
        let ca = CertifiedIssuer::self_signed(ca, ca_key).expect("a CA");
        let key = KeyPair::generate().expect("a key");
        let mut params =
            CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, dns.first().copied().unwrap_or("x"));
        params.not_before = days_from_now(from);
        params.not_after = days_from_now(until);
        let cert = params.signed_by(&key, &ca).expect("a certificate");
        Tls {
            ca: ca.pem(),
            cert: cert.pem(),
        }
    }

    fn tls(from: i64, until: i64) -> Tls {
        tls_with(
            CA_NAME,
            3650,
            &[
                "divert-controller.divert.svc",
                "divert-controller.divert.svc.cluster.local",
            ],
            from,
            until,
        )
    }

    fn healthy_tls() -> Tls {
        tls(-1, 365)
    }

    /// The cluster of `testdata/check/<scenario>`, with `tls` in the Secret
    /// and the webhooks' caBundle.
    fn view(scenario: &str, tls: &Tls) -> ClusterView {
        let mut secret: Secret = fixture(scenario, "secret.json");
        let data = secret.data.get_or_insert_default();
        data.insert("tls.crt".into(), ByteString(tls.cert.clone().into_bytes()));
        data.insert("ca.crt".into(), ByteString(tls.ca.clone().into_bytes()));
        let mut webhook: MutatingWebhookConfiguration =
            fixture(scenario, "mutatingwebhookconfiguration.json");
        for w in webhook.webhooks.iter_mut().flatten() {
            w.client_config.ca_bundle = Some(ByteString(tls.ca.clone().into_bytes()));
        }
        let namespaces: ObjectList<Namespace> = fixture(scenario, "namespaces.json");
        let pods: ObjectList<Pod> = fixture(scenario, "pods.json");
        ClusterView {
            deployment: Ok(Some(fixture(scenario, "deployment.json"))),
            secret: Ok(Some(secret)),
            webhook: Ok(Some(webhook)),
            namespaces: Ok(namespaces.items),
            pods: Ok(pods.items),
            proxies: Ok(fixture(scenario, "proxies.json")),
        }
    }

    fn run(view: &ClusterView) -> Vec<CheckResult> {
        evaluate(view, NS, SystemTime::now())
    }

    fn result<'a>(results: &'a [CheckResult], id: &str) -> &'a CheckResult {
        results
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no check {id} in {results:#?}"))
    }

    fn failed(results: &[CheckResult]) -> Vec<&'static str> {
        results.iter().filter(|r| !r.passed).map(|r| r.id).collect()
    }

    fn lines(r: &CheckResult) -> String {
        r.detail
            .iter()
            .chain(&r.hint)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[track_caller]
    fn assert_has(r: &CheckResult, needle: &str) {
        let text = lines(r);
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }

    #[test]
    fn days_left_round_to_the_nearest_day() {
        assert_eq!(days(DAY * 30 - 5), 30);
        assert_eq!(days(DAY - 5), 1);
    }

    #[test]
    fn a_healthy_install_passes_every_check() {
        let results = run(&view("healthy", &healthy_tls()));
        assert_eq!(failed(&results), Vec::<&str>::new(), "{results:#?}");
        assert_eq!(
            results.iter().map(|r| r.id).collect::<Vec<_>>(),
            [
                "controller",
                "webhook-certificate",
                "webhook-ca-bundle",
                "namespaces",
                "pods-injected",
                "proxies-connected"
            ]
        );
        assert_eq!(exit_status(&results), 0);
        assert!(results.iter().all(|r| r.hint.is_empty()));
        assert_eq!(
            result(&results, "controller").detail,
            ["Deployment divert/divert-controller: 1 of 1 replicas ready, all updated"]
        );
        assert_has(
            result(&results, "webhook-certificate"),
            "divert-controller.divert.svc, valid until ",
        );
        assert_has(result(&results, "webhook-certificate"), "(365 days left)");
        assert_has(
            result(&results, "webhook-ca-bundle"),
            "webhook inject-shared.divert.dev: trusts CA CN=divert webhook CA (divert), which signed the certificate",
        );
        let namespaces = result(&results, "namespaces");
        assert_eq!(
            namespaces.detail,
            [
                "alice → staging",
                "bob → staging",
                "shared namespaces with injection (divert.dev/inject=enabled): staging",
            ]
        );
        // Of the eight pods in alice, bob and staging, the Succeeded job, the
        // host-network agent and the opted-out pod do not count.
        assert_eq!(
            result(&results, "pods-injected").detail,
            ["5 pods in 3 opted-in namespaces, each with divert-proxy"]
        );
        // The Pending pod need not be connected yet.
        assert_eq!(
            result(&results, "proxies-connected").detail,
            ["4 running injected pods, each connected (4 proxies connected in all)"]
        );
    }

    #[test]
    fn a_certificate_made_by_divert_install_passes() {
        let made =
            crate::install::generate_tls(NS, "cluster.local", 365, OffsetDateTime::now_utc())
                .expect("install makes a certificate");
        let tls = Tls {
            ca: made.ca_pem,
            cert: made.cert_pem,
        };
        let results = run(&view("healthy", &tls));
        assert_eq!(failed(&results), Vec::<&str>::new(), "{results:#?}");
    }

    #[test]
    fn a_controller_with_no_ready_replica_fails() {
        let results = run(&view("controller-not-ready", &healthy_tls()));
        assert_eq!(failed(&results), ["controller"]);
        let r = result(&results, "controller");
        assert_eq!(
            r.detail,
            ["Deployment divert/divert-controller: 0 of 1 replicas ready"]
        );
        assert_has(r, "kubectl -n divert describe deployment divert-controller");
        assert_has(r, "divert install | kubectl apply -f -");
        assert_eq!(exit_status(&results), 1);
    }

    #[test]
    fn a_controller_rollout_in_progress_or_scaled_to_zero_fails() {
        let mut v = view("healthy", &healthy_tls());
        if let Ok(Some(d)) = &mut v.deployment {
            d.metadata.generation = Some(3);
        }
        let r = run(&v).remove(0);
        assert!(!r.passed);
        assert_has(&r, "a rollout is in progress: 1 of 1 replicas updated");
        assert_has(
            &r,
            "kubectl -n divert rollout status deployment/divert-controller",
        );

        if let Ok(Some(d)) = &mut v.deployment {
            d.metadata.generation = Some(2);
            if let Some(spec) = &mut d.spec {
                spec.replicas = Some(0);
            }
        }
        let r = run(&v).remove(0);
        assert!(!r.passed);
        assert_has(&r, "it is scaled to 0 replicas");
        assert_has(&r, "--replicas=1");
    }

    #[test]
    fn a_missing_or_unreadable_controller_fails_with_a_hint() {
        let mut v = view("healthy", &healthy_tls());
        v.deployment = Ok(None);
        let r = run(&v).remove(0);
        assert!(!r.passed);
        assert_has(&r, "Deployment divert/divert-controller not found");
        assert_has(&r, "install it: divert install | kubectl apply -f -");

        v.deployment = Err("403 Forbidden: deployments.apps is forbidden".into());
        let r = run(&v).remove(0);
        assert_eq!(
            r.detail,
            [
                "cannot read Deployment divert/divert-controller: 403 Forbidden: deployments.apps is forbidden"
            ]
        );
    }

    #[test]
    fn a_certificate_expiring_within_60_days_fails_with_its_date() {
        let results = run(&view("healthy", &tls(-300, 30)));
        assert_eq!(failed(&results), ["webhook-certificate"]);
        let r = result(&results, "webhook-certificate");
        assert_has(r, "Secret divert/divert-webhook-tls: expires on ");
        assert_has(r, "(30 days left, fewer than 60)");
        assert_has(r, "re-run `divert install | kubectl apply -f -`");
    }

    #[test]
    fn an_expired_certificate_fails() {
        let results = run(&view("healthy", &tls(-400, -1)));
        assert_eq!(failed(&results), ["webhook-certificate"]);
        let r = result(&results, "webhook-certificate");
        assert_has(r, "Secret divert/divert-webhook-tls: expired on ");
        assert_has(r, "(1 day ago)");
    }

    #[test]
    fn a_certificate_not_yet_valid_fails() {
        let r = run(&view("healthy", &tls(2, 400))).remove(1);
        assert!(!r.passed);
        assert_has(&r, "not valid before ");
    }

    #[test]
    fn a_certificate_for_another_name_fails() {
        let t = tls_with(CA_NAME, 3650, &["divert-controller.other.svc"], -1, 365);
        let r = run(&view("healthy", &t)).remove(1);
        assert!(!r.passed);
        assert_eq!(
            r.detail,
            [
                "Secret divert/divert-webhook-tls: it is not for divert-controller.divert.svc \
              (the name the API server dials), only for divert-controller.other.svc"
            ]
        );
    }

    #[test]
    fn a_missing_or_broken_secret_fails() {
        let mut v = view("healthy", &healthy_tls());
        v.secret = Ok(None);
        let results = run(&v);
        assert_eq!(
            failed(&results),
            ["webhook-certificate", "webhook-ca-bundle"]
        );
        assert_has(
            result(&results, "webhook-certificate"),
            "Secret divert/divert-webhook-tls not found",
        );
        assert_has(
            result(&results, "webhook-ca-bundle"),
            "cannot be checked: the serving certificate is unavailable",
        );

        let mut v = view("healthy", &healthy_tls());
        if let Ok(Some(s)) = &mut v.secret {
            s.data
                .get_or_insert_default()
                .insert("tls.crt".into(), ByteString(b"not a certificate".to_vec()));
        }
        let r = run(&v).remove(1);
        assert_has(&r, "tls.crt: no PEM CERTIFICATE in it");
    }

    #[test]
    fn a_ca_bundle_of_another_ca_fails() {
        let serving = healthy_tls();
        let other = tls_with("someone else's CA", 3650, &["x"], -1, 365);
        let mut v = view("healthy", &serving);
        v.webhook = view("healthy", &other).webhook;
        let results = run(&v);
        assert_eq!(failed(&results), ["webhook-ca-bundle"]);
        let r = result(&results, "webhook-ca-bundle");
        assert_has(
            r,
            "webhook inject-shared.divert.dev: caBundle holds CN=someone else's CA, \
             not the certificate's issuer CN=divert webhook CA (divert)",
        );
        assert_has(r, "webhook inject-divert.divert.dev: caBundle holds");
        assert_has(r, "rotate it: re-run `divert install | kubectl apply -f -`");
    }

    #[test]
    fn a_ca_bundle_with_the_same_name_but_another_key_fails() {
        // What a half-done rotation leaves: a new CA of the same name.
        let serving = healthy_tls();
        let rotated = healthy_tls();
        let mut v = view("healthy", &serving);
        v.webhook = view("healthy", &rotated).webhook;
        let r = run(&v).remove(2);
        assert!(!r.passed);
        assert_has(
            &r,
            "caBundle holds a CA named CN=divert webhook CA (divert) that did not sign the certificate",
        );
    }

    #[test]
    fn a_ca_bundle_holding_the_old_and_the_new_ca_passes() {
        let old = healthy_tls();
        let new = healthy_tls();
        let mut v = view("healthy", &new);
        if let Ok(Some(config)) = &mut v.webhook {
            for w in config.webhooks.iter_mut().flatten() {
                w.client_config.ca_bundle =
                    Some(ByteString(format!("{}{}", old.ca, new.ca).into_bytes()));
            }
        }
        assert_eq!(failed(&run(&v)), Vec::<&str>::new());
    }

    #[test]
    fn a_ca_expiring_soon_fails() {
        let t = tls_with(CA_NAME, 20, &["divert-controller.divert.svc"], -1, 365);
        let r = run(&view("healthy", &t)).remove(2);
        assert!(!r.passed);
        assert_has(&r, "caBundle CA CN=divert webhook CA (divert) expires on ");
        assert_has(&r, "(20 days left)");
    }

    #[test]
    fn a_missing_webhook_configuration_or_ca_bundle_or_a_wrong_service_fails() {
        let mut v = view("healthy", &healthy_tls());
        v.webhook = Ok(None);
        let r = run(&v).remove(2);
        assert!(!r.passed);
        assert_has(&r, "MutatingWebhookConfiguration divert-injector not found");
        assert_has(&r, "install it: divert install | kubectl apply -f -");

        let mut v = view("healthy", &healthy_tls());
        if let Ok(Some(config)) = &mut v.webhook
            && let Some(w) = config.webhooks.as_mut().and_then(|w| w.first_mut())
        {
            w.client_config.ca_bundle = None;
            if let Some(s) = &mut w.client_config.service {
                s.namespace = "default".into();
            }
        }
        let r = run(&v).remove(2);
        assert!(!r.passed);
        assert_has(&r, "webhook inject-shared.divert.dev: has no caBundle");
        assert_has(
            &r,
            "webhook inject-shared.divert.dev calls Service default/divert-controller, not divert/divert-controller",
        );
        assert_has(&r, "webhook inject-divert.divert.dev: trusts CA");
    }

    #[test]
    fn a_divert_namespace_whose_shared_namespace_is_missing_fails() {
        let results = run(&view("shared-namespace-missing", &healthy_tls()));
        // carol's pods are not listed by this fixture: nothing else fails.
        assert_eq!(failed(&results), ["namespaces"]);
        let r = result(&results, "namespaces");
        assert_has(
            r,
            "carol → staging-old: namespace staging-old does not exist",
        );
        assert_has(r, "alice → staging");
        assert_has(
            r,
            "create it: kubectl create namespace staging-old; or fix the label: kubectl label namespace carol divert.dev/shared-namespace=<shared namespace> --overwrite",
        );
    }

    #[test]
    fn a_divert_namespace_of_a_divert_namespace_or_a_bad_label_fails() {
        let mut v = view("healthy", &healthy_tls());
        let label = |ns: &mut Namespace, value: &str| {
            ns.metadata
                .labels
                .get_or_insert_default()
                .insert(SHARED_NAMESPACE_LABEL.into(), value.into());
        };
        if let Ok(all) = &mut v.namespaces {
            for ns in all.iter_mut() {
                match ns.metadata.name.as_deref() {
                    Some("bob") => label(ns, "alice"),
                    Some("default") => label(ns, "Not_A_Name"),
                    _ => {}
                }
            }
        }
        let r = run(&v).remove(3);
        assert!(!r.passed);
        assert_has(
            &r,
            "bob → alice: alice is itself a divert namespace (of staging)",
        );
        assert_has(
            &r,
            "kubectl label namespace bob divert.dev/shared-namespace=staging --overwrite",
        );
        assert_has(
            &r,
            "default: label divert.dev/shared-namespace=\"Not_A_Name\" is not a namespace name, so default is ignored",
        );
    }

    #[test]
    fn a_shared_namespace_without_injection_is_noted_and_no_divert_namespace_is_fine() {
        let mut v = view("healthy", &healthy_tls());
        if let Ok(all) = &mut v.namespaces {
            all.retain(|ns| ns.metadata.name.as_deref() != Some("bob"));
            for ns in all.iter_mut() {
                if let Some(labels) = &mut ns.metadata.labels {
                    labels.remove(INJECT_LABEL);
                }
            }
        }
        let r = run(&v).remove(3);
        assert!(r.passed, "{r:#?}");
        assert_has(
            &r,
            "alice → staging (note: staging is not labelled divert.dev/inject=enabled",
        );
        assert_has(
            &r,
            "shared namespaces with injection (divert.dev/inject=enabled): none",
        );

        if let Ok(all) = &mut v.namespaces {
            all.retain(|ns| ns.metadata.name.as_deref() != Some("alice"));
        }
        let r = run(&v).remove(3);
        assert!(r.passed, "{r:#?}");
        assert_has(&r, "no divert namespace yet");
    }

    #[test]
    fn pods_without_the_proxy_fail_with_how_to_restart_them() {
        let results = run(&view("pod-without-proxy", &healthy_tls()));
        assert_eq!(failed(&results), ["pods-injected"]);
        let r = result(&results, "pods-injected");
        assert_eq!(
            r.detail,
            [
                "bob/scratch has no divert-proxy container",
                "staging/catalog-58d9f7c6b4-w8r2t has no divert-proxy container",
            ]
        );
        assert_eq!(
            r.hint[1..],
            [
                "delete pod bob/scratch and create it again",
                "kubectl -n staging rollout restart deployment/catalog",
            ]
        );
        assert_has(r, "pods created before their namespace was opted in");
    }

    #[test]
    fn restart_hints_follow_the_owner() {
        let pods: ObjectList<Pod> = fixture("healthy", "pods.json");
        let hint = |name: &str| {
            let pod = pods
                .items
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no pod {name}"));
            restart_hint(pod)
        };
        assert_eq!(
            hint("rent-0"),
            "kubectl -n bob rollout restart statefulset/rent"
        );
        assert_eq!(
            hint("node-agent-7hx2v"),
            "kubectl -n staging rollout restart daemonset/node-agent"
        );
        assert_eq!(
            hint("api-5f6d7c8b9-k2m4p"),
            "kubectl -n staging rollout restart deployment/api"
        );
    }

    #[test]
    fn pods_opted_out_are_not_expected_to_run_the_proxy() {
        let mut v = view("pod-without-proxy", &healthy_tls());
        if let Ok(pods) = &mut v.pods {
            for pod in pods.iter_mut() {
                match pod.metadata.name.as_deref() {
                    Some("scratch") => {
                        pod.metadata
                            .labels
                            .get_or_insert_default()
                            .insert(INJECT_LABEL.into(), "disabled".into());
                    }
                    Some(n) if n.starts_with("catalog-") => {
                        pod.metadata.deletion_timestamp =
                            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                            ));
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(failed(&run(&v)), Vec::<&str>::new());
    }

    #[test]
    fn namespaces_opted_in_follow_the_injectors_selectors() {
        let mut namespaces: ObjectList<Namespace> = fixture("healthy", "namespaces.json");
        for ns in &mut namespaces.items {
            if ns.metadata.name.as_deref() == Some("bob") {
                ns.metadata
                    .labels
                    .get_or_insert_default()
                    .insert(INJECT_LABEL.into(), "disabled".into());
            }
            if ns.metadata.name.as_deref() == Some("divert") {
                ns.metadata
                    .labels
                    .get_or_insert_default()
                    .insert(INJECT_LABEL.into(), "enabled".into());
            }
        }
        assert_eq!(
            opted_in(&namespaces.items, NS),
            BTreeSet::from(["alice".to_owned(), "staging".to_owned()])
        );
    }

    #[test]
    fn a_proxy_missing_from_the_controller_fails_naming_the_pod() {
        let results = run(&view("proxy-missing", &healthy_tls()));
        assert_eq!(failed(&results), ["proxies-connected"]);
        let r = result(&results, "proxies-connected");
        assert_eq!(
            r.detail,
            ["alice/frontend-6b5c4d9f7-qwert: its proxy is not connected"]
        );
        assert_eq!(
            r.hint[1..],
            ["kubectl -n alice logs frontend-6b5c4d9f7-qwert -c divert-proxy"]
        );
    }

    #[test]
    fn unreadable_proxies_pods_or_namespaces_fail_those_checks() {
        let mut v = view("healthy", &healthy_tls());
        v.proxies = Err("503 ServiceUnavailable: no endpoints available for service \"divert-controller:admin\"".into());
        let results = run(&v);
        assert_eq!(failed(&results), ["proxies-connected"]);
        let r = result(&results, "proxies-connected");
        assert_has(
            r,
            "cannot list the proxies from the controller \
             (GET /api/v1/namespaces/divert/services/divert-controller:admin/proxy/proxies): 503",
        );
        assert_has(r, "port named admin");

        let mut v = view("healthy", &healthy_tls());
        v.pods = Err("cannot list the pods of namespace alice: 403 Forbidden".into());
        assert_eq!(failed(&run(&v)), ["pods-injected", "proxies-connected"]);

        let mut v = view("healthy", &healthy_tls());
        v.namespaces = Err("403 Forbidden".into());
        assert_eq!(
            failed(&run(&v)),
            ["namespaces", "pods-injected", "proxies-connected"]
        );
    }

    #[test]
    fn text_has_one_line_per_check_then_details_and_hints() {
        let results = vec![
            CheckResult::pass("a", "the first thing holds", vec!["found it".into()]),
            CheckResult::fail(
                "b",
                "the second thing holds",
                vec!["it does not".into(), "really".into()],
                vec!["fix it".into()],
            ),
        ];
        assert_eq!(
            render_text(&results),
            "✔ the first thing holds\n    found it\n\
             ✘ the second thing holds\n    it does not\n    really\n    hint: fix it\n\
             \n1 of 2 checks failed.\n"
        );
        assert_eq!(
            render_text(&results[..1]),
            "✔ the first thing holds\n    found it\n\nAll 1 checks passed.\n"
        );
    }

    #[test]
    fn json_has_every_check_with_its_fields() {
        let results = run(&view("proxy-missing", &healthy_tls()));
        let json: serde_json::Value =
            serde_json::from_str(&render_json(NS, &results)).expect("JSON");
        assert_eq!(json["namespace"], "divert");
        assert_eq!(json["passed"], false);
        assert!(json.get("error").is_none());
        let checks = json["checks"].as_array().expect("checks");
        assert_eq!(checks.len(), 6);
        assert_eq!(checks[0]["id"], "controller");
        assert_eq!(checks[0]["name"], "the controller is running and ready");
        assert_eq!(checks[0]["passed"], true);
        assert_eq!(checks[0]["hint"], serde_json::json!([]));
        assert_eq!(checks[5]["passed"], false);
        assert_eq!(
            checks[5]["detail"],
            serde_json::json!(["alice/frontend-6b5c4d9f7-qwert: its proxy is not connected"])
        );

        let healthy = run(&view("healthy", &healthy_tls()));
        let json: serde_json::Value =
            serde_json::from_str(&render_json(NS, &healthy)).expect("JSON");
        assert_eq!(json["passed"], true);

        let json: serde_json::Value =
            serde_json::from_str(&render_json_error(NS, "cannot reach")).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({"namespace": "divert", "passed": false, "error": "cannot reach", "checks": []})
        );
    }

    #[test]
    fn exit_status_is_0_only_when_every_check_passed() {
        let pass = CheckResult::pass("a", "a", vec![]);
        let fail = CheckResult::fail("b", "b", vec![], vec![]);
        assert_eq!(exit_status(&[]), 0);
        assert_eq!(exit_status(&[pass.clone(), pass.clone()]), 0);
        assert_eq!(exit_status(&[pass, fail.clone()]), 1);
        assert_eq!(exit_status(&[fail]), 1);
        assert_eq!(EXIT_UNREACHABLE, 2);
    }

    #[test]
    fn proxies_json_is_what_the_controller_serves() {
        let proxies: Vec<ConnectedProxy> = serde_json::from_str(
            r#"[{"pod":"api-1","namespace":"staging","version":"0.1.0",
                 "remoteAddr":"10.0.0.2:5000","revision":7,"connectedSeconds":12}]"#,
        )
        .expect("parses");
        assert_eq!(
            proxies,
            [ConnectedProxy {
                pod: "api-1".into(),
                namespace: "staging".into(),
                version: "0.1.0".into(),
                remote_addr: "10.0.0.2:5000".into(),
                revision: 7,
                connected_seconds: 12,
            }]
        );
    }

    #[test]
    fn api_errors_read_as_one_line() {
        let status =
            kube::core::Status::failure("pods is forbidden: User \"dev\" cannot list", "Forbidden")
                .with_code(403);
        assert_eq!(
            describe(&kube::Error::Api(status.boxed())),
            "403 Forbidden: pods is forbidden: User \"dev\" cannot list"
        );
    }
}
