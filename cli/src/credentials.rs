//! Your Kubernetes credentials, as `divert tap` presents them to the
//! controller, and the controller's CA, which `divert tap` verifies it with.
//!
//! The controller answers only people it can identify with the cluster's own
//! identities, and shows them only the namespaces RBAC lets them see. So the
//! CLI sends what the API server would get from you: the bearer token of
//! your kubeconfig (its `token`, `tokenFile`, or what its exec plugin
//! prints), or your client certificate, presented in the TLS handshake
//! (the controller checks it against the cluster's client CA, as the API
//! server does). A token goes only to a controller whose certificate
//! chains to the CA `divert install` made.

use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use kube::config::{AuthInfo, ExecConfig, KubeConfigOptions, Kubeconfig};
use secrecy::ExposeSecret;

use divert_core::names::object::{CA, NAMESPACE};

/// What the CLI presents to the controller.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `authorization: Bearer <token>`.
    Token(String),
    /// A client certificate and its key (PEM).
    Certificate { cert: Vec<u8>, key: Vec<u8> },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Token(…)"),
            Credentials::Certificate { .. } => f.write_str("Certificate(…)"),
        }
    }
}

/// Why the credentials or the CA could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the kubeconfig: {0}; pass --kubeconfig, or --token-file")]
    Kubeconfig(String),
    #[error(
        "the kubeconfig's user has no token, client certificate or exec plugin divert can use; \
         pass --token-file with a token (kubectl create token …)"
    )]
    Nothing,
    #[error("cannot read {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the kubeconfig's {field} is not base64: {why}")]
    Base64 { field: &'static str, why: String },
    #[error("the exec plugin {command:?} failed: {why}")]
    Exec { command: String, why: String },
    #[error(
        "cannot read the controller's CA from ConfigMap {NAMESPACE}/{CA}: {0}; pass \
         --controller-ca with the CA's PEM file"
    )]
    Ca(String),
}

