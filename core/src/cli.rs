//! What the command lines of both binaries (`divert`, `divert-proxy`) share:
//! the global `--log-level` flag, and parsing that exits with 64 (EX_USAGE) on
//! a bad flag.

use std::process::ExitCode;

use clap::{Args, Parser};

use crate::process::EXIT_USAGE;

/// The global logging flag.
#[derive(Args, Debug)]
pub struct LogArgs {
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter
    /// such as `divert_proxy=debug`).
    #[arg(long, global = true, env = "DIVERT_LOG", default_value = "info")]
    pub log_level: String,
}

/// Parses the process's command line. On a bad flag clap's message is
/// printed and the exit status is 64; `--help` and `--version` print and
/// exit 0.
pub fn parse<P: Parser>() -> Result<P, ExitCode> {
    P::try_parse().map_err(|e| {
        let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
        let _ = e.print();
        ExitCode::from(code)
    })
}
