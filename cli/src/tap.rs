//! `divert tap`: watch routing decisions as they happen.
//!
//! From one proxy's admin server (`--proxy`, its port 4191, which answers
//! only its pod's loopback: `kubectl port-forward`), or from the controller
//! (`--controller`), which merges the taps of the proxies of every namespace
//! you may tap (or of `--proxy-namespace`). The controller is reached over
//! TLS, verified with the CA `divert install` made (the ConfigMap
//! `divert-ca`), and given your Kubernetes credentials ([`crate::credentials`]):
//! it shows a namespace only if you may read its pods' logs. One line per
//! request, or one JSON object per line with `--output json`.
//!
//! Exit status: 0 when the stream ended (Ctrl-C, `--max-events`, the server
//! closed it), 1 when the server could not be reached or refused, 64 for bad
//! flags.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use divert_core::error::chain;
use divert_core::names::{object, parse_dns_label, port};
use divert_proto::tap::v1::tap_client::TapClient;
use divert_proto::tap::v1::{TapEvent, TapRequest};
use serde::Serialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Where a proxy's admin server listens by default.
fn default_proxy() -> String {
    format!("127.0.0.1:{}", port::PROXY_ADMIN)
}

/// The controller's Service name, which its certificate names.
fn controller_name() -> String {
    format!("{}.{}.svc", object::CONTROLLER, object::NAMESPACE)
}

#[derive(Args, Debug)]
pub struct TapArgs {
    #[command(flatten)]
    pub source: TapSource,

    /// Only requests routed to this namespace.
    #[arg(long, value_name = "NS", value_parser = parse_dns_label)]
    namespace: Option<String>,

    /// Only requests for this service (dialed or routed to).
    #[arg(long, value_name = "NAME", value_parser = parse_dns_label)]
    service: Option<String>,

    /// Only requests carrying this divert key.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,

    /// The fraction of matching requests to show, in (0, 1].
    #[arg(long, value_name = "RATIO", default_value_t = 1.0, value_parser = parse_sample)]
    sample: f64,

    /// Stop after this many events.
    #[arg(long, short = 'n', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_events: Option<u64>,

    /// `text` for people, `json` for machines (one object per line).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Where the tap's events come from: one proxy, or the controller's relay
/// (for `divert tap` and `divert trace`).
#[derive(Args, Debug)]
pub struct TapSource {
    /// A proxy's admin address (host:port or http://host:port). For a pod's
    /// proxy, run `kubectl port-forward pod/NAME 4191` first.
    #[arg(long, value_name = "ADDR", default_value_t = default_proxy(), value_parser = parse_proxy)]
    pub proxy: String,

    /// The controller's gRPC URL, to watch many proxies at once
    /// (`https://127.0.0.1:8086` after `kubectl -n divert port-forward
    /// svc/divert-controller 8086`, or `https://divert-controller.divert.svc:8086`
    /// in the cluster).
    #[arg(long, value_name = "URL", conflicts_with = "proxy", value_parser = parse_controller)]
    pub controller: Option<String>,

    /// With --controller: the name its certificate is checked for.
    #[arg(long, value_name = "NAME", requires = "controller", default_value_t = controller_name())]
    controller_name: String,

    /// With --controller: the CA (PEM file) its certificate must chain to.
    /// Default: the ConfigMap divert-ca in the namespace divert.
    #[arg(long, value_name = "FILE", requires = "controller")]
    controller_ca: Option<PathBuf>,

    /// With --controller: a file holding the bearer token to present instead
    /// of the kubeconfig's credentials (`kubectl create token …`).
    #[arg(long, value_name = "FILE", requires = "controller")]
    token_file: Option<PathBuf>,

    /// The kubeconfig whose credentials the controller gets (and which
    /// reads its CA).
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    kubeconfig: Option<PathBuf>,

    /// With --controller: watch the proxies of the pods in this namespace
    /// (default: every proxy the controller can reach).
    #[arg(long, value_name = "NS", requires = "controller", value_parser = parse_dns_label)]
    pub proxy_namespace: Option<String>,

