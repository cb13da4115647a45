//! The names Divert gives things in a cluster, each defined once: the
//! labels and annotations users and tools write, the containers and ports
//! injection adds, the objects `divert install` creates, the environment a
//! pod's sidecar reads. Every crate imports them from here.
//!
//! And the one check of names as Kubernetes writes them: namespaces,
//! Services and port names are RFC 1123 labels.

/// The baggage member whose value is the routing key (Okteto's name, so
/// apps written for Okteto's Divert keep working).
pub const BAGGAGE_KEY: &str = "okteto-divert";

/// The cookie that carries a browser's key, where the shared namespace
/// allows it ([`annotation::KEY_COOKIE`]), and the query parameter that sets
/// it (`?divert=alice`) or clears it (`?divert=`).
pub const KEY_COOKIE: &str = "divert";

/// The UID (and GID) the proxy runs as; `divert-proxy init` exempts its
/// connections from the redirect.
pub const PROXY_UID: u32 = 2102;

/// Labels.
pub mod label {
    /// On a namespace: `enabled` opts its pods into injection.
    pub const INJECT: &str = "divert.dev/inject";
    /// On a divert namespace: the shared namespace it diverts from.
    pub const SHARED_NAMESPACE: &str = "divert.dev/shared-namespace";
    /// On every object the controller made (the preview copies in a divert
    /// namespace): [`MANAGED_BY_CONTROLLER`]. An object without it is the
    /// user's, and the controller never changes it.
    pub const MANAGED_BY: &str = "divert.dev/managed-by";
    /// The value of [`MANAGED_BY`].
    pub const MANAGED_BY_CONTROLLER: &str = "divert-controller";
    /// The value of Kubernetes' `endpointslice.kubernetes.io/managed-by` on
    /// the EndpointSlices the controller copies, which tells Kubernetes'
    /// own EndpointSlice controllers the slices are not theirs.
    pub const SLICE_MANAGER: &str = "controller.divert.dev";
}

/// Annotations: on pods (templates) unless said.
pub mod annotation {
    /// On a divert namespace: how its preview hosts are made from the shared
    /// namespace's hosts, instead of replacing the shared namespace's name
    /// by its own (`{label}-{namespace}.preview.example.com`).
    pub const HOST_TEMPLATE: &str = "divert.dev/host-template";
    /// On a preview copy: the `namespace/name` of the object it copies.
    pub const COPIED_FROM: &str = "divert.dev/copied-from";
    /// On a preview copy: a hash of what the controller wrote, compared
    /// instead of the object, which the API server fills with defaults.
    pub const CONTENT_HASH: &str = "divert.dev/content-hash";
    /// On a divert namespace: when it stops diverting (RFC 3339); the
    /// controller then removes its label. `divert deploy --ttl` sets it.
    pub const EXPIRES_AT: &str = "divert.dev/expires-at";
    /// On a shared namespace: which namespaces may opt in as its divert
    /// namespaces without an admin, by a ConfigMap ([`super::object::OPT_IN`]):
    /// `*` for any, or a label selector their labels must match.
    pub const DIVERT_ALLOWED: &str = "divert.dev/divert-allowed";
    /// On a divert namespace the controller labelled for a ConfigMap: that
    /// it did (so it removes only labels it set).
    pub const OPTED_IN_BY: &str = "divert.dev/opted-in-by";
    /// `disabled` opts one pod out of injection (`enabled` in).
    pub const INJECT: &str = "divert.dev/inject";
    /// Outbound ports, by number or range, the proxy never sees.
    pub const SKIP_OUTBOUND_PORTS: &str = "divert.dev/skip-outbound-ports";
    /// Outbound CIDRs the proxy never sees.
    pub const SKIP_OUTBOUND_CIDRS: &str = "divert.dev/skip-outbound-cidrs";
    /// Ports of the pod, by number or range, whose incoming connections go
    /// straight to the app, not through the proxy.
    pub const SKIP_INBOUND_PORTS: &str = "divert.dev/skip-inbound-ports";
    /// `true`: the proxy logs each routing decision.
    pub const DEBUG: &str = "divert.dev/debug";
    /// `enabled` on a shared namespace: its pods' inbound proxies accept
    /// the key cookie ([`super::KEY_COOKIE`]) from callers without a
    /// sidecar; off by default.
    pub const KEY_COOKIE: &str = "divert.dev/key-cookie";
    /// Set by injection: the Divert version that injected the pod.
    pub const INJECTED: &str = "divert.dev/injected";
    /// On the controller's pod template: a digest of its TLS secret, so a
    /// new certificate rolls the controller.
    pub const TLS_CHECKSUM: &str = "divert.dev/tls-checksum";
}

