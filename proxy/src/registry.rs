//! The registry file: a YAML description of the routing table, loaded at start
//! and hot-reloaded when it changes. An edit that does not parse or validate
//! leaves the current table in place and logs the file, field and problem.
//!
//! The format is [`crate::table::TableSpec`] in YAML (camelCase fields); the
//! README documents it with a complete example.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::Tables;
use crate::table::{SpecError, Table, TableSpec};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read registry file {}: {source}; check the --registry path", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("registry file {}: field `{field}`: {problem}", path.display())]
    Invalid {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

/// Parses registry YAML. On error, returns the path of the offending field
/// (`services[1].ports[0].port`, or `.` for the document) and the problem.
pub fn parse(text: &str) -> Result<TableSpec, (String, String)> {
    // An empty file is what a reader sees halfway through an in-place rewrite;
    // taking it as "no services" would drop every route for a moment.
    if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    }) {
        return Err((
            ".".into(),
            "the file is empty; write `services: []` for a table with no services".into(),
        ));
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| (e.path().to_string(), e.inner().to_string()))
}

/// Reads a registry file and builds the table it describes (once: parsing
/// and the table's own checks are the whole validation).
pub fn load_table(path: &Path, version: u64) -> Result<Table, RegistryError> {
    let bytes = std::fs::read(path).map_err(|source| RegistryError::Read {
        path: path.to_owned(),
        source,
    })?;
    let spec = parse_file(path, &bytes)?;
    Table::build(&spec, version, None).map_err(|e| invalid(path, e))
}

fn parse_file(path: &Path, bytes: &[u8]) -> Result<TableSpec, RegistryError> {
    let text = std::str::from_utf8(bytes).map_err(|e| RegistryError::Invalid {
        path: path.to_owned(),
        field: ".".into(),
        problem: format!("not UTF-8: {e}"),
    })?;
    parse(text).map_err(|(field, problem)| RegistryError::Invalid {
        path: path.to_owned(),
        field,
        problem,
    })
}

fn invalid(path: &Path, e: SpecError) -> RegistryError {
    RegistryError::Invalid {
        path: path.to_owned(),
        field: e.path,
        problem: e.problem,
    }
}

/// How long the registry's directory must be quiet before a reload reads it.
const SETTLE: Duration = Duration::from_millis(20);

/// Watches a registry file and swaps in each valid new version of it.
pub struct Watcher {
    path: PathBuf,
    tables: Arc<Tables>,
    events: mpsc::Receiver<()>,
    last: Option<Vec<u8>>,
    // Kept alive for as long as we watch.
    _inotify: notify::RecommendedWatcher,
}

