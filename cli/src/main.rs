//! `divert`: the controller and the tools around it (install, check, tap,
//! trace, inject, preview, deploy, destroy, ls, the demo), each a module of the `divert_cli` library; this file
//! only parses the command line and hands over. What a pod runs, the proxy
//! and its init container, is the other binary, `divert-proxy` (`sidecar/`);
//! both ship in one image.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use divert_cli::workflow::{deploy, destroy};
use divert_cli::{check, controller, demo, inject, install, ls, preview, tap, trace};
use divert_core::cli::LogArgs;
use divert_core::process::EXIT_USAGE;

#[derive(Parser, Debug)]
#[command(
    name = "divert",
    version,
    about = "Route each request by its baggage to a developer's copy of a service, or the shared one"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the Movies app of the docs on loopback, with the proxy between its
    /// services, and show where requests go.
    Demo(demo::DemoArgs),
    /// Run the controller: watch the cluster and stream the routing table to
    /// every proxy.
    Controller(controller::ControllerArgs),
    /// Add divert init and the proxy to the pod templates of manifests, as the
    /// injection webhook does (`divert inject app.yaml | kubectl apply -f -`).
    Inject(inject::InjectArgs),
    /// Check that Divert is installed and working in the cluster: the
    /// controller, the webhook's certificate, the opted-in namespaces, and
    /// their pods' proxies (exit status 0 only if every check passed).
    Check(check::CheckArgs),
    /// Print every manifest the cluster needs (namespace, RBAC, controller,
    /// webhook and its certificate), for `kubectl apply -f -`.
    Install(install::InstallArgs),
    /// Watch routing decisions live: each request a proxy routes, where it
    /// went and why (from one proxy's admin port, or from the controller for
    /// many proxies).
    Tap(tap::TapArgs),
    /// Show the call trees of one key: which copy served each request and
    /// why, and where an app lost the key (from the controller, or a saved
    /// tap).
    Trace(trace::TraceArgs),
    /// List each divert namespace's preview URLs and the services it runs.
    Preview(preview::PreviewArgs),
    /// Run the Okteto manifest's deploy commands into your namespace, divert
    /// it from the shared one, and print your preview URLs (again to
    /// iterate).
    Deploy(deploy::DeployArgs),
    /// Run the manifest's destroy commands and stop diverting your namespace
    /// (--delete-namespace deletes it too).
    Destroy(destroy::DestroyArgs),
    /// List every divert namespace: its shared namespace, services, preview
    /// URLs, pods, connected proxies, age and time left.
    Ls(ls::LsArgs),
}

fn main() -> ExitCode {
    let cli = match divert_core::cli::parse::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // `divert check` reports each failed request itself; kube's error logs
    // would only repeat them (a --log-level other than the default keeps them).
    let log_level = match &cli.command {
        Command::Check(_) | Command::Preview(_) | Command::Deploy(_) | Command::Destroy(_)
            if cli.log.log_level == "info" =>
        {
            "info,kube_client=off".to_owned()
        }
        _ => cli.log.log_level.clone(),
    };
    if let Err(e) = divert_core::logging::init(&log_level) {
        eprintln!("divert: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    match cli.command {
        Command::Demo(args) => demo::main(args),
        Command::Controller(args) => controller::main(args),
        Command::Inject(args) => inject::main(args),
        Command::Check(args) => check::main(args),
        Command::Install(args) => install::main(args),
        Command::Tap(args) => tap::main(args),
        Command::Trace(args) => trace::main(args),
        Command::Preview(args) => preview::main(args),
        Command::Deploy(args) => deploy::main(args),
        Command::Destroy(args) => destroy::main(args),
        Command::Ls(args) => ls::main(args),
    }
}
