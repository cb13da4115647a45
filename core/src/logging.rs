//! The process's logger: a `tracing` filter on stderr that can be changed
//! while the process runs (the proxy's `PUT /log-level`).

use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::{EnvFilter, Registry, reload};

/// Reads and changes the process's log filter.
pub trait LogControl: Send + Sync {
    /// The filter in use.
    fn current(&self) -> String;
    /// Replaces the filter; the error says what is wrong with it.
    fn set(&self, filter: &str) -> Result<(), LogError>;
}

struct LogFilter {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl LogControl for LogFilter {
    fn current(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn set(&self, filter: &str) -> Result<(), LogError> {
        let parsed = EnvFilter::try_new(filter).map_err(|e| LogError::Rejected {
            filter: filter.to_owned(),
            reason: e.to_string(),
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
    let parsed = EnvFilter::try_new(filter).map_err(|e| LogError::Filter {
        filter: filter.to_owned(),
        reason: e.to_string(),
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

/// The log filter's control, once [`init`] has run.
pub fn control() -> Option<Arc<dyn LogControl>> {
    LOG_FILTER.get().map(|l| l.clone() as Arc<dyn LogControl>)
}
