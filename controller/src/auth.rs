//! Who calls the controller's gRPC API, and what they may see.
//!
//! The table and the tap reveal the cluster's layout and its traffic, so
//! nothing answers a caller it has not identified with Kubernetes' own
//! identities and authorized with Kubernetes' own RBAC:
//! - a proxy presents its pod's service account token, projected for the
//!   [`AUDIENCE`] audience only. A TokenReview says whose it is; the token
//!   must be bound to a pod, and that pod must exist with the uid the token
//!   names and carry injection's mark. It is a proxy of that pod and of no
//!   other, whatever its `ProxyInfo` claims.
//! - a person presents their Kubernetes credentials: a bearer token (a
//!   TokenReview says who they are) or a client certificate signed by the
//!   cluster's client CA (verified in the TLS handshake; its subject says
//!   who they are, as the API server reads it). A SubjectAccessReview then
//!   says, per namespace, whether they may [`Read`] what they ask for.
//!
//! Answers are cached for a short while ([`CACHE_FOR`]), so a busy `divert
//! tap` or a reconnecting fleet does not become a storm of reviews, and the
//! reviews in flight are bounded ([`MAX_REVIEWS`]).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use divert_core::names::annotation::INJECTED;
use divert_core::names::label::{INJECT as INJECT_LABEL, SHARED_NAMESPACE};
use divert_core::names::token::AUDIENCE;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;
use tonic::{Request, Status};

/// How long an identity or a decision is remembered.
pub const CACHE_FOR: Duration = Duration::from_secs(60);
/// How long a refused token is remembered (a client retrying the same bad
/// token does not reach the API server each time).
const REFUSED_FOR: Duration = Duration::from_secs(10);
/// Entries per cache; past it, expired ones go, then all.
const MAX_CACHED: usize = 10_000;
/// TokenReviews, SubjectAccessReviews and pod reads in flight at once.
pub const MAX_REVIEWS: usize = 32;
/// The extras a TokenReview gives for a token bound to a pod.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// A proxy, as its token proves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyIdentity {
    pub namespace: String,
    pub pod: String,
}

/// A person (or a tool acting for one), as the API server knows them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a caller asks to see of a namespace, and the Kubernetes permission
/// that stands for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Read {
    /// Its requests as they happen (the tap): `get pods/log`. The tap shows
    /// what the pods' own access logs would (method, host, path, key,
    /// status); whoever may read those logs sees nothing new, and `view`,
    /// `edit` and `admin` already grant it, so no new role is needed.
    Traffic,
    /// Its connected proxies, their pods and addresses: `list pods`.
    Pods,
}

impl Read {
    fn attributes(self, namespace: &str) -> ResourceAttributes {
        let (verb, subresource) = match self {
            Read::Traffic => ("get", Some("log")),
            Read::Pods => ("list", None),
        };
        ResourceAttributes {
            namespace: Some(namespace.to_owned()),
            verb: Some(verb.to_owned()),
            resource: Some("pods".to_owned()),
            subresource: subresource.map(str::to_owned),
            ..ResourceAttributes::default()
        }
    }

    /// What the caller may not do, for a refusal.
    pub fn denied(self, namespace: &str) -> String {
        match self {
            Read::Traffic => format!(
                "you may not tap namespace {namespace}: it needs the right to read its pods' logs \
                 (get pods/log, in the view role)"
            ),
            Read::Pods => format!(
                "you may not list the proxies of namespace {namespace}: it needs list pods there"
            ),
        }
    }
}

/// Why a caller was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no credentials: a proxy sends its pod's divert token, a person their Kubernetes \
         credentials (divert tap and divert check send them from your kubeconfig)"
    )]
    Missing,
    #[error("the credentials were refused: {0}")]
    Refused(String),
    #[error(
        "{0} is not the token of a pod's service account bound to its pod: only injected \
         proxies may watch the table"
    )]
    NotAPod(String),
    #[error("pod {0} is gone, or is another pod of that name")]
    NoSuchPod(String),
    #[error("pod {0} was not injected by Divert: only its proxies may watch the table")]
    NotInjected(String),
    #[error("namespace {0} is not one Divert injects: its pods' proxies may not watch the table")]
    NotMeshed(String),
    #[error("cannot ask the API server: {0}")]
    Api(String),
}