/// The credentials of the current context of `kubeconfig` (or of the
/// default kubeconfig).
pub async fn from_kubeconfig(kubeconfig: Option<&Path>) -> Result<Credentials, CredentialsError> {
    let config = match kubeconfig {
        Some(p) => Kubeconfig::read_from(p),
        None => Kubeconfig::read(),
    }
    .map_err(|e| CredentialsError::Kubeconfig(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .map_err(|e| CredentialsError::Kubeconfig(e.to_string()))?;
    from_auth_info(&config.auth_info).await
}

/// The credentials `auth` holds or makes.
pub async fn from_auth_info(auth: &AuthInfo) -> Result<Credentials, CredentialsError> {
    if let Some(token) = auth.token.as_ref().map(ExposeSecret::expose_secret) {
        return Ok(Credentials::Token(token.trim().to_owned()));
    }
    if let Some(path) = &auth.token_file {
        return token_file(Path::new(path));
    }
    let cert = data_or_file(
        "client-certificate-data",
        auth.client_certificate_data.as_deref(),
        auth.client_certificate.as_deref(),
    )?;
    let key = data_or_file(
        "client-key-data",
        auth.client_key_data
            .as_ref()
            .map(ExposeSecret::expose_secret),
        auth.client_key.as_deref(),
    )?;
    if let (Some(cert), Some(key)) = (cert, key) {
        return Ok(Credentials::Certificate { cert, key });
    }
    if let Some(exec) = &auth.exec {
        return run_exec(exec).await;
    }
    Err(CredentialsError::Nothing)
}

/// A token from a file (`--token-file`, a kubeconfig's `tokenFile`).
pub fn token_file(path: &Path) -> Result<Credentials, CredentialsError> {
    let token = std::fs::read_to_string(path).map_err(|source| CredentialsError::File {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Credentials::Token(token.trim().to_owned()))
}

/// Base64 data from the kubeconfig, or the file it names instead.
fn data_or_file(
    field: &'static str,
    data: Option<&str>,
    file: Option<&str>,
) -> Result<Option<Vec<u8>>, CredentialsError> {
    if let Some(data) = data {
        let bytes: ByteString = serde_json::from_value(serde_json::Value::String(
            data.trim().to_owned(),
        ))
        .map_err(|e| CredentialsError::Base64 {
            field,
            why: e.to_string(),
        })?;
        return Ok(Some(bytes.0));
    }
    match file {
        Some(path) => std::fs::read(path)
            .map(Some)
            .map_err(|source| CredentialsError::File {
                path: PathBuf::from(path),
                source,
            }),
        None => Ok(None),
    }
}

/// Runs an exec credential plugin (client.authentication.k8s.io, as
/// kubectl does) and takes the token or the certificate it prints.
async fn run_exec(exec: &ExecConfig) -> Result<Credentials, CredentialsError> {
    let command = exec.command.clone().unwrap_or_default();
    let failed = |why: String| CredentialsError::Exec {
        command: command.clone(),
        why,
    };
    if command.is_empty() {
        return Err(failed("no command".into()));
    }
    let api_version = exec
        .api_version
        .clone()
        .unwrap_or_else(|| "client.authentication.k8s.io/v1".to_owned());
    let mut cmd = tokio::process::Command::new(&command);
    cmd.args(exec.args.iter().flatten());
    if exec.drop_env.is_some() {
        for name in exec.drop_env.iter().flatten() {
            cmd.env_remove(name);
        }
    }
    for pair in exec.env.iter().flatten() {
        if let (Some(name), Some(value)) = (pair.get("name"), pair.get("value")) {
            cmd.env(name, value);
        }
    }
    let info = serde_json::json!({
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "spec": {"interactive": false},
    });
    cmd.env("KUBERNETES_EXEC_INFO", info.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .map_err(|_| failed("it did not answer within 60 s".into()))?
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| failed(format!("it printed no ExecCredential: {e}")))?;
    let status = &printed["status"];
    if let Some(token) = status["token"].as_str().filter(|t| !t.is_empty()) {
        return Ok(Credentials::Token(token.to_owned()));
    }
    match (
        status["clientCertificateData"].as_str(),
        status["clientKeyData"].as_str(),
    ) {
        (Some(cert), Some(key)) => Ok(Credentials::Certificate {
            cert: cert.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
        }),
        _ => Err(failed(
            "its ExecCredential has no token and no certificate".into(),
        )),
    }
}

/// The controller's CA, from the ConfigMap `divert install` makes readable
/// to every authenticated user.
pub async fn controller_ca(client: kube::Client) -> Result<String, CredentialsError> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let cm = kube::Api::<ConfigMap>::namespaced(client, NAMESPACE)
        .get(CA)
        .await
        .map_err(|e| CredentialsError::Ca(e.to_string()))?;
    cm.data
        .and_then(|mut d| d.remove("ca.crt"))
        .ok_or_else(|| CredentialsError::Ca("it has no ca.crt".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_comes_first_then_a_token_file_then_a_certificate_then_exec() {
        let dir = std::env::temp_dir().join(format!("divert-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token_path = dir.join("token");
        std::fs::write(&token_path, "from-file\n").unwrap();
        let auth: AuthInfo = serde_json::from_value(serde_json::json!({
            "token": "inline", "tokenFile": token_path, "client-certificate-data": "Y2VydA=="
        }))
        .unwrap();
        assert_eq!(
            from_auth_info(&auth).await.unwrap(),
            Credentials::Token("inline".into())
        );
        let auth: AuthInfo =
            serde_json::from_value(serde_json::json!({"tokenFile": token_path})).unwrap();
        assert_eq!(
            from_auth_info(&auth).await.unwrap(),
            Credentials::Token("from-file".into())
        );
        let auth: AuthInfo = serde_json::from_value(serde_json::json!({
            "client-certificate-data": "Y2VydA==", "client-key-data": "a2V5"
        }))
        .unwrap();
        assert_eq!(
            from_auth_info(&auth).await.unwrap(),
            Credentials::Certificate {
                cert: b"cert".to_vec(),
                key: b"key".to_vec()
            }
        );
        let auth: AuthInfo = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(matches!(
            from_auth_info(&auth).await,
            Err(CredentialsError::Nothing)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A real exec plugin (a shell script speaking the protocol): its token,
    /// and its environment as the kubeconfig sets it.
    #[tokio::test]
    async fn an_exec_plugin_s_token_is_used() {
        let auth: AuthInfo = serde_json::from_value(serde_json::json!({"exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "sh",
            "args": ["-c", "printf '{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{\"token\":\"%s\"}}' \"$PLUGIN_TOKEN\""],
            "env": [{"name": "PLUGIN_TOKEN", "value": "from-plugin"}],
            "interactiveMode": "Never"
        }}))
        .unwrap();
        assert_eq!(
            from_auth_info(&auth).await.unwrap(),
            Credentials::Token("from-plugin".into())
        );
        let failing: AuthInfo = serde_json::from_value(serde_json::json!({"exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "sh", "args": ["-c", "echo no cluster >&2; exit 3"],
            "interactiveMode": "Never"
        }}))
        .unwrap();
        let e = from_auth_info(&failing).await.unwrap_err().to_string();
        assert!(e.contains("no cluster"), "{e}");
    }
}
