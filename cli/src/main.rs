//! `divert`: the single entry point. One binary (and so one image) serves every
//! part: `divert proxy`, `divert demo`, and more as they land.

mod check;
mod controller;
mod demo;
mod duration;
mod init;
mod inject;
mod install;
mod proxy;
mod tap;
mod utc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status for bad flags or configuration (EX_USAGE), as DESIGN.md says.
const EXIT_USAGE: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "divert",
    version,
    about = "Route each request by its baggage to a developer's copy of a service, or the shared one"
)]
struct Cli {
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter
    /// such as `divert_proxy=debug`).
    #[arg(long, global = true, env = "DIVERT_LOG", default_value = "info")]
    log_level: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy (the data plane).
    Proxy(proxy::ProxyArgs),
    /// Run the Movies app of the docs on loopback, with the proxy between its
    /// services, and show where requests go.
    Demo(demo::DemoArgs),
    /// Program iptables so this pod's outbound TCP goes to the proxy (run as
    /// the pod's init container, with NET_ADMIN and NET_RAW).
    Init(init::InitArgs),
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
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // `divert check` reports each failed request itself; kube's error logs
    // would only repeat them (a --log-level other than the default keeps them).
    let log_level = match &cli.command {
        Command::Check(_) if cli.log_level == "info" => "info,kube_client=off".to_owned(),
        _ => cli.log_level.clone(),
    };
    if let Err(e) = init_logging(&log_level) {
        eprintln!("divert: --log-level: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    match cli.command {
        Command::Proxy(args) => proxy::main(args),
        Command::Demo(args) => demo::main(args),
        Command::Init(args) => init::main(args),
        Command::Controller(args) => controller::main(args),
        Command::Inject(args) => inject::main(args),
        Command::Check(args) => check::main(args),
        Command::Install(args) => install::main(args),
        Command::Tap(args) => tap::main(args),
    }
}

/// The process's log filter, changeable at run time (the proxy's admin API).
struct LogFilter {
    handle: tracing_subscriber::reload::Handle<
        tracing_subscriber::EnvFilter,
        tracing_subscriber::Registry,
    >,
    current: std::sync::Mutex<String>,
}

impl divert_proxy::admin::LogControl for LogFilter {
    fn current(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn set(&self, filter: &str) -> Result<(), String> {
        let parsed = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        self.handle.reload(parsed).map_err(|e| e.to_string())?;
        if let Ok(mut c) = self.current.lock() {
            *c = filter.to_owned();
        }
        Ok(())
    }
}

static LOG_FILTER: std::sync::OnceLock<std::sync::Arc<LogFilter>> = std::sync::OnceLock::new();

/// The log filter's control, once logging is set up.
pub fn log_control() -> Option<std::sync::Arc<dyn divert_proxy::admin::LogControl>> {
    LOG_FILTER
        .get()
        .map(|l| l.clone() as std::sync::Arc<dyn divert_proxy::admin::LogControl>)
}

fn init_logging(filter: &str) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let parsed = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    let (layer, handle) = tracing_subscriber::reload::Layer::new(parsed);
    tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour only for a person at a terminal, not in container logs.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .try_init()
        .map_err(|e| e.to_string())?;
    let _ = LOG_FILTER.set(std::sync::Arc::new(LogFilter {
        handle,
        current: std::sync::Mutex::new(filter.to_owned()),
    }));
    Ok(())
}
