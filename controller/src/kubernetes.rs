//! The Kubernetes client: the controller and every `divert` command find
//! their cluster one way ([`config`]), and say the same when they cannot.
//! The watches are in [`crate::watches`].

use std::path::{Path, PathBuf};

use kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Config};

/// Why no Kubernetes client could be made: the one answer for the
/// controller and every `divert` command, which all find their cluster
/// the same way ([`config`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot load the in-cluster Kubernetes config: {0}; a pod needs its service account \
         token mounted (automountServiceAccountToken), or pass --kubeconfig"
    )]
    InCluster(#[source] InClusterError),
    #[error("cannot read kubeconfig {}: {source}; pass --kubeconfig with a readable file", path.display())]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "kubeconfig {}: {source}; it needs a current context with a cluster \
         (kubectl config current-context), or pass --kubeconfig",
        path.as_ref().map_or("(KUBECONFIG or ~/.kube/config)".into(), |p| p.display().to_string())
    )]
    Kubeconfig {
        /// The file given, or `None` for the default search.
        path: Option<PathBuf>,
        #[source]
        source: KubeconfigError,
    },
    #[error("cannot create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

impl Error {
    fn kubeconfig(path: Option<&Path>, source: KubeconfigError) -> Self {
        match source {
            KubeconfigError::ReadConfig(source, read) => Error::ReadKubeconfig {
                path: path.map_or(read, Path::to_path_buf),
                source,
            },
            source => Error::Kubeconfig {
                path: path.map(Path::to_path_buf),
                source,
            },
        }
    }
}

/// How to reach the API server: from `kubeconfig` when given; else the
/// in-cluster config when running in a pod (`KUBERNETES_SERVICE_HOST`
/// set); else the default kubeconfig (`KUBECONFIG`, then
/// `~/.kube/config`). The controller and every `divert` command find their
/// cluster here; each then sets its own timeouts and retries.
pub async fn config(kubeconfig: Option<&Path>) -> Result<Config, Error> {
    let options = KubeConfigOptions::default();
    match kubeconfig {
        Some(path) => {
            let error = |source| Error::kubeconfig(Some(path), source);
            let file = Kubeconfig::read_from(path).map_err(error)?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(error)
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            Config::incluster().map_err(Error::InCluster)
        }
        None => Config::from_kubeconfig(&options)
            .await
            .map_err(|source| Error::kubeconfig(None, source)),
    }
}

/// A client for the API server, found by [`config`], with kube's defaults
/// (retrying 429, 503 and 504 answers): the controller's, and the tools'
/// that watch.
pub async fn client(kubeconfig: Option<PathBuf>) -> Result<Client, Error> {
    let config = config(kubeconfig.as_deref()).await?;
    Client::try_from(config).map_err(Error::Client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_kubeconfig_says_which_file_and_what_to_do() {
        let path = std::env::temp_dir().join("divert-no-such-kubeconfig");
        let Err(err) = client(Some(path.clone())).await else {
            panic!("a client from a missing file");
        };
        let msg = err.to_string();
        assert!(matches!(err, Error::ReadKubeconfig { .. }), "{msg}");
        assert_eq!(msg.matches("divert-no-such-kubeconfig").count(), 1, "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("--kubeconfig"), "{msg}");
    }

    #[tokio::test]
    async fn a_kubeconfig_file_makes_a_client() {
        let path = std::env::temp_dir().join(format!("divert-kubeconfig-{}", std::process::id()));
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: kind\n\
             clusters:\n- name: kind\n  cluster:\n    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\n\
             contexts:\n- name: kind\n  context:\n    cluster: kind\n    user: dev\n    namespace: staging\n\
             users:\n- name: dev\n  user:\n    token: not-a-real-token\n",
        )
        .unwrap();
        let made = client(Some(path.clone())).await;
        std::fs::remove_file(&path).unwrap();
        assert_eq!(made.unwrap().default_namespace(), "staging");
    }
}
