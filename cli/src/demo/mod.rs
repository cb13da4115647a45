//! `divert demo`: the Movies app of the docs, in one process on loopback.
//!
//! Shared namespace `staging` runs frontend → api → catalog (gRPC) and rent;
//! developer `alice` runs her own frontend and `bob` his own rent. Every call
//! between them goes through the proxy, in bind mode on loopback addresses,
//! exactly as it would between pods.

mod apps;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use bytes::Bytes;
use clap::Args;
use divert_proxy::run::{self, RunError, Settings};
use divert_proxy::table::{EndpointSpec, NamespaceSpec, PortSpec, ServiceSpec, TableSpec};
use divert_proxy::{Config, Source};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use apps::{Downstreams, Kind};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Run the walkthrough and exit: status 0 only if every path was as expected.
    #[arg(long)]
    once: bool,

    /// The first two octets of the loopback addresses the demo's services get
    /// (so two demos can run side by side).
    #[arg(long, default_value = "127.77", value_name = "A.B", value_parser = parse_net)]
    net: [u8; 2],

    /// The proxy's admin server (metrics, routes, tap), as `divert-proxy
    /// proxy --admin-addr`. If it is taken the demo runs without one.
    #[arg(long, default_value_t = SocketAddr::from((Ipv4Addr::LOCALHOST, divert_core::names::port::PROXY_ADMIN)), value_name = "ADDR")]
    admin_addr: SocketAddr,
}

/// A `--net` that is not a loopback prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("{0:?}: the second octet must be 0-255")]
    Octet(String),
    #[error("{0:?}: give the loopback prefix as 127.N")]
    NotLoopback(String),
}

