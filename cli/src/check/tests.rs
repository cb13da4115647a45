use std::collections::BTreeSet;
use std::path::Path;

use divert_core::names::label::{
    INJECT as INJECT_LABEL, SHARED_NAMESPACE as SHARED_NAMESPACE_LABEL,
};
use k8s_openapi::ByteString;
use kube::core::ObjectList;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use super::certs::*;
use super::checks::*;
use super::fetch::*;
use super::*;

const NS: &str = "divert";
const CA_NAME: &str = "divert webhook CA (divert)";

/// A fixture file: `testdata/check/<scenario>/<file>`, else the healthy
/// install's.
fn fixture<T: DeserializeOwned>(scenario: &str, file: &str) -> T {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/check");
    let path = dir.join(scenario).join(file);
    let path = if path.exists() {
        path
    } else {
        dir.join("healthy").join(file)
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A CA and a serving certificate, PEM.
struct Tls {
    ca: String,
    cert: String,
}

fn days_from_now(days: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::days(days)
}

/// A CA called `ca_name` (valid from 400 days ago for `ca_days` from
/// now) and a certificate for `dns` it signed, valid from `from` to
/// `until` days from now.
fn tls_with(ca_name: &str, ca_days: i64, dns: &[&str], from: i64, until: i64) -> Tls {
    let ca_key = KeyPair::generate().expect("a key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.not_before = days_from_now(-400);
    ca.not_after = days_from_now(ca_days);
    let ca = CertifiedIssuer::self_signed(ca, ca_key).expect("a CA");
    let key = KeyPair::generate().expect("a key");
    let mut params =
        CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, dns.first().copied().unwrap_or("x"));
    params.not_before = days_from_now(from);
    params.not_after = days_from_now(until);
    let cert = params.signed_by(&key, &ca).expect("a certificate");
    Tls {
        ca: ca.pem(),
        cert: cert.pem(),
    }
}

fn tls(from: i64, until: i64) -> Tls {
    tls_with(
        CA_NAME,
        3650,
        &[
            "divert-controller.divert.svc",
            "divert-controller.divert.svc.cluster.local",
        ],
        from,
        until,
    )
}

fn healthy_tls() -> Tls {
    tls(-1, 365)
}

/// The cluster of `testdata/check/<scenario>`, with `tls` in the Secret
/// and the webhooks' caBundle.
fn view(scenario: &str, tls: &Tls) -> ClusterView {
    let mut secret: Secret = fixture(scenario, "secret.json");
    let data = secret.data.get_or_insert_default();
    data.insert("tls.crt".into(), ByteString(tls.cert.clone().into_bytes()));
    data.insert("ca.crt".into(), ByteString(tls.ca.clone().into_bytes()));
    let mut webhook: MutatingWebhookConfiguration =
        fixture(scenario, "mutatingwebhookconfiguration.json");
    for w in webhook.webhooks.iter_mut().flatten() {
        w.client_config.ca_bundle = Some(ByteString(tls.ca.clone().into_bytes()));
    }
    let namespaces: ObjectList<Namespace> = fixture(scenario, "namespaces.json");
    let pods: ObjectList<Pod> = fixture(scenario, "pods.json");
    ClusterView {
        deployment: Ok(Some(fixture(scenario, "deployment.json"))),
        secret: Ok(Some(secret)),
        webhook: Ok(Some(webhook)),
        namespaces: Ok(namespaces.items),
        pods: Ok(pods.items),
        proxies: Ok(fixture(scenario, "proxies.json")),
        previews: Ok(Vec::new()),
        key_drops: Ok(KeyDrops::default()),
        copies: Ok(Copies::default()),
    }
}

fn run(view: &ClusterView) -> Vec<CheckResult> {
    evaluate(view, NS, SystemTime::now())
}

fn result<'a>(results: &'a [CheckResult], id: &str) -> &'a CheckResult {
    results
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no check {id} in {results:#?}"))
}

fn failed(results: &[CheckResult]) -> Vec<&'static str> {
    results.iter().filter(|r| !r.passed).map(|r| r.id).collect()
}

