//! The registry file: a YAML description of the routing table, loaded at start
//! and hot-reloaded when it changes. An edit that does not parse or validate
//! leaves the current table in place and logs the file, field and problem.
//!
//! The format is [`crate::table::TableSpec`] in YAML (camelCase fields);
//! `docs/registry.md` documents it with a complete example.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::table::{SpecError, Table, TableSpec};
use crate::tables::Tables;

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
    /// The directory of the file the registry path resolves to, when that
    /// is another directory (a symlink to a file kept elsewhere): watched
    /// too, since edits there make no event in the link's directory.
    target_dir: Arc<ArcSwapOption<PathBuf>>,
    // Kept alive for as long as we watch.
    inotify: notify::RecommendedWatcher,
}

/// The directory `path` is in (`.` for a bare file name).
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The directory of the file `path` resolves to, if it is not `dir` (the
/// directory of `path` itself).
fn elsewhere(path: &Path, dir: &Path) -> Option<PathBuf> {
    let target = std::fs::canonicalize(path).ok()?;
    let target_dir = target.parent()?.to_owned();
    let own = std::fs::canonicalize(dir).ok()?;
    (target_dir != own).then_some(target_dir)
}

impl Watcher {
    /// Starts watching. The file's directory is watched, not the file, so that
    /// editors that replace the file and Kubernetes ConfigMap symlink swaps are
    /// both seen.
    pub fn new(path: PathBuf, tables: Arc<Tables>) -> notify::Result<Self> {
        // One pending event is enough: each reload reads the file as it is then.
        let (tx, events) = mpsc::channel(1);
        let name = path.file_name().map(|n| n.to_owned());
        let target_dir: Arc<ArcSwapOption<PathBuf>> = Arc::default();
        let seen_target = target_dir.clone();
        let mut inotify =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                // Only changes to our file count, or to the `..data` links a
                // Kubernetes ConfigMap volume swaps; the directory may be busy.
                // Anything in a symlink target's directory counts (a reload of
                // an unchanged file is one read). Reads are not changes (each
                // reload opens the file: reacting to that would reload forever).
                let target = seen_target.load();
                let relevant = res.is_ok_and(|ev| {
                    !matches!(ev.kind, notify::EventKind::Access(_))
                        && ev.paths.iter().any(|p| {
                            p.file_name().is_some_and(|n| {
                                Some(n) == name.as_deref()
                                    || n.as_encoded_bytes().starts_with(b"..")
                            }) || target.as_deref().is_some_and(|t| p.parent() == Some(t))
                        })
                });
                if relevant {
                    let _ = tx.try_send(());
                }
            })?;
        inotify.watch(&dir_of(&path), RecursiveMode::NonRecursive)?;
        let last = std::fs::read(&path).ok();
        let mut watcher = Watcher {
            path,
            tables,
            events,
            last,
            target_dir,
            inotify,
        };
        watcher.follow_symlink();
        Ok(watcher)
    }

    /// Watches the directory the registry path resolves to, when it is
    /// another one; again after each change, since a link can be re-pointed.
    fn follow_symlink(&mut self) {
        let now = elsewhere(&self.path, &dir_of(&self.path));
        let before = self.target_dir.load_full();
        if before.as_deref() == now.as_ref() {
            return;
        }
        if let Some(old) = before.as_deref() {
            let _ = self.inotify.unwatch(old);
        }
        if let Some(new) = &now
            && let Err(e) = self.inotify.watch(new, RecursiveMode::NonRecursive)
        {
            tracing::warn!(path = %self.path.display(), target = %new.display(), error = %e, "cannot watch the registry's symlink target; edits there are not seen");
            self.target_dir.store(None);
            return;
        }
        self.target_dir.store(now.map(Arc::new));
    }

    pub async fn run(mut self) {
        while self.events.recv().await.is_some() {
            // A write is often several events (truncate, write, close): wait
            // until the file has been quiet briefly, then read it once.
            while let Ok(Some(())) = tokio::time::timeout(SETTLE, self.events.recv()).await {}
            self.follow_symlink();
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
        // Parsing and building a large table takes a while (100 000 services:
        // over a second): a blocking thread does it, off the serving path,
        // and the new table is swapped in whole.
        let (path, tables, text) = (self.path.clone(), self.tables.clone(), bytes.clone());
        let result = tokio::task::spawn_blocking(move || {
            parse_file(&path, &text)
                .and_then(|spec| tables.apply(&spec).map_err(|e| invalid(&path, e)))
        })
        .await;
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "loading the registry file failed; keeping the current table");
                return;
            }
        };
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
    fn the_documented_example_is_valid() {
        let page = include_str!("../../docs/registry.md");
        // The first YAML block of its example's section.
        let section = page
            .find("## An example")
            .expect("docs/registry.md has the example's section");
        let page = &page[section..];
        let start = page
            .find("```yaml\n")
            .expect("a yaml block in docs/registry.md")
            + 8;
        let len = page[start..].find("```").expect("end of the yaml block");
        let spec = parse(&page[start..start + len]).expect("the documented example parses");
        let table = Table::build(&spec, 1, None).expect("the documented example is valid");
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
            crate::shared::Config::default(),
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

    /// A registry path that is a symlink to a file in another directory,
    /// edited in place there: the edit makes no event in the link's
    /// directory, so the target's is watched too, and followed when the
    /// link is pointed elsewhere.
    #[tokio::test]
    async fn a_symlink_to_a_file_edited_elsewhere_is_followed() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("divert-symlink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["links", "a", "b"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let service = |n: usize| {
            let list: Vec<String> = (0..n)
                .map(|i| format!("{{name: s{i}, namespace: s, ports: [{{port: {}}}]}}", i + 1))
                .collect();
            format!("services: [{}]", list.join(", "))
        };
        std::fs::write(dir.join("a/registry.yaml"), service(1)).unwrap();
        std::fs::write(dir.join("b/registry.yaml"), service(3)).unwrap();
        let link = dir.join("links/registry.yaml");
        symlink(dir.join("a/registry.yaml"), &link).unwrap();

        let proxy = crate::Proxy::start(
            crate::shared::Config::default(),
            crate::Source::Registry(link.clone()),
        )
        .unwrap();
        let mut versions = proxy.shared.tables.subscribe();
        let wait = |v: u64, versions: &mut tokio::sync::watch::Receiver<u64>| {
            let mut versions = versions.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(10), versions.wait_for(|n| *n >= v))
                    .await
                    .expect("the change is seen within 10 s")
                    .map(|_| ())
                    .unwrap();
            }
        };
        // Edited in place where it lives.
        std::fs::write(dir.join("a/registry.yaml"), service(2)).unwrap();
        wait(2, &mut versions).await;
        assert_eq!(proxy.shared.tables.load().service_count(), 2);
        // The link pointed at another file, then that one edited.
        let tmp = dir.join("links/registry.tmp");
        symlink(dir.join("b/registry.yaml"), &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        wait(3, &mut versions).await;
        assert_eq!(proxy.shared.tables.load().service_count(), 3);
        std::fs::write(dir.join("b/registry.yaml"), service(4)).unwrap();
        wait(4, &mut versions).await;
        assert_eq!(proxy.shared.tables.load().service_count(), 4);
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