impl AuthError {
    pub fn status(&self) -> Status {
        match self {
            AuthError::Api(_) => Status::unavailable(self.to_string()),
            _ => Status::unauthenticated(self.to_string()),
        }
    }
}

/// How the API is guarded.
#[derive(Clone)]
pub enum Access {
    /// Everyone is everything: for tests and benchmarks in one process,
    /// which have no cluster to ask. `divert controller` never runs so.
    Open,
    Kubernetes(Arc<Authenticator>),
}

/// Who called, once accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// Under [`Access::Open`].
    Anyone,
    User(User),
}

impl Access {
    /// The proxy calling with `request`: the pod its token names (under
    /// [`Access::Open`], `None`: whatever the proxy says).
    pub async fn proxy<T>(&self, request: &Request<T>) -> Result<Option<ProxyIdentity>, AuthError> {
        match self {
            Access::Open => Ok(None),
            Access::Kubernetes(a) => {
                let token = bearer(request).ok_or(AuthError::Missing)?;
                a.proxy(&token).await.map(Some)
            }
        }
    }

    /// Checks again that `token` (the one a stream started with) is valid,
    /// bypassing the cache: a deleted pod's token, or an expired one, ends
    /// its stream.
    pub async fn recheck_proxy(&self, token: Option<&str>) -> Result<(), AuthError> {
        match (self, token) {
            (Access::Open, _) => Ok(()),
            (Access::Kubernetes(a), Some(t)) => a.review_proxy(t).await.map(drop),
            (Access::Kubernetes(_), None) => Err(AuthError::Missing),
        }
    }

    /// The person calling with `request`.
    pub async fn user<T>(&self, request: &Request<T>) -> Result<Viewer, AuthError> {
        match self {
            Access::Open => Ok(Viewer::Anyone),
            Access::Kubernetes(a) => {
                if let Some(user) = certificate_user(request) {
                    return Ok(Viewer::User(user));
                }
                let token = bearer(request).ok_or(AuthError::Missing)?;
                a.user(&token).await.map(Viewer::User)
            }
        }
    }

    /// Whether `viewer` may `read` namespace `namespace`.
    pub async fn may(
        &self,
        viewer: &Viewer,
        read: Read,
        namespace: &str,
    ) -> Result<bool, AuthError> {
        match (self, viewer) {
            (Access::Open, _) | (_, Viewer::Anyone) => Ok(true),
            (Access::Kubernetes(a), Viewer::User(u)) => a.may(u, read, namespace).await,
        }
    }
}

/// The bearer token of `request`'s `authorization` metadata.
pub fn bearer<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// The user a verified client certificate names, as the API server reads
/// one: the subject's common name is the user, its organizations the
/// groups. The handshake already verified it against the cluster's client
/// CA (the server asks for one only when it has that CA).
fn certificate_user<T>(request: &Request<T>) -> Option<User> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(User {
        name,
        uid: String::new(),
        groups,
        extra: BTreeMap::new(),
    })
}

/// The cluster's client CA (PEM), which signs the client certificates the
/// API server accepts, from the ConfigMap the API server publishes for
/// servers like this one (`kube-system/extension-apiserver-authentication`,
/// readable through the role `extension-apiserver-authentication-reader`).
/// `None` when it cannot be read: people then authenticate with tokens only.
pub async fn client_ca(client: &kube::Client) -> Option<Vec<u8>> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api = Api::<ConfigMap>::namespaced(client.clone(), "kube-system");
    match api.get_opt("extension-apiserver-authentication").await {
        Ok(Some(cm)) => {
            let pem = cm.data.and_then(|mut d| d.remove("client-ca-file"));
            if pem.is_none() {
                tracing::warn!(
                    "the API server publishes no client CA: people authenticate to the controller with tokens only"
                );
            }
            pem.map(String::into_bytes)
        }
        Ok(None) => {
            tracing::warn!(
                "no kube-system/extension-apiserver-authentication ConfigMap: people authenticate to the controller with tokens only"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the cluster's client CA (the controller needs the role extension-apiserver-authentication-reader): people authenticate to the controller with tokens only");
            None
        }
    }
}

