//! The routing table as the controller knows it, and the proxies watching it.
//!
//! Everything that learns about the cluster (the Kubernetes watchers, or a test
//! feeding objects through the same interface) calls [`Store::apply`] with
//! [`Change`]s. Each call bumps the revision once.
//!
//! Every subscriber (one per proxy stream) gets a snapshot when it subscribes,
//! then the changes since. Changes waiting for a subscriber are coalesced by
//! key, so a slow or stuck proxy holds at most one pending entry per namespace
//! and service, never a growing queue, and never delays the others.

use divert_proto::discovery::v1 as pb;

/// One change to the table.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A divert namespace added or changed.
    Namespace(pb::Namespace),
    /// A namespace that is no longer a divert namespace (or is gone).
    DeleteNamespace(String),
    /// A service added or changed; it replaces the previous one whole.
    Service(pb::Service),
    DeleteService(pb::ServiceKey),
    /// The whole preview host map, changed.
    Hosts(Vec<pb::PreviewHost>),
}

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{Notify, watch};

/// A service's identity: (namespace, name).
pub type ServiceId = (String, String);

/// The table, its revision, and its subscribers.
pub struct Store {
    inner: Mutex<Inner>,
    /// True once the sources have listed everything once.
    synced: watch::Sender<bool>,
    /// Updates handed to subscribers (for metrics).
    updates_sent: AtomicU64,
}

#[derive(Default)]
struct Inner {
    revision: u64,
    namespaces: HashMap<String, pb::Namespace>,
    services: HashMap<ServiceId, Arc<pb::Service>>,
    hosts: Vec<pb::PreviewHost>,
    subscribers: HashMap<u64, Arc<Subscriber>>,
    next_subscriber: u64,
}

/// One proxy's stream.
pub struct Subscriber {
    pub info: pb::ProxyInfo,
    /// The key this proxy's tap and routes answer the controller with
    /// (sent in its snapshot, [`crate::auth::new_key`]).
    pub tap_key: String,
    pub remote_addr: Option<SocketAddr>,
    pub connected_at: Instant,
    /// The revision of the last message handed to this subscriber.
    sent_revision: AtomicU64,
    pending: Mutex<Pending>,
    wake: Notify,
}

/// Changes waiting for one subscriber, at most one entry per key.
#[derive(Default)]
struct Pending {
    revision: u64,
    namespaces: HashMap<String, Option<pb::Namespace>>,
    services: HashMap<ServiceId, Option<Arc<pb::Service>>>,
    /// The host map, if it changed: the whole map, latest wins.
    hosts: Option<Vec<pb::PreviewHost>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.services.is_empty() && self.hosts.is_none()
    }
}

/// Counts of the table, for metrics and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub revision: u64,
    pub namespaces: usize,
    pub services: usize,
    pub subscribers: usize,
    pub updates_sent: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind, never
    // a half-made invariant that matters more than staying up.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An applied change, with services shared between the table and every
/// subscriber's pending set.
enum Effective {
    Namespace(String, Option<pb::Namespace>),
    Service(ServiceId, Option<Arc<pb::Service>>),
    Hosts(Vec<pb::PreviewHost>),
}

impl Store {
    pub fn new() -> Arc<Store> {
        Arc::new(Store {
            inner: Mutex::default(),
            synced: watch::channel(false).0,
            updates_sent: AtomicU64::new(0),
        })
    }

