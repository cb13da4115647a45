//! What every connection of a proxy shares ([`Shared`]): how it routes
//! ([`Config`], fixed for its lifetime), the current table, the counters,
//! the tap, the drain, the connection cap, the dropped-key detector, and the
//! pools of destinations the table does not know ([`Passthrough`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use crate::detect::DetectSettings;
use crate::discovery::ControllerKey;
use crate::drain::Drain;
use crate::drops::Drops;
use crate::limits::{ConnectionSlots, Limits};
use crate::metrics::Metrics;
use crate::table::{Endpoint, Table};
use crate::tables::Tables;
use crate::tap::Tap;
use crate::upstream::ConnectSettings;

/// How the proxy routes; fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct Config {
    /// The baggage member that carries the divert key.
    pub baggage_key: String,
    /// The namespace of the proxy's own pod, if known.
    pub namespace: Option<String>,
    /// The proxy's own pod name, if known (put in tap events).
    pub pod: Option<String>,
    /// The pod's IP, which TCP probes dial (loopback when not known).
    pub pod_ip: Option<std::net::IpAddr>,
    /// With no key, use [`Config::namespace`] as the key (ARCHITECTURE.md, step 3).
    pub own_namespace_default: bool,
    pub connect: ConnectSettings,
    /// Protocol detection on the transparent listener.
    pub detect: DetectSettings,
    /// Every wait bounded, and the connection cap.
    pub limits: Limits,
    /// How long the key cookie lasts in the browser
    /// ([`crate::semantics::cookie`]).
    pub key_cookie_max_age: std::time::Duration,
    /// The events of requests with a key the tap keeps for `divert trace
    /// --since` (0: none).
    pub tap_history: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            baggage_key: divert_core::names::BAGGAGE_KEY.to_string(),
            namespace: None,
            pod: None,
            pod_ip: None,
            own_namespace_default: true,
            connect: ConnectSettings::default(),
            detect: DetectSettings::default(),
            limits: Limits::default(),
            key_cookie_max_age: crate::semantics::cookie::DEFAULT_MAX_AGE,
            tap_history: crate::tap::DEFAULT_HISTORY,
        }
    }
}

/// State every connection of the proxy shares.
pub struct Shared {
    pub config: Config,
    pub tables: Arc<Tables>,
    /// Pools for destinations not in the table.
    pub passthrough: Passthrough,
    pub metrics: Arc<Metrics>,
    pub tap: Arc<Tap>,
    pub drain: Arc<Drain>,
    /// Client connections open, against [`Limits::max_connections`].
    pub slots: Arc<ConnectionSlots>,
    /// The key the controller presents to this proxy's tap and routes.
    pub controller_key: Arc<ControllerKey>,
    /// Requests in flight to the app, and the keys its calls dropped.
    pub drops: Arc<Drops>,
}

impl Shared {
    pub fn new(config: Config, table: Table) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        let tap = Arc::new(
            Tap::new(
                config.pod.clone().unwrap_or_default(),
                config.namespace.clone().unwrap_or_default(),
                metrics.clone(),
            )
            .with_history(config.tap_history),
        );
        Arc::new(Shared {
            metrics,
            tap,
            drain: Arc::default(),
            drops: Arc::new(Drops::new(config.pod_ip)),
            slots: ConnectionSlots::new(config.limits.max_connections),
            config,
            tables: Arc::new(Tables::new(table)),
            passthrough: Passthrough::default(),
            controller_key: Arc::default(),
        })
    }

    /// The namespace used as the key when a request has none.
    pub fn own_namespace(&self) -> Option<&str> {
        if self.config.own_namespace_default {
            self.config.namespace.as_deref()
        } else {
            None
        }
    }
}

/// The most passthrough destinations with a pool of their own; past it, each
/// request to a new one connects afresh.
const MAX_PASSTHROUGH_POOLS: usize = 4096;

/// Pools for destinations not in the table, which have no table entry to
/// hold them.
#[derive(Default)]
pub struct Passthrough {
    pools: RwLock<HashMap<SocketAddr, Arc<Endpoint>>>,
}

impl Passthrough {
    /// The pool for a destination that is not in the table.
    pub fn endpoint(&self, addr: SocketAddr) -> Arc<Endpoint> {
        if let Ok(map) = self.pools.read()
            && let Some(e) = map.get(&addr)
        {
            return e.clone();
        }
        let fresh = Arc::new(Endpoint::new(addr));
        match self.pools.write() {
            Ok(mut map) if map.len() < MAX_PASSTHROUGH_POOLS => {
                map.entry(addr).or_insert(fresh).clone()
            }
            _ => fresh,
        }
    }
}
