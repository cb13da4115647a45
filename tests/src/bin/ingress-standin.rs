//! The ingress controller of the end-to-end tests: real nginx, in a pod
//! without the sidecar, configured from the cluster's Ingress objects as
//! ingress-nginx configures it (`divert_tests::ingress`). It watches
//! Ingresses, Services and EndpointSlices with its service account, writes
//! the configuration under `--dir` and starts nginx, then reloads it
//! (`nginx -s reload`) whenever the configuration changes. nginx's exit ends
//! it, so the pod runner restarts the container as a kubelet would.
//!
//! Flags: `--port 8080`, `--dir /run/ingress`, `--nginx nginx`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::process::Command;

struct Flags {
    port: u16,
    dir: PathBuf,
    nginx: String,
}

fn flags() -> Result<Flags, String> {
    let mut f = Flags {
        port: 8080,
        dir: PathBuf::from("/run/ingress"),
        nginx: "nginx".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => f.port = value.parse().map_err(|e| format!("--port {value}: {e}"))?,
            "--dir" => f.dir = PathBuf::from(value),
            "--nginx" => f.nginx = value,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(f)
}

/// A store of every `K`, and the stream that fills it.
fn watch<K>(
    client: &Client,
) -> (
    Store<K>,
    impl futures_util::Stream<Item = ()> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()).default_backoff(),
    )
    .map(|ev| {
        if let Err(e) = ev {
            eprintln!("ingress-standin: watch: {e}");
        }
    });
    (reader, stream)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let flags = match flags() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ingress-standin: {e}");
            return ExitCode::from(64);
        }
    };
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ingress-standin: no Kubernetes client: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&flags.dir) {
        eprintln!("ingress-standin: {}: {e}", flags.dir.display());
        return ExitCode::FAILURE;
    }
    let (ingresses, a) = watch::<Ingress>(&client);
    let (services, b) = watch::<Service>(&client);
    let (slices, c) = watch::<EndpointSlice>(&client);
    let events = futures_util::stream::select(futures_util::stream::select(a, b), c);
    let mut events = std::pin::pin!(events);
    let conf = flags.dir.join("nginx.conf");
    let nginx = |extra: &[&str]| {
        let mut cmd = Command::new(&flags.nginx);
        cmd.args(["-e", "stderr", "-p"])
            .arg(&flags.dir)
            .arg("-c")
            .arg(&conf)
            .args(extra);
        cmd
    };
    let mut running: Option<tokio::process::Child> = None;
    let mut written = String::new();
    loop {
        tokio::select! {
            ev = events.next() => {
                if ev.is_none() {
                    return ExitCode::FAILURE;
                }
            }
            status = async { running.as_mut()?.wait().await.ok() }, if running.is_some() => {
                eprintln!("ingress-standin: nginx exited: {status:?}");
                return ExitCode::FAILURE;
            }
        }
        let ready = ingresses.wait_until_ready();
        let listed = futures_util::future::join3(
            ready,
            services.wait_until_ready(),
            slices.wait_until_ready(),
        );
        // Nothing is served until all three kinds are listed.
        if futures_util::FutureExt::now_or_never(listed).is_none() {
            continue;
        }
        let (i, s, e) = (ingresses.state(), services.state(), slices.state());
        let i: Vec<&Ingress> = i.iter().map(|o| o.as_ref()).collect();
        let s: Vec<&Service> = s.iter().map(|o| o.as_ref()).collect();
        let e: Vec<&EndpointSlice> = e.iter().map(|o| o.as_ref()).collect();
        let rendered = divert_tests::ingress::render(&i, &s, &e, flags.port, &flags.dir);
        if rendered == written {
            continue;
        }
        if let Err(e) = std::fs::write(&conf, &rendered) {
            eprintln!("ingress-standin: {}: {e}", conf.display());
            return ExitCode::FAILURE;
        }
        written = rendered;
        match &running {
            None => match nginx(&["-g", "daemon off;"]).spawn() {
                Ok(child) => {
                    eprintln!("ingress-standin: nginx started on port {}", flags.port);
                    running = Some(child);
                }
                Err(e) => {
                    eprintln!("ingress-standin: cannot start {}: {e}", flags.nginx);
                    return ExitCode::FAILURE;
                }
            },
            Some(_) => match nginx(&["-s", "reload"]).status().await {
                Ok(s) if s.success() => eprintln!("ingress-standin: reloaded"),
                other => eprintln!("ingress-standin: reload failed: {other:?}"),
            },
        }
    }
}
