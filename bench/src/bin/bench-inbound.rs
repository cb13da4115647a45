//! `bench-inbound`: what routing at the receiving pod adds to a request.
//!
//! Three pods on one bridge, as network namespaces: a caller without a
//! sidecar (an ingress controller, say), and staging's and alice's pods, each
//! with `divert-proxy init`'s rules, its proxy and a `bench-upstream` app.
//! The caller sends HTTP/1.1 at a fixed rate (`bench-load`, open loop) to
//! staging's pod three ways:
//!
//! - `direct`: to a port the inbound redirect skips, straight to the app;
//! - `inbound`: through staging's inbound proxy to its own app (no key);
//! - `hop`: with alice's key, through staging's inbound proxy to alice's
//!   pod, whose inbound proxy delivers it to her app (the extra hop).
//!
//! Apps and proxies share one core (`--server-cpu`), the load generator has
//! the other, as in `bench/run.sh`. Each mode runs `--rounds` times, in turn,
//! and the table gives the medians. Needs root.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Parser;
use divert_core::names::PROXY_UID;
use divert_tests::TempDir;
use divert_tests::netns::{Lan, Pod, Process, run_ok};

/// The app's port, redirected to the inbound proxy.
const APP: u16 = 8080;
/// The same app on a port the inbound redirect skips.
const DIRECT: u16 = 8081;

/// Measures the latency routing at the receiving pod adds (see the module
/// docs); prints a Markdown table.
#[derive(Parser, Debug)]
#[command(name = "bench-inbound")]
struct Args {
    /// The `divert-proxy` binary (init and proxy).
    #[arg(long)]
    sidecar: PathBuf,

    /// Where `bench-upstream` and `bench-load` are (default: beside this
    /// binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,

    /// Fixed rates, requests per second.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    rates: Vec<u32>,

    /// Seconds of each measured run.
    #[arg(long, default_value_t = 10)]
    duration: u32,

    /// Seconds of load before each run, not recorded.
    #[arg(long, default_value_t = 1)]
    warmup: u32,

    /// Rounds over the three modes; the table gives the medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 16)]
    connections: u32,

    /// The core of the apps and proxies.
    #[arg(long, default_value_t = 0)]
    server_cpu: u32,

    /// The core of the load generator.
    #[arg(long, default_value_t = 1)]
    client_cpu: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    Inbound,
    Hop,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Direct, Mode::Inbound, Mode::Hop];

    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Inbound => "inbound",
            Mode::Hop => "hop",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Direct => "caller → staging's app (skipped port)",
            Mode::Inbound => "caller → staging's inbound proxy → staging's app",
            Mode::Hop => {
                "caller → staging's inbound proxy → alice's inbound proxy → alice's app (alice's key)"
            }
        }
    }
}