fn lines(r: &CheckResult) -> String {
    r.detail
        .iter()
        .chain(&r.hint)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

#[track_caller]
fn assert_has(r: &CheckResult, needle: &str) {
    let text = lines(r);
    assert!(text.contains(needle), "{needle:?} not in:\n{text}");
}

#[test]
fn days_left_round_to_the_nearest_day() {
    assert_eq!(days(DAY * 30 - 5), 30);
    assert_eq!(days(DAY - 5), 1);
}

#[test]
fn a_healthy_install_passes_every_check() {
    let results = run(&view("healthy", &healthy_tls()));
    assert_eq!(failed(&results), Vec::<&str>::new(), "{results:#?}");
    assert_eq!(
        results.iter().map(|r| r.id).collect::<Vec<_>>(),
        [
            "controller",
            "webhook-certificate",
            "webhook-ca-bundle",
            "namespaces",
            "pods-injected",
            "proxies-connected",
            "key-propagation",
            "copies"
        ]
    );
    assert_eq!(exit_status(&results), 0);
    assert!(results.iter().all(|r| r.hint.is_empty()));
    assert_eq!(
        result(&results, "controller").detail,
        ["Deployment divert/divert-controller: 1 of 1 replicas ready, all updated"]
    );
    assert_has(
        result(&results, "webhook-certificate"),
        "divert-controller.divert.svc, valid until ",
    );
    assert_has(result(&results, "webhook-certificate"), "(365 days left)");
    assert_has(
        result(&results, "webhook-ca-bundle"),
        "webhook inject-shared.divert.dev: trusts CA CN=divert webhook CA (divert), which signed the certificate",
    );
    let namespaces = result(&results, "namespaces");
    assert_eq!(
        namespaces.detail,
        [
            "alice → staging",
            "bob → staging",
            "shared namespaces with injection (divert.dev/inject=enabled): staging",
        ]
    );
    // With the previews read, each divert namespace says what it runs and
    // where to open it.
    let mut with_previews = view("healthy", &healthy_tls());
    with_previews.previews = Ok(vec![
        crate::preview::Preview {
            namespace: "alice".into(),
            shared_namespace: "staging".into(),
            urls: vec!["https://frontend-alice.example.com".into()],
            services: vec!["frontend".into(), "rent".into()],
        },
        crate::preview::Preview {
            namespace: "bob".into(),
            shared_namespace: "staging".into(),
            urls: Vec::new(),
            services: Vec::new(),
        },
    ]);
    assert_eq!(
        result(&run(&with_previews), "namespaces").detail[..2],
        [
            "alice → staging: runs frontend, rent; https://frontend-alice.example.com",
            "bob → staging",
        ]
    );
    // Of the eight pods in alice, bob and staging, the Succeeded job, the
    // host-network agent and the opted-out pod do not count.
    assert_eq!(
        result(&results, "pods-injected").detail,
        ["5 pods in 3 opted-in namespaces, each with divert-proxy"]
    );
    // The Pending pod need not be connected yet.
    assert_eq!(
        result(&results, "proxies-connected").detail,
        ["4 running injected pods, each connected (4 proxies connected in all)"]
    );
}

#[test]
fn a_certificate_made_by_divert_install_passes() {
    let made = crate::install::generate_tls(NS, "cluster.local", 365, OffsetDateTime::now_utc())
        .expect("install makes a certificate");
    let tls = Tls {
        ca: made.ca_pem,
        cert: made.cert_pem,
    };
    let results = run(&view("healthy", &tls));
    assert_eq!(failed(&results), Vec::<&str>::new(), "{results:#?}");
}

#[test]
fn a_controller_with_no_ready_replica_fails() {
    let results = run(&view("controller-not-ready", &healthy_tls()));
    assert_eq!(failed(&results), ["controller"]);
    let r = result(&results, "controller");
    assert_eq!(
        r.detail,
        ["Deployment divert/divert-controller: 0 of 1 replicas ready"]
    );
    assert_has(r, "kubectl -n divert describe deployment divert-controller");
    assert_has(r, "divert install | kubectl apply -f -");
    assert_eq!(exit_status(&results), 1);
}

#[test]
fn a_controller_rollout_in_progress_or_scaled_to_zero_fails() {
    let mut v = view("healthy", &healthy_tls());
    if let Ok(Some(d)) = &mut v.deployment {
        d.metadata.generation = Some(3);
    }
    let r = run(&v).remove(0);
    assert!(!r.passed);
    assert_has(&r, "a rollout is in progress: 1 of 1 replicas updated");
    assert_has(
        &r,
        "kubectl -n divert rollout status deployment/divert-controller",
    );

    if let Ok(Some(d)) = &mut v.deployment {
        d.metadata.generation = Some(2);
        if let Some(spec) = &mut d.spec {
            spec.replicas = Some(0);
        }
    }
    let r = run(&v).remove(0);
    assert!(!r.passed);
    assert_has(&r, "it is scaled to 0 replicas");
    assert_has(&r, "--replicas=1");
}

#[test]
fn a_missing_or_unreadable_controller_fails_with_a_hint() {
    let mut v = view("healthy", &healthy_tls());
    v.deployment = Ok(None);
    let r = run(&v).remove(0);
    assert!(!r.passed);
    assert_has(&r, "Deployment divert/divert-controller not found");
    assert_has(&r, "install it: divert install | kubectl apply -f -");

    v.deployment = Err("403 Forbidden: deployments.apps is forbidden".into());
    let r = run(&v).remove(0);
    assert_eq!(
        r.detail,
        [
            "cannot read Deployment divert/divert-controller: 403 Forbidden: deployments.apps is forbidden"
        ]
    );
}

#[test]
fn a_certificate_expiring_within_60_days_fails_with_its_date() {
    let results = run(&view("healthy", &tls(-300, 30)));
    assert_eq!(failed(&results), ["webhook-certificate"]);
    let r = result(&results, "webhook-certificate");
    assert_has(r, "Secret divert/divert-webhook-tls: expires on ");
    assert_has(r, "(30 days left, fewer than 60)");
    assert_has(r, "re-run `divert install | kubectl apply -f -`");
}

#[test]
fn an_expired_certificate_fails() {
    let results = run(&view("healthy", &tls(-400, -1)));
    assert_eq!(failed(&results), ["webhook-certificate"]);
    let r = result(&results, "webhook-certificate");
    assert_has(r, "Secret divert/divert-webhook-tls: expired on ");
    assert_has(r, "(1 day ago)");
}

#[test]
fn a_certificate_not_yet_valid_fails() {
    let r = run(&view("healthy", &tls(2, 400))).remove(1);
    assert!(!r.passed);
    assert_has(&r, "not valid before ");
}

#[test]
fn a_certificate_for_another_name_fails() {
    let t = tls_with(CA_NAME, 3650, &["divert-controller.other.svc"], -1, 365);
    let r = run(&view("healthy", &t)).remove(1);
    assert!(!r.passed);
    assert_eq!(
        r.detail,
        [
            "Secret divert/divert-webhook-tls: it is not for divert-controller.divert.svc \
              (the name the API server dials), only for divert-controller.other.svc"
        ]
    );
}

#[test]
fn a_missing_or_broken_secret_fails() {
    let mut v = view("healthy", &healthy_tls());
    v.secret = Ok(None);
    let results = run(&v);
    assert_eq!(
        failed(&results),
        ["webhook-certificate", "webhook-ca-bundle"]
    );
    assert_has(
        result(&results, "webhook-certificate"),
        "Secret divert/divert-webhook-tls not found",
    );
    assert_has(
        result(&results, "webhook-ca-bundle"),
        "cannot be checked: the serving certificate is unavailable",
    );

    let mut v = view("healthy", &healthy_tls());
    if let Ok(Some(s)) = &mut v.secret {
        s.data
            .get_or_insert_default()
            .insert("tls.crt".into(), ByteString(b"not a certificate".to_vec()));
    }
    let r = run(&v).remove(1);
    assert_has(&r, "tls.crt: no PEM CERTIFICATE in it");
}

#[test]
fn a_ca_bundle_of_another_ca_fails() {
    let serving = healthy_tls();
    let other = tls_with("someone else's CA", 3650, &["x"], -1, 365);
    let mut v = view("healthy", &serving);
    v.webhook = view("healthy", &other).webhook;
    let results = run(&v);
    assert_eq!(failed(&results), ["webhook-ca-bundle"]);
    let r = result(&results, "webhook-ca-bundle");
    assert_has(
        r,
        "webhook inject-shared.divert.dev: caBundle holds CN=someone else's CA, \
             not the certificate's issuer CN=divert webhook CA (divert)",
    );
    assert_has(r, "webhook inject-divert.divert.dev: caBundle holds");
    assert_has(r, "rotate it: re-run `divert install | kubectl apply -f -`");
}

#[test]
fn a_ca_bundle_with_the_same_name_but_another_key_fails() {
    // What a half-done rotation leaves: a new CA of the same name.
    let serving = healthy_tls();
    let rotated = healthy_tls();
    let mut v = view("healthy", &serving);
    v.webhook = view("healthy", &rotated).webhook;
    let r = run(&v).remove(2);
    assert!(!r.passed);
    assert_has(
        &r,
        "caBundle holds a CA named CN=divert webhook CA (divert) that did not sign the certificate",
    );
}

#[test]
fn a_ca_bundle_holding_the_old_and_the_new_ca_passes() {
    let old = healthy_tls();
    let new = healthy_tls();
    let mut v = view("healthy", &new);
    if let Ok(Some(config)) = &mut v.webhook {
        for w in config.webhooks.iter_mut().flatten() {
            w.client_config.ca_bundle =
                Some(ByteString(format!("{}{}", old.ca, new.ca).into_bytes()));
        }
    }
    assert_eq!(failed(&run(&v)), Vec::<&str>::new());
}

#[test]
fn a_ca_expiring_soon_fails() {
    let t = tls_with(CA_NAME, 20, &["divert-controller.divert.svc"], -1, 365);
    let r = run(&view("healthy", &t)).remove(2);
    assert!(!r.passed);
    assert_has(&r, "caBundle CA CN=divert webhook CA (divert) expires on ");
    assert_has(&r, "(20 days left)");
}

#[test]
fn a_missing_webhook_configuration_or_ca_bundle_or_a_wrong_service_fails() {
    let mut v = view("healthy", &healthy_tls());
    v.webhook = Ok(None);
    let r = run(&v).remove(2);
    assert!(!r.passed);
    assert_has(&r, "MutatingWebhookConfiguration divert-injector not found");
    assert_has(&r, "install it: divert install | kubectl apply -f -");

    let mut v = view("healthy", &healthy_tls());
    if let Ok(Some(config)) = &mut v.webhook
        && let Some(w) = config.webhooks.as_mut().and_then(|w| w.first_mut())
    {
        w.client_config.ca_bundle = None;
        if let Some(s) = &mut w.client_config.service {
            s.namespace = "default".into();
        }
    }
    let r = run(&v).remove(2);
    assert!(!r.passed);
    assert_has(&r, "webhook inject-shared.divert.dev: has no caBundle");
    assert_has(
        &r,
        "webhook inject-shared.divert.dev calls Service default/divert-controller, not divert/divert-controller",
    );
    assert_has(&r, "webhook inject-divert.divert.dev: trusts CA");
}

#[test]
fn a_divert_namespace_whose_shared_namespace_is_missing_fails() {
    let results = run(&view("shared-namespace-missing", &healthy_tls()));
    // carol's pods are not listed by this fixture: nothing else fails.
    assert_eq!(failed(&results), ["namespaces"]);
    let r = result(&results, "namespaces");
    assert_has(
        r,
        "carol → staging-old: namespace staging-old does not exist",
    );
    assert_has(r, "alice → staging");
    assert_has(
        r,
        "create it: kubectl create namespace staging-old; or fix the label: kubectl label namespace carol divert.dev/shared-namespace=<shared namespace> --overwrite",
    );
}

#[test]
fn a_divert_namespace_of_a_divert_namespace_or_a_bad_label_fails() {
    let mut v = view("healthy", &healthy_tls());
    let label = |ns: &mut Namespace, value: &str| {
        ns.metadata
            .labels
            .get_or_insert_default()
            .insert(SHARED_NAMESPACE_LABEL.into(), value.into());
    };
    if let Ok(all) = &mut v.namespaces {
        for ns in all.iter_mut() {
            match ns.metadata.name.as_deref() {
                Some("bob") => label(ns, "alice"),
                Some("default") => label(ns, "Not_A_Name"),
                _ => {}
            }
        }
    }
    let r = run(&v).remove(3);
    assert!(!r.passed);
    assert_has(
        &r,
        "bob → alice: alice is itself a divert namespace (of staging)",
    );
    assert_has(
        &r,
        "kubectl label namespace bob divert.dev/shared-namespace=staging --overwrite",
    );
    assert_has(
        &r,
        "default: label divert.dev/shared-namespace=\"Not_A_Name\" is not a namespace name, so default is ignored",
    );
}

#[test]
fn a_shared_namespace_without_injection_is_noted_and_no_divert_namespace_is_fine() {
    let mut v = view("healthy", &healthy_tls());
    if let Ok(all) = &mut v.namespaces {
        all.retain(|ns| ns.metadata.name.as_deref() != Some("bob"));
        for ns in all.iter_mut() {
            if let Some(labels) = &mut ns.metadata.labels {
                labels.remove(INJECT_LABEL);
            }
        }
    }
    let r = run(&v).remove(3);
    assert!(r.passed, "{r:#?}");
    assert_has(
        &r,
        "alice → staging (note: staging is not labelled divert.dev/inject=enabled",
    );
    assert_has(
        &r,
        "shared namespaces with injection (divert.dev/inject=enabled): none",
    );

    if let Ok(all) = &mut v.namespaces {
        all.retain(|ns| ns.metadata.name.as_deref() != Some("alice"));
    }
    let r = run(&v).remove(3);
    assert!(r.passed, "{r:#?}");
    assert_has(&r, "no divert namespace yet");
}

#[test]
fn pods_without_the_proxy_fail_with_how_to_restart_them() {
    let results = run(&view("pod-without-proxy", &healthy_tls()));
    assert_eq!(failed(&results), ["pods-injected"]);
    let r = result(&results, "pods-injected");
    assert_eq!(
        r.detail,
        [
            "bob/scratch has no divert-proxy container",
            "staging/catalog-58d9f7c6b4-w8r2t has no divert-proxy container",
        ]
    );
    assert_eq!(
        r.hint[1..],
        [
            "delete pod bob/scratch and create it again",
            "kubectl -n staging rollout restart deployment/catalog",
        ]
    );
    assert_has(r, "pods created before their namespace was opted in");
}

#[test]
fn pods_another_mesh_injects_are_named_with_the_mesh_not_a_restart() {
    let mut v = view("pod-without-proxy", &healthy_tls());
    // bob asks Linkerd to inject; staging's catalog pod asks Istio.
    if let Ok(all) = &mut v.namespaces {
        for ns in all.iter_mut() {
            if ns.metadata.name.as_deref() == Some("bob") {
                ns.metadata
                    .annotations
                    .get_or_insert_default()
                    .insert("linkerd.io/inject".into(), "enabled".into());
            }
        }
    }
    if let Ok(pods) = &mut v.pods {
        for pod in pods.iter_mut() {
            if pod
                .metadata
                .name
                .as_deref()
                .unwrap_or_default()
                .starts_with("catalog-")
            {
                pod.metadata
                    .labels
                    .get_or_insert_default()
                    .insert("sidecar.istio.io/inject".into(), "true".into());
            }
        }
    }
    let results = run(&v);
    assert_eq!(failed(&results), ["pods-injected"]);
    let r = result(&results, "pods-injected");
    assert_eq!(r.detail.len(), 2, "{r:#?}");
    assert!(
        r.detail[0].starts_with("bob/scratch is not diverted: Linkerd injects the pod"),
        "{r:#?}"
    );
    assert!(
        r.detail[1]
            .starts_with("staging/catalog-58d9f7c6b4-w8r2t is not diverted: Istio injects the pod"),
        "{r:#?}"
    );
    assert_eq!(r.hint.len(), 1, "no restart hint: {r:#?}");
    assert_has(
        r,
        "Divert does not divert a pod that Linkerd or Istio injects",
    );
}

#[test]
fn with_the_istio_driver_istios_pods_are_routed_and_linkerds_still_named() {
    let mut v = view("pod-without-proxy", &healthy_tls());
    if let Ok(all) = &mut v.namespaces {
        for ns in all
            .iter_mut()
            .filter(|n| n.metadata.name.as_deref() == Some("bob"))
        {
            ns.metadata
                .annotations
                .get_or_insert_default()
                .insert("linkerd.io/inject".into(), "enabled".into());
        }
    }
    if let Ok(pods) = &mut v.pods {
        for pod in pods.iter_mut().filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("catalog-"))
        }) {
            pod.metadata
                .labels
                .get_or_insert_default()
                .insert("sidecar.istio.io/inject".into(), "true".into());
        }
    }
    let driver = |v: &mut ClusterView, args: &[&str]| {
        if let Ok(Some(d)) = &mut v.deployment {
            let spec = d
                .spec
                .as_mut()
                .and_then(|s| s.template.spec.as_mut())
                .expect("a pod spec");
            let args_now = spec.containers[0].args.get_or_insert_default();
            args_now.extend(args.iter().map(|a| (*a).to_owned()));
        }
    };
    driver(&mut v, &["--driver", "istio"]);
    let results = run(&v);
    let r = result(&results, "pods-injected");
    assert_eq!(r.detail.len(), 1, "{r:#?}");
    assert!(
        r.detail[0].starts_with("bob/scratch is not diverted: Linkerd injects the pod"),
        "{r:#?}"
    );

    // Without Istio's CRDs, the controller reports that it writes no route:
    // Istio's pod is named again, and the copies check says why.
    v.copies = Ok(Copies {
        problems: vec![CopyProblem {
            kind: "VirtualService".into(),
            why: "this cluster serves no VirtualService kind".into(),
            ..CopyProblem::default()
        }],
    });
    let results = run(&v);
    let r = result(&results, "pods-injected");
    assert_eq!(r.detail.len(), 2, "{r:#?}");
    assert_eq!(
        result(&results, "copies").detail,
        ["VirtualServices: this cluster serves no VirtualService kind"]
    );
    v.copies = Ok(Copies::default());

    // Without bob's pod in the mesh, the check passes and counts Istio's.
    if let Ok(all) = &mut v.namespaces {
        for ns in all.iter_mut() {
            if let Some(a) = ns.metadata.annotations.as_mut() {
                a.remove("linkerd.io/inject");
            }
        }
    }
    if let Ok(pods) = &mut v.pods {
        pods.retain(|p| p.metadata.name.as_deref() != Some("scratch"));
    }
    let results = run(&v);
    let r = result(&results, "pods-injected");
    assert!(r.passed, "{r:#?}");
    assert!(
        r.detail[0].ends_with("1 routed by Istio (the istio driver)"),
        "{r:#?}"
    );
}