    /// How long to wait for the connection (250ms, 10s, 1m).
    #[arg(long, default_value = "5s", value_parser = divert_core::duration::parse, value_name = "DURATION")]
    connect_timeout: Duration,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// Where the events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A proxy's admin server (its URL).
    Proxy(String),
    /// The controller's gRPC server (its URL).
    Controller(String),
}

impl Source {
    fn url(&self) -> &str {
        match self {
            Source::Proxy(url) | Source::Controller(url) => url,
        }
    }

    /// What to check when it cannot be reached.
    fn hint(&self) -> &'static str {
        match self {
            Source::Proxy(_) => {
                "check that a proxy runs there with --admin-addr on that address (for a \
                 pod: kubectl port-forward pod/NAME 4191, then --proxy 127.0.0.1:4191)"
            }
            Source::Controller(_) => {
                "check the URL and that the controller is reachable from here (kubectl -n \
                 divert port-forward svc/divert-controller 8086, then --controller \
                 https://127.0.0.1:8086)"
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Proxy(url) => write!(f, "the proxy's admin server at {url}"),
            Source::Controller(url) => write!(f, "the controller at {url}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot connect to {server}: {reason}; {}", server.hint())]
    Connect { server: Source, reason: String },
    /// The controller found no proxy to watch; its message says what to check.
    #[error("{0}")]
    NotFound(String),
    #[error("{0} does not serve tap: it runs an older divert; upgrade it")]
    Unimplemented(Source),
    #[error("{server} answered {:?}: {}", .status.code(), .status.message())]
    Refused {
        server: Source,
        status: tonic::Status,
    },
    #[error("the stream from {server} broke: {}", .status.message())]
    Stream {
        server: Source,
        status: tonic::Status,
    },
    #[error(transparent)]
    Credentials(#[from] crate::credentials::CredentialsError),
    #[error("cannot encode an event as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

pub fn main(args: TapArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("divert tap: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(&args, &mut stdout) => result,
            // A failed registration disables this branch instead of ending.
            Ok(()) = tokio::signal::ctrl_c() => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `divert tap | head`: the reader has seen enough.
        Err(TapError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("divert tap: {e}");
            ExitCode::FAILURE
        }
    }
}

impl TapSource {
    fn source(&self) -> Source {
        match &self.controller {
            Some(url) => Source::Controller(url.clone()),
            None => Source::Proxy(self.proxy.clone()),
        }
    }

    /// For the controller at `url`: the TLS to reach it with (its CA, and
    /// a client certificate if that is the credential), and the token to
    /// present, if that is.
    async fn security(
        &self,
        url: &str,
    ) -> Result<(Option<ClientTlsConfig>, Option<String>), TapError> {
        use crate::credentials::{self, Credentials};
        if !url.starts_with("https://") {
            // Plain HTTP/2 (a controller on this host): no credential leaves it.
            return Ok((None, None));
        }
        let credentials = match &self.token_file {
            Some(path) => credentials::token_file(path)?,
            None => credentials::from_kubeconfig(self.kubeconfig.as_deref()).await?,
        };
        let ca = match &self.controller_ca {
            Some(path) => std::fs::read_to_string(path).map_err(|source| {
                credentials::CredentialsError::File {
                    path: path.clone(),
                    source,
                }
            })?,
            None => {
                let client = divert_controller::kubernetes::client(self.kubeconfig.clone())
                    .await
                    .map_err(|e| credentials::CredentialsError::Ca(e.to_string()))?;
                credentials::controller_ca(client).await?
            }
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(self.controller_name.clone());
        let token = match credentials {
            Credentials::Token(t) => Some(t),
            Credentials::Certificate { cert, key } => {
                tls = tls.identity(Identity::from_pem(cert, key));
                None
            }
        };
        Ok((Some(tls), token))
    }

    /// Starts watching with `request` (its `proxy_namespace` is this
    /// source's): the server watched, and its stream of events.
    pub async fn watch(
        &self,
        request: TapRequest,
    ) -> Result<(Source, tonic::Streaming<TapEvent>), TapError> {
        let source = self.source();
        let (tls, token) = match &source {
            Source::Controller(url) => self.security(url).await?,
            Source::Proxy(_) => (None, None),
        };
        let mut client = connect(&source, self.connect_timeout, tls).await?;
        let mut request = tonic::Request::new(TapRequest {
            proxy_namespace: self.proxy_namespace.clone().unwrap_or_default(),
            ..request
        });
        if let Some(token) = token
            && let Ok(v) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", v);
        }
        match client.watch(request).await {
            Ok(response) => Ok((source, response.into_inner())),
            Err(status) => Err(refused(source, status)),
        }
    }
}

impl TapArgs {
    fn request(&self) -> TapRequest {
        TapRequest {
            namespace: self.namespace.clone().unwrap_or_default(),
            service: self.service.clone().unwrap_or_default(),
            key: self.key.clone().unwrap_or_default(),
            sample_ratio: self.sample,
            max_events: self.max_events.unwrap_or(0),
            proxy_namespace: String::new(),
            since_micros: 0,
        }
    }
}

/// Watches until the stream ends, writing one line per event to `out`.
async fn run(args: &TapArgs, out: &mut impl Write) -> Result<(), TapError> {
    let (source, mut stream) = args.source.watch(args.request()).await?;
    let mut printed = 0u64;
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => {
                if args.max_events.is_none_or(|n| printed < n) {
                    eprintln!("divert tap: {source} ended the stream");
                }
                return Ok(());
            }
            Err(status) => {
                return Err(TapError::Stream {
                    server: source,
                    status,
                });
            }
        };
        let line = match args.output {
            Output::Text => format_text(&event),
            Output::Json => format_json(&event)?,
        };
        // Stdout is line-buffered: each event shows as it comes.
        writeln!(out, "{line}")?;
        printed += 1;
        if args.max_events.is_some_and(|n| printed >= n) {
            return Ok(());
        }
    }
}

async fn connect(
    source: &Source,
    timeout: Duration,
    tls: Option<ClientTlsConfig>,
) -> Result<TapClient<Channel>, TapError> {
    let failed = |reason: String| TapError::Connect {
        server: source.clone(),
        reason,
    };
    let mut endpoint =
        Endpoint::from_shared(source.url().to_owned()).map_err(|e| failed(chain(&e)))?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| failed(chain(&e)))?;
    }
    let endpoint = endpoint
        .connect_timeout(timeout)
        // Notice a server that vanished while nothing was happening.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => return Err(failed(chain(&e))),
        Err(_) => return Err(failed(format!("no connection within {timeout:?}"))),
    };
    Ok(TapClient::new(channel))
}