impl Watcher {
    /// Starts watching. The file's directory is watched, not the file, so that
    /// editors that replace the file and Kubernetes ConfigMap symlink swaps are
    /// both seen.
    pub fn new(path: PathBuf, tables: Arc<Tables>) -> notify::Result<Self> {
        // One pending event is enough: each reload reads the file as it is then.
        let (tx, events) = mpsc::channel(1);
        let name = path.file_name().map(|n| n.to_owned());
        let mut inotify =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                // Only changes to our file count, or to the `..data` links a
                // Kubernetes ConfigMap volume swaps; the directory may be busy.
                // Reads are not changes (each reload opens the file: reacting
                // to that would reload forever).
                let relevant = res.is_ok_and(|ev| {
                    !matches!(ev.kind, notify::EventKind::Access(_))
                        && ev.paths.iter().any(|p| {
                            p.file_name().is_some_and(|n| {
                                Some(n) == name.as_deref()
                                    || n.as_encoded_bytes().starts_with(b"..")
                            })
                        })
                });
                if relevant {
                    let _ = tx.try_send(());
                }
            })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        inotify.watch(&dir, RecursiveMode::NonRecursive)?;
        let last = std::fs::read(&path).ok();
        Ok(Watcher {
            path,
            tables,
            events,
            last,
            _inotify: inotify,
        })
    }

    pub async fn run(mut self) {
        while self.events.recv().await.is_some() {
            // A write is often several events (truncate, write, close): wait
            // until the file has been quiet briefly, then read it once.
            while let Ok(Some(())) = tokio::time::timeout(SETTLE, self.events.recv()).await {}
            self.reload().await;
        }
    }

    async fn reload(&mut self) {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the registry file; keeping the current table");
                return;
            }
        };
        if self.last.as_deref() == Some(&bytes[..]) {
            return;
        }
        // One build: `apply` checks the spec as it builds the next table.
        let result = parse_file(&self.path, &bytes)
            .and_then(|spec| self.tables.apply(&spec).map_err(|e| invalid(&self.path, e)));
        match result {
            Ok(version) => {
                let table = self.tables.load();
                tracing::info!(path = %self.path.display(), version, services = table.service_count(), "registry reloaded");
            }
            Err(e) => {
                tracing::error!("{e}; keeping the current table");
                self.tables.reject_update();
            }
        }
        // Remember even a bad version, so it is reported once, not per event.
        self.last = Some(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_field() {
        let (field, problem) =
            parse("services:\n  - name: a\n    namespace: b\n    ports:\n      - port: http\n")
                .unwrap_err();
        assert_eq!(field, "services[0].ports[0].port");
        assert!(problem.contains("invalid type"), "{problem}");

        let (field, problem) =
            parse("services: [{name: a, namespace: b, ports: [{port: 1}], colour: red}]")
                .unwrap_err();
        assert_eq!(field, "services[0].colour");
        assert!(problem.contains("colour"), "{problem}");

        let (field, _) =
            parse("services: [{name: a, namespace: b, ports: [{port: 1}], endpoints: [nope]}]")
                .unwrap_err();
        assert_eq!(field, "services[0].endpoints[0]");
    }

    #[test]
    fn semantic_errors_name_the_field_and_file() {
        let dir = std::env::temp_dir().join(format!("divert-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.yaml");
        std::fs::write(
            &path,
            "services: [{name: a, namespace: Bad, ports: [{port: 1}]}]",
        )
        .unwrap();
        let err = load_table(&path, 1).unwrap_err().to_string();
        assert!(err.contains("bad.yaml"), "{err}");
        assert!(err.contains("`services[0].namespace`"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_readme_example_is_valid() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```yaml\n").expect("a yaml block in README.md") + 8;
        let len = readme[start..].find("```").expect("end of the yaml block");
        let spec = parse(&readme[start..start + len]).expect("README example parses");
        let table = Table::build(&spec, 1, None).expect("README example is valid");
        assert_eq!(table.service_count(), 4);
        let r = table.route("127.77.0.1:8080".parse().unwrap(), Some("alice"), None);
        assert_eq!(r.to_string(), "frontend.alice:8080");
        // A port's own endpoints are used as written.
        let api = table.service("staging", "api").expect("api");
        let eps: Vec<String> = api.ports[0]
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        assert_eq!(eps, ["10.1.0.21:8080", "10.1.0.22:8081"]);
    }

    /// A Kubernetes ConfigMap volume updates by swapping a `..data` symlink to
    /// a new directory; the file itself is a symlink through it.
    #[tokio::test]
    async fn configmap_style_symlink_swap_is_seen() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("divert-configmap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..v1")).unwrap();
        let one = "services: [{name: a, namespace: s, ports: [{port: 1}]}]";
        let two = "services: [{name: a, namespace: s, ports: [{port: 1}]}, {name: b, namespace: s, ports: [{port: 2}]}]";
        std::fs::write(dir.join("..v1/registry.yaml"), one).unwrap();
        symlink("..v1", dir.join("..data")).unwrap();
        symlink("..data/registry.yaml", dir.join("registry.yaml")).unwrap();

        let proxy = crate::Proxy::start(
            crate::Config::default(),
            crate::Source::Registry(dir.join("registry.yaml")),
        )
        .unwrap();
        assert_eq!(proxy.shared.tables.load().service_count(), 1);
        let mut versions = proxy.shared.tables.subscribe();

        std::fs::create_dir_all(dir.join("..v2")).unwrap();
        std::fs::write(dir.join("..v2/registry.yaml"), two).unwrap();
        symlink("..v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();

        tokio::time::timeout(Duration::from_secs(10), versions.wait_for(|v| *v == 2))
            .await
            .expect("the swap is seen")
            .unwrap();
        assert_eq!(proxy.shared.tables.load().service_count(), 2);
        drop(proxy);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_file_is_rejected_but_an_empty_list_is_fine() {
        assert_eq!(parse("").unwrap_err().0, ".");
        assert_eq!(parse("# nothing yet\n\n").unwrap_err().0, ".");
        assert!(parse("services: []").unwrap().services.is_empty());
    }
}
