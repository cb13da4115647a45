//! The Divert data plane: a proxy that routes every HTTP/1.1 request, HTTP/2
//! stream and gRPC call by its `baggage` (see ARCHITECTURE.md, "The routing rule").
//!
//! - [`admin`]: `/live`, `/ready`, `/metrics`, `/routes`, `/log-level`, and
//!   the tap's gRPC service, on one port.
//! - [`metrics`]: request and connection counters, lock-free on the request path;
//!   [`counted`]: the byte counts of client connections.
//! - [`report`]: each routing decision, logged and offered to the tap.
//! - [`tap`]: live routing decisions for `divert tap`.
//! - [`drops`]: apps that received a key and called another service without
//!   it, found by what is in flight; [`spans`]: what links the tap's
//!   events into call trees.
//! - [`drain`]: graceful shutdown.
//! - [`baggage`]: finding the divert key in W3C Baggage.
//! - [`table`]: the routing table and the routing rule; [`reason`]: why the
//!   rule chose a target, one vocabulary for metrics, logs and the tap.
//! - [`tables`]: the current table, swapped whole, and how current it is.
//! - [`registry`]: the YAML registry file that describes the table, hot-reloaded.
//! - [`discovery`]: the table streamed from the controller instead.
//! - [`listen`]: bind mode, where the proxy listens on every dialed address.
//! - [`transparent`]: transparent mode, where iptables redirects the pod's
//!   connections to one listener and connections into it to another, and
//!   `SO_ORIGINAL_DST` says where they were going.
//! - [`detect`]: what a transparent connection speaks; [`protocol`]: the one
//!   vocabulary of protocols.
//! - [`opaque`]: routing and splicing connections that are not HTTP.
//! - [`limits`]: every wait bounded and the connections capped; [`resets`]:
//!   HTTP/2 clients that reset more streams than they wait for.
//! - [`body`]: request bodies as forwarded, with their stall bound;
//!   `divert_core::idle`: when an HTTP/2 connection has been idle long
//!   enough to close (the admin server's too).
//! - [`conn`]: a connection once detected, and the one dispatcher to the
//!   path for what it speaks.
//! - [`http`]: serving downstream connections and forwarding each request;
//!   [`h1`]: the HTTP/1.1 fast path, which hands what it does not take to it;
//!   [`semantics`]: HTTP's rules, written once for both (hop-by-hop fields,
//!   gRPC, idempotency, the proxy's own answers, the inbound edits).
//! - [`upstream`]: per-endpoint connection pools.
//! - [`shared`]: what every connection shares ([`Shared`]: the
//!   [`Config`], the table, the counters, the tap, the drain, the pools of
//!   destinations outside the table).

#![forbid(unsafe_code)]

pub mod admin;
pub mod baggage;
pub mod body;
pub mod conn;
pub mod counted;
pub mod detect;
pub mod discovery;
pub mod drain;
pub mod drops;
pub mod h1;
pub mod http;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod opaque;
pub mod protocol;
pub mod reason;
pub mod registry;
pub mod report;
pub mod resets;
pub mod run;
pub mod semantics;
pub mod shared;
pub mod silent;
pub mod spans;
pub mod table;
pub mod tables;
pub mod tap;
pub mod transparent;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use divert_core::direction::Direction;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::discovery::DiscoverySettings;
pub use crate::shared::{Config, Shared};
use crate::table::{Table, TableSpec};
pub use crate::tables::Tables;