#[test]
fn restart_hints_follow_the_owner() {
    let pods: ObjectList<Pod> = fixture("healthy", "pods.json");
    let hint = |name: &str| {
        let pod = pods
            .items
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no pod {name}"));
        restart_hint(pod)
    };
    assert_eq!(
        hint("rent-0"),
        "kubectl -n bob rollout restart statefulset/rent"
    );
    assert_eq!(
        hint("node-agent-7hx2v"),
        "kubectl -n staging rollout restart daemonset/node-agent"
    );
    assert_eq!(
        hint("api-5f6d7c8b9-k2m4p"),
        "kubectl -n staging rollout restart deployment/api"
    );
}

#[test]
fn pods_opted_out_are_not_expected_to_run_the_proxy() {
    let mut v = view("pod-without-proxy", &healthy_tls());
    if let Ok(pods) = &mut v.pods {
        for pod in pods.iter_mut() {
            match pod.metadata.name.as_deref() {
                Some("scratch") => {
                    pod.metadata
                        .labels
                        .get_or_insert_default()
                        .insert(INJECT_LABEL.into(), "disabled".into());
                }
                Some(n) if n.starts_with("catalog-") => {
                    pod.metadata.deletion_timestamp =
                        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                        ));
                }
                _ => {}
            }
        }
    }
    assert_eq!(failed(&run(&v)), Vec::<&str>::new());
}

