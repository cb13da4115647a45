//! A proxy process, assembled once: the proxy on its table source, its admin
//! server, the wait for its listeners, and the drain on signals. The sidecar
//! binary (`divert-proxy proxy`), `divert demo` and the benchmark's proxy
//! process all start a proxy through [`start`], so what a pod runs is what
//! they run.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use divert_core::direction::Direction;
use divert_core::logging::LogControl;
use divert_core::process::Signals;

use crate::admin::{self, ProxyAdmin};
use crate::listen::{self, Listening};
use crate::{Config, Proxy, Source, StartError, drain};

/// What a proxy process runs with.
pub struct Settings {
    pub config: Config,
    pub source: Source,
    /// `Some(listeners)`: transparent mode, accepting each direction's
    /// redirected connections on its addresses ([`transparent_listeners`]);
    /// `None`: bind mode, listening on every address the table says clients
    /// dial.
    pub transparent: Option<Vec<(SocketAddr, Direction)>>,
    /// Where the admin server listens; `None` runs none.
    pub admin: Option<SocketAddr>,
    /// Lets `/log-level` read and change the process's log filter.
    pub log: Option<Arc<dyn LogControl>>,
}

/// The transparent listeners: the outbound port and, if given, the inbound
/// one, each on every IPv4 address always and every IPv6 address when the
/// kernel has IPv6.
pub fn transparent_listeners(outbound: u16, inbound: Option<u16>) -> Vec<(SocketAddr, Direction)> {
    let ipv6 = std::path::Path::new("/proc/net/if_inet6").exists();
    let mut listeners = Vec::new();
    for (port, direction) in [
        (Some(outbound), Direction::Outbound),
        (inbound, Direction::Inbound),
    ] {
        let Some(port) = port else { continue };
        listeners.push((SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), direction));
        if ipv6 {
            listeners.push((SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), direction));
        }
    }
    listeners
}

/// Why a proxy process could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(
        "cannot listen on the admin address {addr}: {source}; check that no other process holds the port"
    )]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl RunError {
    /// Whether the flags or the configuration are at fault (rather than the
    /// machine: a port someone else holds).
    pub fn is_usage(&self) -> bool {
        !matches!(
            self,
            RunError::Admin { .. } | RunError::Start(StartError::Listen { .. })
        )
    }
}

/// A started proxy process. Dropping it stops the proxy.
pub struct Running {
    pub proxy: Proxy,
    /// The admin server's address, if it runs.
    pub admin: Option<SocketAddr>,
    /// What the listeners of the first table did.
    pub listening: Listening,
}

/// Starts the proxy and its admin server, and returns once the listeners of
/// the first table are up (or have failed, which [`Running::listening`]
/// says). The admin address is bound first: when it fails, nothing runs.
/// Must be called inside a tokio runtime.
pub async fn start(settings: Settings) -> Result<Running, RunError> {
    let Settings {
        mut config,
        mut source,
        transparent,
        admin,
        log,
    } = settings;
    let asked = config.limits.max_connections;
    let fds = crate::limits::fit_to_nofile(asked);
    config.limits.max_connections = fds.max_connections;
    let admin_listener = match admin {
        Some(addr) => Some(listen::bind(addr).map_err(|source| RunError::Admin { addr, source })?),
        None => None,
    };
    let admin_addr = admin_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .or(admin);
    let discovery = matches!(source, Source::Discovery(_));
    // The controller reaches the tap at the Discovery stream's peer IP: only
    // worth telling it the port when the admin server listens beyond
    // loopback.
    if let (Source::Discovery(d), Some(addr)) = (&mut source, admin_addr)
        && !addr.ip().is_loopback()
    {
        d.proxy.admin_port = u32::from(addr.port());
    }
    let proxy = match transparent {
        Some(addrs) => Proxy::start_transparent(config, source, &addrs)?,
        None => Proxy::start(config, source)?,
    };
    if let Some(listener) = admin_listener {
        let mut handler = ProxyAdmin::new(proxy.shared.clone(), discovery);
        if let Some(log) = log {
            handler = handler.with_log_control(log);
        }
        tokio::spawn(admin::serve(listener, handler));
    }
    // Said once the proxy runs: a bad flag or registry is the one line an
    // operator sees of a proxy that did not start.
    if fds.max_connections < asked {
        tracing::warn!(
            nofile = fds.soft,
            hard = fds.hard,
            asked,
            max_connections = fds.max_connections,
            "the open-file limit holds fewer client connections than --max-connections asks for; raise the limit (ulimit -n) to serve more"
        );
    } else {
        tracing::info!(
            nofile = fds.soft,
            max_connections = fds.max_connections,
            "open-file limit and connection cap"
        );
    }
    let listening = proxy.listening(1).await;
    Ok(Running {
        proxy,
        admin: admin_addr,
        listening,
    })
}

/// How a proxy process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every connection finished within the grace period.
    Drained,
    /// The grace period ran out with this many connections still open.
    GraceOver { open: usize },
    /// A second signal came during the drain.
    SecondSignal,
}

impl Running {
    /// Serves until SIGTERM or SIGINT, then drains for at most `grace`: stops
    /// accepting, lets open connections finish, and returns. A second signal
    /// ends the drain at once. Each step is logged.
    pub async fn until_signalled(self, grace: Duration, signals: &mut Signals) -> Ended {
        signals.next().await;
        tracing::info!(
            grace = ?grace,
            open = self.proxy.shared.drain.open(),
            "draining: no longer accepting; waiting for open connections to finish"
        );
        tokio::select! {
            outcome = self.proxy.drain(grace) => match outcome {
                drain::Outcome::Idle => {
                    tracing::info!("drained: every connection finished; exiting");
                    Ended::Drained
                }
                drain::Outcome::TimedOut { open } => {
                    tracing::warn!(open, "grace period over; closing the connections still open");
                    Ended::GraceOver { open }
                }
            },
            () = signals.next() => {
                tracing::warn!("second signal: exiting without waiting");
                Ended::SecondSignal
            }
        }
    }
}
