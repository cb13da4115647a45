//! `divert inject` as users run it: over the example manifests in
//! deploy/examples, on its own output, and with bad input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, PodSpec, Service};
use serde_yaml_ng::Value;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

/// `divert inject` as a cluster's install makes it: with the controller's
/// CA, which the injected proxies verify the controller with.
fn divert(args: &[&str], stdin: Option<&str>) -> Output {
    let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/controller-ca.pem");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_divert"));
    cmd.args(args);
    if args.first() == Some(&"inject") && !args.contains(&"--controller-ca") {
        cmd.arg("--controller-ca").arg(ca);
    }
    divert_with(cmd, stdin)
}

fn divert_with(mut cmd: Command, stdin: Option<&str>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run divert");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin.unwrap_or("").as_bytes())
        .expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("wait for divert")
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn env(spec: &PodSpec, container: &str, name: &str) -> Option<String> {
    spec.containers
        .iter()
        .find(|c| c.name == container)?
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)?
        .value
        .clone()
}

#[test]
fn injects_the_examples_idempotently() {
    let files = [
        "movies-staging.yaml",
        "movies-alice.yaml",
        "movies-bob.yaml",
    ];
    let paths: Vec<String> = files
        .iter()
        .map(|f| examples().join(f).display().to_string())
        .collect();
    let args: Vec<&str> = ["inject"]
        .into_iter()
        .chain(paths.iter().map(String::as_str))
        .collect();
    let out = divert(&args, None);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let mut input = Vec::new();
    for path in &paths {
        input.extend(docs(&std::fs::read_to_string(path).expect("read example")));
    }
    let output = docs(&stdout);
    assert_eq!(
        input.len(),
        output.len(),
        "one document out per document in"
    );

    let mut deployments = Vec::new();
    for (before, after) in input.iter().zip(&output) {
        assert_eq!(kind(before), kind(after));
        match kind(after) {
            "Deployment" => {
                let d: Deployment = serde_yaml_ng::from_value(after.clone()).expect("a Deployment");
                deployments.push(d);
            }
            "Service" => {
                assert_eq!(before, after, "a Service changed");
                let _: Service = serde_yaml_ng::from_value(after.clone()).expect("a Service");
            }
            "Namespace" => {
                assert_eq!(before, after, "a Namespace changed");
                let _: Namespace = serde_yaml_ng::from_value(after.clone()).expect("a Namespace");
            }
            "Ingress" => assert_eq!(before, after, "an Ingress changed"),
            other => panic!("unexpected {other} in the examples"),
        }
    }
    assert_eq!(deployments.len(), 6, "4 in staging, 1 in alice, 1 in bob");
    for d in &deployments {
        let name = d.metadata.name.clone().unwrap_or_default();
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let template = d.spec.as_ref().expect("spec").template.clone();
        let annotations = template.metadata.unwrap_or_default().annotations;
        assert_eq!(
            annotations
                .as_ref()
                .and_then(|a| a.get("divert.dev/injected"))
                .map(String::as_str),
            Some(env!("CARGO_PKG_VERSION")),
            "{ns}/{name}"
        );
        let spec = template.spec.expect("pod spec");
        let init: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(init, ["divert-init", "divert-proxy"], "{ns}/{name}");
        let searches = spec
            .dns_config
            .as_ref()
            .and_then(|d| d.searches.clone())
            .unwrap_or_default();
        if ns == "alice" || ns == "bob" {
            // movies-alice.yaml's Namespace makes alice a divert namespace
            // (and movies-bob.yaml's bob).
            assert_eq!(searches, ["staging.svc.cluster.local"]);
            assert_eq!(
                env(&spec, &name, "DIVERT_SHARED_NAMESPACE").as_deref(),
                Some("staging")
            );
            assert_eq!(
                env(&spec, &name, "OKTETO_DIVERTED_ENVIRONMENT").as_deref(),
                Some(ns.as_str())
            );
        } else {
            assert!(searches.is_empty(), "{ns}/{name}: {searches:?}");
            assert_eq!(env(&spec, &name, "DIVERT_SHARED_NAMESPACE"), None);
        }
    }

    // Its own output, from standard input, comes back unchanged.
    let again = divert(&["inject", "-"], Some(&stdout));
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&again.stdout), stdout);
    let notes = String::from_utf8_lossy(&again.stderr);
    assert_eq!(notes.matches("already injected").count(), 6, "{notes}");

    // A directory reads its YAML files, in name order (alice first).
    let dir = divert(&["inject", &examples().display().to_string()], None);
    assert!(dir.status.success());
    let from_dir = docs(&String::from_utf8_lossy(&dir.stdout));
    assert_eq!(from_dir.len(), output.len());
    assert_eq!(from_dir[0]["metadata"]["name"].as_str(), Some("alice"));
}

#[test]
fn flags_choose_namespace_and_settings() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: app\n    image: app:1\n";
    let out = divert(
        &[
            "inject",
            "--namespace",
            "bob",
            "--shared-namespace",
            "staging",
            "--image",
            "registry.example/divert:dev",
            "--legacy-sidecar",
            "--proxy-log-level",
            "debug",
            "--no-validate",
        ],
        Some(pod),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = docs(&String::from_utf8_lossy(&out.stdout)).remove(0);
    let pod: k8s_openapi::api::core::v1::Pod = serde_yaml_ng::from_value(doc).expect("a Pod");
    let spec = pod.spec.expect("spec");
    assert_eq!(spec.containers[0].name, "divert-proxy");
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some("registry.example/divert:dev")
    );
    let args = spec.containers[0].args.clone().unwrap_or_default();
    assert!(
        args.ends_with(&["--log-level".into(), "debug".into()]),
        "{args:?}"
    );
    let init_args = spec.init_containers.clone().unwrap_or_default()[0]
        .args
        .clone()
        .unwrap_or_default();
    assert!(
        !init_args.iter().any(|a| a == "--validate"),
        "{init_args:?}"
    );
    assert_eq!(
        env(&spec, "app", "DIVERT_DIVERTED_NAMESPACE").as_deref(),
        Some("bob")
    );
}

#[test]
fn bad_input_and_flags() {
    let bad_annotation = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: staging}\nspec:\n  template:\n    metadata:\n      annotations: {divert.dev/skip-outbound-cidrs: 10.0.0.0/40}\n    spec:\n      containers: [{name: a, image: a:1}]\n";
    let out = divert(&["inject"], Some(bad_annotation));
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty(), "nothing is written on error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("standard input: document 2: Deployment staging/d: annotation divert.dev/skip-outbound-cidrs"),
        "{stderr}"
    );

    let out = divert(&["inject"], Some("a: 1\n---\nb: [\n"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("standard input: document 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = divert(&["inject", "/nonexistent/app.yaml"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/app.yaml"));

    // Without the controller's CA the proxies could not verify it.
    let mut bare = Command::new(env!("CARGO_BIN_EXE_divert"));
    bare.arg("inject");
    let out = divert_with(bare, Some(""));
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--controller-ca") && stderr.contains("divert-ca"),
        "{stderr}"
    );

    for (flag, value) in [
        ("--shared-namespace", "Staging"),
        ("--image-pull-policy", "Sometimes"),
        ("--controller-url", "controller:8086"),
        ("--proxy-port", "http"),
    ] {
        let out = divert(&["inject", flag, value], Some(""));
        assert_eq!(out.status.code(), Some(64), "{flag} {value}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(flag),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