#[test]
fn namespaces_opted_in_follow_the_injectors_selectors() {
    let mut namespaces: ObjectList<Namespace> = fixture("healthy", "namespaces.json");
    for ns in &mut namespaces.items {
        if ns.metadata.name.as_deref() == Some("bob") {
            ns.metadata
                .labels
                .get_or_insert_default()
                .insert(INJECT_LABEL.into(), "disabled".into());
        }
        if ns.metadata.name.as_deref() == Some("divert") {
            ns.metadata
                .labels
                .get_or_insert_default()
                .insert(INJECT_LABEL.into(), "enabled".into());
        }
    }
    assert_eq!(
        opted_in(&namespaces.items, NS),
        BTreeSet::from(["alice".to_owned(), "staging".to_owned()])
    );
}

#[test]
fn a_proxy_missing_from_the_controller_fails_naming_the_pod() {
    let results = run(&view("proxy-missing", &healthy_tls()));
    assert_eq!(failed(&results), ["proxies-connected"]);
    let r = result(&results, "proxies-connected");
    assert_eq!(
        r.detail,
        ["alice/frontend-6b5c4d9f7-qwert: its proxy is not connected"]
    );
    assert_eq!(
        r.hint[1..],
        ["kubectl -n alice logs frontend-6b5c4d9f7-qwert -c divert-proxy"]
    );
}