/// A fresh secret of 32 random bytes from the kernel, in hex: the key a
/// proxy's tap and routes answer the controller with. Empty if the kernel
/// gives none (then no tap answers the controller, rather than any).
pub fn new_key() -> String {
    use std::fmt::Write as _;
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if let Err(e) = read {
        tracing::error!(error = %e, "no randomness from /dev/urandom: proxies' taps will not answer the controller");
        return String::new();
    }
    bytes.iter().fold(String::with_capacity(64), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// Asks the API server, and remembers its answers.
pub struct Authenticator {
    client: kube::Client,
    proxies: Cache<String, Result<ProxyIdentity, AuthError>>,
    users: Cache<String, Result<User, AuthError>>,
    decisions: Cache<(User, Read, String), bool>,
    reviews: Semaphore,
}

impl Authenticator {
    pub fn new(client: kube::Client) -> Arc<Self> {
        Arc::new(Authenticator {
            client,
            proxies: Cache::default(),
            users: Cache::default(),
            decisions: Cache::default(),
            reviews: Semaphore::new(MAX_REVIEWS),
        })
    }

    async fn proxy(&self, token: &str) -> Result<ProxyIdentity, AuthError> {
        if let Some(hit) = self.proxies.get(token) {
            return hit;
        }
        let result = self.review_proxy(token).await;
        if !matches!(result, Err(AuthError::Api(_))) {
            let ttl = if result.is_ok() {
                CACHE_FOR
            } else {
                REFUSED_FOR
            };
            self.proxies.put(token.to_owned(), result.clone(), ttl);
        }
        result
    }

    /// A TokenReview for the divert audience, then the pod it is bound to.
    async fn review_proxy(&self, token: &str) -> Result<ProxyIdentity, AuthError> {
        let status = self.token_review(token, Some(AUDIENCE)).await?;
        let name = status.username;
        let namespace = name
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .map(|(ns, _)| ns.to_owned())
            .ok_or_else(|| AuthError::NotAPod(name.clone()))?;
        let one = |key: &str| {
            status
                .extra
                .get(key)
                .and_then(|v| v.first())
                .cloned()
                .ok_or_else(|| AuthError::NotAPod(name.clone()))
        };
        let (pod_name, pod_uid) = (one(POD_NAME)?, one(POD_UID)?);
        let which = format!("{namespace}/{pod_name}");
        let pod = {
            let _permit = self.permit().await?;
            Api::<Pod>::namespaced(self.client.clone(), &namespace)
                .get_opt(&pod_name)
                .await
                .map_err(|e| AuthError::Api(e.to_string()))?
        };
        let pod = pod.ok_or_else(|| AuthError::NoSuchPod(which.clone()))?;
        if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
            return Err(AuthError::NoSuchPod(which));
        }
        let injected = pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(INJECTED));
        if !injected {
            return Err(AuthError::NotInjected(which));
        }
        // The mark alone anyone who creates pods can write; injection happens
        // only in the namespaces the webhook serves.
        let ns = {
            let _permit = self.permit().await?;
            Api::<Namespace>::all(self.client.clone())
                .get_opt(&namespace)
                .await
                .map_err(|e| AuthError::Api(e.to_string()))?
        };
        let labels = ns.and_then(|n| n.metadata.labels).unwrap_or_default();
        if !injects(&labels) {
            return Err(AuthError::NotMeshed(namespace));
        }
        Ok(ProxyIdentity {
            namespace,
            pod: pod_name,
        })
    }

    async fn user(&self, token: &str) -> Result<User, AuthError> {
        if let Some(hit) = self.users.get(token) {
            return hit;
        }
        let result = self.token_review(token, None).await.map(|s| User {
            name: s.username,
            uid: s.uid,
            groups: s.groups,
            extra: s.extra,
        });
        if !matches!(result, Err(AuthError::Api(_))) {
            let ttl = if result.is_ok() {
                CACHE_FOR
            } else {
                REFUSED_FOR
            };
            self.users.put(token.to_owned(), result.clone(), ttl);
        }
        result
    }

    async fn may(&self, user: &User, read: Read, namespace: &str) -> Result<bool, AuthError> {
        let key = (user.clone(), read, namespace.to_owned());
        if let Some(hit) = self.decisions.get(&key) {
            return Ok(hit);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes: Some(read.attributes(namespace)),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = {
            let _permit = self.permit().await?;
            Api::<SubjectAccessReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| AuthError::Api(e.to_string()))?
        };
        let allowed = answer.status.is_some_and(|s| s.allowed);
        self.decisions.put(key, allowed, CACHE_FOR);
        Ok(allowed)
    }

    /// A TokenReview of `token` for `audience` (the API server's own when
    /// `None`): who it names, if it is valid.
    async fn token_review(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<Reviewed, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: audience.map(|a| vec![a.to_owned()]),
            },
            ..TokenReview::default()
        };
        let answer = {
            let _permit = self.permit().await?;
            Api::<TokenReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| AuthError::Api(e.to_string()))?
        };
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "the API server does not know this token".to_owned());
            return Err(AuthError::Refused(why));
        }
        if let Some(a) = audience
            && !status.audiences.iter().flatten().any(|got| got == a)
        {
            return Err(AuthError::Refused(format!(
                "the token is not for the {a:?} audience"
            )));
        }
        let user = status.user.unwrap_or_default();
        Ok(Reviewed {
            username: user.username.unwrap_or_default(),
            uid: user.uid.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        })
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, AuthError> {
        self.reviews
            .acquire()
            .await
            .map_err(|_| AuthError::Api("the controller is shutting down".to_owned()))
    }
}

