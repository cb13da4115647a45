//! Golden files: each `testdata/<case>.in.yaml` pod is injected and compared
//! with `<case>.out.yaml` (the injected pod, or why it was not injected) and
//! `<case>.patch.json` (the webhook's JSON patch). `DIVERT_BLESS=1 cargo test
//! -p divert-inject --test golden` rewrites them; review the diff.
//!
//! A case's settings come from a `# case: key=value ...` line in its input:
//! `namespace=NS`, `shared=S` (a divert namespace of S), `native-sidecar=false`.
//! The injector's version is written as `@VERSION@`, so a version bump does
//! not change the files.

use std::fs;
use std::path::{Path, PathBuf};

use divert_inject::{NamespaceInfo, Outcome, Settings};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

/// Every case the suite must keep.
const CASES: &[&str] = &[
    "plain",
    "init-containers",
    "dns-config",
    "divert-namespace",
    "legacy",
    "skip-annotations",
    "opted-out",
    "host-network",
    "linkerd",
    "istio",
    "already-injected",
];

/// The CA the proxies get, as `divert install` writes one (its text only
/// matters here).
const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBcTCCARegAwIBAgIUZGl2ZXJ0IHRlc3QgQ0EgKGdvbGRlbikwCgYIKoZIzj0E\n-----END CERTIFICATE-----\n";

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn bless() -> bool {
    std::env::var_os("DIVERT_BLESS").is_some_and(|v| v != "0" && !v.is_empty())
}

struct Case {
    name: String,
    input: String,
    ns: NamespaceInfo,
    settings: Settings,
}

fn load(name: &str) -> Case {
    let path = testdata().join(format!("{name}.in.yaml"));
    let input = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut ns = NamespaceInfo::shared("default");
    let mut settings = Settings {
        controller_ca: Some(CA.into()),
        ..Settings::default()
    };
    for line in input.lines() {
        let Some(directives) = line.strip_prefix("# case:") else {
            continue;
        };
        for directive in directives.split_whitespace() {
            match directive.split_once('=') {
                Some(("namespace", v)) => ns.name = v.into(),
                Some(("shared", v)) => ns.shared_namespace = Some(v.into()),
                Some(("native-sidecar", v)) => settings.native_sidecar = v == "true",
                _ => panic!("{name}: unknown directive {directive:?}"),
            }
        }
    }
    Case {
        name: name.into(),
        input,
        ns,
        settings,
    }
}

/// The injector's version and default image as placeholders.
fn normalize(value: &mut Value) {
    match value {
        Value::String(s) if s == divert_inject::VERSION => *s = "@VERSION@".into(),
        Value::String(s) if s == divert_inject::DEFAULT_IMAGE => *s = "divert:@VERSION@".into(),
        Value::Array(items) => items.iter_mut().for_each(normalize),
        Value::Object(map) => map.values_mut().for_each(normalize),
        _ => {}
    }
}

/// The files a case produces, by file name.
fn render(case: &Case) -> Vec<(String, String)> {
    let pod: Pod = serde_yaml_ng::from_str(&case.input)
        .unwrap_or_else(|e| panic!("{}: input is not a pod: {e}", case.name));
    let outcome = divert_inject::inject(&pod, &case.ns, &case.settings)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let patch = divert_inject::patch(&pod, &case.ns, &case.settings)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let out = format!("{}.out.yaml", case.name);
    let patch_file = format!("{}.patch.json", case.name);
    let injected = match outcome {
        // A meshed pod of a divert namespace: only its DNS search and
        // variables change.
        Outcome::Injected(injected) | Outcome::LeftToMesh { pod: injected, .. } => injected,
        Outcome::AlreadyInjected => {
            assert!(
                patch.is_none(),
                "{}: a patch for a pod left alone",
                case.name
            );
            return vec![(out, "# not injected: already injected\n".into())];
        }
        Outcome::Skipped(reason) => {
            assert!(
                patch.is_none(),
                "{}: a patch for a pod left alone",
                case.name
            );
            return vec![(
                out,
                format!("# not injected: skipped ({}): {reason}\n", reason.as_str()),
            )];
        }
    };
    let Some(patch) = patch else {
        panic!("{}: injected, but no patch", case.name);
    };
    check_patch(case, &pod, &injected, &patch);

    let mut pod_json = serde_json::to_value(&*injected).unwrap();
    normalize(&mut pod_json);
    let mut patch_json = serde_json::to_value(&patch).unwrap();
    normalize(&mut patch_json);
    vec![
        (out, serde_yaml_ng::to_string(&pod_json).unwrap()),
        (
            patch_file,
            serde_json::to_string_pretty(&patch_json).unwrap() + "\n",
        ),
    ]
}