#[test]
fn unreadable_proxies_pods_or_namespaces_fail_those_checks() {
    let mut v = view("healthy", &healthy_tls());
    v.proxies = Err(
        "503 ServiceUnavailable: no endpoints available for service \"divert-controller:admin\""
            .into(),
    );
    let results = run(&v);
    assert_eq!(failed(&results), ["proxies-connected"]);
    let r = result(&results, "proxies-connected");
    assert_has(
        r,
        "cannot list the proxies from the controller \
             (GET /api/v1/namespaces/divert/services/divert-controller:admin/proxy/proxies): 503",
    );
    assert_has(r, "port named admin");

    let mut v = view("healthy", &healthy_tls());
    v.pods = Err("cannot list the pods of namespace alice: 403 Forbidden".into());
    assert_eq!(failed(&run(&v)), ["pods-injected", "proxies-connected"]);

    let mut v = view("healthy", &healthy_tls());
    v.namespaces = Err("403 Forbidden".into());
    assert_eq!(
        failed(&run(&v)),
        ["namespaces", "pods-injected", "proxies-connected"]
    );
}

#[test]
fn text_has_one_line_per_check_then_details_and_hints() {
    let results = vec![
        CheckResult::pass("a", "the first thing holds", vec!["found it".into()]),
        CheckResult::fail(
            "b",
            "the second thing holds",
            vec!["it does not".into(), "really".into()],
            vec!["fix it".into()],
        ),
    ];
    assert_eq!(
        render_text(&results),
        "✔ the first thing holds\n    found it\n\
             ✘ the second thing holds\n    it does not\n    really\n    hint: fix it\n\
             \n1 of 2 checks failed.\n"
    );
    assert_eq!(
        render_text(&results[..1]),
        "✔ the first thing holds\n    found it\n\nAll 1 checks passed.\n"
    );
}

