//! `divert-proxy init`: programs iptables so the pod's TCP goes through the
//! proxy, outbound and inbound. Runs as the pod's init container.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use divert_init::{Action, Cidr, Error, Mode, PortRange, Settings, ValidateSettings};

use divert_core::names;
use divert_core::process::EXIT_USAGE;

#[derive(Args, Debug)]
#[command(after_help = "Exit status: 0 on success, 64 for a bad flag, 1 for any other failure.")]
pub struct InitArgs {
    /// The port the proxy accepts redirected outbound connections on.
    #[arg(long, env = "DIVERT_PROXY_PORT", default_value_t = names::port::PROXY,
          value_parser = clap::value_parser!(u16).range(1..), value_name = "PORT")]
    proxy_port: u16,

    /// The port the proxy accepts redirected inbound connections on.
    #[arg(long, env = "DIVERT_INBOUND_PORT", default_value_t = names::port::PROXY_INBOUND,
          value_parser = clap::value_parser!(u16).range(1..), value_name = "PORT")]
    inbound_port: u16,

    /// The proxy's admin port. Connections to it (kubelet's probes of the
    /// proxy) are never redirected.
    #[arg(long, env = "DIVERT_ADMIN_PORT", default_value_t = names::port::PROXY_ADMIN,
          value_parser = clap::value_parser!(u16).range(1..), value_name = "PORT")]
    admin_port: u16,

    /// The uid the proxy runs as. Its connections are never redirected (they
    /// would loop back into the proxy).
    #[arg(long, env = "DIVERT_PROXY_UID", default_value_t = names::PROXY_UID, value_name = "UID")]
    proxy_uid: u32,

    /// Also exempt connections of this gid from redirection.
    #[arg(long, env = "DIVERT_PROXY_GID", value_name = "GID")]
    proxy_gid: Option<u32>,

    /// Destination ports whose connections go out directly, not through the
    /// proxy: a comma-separated list of ports and ranges (`22,6000-6010`).
    /// May be repeated.
    #[arg(long, env = "DIVERT_SKIP_OUTBOUND_PORTS", value_name = "PORTS", value_parser = port_list)]
    skip_outbound_ports: Vec<PortList>,

    /// Ports of the pod whose incoming connections go straight to the app,
    /// not through the proxy: a comma-separated list of ports and ranges.
    /// May be repeated.
    #[arg(long, env = "DIVERT_SKIP_INBOUND_PORTS", value_name = "PORTS", value_parser = port_list)]
    skip_inbound_ports: Vec<PortList>,

    /// Destinations whose connections go out directly: a comma-separated list
    /// of IPv4 and IPv6 CIDRs or addresses (`169.254.169.254,10.0.0.0/8`).
    /// May be repeated.
    #[arg(long, env = "DIVERT_SKIP_OUTBOUND_CIDRS", value_name = "CIDRS", value_parser = cidr_list)]
    skip_outbound_cidrs: Vec<CidrList>,

    /// Redirect only connections to these CIDRs (comma-separated, may be
    /// repeated). An address family with no CIDR here is not redirected at
    /// all. Default: every destination not skipped.
    #[arg(long, env = "DIVERT_INCLUDE_OUTBOUND_CIDRS", value_name = "CIDRS", value_parser = cidr_list)]
    include_outbound_cidrs: Vec<CidrList>,

    /// The iptables backend. `auto` uses legacy if legacy iptables already
    /// has rules in this network namespace, else nft.
    #[arg(long, env = "DIVERT_IPTABLES_MODE", value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,

    /// Do not program IPv6 (it is programmed by default when the kernel has
    /// IPv6).
    #[arg(long, env = "DIVERT_NO_IPV6")]
    no_ipv6: bool,

    /// Remove every rule and chain divert init added, and nothing else.
    #[arg(long, conflicts_with_all = ["validate", "validate_only"])]
    cleanup: bool,

    /// Print, per address family, the exact iptables-restore command and its
    /// input, and change nothing. Needs no privileges: without them it shows
    /// the input against an empty nat table and says so on stderr.
    #[arg(long, conflicts_with_all = ["validate", "validate_only"])]
    dry_run: bool,

    /// After programming, prove that outbound connections reach the proxy
    /// port (see --validate-address).
    #[arg(long, conflicts_with = "validate_only")]
    validate: bool,

    /// Program nothing; only prove that outbound connections reach the proxy
    /// port. Must run in the pod's network namespace, as a user other than
    /// --proxy-uid, while the proxy port is free.
    #[arg(long)]
    validate_only: bool,

    /// Where validation connects. It must be redirected: outside the skipped
    /// CIDRs and ports, inside --include-outbound-cidrs if given, and
    /// routable. The default is TEST-NET-1, which no real host answers.
    #[arg(long, value_name = "IP:PORT", default_value_t = divert_init::validate::DEFAULT_ADDRESS)]
    validate_address: SocketAddr,

    /// How long validation waits for the redirected connection (`250ms`, `5s`).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = divert_core::duration::parse)]
    validate_timeout: Duration,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Auto,
    Legacy,
    Nft,
}

#[derive(Clone, Debug)]
struct PortList(Vec<PortRange>);

#[derive(Clone, Debug)]
struct CidrList(Vec<Cidr>);

fn port_list(s: &str) -> Result<PortList, divert_init::ports::PortError> {
    divert_init::ports::parse_port_list(s).map(PortList)
}

