//! `divert controller`: watches the cluster and streams the routing table to
//! every proxy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::EXIT_USAGE;

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
        default_value = "0.0.0.0:8086",
        value_name = "ADDR"
    )]
    grpc_addr: SocketAddr,

    /// Where /live, /ready and /metrics answer.
    #[arg(
        long,
        env = "DIVERT_ADMIN_ADDR",
        default_value = "0.0.0.0:9990",
        value_name = "ADDR"
    )]
    admin_addr: SocketAddr,

    /// Worker threads.
    #[arg(long, env = "DIVERT_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
}

pub fn main(args: ControllerArgs) -> ExitCode {
    let runtime = match crate::proxy::runtime(args.workers) {
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
        let client = match divert_controller::kubernetes::client(args.kubeconfig).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("divert controller: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        tracing::info!(grpc = %args.grpc_addr, admin = %args.admin_addr, "divert controller starting");
        match divert_controller::run(client, grpc, admin, crate::proxy::shutdown_signal()).await {
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