fn refused(source: Source, status: tonic::Status) -> TapError {
    match status.code() {
        tonic::Code::NotFound => TapError::NotFound(status.message().to_owned()),
        tonic::Code::Unimplemented => TapError::Unimplemented(source),
        // The connection was made but broke before the answer.
        tonic::Code::Unavailable if status.message().is_empty() => TapError::Connect {
            reason: std::error::Error::source(&status)
                .map(chain)
                .unwrap_or_else(|| "unavailable".to_owned()),
            server: source,
        },
        _ => TapError::Refused {
            server: source,
            status,
        },
    }
}

/// Why a `--proxy` or `--controller` address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{0:?} is not host:port or an http:// URL")]
    NotAnAddress(String),
    #[error("{0:?}: a proxy's tap is plain HTTP/2 on its pod's loopback; use http://")]
    Https(String),
    #[error("{0:?} has a path; give only the host and port (and http://)")]
    HasPath(String),
    #[error("{0:?}: port 0 cannot be dialed")]
    PortZero(String),
}

/// Why a `--sample` ratio was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    #[error("{0:?} is not a number; give a ratio such as 0.1")]
    NotANumber(String),
    #[error("{0} is not in (0, 1]; 0.1 shows one request in ten")]
    OutOfRange(String),
}

fn parse_proxy(s: &str) -> Result<String, AddressError> {
    parse_url(s, port::PROXY_ADMIN, false)
}