fn cidr_list(s: &str) -> Result<CidrList, divert_init::cidr::CidrError> {
    divert_init::cidr::parse_cidr_list(s).map(CidrList)
}

impl InitArgs {
    fn settings(&self) -> Settings {
        Settings {
            proxy_port: self.proxy_port,
            inbound_port: self.inbound_port,
            admin_port: self.admin_port,
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            skip_outbound_ports: self
                .skip_outbound_ports
                .iter()
                .flat_map(|l| l.0.iter().copied())
                .collect(),
            skip_inbound_ports: self
                .skip_inbound_ports
                .iter()
                .flat_map(|l| l.0.iter().copied())
                .collect(),
            skip_outbound_cidrs: self
                .skip_outbound_cidrs
                .iter()
                .flat_map(|l| l.0.iter().copied())
                .collect(),
            include_outbound_cidrs: self
                .include_outbound_cidrs
                .iter()
                .flat_map(|l| l.0.iter().copied())
                .collect(),
            mode: match self.mode {
                ModeArg::Auto => Mode::Auto,
                ModeArg::Legacy => Mode::Legacy,
                ModeArg::Nft => Mode::Nft,
            },
            ipv6: !self.no_ipv6,
        }
    }

    fn validate_settings(&self) -> ValidateSettings {
        ValidateSettings {
            address: self.validate_address,
            timeout: self.validate_timeout,
        }
    }
}

pub fn main(args: InitArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("divert-proxy init: {e}");
            if e.is_usage() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(args: &InitArgs) -> Result<(), Error> {
    let settings = args.settings();
    settings.check()?;
    let validating = args.validate || args.validate_only;
    if validating {
        // Before programming anything, so a bad flag changes nothing.
        settings.check_validate(&args.validate_settings())?;
    }
    let action = if args.cleanup {
        Action::Cleanup
    } else {
        Action::Program
    };

    if args.dry_run {
        let plan = divert_init::dry_run(&settings, action)?;
        for note in &plan.notes {
            eprintln!("divert-proxy init: {note}");
        }
        print!("{plan}");
        return Ok(());
    }
    if !args.validate_only {
        divert_init::apply(&settings, action)?;
    }
    if validating {
        let v = args.validate_settings();
        let validated = divert_init::validate(&settings, &v)?;
        tracing::info!(
            elapsed = ?validated.elapsed,
            "validated: a connection to {} reached port {} with that original destination",
            validated.original_destination,
            settings.proxy_port
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    fn parse(args: &[&str]) -> Result<InitArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("init").chain(args.iter().copied())).map(|c| c.init)
    }

    fn error(args: &[&str]) -> String {
        match parse(args) {
            Ok(a) => panic!("{args:?} parsed: {a:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults() {
        let args = match parse(&[]) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(args.settings(), Settings::default());
        assert_eq!(args.validate_settings(), ValidateSettings::default());
    }

    #[test]
    fn lists_may_repeat_and_mix_families() {
        let args = match parse(&[
            "--skip-outbound-ports",
            "22,80-90",
            "--skip-outbound-ports=443",
            "--skip-outbound-cidrs",
            "10.0.0.0/8,fd00::/8",
            "--include-outbound-cidrs",
            "10.96.0.0/12",
            "--proxy-gid",
            "2103",
            "--mode",
            "legacy",
            "--no-ipv6",
        ]) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        let s = args.settings();
        let ports: Vec<String> = s
            .skip_outbound_ports
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(ports, ["22", "80:90", "443"]);
        assert_eq!(s.skip_outbound_cidrs.len(), 2);
        assert_eq!(s.include_outbound_cidrs.len(), 1);
        assert_eq!(
            (s.proxy_gid, s.mode, s.ipv6),
            (Some(2103), Mode::Legacy, false)
        );
    }

    #[test]
    fn bad_flags_are_named() {
        for (args, flag, why) in [
            (
                &["--skip-outbound-ports", "0"][..],
                "--skip-outbound-ports",
                "port 0",
            ),
            (
                &["--skip-outbound-ports", "90-80"],
                "--skip-outbound-ports",
                "reversed",
            ),
            (
                &["--skip-outbound-cidrs", "10.0.0.0/33"],
                "--skip-outbound-cidrs",
                "32",
            ),
            (
                &["--include-outbound-cidrs", "nope"],
                "--include-outbound-cidrs",
                "not a CIDR",
            ),
            (&["--proxy-port", "0"], "--proxy-port", "0"),
            (&["--mode", "iptables"], "--mode", "iptables"),
            (
                &["--validate-address", "192.0.2.1"],
                "--validate-address",
                "192.0.2.1",
            ),
            (&["--validate-timeout", "5"], "--validate-timeout", "unit"),
            (
                &["--validate", "--validate-only"],
                "--validate",
                "cannot be used",
            ),
            (&["--cleanup", "--validate"], "--cleanup", "cannot be used"),
            (
                &["--dry-run", "--validate-only"],
                "--dry-run",
                "cannot be used",
            ),
        ] {
            let msg = error(args);
            assert!(msg.contains(flag) && msg.contains(why), "{args:?}: {msg}");
        }
    }

    #[test]
    fn validate_address_outside_what_is_redirected_is_a_usage_error() {
        let args = match parse(&["--validate", "--skip-outbound-ports", "80"]) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        match run(&args) {
            Err(e) => {
                assert!(e.is_usage(), "{e}");
                assert!(e.to_string().starts_with("--validate-address: "), "{e}");
            }
            Ok(()) => panic!("accepted"),
        }
    }
}
