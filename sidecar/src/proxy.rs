//! `divert-proxy proxy`: runs the data plane, started by
//! [`divert_proxy::run`] like every proxy process.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use divert_core::names::{self, port};
use divert_core::process::{EXIT_USAGE, Signals, runtime};
use divert_proxy::detect::{DEFAULT_OPAQUE_PORTS_FLAG, DetectSettings};
use divert_proxy::discovery::DiscoverySettings;
use divert_proxy::limits::Limits;
use divert_proxy::run::{self, Settings};
use divert_proxy::upstream::ConnectSettings;
use divert_proxy::{Config, Source};

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// The registry file (YAML) that describes namespaces and services. It is
    /// watched: a valid edit replaces the routing table at once, an invalid
    /// one is logged and ignored.
    #[arg(
        long,
        env = "DIVERT_REGISTRY",
        value_name = "FILE",
        required_unless_present = "discovery",
        conflicts_with = "discovery"
    )]
    registry: Option<PathBuf>,

    /// The controller to stream the routing table from, instead of a registry
    /// file (`https://divert-controller.divert.svc:8086`). When it is
    /// unreachable the proxy keeps routing with the last table and reconnects.
    #[arg(long, env = "DIVERT_DISCOVERY", value_name = "URL")]
    discovery: Option<String>,

    /// The CA that signed the controller's certificate: PEM text, or a file
    /// holding it. Required for an https:// --discovery; only this CA is
    /// trusted. Injection sets it.
    #[arg(long, env = names::env::CONTROLLER_CA, value_name = "PEM|FILE", requires = "discovery")]
    controller_ca: Option<String>,

    /// The file holding this pod's token for the controller (its service
    /// account token for the `divert` audience, renewed by the kubelet), sent
    /// at each connection. Injection sets it.
    #[arg(long, env = names::env::CONTROLLER_TOKEN, value_name = "FILE", requires = "discovery")]
    controller_token: Option<PathBuf>,

    /// The name the controller's certificate must carry, when --discovery
    /// names it otherwise (by address, say). Default: the URL's host.
    #[arg(long, value_name = "NAME", requires = "discovery")]
    controller_name: Option<String>,

    /// This proxy's pod name, reported to the controller (for `divert check`).
    #[arg(long, env = "DIVERT_POD_NAME", value_name = "NAME")]
    pod_name: Option<String>,

    /// This proxy's pod IP: the admin server's TCP probes
    /// (`/probe/tcp/PORT`) dial the app there. Default: loopback.
    #[arg(long, env = names::env::PROXY_POD_IP, value_name = "IP")]
    pod_ip: Option<std::net::IpAddr>,

    /// The baggage member whose value names the divert namespace.
    #[arg(long, env = "DIVERT_BAGGAGE_KEY", default_value = names::BAGGAGE_KEY)]
    baggage_key: String,

    /// The namespace of the proxy's own pod. When it is a divert namespace,
    /// requests without a key are routed as if they carried it.
    #[arg(long, env = "DIVERT_NAMESPACE", value_name = "NAMESPACE")]
    namespace: Option<String>,

    /// Do not use --namespace as the key of requests that have none.
    #[arg(long)]
    no_own_namespace_default: bool,

    /// How long to wait for an upstream connection before answering 502.
    #[arg(long, default_value = "1s", value_parser = divert_core::duration::parse, value_name = "DURATION")]
    connect_timeout: Duration,

    /// How long the key cookie (`?divert=NS`, where the shared namespace
    /// allows it) lasts in the browser: its `Max-Age`.
    #[arg(long, env = "DIVERT_KEY_COOKIE_MAX_AGE", default_value = "8h", value_parser = divert_core::duration::parse, value_name = "DURATION")]
    key_cookie_max_age: Duration,

    /// How many events of requests with a key (and of calls that dropped
    /// one) to keep for `divert trace --since`; 0 keeps none. Requests
    /// without a key are never kept.
    #[arg(long, env = "DIVERT_TAP_HISTORY", default_value_t = divert_proxy::tap::DEFAULT_HISTORY, value_name = "N")]
    tap_history: usize,

    /// Idle HTTP/1.1 upstream connections kept per endpoint.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_idle_per_endpoint: usize,

    /// Transparent mode, for a pod whose TCP `divert-proxy init` redirects:
    /// accept the pod's outbound connections on --outbound-port and those
    /// coming into it on --inbound-port, and route each to where it was
    /// going (SO_ORIGINAL_DST). Without it, the proxy listens itself on every
    /// address the registry says clients dial (bind mode).
    #[arg(long, env = "DIVERT_TRANSPARENT")]
    transparent: bool,

    /// The port redirected connections arrive on (transparent mode), on every
    /// IPv4 and, when the kernel has IPv6, every IPv6 address.
    #[arg(
        long,
        env = "DIVERT_OUTBOUND_PORT",
        default_value_t = port::PROXY,
        value_name = "PORT"
    )]
    outbound_port: u16,

    /// The port redirected inbound connections arrive on (transparent mode):
    /// connections to the pod's app, delivered to it or, for a key whose
    /// namespace runs this pod's service, to that copy.
    #[arg(
        long,
        env = "DIVERT_INBOUND_PORT",
        default_value_t = port::PROXY_INBOUND,
        value_name = "PORT"
    )]
    inbound_port: u16,

    /// How long to wait for a client's first bytes to tell HTTP from other
    /// protocols (transparent mode). A client that has said nothing by then
    /// (a protocol where the server speaks first) is passed through opaquely.
    #[arg(long, default_value = "500ms", value_parser = divert_core::duration::parse, value_name = "DURATION")]
    detect_timeout: Duration,

    /// Destination ports passed through opaquely without protocol detection
    /// (transparent mode): server-speaks-first and binary protocols. Replaces
    /// the default list.
    #[arg(long, env = "DIVERT_OPAQUE_PORTS", value_delimiter = ',', value_name = "PORTS",
          default_value = DEFAULT_OPAQUE_PORTS_FLAG)]
    opaque_ports: Vec<u16>,

    /// Where /live, /ready, /metrics, /routes, /log-level and the tap answer.
    /// Give 0.0.0.0:4191 so that Kubernetes probes and the controller (for
    /// `divert tap`) can reach it; the log level can only be changed from
    /// localhost either way.
    #[arg(
        long,
        env = "DIVERT_ADMIN_ADDR",
        default_value_t = SocketAddr::from((Ipv4Addr::LOCALHOST, port::PROXY_ADMIN)),
        value_name = "ADDR"
    )]
    admin_addr: SocketAddr,

    /// On SIGTERM or SIGINT: how long open connections get to finish after
    /// the proxy stops accepting (HTTP/2 clients get GOAWAY, HTTP/1 ones a
    /// close after the response in flight). A second signal exits at once.
    #[arg(long, env = "DIVERT_SHUTDOWN_GRACE", default_value = "25s", value_parser = divert_core::duration::parse, value_name = "DURATION")]
    shutdown_grace: Duration,

    /// The largest request head (request line and headers) taken, in bytes;
    /// past it HTTP/1.1 clients get 431 Request Header Fields Too Large. At
    /// least 8192.
    #[arg(long, env = "DIVERT_MAX_REQUEST_HEAD", default_value_t = divert_proxy::limits::DEFAULT_MAX_REQUEST_HEAD, value_parser = parse_head_size, value_name = "BYTES")]
    max_request_head: usize,

    /// How long a client may take to send a whole request head, counted from
    /// when the proxy starts waiting for it: from the connection's start in
    /// bind mode, and between requests on an HTTP/1.1 connection (so it also
    /// closes keep-alive connections idle that long). 0 turns it off.
    #[arg(long, env = "DIVERT_HEADER_READ_TIMEOUT", default_value = "60s", value_parser = divert_core::duration::parse_or_off, value_name = "DURATION")]
    header_read_timeout: Duration,

    /// An HTTP/2 connection with no open stream for this long gets GOAWAY
    /// and is closed (within twice this). 0 turns it off.
    #[arg(long, env = "DIVERT_IDLE_TIMEOUT", default_value = "5m", value_parser = divert_core::duration::parse_or_off, value_name = "DURATION")]
    idle_timeout: Duration,

    /// The longest a request body may stall between two pieces; past it the
    /// request fails (408 if the upstream has not answered). 0 turns it off.
    #[arg(long, env = "DIVERT_REQUEST_BODY_TIMEOUT", default_value = "5m", value_parser = divert_core::duration::parse_or_off, value_name = "DURATION")]
    request_body_timeout: Duration,

    /// How long an upstream may take to send its response head: past it 504,
    /// or for gRPC grpc-status 4 (DEADLINE_EXCEEDED). A gRPC call's own
    /// grpc-timeout replaces it. 0 turns it off.
    #[arg(long, env = "DIVERT_RESPONSE_TIMEOUT", default_value = "60s", value_parser = divert_core::duration::parse_or_off, value_name = "DURATION")]
    response_timeout: Duration,

    /// The most client connections open at once. Past it a new connection is
    /// closed at once (and counted); open ones keep being served.
    #[arg(long, env = "DIVERT_MAX_CONNECTIONS", default_value_t = divert_proxy::limits::DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    max_connections: u32,

    /// Worker threads. 1 (the default, like a sidecar) runs everything on one
    /// thread.
    #[arg(long, env = "DIVERT_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
}

