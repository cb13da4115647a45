//! The developer's workflow over the Okteto manifest: `divert deploy`
//! deploys the services a developer changes into their own namespace, wires
//! it to the shared one and prints the preview URLs; running it again is how
//! they iterate. `divert destroy` takes it back down.
//!
//! - [`deploy`] and [`destroy`]: the two commands.
//! - `kubeconfig`: the commands' kubeconfig, pointing at the namespace.
//! - `commands`: running the manifest's commands.
//! - `rollout`: waiting for what they deployed.
//! - `namespace`: the checks of the shared namespace, and opting the
//!   divert namespace in.
//!
//! Exit status: 0 done; 1 a step failed (a check, a command, the rollout);
//! 2 the cluster could not be reached; 64 bad flags or a bad manifest.

mod commands;
pub mod deploy;
pub mod destroy;
mod kubeconfig;
mod namespace;
mod rollout;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use divert_core::names::env::{
    OKTETO_NAMESPACE, OKTETO_SHARED_NAMESPACE, PROXY_NAMESPACE, SHARED_NAMESPACE,
};
use divert_core::names::parse_dns_label;
use divert_core::process::EXIT_USAGE;

use crate::check::EXIT_UNREACHABLE;
use crate::manifest::{self, Manifest, ManifestError};

pub use self::commands::CommandError;
pub use self::kubeconfig::KubeconfigFileError;
pub use self::namespace::NamespaceError;

/// What `divert deploy` and `divert destroy` both take.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The manifest (default: okteto.yml, okteto.yaml or .okteto/okteto.yml
    /// in the current directory).
    #[arg(long, short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,

    /// The divert namespace (default: the current context's namespace).
    #[arg(long, short = 'n', value_name = "NS", value_parser = parse_dns_label)]
    namespace: Option<String>,

    /// A variable for the manifest and its commands (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,

    /// The kubeconfig (default: KUBECONFIG, then ~/.kube/config); the
    /// commands get a copy whose current namespace is the divert namespace.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,

    /// How long each of the manifest's commands may run.
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = divert_core::duration::parse)]
    command_timeout: Duration,

    /// How long to wait for each request to the API server.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = divert_core::duration::parse)]
    timeout: Duration,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))?;
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("{k:?}: a variable name is letters, digits and _"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Why a workflow command stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Unreachable(String),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigFileError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{0}")]
    Rollout(String),
    #[error("cannot read the current directory: {0}")]
    Cwd(#[source] std::io::Error),
}

impl WorkflowError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            WorkflowError::Manifest(_) => ExitCode::from(EXIT_USAGE),
            WorkflowError::Unreachable(_) => ExitCode::from(EXIT_UNREACHABLE),
            _ => ExitCode::FAILURE,
        }
    }
}

/// The manifest, the client and the divert namespace.
struct Loaded {
    manifest: Manifest,
    client: kube::Client,
    namespace: String,
    /// The manifest's directory: where the commands run.
    dir: PathBuf,
}

async fn load(common: &Common) -> Result<Loaded, WorkflowError> {
    // The manifest is judged before anything asks the cluster: a mistake
    // in it is named, with its line, whether or not the cluster is up.
    let cwd = std::env::current_dir().map_err(WorkflowError::Cwd)?;
    let path = manifest::find(&cwd, common.file.as_deref())?;
    let judged = manifest::read(&path)?;
    let (client, url) = crate::check::client(common.kubeconfig.as_deref(), common.timeout)
        .await
        .map_err(|e| WorkflowError::Unreachable(e.to_string()))?;
    let namespace = common
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let vars: BTreeMap<String, String> = common.vars.iter().cloned().collect();
    let manifest = judged.expand(&namespace, &vars, &|k| std::env::var(k).ok())?;
    for w in &manifest.warnings {
        eprintln!(
            "divert: note: {}: field {w} is not used by Divert",
            path.display()
        );
    }
    for n in &manifest.not_run {
        eprintln!("divert: note: {}", n.note());
    }
    crate::check::reachable(&client, &url, common.timeout)
        .await
        .map_err(|e| WorkflowError::Unreachable(e.to_string()))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or(cwd);
    Ok(Loaded {
        manifest,
        client,
        namespace,
        dir,
    })
}

/// The variables the commands see, beside this process's environment.
fn command_env(common: &Common, l: &Loaded, kubeconfig: &std::path::Path) -> Vec<(String, String)> {
    let shared = &l.manifest.divert.namespace;
    let mut env = vec![
        ("KUBECONFIG".to_owned(), kubeconfig.display().to_string()),
        (OKTETO_NAMESPACE.to_owned(), l.namespace.clone()),
        (PROXY_NAMESPACE.to_owned(), l.namespace.clone()),
        (OKTETO_SHARED_NAMESPACE.to_owned(), shared.clone()),
        (SHARED_NAMESPACE.to_owned(), shared.clone()),
    ];
    env.extend(common.vars.iter().cloned());
    env
}

/// Runs `f` on a runtime and turns its error into the exit status, with
/// `what` (`deploy`, `destroy`) before the message.
fn main_with(
    what: &str,
    f: impl std::future::Future<Output = Result<(), WorkflowError>>,
) -> ExitCode {
    let runtime = match divert_core::process::runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("divert {what}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("divert {what}: {e}");
            e.exit_code()
        }
    }
}