fn parse_controller(s: &str) -> Result<String, AddressError> {
    parse_url(s, port::CONTROLLER_GRPC, true)
}

/// `host:port` or `http[s]://host[:port]` → `scheme://host:port`; without a
/// scheme, https when `tls` (the controller), http otherwise (a proxy's
/// tap, plain HTTP/2 on its pod's loopback).
fn parse_url(s: &str, default_port: u16, tls: bool) -> Result<String, AddressError> {
    let s = s.trim();
    let url = if s.contains("://") {
        s.to_owned()
    } else if tls {
        format!("https://{s}")
    } else {
        format!("http://{s}")
    };
    let bad = || AddressError::NotAnAddress(s.to_owned());
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    let scheme = match uri.scheme_str() {
        Some("http") => "http",
        Some("https") if tls => "https",
        Some("https") => return Err(AddressError::Https(s.to_owned())),
        _ => return Err(bad()),
    };
    let authority = uri.authority().ok_or_else(bad)?;
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(bad());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(AddressError::HasPath(s.to_owned()));
    }
    let port = match authority.port() {
        None => default_port,
        Some(p) => match p.as_u16() {
            0 => return Err(AddressError::PortZero(s.to_owned())),
            p => p,
        },
    };
    Ok(format!("{scheme}://{}:{port}", authority.host()))
}

fn parse_sample(s: &str) -> Result<f64, SampleError> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| SampleError::NotANumber(s.to_owned()))?;
    // NaN fails both comparisons.
    if r > 0.0 && r <= 1.0 {
        Ok(r)
    } else {
        Err(SampleError::OutOfRange(s.to_owned()))
    }
}

/// One event as a line for people.
pub fn format_text(e: &TapEvent) -> String {
    let mut line = crate::utc::rfc3339_millis(e.unix_micros);
    line.push(' ');
    line.push_str(
        &match (e.proxy_namespace.is_empty(), e.proxy_pod.is_empty()) {
            (false, false) => format!("{}/{}", field(&e.proxy_namespace), field(&e.proxy_pod)),
            (true, false) => field(&e.proxy_pod),
            (false, true) => field(&e.proxy_namespace),
            (true, true) => "-".to_owned(),
        },
    );
    line.push(' ');
    line.push_str(&or_dash(&e.protocol));
    // Outbound is the usual case and goes unsaid; a request that came into
    // the proxy's pod (routed at the receiving side) says so.
    if e.direction == "inbound" {
        line.push_str(" inbound");
    }
    let http = !e.method.is_empty() || !e.path.is_empty();
    if !e.method.is_empty() {
        line.push(' ');
        line.push_str(&field(&e.method));
    }
    let dialed = if http && !e.authority.is_empty() {
        &e.authority
    } else {
        &e.original_dst
    };
    if !dialed.is_empty() || http {
        line.push(' ');
        line.push_str(&field(&format!(
            "{dialed}{}",
            if http { &e.path } else { "" }
        )));
    }
    if !e.key.is_empty() {
        line.push_str(&format!(" key={}", field(&e.key)));
    }
    if !e.baggage_rejected.is_empty() {
        line.push_str(&format!(" baggage_rejected={}", field(&e.baggage_rejected)));
    }
    if e.key_dropped {
        // The call went out without the key of the requests the app served.
        line.push_str(" KEY DROPPED");
        let mut why = Vec::new();
        if !e.dropped_key.is_empty() {
            why.push(format!("key={}", field(&e.dropped_key)));
        }
        if !e.dropped_during.is_empty() {
            why.push(format!("during {}", field(&e.dropped_during)));
        }
        if !why.is_empty() {
            line.push_str(&format!(" ({})", why.join(" ")));
        }
    }
    if !e.target.is_empty() {
        line.push_str(&format!(" -> {}", field(&e.target)));
    }
    if !e.endpoint.is_empty() {
        line.push_str(&format!(" ({})", field(&e.endpoint)));
    }
    line.push(' ');
    line.push_str(&or_dash(&e.decision));
    if !e.reason.is_empty() && e.reason != e.decision {
        line.push_str(&format!(" ({})", field(&e.reason)));
    }
    if e.status != 0 {
        line.push_str(&format!(" {}", e.status));
    }
    line.push(' ');
    line.push_str(&format_latency(e.latency_micros));
    if !e.error.is_empty() {
        line.push_str(&format!(" error={:?}", e.error));
    }
    if e.dropped_before > 0 {
        line.push_str(&format!(" [dropped {}]", e.dropped_before));
    }
    line
}