#[test]
fn json_has_every_check_with_its_fields() {
    let results = run(&view("proxy-missing", &healthy_tls()));
    let json: serde_json::Value = serde_json::from_str(&render_json(NS, &results)).expect("JSON");
    assert_eq!(json["namespace"], "divert");
    assert_eq!(json["passed"], false);
    assert!(json.get("error").is_none());
    let checks = json["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 8);
    assert_eq!(checks[0]["id"], "controller");
    assert_eq!(checks[0]["name"], "the controller is running and ready");
    assert_eq!(checks[0]["passed"], true);
    assert_eq!(checks[0]["hint"], serde_json::json!([]));
    assert_eq!(checks[5]["passed"], false);
    assert_eq!(
        checks[5]["detail"],
        serde_json::json!(["alice/frontend-6b5c4d9f7-qwert: its proxy is not connected"])
    );

    let healthy = run(&view("healthy", &healthy_tls()));
    let json: serde_json::Value = serde_json::from_str(&render_json(NS, &healthy)).expect("JSON");
    assert_eq!(json["passed"], true);

    let json: serde_json::Value =
        serde_json::from_str(&render_json_error(NS, "cannot reach")).expect("JSON");
    assert_eq!(
        json,
        serde_json::json!({"namespace": "divert", "passed": false, "error": "cannot reach", "checks": []})
    );
}

fn key_drop(pod: &str, service: &str, destination: &str, count: u64, ago: u64) -> KeyDrop {
    KeyDrop {
        pod: pod.into(),
        namespace: "staging".into(),
        service: service.into(),
        destination: destination.into(),
        count,
        last_seconds: ago,
    }
}

#[test]
fn recent_key_drops_are_a_warning_naming_each_service_and_destination() {
    let mut view = view("healthy", &healthy_tls());
    view.key_drops = Ok(KeyDrops {
        drops: vec![
            key_drop("api-1", "api", "catalog.staging", 3, 5),
            key_drop("api-2", "api", "catalog.staging", 2, 40),
            key_drop("web-1", "web", "rent.staging", 9, RECENT_SECONDS + 1),
            key_drop("batch-1", "", "api.staging", 1, 0),
        ],
        unreachable: vec!["staging/old-1 (10.0.0.9:4191): no answer within 2s".into()],
    });
    let results = run(&view);
    assert_eq!(exit_status(&results), 0, "a warning is not a failure");
    let r = result(&results, "key-propagation");
    assert!(r.passed && r.warning, "{r:#?}");
    assert_eq!(
        r.detail,
        [
            "staging/batch-1 → api.staging: 1 call without the key, while serving requests with \
             one (last 0 s ago, 1 pod)",
            "staging/api → catalog.staging: 5 calls without the key, while serving requests with \
             one (last 5 s ago, 2 pods)",
            "1 proxies did not answer: staging/old-1 (10.0.0.9:4191): no answer within 2s",
        ]
    );
    assert_has(r, "gRPC: the metadata `baggage`");
    assert_has(r, "OpenTelemetry's W3C baggage propagator");
    let text = render_text(&results);
    assert!(text.contains("‼ apps pass the divert key on\n"), "{text}");
    assert!(
        text.ends_with("All 8 checks passed; 1 with a warning (‼).\n"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&render_json(NS, &results)).expect("JSON");
    assert_eq!(json["passed"], true);
    assert_eq!(json["checks"][6]["warning"], true);
    assert!(json["checks"][5].get("warning").is_none());
}

#[test]
fn old_key_drops_pass_and_an_unanswered_question_warns() {
    let mut view = view("healthy", &healthy_tls());
    view.key_drops = Ok(KeyDrops {
        drops: vec![key_drop(
            "web-1",
            "web",
            "rent.staging",
            9,
            RECENT_SECONDS + 1,
        )],
        unreachable: Vec::new(),
    });
    let r = run(&view).remove(6);
    assert!(r.passed && !r.warning, "{r:#?}");
    assert_eq!(
        r.detail,
        ["no call went out without the key in the last 3600 s"]
    );
    view.key_drops = Err("404 Not Found".into());
    let r = run(&view).remove(6);
    assert!(r.passed && r.warning, "{r:#?}");
    assert_has(&r, "404 Not Found");
}

#[test]
fn key_drops_json_is_what_the_controller_serves() {
    let drops: KeyDrops = serde_json::from_str(
        r#"{"drops":[{"pod":"api-1","namespace":"staging","service":"api",
            "destination":"catalog.staging","count":3,"lastSeconds":12}],"unreachable":[]}"#,
    )
    .expect("parses");
    assert_eq!(
        drops.drops,
        [key_drop("api-1", "api", "catalog.staging", 3, 12)]
    );
}

