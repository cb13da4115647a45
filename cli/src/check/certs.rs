//! The webhook's certificate, judged: how long it stays valid, whether it
//! names the controller's Service, and whether the webhook configuration's
//! CA bundle trusts it (the API server refuses to call the webhook else).

use divert_core::names::object::{CONTROLLER, TLS_SECRET, WEBHOOK_CONFIGURATION};
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use super::{CheckResult, ClusterView, DAY, INSTALL, MIN_DAYS_LEFT};

/// Why the webhook's serving certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read Secret {ns}/{TLS_SECRET}: {reason}")]
    Unreadable { ns: String, reason: String },
    #[error("Secret {ns}/{TLS_SECRET} not found")]
    NoSecret { ns: String },
    #[error("Secret {ns}/{TLS_SECRET} has no tls.crt")]
    NoCrt { ns: String },
    #[error("Secret {ns}/{TLS_SECRET}: tls.crt: {source}")]
    Crt {
        ns: String,
        #[source]
        source: PemError,
    },
}

/// Why a PEM bundle holds no certificate.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("not valid PEM: {0}")]
    Invalid(String),
    #[error("no PEM CERTIFICATE in it")]
    NoCertificate,
}

/// The PEM certificates of the webhook Secret's `tls.crt`, serving
/// certificate first.
pub(super) fn serving_certificate(view: &ClusterView, ns: &str) -> Result<Vec<Pem>, CertError> {
    let secret = match &view.secret {
        Err(reason) => {
            return Err(CertError::Unreadable {
                ns: ns.to_owned(),
                reason: reason.clone(),
            });
        }
        Ok(None) => return Err(CertError::NoSecret { ns: ns.to_owned() }),
        Ok(Some(s)) => s,
    };
    let crt = secret
        .data
        .as_ref()
        .and_then(|d| d.get("tls.crt"))
        .ok_or_else(|| CertError::NoCrt { ns: ns.to_owned() })?;
    certificates(&crt.0).map_err(|source| CertError::Crt {
        ns: ns.to_owned(),
        source,
    })
}

/// The CERTIFICATE blocks of a PEM bundle (at least one).
pub(super) fn certificates(pem: &[u8]) -> Result<Vec<Pem>, PemError> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| PemError::Invalid(e.to_string()))?;
        if block.label == "CERTIFICATE" {
            out.push(block);
        }
    }
    if out.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(out)
}

/// The SAN the API server dials the webhook's Service by.
pub(super) fn service_dns_name(ns: &str) -> String {
    format!("{CONTROLLER}.{ns}.svc")
}

pub(super) const CERTIFICATE_CHECK: &str = "the webhook certificate is valid for more than 60 days";

pub(super) fn rotate_hint() -> String {
    format!("rotate it: re-run `{INSTALL}` (it makes a new certificate and caBundle)")
}

pub(super) fn certificate(
    leaf: Result<&X509Certificate, &String>,
    ns: &str,
    now: i64,
) -> CheckResult {
    let id = "webhook-certificate";
    let leaf = match leaf {
        Ok(leaf) => leaf,
        Err(e) => {
            return CheckResult::fail(
                id,
                CERTIFICATE_CHECK,
                vec![e.clone()],
                vec![format!("install or repair it: {INSTALL}")],
            );
        }
    };
    let want = service_dns_name(ns);
    let names = dns_names(leaf);
    let mut problems = Vec::new();
    let validity = validity(
        leaf.validity().not_before.timestamp(),
        leaf.validity().not_after.timestamp(),
        now,
    );
    if let Err(e) = &validity {
        problems.push(e.clone());
    }
    if !names.iter().any(|n| n.eq_ignore_ascii_case(&want)) {
        problems.push(if names.is_empty() {
            format!("it has no DNS name; the API server dials {want}")
        } else {
            format!(
                "it is not for {want} (the name the API server dials), only for {}",
                names.join(", ")
            )
        });
    }
    let subject = format!("Secret {ns}/{TLS_SECRET}: {want}");
    match (problems.is_empty(), validity) {
        (true, Ok(valid)) => {
            CheckResult::pass(id, CERTIFICATE_CHECK, vec![format!("{subject}, {valid}")])
        }
        _ => CheckResult::fail(
            id,
            CERTIFICATE_CHECK,
            problems
                .into_iter()
                .map(|p| format!("Secret {ns}/{TLS_SECRET}: {p}"))
                .collect(),
            vec![rotate_hint()],
        ),
    }
}

/// "valid until DATE (N days left)", or why not.
pub(super) fn validity(not_before: i64, not_after: i64, now: i64) -> Result<String, String> {
    let left = not_after - now;
    if left < 0 {
        let ago = days(-left);
        return Err(format!(
            "expired on {} ({ago} day{} ago)",
            crate::utc::rfc3339(not_after),
            plural(ago)
        ));
    }
    if now < not_before {
        return Err(format!(
            "not valid before {}",
            crate::utc::rfc3339(not_before)
        ));
    }
    let days_left = days(left);
    if left < MIN_DAYS_LEFT * DAY {
        return Err(format!(
            "expires on {} ({days_left} day{} left, fewer than {MIN_DAYS_LEFT})",
            crate::utc::rfc3339(not_after),
            plural(days_left)
        ));
    }
    Ok(format!(
        "valid until {} ({days_left} days left)",
        crate::utc::rfc3339(not_after)
    ))
}