fn check_patch(case: &Case, pod: &Pod, injected: &Pod, patch: &json_patch::Patch) {
    let name = &case.name;
    let want = serde_json::to_value(injected).unwrap();

    // Applied to the typed pod, the patch gives the injected pod.
    let mut doc = serde_json::to_value(pod).unwrap();
    json_patch::patch(&mut doc, patch).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        doc, want,
        "{name}: the patch does not give the injected pod"
    );

    // Applied to the pod as written (what the API server sends), it gives
    // the same pod.
    let mut raw: Value = serde_yaml_ng::from_str(&case.input).unwrap();
    json_patch::patch(&mut raw, patch).unwrap_or_else(|e| panic!("{name}: raw: {e}"));
    let reparsed: Pod = serde_json::from_value(raw).unwrap();
    assert_eq!(
        &reparsed, injected,
        "{name}: the patch on the raw pod differs"
    );

    // Injecting again changes nothing.
    match divert_inject::inject(injected, &case.ns, &case.settings).unwrap() {
        Outcome::AlreadyInjected => {}
        Outcome::LeftToMesh { pod: again, .. } => assert_eq!(&*again, injected, "{name}"),
        other => panic!("{name}: injected again: {other:?}"),
    }
    assert!(
        divert_inject::patch(injected, &case.ns, &case.settings)
            .unwrap()
            .is_none()
    );

    // Short: only additions, and no rewrite of what the pod had, except
    // the one injection must make: an app's tcpSocket probe of a redirected
    // port, which the proxy would always accept, becomes its TCP probe.
    for op in &patch.0 {
        let probe_rewrite = match op {
            json_patch::PatchOperation::Remove(r) => {
                let path = r.path.to_string();
                path.ends_with("Probe/tcpSocket") && path.starts_with("/spec/containers/")
            }
            _ => false,
        };
        assert!(
            matches!(op, json_patch::PatchOperation::Add(_)) || probe_rewrite,
            "{name}: {op}"
        );
    }
}

#[test]
fn golden_files() {
    let mut names: Vec<String> = fs::read_dir(testdata())
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".in.yaml").map(str::to_owned)
        })
        .collect();
    names.sort();
    for case in CASES {
        assert!(
            names.iter().any(|n| n == case),
            "testdata/{case}.in.yaml is missing"
        );
    }

    let mut failures = Vec::new();
    for name in &names {
        let case = load(name);
        let files = render(&case);
        let stale = format!("{name}.patch.json");
        if !files.iter().any(|(f, _)| *f == stale) && testdata().join(&stale).exists() {
            if bless() {
                fs::remove_file(testdata().join(&stale)).unwrap();
            } else {
                failures.push(format!("{stale}: the pod is not injected; remove it"));
            }
        }
        for (file, actual) in files {
            let path = testdata().join(&file);
            if bless() {
                fs::write(&path, &actual).unwrap();
                continue;
            }
            let expected = fs::read_to_string(&path).unwrap_or_default();
            if expected != actual {
                failures.push(format!(
                    "{file} differs (DIVERT_BLESS=1 rewrites it); actual:\n{actual}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