    /// Applies changes as one revision. Changes that change nothing are
    /// dropped; if none is left, the revision stays. Returns the revision.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) -> u64 {
        let mut inner = lock(&self.inner);
        let mut effective = Vec::new();
        for change in changes {
            match change {
                Change::Namespace(ns) => {
                    if inner.namespaces.get(&ns.name) != Some(&ns) {
                        inner.namespaces.insert(ns.name.clone(), ns.clone());
                        effective.push(Effective::Namespace(ns.name.clone(), Some(ns)));
                    }
                }
                Change::DeleteNamespace(name) => {
                    if inner.namespaces.remove(&name).is_some() {
                        effective.push(Effective::Namespace(name, None));
                    }
                }
                Change::Service(svc) => {
                    let id = (svc.namespace.clone(), svc.name.clone());
                    if inner.services.get(&id).is_none_or(|old| **old != svc) {
                        let svc = Arc::new(svc);
                        inner.services.insert(id.clone(), svc.clone());
                        effective.push(Effective::Service(id, Some(svc)));
                    }
                }
                Change::DeleteService(key) => {
                    let id = (key.namespace, key.name);
                    if inner.services.remove(&id).is_some() {
                        effective.push(Effective::Service(id, None));
                    }
                }
                Change::Hosts(hosts) => {
                    if inner.hosts != hosts {
                        inner.hosts = hosts.clone();
                        effective.push(Effective::Hosts(hosts));
                    }
                }
            }
        }
        if effective.is_empty() {
            return inner.revision;
        }
        inner.revision += 1;
        let revision = inner.revision;
        for sub in inner.subscribers.values() {
            let mut pending = lock(&sub.pending);
            pending.revision = revision;
            for e in &effective {
                match e {
                    Effective::Namespace(name, ns) => {
                        pending.namespaces.insert(name.clone(), ns.clone());
                    }
                    Effective::Service(id, svc) => {
                        pending.services.insert(id.clone(), svc.clone());
                    }
                    Effective::Hosts(hosts) => {
                        pending.hosts = Some(hosts.clone());
                    }
                }
            }
            drop(pending);
            sub.wake.notify_one();
        }
        revision
    }

    /// Marks the table complete: the sources listed everything once.
    pub fn set_synced(&self) {
        self.synced.send_replace(true);
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until [`Store::set_synced`] was called.
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Registers a subscriber and returns it with the snapshot it starts from.
    /// Every later change reaches it through [`Subscription::next`].
    pub fn subscribe(
        self: &Arc<Self>,
        info: pb::ProxyInfo,
        remote_addr: Option<SocketAddr>,
    ) -> (Subscription, pb::TableUpdate) {
        let mut inner = lock(&self.inner);
        let mut namespaces: Vec<pb::Namespace> = inner.namespaces.values().cloned().collect();
        namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        let services = inner.services.values().map(|s| (**s).clone()).collect();
        let tap_key = crate::auth::new_key();
        let snapshot = pb::TableUpdate {
            revision: inner.revision,
            snapshot: true,
            namespaces,
            deleted_namespaces: Vec::new(),
            services,
            deleted_services: Vec::new(),
            hosts: inner.hosts.clone(),
            hosts_changed: true,
            tap_key: tap_key.clone().into_bytes(),
        };
        let id = inner.next_subscriber;
        inner.next_subscriber += 1;
        let subscriber = Arc::new(Subscriber {
            info,
            tap_key,
            remote_addr,
            connected_at: Instant::now(),
            sent_revision: AtomicU64::new(inner.revision),
            pending: Mutex::new(Pending {
                revision: inner.revision,
                ..Pending::default()
            }),
            wake: Notify::new(),
        });
        inner.subscribers.insert(id, subscriber.clone());
        drop(inner);
        self.updates_sent.fetch_add(1, Ordering::Relaxed);
        (
            Subscription {
                store: self.clone(),
                id,
                subscriber,
            },
            snapshot,
        )
    }

    /// A divert namespace's entry, if `name` is one.
    pub fn namespace(&self, name: &str) -> Option<pb::Namespace> {
        lock(&self.inner).namespaces.get(name).cloned()
    }

    /// The subscribers now.
    pub fn subscribers(&self) -> Vec<Arc<Subscriber>> {
        lock(&self.inner).subscribers.values().cloned().collect()
    }

    pub fn stats(&self) -> Stats {
        let inner = lock(&self.inner);
        Stats {
            revision: inner.revision,
            namespaces: inner.namespaces.len(),
            services: inner.services.len(),
            subscribers: inner.subscribers.len(),
            updates_sent: self.updates_sent.load(Ordering::Relaxed),
        }
    }
}