/// Containers and volumes injection adds to a pod.
pub mod container {
    /// The init container that installs the iptables redirect.
    pub const INIT: &str = "divert-init";
    /// The proxy (a native sidecar).
    pub const PROXY: &str = "divert-proxy";
    /// The volume where the init container's iptables keeps its lock.
    pub const XTABLES_VOLUME: &str = "divert-xtables";
    /// The sidecar's own binary, which both containers run.
    pub const SIDECAR_COMMAND: &str = "divert-proxy";
}

/// Ports, and the names Kubernetes knows them by.
pub mod port {
    /// The proxy's outbound port, where the redirect sends the pod's traffic.
    pub const PROXY: u16 = 4140;
    /// The proxy's inbound port, where the redirect sends connections to the
    /// pod (Linkerd's number).
    pub const PROXY_INBOUND: u16 = 4143;
    /// The proxy's admin server (probes, metrics, routes, tap).
    pub const PROXY_ADMIN: u16 = 4191;
    /// The name of the proxy's admin port in the pod spec.
    pub const PROXY_ADMIN_NAME: &str = "divert-admin";
    /// The controller's discovery and tap gRPC.
    pub const CONTROLLER_GRPC: u16 = 8086;
    /// The name of the controller's gRPC port.
    pub const CONTROLLER_GRPC_NAME: &str = "grpc";
    /// The controller's injection webhook (HTTPS).
    pub const CONTROLLER_WEBHOOK: u16 = 8443;
    /// The name of the controller's webhook port.
    pub const CONTROLLER_WEBHOOK_NAME: &str = "webhook";
    /// The controller's admin server.
    pub const CONTROLLER_ADMIN: u16 = 9990;
    /// The name of the controller's admin port.
    pub const CONTROLLER_ADMIN_NAME: &str = "admin";
}

/// The objects `divert install` creates.
pub mod object {
    /// The namespace the controller runs in by default.
    pub const NAMESPACE: &str = "divert";
    /// The controller's Deployment, Service, ServiceAccount and RBAC objects.
    pub const CONTROLLER: &str = "divert-controller";
    /// The Secret holding the webhook's certificate and key.
    pub const TLS_SECRET: &str = "divert-webhook-tls";
    /// The MutatingWebhookConfiguration.
    pub const WEBHOOK_CONFIGURATION: &str = "divert-injector";
    /// The ConfigMap a developer makes in their namespace, labelled
    /// [`super::label::SHARED_NAMESPACE`], to opt it in without the right
    /// to label namespaces.
    pub const OPT_IN: &str = "divert";
    /// The ConfigMap, in the controller's namespace and readable by every
    /// authenticated user, that holds the CA of the controller's
    /// certificate (`ca.crt`), so `divert tap` can verify it.
    pub const CA: &str = "divert-ca";
}

/// How proxies prove who they are to the controller: their pod's service
/// account token, projected for this audience only, short-lived and rotated
/// by the kubelet. A token for the API server cannot be used in its place,
/// nor this one against the API server.
pub mod token {
    /// The token's audience.
    pub const AUDIENCE: &str = "divert";
    /// How long each token lives (the kubelet renews it at 80 %).
    pub const EXPIRATION_SECONDS: i64 = 3600;
    /// The projected volume injection adds, and where the proxy reads it.
    pub const VOLUME: &str = "divert-token";
    pub const DIR: &str = "/var/run/secrets/divert.dev/serviceaccount";
    pub const FILE: &str = "token";
}

/// Environment variables injection sets on the app's and the proxy's
/// containers.
pub mod env {
    /// On the app: the shared namespace this pod's namespace diverts from.
    pub const SHARED_NAMESPACE: &str = "DIVERT_SHARED_NAMESPACE";
    /// On the app: the divert namespace this pod runs in.
    pub const DIVERTED_NAMESPACE: &str = "DIVERT_DIVERTED_NAMESPACE";
    /// Okteto's names of the same two, for apps written for Okteto.
    pub const OKTETO_SHARED: &str = "OKTETO_SHARED_ENVIRONMENT";
    pub const OKTETO_DIVERTED: &str = "OKTETO_DIVERTED_ENVIRONMENT";
    /// On the proxy: its pod's namespace and name (downward API). For
    /// `divert deploy`'s commands and manifest, the divert namespace.
    pub const PROXY_NAMESPACE: &str = "DIVERT_NAMESPACE";
    pub const PROXY_POD_NAME: &str = "DIVERT_POD_NAME";
    /// On the proxy: its pod's IP (downward API), which TCP probes dial.
    pub const PROXY_POD_IP: &str = "DIVERT_POD_IP";
    /// On the proxy: the CA (PEM) that signed the controller's certificate.
    pub const CONTROLLER_CA: &str = "DIVERT_CONTROLLER_CA";
    /// On the proxy: the file holding its token for the controller.
    pub const CONTROLLER_TOKEN: &str = "DIVERT_CONTROLLER_TOKEN";
    /// For `divert deploy`'s commands and manifest (Okteto's names): the
    /// namespace deployed into, and its shared namespace. Divert's own names
    /// are [`PROXY_NAMESPACE`] and [`SHARED_NAMESPACE`].
    pub const OKTETO_NAMESPACE: &str = "OKTETO_NAMESPACE";
    pub const OKTETO_SHARED_NAMESPACE: &str = "OKTETO_SHARED_NAMESPACE";
}

