//! `divert deploy`: the manifest's deploy commands run into the divert
//! namespace, wired to the shared one, and its preview URLs printed. It is
//! idempotent: running it again is how a developer iterates.
//!
//! In order: read the manifest; check its driver and shared namespace (it
//! exists, runs the proxy, is not itself a divert namespace); create or
//! label the divert namespace; run the deploy commands with a kubeconfig
//! whose current namespace is the divert namespace; wait for its
//! Deployments and StatefulSets to roll out; name the pods without a proxy;
//! print the preview URLs (the controller's copies of the shared
//! namespace's Ingresses) and how to watch the requests.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use super::kubeconfig::CommandKubeconfig;
use super::namespace::{self, OptIn};
use super::{Common, WorkflowError, command_env, commands, load, main_with, rollout};
use crate::manifest::Driver;
use crate::preview::{Preview, fetch_one};
use divert_inject::SkipReason;

/// How long the preview copies may take to appear after the rollout.
const COPIES: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    common: Common,

    /// How long to wait for the namespace's Deployments and StatefulSets to
    /// roll out.
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = divert_core::duration::parse)]
    wait: Duration,

    /// Stop diverting after this long (8h, 2d): the controller removes the
    /// label and the preview copies then, and keeps the workloads. Each
    /// deploy with --ttl starts the time again.
    #[arg(long, value_name = "DURATION", value_parser = divert_core::duration::parse)]
    ttl: Option<Duration>,
}

pub fn main(args: DeployArgs) -> ExitCode {
    main_with("deploy", run(args))
}

async fn run(args: DeployArgs) -> Result<(), WorkflowError> {
    let l = load(&args.common).await?;
    let (ns, shared) = (l.namespace.as_str(), l.manifest.divert.namespace.as_str());
    if let Some(note) = namespace::check_shared(&l.client, &l.manifest.divert, ns).await? {
        eprintln!("divert deploy: note: {note}");
    }
    let expires_at = args.ttl.map(|ttl| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        crate::utc::rfc3339(i64::try_from((now + ttl).as_secs()).unwrap_or(i64::MAX))
    });
    let marks = namespace::Marks {
        expires_at: expires_at.as_deref(),
        debug: l.manifest.divert.debug,
    };
    let how = namespace::opt_in(&l.client, ns, shared, &marks, args.wait).await?;
    if let Some(t) = &expires_at {
        eprintln!("✔ {ns} diverts until {t} (divert.dev/expires-at)");
    }
    eprintln!(
        "✔ {ns} diverts from {shared} ({})",
        match how {
            OptIn::Created => "namespace created with the label divert.dev/shared-namespace",
            OptIn::Labelled => "labelled divert.dev/shared-namespace",
            OptIn::Already => "already labelled",
            OptIn::Requested =>
                "asked for with the ConfigMap divert, as you may not label namespaces, and \
                 granted by the controller",
        }
    );
    if l.manifest.divert.debug {
        eprintln!(
            "✔ debug: the proxies of pods created in {ns} from now on log every routing \
             decision (divert.dev/debug on the namespace)"
        );
    }
    let kubeconfig = CommandKubeconfig::write(args.common.kubeconfig.as_deref(), ns)?;
    let env = command_env(&args.common, &l, kubeconfig.path());
    commands::run(
        "deploy",
        &l.manifest.deploy,
        &l.dir,
        &env,
        args.common.command_timeout,
    )
    .await?;
    drop(kubeconfig);
    rollout::wait(&l.client, ns, args.wait)
        .await
        .map_err(WorkflowError::Rollout)?;
    eprintln!("✔ rolled out in {ns}");
    match rollout::uninjected(&l.client, ns).await {
        Ok(bare) => {
            let istio = bare.iter().any(|(_, m)| *m == Some(SkipReason::Istio))
                && matches!(
                    namespace::installed_driver(&l.client).await,
                    Ok(Driver::Istio)
                );
            for (pod, mesh) in bare {
                match mesh {
                    // With the istio driver, Istio's routes divert it.
                    Some(SkipReason::Istio) if istio => {}
                    Some(mesh) => {
                        eprintln!("divert deploy: warning: pod {ns}/{pod} is not diverted: {mesh}")
                    }
                    None => eprintln!(
                        "divert deploy: warning: pod {ns}/{pod} has no proxy (made before {ns} \
                         was opted in, or while the webhook was down): kubectl -n {ns} delete pod \
                         {pod}, and its owner makes it again with one"
                    ),
                }
            }
        }
        Err(e) => eprintln!("divert deploy: warning: cannot list the pods of {ns}: {e}"),
    }
    let preview = preview_with_urls(&l.client, ns, shared, args.common.timeout).await;
    print!("{}", summary(&preview));
    Ok(())
}

/// The namespace's preview, waiting up to [`COPIES`] for its URLs when the
/// shared namespace has some to copy.
async fn preview_with_urls(
    client: &kube::Client,
    ns: &str,
    shared: &str,
    timeout: Duration,
) -> Result<Preview, String> {
    let deadline = Instant::now() + COPIES;
    loop {
        let p = fetch_one(client, ns, shared, timeout).await?;
        if !p.urls.is_empty() || Instant::now() >= deadline {
            return Ok(p);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the developer reads last: the URLs, their services, the tap.
fn summary(preview: &Result<Preview, String>) -> String {
    let p = match preview {
        Ok(p) => p,
        Err(e) => return format!("(the preview URLs could not be read: {e})\n"),
    };
    let mut out = String::new();
    if p.urls.is_empty() {
        out.push_str(&format!(
            "No preview URL: {} has no Ingress or HTTPRoute whose host names it (or set \
             divert.dev/host-template on {}); requests with the header \
             baggage: okteto-divert={} reach your services from anywhere.\n",
            p.shared_namespace, p.namespace, p.namespace
        ));
    } else {
        out.push_str("Preview URLs:\n");
        for url in &p.urls {
            out.push_str(&format!("  {url}\n"));
        }
    }
    let services = if p.services.is_empty() {
        format!("none yet (everything is {}'s)", p.shared_namespace)
    } else {
        p.services.join(", ")
    };
    out.push_str(&format!("Your services: {services}\n"));
    out.push_str(&format!(
        "Watch your requests: divert tap --key {} --controller https://localhost:8086 \
         (after kubectl -n divert port-forward deploy/divert-controller 8086)\n",
        p.namespace
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preview(urls: &[&str], services: &[&str]) -> Result<Preview, String> {
        Ok(Preview {
            namespace: "alice".into(),
            shared_namespace: "staging".into(),
            urls: urls.iter().map(|s| (*s).to_owned()).collect(),
            services: services.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    #[test]
    fn the_summary_gives_the_urls_the_services_and_the_tap() {
        let text = summary(&preview(
            &["http://frontend-alice.movies.test"],
            &["frontend"],
        ));
        assert_eq!(
            text.lines().take(3).collect::<Vec<_>>(),
            [
                "Preview URLs:",
                "  http://frontend-alice.movies.test",
                "Your services: frontend"
            ]
        );
        assert!(text.contains("divert tap --key alice"), "{text}");
        let none = summary(&preview(&[], &[]));
        assert!(
            none.starts_with("No preview URL: staging has no Ingress"),
            "{none}"
        );
        assert!(none.contains("everything is staging's"), "{none}");
    }
}
