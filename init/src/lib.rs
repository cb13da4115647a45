//! Programs iptables so a pod's TCP goes through the proxy: what it sends to
//! the outbound port, what comes into it to the inbound port.
//!
//! `divert-proxy init` runs as the pod's init container (root, with NET_ADMIN and
//! NET_RAW), before the app and the proxy start. In the nat table of each
//! address family (iptables for IPv4, ip6tables for IPv6) it installs:
//!
//! ```text
//! OUTPUT          -p tcp                         -j DIVERT_OUTPUT
//! DIVERT_OUTPUT   -m owner --uid-owner <proxy>   -j RETURN          the proxy's own traffic
//!                 -m owner --gid-owner <proxy>   -j RETURN          (if a gid is given)
//!                 -o lo                          -j RETURN          loopback, incl. the pod's own IPs
//!                 -p tcp -m multiport --dports … -j RETURN          --skip-outbound-ports
//!                 -d <cidr>                      -j RETURN          --skip-outbound-cidrs
//!                 -p tcp  (or -d <include cidr>) -j DIVERT_REDIRECT
//! DIVERT_REDIRECT -p tcp -j REDIRECT --to-ports <proxy port>
//!
//! PREROUTING      -p tcp                         -j DIVERT_INBOUND
//! DIVERT_INBOUND  -p tcp -m multiport --dports <inbound>,<proxy>,<admin> -j RETURN
//!                 -p tcp -m multiport --dports … -j RETURN          --skip-inbound-ports
//!                 -p tcp -j REDIRECT --to-ports <inbound port>
//! ```
//!
//! every rule with a `divert: …` comment. Each family is changed by one
//! `iptables-restore --noflush` call, so it is atomic; a rerun replaces our
//! chains' rules and keeps the single `OUTPUT` jump, so it is idempotent.
//! [`Action::Cleanup`] removes exactly what we added.
//!
//! Inbound connections come from other pods and nodes (`PREROUTING`); the
//! proxy's own ports stay direct, so kubelet's probes of its admin server
//! and anyone dialing its listeners are never redirected into it. Kubelet's
//! probes of the app are redirected like any caller, and the proxy delivers
//! them to the app.
//!
//! The modules: [`rules`] renders and parses rule text (pure), [`iptables`]
//! chooses the backend and runs the binaries, [`caps`] checks capabilities,
//! [`mod@validate`] proves that redirection works.

#![forbid(unsafe_code)]

pub mod caps;
pub mod cidr;
pub mod iptables;
pub mod ports;
pub mod rules;
pub mod validate;

use std::fmt;
use std::io;
use std::path::Path;

use divert_core::names;

pub use cidr::Cidr;
pub use iptables::{Backend, BackendKind};
pub use ports::PortRange;
pub use validate::{ValidateError, ValidateSettings, Validated};

use iptables::System;
use rules::{SaveParseError, Table};

/// An address family, each with its own iptables binaries and tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The name the family's binaries start with.
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Which iptables backend to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Legacy if legacy iptables already holds rules in this network
    /// namespace, else nft.
    #[default]
    Auto,
    Legacy,
    Nft,
}

/// What to program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Where redirected outbound connections go.
    pub proxy_port: u16,
    /// Where redirected inbound connections go.
    pub inbound_port: u16,
    /// The proxy's admin port: kubelet probes it, so it is never redirected.
    pub admin_port: u16,
    /// The proxy's uid: its connections are not redirected.
    pub proxy_uid: u32,
    /// The proxy's gid, if its group's connections should not be either.
    pub proxy_gid: Option<u32>,
    /// Destination ports never redirected.
    pub skip_outbound_ports: Vec<PortRange>,
    /// Ports of the pod whose incoming connections are never redirected.
    pub skip_inbound_ports: Vec<PortRange>,
    /// Destinations never redirected (either family; each gets its own).
    pub skip_outbound_cidrs: Vec<Cidr>,
    /// If not empty, only these destinations are redirected; a family with
    /// none of them here is not redirected at all.
    pub include_outbound_cidrs: Vec<Cidr>,
    pub mode: Mode,
    /// Program IPv6 too (when the kernel has it).
    pub ipv6: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            proxy_port: names::port::PROXY,
            inbound_port: names::port::PROXY_INBOUND,
            admin_port: names::port::PROXY_ADMIN,
            proxy_uid: names::PROXY_UID,
            proxy_gid: None,
            skip_outbound_ports: Vec::new(),
            skip_inbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
            include_outbound_cidrs: Vec::new(),
            mode: Mode::Auto,
            ipv6: true,
        }
    }
}

