//! `divert inject`: adds divert init and the proxy to the pod templates of
//! manifests, as the webhook would, for clusters without it or to review the
//! change (`divert inject app.yaml | kubectl apply -f -`).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use divert_inject::Settings;
use divert_inject::manifest::{self, Change, Options};

use divert_core::names;
use divert_core::process::EXIT_USAGE;

#[derive(Args, Debug)]
#[command(after_help = "\
Reads YAML or JSON (several documents separated by ---) from the files, the \
.yaml, .yml and .json files of the directories, or standard input (no \
argument, or -), and writes every document to standard output as YAML. The \
pod templates of Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, \
ReplicationControllers, Jobs and CronJobs are injected, also inside a List; \
every other object is written back unchanged. Comments are not kept, nor \
anchors or quoting styles; keys keep their order. Objects left alone (opted \
out, host network, another mesh, already injected) are named on stderr.

A Namespace among the input labelled divert.dev/shared-namespace=S makes \
the objects in it divert-namespace objects of S.

Exit status: 0 on success, 64 for a bad flag or annotation, 1 for input that \
cannot be read. Nothing is written unless every document was handled.")]
pub struct InjectArgs {
    /// Files or directories to read; none, or -, reads standard input.
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,

    /// The namespace of every object (default: each object's
    /// metadata.namespace, else `default`).
    #[arg(long, short = 'n', value_name = "NS")]
    namespace: Option<String>,

    /// Treat the objects' namespace as a divert namespace of this shared
    /// namespace: its services go on the DNS search path and the app
    /// containers learn both names from their environment.
    #[arg(long, value_name = "NS")]
    shared_namespace: Option<String>,

    /// The image of divert-init and divert-proxy (its entrypoint must be
    /// `divert`).
    #[arg(long, env = "DIVERT_IMAGE", default_value = divert_inject::DEFAULT_IMAGE)]
    image: String,

    /// The containers' imagePullPolicy (Always, IfNotPresent, Never); default:
    /// Kubernetes' own.
    #[arg(long, value_name = "POLICY")]
    image_pull_policy: Option<String>,

    /// Where the proxies stream the routing table from.
    #[arg(long, value_name = "URL", default_value_t = divert_core::names::default_controller_url())]
    controller_url: String,

    /// The CA (PEM file) of the controller's certificate, which the proxies
    /// verify it with: the `ca.crt` of the ConfigMap `divert-ca` in the
    /// controller's namespace (`kubectl -n divert get configmap divert-ca
    /// -o jsonpath='{.data.ca\.crt}'`). Required for an https:// controller.
    #[arg(long, value_name = "FILE")]
    controller_ca: Option<std::path::PathBuf>,

    /// Make the proxy the first regular container instead of a native sidecar
    /// (an init container with restartPolicy Always), for clusters before
    /// Kubernetes 1.29.
    #[arg(long)]
    legacy_sidecar: bool,

    /// The proxy's --log-level (the global --log-level is divert inject's own).
    #[arg(long, value_name = "FILTER", default_value = "info")]
    proxy_log_level: String,

    /// The cluster's DNS domain.
    #[arg(long, value_name = "DOMAIN", default_value = divert_inject::DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,

    /// Do not have divert init prove that redirection works (--validate).
    #[arg(long)]
    no_validate: bool,

    /// Where redirected outbound connections reach the proxy.
    #[arg(long, value_name = "PORT", default_value_t = names::port::PROXY)]
    proxy_port: u16,

    /// Where redirected inbound connections reach the proxy.
    #[arg(long, value_name = "PORT", default_value_t = names::port::PROXY_INBOUND)]
    inbound_port: u16,

    /// The proxy's admin port (probes, metrics).
    #[arg(long, value_name = "PORT", default_value_t = names::port::PROXY_ADMIN)]
    admin_port: u16,

    /// The proxy's UID and GID.
    #[arg(long, value_name = "UID", default_value_t = i64::from(names::PROXY_UID))]
    proxy_uid: i64,
}