/// A value from the wire, as is when it is one plain word; quoted and
/// escaped otherwise, so that a key or path cannot split the line or drive
/// the terminal.
fn field(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '"')
    {
        s.to_owned()
    } else {
        format!("{s:?}")
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        field(s)
    }
}

/// `850µs`, `1.3ms`, `2.05s`.
pub fn format_latency(micros: u64) -> String {
    if micros < 1_000 {
        format!("{micros}µs")
    } else if micros < 1_000_000 {
        format!("{:.1}ms", micros as f64 / 1e3)
    } else {
        format!("{:.2}s", micros as f64 / 1e6)
    }
}

/// An event's fields in camelCase, for `--output json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonEvent<'a> {
    unix_micros: u64,
    proxy_pod: &'a str,
    proxy_namespace: &'a str,
    direction: &'a str,
    protocol: &'a str,
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    key: &'a str,
    original_dst: &'a str,
    target: &'a str,
    target_namespace: &'a str,
    service: &'a str,
    endpoint: &'a str,
    decision: &'a str,
    reason: &'a str,
    status: u32,
    latency_micros: u64,
    error: &'a str,
    dropped_before: u64,
    baggage_rejected: &'a str,
    key_dropped: bool,
    dropped_key: &'a str,
    dropped_during: &'a str,
    span_id: u64,
    parent_span_id: u64,
    trace_id: &'a str,
    trace_parent_id: &'a str,
}