impl Settings {
    /// Checks what the types do not.
    pub fn check(&self) -> Result<(), SettingsError> {
        let ports = [
            ("--proxy-port", self.proxy_port),
            ("--inbound-port", self.inbound_port),
            ("--admin-port", self.admin_port),
        ];
        for (i, &(flag, port)) in ports.iter().enumerate() {
            if port == 0 {
                return Err(SettingsError {
                    flag,
                    message: "port 0 is not a port".into(),
                });
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| *p == port) {
                return Err(SettingsError {
                    flag,
                    message: format!(
                        "{port} is also {other}: the proxy's ports must differ, or one listener would get both kinds of traffic"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Checks that `v` validates something these settings redirect.
    pub fn check_validate(&self, v: &ValidateSettings) -> Result<(), SettingsError> {
        validate::check_address(self, v)
    }

    /// The families to program: IPv4, and IPv6 unless turned off or absent
    /// from the kernel.
    pub fn families(&self) -> Vec<Family> {
        let mut families = vec![Family::V4];
        if self.ipv6 {
            if kernel_has_ipv6() {
                families.push(Family::V6);
            } else {
                tracing::info!(
                    "this kernel has no IPv6 (no /proc/net/if_inet6): programming IPv4 only"
                );
            }
        }
        families
    }
}

fn kernel_has_ipv6() -> bool {
    Path::new("/proc/net/if_inet6").exists()
}

/// A bad flag or setting, named as on the command line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct SettingsError {
    pub flag: &'static str,
    pub message: String,
}

/// What [`apply`] and [`dry_run`] do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Install (or refresh) our rules.
    Program,
    /// Remove everything we added, and nothing else.
    Cleanup,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("{}", missing_capabilities(.missing))]
    MissingCapabilities { missing: Vec<&'static str> },
    #[error("{0}")]
    Capabilities(String),
    #[error(
        "`{binary}` is not installed (not in PATH): install iptables (legacy or nft) in the image{}",
        if binary.starts_with("ip6tables") { ", or pass --no-ipv6" } else { "" }
    )]
    MissingBinary { binary: String },
    #[error(
        "--mode {wanted}: this image has no iptables-{wanted}-save/-restore, and its iptables uses the {found} \
         backend; install the {wanted} binaries or pass --mode {found}"
    )]
    WrongBackend {
        wanted: BackendKind,
        found: BackendKind,
    },
    #[error("cannot run `{binary}`: {source}")]
    Spawn { binary: String, source: io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot understand the output of `{command}`: {source}")]
    ParseSave {
        command: String,
        source: SaveParseError,
    },
    #[error("`{command}` failed ({status}): {stderr}{}", at_line(.offending))]
    RestoreFailed {
        command: String,
        status: String,
        stderr: String,
        /// The input line it complained about, if it said.
        offending: Option<(usize, String)>,
    },
    #[error(transparent)]
    Validate(#[from] ValidateError),
}

fn missing_capabilities(missing: &[&str]) -> String {
    let (noun, pronoun, both) = if missing.len() == 1 {
        (
            "capability",
            "it",
            " (divert init needs NET_ADMIN and NET_RAW)",
        )
    } else {
        ("capabilities", "them", "")
    };
    format!(
        "missing {noun} {}: add {pronoun} under the init container's securityContext.capabilities.add{both}",
        missing.join(" and ")
    )
}

fn at_line(offending: &Option<(usize, String)>) -> String {
    match offending {
        Some((n, line)) => format!("; input line {n} was: {line}"),
        None => String::new(),
    }
}

impl Error {
    /// Whether the error is a bad flag (exit 64) rather than a failure.
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Settings(_))
    }
}

/// What [`apply`] did.
#[derive(Clone, Debug)]
pub struct Applied {
    pub backend: Backend,
    /// Each family handled, and whether a restore ran for it.
    pub families: Vec<(Family, bool)>,
}

/// Programs or cleans up for real. Needs NET_ADMIN and NET_RAW.
pub fn apply(settings: &Settings, action: Action) -> Result<Applied, Error> {
    settings.check()?;
    caps::require()?;
    let families = settings.families();
    let backend = iptables::choose(settings.mode, &families, &System)?;
    log_backend(&backend, &families);
    let mut done = Vec::new();
    for &family in &families {
        let nat = iptables::read_nat(&backend, family, &System)?;
        let input = match action {
            Action::Program => Some(rules::program_input(settings, family, &nat)),
            Action::Cleanup => rules::cleanup_input(&nat),
        };
        match input {
            Some(input) => {
                iptables::restore(&backend, family, &input)?;
                tracing::info!(
                    command = %backend.restore_command(family),
                    "{family} nat table {}",
                    match action {
                        Action::Program => "programmed",
                        Action::Cleanup => "cleaned up",
                    }
                );
                done.push((family, true));
            }
            None => {
                tracing::info!(
                    "nothing of divert's in the {family} nat table; nothing to clean up"
                );
                done.push((family, false));
            }
        }
    }
    Ok(Applied {
        backend,
        families: done,
    })
}

fn log_backend(backend: &Backend, families: &[Family]) {
    let restore: Vec<String> = families
        .iter()
        .map(|&f| backend.restore_binary(f))
        .collect();
    tracing::info!(
        backend = %backend.kind,
        restore = %restore.join(", "),
        "iptables backend chosen: {}",
        backend.reason
    );
}