impl InjectArgs {
    fn settings(&self) -> Result<Settings, String> {
        let controller_ca = match &self.controller_ca {
            None => None,
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("--controller-ca: cannot read {}: {e}", path.display()))?,
            ),
        };
        Ok(Settings {
            image: self.image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            controller_url: self.controller_url.clone(),
            controller_ca,
            proxy_port: self.proxy_port,
            inbound_port: self.inbound_port,
            admin_port: self.admin_port,
            proxy_uid: self.proxy_uid,
            native_sidecar: !self.legacy_sidecar,
            cluster_domain: self.cluster_domain.clone(),
            validate: !self.no_validate,
            log_level: self.proxy_log_level.clone(),
            ..Settings::default()
        })
    }

    /// The flag each setting comes from, for error messages.
    fn flag(field: &str) -> &'static str {
        match field {
            "image" => "--image",
            "image_pull_policy" => "--image-pull-policy",
            "controller_url" => "--controller-url",
            "controller_ca" => "--controller-ca",
            "proxy_port" => "--proxy-port",
            "inbound_port" => "--inbound-port",
            "admin_port" => "--admin-port",
            "proxy_uid" => "--proxy-uid",
            "cluster_domain" => "--cluster-domain",
            "log_level" => "--proxy-log-level",
            _ => "a flag",
        }
    }
}

/// One input: its name for messages, and its text.
struct Input {
    name: String,
    text: String,
}

pub fn main(args: InjectArgs) -> ExitCode {
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("divert inject: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(e) = settings.validate() {
        let flag = match &e {
            divert_inject::InjectError::Settings { field, .. } => InjectArgs::flag(field),
            _ => "a flag",
        };
        eprintln!("divert inject: {flag}: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    for (flag, value) in [
        ("--namespace", &args.namespace),
        ("--shared-namespace", &args.shared_namespace),
    ] {
        if let Some(value) = value
            && let Err(e) = divert_inject::check_dns_label(value)
        {
            eprintln!("divert inject: {flag}: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    }

    let inputs = match read_inputs(&args.files) {
        Ok(inputs) => inputs,
        Err(message) => {
            eprintln!("divert inject: {message}");
            return ExitCode::FAILURE;
        }
    };
    let mut documents = Vec::new();
    for input in &inputs {
        match manifest::parse_documents(&input.text) {
            Ok(docs) => {
                documents.extend(docs.into_iter().enumerate().map(|(i, d)| (input, i + 1, d)))
            }
            Err((index, e)) => {
                eprintln!("divert inject: {}: document {index}: {e}", input.name);
                return ExitCode::FAILURE;
            }
        }
    }

    let all: Vec<_> = documents.iter().map(|(_, _, d)| d.clone()).collect();
    let options = Options {
        namespace: args.namespace.clone(),
        shared_namespace: args.shared_namespace.clone(),
        divert_namespaces: manifest::divert_namespaces(&all),
    };
    for (input, index, doc) in &mut documents {
        let reports = match manifest::inject_document(doc, &options, &settings) {
            Ok(reports) => reports,
            Err(e) => {
                eprintln!("divert inject: {}: document {index}: {e}", input.name);
                return if e.is_usage() {
                    ExitCode::from(EXIT_USAGE)
                } else {
                    ExitCode::FAILURE
                };
            }
        };
        for report in reports {
            let note = match report.change {
                Change::Injected => continue,
                Change::AlreadyInjected => "already injected".to_owned(),
                Change::Skipped(reason) => format!("not injected: {reason}"),
                Change::NoTemplate => "not injected: no pod template".to_owned(),
            };
            eprintln!(
                "divert inject: {}: document {index}: {}: {note}",
                input.name, report.object
            );
        }
    }

    let docs: Vec<_> = documents.into_iter().map(|(_, _, d)| d).collect();
    let text = match manifest::render_documents(&docs) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("divert inject: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        // A closed pipe (`| head`) is not worth a message.
        if e.kind() != io::ErrorKind::BrokenPipe {
            eprintln!("divert inject: writing the output: {e}");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// An input that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {source}")]
pub struct ReadError {
    /// The file, or "standard input".
    name: String,
    #[source]
    source: io::Error,
}

fn read_inputs(files: &[PathBuf]) -> Result<Vec<Input>, ReadError> {
    if files.is_empty() {
        return Ok(vec![read_stdin()?]);
    }
    let mut inputs = Vec::new();
    for path in files {
        if path == Path::new("-") {
            inputs.push(read_stdin()?);
        } else if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|source| ReadError {
                    name: path.display().to_string(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                })
                .collect();
            entries.sort();
            for entry in entries {
                inputs.push(read_file(&entry)?);
            }
        } else {
            inputs.push(read_file(path)?);
        }
    }
    Ok(inputs)
}

fn read_file(path: &Path) -> Result<Input, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReadError {
        name: path.display().to_string(),
        source,
    })?;
    Ok(Input {
        name: path.display().to_string(),
        text,
    })
}

fn read_stdin() -> Result<Input, ReadError> {
    let mut text = String::new();
    io::stdin()
        .read_to_string(&mut text)
        .map_err(|source| ReadError {
            name: "standard input".into(),
            source,
        })?;
    Ok(Input {
        name: "standard input".into(),
        text,
    })
}
