//! `divert controller`: watches the cluster and streams the routing table to
//! every proxy.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::manifest::Driver;
use divert_core::names::port;
use divert_core::process::EXIT_USAGE;

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// A kubeconfig to use instead of the pod's service account (for running
    /// the controller outside the cluster).
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    kubeconfig: Option<PathBuf>,

    /// Where proxies connect for the routing table (gRPC).
    #[arg(
        long,
        env = "DIVERT_GRPC_ADDR",
        default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port::CONTROLLER_GRPC)),
        value_name = "ADDR"
    )]
    grpc_addr: SocketAddr,

    /// Where /live, /ready and /metrics answer.
    #[arg(
        long,
        env = "DIVERT_ADMIN_ADDR",
        default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port::CONTROLLER_ADMIN)),
        value_name = "ADDR"
    )]
    admin_addr: SocketAddr,

    /// Where the admission webhook answers (HTTPS). Needs --webhook-cert and
    /// --webhook-key; without them the controller runs no webhook.
    #[arg(
        long,
        env = "DIVERT_WEBHOOK_ADDR",
        default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port::CONTROLLER_WEBHOOK)),
        value_name = "ADDR"
    )]
    webhook_addr: SocketAddr,

    /// The webhook's certificate chain (PEM), reloaded when it changes.
    #[arg(
        long,
        env = "DIVERT_WEBHOOK_CERT",
        value_name = "FILE",
        requires = "webhook_key"
    )]
    webhook_cert: Option<PathBuf>,

    /// The webhook's private key (PEM), reloaded when it changes.
    #[arg(
        long,
        env = "DIVERT_WEBHOOK_KEY",
        value_name = "FILE",
        requires = "webhook_cert"
    )]
    webhook_key: Option<PathBuf>,

    /// The image injected pods run `divert-proxy init` and `divert-proxy proxy` from.
    #[arg(long, env = "DIVERT_IMAGE", value_name = "IMAGE")]
    image: Option<String>,

    /// Inject the proxy as a regular container instead of a native sidecar
    /// (for clusters older than Kubernetes 1.29).
    #[arg(long, env = "DIVERT_LEGACY_SIDECAR")]
    legacy_sidecar: bool,

    /// The cluster's DNS domain (for the search path of divert namespaces).
    #[arg(
        long,
        env = "DIVERT_CLUSTER_DOMAIN",
        default_value = "cluster.local",
        value_name = "DOMAIN"
    )]
    cluster_domain: String,

    /// The CA (PEM file) of this controller's certificate, handed to
    /// injected proxies to verify it (the TLS Secret's ca.crt). Default: the
    /// ca.crt beside --webhook-cert.
    #[arg(long, env = "DIVERT_CONTROLLER_CA_FILE", value_name = "FILE")]
    controller_ca: Option<PathBuf>,
    /// The address injected proxies reach this controller at.
    #[arg(
        long,
        env = "DIVERT_CONTROLLER_URL",
        default_value_t = divert_core::names::default_controller_url(),
        value_name = "URL"
    )]
    controller_url: String,

    /// How requests of Istio-injected pods are routed: `divert` (Divert's
    /// proxies only; such pods are left to Istio) or `istio` (the
    /// controller also writes Istio's VirtualServices for them).
    #[arg(
        long,
        env = "DIVERT_DRIVER",
        default_value = "divert",
        value_name = "DRIVER",
        value_parser = Driver::parse_installed
    )]
    driver: Driver,

    /// Worker threads.
    #[arg(long, env = "DIVERT_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
}

pub fn main(args: ControllerArgs) -> ExitCode {
    let runtime = match divert_core::process::runtime(args.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("divert controller: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let bind = |addr: SocketAddr| {
            divert_proxy::listen::bind(addr).map_err(|e| {
                eprintln!("divert controller: cannot listen on {addr}: {e}; check that no other process holds the port");
            })
        };
        let (Ok(grpc), Ok(admin)) = (bind(args.grpc_addr), bind(args.admin_addr)) else {
            return ExitCode::FAILURE;
        };
        let webhook = match (&args.webhook_cert, &args.webhook_key) {
            (Some(cert), Some(key)) => {
                let files = divert_controller::webhook::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                };
                let cert = match divert_controller::webhook::ReloadingCert::load(files) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("divert controller: webhook certificate: {e}");
                        return ExitCode::from(EXIT_USAGE);
                    }
                };
                let tls = match cert.server_config() {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("divert controller: webhook TLS: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                let Ok(listener) = bind(args.webhook_addr) else {
                    return ExitCode::FAILURE;
                };
                let ca_file = args
                    .controller_ca
                    .clone()
                    .unwrap_or_else(|| {
                        let dir = args.webhook_cert.as_deref().and_then(std::path::Path::parent);
                        dir.unwrap_or(std::path::Path::new(".")).join("ca.crt")
                    });
                let controller_ca = match std::fs::read_to_string(&ca_file) {
                    Ok(pem) => Some(pem),
                    Err(e) if args.controller_url.starts_with("https://") => {
                        eprintln!("divert controller: --controller-ca: cannot read {}: {e}; injected proxies need it to verify the controller", ca_file.display());
                        return ExitCode::from(EXIT_USAGE);
                    }
                    Err(_) => None,
                };
                let mut settings = divert_inject::Settings {
                    native_sidecar: !args.legacy_sidecar,
                    cluster_domain: args.cluster_domain.clone(),
                    controller_url: args.controller_url.clone(),
                    controller_ca,
                    ..divert_inject::Settings::default()
                };
                if let Some(image) = &args.image {
                    settings.image = image.clone();
                }
                Some(divert_controller::WebhookConfig {
                    listener,
                    cert,
                    tls,
                    settings,
                })
            }
            _ => None,
        };
        let client = match divert_controller::kubernetes::client(args.kubeconfig).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("divert controller: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        // The gRPC API is served with the webhook's certificate (the same
        // Service name); people's client certificates are verified against
        // the cluster's client CA.
        let grpc_tls = match &webhook {
            Some(w) => {
                let client_ca = divert_controller::auth::client_ca(&client).await;
                match w.cert.grpc_server_config(client_ca.as_deref()) {
                    Ok(config) => Some(divert_controller::server::Tls::new(config)),
                    Err(e) => {
                        eprintln!("divert controller: gRPC TLS: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            None => {
                tracing::warn!("no certificate (--webhook-cert): the gRPC API is served without TLS, so tokens cross the network in the clear; use this only on one host");
                None
            }
        };
        tracing::info!(grpc = %args.grpc_addr, admin = %args.admin_addr, tls = grpc_tls.is_some(), "divert controller starting");
        let istio = (args.driver == Driver::Istio).then(|| args.cluster_domain.clone());
        match divert_controller::run(client, grpc, grpc_tls, admin, webhook, istio, divert_core::process::shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("shutting down");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("divert controller: the gRPC server failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
