//! The process's logger: a `tracing` filter on stderr that can be changed
//! while the process runs (the proxy's `PUT /log-level`).
//!
//! The filter is a list of `target=level` directives and a bare default
//! level (`info,divert::decision=debug`), tracing-subscriber's `Targets`.
//! Its `EnvFilter` would add span and field directives, at the price of a
//! regex engine compiled into every sidecar (about 240 KiB of code, most of
//! it touched at start): not worth it for a filter nobody writes that way.

use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::{Registry, reload};

/// Reads and changes the process's log filter.
pub trait LogControl: Send + Sync {
    /// The filter in use.
    fn current(&self) -> String;
    /// Replaces the filter; the error says what is wrong with it.
    fn set(&self, filter: &str) -> Result<(), LogError>;
}

struct LogFilter {
    handle: reload::Handle<Targets, Registry>,
    current: Mutex<String>,
}

impl LogControl for LogFilter {
    fn current(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn set(&self, filter: &str) -> Result<(), LogError> {
        let parsed = parse(filter).map_err(|reason| LogError::Rejected {
            filter: filter.to_owned(),
            reason,
        })?;
        self.handle
            .reload(parsed)
            .map_err(|e| LogError::Reload(e.to_string()))?;
        if let Ok(mut c) = self.current.lock() {
            *c = filter.to_owned();
        }
        Ok(())
    }
}

static LOG_FILTER: OnceLock<Arc<LogFilter>> = OnceLock::new();

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(
        "--log-level {filter:?}: {reason}; give a level (error, warn, info, debug, trace) or a tracing filter such as info,divert_proxy=debug"
    )]
    Filter { filter: String, reason: String },
    #[error("the logger was already set up: {0}")]
    AlreadySet(String),
    /// A filter given at run time (`PUT /log-level`).
    #[error(
        "invalid log filter {filter:?}: {reason}; try `debug` or `info,divert::decision=debug`"
    )]
    Rejected { filter: String, reason: String },
    #[error("the log filter could not be replaced: {0}")]
    Reload(String),
}

/// Starts logging to stderr with `filter` (`info`, `divert::decision=debug`,
/// …). Colour only for a person at a terminal, not in container logs.
pub fn init(filter: &str) -> Result<(), LogError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let parsed = parse(filter).map_err(|reason| LogError::Filter {
        filter: filter.to_owned(),
        reason,
    })?;
    let (layer, handle) = reload::Layer::new(parsed);
    tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .try_init()
        .map_err(|e| LogError::AlreadySet(e.to_string()))?;
    let _ = LOG_FILTER.set(Arc::new(LogFilter {
        handle,
        current: Mutex::new(filter.to_owned()),
    }));
    Ok(())
}

/// Parses a filter: comma-separated directives, each a level (`debug`), a
/// target (a module path such as `divert::decision`, meaning all of it), or
/// `target=level`. `Targets` alone would take any text as a target name; a
/// name that cannot be a module path is a typo, and refused.
fn parse(filter: &str) -> Result<Targets, String> {
    for directive in filter.split(',') {
        let target = directive.split_once('=').map_or(directive, |(t, _)| t);
        if let Some(bad) = target
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-')))
        {
            return Err(format!(
                "{directive:?} is not TARGET=LEVEL or a level ({bad:?} cannot be in a target)"
            ));
        }
    }
    filter.parse::<Targets>().map_err(|e| e.to_string())
}

/// The log filter's control, once [`init`] has run.
pub fn control() -> Option<Arc<dyn LogControl>> {
    LOG_FILTER.get().map(|l| l.clone() as Arc<dyn LogControl>)
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn levels_and_targets_parse_and_typos_are_refused() {
        let t = parse("info,divert::decision=debug,kube_client=off").unwrap();
        assert!(t.would_enable("divert::decision", &Level::DEBUG));
        assert!(!t.would_enable("divert_proxy::http", &Level::DEBUG));
        assert!(t.would_enable("divert_proxy::http", &Level::INFO));
        assert!(!t.would_enable("kube_client::client", &Level::ERROR));
        for bad in ["bad[", "info,[", "a b=info", "x=loud"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
