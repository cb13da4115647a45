//! `divert install`: print every manifest the cluster needs (the `divert`
//! namespace, the controller's least-privilege RBAC and the admission
//! policies that narrow it ([`policy`]), its Deployment and Service, the TLS
//! Secret, the CA's public ConfigMap and the MutatingWebhookConfiguration) as
//! one multi-document YAML stream for `kubectl apply -f -`.
//!
//! Each object is built from its k8s-openapi type and serialized, so it is
//! well-formed by construction. The webhook's certificate is generated afresh
//! on every run: a private CA (its key is thrown away once it has signed) and
//! a serving certificate for `divert-controller.<namespace>.svc`, both ECDSA
//! P-256. The CA goes into the webhook's `caBundle`, the serving pair into the
//! Secret, and a checksum of both into the controller's pod template, so that
//! applying a new certificate also restarts the controller onto it.

mod manifests;
pub mod policy;
mod tls;

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use divert_core::names::{check_dns_label, parse_dns_label};
use time::OffsetDateTime;

pub use manifests::{DRIVER_KEY, render};

use crate::manifest::Driver;
pub use tls::{Tls, generate_tls, service_dns_names};

/// The image the controller runs by default: this very version of `divert`.
const DEFAULT_IMAGE: &str = concat!("divert:", env!("CARGO_PKG_VERSION"));

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// The image the controller runs (and, through the injector, the
    /// sidecars): build it with deploy/image.sh.
    #[arg(long, default_value = DEFAULT_IMAGE, value_name = "IMAGE", value_parser = parse_image)]
    image: String,

    /// The namespace the controller is installed into.
    #[arg(long, default_value = "divert", value_name = "NS", value_parser = parse_dns_label)]
    namespace: String,

    /// How long the generated webhook certificate (and its CA) stay valid.
    /// Run `divert install` again before then.
    #[arg(long, default_value_t = 365, value_name = "DAYS",
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    cert_validity_days: u32,

    /// The cluster's DNS domain, for the certificate's fully qualified name.
    #[arg(long, default_value = "cluster.local", value_name = "DOMAIN", value_parser = parse_domain)]
    cluster_domain: String,

    /// How pods that Istio injects are routed: `divert` (they are left to
    /// Istio) or `istio` (the controller writes Istio's VirtualServices for
    /// them, as Okteto's istio driver does; docs/mesh.md).
    #[arg(long, default_value = "divert", value_name = "DRIVER", value_parser = Driver::parse_installed)]
    driver: Driver,
}

/// What `divert install` failed at, past flag parsing.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot generate the webhook certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot serialize the manifests: {0}")]
    Serialize(#[from] serde_yaml_ng::Error),
    #[error("cannot write the manifests: {0}")]
    Write(#[from] std::io::Error),
}

pub fn main(args: InstallArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("divert install: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &InstallArgs) -> Result<(), InstallError> {
    let tls = generate_tls(
        &args.namespace,
        &args.cluster_domain,
        args.cert_validity_days,
        OffsetDateTime::now_utc(),
    )?;
    let yaml = render(args, &tls)?;
    // Written (not println!) so a closed pipe is an error, not a panic.
    let mut out = std::io::stdout().lock();
    out.write_all(yaml.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// A `--cluster-domain` that is not a DNS domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "must be a DNS domain such as cluster.local: dot-separated labels of lowercase letters, digits or '-', no trailing dot"
)]
pub struct DomainError;

/// An `--image` that is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be an image reference such as divert:0.1.0 or registry.example/divert:tag")]
pub struct ImageError;

/// A DNS domain such as `cluster.local`: dot-separated labels, at most 253.
fn parse_domain(s: &str) -> Result<String, DomainError> {
    if !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| check_dns_label(l).is_ok()) {
        Ok(s.to_owned())
    } else {
        Err(DomainError)
    }
}

/// An image reference: anything Kubernetes would take, loosely (no spaces).
fn parse_image(s: &str) -> Result<String, ImageError> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(ImageError)
    } else {
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_dot_separated_labels() {
        for ok in ["cluster.local", "k8s", "corp.example.com"] {
            assert!(parse_domain(ok).is_ok(), "{ok}");
        }
        for bad in ["", "cluster.local.", ".local", "a..b", "Cluster.local"] {
            assert!(parse_domain(bad).is_err(), "{bad}");
        }
        assert!(parse_image("divert:0.1.0").is_ok());
        assert!(parse_image("").is_err());
        assert!(parse_image("divert 0.1").is_err());
    }
}
