//! The test control plane's certificates and keys, made fresh for each
//! cluster: one CA, the API server's serving certificate, client certificates
//! for the admin and the controller manager, and the service-account signing
//! key. ECDSA P-256 throughout (rcgen with ring).
//!
//! The API server authenticates clients by certificate (`--client-ca-file`):
//! the subject's CN is the user and each O a group, so the admin certificate
//! carries `O=system:masters` and the controller manager's
//! `CN=system:kube-controller-manager`, the user its default RBAC role names.
//! The real node's agents get theirs the same way: the kubelet
//! `CN=system:node:<node>, O=system:nodes` (the Node authorizer and the
//! NodeRestriction admission plugin hold it to its own node and pods),
//! kube-proxy `CN=system:kube-proxy` and the scheduler
//! `CN=system:kube-scheduler`; the API server dials the kubelets (exec,
//! logs) with a certificate of its own.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::kubelet::NODE_NAME;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};

/// A certificate and its key, written as PEM files.
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything the control plane's processes and clients are started with.
pub struct Pki {
    pub ca: PathBuf,
    pub apiserver: Pair,
    pub admin: Pair,
    pub controller_manager: Pair,
    pub scheduler: Pair,
    /// The real node's kubelet ([`NODE_NAME`]'s), and its kube-proxy.
    pub node: Pair,
    pub kube_proxy: Pair,
    /// The API server's client certificate toward the kubelets.
    pub kubelet_client: Pair,
    /// The service-account token signing key, and its public half, which
    /// verifies the tokens.
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
}

/// Errors while making the certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Makes every certificate in `dir`. The API server's certificate is valid
/// for `names` (DNS names) and `ips`.
pub fn generate(dir: &Path, names: &[&str], ips: &[IpAddr]) -> Result<Pki, PkiError> {
    let write = |file: &str, pem: String| -> Result<PathBuf, PkiError> {
        let path = dir.join(file);
        std::fs::write(&path, pem).map_err(|source| PkiError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    };

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = subject("divert-test-ca", None);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, ca_key)?;
    let ca_path = write("ca.crt", ca.pem())?;

    let leaf = |file: &str,
                cn: &str,
                org: Option<&str>,
                usage: ExtendedKeyUsagePurpose,
                sans: Vec<SanType>|
     -> Result<Pair, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(cn, org);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &ca)?;
        Ok(Pair {
            cert: write(&format!("{file}.crt"), cert.pem())?,
            key: write(&format!("{file}.key"), key.serialize_pem())?,
        })
    };

    let mut sans = Vec::new();
    for n in names {
        sans.push(SanType::DnsName(rcgen::string::Ia5String::try_from(*n)?));
    }
    sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let apiserver = leaf(
        "apiserver",
        "kube-apiserver",
        None,
        ExtendedKeyUsagePurpose::ServerAuth,
        sans,
    )?;
    let client = |file: &str, cn: &str, org: Option<&str>| {
        leaf(
            file,
            cn,
            org,
            ExtendedKeyUsagePurpose::ClientAuth,
            Vec::new(),
        )
    };
    let admin = client("admin", "divert-test-admin", Some("system:masters"))?;
    let controller_manager = client("controller-manager", "system:kube-controller-manager", None)?;
    let scheduler = client("scheduler", "system:kube-scheduler", None)?;
    let node = client(
        "node",
        &format!("system:node:{NODE_NAME}"),
        Some("system:nodes"),
    )?;
    let kube_proxy = client("kube-proxy", "system:kube-proxy", None)?;
    let kubelet_client = client(
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        Some("system:masters"),
    )?;
    let sa = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let service_account_key = write("service-account.key", sa.serialize_pem())?;
    let service_account_pub = write("service-account.pub", sa.public_key_pem())?;

    Ok(Pki {
        ca: ca_path,
        apiserver,
        admin,
        controller_manager,
        scheduler,
        node,
        kube_proxy,
        kubelet_client,
        service_account_key,
        service_account_pub,
    })
}

fn subject(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

/// A kubeconfig that reaches `server` as the holder of `pair`.
pub fn kubeconfig(server: &str, ca: &Path, pair: &Pair) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: divert-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: divert-test
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: divert-test
  context:
    cluster: divert-test
    user: divert-test
current-context: divert-test
",
        ca = ca.display(),
        cert = pair.cert.display(),
        key = pair.key.display(),
    )
}
