//! `divert-proxy`: what an injected pod runs, and nothing more. `divert-proxy
//! init` programs the pod's iptables (its init container), `divert-proxy
//! proxy` is the proxy (its sidecar). The controller and the tools are the
//! other binary, `divert`; both ship in one image.

#![forbid(unsafe_code)]

/// Only for A/B runs of the allocator (the `mimalloc` feature; see
/// Cargo.toml): the image uses the libc's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod init;
mod proxy;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use divert_core::cli::LogArgs;
use divert_core::process::EXIT_USAGE;

#[derive(Parser, Debug)]
#[command(
    name = "divert-proxy",
    version,
    about = "Divert's sidecar: the proxy that routes each request by its baggage, and the init container that sends the pod's traffic to it"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy (the data plane).
    Proxy(Box<proxy::ProxyArgs>),
    /// Program iptables so this pod's outbound TCP goes to the proxy (run as
    /// the pod's init container, with NET_ADMIN and NET_RAW).
    Init(init::InitArgs),
}

fn main() -> ExitCode {
    let cli = match divert_core::cli::parse::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Err(e) = divert_core::logging::init(&cli.log.log_level) {
        eprintln!("divert-proxy: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    match cli.command {
        Command::Proxy(args) => proxy::main(*args),
        Command::Init(args) => init::main(args),
    }
}
