//! The kubeconfig `divert deploy` runs the manifest's commands with: the
//! user's own (from `--kubeconfig`, `KUBECONFIG` or `~/.kube/config`), with
//! the current context's namespace set to the divert namespace, so that
//! `kubectl apply -f` and `helm upgrade` land there without a `-n`. It is a
//! private file (mode 0600) in a directory of its own, removed when dropped;
//! the user's kubeconfig is never written.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use kube::config::{Kubeconfig, KubeconfigError};

/// Why the commands' kubeconfig could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigFileError {
    #[error("cannot read the kubeconfig: {0}; pass --kubeconfig FILE")]
    Read(#[source] KubeconfigError),
    #[error(
        "the kubeconfig has no current context; choose one with kubectl config use-context NAME"
    )]
    NoContext,
    #[error("cannot write a kubeconfig for the commands in {}: {source}", dir.display())]
    Write {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The file; removed (with its directory) on drop.
#[derive(Debug)]
pub struct CommandKubeconfig {
    dir: PathBuf,
    path: PathBuf,
}

impl CommandKubeconfig {
    /// The user's kubeconfig (`source`, else the default search) with the
    /// current context's namespace set to `namespace`.
    pub fn write(source: Option<&Path>, namespace: &str) -> Result<Self, KubeconfigFileError> {
        let mut config = match source {
            Some(path) => Kubeconfig::read_from(path),
            None => Kubeconfig::read(),
        }
        .map_err(KubeconfigFileError::Read)?;
        let current = config
            .current_context
            .clone()
            .ok_or(KubeconfigFileError::NoContext)?;
        let context = config
            .contexts
            .iter_mut()
            .find(|c| c.name == current)
            .and_then(|c| c.context.as_mut())
            .ok_or(KubeconfigFileError::NoContext)?;
        context.namespace = Some(namespace.to_owned());
        // JSON is YAML: every kubeconfig reader takes it.
        let text = serde_json::to_string(&config).map_err(|e| KubeconfigFileError::Write {
            dir: std::env::temp_dir(),
            source: std::io::Error::other(e),
        })?;
        let dir = unique_dir();
        let error = |source| KubeconfigFileError::Write {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir(&dir).map_err(error)?;
        let made = CommandKubeconfig {
            path: dir.join("kubeconfig"),
            dir: dir.clone(),
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&made.path)
            .map_err(error)?;
        file.write_all(text.as_bytes()).map_err(error)?;
        Ok(made)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CommandKubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    std::env::temp_dir().join(format!("divert-deploy-{}-{nanos}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commands_kubeconfig_is_the_users_with_the_divert_namespace_and_goes_away() {
        let dir = unique_dir();
        std::fs::create_dir(&dir).unwrap();
        let users = dir.join("config");
        let original = "apiVersion: v1\nkind: Config\ncurrent-context: dev\n\
             clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: ca.crt\n\
             contexts:\n- name: dev\n  context:\n    cluster: c\n    user: u\n    namespace: default\n\
             - name: other\n  context:\n    cluster: c\n    user: u\n\
             users:\n- name: u\n  user:\n    token: t\n";
        std::fs::write(&users, original).unwrap();
        let made = CommandKubeconfig::write(Some(&users), "alice").unwrap();
        let path = made.path().to_path_buf();
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let read = Kubeconfig::read_from(&path).unwrap();
        let ns = |name: &str| {
            read.contexts
                .iter()
                .find(|c| c.name == name)
                .and_then(|c| c.context.as_ref())
                .and_then(|c| c.namespace.clone())
        };
        assert_eq!(ns("dev").as_deref(), Some("alice"));
        assert_eq!(ns("other"), None);
        // Relative files are made absolute against the user's kubeconfig.
        let ca = read.clusters[0]
            .cluster
            .as_ref()
            .unwrap()
            .certificate_authority
            .clone();
        assert_eq!(ca, Some(dir.join("ca.crt").display().to_string()));
        assert_eq!(
            std::fs::read_to_string(&users).unwrap(),
            original,
            "untouched"
        );
        drop(made);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_kubeconfig_without_a_current_context_says_what_to_do() {
        let dir = unique_dir();
        std::fs::create_dir(&dir).unwrap();
        let users = dir.join("config");
        std::fs::write(&users, "apiVersion: v1\nkind: Config\n").unwrap();
        let err = CommandKubeconfig::write(Some(&users), "alice").unwrap_err();
        assert!(err.to_string().contains("use-context"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