/// Whether the webhook injects pods of a namespace with `labels`: a shared
/// namespace labelled `divert.dev/inject=enabled`, or a divert namespace not
/// labelled `disabled` (the webhook's two namespace selectors).
fn injects(labels: &BTreeMap<String, String>) -> bool {
    let inject = labels.get(INJECT_LABEL).map(String::as_str);
    inject == Some("enabled")
        || (labels.contains_key(SHARED_NAMESPACE) && inject != Some("disabled"))
}

/// What a TokenReview said of a valid token.
struct Reviewed {
    username: String,
    uid: String,
    groups: Vec<String>,
    extra: BTreeMap<String, Vec<String>>,
}

/// Answers kept until they expire; bounded.
struct Cache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K, V> Default for Cache<K, V> {
    fn default() -> Self {
        Cache {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V: Clone> Cache<K, V> {
    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(v, _)| v.clone())
    }

    fn put(&self, key: K, value: V, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_CACHED {
            let now = Instant::now();
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(key, (value, Instant::now() + ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_256_bit_secrets() {
        let (a, b) = (new_key(), new_key());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_bearer_token_is_read_from_the_authorization_metadata() {
        let with = |value: &str| {
            let mut r = Request::new(());
            r.metadata_mut()
                .insert("authorization", value.parse().expect("ascii"));
            bearer(&r)
        };
        assert_eq!(with("Bearer abc.def"), Some("abc.def".into()));
        assert_eq!(with("bearer  abc "), Some("abc".into()));
        assert_eq!(with("Basic abc"), None);
        assert_eq!(with("Bearer "), None);
        assert_eq!(bearer(&Request::new(())), None);
    }

    #[test]
    fn a_namespace_is_injected_as_the_webhook_selects_it() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(injects(&labels(&[(INJECT_LABEL, "enabled")])));
        assert!(injects(&labels(&[(SHARED_NAMESPACE, "staging")])));
        assert!(!injects(&labels(&[
            (SHARED_NAMESPACE, "staging"),
            (INJECT_LABEL, "disabled")
        ])));
        assert!(!injects(&labels(&[])));
        assert!(!injects(&labels(&[(INJECT_LABEL, "yes")])));
    }

    #[test]
    fn each_read_asks_for_its_own_permission() {
        let a = Read::Traffic.attributes("staging");
        assert_eq!(
            (
                a.verb.as_deref(),
                a.resource.as_deref(),
                a.subresource.as_deref()
            ),
            (Some("get"), Some("pods"), Some("log"))
        );
        assert_eq!(a.namespace.as_deref(), Some("staging"));
        let a = Read::Pods.attributes("alice");
        assert_eq!(
            (a.verb.as_deref(), a.subresource.as_deref()),
            (Some("list"), None)
        );
    }

    #[test]
    fn the_cache_forgets_what_expired_and_stays_bounded() {
        let c: Cache<String, u32> = Cache::default();
        c.put("a".into(), 1, Duration::from_secs(60));
        c.put("gone".into(), 2, Duration::ZERO);
        assert_eq!(c.get("a"), Some(1));
        assert_eq!(c.get("gone"), None);
        for i in 0..MAX_CACHED + 10 {
            c.put(format!("k{i}"), 0, Duration::from_secs(60));
        }
        let n = c.entries.lock().unwrap().len();
        assert!(n <= MAX_CACHED, "{n}");
    }
}