/// A `--max-request-head` smaller than hyper can read a head in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a size of at least {min} bytes", min = divert_proxy::limits::MIN_MAX_REQUEST_HEAD)]
struct HeadSizeError(String);

fn parse_head_size(s: &str) -> Result<usize, HeadSizeError> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n >= divert_proxy::limits::MIN_MAX_REQUEST_HEAD)
        .ok_or_else(|| HeadSizeError(s.to_owned()))
}

pub fn main(args: ProxyArgs) -> ExitCode {
    let config = Config {
        baggage_key: args.baggage_key,
        namespace: args.namespace,
        pod: args.pod_name.clone(),
        pod_ip: args.pod_ip,
        own_namespace_default: !args.no_own_namespace_default,
        connect: ConnectSettings {
            connect_timeout: args.connect_timeout,
            max_idle_per_endpoint: args.max_idle_per_endpoint,
            ..ConnectSettings::default()
        },
        detect: DetectSettings {
            timeout: args.detect_timeout,
            opaque_ports: args.opaque_ports,
        },
        limits: Limits {
            header_read_timeout: args.header_read_timeout,
            idle_timeout: args.idle_timeout,
            request_body_timeout: args.request_body_timeout,
            response_timeout: args.response_timeout,
            max_connections: args.max_connections as usize,
            max_request_head: args.max_request_head,
        },
        key_cookie_max_age: args.key_cookie_max_age,
        tap_history: args.tap_history,
    };
    if config.baggage_key.is_empty() {
        eprintln!("divert-proxy proxy: --baggage-key must not be empty");
        return ExitCode::from(EXIT_USAGE);
    }
    let source = match (args.registry, args.discovery) {
        (Some(path), _) => Source::Registry(path),
        (None, Some(url)) => {
            let mut settings = DiscoverySettings::new(url);
            settings.ca = match args.controller_ca.map(|ca| pem_or_file(&ca)) {
                None => None,
                Some(Ok(pem)) => Some(pem),
                Some(Err(e)) => {
                    eprintln!("divert-proxy proxy: --controller-ca: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            settings.token_file = args.controller_token;
            settings.server_name = args.controller_name;
            settings.proxy.pod = args.pod_name.unwrap_or_default();
            settings.proxy.namespace = config.namespace.clone().unwrap_or_default();
            Source::Discovery(settings)
        }
        (None, None) => {
            eprintln!("divert-proxy proxy: give --registry FILE or --discovery URL");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let settings = Settings {
        config,
        source,
        transparent: args
            .transparent
            .then(|| run::transparent_listeners(args.outbound_port, Some(args.inbound_port))),
        admin: Some(args.admin_addr),
        log: divert_core::logging::control(),
    };
    let runtime = match runtime(args.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("divert-proxy proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Listening for signals from before the start: one during the start
        // is not lost.
        let mut signals = Signals::new();
        let running = match run::start(settings).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("divert-proxy proxy: {e}");
                return if e.is_usage() {
                    ExitCode::from(EXIT_USAGE)
                } else {
                    ExitCode::FAILURE
                };
            }
        };
        let services = running.proxy.shared.tables.load().service_count();
        let admin = running.admin.map_or_else(String::new, |a| a.to_string());
        let listening = &running.listening;
        if args.transparent {
            tracing::info!(listeners = ?listening.bound, services, admin = %admin, "divert proxy ready (transparent mode)");
        } else {
            tracing::info!(
                listeners = listening.bound.len(),
                failed = listening.failed.len(),
                services,
                admin = %admin,
                "divert proxy ready (bind mode)"
            );
        }
        running
            .until_signalled(args.shutdown_grace, &mut signals)
            .await;
        ExitCode::SUCCESS
    })
}

/// The PEM text `value` is, or the contents of the file it names.
fn pem_or_file(value: &str) -> Result<String, String> {
    let pem = if value.trim_start().starts_with("-----BEGIN") {
        value.to_owned()
    } else {
        std::fs::read_to_string(value).map_err(|e| format!("cannot read {value}: {e}"))?
    };
    if pem.contains("-----BEGIN CERTIFICATE-----") {
        Ok(pem)
    } else {
        Err("no PEM certificate in it: give the CA's PEM text or a file holding it".into())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        proxy: ProxyArgs,
    }

    fn parse(args: &[&str]) -> Result<ProxyArgs, clap::Error> {
        let fixed = ["proxy", "--registry", "registry.yaml"];
        Cli::try_parse_from(fixed.into_iter().chain(args.iter().copied())).map(|c| c.proxy)
    }

    /// Each limit whose help says "0 turns it off" takes 0, and the proxy's
    /// limits then have it off; a limit that must fire does not.
    #[test]
    fn the_limits_that_zero_turns_off_take_zero() {
        let a = parse(&[
            "--header-read-timeout",
            "0",
            "--idle-timeout",
            "0s",
            "--request-body-timeout",
            "0",
            "--response-timeout",
            "0ms",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        for (flag, d) in [
            ("header read", a.header_read_timeout),
            ("idle", a.idle_timeout),
            ("request body", a.request_body_timeout),
            ("response", a.response_timeout),
        ] {
            assert_eq!(divert_proxy::limits::enabled(d), None, "{flag}");
        }
        let e = parse(&["--connect-timeout", "0s"]).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("more than zero"), "{e}");
    }
}