#[test]
fn exit_status_is_0_only_when_every_check_passed() {
    let pass = CheckResult::pass("a", "a", vec![]);
    let fail = CheckResult::fail("b", "b", vec![], vec![]);
    assert_eq!(exit_status(&[]), 0);
    assert_eq!(exit_status(&[pass.clone(), pass.clone()]), 0);
    assert_eq!(exit_status(&[pass, fail.clone()]), 1);
    assert_eq!(exit_status(&[fail]), 1);
    assert_eq!(EXIT_UNREACHABLE, 2);
}

#[test]
fn proxies_json_is_what_the_controller_serves() {
    let proxies: Vec<ConnectedProxy> = serde_json::from_str(
        r#"[{"pod":"api-1","namespace":"staging","version":"0.1.0",
                 "remoteAddr":"10.0.0.2:5000","revision":7,"connectedSeconds":12}]"#,
    )
    .expect("parses");
    assert_eq!(
        proxies,
        [ConnectedProxy {
            pod: "api-1".into(),
            namespace: "staging".into(),
            version: "0.1.0".into(),
            remote_addr: "10.0.0.2:5000".into(),
            revision: 7,
            connected_seconds: 12,
        }]
    );
}

#[test]
fn api_errors_read_as_one_line() {
    let status =
        kube::core::Status::failure("pods is forbidden: User \"dev\" cannot list", "Forbidden")
            .with_code(403);
    assert_eq!(
        describe(&kube::Error::Api(status.boxed())),
        "403 Forbidden: pods is forbidden: User \"dev\" cannot list"
    );
}

#[test]
fn copies_the_controller_could_not_make_are_a_warning_with_why() {
    let mut v = view("healthy", &healthy_tls());
    let results = run(&v);
    let r = result(&results, "copies");
    assert!(r.passed && !r.warning, "{r:#?}");
    v.copies = Ok(Copies {
        problems: vec![CopyProblem {
            kind: "VirtualService".into(),
            namespace: "staging".into(),
            name: "divert-rent".into(),
            why: "the VirtualService staging/rent-retries of the user's already routes \
                  rent.staging.svc.cluster.local"
                .into(),
        }],
    });
    let results = run(&v);
    assert!(failed(&results).is_empty(), "a warning fails nothing");
    let r = result(&results, "copies");
    assert!(r.warning, "{r:#?}");
    assert_eq!(
        r.detail,
        [
            "VirtualService staging/divert-rent is not made: the VirtualService staging/rent-retries \
          of the user's already routes rent.staging.svc.cluster.local"
        ]
    );
    assert_has(r, "never writes an object of yours");
    v.copies = Err("404 Not Found".into());
    let r = result(&run(&v), "copies").clone();
    assert!(r.warning && r.detail[0].contains("/proxy/copies"), "{r:#?}");
}