/// One measured run: what bench-load printed that the table uses.
#[derive(Clone, Copy)]
struct Run {
    p50: f64,
    p99: f64,
    achieved: f64,
    errors: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !divert_tests::netns::available() {
        eprintln!("bench-inbound needs root, ip, iptables and setpriv (see the SKIP line above)");
        return ExitCode::from(2);
    }
    let bin_dir = match args.bin_dir.clone().or_else(|| {
        std::env::current_exe()
            .ok()?
            .parent()
            .map(Path::to_path_buf)
    }) {
        Some(d) => d,
        None => {
            eprintln!("bench-inbound: cannot tell where bench-upstream is; give --bin-dir");
            return ExitCode::from(2);
        }
    };
    match bench(&args, &bin_dir) {
        Ok(table) => {
            println!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-inbound: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &Args, bin_dir: &Path) -> Result<String, String> {
    let mut lan = Lan::new();
    let caller = lan.pod("in-caller");
    let staging = lan.pod("in-staging");
    let alice = lan.pod("in-alice");
    let server_cpu = args.server_cpu.to_string();
    let upstream = |pod: &Pod, ports: &[u16], body: &str| {
        let mut cmd = pod.ns.command("taskset");
        cmd.args(["-c", &server_cpu])
            .arg(bin_dir.join("bench-upstream"));
        for port in ports {
            cmd.arg("--listen")
                .arg(SocketAddr::new(IpAddr::V4(pod.ipv4), *port).to_string());
        }
        cmd.args(["--body", body]);
        Process::spawn(cmd, "listening")
    };
    let _apps = [
        upstream(&staging, &[APP, DIRECT], "staging"),
        upstream(&alice, &[APP], "alice"),
    ];

    let direct = DIRECT.to_string();
    run_ok(
        staging
            .ns
            .command(&args.sidecar)
            .args(["init", "--skip-inbound-ports", &direct]),
    );
    run_ok(alice.ns.command(&args.sidecar).arg("init"));
    let dir = TempDir::readable_by_all("inbound-bench");
    let registry = dir.path().join("registry.yaml");
    let (s4, a4) = (staging.ipv4, alice.ipv4);
    std::fs::write(
        &registry,
        format!(
            "namespaces:
  - {{ name: staging }}
  - {{ name: alice, sharedNamespace: staging }}
services:
  - {{ name: web, namespace: staging, addresses: ['10.96.0.10'], ports: [{{ name: http, port: 80, targetPort: {APP} }}], endpoints: ['{s4}'] }}
  - {{ name: web, namespace: alice, addresses: ['10.96.1.10'], ports: [{{ name: http, port: 80, targetPort: {APP} }}], endpoints: ['{a4}'] }}
"
        ),
    )
    .map_err(|e| format!("write {}: {e}", registry.display()))?;
    let proxy = |pod: &Pod, namespace: &str| {
        let mut cmd = pod.ns.command_as(PROXY_UID, "taskset");
        cmd.args(["-c", &server_cpu])
            .arg(&args.sidecar)
            .args(["--log-level", "warn,divert=info", "proxy", "--transparent"])
            .arg("--registry")
            .arg(&registry)
            .args(["--namespace", namespace]);
        Process::spawn(cmd, "divert proxy ready")
    };
    let _proxies = [proxy(&staging, "staging"), proxy(&alice, "alice")];

    let mut runs: Vec<(Mode, u32, Run)> = Vec::new();
    for round in 1..=args.rounds {
        for &rate in &args.rates {
            for mode in Mode::ALL {
                let run = load(args, bin_dir, &caller, &staging, mode, rate)?;
                eprintln!(
                    "bench-inbound: round {round}, {} at {rate}/s: p50 {:.0} µs, p99 {:.0} µs",
                    mode.name(),
                    run.p50,
                    run.p99
                );
                runs.push((mode, rate, run));
            }
        }
    }
    Ok(table(args, &runs))
}

/// One fixed-rate run from the caller pod, checked to reach the right app.
fn load(
    args: &Args,
    bin_dir: &Path,
    caller: &Pod,
    staging: &Pod,
    mode: Mode,
    rate: u32,
) -> Result<Run, String> {
    let port = if mode == Mode::Direct { DIRECT } else { APP };
    let url = format!("http://{}:{port}/", staging.ipv4);
    let mut cmd: Command = caller.ns.command("taskset");
    cmd.args(["-c", &args.client_cpu.to_string()])
        .arg(bin_dir.join("bench-load"))
        .args(["--url", &url])
        .args(["--rate", &rate.to_string()])
        .args(["--duration", &args.duration.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--connections", &args.connections.to_string()]);
    if mode == Mode::Hop {
        cmd.args([
            "-H",
            "baggage: okteto-divert=alice",
            "--expect-body",
            "alice",
        ]);
    } else {
        cmd.args(["--expect-body", "staging"]);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run bench-load: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "bench-load ({}) failed: {}{}",
            mode.name(),
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let field = |name: &str| -> Result<f64, String> {
        json_number(&text, name).ok_or_else(|| format!("bench-load said no {name}: {text}"))
    };
    if field("errors")? > 0.0 {
        return Err(format!(
            "{} at {rate}/s: requests failed or reached the wrong app: {text}",
            mode.name()
        ));
    }
    Ok(Run {
        p50: field("p50_us")?,
        p99: field("p99_us")?,
        achieved: field("achieved_rate")?,
        errors: field("errors")?,
    })
}

/// The number after `"name":` in bench-load's one-line JSON.
fn json_number(json: &str, name: &str) -> Option<f64> {
    let at = json.find(&format!("\"{name}\":"))? + name.len() + 3;
    let rest = json.get(at..)?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')))
        .unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The Markdown table: medians per mode and rate, and what each adds over
/// `direct`.
fn table(args: &Args, runs: &[(Mode, u32, Run)]) -> String {
    let mut out = format!(
        "{} round(s) of {} s at each rate, {} connections; µs, medians\n\n\
         | path | rate req/s | p50 | p99 | p50 added | p99 added | achieved req/s | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        args.rounds, args.duration, args.connections
    );
    for &rate in &args.rates {
        let of = |mode: Mode, pick: fn(&Run) -> f64| {
            median(
                runs.iter()
                    .filter(|(m, r, _)| *m == mode && *r == rate)
                    .map(|(_, _, run)| pick(run))
                    .collect(),
            )
        };
        let (base50, base99) = (of(Mode::Direct, |r| r.p50), of(Mode::Direct, |r| r.p99));
        for mode in Mode::ALL {
            let (p50, p99) = (of(mode, |r| r.p50), of(mode, |r| r.p99));
            let added = |v: f64, base: f64| {
                if mode == Mode::Direct {
                    "-".to_string()
                } else {
                    format!("{:+.0}", v - base)
                }
            };
            let errors: f64 = runs
                .iter()
                .filter(|(m, r, _)| *m == mode && *r == rate)
                .map(|(_, _, run)| run.errors)
                .sum();
            out.push_str(&format!(
                "| {} | {rate} | {p50:.0} | {p99:.0} | {} | {} | {:.0} | {errors:.0} |\n",
                mode.describe(),
                added(p50, base50),
                added(p99, base99),
                of(mode, |r| r.achieved),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_from_bench_loads_json() {
        let json = r#"{"rate":1000,"p50_us":312.5,"p99_us":1204,"achieved_rate":999.8,"errors":0}"#;
        assert_eq!(json_number(json, "p50_us"), Some(312.5));
        assert_eq!(json_number(json, "p99_us"), Some(1204.0));
        assert_eq!(json_number(json, "errors"), Some(0.0));
        assert_eq!(json_number(json, "p90_us"), None);
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
