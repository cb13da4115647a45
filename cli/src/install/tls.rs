//! The webhook's certificate: a private CA (its key is thrown away once it
//! has signed) and a serving certificate for the controller's Service, both
//! ECDSA P-256, made afresh on every `divert install`.

use std::hash::{DefaultHasher, Hash, Hasher};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;

use divert_core::names::object::CONTROLLER;

/// The webhook's certificate material, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The CA: the webhook's `caBundle` and the Secret's `ca.crt`.
    pub ca_pem: String,
    /// The serving certificate (`tls.crt`).
    pub cert_pem: String,
    /// The serving certificate's private key, PKCS#8 (`tls.key`).
    pub key_pem: String,
}

impl Tls {
    /// A short checksum of all of it: changes whenever any part does.
    pub fn checksum(&self) -> String {
        let mut h = DefaultHasher::new();
        (&self.ca_pem, &self.cert_pem, &self.key_pem).hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

/// The DNS names the API server may dial the webhook by:
/// `divert-controller.<ns>.svc` (what it uses) and the fully qualified name.
pub fn service_dns_names(namespace: &str, cluster_domain: &str) -> [String; 2] {
    let svc = format!("{CONTROLLER}.{namespace}.svc");
    let fqdn = format!("{svc}.{cluster_domain}");
    [svc, fqdn]
}

/// A fresh CA and a serving certificate it signed, valid from a few minutes
/// before `now` (clock skew) for `days` days.
pub fn generate_tls(
    namespace: &str,
    cluster_domain: &str,
    days: u32,
    now: OffsetDateTime,
) -> Result<Tls, rcgen::Error> {
    let not_before = now - time::Duration::minutes(5);
    let not_after = now + time::Duration::days(i64::from(days));

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::OrganizationName, "divert");
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("divert webhook CA ({namespace})"),
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca = CertifiedIssuer::self_signed(ca, ca_key)?;

    let [svc, fqdn] = service_dns_names(namespace, cluster_domain);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![svc.clone(), fqdn])?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "divert");
    params.distinguished_name.push(DnType::CommonName, svc);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&key, &ca)?;

    Ok(Tls {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_follows_the_material() {
        let tls = Tls {
            ca_pem: "a".into(),
            cert_pem: "b".into(),
            key_pem: "c".into(),
        };
        let mut other = tls.clone();
        other.key_pem.push('d');
        assert_eq!(tls.checksum(), tls.clone().checksum());
        assert_ne!(tls.checksum(), other.checksum());
    }
}
