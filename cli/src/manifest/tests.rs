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
    match read(path, "alice", &BTreeMap::new(), &env) {
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
    assert_eq!(m.deploy[0].command, "echo prod-copy bob");
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
