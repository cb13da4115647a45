//! The mutating admission webhook: HTTPS on rustls, AdmissionReview v1.
//!
//! The certificate and key are read from files (a Kubernetes TLS Secret
//! mounted as a volume) and reloaded when their contents change, so a rotated
//! Secret takes effect without a restart; a bad new pair is logged and the
//! old one kept. `POST /inject` answers each review with whatever the
//! [`Mutate`] function says; [`pod_mutator`] is the one that injects Divert.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use divert_inject::meshes::MeshSwitches;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::copies::Feed;
use crate::store::Store;

/// Decides one admission request.
pub type Mutate = Arc<dyn Fn(AdmissionRequest<DynamicObject>) -> AdmissionResponse + Send + Sync>;

/// The largest AdmissionReview accepted (a pod with a huge spec is still far
/// smaller).
const MAX_REVIEW_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate in it; mount the Secret's tls.crt", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: no PEM private key in it (PKCS#8, SEC1 or PKCS#1); mount the Secret's tls.key", .0.display())]
    NoKey(PathBuf),
    #[error("{}: the key cannot sign: {source}", path.display())]
    BadKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the key does not match the certificate: {0}")]
    Mismatch(#[source] rustls::Error),
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    #[error("the cluster's client CA holds no PEM certificate")]
    NoClientCa,
}

/// The certificate and key files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    fn parse(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .filter_map(Result::ok)
            .collect();
        if certs.is_empty() {
            return Err(TlsError::NoCertificate(self.cert.clone()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| TlsError::NoKey(self.key.clone()))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|source| {
            TlsError::BadKey {
                path: self.key.clone(),
                source,
            }
        })?;
        let certified = CertifiedKey::new(certs, signer);
        certified.keys_match().map_err(TlsError::Mismatch)?;
        Ok(certified)
    }
}

/// Hands every handshake the current certificate.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
    /// The file contents the current certificate came from.
    loaded: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ReloadingCert {
    /// Loads the pair once; fails if it is unusable.
    pub fn load(files: TlsFiles) -> Result<Arc<ReloadingCert>, TlsError> {
        let (cert, key) = files.read()?;
        let certified = files.parse(&cert, &key)?;
        Ok(Arc::new(ReloadingCert {
            files,
            current: ArcSwap::from_pointee(certified),
            loaded: std::sync::Mutex::new((cert, key)),
        }))
    }

    /// Re-reads the files and swaps in a changed, valid pair. Returns whether
    /// it swapped.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert, key) = self.files.read()?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.0 == cert && loaded.1 == key {
            return Ok(false);
        }
        let certified = self.files.parse(&cert, &key)?;
        self.current.store(Arc::new(certified));
        *loaded = (cert, key);
        Ok(true)
    }

    /// Checks the files every `interval`, forever. Polling, rather than file
    /// events, sees every way a mounted Secret can change (symlink swaps
    /// included) at the cost of reading two small files.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            match self.reload() {
                Ok(true) => {
                    tracing::info!(cert = %self.files.cert.display(), "webhook certificate reloaded")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "new webhook certificate not usable; keeping the current one")
                }
            }
        }
    }

    /// A rustls server configuration that uses this certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ReloadingCert {
    /// A rustls server configuration for the gRPC API with this certificate:
    /// HTTP/2 only; with `client_ca` (PEM), a client certificate signed by it
    /// is asked for and verified, and a client without one is let through
    /// to authenticate otherwise (a token).
    pub fn grpc_server_config(
        self: &Arc<Self>,
        client_ca: Option<&[u8]>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem).filter_map(Result::ok) {
                    roots.add(cert).map_err(TlsError::Config)?;
                }
                if roots.is_empty() {
                    return Err(TlsError::NoClientCa);
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Serves `POST /inject` over TLS on `listener` forever.
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, mutate: Mutate) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = divert_core::accept::next(&listener).await;
        let acceptor = acceptor.clone();
        let mutate = mutate.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(
                Duration::from_secs(10),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = service_fn(move |req| {
                let mutate = mutate.clone();
                async move { Ok::<_, Infallible>(answer(req, &mutate).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>, mutate: &Mutate) -> Response<Full<Bytes>> {
    if req.uri().path() != "/inject" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: POST /inject\n",
        );
    }
    if req.method() != Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "POST only\n");
    }
    let body = match Limited::new(req.into_body(), MAX_REVIEW_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("cannot read the body: {e}\n"),
            );
        }
    };
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("not an AdmissionReview: {e}\n"),
            );
        }
    };
    let request: Result<AdmissionRequest<DynamicObject>, _> = review.try_into();
    let response = match request {
        Ok(request) => mutate(request),
        Err(_) => AdmissionResponse::invalid("the AdmissionReview has no request"),
    };
    match serde_json::to_vec(&response.into_review()) {
        Ok(json) => reply(StatusCode::OK, "application/json", json),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// Injects Divert into pods being created, with the namespace's role taken
/// from the controller's table (a divert namespace of S, or shared), and
/// what it says to other meshes from the watch of every namespace (`feed`):
/// a pod Linkerd or Istio injects is left to it. Never blocks a pod:
/// anything that goes wrong lets it through unchanged, with a warning the
/// user sees in `kubectl`.
pub fn pod_mutator(store: Arc<Store>, feed: Feed, settings: divert_inject::Settings) -> Mutate {
    Arc::new(move |request: AdmissionRequest<DynamicObject>| {
        let response = AdmissionResponse::from(&request);
        if request.operation != Operation::Create || request.kind.kind != "Pod" {
            return response;
        }
        let Some(object) = &request.object else {
            return response;
        };
        let pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
            Ok(pod) => pod,
            Err(e) => {
                return warn(
                    response,
                    format!("divert: not injected: the pod does not parse: {e}"),
                );
            }
        };
        let namespace = request.namespace.clone().unwrap_or_default();
        let known = store.namespace(&namespace);
        let meshes = feed
            .lock()
            .namespace(&namespace)
            .map(|ns| {
                MeshSwitches::of(
                    ns.metadata.labels.as_ref(),
                    ns.metadata.annotations.as_ref(),
                )
            })
            .unwrap_or_default();
        let info = divert_inject::NamespaceInfo {
            debug: known.as_ref().is_some_and(|n| n.debug),
            shared_namespace: known.map(|n| n.shared_namespace).filter(|s| !s.is_empty()),
            name: namespace,
            meshes,
        };
        match divert_inject::patch(&pod, &info, &settings) {
            Ok(Some(patch)) => match response.clone().with_patch(patch) {
                Ok(r) => r,
                Err(e) => warn(response, format!("divert: not injected: {e}")),
            },
            Ok(None) => response,
            Err(e) => warn(response, format!("divert: not injected: {e}")),
        }
    })
}

fn warn(mut response: AdmissionResponse, message: String) -> AdmissionResponse {
    tracing::warn!(uid = %response.uid, "{message}");
    response.warnings.get_or_insert_with(Vec::new).push(message);
    response
}