fn parse_net(s: &str) -> Result<[u8; 2], NetError> {
    let parts: Vec<&str> = s.split('.').collect();
    match parts.as_slice() {
        ["127", b] => b
            .parse::<u8>()
            .map(|b| [127, b])
            .map_err(|_| NetError::Octet(s.to_owned())),
        _ => Err(NetError::NotLoopback(s.to_owned())),
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("no staging {0} in the demo's services")]
    NoService(&'static str),
    #[error("cannot start {name}@{namespace}: {source}")]
    App {
        name: &'static str,
        namespace: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Proxy(#[from] RunError),
    #[error("the proxy cannot listen on {addr}: {why}. Is another demo running? Try --net 127.78")]
    Listen { addr: SocketAddr, why: String },
}

const HTTP_PORT: u16 = 8080;
const GRPC_PORT: u16 = 9090;

/// One service of the demo: where clients dial it and where it really runs.
struct DemoService {
    name: &'static str,
    namespace: &'static str,
    dialed: IpAddr,
    grpc: bool,
}

fn services(net: [u8; 2]) -> Vec<DemoService> {
    let ip = |c: u8, d: u8| IpAddr::V4(Ipv4Addr::new(net[0], net[1], c, d));
    let svc = |name, namespace, dialed, grpc| DemoService {
        name,
        namespace,
        dialed,
        grpc,
    };
    vec![
        svc("frontend", "staging", ip(0, 1), false),
        svc("api", "staging", ip(0, 2), false),
        svc("catalog", "staging", ip(0, 3), true),
        svc("rent", "staging", ip(0, 4), false),
        svc("frontend", "alice", ip(1, 1), false),
        svc("rent", "bob", ip(2, 4), false),
    ]
}

fn port_of(s: &DemoService) -> u16 {
    if s.grpc { GRPC_PORT } else { HTTP_PORT }
}

/// The walkthrough: baggage to send to staging's frontend, and the path expected.
const PATHS: [(&str, Option<&str>, &str); 4] = [
    (
        "no baggage",
        None,
        "frontend@staging → api@staging → catalog@staging, rent@staging",
    ),
    (
        "okteto-divert=alice",
        Some("okteto-divert=alice"),
        "frontend@alice → api@staging → catalog@staging, rent@staging",
    ),
    (
        "okteto-divert=bob",
        Some("okteto-divert=bob"),
        "frontend@staging → api@staging → catalog@staging, rent@bob",
    ),
    (
        "okteto-divert=mallory (not opted in)",
        Some("okteto-divert=mallory"),
        "frontend@staging → api@staging → catalog@staging, rent@staging",
    ),
];

pub fn main(args: DemoArgs) -> ExitCode {
    let runtime = match divert_core::process::runtime(2) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("divert demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: DemoArgs) -> ExitCode {
    match start_and_walk(&args).await {
        Ok((all_ok, _running)) => {
            if args.once {
                return if all_ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                };
            }
            divert_core::process::shutdown_signal().await;
            println!("\nbye");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("divert demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What keeps the demo running: dropping it stops the apps and the proxy.
struct Running {
    _apps: JoinSet<()>,
    _proxy: run::Running,
}

async fn start_and_walk(args: &DemoArgs) -> Result<(bool, Running), DemoError> {
    let all = services(args.net);
    let dialed = |name: &'static str| {
        all.iter()
            .find(|s| s.name == name && s.namespace == "staging")
            .map(|s| SocketAddr::new(s.dialed, port_of(s)))
            .ok_or(DemoError::NoService(name))
    };
    // Apps dial service names; in a pod `api` resolves to staging's api (the
    // shared namespace is on the DNS search list), and the proxy does the rest.
    let down = Downstreams {
        api: dialed("api")?,
        catalog: dialed("catalog")?,
        rent: dialed("rent")?,
    };

    let mut apps = JoinSet::new();
    let mut spec = TableSpec {
        namespaces: vec![
            NamespaceSpec {
                name: "staging".into(),
                shared_namespace: None,
                key_cookie: false,
            },
            NamespaceSpec {
                name: "alice".into(),
                shared_namespace: Some("staging".into()),
                key_cookie: false,
            },
            NamespaceSpec {
                name: "bob".into(),
                shared_namespace: Some("staging".into()),
                key_cookie: false,
            },
        ],
        services: Vec::new(),
        hosts: Vec::new(),
    };
    for s in &all {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|source| DemoError::App {
                name: s.name,
                namespace: s.namespace,
                source,
            })?;
        let endpoint = listener.local_addr().map_err(|source| DemoError::App {
            name: s.name,
            namespace: s.namespace,
            source,
        })?;
        let namespace = s.namespace.to_string();
        match s.name {
            "catalog" => apps.spawn(apps::serve_catalog(listener, namespace)),
            "frontend" => apps.spawn(apps::serve_http(
                listener,
                Kind::Frontend,
                namespace,
                down.clone(),
            )),
            "api" => apps.spawn(apps::serve_http(
                listener,
                Kind::Api,
                namespace,
                down.clone(),
            )),
            _ => apps.spawn(apps::serve_http(
                listener,
                Kind::Rent,
                namespace,
                down.clone(),
            )),
        };
        spec.services.push(ServiceSpec {
            name: s.name.into(),
            namespace: s.namespace.into(),
            addresses: vec![s.dialed],
            ports: vec![PortSpec {
                name: Some(if s.grpc { "grpc" } else { "http" }.into()),
                port: port_of(s),
                target_port: None,
                endpoints: Vec::new(),
            }],
            endpoints: vec![EndpointSpec::Socket(endpoint)],
        });
    }

    // Started as every proxy process is (`divert_proxy::run`). The admin
    // server is a bonus here: a second demo (or a proxy) may hold the port,
    // and the walkthrough does not need it.
    let settings = |admin: Option<SocketAddr>| Settings {
        config: Config::default(),
        source: Source::Static(spec.clone()),
        transparent: None,
        admin,
        log: divert_core::logging::control(),
    };
    let running = match run::start(settings((!args.once).then_some(args.admin_addr))).await {
        Err(e @ RunError::Admin { .. }) => {
            eprintln!("divert demo: no admin server ({e}); give --admin-addr to pick another port");
            run::start(settings(None)).await
        }
        started => started,
    }?;
    if let Some((addr, why)) = running.listening.failed.first() {
        return Err(DemoError::Listen {
            addr: *addr,
            why: why.clone(),
        });
    }
    let admin = running.admin;

    println!("Divert demo: the Movies app on loopback, every call through the proxy\n");
    for ns in ["staging", "alice", "bob"] {
        let list: Vec<String> = all
            .iter()
            .filter(|s| s.namespace == ns)
            .map(|s| {
                format!(
                    "{}{} {}:{}",
                    s.name,
                    if s.grpc { " (gRPC)" } else { "" },
                    s.dialed,
                    port_of(s)
                )
            })
            .collect();
        let role = if ns == "staging" {
            "shared".to_string()
        } else {
            "divert of staging".to_string()
        };
        println!("  {ns:<8} ({role}): {}", list.join(", "));
    }
    println!(
        "\nRequests to staging's frontend ({}:{HTTP_PORT}):\n",
        all[0].dialed,
    );

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let frontend = SocketAddr::new(all[0].dialed, HTTP_PORT);
    let mut all_ok = true;
    for (label, baggage, expected) in PATHS {
        let baggage = baggage.map(http::HeaderValue::from_static);
        let got = apps::get(&client, frontend, baggage.as_ref()).await;
        let ok = got.as_deref().is_ok_and(|g| g == expected);
        all_ok &= ok;
        let shown = got.unwrap_or_else(|e| format!("error: {e}"));
        println!("  {label:<38} {shown}");
        if !ok {
            println!("  {:<38} expected: {expected}", "");
        }
    }
    println!(
        "\n{}",
        if all_ok {
            "Every path was as expected."
        } else {
            "Some paths were NOT as expected."
        }
    );
    if !args.once {
        println!("\nTry it yourself (Ctrl-C to stop):\n");
        println!("  curl http://{frontend}/");
        println!("  curl -H 'baggage: okteto-divert=alice' http://{frontend}/");
        println!(
            "  curl --http2-prior-knowledge -H 'baggage: okteto-divert=bob' http://{frontend}/"
        );
        println!(
            "  curl -H 'baggage: okteto-divert=bob' http://{}/",
            down.rent
        );
        if let Some(admin) = admin {
            println!("\nWatch the proxy decide:\n");
            println!("  divert tap --proxy {admin}");
            println!("  curl http://{admin}/metrics");
            println!("  curl 'http://{admin}/routes?dst={frontend}&key=alice'");
        }
    }
    Ok((
        all_ok,
        Running {
            _apps: apps,
            _proxy: running,
        },
    ))
}