/// Whole days in `secs`, to the nearest.
pub(super) fn days(secs: i64) -> i64 {
    (secs + DAY / 2).div_euclid(DAY)
}

pub(super) fn plural<N: PartialEq + From<u8>>(n: N) -> &'static str {
    if n == N::from(1) { "" } else { "s" }
}

pub(super) fn dns_names(cert: &X509Certificate) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(name) => Some((*name).to_owned()),
            _ => None,
        })
        .collect()
}

pub(super) const CA_BUNDLE_CHECK: &str = "the webhook configuration trusts the certificate's CA";

pub(super) fn ca_bundle(
    view: &ClusterView,
    leaf: Result<&X509Certificate, &String>,
    ns: &str,
    now: i64,
) -> CheckResult {
    let id = "webhook-ca-bundle";
    let config = match &view.webhook {
        Err(e) => {
            return CheckResult::fail(
                id,
                CA_BUNDLE_CHECK,
                vec![format!(
                    "cannot read MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION}: {e}"
                )],
                vec![format!(
                    "check that you may read it: kubectl get mutatingwebhookconfiguration {WEBHOOK_CONFIGURATION}"
                )],
            );
        }
        Ok(None) => {
            return CheckResult::fail(
                id,
                CA_BUNDLE_CHECK,
                vec![format!(
                    "MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION} not found: no pod is injected"
                )],
                vec![format!("install it: {INSTALL}")],
            );
        }
        Ok(Some(c)) => c,
    };
    let webhooks = config.webhooks.as_deref().unwrap_or_default();
    if webhooks.is_empty() {
        return CheckResult::fail(
            id,
            CA_BUNDLE_CHECK,
            vec![format!(
                "MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION} has no webhooks"
            )],
            vec![format!("reinstall it: {INSTALL}")],
        );
    }
    let mut detail = Vec::new();
    let mut failed = false;
    let mut service_hint = false;
    for webhook in webhooks {
        let name = &webhook.name;
        if let Some(service) = &webhook.client_config.service
            && (service.namespace != ns || service.name != CONTROLLER)
        {
            failed = true;
            service_hint = true;
            detail.push(format!(
                "webhook {name} calls Service {}/{}, not {ns}/{CONTROLLER}",
                service.namespace, service.name
            ));
        }
        let judged = match (&webhook.client_config.ca_bundle, leaf) {
            (None, _) => Err("has no caBundle".to_owned()),
            (Some(bundle), _) if bundle.0.is_empty() => Err("has no caBundle".to_owned()),
            (Some(_), Err(_)) => Err(
                "its caBundle cannot be checked: the serving certificate is unavailable".to_owned(),
            ),
            (Some(bundle), Ok(leaf)) => {
                trusts(&bundle.0, leaf, now).map_err(|e| format!("caBundle {e}"))
            }
        };
        match judged {
            Ok(how) => detail.push(format!("webhook {name}: {how}")),
            Err(why) => {
                failed = true;
                detail.push(format!("webhook {name}: {why}"));
            }
        }
    }
    if failed {
        let mut hint = vec![rotate_hint()];
        if service_hint {
            hint.push(format!(
                "or point it at the controller: kubectl edit mutatingwebhookconfiguration {WEBHOOK_CONFIGURATION}"
            ));
        }
        CheckResult::fail(id, CA_BUNDLE_CHECK, detail, hint)
    } else {
        CheckResult::pass(id, CA_BUNDLE_CHECK, detail)
    }
}

/// Whether a caBundle holds the CA that issued `leaf`: a certificate whose
/// subject is the leaf's issuer and whose key verifies the leaf's signature.
pub(super) fn trusts(bundle: &[u8], leaf: &X509Certificate, now: i64) -> Result<String, String> {
    let pems = certificates(bundle).map_err(|e| e.to_string())?;
    let issuer = leaf.issuer();
    let mut subjects = Vec::new();
    let mut same_name = false;
    for pem in &pems {
        let Ok(ca) = pem.parse_x509() else {
            continue;
        };
        subjects.push(ca.subject().to_string());
        if ca.subject().as_raw() != issuer.as_raw() {
            continue;
        }
        same_name = true;
        let verified = match leaf.verify_signature(Some(ca.public_key())) {
            Ok(()) => "which signed the certificate",
            Err(X509Error::SignatureUnsupportedAlgorithm) => {
                "the certificate's issuer (its signature algorithm is not one divert check verifies)"
            }
            Err(_) => continue,
        };
        let not_after = ca.validity().not_after.timestamp();
        let left = not_after - now;
        if left < MIN_DAYS_LEFT * DAY {
            let when = if left < 0 { "expired" } else { "expires" };
            return Err(format!(
                "CA {issuer} {when} on {} ({} days {})",
                crate::utc::rfc3339(not_after),
                days(left.abs()),
                if left < 0 { "ago" } else { "left" }
            ));
        }
        return Ok(format!("trusts CA {issuer}, {verified}"));
    }
    if same_name {
        Err(format!(
            "holds a CA named {issuer} that did not sign the certificate \
             (the certificate or the caBundle was replaced without the other)"
        ))
    } else if subjects.is_empty() {
        Err("holds no certificate that parses".to_owned())
    } else {
        Err(format!(
            "holds {}, not the certificate's issuer {issuer}",
            subjects.join("; ")
        ))
    }
}