/// What [`dry_run`] would do: per family, the restore command and its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DryRun {
    /// Caveats for stderr: what could not be read, and what was assumed.
    pub notes: Vec<String>,
    pub families: Vec<DryRunFamily>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DryRunFamily {
    pub family: Family,
    /// The exact command line, e.g. `iptables-nft-restore --noflush`.
    pub command: String,
    /// Its input; `None` if it would not run (cleanup with nothing of ours).
    pub input: Option<String>,
}

/// Prints each family's `# <command>` header and input.
impl fmt::Display for DryRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for family in &self.families {
            match &family.input {
                Some(input) => write!(f, "# {}\n{input}", family.command)?,
                None => writeln!(
                    f,
                    "# {}: not run, nothing of divert's is in the {} nat table",
                    family.command, family.family
                )?,
            }
        }
        Ok(())
    }
}

/// Shows what [`apply`] would feed to iptables-restore, changing nothing.
/// Needs no capabilities: if the current rules cannot be read (no
/// permission, no binary), it renders against an empty nat table and says so
/// in [`DryRun::notes`].
pub fn dry_run(settings: &Settings, action: Action) -> Result<DryRun, Error> {
    settings.check()?;
    let families = settings.families();
    let mut notes = Vec::new();
    let (backend, readable) = match iptables::choose(settings.mode, &families, &System) {
        Ok(backend) => {
            log_backend(&backend, &families);
            (backend, true)
        }
        Err(e) => {
            let backend = iptables::assumed(settings.mode);
            notes.push(format!(
                "cannot choose the iptables backend ({e}); showing {} commands, against empty nat tables",
                backend.kind
            ));
            (backend, false)
        }
    };
    let mut planned = Vec::new();
    for &family in &families {
        let nat = if readable {
            iptables::read_nat(&backend, family, &System).unwrap_or_else(|e| {
                notes.push(format!(
                    "cannot read the current {family} rules ({e}); rendering against an empty nat table"
                ));
                Table::empty_nat()
            })
        } else {
            Table::empty_nat()
        };
        let input = match action {
            Action::Program => Some(rules::program_input(settings, family, &nat)),
            Action::Cleanup => rules::cleanup_input(&nat),
        };
        planned.push(DryRunFamily {
            family,
            command: backend.restore_command(family),
            input,
        });
    }
    Ok(DryRun {
        notes,
        families: planned,
    })
}

/// Proves that outbound connections reach the proxy port (see [`mod@validate`]).
/// Run it after [`apply`], in the same network namespace, as a user other
/// than the proxy's.
pub fn validate(settings: &Settings, v: &ValidateSettings) -> Result<Validated, Error> {
    settings.check()?;
    settings.check_validate(v)?;
    Ok(validate::validate(settings, v)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_errors_name_the_flag() {
        let s = Settings {
            proxy_port: 0,
            ..Settings::default()
        };
        match s.check() {
            Err(e) => assert_eq!(e.to_string(), "--proxy-port: port 0 is not a port"),
            Ok(()) => panic!("port 0 accepted"),
        }
        assert!(Settings::default().check().is_ok());
    }

    #[test]
    fn the_proxy_ports_must_differ() {
        let s = Settings {
            admin_port: names::port::PROXY_INBOUND,
            ..Settings::default()
        };
        match s.check() {
            Err(e) => {
                assert_eq!(e.flag, "--admin-port");
                assert!(e.message.contains("also --inbound-port"), "{e}");
            }
            Ok(()) => panic!("the admin port was accepted as the inbound port"),
        }
    }

    #[test]
    fn dry_run_output_has_a_header_per_family() {
        let run = DryRun {
            notes: vec![],
            families: vec![
                DryRunFamily {
                    family: Family::V4,
                    command: "iptables-nft-restore --noflush".into(),
                    input: Some("*nat\nCOMMIT\n".into()),
                },
                DryRunFamily {
                    family: Family::V6,
                    command: "ip6tables-nft-restore --noflush".into(),
                    input: None,
                },
            ],
        };
        assert_eq!(
            run.to_string(),
            "# iptables-nft-restore --noflush\n*nat\nCOMMIT\n\
             # ip6tables-nft-restore --noflush: not run, nothing of divert's is in the IPv6 nat table\n"
        );
    }

    #[test]
    fn restore_errors_show_the_offending_line() {
        let e = Error::RestoreFailed {
            command: "iptables-nft-restore --noflush".into(),
            status: "exit status: 2".into(),
            stderr: "iptables-nft-restore v1.8.9 (nf_tables): too many ports specified; Error occurred at line: 3".into(),
            offending: Some((3, "-A DIVERT_OUTPUT -p tcp -m multiport --dports 1".into())),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("too many ports")
                && msg
                    .ends_with("input line 3 was: -A DIVERT_OUTPUT -p tcp -m multiport --dports 1"),
            "{msg}"
        );
    }
}