impl Subscriber {
    /// The revision of the last message handed to this subscriber.
    pub fn sent_revision(&self) -> u64 {
        self.sent_revision.load(Ordering::Relaxed)
    }
}

/// A registered subscriber; unregistered on drop.
pub struct Subscription {
    store: Arc<Store>,
    id: u64,
    subscriber: Arc<Subscriber>,
}

impl Subscription {
    /// The next update: every change since the last one, coalesced. Waits
    /// until there is one.
    pub async fn next(&self) -> pb::TableUpdate {
        loop {
            let taken = std::mem::take(&mut *lock(&self.subscriber.pending));
            if !taken.is_empty() {
                let update = to_update(taken);
                self.subscriber
                    .sent_revision
                    .store(update.revision, Ordering::Relaxed);
                self.store.updates_sent.fetch_add(1, Ordering::Relaxed);
                return update;
            }
            // notify_one keeps a permit when nobody waits, so a change made
            // between the take above and this await is not missed.
            self.subscriber.wake.notified().await;
        }
    }

    pub fn subscriber(&self) -> &Subscriber {
        &self.subscriber
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.store.inner).subscribers.remove(&self.id);
    }
}

fn to_update(p: Pending) -> pb::TableUpdate {
    let mut u = pb::TableUpdate {
        revision: p.revision,
        ..pb::TableUpdate::default()
    };
    for (name, ns) in p.namespaces {
        match ns {
            Some(ns) => u.namespaces.push(ns),
            None => u.deleted_namespaces.push(name),
        }
    }
    for ((namespace, name), svc) in p.services {
        match svc {
            Some(svc) => u.services.push(Arc::unwrap_or_clone(svc)),
            None => u.deleted_services.push(pb::ServiceKey { namespace, name }),
        }
    }
    if let Some(hosts) = p.hosts {
        u.hosts = hosts;
        u.hosts_changed = true;
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn svc(ns: &str, name: &str, port: u32) -> pb::Service {
        pb::Service {
            namespace: ns.into(),
            name: name.into(),
            addresses: vec![vec![10, 96, 0, 1]],
            ports: vec![pb::Port {
                name: "http".into(),
                port,
                endpoints: vec![pb::Endpoint {
                    ip: vec![10, 244, 0, 1],
                    port: 8080,
                }],
            }],
        }
    }

    fn alice() -> pb::Namespace {
        pb::Namespace {
            name: "alice".into(),
            shared_namespace: "staging".into(),
            debug: false,
            key_cookie: false,
        }
    }

    async fn next_now(sub: &Subscription) -> pb::TableUpdate {
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("an update is waiting")
    }

    #[tokio::test]
    async fn a_subscriber_gets_a_snapshot_then_each_change() {
        let store = Store::new();
        store.apply([Change::Service(svc("staging", "api", 80))]);
        let (sub, snap) = store.subscribe(pb::ProxyInfo::default(), None);
        assert!(snap.snapshot);
        assert_eq!((snap.revision, snap.services.len()), (1, 1));

        let r = store.apply([
            Change::Namespace(alice()),
            Change::Service(svc("alice", "api", 80)),
        ]);
        assert_eq!(r, 2);
        let u = next_now(&sub).await;
        assert!(!u.snapshot);
        assert_eq!(u.revision, 2);
        assert_eq!(u.namespaces, [alice()]);
        assert_eq!(u.services, [svc("alice", "api", 80)]);

        store.apply([
            Change::DeleteService(pb::ServiceKey {
                namespace: "alice".into(),
                name: "api".into(),
            }),
            Change::DeleteNamespace("alice".into()),
        ]);
        let u = next_now(&sub).await;
        assert_eq!(u.revision, 3);
        assert_eq!(u.deleted_namespaces, ["alice"]);
        assert_eq!(u.deleted_services.len(), 1);
        assert_eq!(sub.subscriber().sent_revision(), 3);
    }

    #[tokio::test]
    async fn the_host_map_goes_whole_in_snapshots_and_only_when_changed_in_deltas() {
        let host = |h: &str, ns: &str| pb::PreviewHost {
            host: h.into(),
            namespace: ns.into(),
        };
        let store = Store::new();
        let (first, snap) = store.subscribe(pb::ProxyInfo::default(), None);
        assert!(snap.hosts_changed && snap.hosts.is_empty());
        store.apply([Change::Hosts(vec![host("a.example.com", "alice")])]);
        let u = next_now(&first).await;
        assert!(u.hosts_changed);
        assert_eq!(u.hosts, [host("a.example.com", "alice")]);
        // The same map again changes nothing; a service change leaves the
        // hosts out of the delta.
        assert_eq!(
            store.apply([Change::Hosts(vec![host("a.example.com", "alice")])]),
            u.revision
        );
        store.apply([Change::Service(svc("staging", "api", 80))]);
        let u = next_now(&first).await;
        assert!(!u.hosts_changed && u.hosts.is_empty());
        // A later subscriber's snapshot has them.
        let (_, snap) = store.subscribe(pb::ProxyInfo::default(), None);
        assert!(snap.hosts_changed);
        assert_eq!(snap.hosts, [host("a.example.com", "alice")]);
        // Two changes before the subscriber reads: the latest map wins.
        store.apply([Change::Hosts(vec![host("b.example.com", "alice")])]);
        store.apply([Change::Hosts(Vec::new())]);
        let u = next_now(&first).await;
        assert!(u.hosts_changed && u.hosts.is_empty());
    }

    #[tokio::test]
    async fn changes_that_change_nothing_keep_the_revision() {
        let store = Store::new();
        assert_eq!(store.apply([Change::Service(svc("staging", "api", 80))]), 1);
        let (sub, _) = store.subscribe(pb::ProxyInfo::default(), None);
        assert_eq!(store.apply([Change::Service(svc("staging", "api", 80))]), 1);
        assert_eq!(store.apply([Change::DeleteNamespace("nobody".into())]), 1);
        // Nothing is waiting for the subscriber.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), sub.next())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_slow_subscriber_gets_one_coalesced_update_and_does_not_hold_others() {
        let store = Store::new();
        let (slow, _) = store.subscribe(pb::ProxyInfo::default(), None);
        let (fast, _) = store.subscribe(pb::ProxyInfo::default(), None);
        for port in 1..=1000 {
            store.apply([Change::Service(svc("staging", "api", port))]);
            if port % 100 == 0 {
                // The fast one keeps up while the slow one reads nothing.
                let u = next_now(&fast).await;
                assert_eq!(u.services[0].ports[0].port, port);
            }
        }
        store.apply([Change::Service(svc("staging", "rent", 1))]);
        // At most one pending entry per key, whatever the backlog.
        {
            let subs = store.subscribers();
            for s in subs {
                let p = lock(&s.pending);
                assert!(p.services.len() <= 2, "{}", p.services.len());
            }
        }
        let u = next_now(&slow).await;
        assert_eq!(u.revision, 1001);
        let mut ports: Vec<(String, u32)> = u
            .services
            .iter()
            .map(|s| (s.name.clone(), s.ports[0].port))
            .collect();
        ports.sort();
        assert_eq!(ports, [("api".to_string(), 1000), ("rent".to_string(), 1)]);
    }

    #[tokio::test]
    async fn dropping_a_subscription_unregisters_it() {
        let store = Store::new();
        let (a, _) = store.subscribe(pb::ProxyInfo::default(), None);
        let (b, _) = store.subscribe(pb::ProxyInfo::default(), None);
        assert_eq!(store.stats().subscribers, 2);
        drop(a);
        assert_eq!(store.stats().subscribers, 1);
        drop(b);
        assert_eq!(store.stats().subscribers, 0);
    }

    #[tokio::test]
    async fn synced_is_awaitable() {
        let store = Store::new();
        assert!(!store.is_synced());
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.synced().await }
        });
        store.set_synced();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("synced resolves")
            .expect("join");
        assert!(store.is_synced());
    }
}