/// Header fields the proxy itself reads or writes.
pub mod header {
    /// Put on a request an inbound proxy sends on to the key's copy of its
    /// service, so that the copy's inbound proxy delivers it there: at most
    /// one extra hop, whatever the two proxies' tables say. Removed before
    /// the app sees the request. A client that sets it only gets local
    /// delivery, which is what no key gets too. Its value is `1`, or while
    /// the sending proxy is tapped, the request's span id (`divert trace`);
    /// [`OUTBOUND_HOP`]'s too.
    pub const INBOUND_HOP: &str = "divert-inbound-hop";
    /// Put on every request an outbound proxy sends to a service of the
    /// table, and removed by the receiving pod's inbound proxy: a request
    /// without it came from a caller without a sidecar (an ingress
    /// controller), the only kind the key cookie is for. A client that sets
    /// it only turns the cookie off for itself.
    pub const OUTBOUND_HOP: &str = "divert-outbound-hop";
    /// On the proxy's own error responses: which target failed, and why.
    pub const PROXY_ERROR: &str = "divert-proxy-error";
}

/// Paths of the proxy's admin server that injection writes into pods.
pub mod path {
    /// `GET /probe/tcp/<port>`: 200 if the app accepts a connection on that
    /// port of the pod's IP, 503 if not. Injection turns an app's
    /// `tcpSocket` probes into this, since a connection to a redirected port
    /// is accepted by the proxy whether or not the app is up.
    pub const TCP_PROBE: &str = "/probe/tcp/";
}

/// The controller's in-cluster gRPC address with the default install
/// (TLS, with the certificate `divert install` makes for the Service name).
pub fn default_controller_url() -> String {
    format!(
        "https://{}.{}.svc:{}",
        object::CONTROLLER,
        object::NAMESPACE,
        port::CONTROLLER_GRPC
    )
}

/// Whether `host` (lowercase, without port or trailing dot) is a name the
/// cluster's own DNS answers: one without a dot (a Service's short name),
/// or one under `.svc` or `.cluster.local`. Such a name is never a preview
/// host: it is how pods call each other, so a preview host of that name
/// would give a developer's key to every caller of the shared service.
pub fn is_cluster_local(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    !host.contains('.')
        || host.ends_with(".svc")
        || host.ends_with(".cluster.local")
        || host.contains(".svc.")
}

/// A name that is not an RFC 1123 label; its message says what one is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a valid name: use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
)]
pub struct InvalidName(pub String);

/// Checks that `s` is an RFC 1123 label (RFC 1123 §2.1, as Kubernetes
/// restricts it: lowercase, at most 63 characters).
pub fn check_dns_label(s: &str) -> Result<(), InvalidName> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(InvalidName(s.to_owned()))
    }
}

/// [`check_dns_label`] as a flag's value parser: the name, owned.
pub fn parse_dns_label(s: &str) -> Result<String, InvalidName> {
    check_dns_label(s).map(|()| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_service_names_are_cluster_local_and_public_ones_are_not() {
        for local in [
            "api",
            "api.staging.svc",
            "api.staging.svc.cluster.local",
            "api.staging.svc.cluster.local.",
            "api.staging.svc.corp.example",
            "kubernetes.default.svc.cluster.local",
            "x.cluster.local",
        ] {
            assert!(is_cluster_local(local), "{local}");
        }
        for public in [
            "frontend-alice.example.com",
            "api.staging.example.com",
            "svc.example.com",
        ] {
            assert!(!is_cluster_local(public), "{public}");
        }
    }

    #[test]
    fn labels_are_lowercase_alphanumerics_and_inner_dashes_up_to_63() {
        for good in ["a", "staging", "alice-2", "0", &"x".repeat(63)] {
            assert_eq!(check_dns_label(good), Ok(()), "{good}");
        }
        for bad in ["", "-a", "a-", "Alice", "a.b", "a_b", "ä", &"x".repeat(64)] {
            assert_eq!(
                check_dns_label(bad),
                Err(InvalidName(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(parse_dns_label("alice"), Ok("alice".to_owned()));
        assert!(parse_dns_label("Alice").is_err());
        assert!(
            InvalidName("A".into())
                .to_string()
                .contains("1-63 lowercase letters")
        );
    }
}
