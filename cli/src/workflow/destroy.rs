//! `divert destroy`: the manifest's destroy commands run in the divert
//! namespace (with the same kubeconfig and variables as `divert deploy`),
//! then the namespace stops diverting (its label removed, which makes the
//! controller delete the preview copies, awaited here), and with
//! `--delete-namespace` the namespace goes too.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use divert_core::names::label::{MANAGED_BY, MANAGED_BY_CONTROLLER};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};

use super::kubeconfig::CommandKubeconfig;
use super::namespace;
use super::{Common, WorkflowError, command_env, commands, load, main_with};

#[derive(Args, Debug)]
pub struct DestroyArgs {
    #[command(flatten)]
    common: Common,

    /// Delete the divert namespace too (with everything in it).
    #[arg(long)]
    delete_namespace: bool,

    /// How long to wait for the preview copies (and the namespace) to go.
    #[arg(long, default_value = "2m", value_name = "DURATION", value_parser = divert_core::duration::parse)]
    wait: Duration,
}

pub fn main(args: DestroyArgs) -> ExitCode {
    main_with("destroy", run(args))
}

async fn run(args: DestroyArgs) -> Result<(), WorkflowError> {
    let l = load(&args.common).await?;
    let (ns, shared) = (l.namespace.as_str(), l.manifest.divert.namespace.as_str());
    let kubeconfig = CommandKubeconfig::write(args.common.kubeconfig.as_deref(), ns)?;
    let env = command_env(&args.common, &l, kubeconfig.path());
    commands::run(
        "destroy",
        &l.manifest.destroy,
        &l.dir,
        &env,
        args.common.command_timeout,
    )
    .await?;
    drop(kubeconfig);
    if namespace::opt_out(&l.client, ns, shared).await? {
        eprintln!("✔ {ns} no longer diverts from {shared}");
        copies_gone(&l.client, ns, args.wait)
            .await
            .map_err(WorkflowError::Rollout)?;
        eprintln!("✔ the preview copies in {ns} are gone");
    } else {
        eprintln!("{ns} did not divert from {shared}: nothing to undo");
    }
    if args.delete_namespace {
        namespace::delete(&l.client, ns, args.wait).await?;
        eprintln!("✔ namespace {ns} deleted");
    }
    Ok(())
}

/// Waits until `ns` holds no Ingress or Service the controller made.
async fn copies_gone(client: &kube::Client, ns: &str, limit: Duration) -> Result<(), String> {
    let managed = ListParams::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_CONTROLLER}"));
    let deadline = Instant::now() + limit;
    loop {
        let ingresses = Api::<Ingress>::namespaced(client.clone(), ns)
            .list(&managed)
            .await;
        let services = Api::<Service>::namespaced(client.clone(), ns)
            .list(&managed)
            .await;
        let left = match (ingresses, services) {
            (Ok(i), Ok(s)) => i.items.len() + s.items.len(),
            (Err(e), _) | (_, Err(e)) => {
                return Err(format!("cannot list the copies in {ns}: {e}"));
            }
        };
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{left} preview copies are still in {ns} after {limit:?}: is the controller \
                 running? (divert check)"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
