//! `divert proxy`: runs the data plane.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use divert_proxy::upstream::ConnectSettings;
use divert_proxy::{Config, Proxy, Source};

use crate::EXIT_USAGE;

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// The registry file (YAML) that describes namespaces and services. It is
    /// watched: a valid edit replaces the routing table at once, an invalid
    /// one is logged and ignored.
    #[arg(long, env = "DIVERT_REGISTRY", value_name = "FILE")]
    registry: PathBuf,

    /// The baggage member whose value names the divert namespace.
    #[arg(long, env = "DIVERT_BAGGAGE_KEY", default_value = divert_proxy::DEFAULT_BAGGAGE_KEY)]
    baggage_key: String,

    /// The namespace of the proxy's own pod. When it is a divert namespace,
    /// requests without a key are routed as if they carried it.
    #[arg(long, env = "DIVERT_NAMESPACE", value_name = "NAMESPACE")]
    namespace: Option<String>,

    /// Do not use --namespace as the key of requests that have none.
    #[arg(long)]
    no_own_namespace_default: bool,

    /// How long to wait for an upstream connection before answering 502.
    #[arg(long, default_value = "1s", value_parser = crate::duration::parse, value_name = "DURATION")]
    connect_timeout: Duration,

    /// Idle HTTP/1.1 upstream connections kept per endpoint.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_idle_per_endpoint: usize,

    /// Worker threads. 1 (the default, like a sidecar) runs everything on one
    /// thread.
    #[arg(long, env = "DIVERT_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
}

pub fn main(args: ProxyArgs) -> ExitCode {
    let config = Config {
        baggage_key: args.baggage_key,
        namespace: args.namespace,
        own_namespace_default: !args.no_own_namespace_default,
        connect: ConnectSettings {
            connect_timeout: args.connect_timeout,
            max_idle_per_endpoint: args.max_idle_per_endpoint,
        },
    };
    if config.baggage_key.is_empty() {
        eprintln!("divert proxy: --baggage-key must not be empty");
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match runtime(args.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("divert proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let proxy = match Proxy::start(config, Source::Registry(args.registry)) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("divert proxy: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let listening = proxy.listening(1).await;
        tracing::info!(
            listeners = listening.bound.len(),
            failed = listening.failed.len(),
            services = proxy.shared.tables.load().service_count(),
            "divert proxy ready (bind mode)"
        );
        shutdown_signal().await;
        tracing::info!("shutting down");
        ExitCode::SUCCESS
    })
}

/// A single-threaded runtime for one worker: no cross-thread wake-ups or work
/// stealing, which is what a sidecar sharing a core wants.
pub fn runtime(workers: u16) -> std::io::Result<tokio::runtime::Runtime> {
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(workers))
            .enable_all()
            .build()
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