/// Where the table comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A registry file, loaded at start and hot-reloaded.
    Registry(PathBuf),
    /// A fixed table (the demo, tests).
    Static(TableSpec),
    /// The controller, over gRPC. The proxy starts with an empty table (every
    /// destination passed through) until the first snapshot arrives.
    Discovery(DiscoverySettings),
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error("invalid table: {0}")]
    Table(#[from] table::SpecError),
    #[error("cannot watch the registry file: {0}")]
    Watch(#[source] notify::Error),
    #[error("cannot listen on {addr}: {source}; check that no other process holds the port")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running proxy in bind mode. Dropping it stops every task it started.
pub struct Proxy {
    pub shared: Arc<Shared>,
    listening: watch::Receiver<listen::Listening>,
    _tasks: JoinSet<()>,
}

impl Proxy {
    /// Loads the table and starts listening on every dialed address. Must be
    /// called inside a tokio runtime.
    pub fn start(config: Config, source: Source) -> Result<Proxy, StartError> {
        let (shared, mut tasks) = Self::load(config, source)?;
        let (tx, listening) = watch::channel(listen::Listening::default());
        tasks.spawn(listen::run(shared.clone(), tx));
        Ok(Proxy {
            shared,
            listening,
            _tasks: tasks,
        })
    }

    /// Loads the table and accepts redirected connections on each of
    /// `listeners`, each for its direction (transparent mode). Must be called
    /// inside a tokio runtime.
    pub fn start_transparent(
        config: Config,
        source: Source,
        listeners: &[(SocketAddr, Direction)],
    ) -> Result<Proxy, StartError> {
        let listeners = listeners
            .iter()
            .map(|&(addr, direction)| {
                listen::bind(addr)
                    .map(|l| (l, direction))
                    .map_err(|source| StartError::Listen { addr, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (shared, mut tasks) = Self::load(config, source)?;
        let bound = listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect();
        // One connection cap for both directions: a pod's proxy has one
        // budget of descriptors and memory.
        for (listener, direction) in listeners {
            let shared = shared.clone();
            let drain = shared.drain.clone();
            let slots = shared.slots.clone();
            tasks.spawn(listen::accept_loop(
                listener,
                drain,
                slots,
                move |stream, peer, held| {
                    transparent::serve(stream, peer, direction, shared.clone(), held)
                },
            ));
        }
        let (_, listening) = watch::channel(listen::Listening {
            version: u64::MAX,
            bound,
            failed: Vec::new(),
        });
        Ok(Proxy {
            shared,
            listening,
            _tasks: tasks,
        })
    }

    /// The first table, and the task that keeps it current.
    fn load(config: Config, source: Source) -> Result<(Arc<Shared>, JoinSet<()>), StartError> {
        let mut tasks = JoinSet::new();
        let table = match &source {
            Source::Registry(path) => registry::load_table(path, 1)?,
            Source::Static(spec) => Table::build(spec, 1, None)?,
            Source::Discovery(_) => Table::build(&TableSpec::default(), 1, None)?,
        };
        let shared = Shared::new(config, table);
        match source {
            Source::Registry(path) => {
                let watcher = registry::Watcher::new(path, shared.tables.clone())
                    .map_err(StartError::Watch)?;
                tasks.spawn(watcher.run());
            }
            Source::Discovery(settings) => {
                shared.tables.update_status(|s| {
                    s.stale_since = Some(std::time::Instant::now());
                });
                tasks.spawn(discovery::run(
                    settings,
                    shared.tables.clone(),
                    shared.controller_key.clone(),
                ));
            }
            Source::Static(_) => {}
        }
        Ok((shared, tasks))
    }

    /// Waits until the listeners match table `version` (or a newer one), and
    /// returns what bind mode reported for it.
    pub async fn listening(&self, version: u64) -> listen::Listening {
        let mut rx = self.listening.clone();
        match rx.wait_for(|l| l.version >= version).await {
            Ok(l) => l.clone(),
            // The listener task ended; report what it last said.
            Err(_) => self.listening.borrow().clone(),
        }
    }

    pub fn table_version(&self) -> u64 {
        self.shared.tables.load().version()
    }

    /// Drains (see [`drain`]): stops accepting at once, asks open connections
    /// to finish, and returns when they have or when `grace` has passed.
    /// Readiness fails from the start of the drain.
    pub async fn drain(&self, grace: Duration) -> drain::Outcome {
        self.shared.drain.run(grace).await
    }
}