/// One event as one line of JSON.
pub fn format_json(e: &TapEvent) -> Result<String, serde_json::Error> {
    serde_json::to_string(&JsonEvent {
        unix_micros: e.unix_micros,
        proxy_pod: &e.proxy_pod,
        proxy_namespace: &e.proxy_namespace,
        direction: &e.direction,
        protocol: &e.protocol,
        method: &e.method,
        authority: &e.authority,
        path: &e.path,
        key: &e.key,
        original_dst: &e.original_dst,
        target: &e.target,
        target_namespace: &e.target_namespace,
        service: &e.service,
        endpoint: &e.endpoint,
        decision: &e.decision,
        reason: &e.reason,
        status: e.status,
        latency_micros: e.latency_micros,
        error: &e.error,
        dropped_before: e.dropped_before,
        baggage_rejected: &e.baggage_rejected,
        key_dropped: e.key_dropped,
        dropped_key: &e.dropped_key,
        dropped_during: &e.dropped_during,
        span_id: e.span_id,
        parent_span_id: e.parent_span_id,
        trace_id: &e.trace_id,
        trace_parent_id: &e.trace_parent_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: TapArgs,
    }

    fn parse(args: &[&str]) -> Result<TapArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("tap").chain(args.iter().copied())).map(|c| c.args)
    }

    fn diverted() -> TapEvent {
        TapEvent {
            unix_micros: 1_795_576_365_123_456,
            proxy_pod: "frontend-7c9".into(),
            proxy_namespace: "staging".into(),
            protocol: "http1".into(),
            method: "GET".into(),
            authority: "movies.staging:8080".into(),
            path: "/api/movies".into(),
            key: "alice".into(),
            original_dst: "10.96.0.10:8080".into(),
            target: "movies.alice:8080".into(),
            target_namespace: "alice".into(),
            service: "movies".into(),
            endpoint: "10.244.0.7:8080".into(),
            decision: "diverted".into(),
            reason: "diverted".into(),
            status: 200,
            latency_micros: 1_310,
            ..TapEvent::default()
        }
    }

    #[test]
    fn tap_text_of_a_diverted_request() {
        assert_eq!(
            format_text(&diverted()),
            "2026-11-25T03:12:45.123Z staging/frontend-7c9 http1 GET \
             movies.staging:8080/api/movies key=alice -> movies.alice:8080 \
             (10.244.0.7:8080) diverted 200 1.3ms"
        );
    }

    #[test]
    fn tap_text_says_when_a_request_came_into_the_pod() {
        let e = TapEvent {
            direction: "inbound".into(),
            original_dst: "10.244.0.5:8080".into(),
            ..diverted()
        };
        assert_eq!(
            format_text(&e),
            "2026-11-25T03:12:45.123Z staging/frontend-7c9 http1 inbound GET \
             movies.staging:8080/api/movies key=alice -> movies.alice:8080 \
             (10.244.0.7:8080) diverted 200 1.3ms"
        );
        let v: serde_json::Value = serde_json::from_str(&format_json(&e).unwrap()).unwrap();
        assert_eq!(v["direction"], "inbound");
    }

    #[test]
    fn tap_text_shows_the_reason_errors_and_drops() {
        let e = TapEvent {
            key: "carol".into(),
            target: "movies.staging:8080".into(),
            target_namespace: "staging".into(),
            endpoint: String::new(),
            decision: "shared".into(),
            reason: "key_not_opted_in".into(),
            status: 503,
            latency_micros: 250,
            error: "no endpoints for \"movies\"".into(),
            dropped_before: 12,
            ..diverted()
        };
        assert_eq!(
            format_text(&e),
            "2026-11-25T03:12:45.123Z staging/frontend-7c9 http1 GET \
             movies.staging:8080/api/movies key=carol -> movies.staging:8080 shared \
             (key_not_opted_in) 503 250µs error=\"no endpoints for \\\"movies\\\"\" \
             [dropped 12]"
        );
    }

    #[test]
    fn tap_text_of_an_opaque_connection_outside_a_pod() {
        let e = TapEvent {
            unix_micros: 0,
            protocol: "tls".into(),
            original_dst: "10.96.0.20:443".into(),
            target: "10.96.0.20:443".into(),
            endpoint: "10.96.0.20:443".into(),
            decision: "passthrough".into(),
            reason: "unknown_destination".into(),
            latency_micros: 2_050_000,
            ..TapEvent::default()
        };
        assert_eq!(
            format_text(&e),
            "1970-01-01T00:00:00.000Z - tls 10.96.0.20:443 -> 10.96.0.20:443 \
             (10.96.0.20:443) passthrough (unknown_destination) 2.05s"
        );
    }

    #[test]
    fn tap_text_quotes_odd_values() {
        let e = TapEvent {
            key: "a b\x1b[31m".into(),
            baggage_rejected: "malformed".into(),
            ..diverted()
        };
        let line = format_text(&e);
        assert!(line.contains(r#" key="a b\u{1b}[31m" "#), "{line}");
        assert!(line.contains(" baggage_rejected=malformed "), "{line}");
        assert!(!line.contains('\x1b'));
    }

    #[test]
    fn tap_text_says_where_a_key_was_dropped() {
        let e = TapEvent {
            key: String::new(),
            key_dropped: true,
            dropped_key: "alice".into(),
            dropped_during: "GET api:8080/movies".into(),
            ..diverted()
        };
        let line = format_text(&e);
        assert!(
            line.contains(r#" KEY DROPPED (key=alice during "GET api:8080/movies") "#),
            "{line}"
        );
        let bare = TapEvent {
            key_dropped: true,
            ..diverted()
        };
        let line = format_text(&bare);
        assert!(line.contains(" KEY DROPPED -> "), "{line}");
    }

    #[test]
    fn tap_latencies() {
        assert_eq!(format_latency(0), "0µs");
        assert_eq!(format_latency(999), "999µs");
        assert_eq!(format_latency(1_000), "1.0ms");
        assert_eq!(format_latency(1_340), "1.3ms");
        assert_eq!(format_latency(1_500_000), "1.50s");
    }

    #[test]
    fn tap_json_has_every_field_in_camel_case() {
        let e = TapEvent {
            dropped_before: 3,
            baggage_rejected: "too_long".into(),
            ..diverted()
        };
        let line = format_json(&e).unwrap();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 28);
        assert_eq!(v["unixMicros"], 1_795_576_365_123_456u64);
        assert_eq!(v["proxyPod"], "frontend-7c9");
        assert_eq!(v["proxyNamespace"], "staging");
        assert_eq!(v["originalDst"], "10.96.0.10:8080");
        assert_eq!(v["targetNamespace"], "alice");
        assert_eq!(v["latencyMicros"], 1_310);
        assert_eq!(v["droppedBefore"], 3);
        assert_eq!(v["baggageRejected"], "too_long");
        assert_eq!(v["status"], 200);
        assert_eq!(v["error"], "");
    }

    #[test]
    fn tap_sample_must_be_a_ratio() {
        for bad in ["0", "-0.5", "1.01", "NaN", "inf", "half"] {
            assert!(parse(&["--sample", bad]).is_err(), "{bad}");
        }
        assert_eq!(parse(&["--sample", "0.25"]).unwrap().sample, 0.25);
        assert_eq!(parse(&["--sample", "1"]).unwrap().sample, 1.0);
        assert_eq!(parse(&[]).unwrap().sample, 1.0);
    }

    #[test]
    fn tap_flags() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            a.source.source(),
            Source::Proxy("http://127.0.0.1:4191".into())
        );
        assert_eq!(
            a.request(),
            TapRequest {
                sample_ratio: 1.0,
                ..TapRequest::default()
            }
        );

        let a = parse(&[
            "--controller",
            "http://divert-controller.divert",
            "--proxy-namespace",
            "alice",
            "--namespace",
            "staging",
            "--service",
            "movies",
            "--key",
            "alice",
            "-n",
            "10",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(
            a.source.source(),
            Source::Controller("http://divert-controller.divert:8086".into())
        );
        assert_eq!(a.output, Output::Json);
        assert_eq!(
            a.request(),
            TapRequest {
                namespace: "staging".into(),
                service: "movies".into(),
                key: "alice".into(),
                sample_ratio: 1.0,
                max_events: 10,
                // The source sets it as it watches.
                proxy_namespace: String::new(),
                since_micros: 0,
            }
        );
        assert_eq!(a.source.proxy_namespace.as_deref(), Some("alice"));

        // Usage errors.
        for bad in [
            &["--proxy", "10.0.0.1:4191", "--controller", "http://c:8086"][..],
            &["--proxy-namespace", "alice"],
            &["--namespace", "Alice"],
            &["-n", "0"],
            &["--output", "yaml"],
            &["--proxy", "https://10.0.0.1:4191"],
            &["--proxy", "10.0.0.1:4191/tap"],
            &["--proxy", "10.0.0.1:0"],
            &["--proxy", "ftp://10.0.0.1"],
            &["--proxy", ""],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tap_addresses() {
        assert_eq!(
            parse_proxy("127.0.0.1:4191").unwrap(),
            "http://127.0.0.1:4191"
        );
        assert_eq!(parse_proxy("localhost").unwrap(), "http://localhost:4191");
        assert_eq!(parse_proxy("[::1]:9000").unwrap(), "http://[::1]:9000");
        assert_eq!(
            parse_proxy("http://10.0.0.1:4191/").unwrap(),
            "http://10.0.0.1:4191"
        );
        assert_eq!(
            parse_controller("http://divert-controller.divert:8086").unwrap(),
            "http://divert-controller.divert:8086"
        );
        // The controller speaks TLS unless told otherwise; a proxy's tap never.
        assert_eq!(
            parse_controller("127.0.0.1").unwrap(),
            "https://127.0.0.1:8086"
        );
        assert_eq!(
            parse_controller("https://divert-controller.divert.svc").unwrap(),
            "https://divert-controller.divert.svc:8086"
        );
        assert!(matches!(
            parse_proxy("https://10.0.0.1"),
            Err(AddressError::Https(_))
        ));
    }

    #[test]
    fn tap_not_found_prints_the_controllers_message() {
        let source = Source::Controller("http://c:8086".into());
        let e = refused(
            source.clone(),
            tonic::Status::not_found("no proxy in \"x\""),
        );
        assert_eq!(e.to_string(), "no proxy in \"x\"");
        let e = refused(source, tonic::Status::unimplemented(""));
        assert!(e.to_string().contains("older divert"), "{e}");
    }

    /// A Tap server answering `answer` (events, or an error) and recording
    /// the request.
    #[derive(Clone)]
    struct FakeTap {
        answer: Result<Vec<TapEvent>, tonic::Status>,
        got: std::sync::Arc<std::sync::Mutex<Vec<TapRequest>>>,
    }

    type Events =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<TapEvent, tonic::Status>> + Send>>;

    #[tonic::async_trait]
    impl divert_proto::tap::v1::tap_server::Tap for FakeTap {
        type WatchStream = Events;

        async fn watch(
            &self,
            request: tonic::Request<TapRequest>,
        ) -> Result<tonic::Response<Events>, tonic::Status> {
            self.got.lock().unwrap().push(request.into_inner());
            let events = self.answer.clone()?;
            let stream = tokio_stream::iter(events.into_iter().map(Ok));
            Ok(tonic::Response::new(Box::pin(stream)))
        }

        async fn key_drops(
            &self,
            _request: tonic::Request<divert_proto::tap::v1::KeyDropsRequest>,
        ) -> Result<tonic::Response<divert_proto::tap::v1::KeyDropsResponse>, tonic::Status>
        {
            Err(tonic::Status::unimplemented("not in this test"))
        }
    }

    async fn serve(tap: FakeTap) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(divert_proto::tap::v1::tap_server::TapServer::new(tap))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr.to_string()
    }

    #[tokio::test]
    async fn tap_prints_each_event_until_max_events() {
        let tap = FakeTap {
            answer: Ok(vec![diverted(), diverted(), diverted()]),
            got: Default::default(),
        };
        let addr = serve(tap.clone()).await;
        let args = parse(&["--proxy", &addr, "--key", "alice", "-n", "2", "-o", "json"]).unwrap();
        let mut out = Vec::new();
        run(&args, &mut out).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
        for line in out.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["target"], "movies.alice:8080");
        }
        let got = tap.got.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].key.as_str(), got[0].max_events), ("alice", 2));
    }

    #[tokio::test]
    async fn tap_not_found_from_the_controller_is_an_error() {
        let tap = FakeTap {
            answer: Err(tonic::Status::not_found(
                "no connected proxy in namespace \"x\"",
            )),
            got: Default::default(),
        };
        let addr = serve(tap).await;
        let url = format!("http://{addr}");
        let args = parse(&["--controller", &url, "--proxy-namespace", "x"]).unwrap();
        let mut out = Vec::new();
        let e = run(&args, &mut out).await.unwrap_err();
        assert!(matches!(e, TapError::NotFound(_)), "{e:?}");
        assert_eq!(e.to_string(), "no connected proxy in namespace \"x\"");
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn tap_cannot_connect_names_the_address() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let url = format!("http://127.0.0.1:{port}");
        let Err(e) = connect(&Source::Proxy(url.clone()), Duration::from_secs(2), None).await
        else {
            panic!("connected to a closed port");
        };
        let message = e.to_string();
        assert!(message.contains(&url), "{message}");
        assert!(message.contains("--admin-addr"), "{message}");
    }
}
