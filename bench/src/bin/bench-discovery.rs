//! `bench-discovery`: the control plane at scale.
//!
//! Builds a synthetic cluster (by default 10 000 services in 500 namespaces:
//! 50 shared, 450 divert namespaces of them), feeds it to a real controller
//! [`Store`], serves it over real gRPC with
//! [`divert_controller::server::serve`] on 127.0.0.1, and connects real
//! proxies: `--in-process` ones (each on its own single-threaded runtime, as
//! in a sidecar) and, with `--proxy-bin`, one `divert-proxy proxy` process. It
//! reports:
//!
//! 1. the snapshot's size (`prost` encoded length; the server does not
//!    compress, so the wire adds only gRPC's 5-byte prefix and HTTP/2 frame
//!    headers);
//! 2. the time to apply it: in-process (decode, `to_patch`, `Table::patch`,
//!    several runs) and as the proxy process logs it (`took`, which is
//!    `to_patch` + `Table::patch`);
//! 3. the table's memory: the proxy process's VmRSS with an empty table and
//!    after the snapshot, its VmHWM, and the heap the table holds in-process
//!    (a counting allocator);
//! 4. update latency under churn: changes applied to the store at a fixed
//!    rate, each timed from the call of `Store::apply` to the moment each
//!    proxy's table reflects its revision; and the proxy process's CPU.
//!
//! The proxy process runs with `--log-level info,divert_proxy::discovery=debug`
//! so that it logs every update it applies; the harness timestamps each line
//! as it arrives on the pipe.

use std::alloc::{GlobalAlloc, Layout, System};
use std::error::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use divert_controller::store::{Change, Store};
use divert_proto::discovery::v1 as pb;
use divert_proxy::discovery::{DiscoverySettings, to_patch};
use divert_proxy::table::Table;
use divert_proxy::{Config, Proxy, Shared, Source};
use prost::Message;

/// Counts the bytes the process has asked for and not freed, to weigh the
/// table in-process. It counts requested sizes, not malloc's own overhead.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// The workspace's one `unsafe`: a global allocator can only be written as
// one. SAFETY: every call is forwarded to the system allocator unchanged.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_bytes() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// The control plane at scale: snapshot size, apply time, table memory and
/// update latency under churn, with a real store, gRPC server and proxies.
#[derive(Parser, Debug)]
#[command(name = "bench-discovery")]
struct Args {
    /// Services in the synthetic cluster.
    #[arg(long, default_value_t = 10_000)]
    services: usize,

    /// Namespaces in all.
    #[arg(long, default_value_t = 500)]
    namespaces: usize,

    /// How many of the namespaces are shared; the rest are divert namespaces
    /// of them (round-robin). Half the services live in the shared ones.
    #[arg(long, default_value_t = 50)]
    shared: usize,

    /// Changes per second applied to the store during the churn.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,

    /// Seconds of churn (0: none).
    #[arg(long, default_value_t = 30.0)]
    duration: f64,

    /// Proxies run inside this process, each on its own single-threaded
    /// runtime.
    #[arg(long = "in-process", default_value_t = 2)]
    in_process: usize,

    /// The sidecar binary to run one proxy process with (`divert-proxy proxy
    /// --discovery ... --transparent`); without it there is none.
    #[arg(long)]
    proxy_bin: Option<PathBuf>,

    /// Repetitions of each in-process timing (snapshot build, encode, decode,
    /// apply).
    #[arg(long, default_value_t = 10)]
    runs: usize,

    /// Seed of the churn's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Run the proxy process with this harness's own binary (the same proxy
    /// code, started as `divert-proxy proxy --discovery URL --transparent
    /// --outbound-port 0` starts it) instead of `--proxy-bin`.
    #[arg(long)]
    self_proxy: bool,

    /// Internal: be the stand-in proxy process for this controller URL.
    #[arg(long, hide = true, value_name = "URL")]
    child_proxy: Option<String>,

    /// Internal: the stand-in proxy process's admin address.
    #[arg(long, hide = true, value_name = "ADDR")]
    child_admin: Option<SocketAddr>,
}

/// The log filter of the proxy process: `divert-proxy proxy`'s default, plus
/// one line per update applied.
const PROXY_LOG: &str = "info,divert_proxy::discovery=debug";

/// The stand-in proxy process: what `divert-proxy proxy --discovery URL
/// --transparent --outbound-port 0 --admin-addr ADDR --workers 1` runs,
/// through the same start-up (`divert_proxy::run`), with its logging.
fn child_proxy(url: String, admin: SocketAddr) -> Result<(), Box<dyn Error>> {
    divert_core::logging::init(PROXY_LOG)?;
    let rt = divert_core::process::runtime(1)?;
    rt.block_on(async move {
        let mut settings = DiscoverySettings::new(url);
        settings.proxy.pod = "bench-proxy-process".into();
        let _running = divert_proxy::run::start(divert_proxy::run::Settings {
            config: Config::default(),
            source: Source::Discovery(settings),
            transparent: Some(divert_proxy::run::transparent_listeners(0, None)),
            admin: Some(admin),
            log: None,
        })
        .await?;
        eprintln!("divert proxy ready (transparent mode, bench-discovery stand-in)");
        // Until the harness kills it.
        std::future::pending::<()>().await;
        Ok(())
    })
}

// ------------------------------------------------------------- the cluster

/// splitmix64: deterministic choices without a generator crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn shared_name(i: usize) -> String {
    format!("shared-{i:02}")
}

fn divert_name(i: usize) -> String {
    format!("dev-{i:03}")
}

/// Makes services with unique ClusterIPs and pod IPs.
#[derive(Default)]
struct Maker {
    services: u32,
    pods: u32,
}

/// Pods per service; each port has one endpoint per pod and family.
const PODS: usize = 3;

fn pod_ips(pod: u32) -> (Vec<u8>, Vec<u8>) {
    let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + pod);
    let v6 = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, (pod >> 16) as u16, pod as u16);
    (v4.octets().to_vec(), v6.octets().to_vec())
}

impl Maker {
    /// A service: ClusterIP 10.96.0.0/12 (every 10th dual-stack, with an IPv6
    /// one too), port 80 `http` (every 3rd also 9090 `grpc`), 3 ready pods.
    fn service(&mut self, namespace: String, name: String) -> pb::Service {
        let idx = self.services;
        self.services += 1;
        let dual = idx.is_multiple_of(10);
        let mut addresses = vec![
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + idx)
                .octets()
                .to_vec(),
        ];
        if dual {
            let v6 = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, (idx >> 16) as u16, idx as u16);
            addresses.push(v6.octets().to_vec());
        }
        let pods: Vec<(Vec<u8>, Vec<u8>)> = (0..PODS)
            .map(|_| {
                self.pods += 1;
                pod_ips(self.pods)
            })
            .collect();
        let mut ports = vec![("http", 80, 8080)];
        if idx.is_multiple_of(3) {
            ports.push(("grpc", 9090, 9090));
        }
        let ports = ports
            .into_iter()
            .map(|(pname, port, target)| {
                let mut endpoints: Vec<pb::Endpoint> = pods
                    .iter()
                    .map(|(v4, _)| pb::Endpoint {
                        ip: v4.clone(),
                        port: target,
                    })
                    .collect();
                if dual {
                    endpoints.extend(pods.iter().map(|(_, v6)| pb::Endpoint {
                        ip: v6.clone(),
                        port: target,
                    }));
                }
                pb::Port {
                    name: pname.into(),
                    port,
                    endpoints,
                }
            })
            .collect();
        pb::Service {
            namespace,
            name,
            addresses,
            ports,
        }
    }

    /// Replaces pod `slot` of `svc` with a new pod (a rescheduled pod: one
    /// endpoint changes in every port and family).
    fn reschedule(&mut self, svc: &mut pb::Service, slot: usize) {
        self.pods += 1;
        let (v4, v6) = pod_ips(self.pods);
        for port in &mut svc.ports {
            if let Some(e) = port.endpoints.get_mut(slot) {
                e.ip = v4.clone();
            }
            if let Some(e) = port.endpoints.get_mut(slot + PODS) {
                e.ip = v6.clone();
            }
        }
    }
}

struct Cluster {
    namespaces: Vec<pb::Namespace>,
    all_namespaces: Vec<String>,
    services: Vec<pb::Service>,
    maker: Maker,
}

/// The divert namespaces (each labelled with its shared namespace) and the
/// services: half in the shared namespaces (each a complete copy of an app),
/// half in the divert namespaces, named like services of their shared one.
fn cluster(args: &Args) -> Cluster {
    let divert = args.namespaces - args.shared;
    let namespaces: Vec<pb::Namespace> = (0..divert)
        .map(|i| pb::Namespace {
            name: divert_name(i),
            shared_namespace: shared_name(i % args.shared),
            ..pb::Namespace::default()
        })
        .collect();
    let all_namespaces = (0..args.shared)
        .map(shared_name)
        .chain((0..divert).map(divert_name))
        .collect();
    let in_shared = if divert == 0 {
        args.services
    } else {
        args.services.div_ceil(2)
    };
    let mut maker = Maker::default();
    let services = (0..args.services)
        .map(|k| {
            let (ns, name) = if k < in_shared {
                (shared_name(k % args.shared), k / args.shared)
            } else {
                let j = k - in_shared;
                (divert_name(j % divert), j / divert)
            };
            maker.service(ns, format!("svc-{name:03}"))
        })
        .collect();
    Cluster {
        namespaces,
        all_namespaces,
        services,
        maker,
    }
}

// ------------------------------------------------------------- figures

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn mib(bytes: f64) -> String {
    format!("{:.1}", bytes / (1024.0 * 1024.0))
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// run 1 / min / median / max of a few runs, in ms.
fn spread(samples: &[Duration]) -> String {
    let mut s = samples.to_vec();
    s.sort();
    format!("{} | {}", ms(samples[0]), spread_sorted(&s))
}

fn spread_sorted(s: &[Duration]) -> String {
    format!(
        "{} | {} | {}",
        ms(s[0]),
        ms(pct(s, 50.0)),
        ms(s[s.len() - 1])
    )
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

// ------------------------------------------------------------- /proc

fn proc_file(pid: &str, file: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()
}

/// A `kB` field of /proc/PID/status, in bytes.
fn status_bytes(pid: &str, key: &str) -> Option<f64> {
    let status = proc_file(pid, "status")?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// utime + stime of a process, in seconds (USER_HZ is 100 on Linux).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = proc_file(pid, "stat")?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Minor page faults of a process so far (first touches of fresh memory).
fn minor_faults(pid: &str) -> Option<u64> {
    let stat = proc_file(pid, "stat")?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split_whitespace().nth(7)?.parse().ok()
}

/// CPU seconds the whole machine has spent busy (user, nice, system, irq,
/// softirq) and stolen by the hypervisor, from /proc/stat.
fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?;
    Some((busy as f64 / 100.0, *v.get(7)? as f64 / 100.0))
}

/// What else ran during a window: CPU seconds used by other processes (the
/// machine's busy time minus this process's and the proxy process's) and
/// stolen by the hypervisor.
fn others(
    machine: Option<((f64, f64), (f64, f64))>,
    ours: Option<f64>,
    wall: Duration,
    cpus: usize,
) -> String {
    let Some(((b0, s0), (b1, s1))) = machine else {
        return "unknown (no /proc/stat)".into();
    };
    let other = (b1 - b0 - ours.unwrap_or(0.0)).max(0.0);
    format!(
        "other processes {other:.2} CPU s, steal {:.2} s, in {:.1} s on {cpus} CPUs ({:.1} % of the machine)",
        s1 - s0,
        wall.as_secs_f64(),
        100.0 * (other + s1 - s0) / (wall.as_secs_f64() * cpus as f64)
    )
}

// ------------------------------------------------------------- the proxy process

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The number after `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(key)? + key.len();
    line[at..].split_whitespace().next()
}

/// A `Duration` as `Debug` prints it: `850.2µs`, `12.3ms`, `1.2s`.
fn parse_debug_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "ns" => n * 1e-9,
        "µs" | "us" => n * 1e-6,
        "ms" => n * 1e-3,
        "s" => n,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// Log lines of the proxy process, each stamped when it arrived.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

struct ProxyProcess {
    child: Child,
    pid: String,
    admin: SocketAddr,
    lines: Lines,
}

/// How the proxy process is started.
enum ProxyCommand<'a> {
    /// `divert-proxy proxy --discovery ... --transparent ...`
    Divert(&'a PathBuf),
    /// This binary with `--child-proxy`.
    StandIn,
}

impl ProxyProcess {
    fn start(how: ProxyCommand, grpc: SocketAddr) -> Result<ProxyProcess, Box<dyn Error>> {
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let url = format!("http://{grpc}");
        let mut command = match how {
            ProxyCommand::Divert(bin) => {
                let mut c = Command::new(bin);
                c.args([
                    "proxy",
                    "--discovery",
                    &url,
                    "--transparent",
                    "--outbound-port",
                    "0",
                    "--admin-addr",
                    &admin.to_string(),
                    "--pod-name",
                    "bench-proxy-process",
                    "--log-level",
                    PROXY_LOG,
                ]);
                c
            }
            ProxyCommand::StandIn => {
                let mut c = Command::new(std::env::current_exe()?);
                c.args(["--child-proxy", &url, "--child-admin", &admin.to_string()]);
                c
            }
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {command:?}: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let lines: Lines = Arc::default();
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let now = Instant::now();
                if let Ok(mut l) = sink.lock() {
                    l.push((now, line));
                }
            }
        });
        let pid = child.id().to_string();
        let mut p = ProxyProcess {
            child,
            pid,
            admin,
            lines,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while http_get(p.admin, "/live").is_err() {
            if let Ok(Some(status)) = p.child.try_wait() {
                thread::sleep(Duration::from_millis(50));
                return Err(format!(
                    "the proxy process exited ({status}): {}",
                    p.output().trim_end()
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(format!("the proxy process did not answer on {admin}").into());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(p)
    }

    /// Everything it has logged.
    fn output(&self) -> String {
        self.lines
            .lock()
            .map(|l| l.iter().map(|(_, l)| format!("{l}\n")).collect())
            .unwrap_or_default()
    }

    /// Waits for a log line containing `what`; returns it and its time.
    fn wait_line(&self, what: &str, timeout: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self
                .lines
                .lock()
                .ok()?
                .iter()
                .find(|(_, l)| l.contains(what))
            {
                return Some(found.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// (arrival, revision) of every table the process applied.
    fn revisions(&self) -> Vec<(Instant, u64)> {
        self.lines
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|(_, l)| l.contains("from the controller"))
                    .filter_map(|(t, l)| Some((*t, field(l, "revision=")?.parse().ok()?)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------- in-process proxies

struct InProcess {
    shared: Arc<Shared>,
    /// (time, revision) each time the table status changed.
    events: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl InProcess {
    fn start(endpoint: String, i: usize) -> Result<InProcess, Box<dyn Error>> {
        let (tx, rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let events: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let sink = events.clone();
        let thread = thread::Builder::new()
            .name(format!("proxy-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut settings = DiscoverySettings::new(endpoint);
                    settings.proxy.pod = format!("bench-proxy-{i}");
                    let proxy = match Proxy::start_transparent(
                        Config::default(),
                        Source::Discovery(settings),
                        &[],
                    ) {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let mut status = proxy.shared.tables.watch_status();
                    let _ = tx.send(Ok(proxy.shared.clone()));
                    // On the proxy's own runtime: it runs as soon as the
                    // discovery task yields after applying an update.
                    let watch = async {
                        while status.changed().await.is_ok() {
                            let now = Instant::now();
                            let revision = status.borrow_and_update().revision;
                            if let Ok(mut e) = sink.lock() {
                                e.push((now, revision));
                            }
                        }
                    };
                    tokio::select! {
                        _ = watch => {}
                        _ = stopped => {}
                    }
                    drop(proxy);
                });
            })?;
        let shared = rx.recv()??;
        Ok(InProcess {
            shared,
            events,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn revision(&self) -> u64 {
        self.shared.tables.status().revision
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
    true
}

/// For each applied change (revision, time apply was called): how long until
/// a table with that revision (or a later one) was in place, from `events`
/// (time, revision), sorted by time. Changes never seen are left out.
fn latencies(applied: &[(u64, Instant)], events: &[(Instant, u64)]) -> Vec<Duration> {
    let mut out: Vec<Duration> = applied
        .iter()
        .filter_map(|&(rev, at)| {
            let i = events.partition_point(|&(_, r)| r < rev);
            events.get(i).map(|&(t, _)| t.saturating_duration_since(at))
        })
        .collect();
    out.sort();
    out
}

// ------------------------------------------------------------- main

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    if let Some(url) = args.child_proxy {
        let admin = args
            .child_admin
            .ok_or("--child-proxy needs --child-admin")?;
        return child_proxy(url, admin);
    }
    if args.shared == 0 || args.shared > args.namespaces {
        return Err("--shared must be between 1 and --namespaces".into());
    }
    if args.runs == 0 || !(args.rate > 0.0 && args.rate.is_finite()) || args.duration < 0.0 {
        return Err("--runs and --rate must be positive, --duration not negative".into());
    }
    let runs = args.runs;
    let run_started = Instant::now();
    let machine_start = machine_cpu();
    let self_start = cpu_seconds("self");
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());

    // The cluster, into a real store.
    let Cluster {
        namespaces,
        all_namespaces,
        mut services,
        mut maker,
    } = cluster(&args);
    let ports: usize = services.iter().map(|s| s.ports.len()).sum();
    let addresses: usize = services
        .iter()
        .map(|s| s.addresses.len() * s.ports.len())
        .sum();
    let endpoints: usize = services
        .iter()
        .flat_map(|s| &s.ports)
        .map(|p| p.endpoints.len())
        .sum();
    let dual = services.iter().filter(|s| s.addresses.len() > 1).count();
    println!(
        "# cluster: {} services ({dual} dual-stack, {ports} ports, {addresses} dialed address:ports, {endpoints} endpoints) in {} namespaces ({} shared, {} divert)",
        services.len(),
        args.namespaces,
        args.shared,
        namespaces.len()
    );

    let before_store = live_bytes();
    let store = Store::new();
    let changes: Vec<Change> = namespaces
        .iter()
        .cloned()
        .map(Change::Namespace)
        .chain(services.iter().cloned().map(Change::Service))
        .collect();
    let (first_revision, store_apply) = time(|| store.apply(changes));
    store.set_synced();
    let store_bytes = live_bytes() - before_store;

    // 1. The snapshot: built by the store, encoded by the server.
    eprintln!("bench-discovery: timing the snapshot in-process ({runs} runs)");
    let mut subscribe = Vec::new();
    let mut snapshot = None;
    for _ in 0..runs {
        let ((sub, snap), took) = time(|| store.subscribe(pb::ProxyInfo::default(), None));
        subscribe.push(took);
        drop(sub);
        snapshot = Some(snap);
    }
    let snapshot = snapshot.ok_or("no snapshot")?;
    let encoded_len = snapshot.encoded_len();
    let mut encode = Vec::new();
    let mut bytes = Vec::new();
    for _ in 0..runs {
        let (b, took) = time(|| snapshot.encode_to_vec());
        encode.push(took);
        bytes = b;
    }
    drop(snapshot);

    // 2. Applying it in-process, as the proxy does: decode, to_patch, patch.
    let (mut decode, mut patching, mut applying, mut total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut table_bytes = 0;
    let mut patch_faults = Vec::new();
    for run in 0..runs {
        let (msg, d) = time(|| pb::TableUpdate::decode(bytes.as_slice()));
        let msg = msg?;
        let (patch, p) = time(|| to_patch(&msg));
        let before = live_bytes();
        let faults_before = minor_faults("self");
        let (table, a) = time(|| Table::default().patch(&patch, 1));
        if let Some((after, before)) = minor_faults("self").zip(faults_before) {
            patch_faults.push(after - before);
        }
        if run == 0 {
            table_bytes = live_bytes() - before;
            if table.service_count() != services.len() {
                return Err(format!(
                    "the table has {} services, not {}",
                    table.service_count(),
                    services.len()
                )
                .into());
            }
        }
        decode.push(d);
        patching.push(p);
        applying.push(a);
        total.push(d + p + a);
        drop(table);
    }
    // A snapshot onto a full table (a reconnect: pools are looked up and kept),
    // and one changed service onto a full table (the cost of each update).
    let msg = pb::TableUpdate::decode(bytes.as_slice())?;
    let patch = to_patch(&msg);
    let full = Table::default().patch(&patch, 1);
    let mut resnapshot = Vec::new();
    for _ in 0..runs {
        let (t, took) = time(|| full.patch(&patch, 2));
        resnapshot.push(took);
        drop(t);
    }
    let mut one = services[services.len() / 2].clone();
    maker.reschedule(&mut one, 0);
    let one_update = pb::TableUpdate {
        revision: 2,
        services: vec![one],
        ..pb::TableUpdate::default()
    };
    let mut single = Vec::new();
    for _ in 0..runs.max(100) {
        let (t, took) = time(|| full.patch(&to_patch(&one_update), 2));
        single.push(took);
        drop(t);
    }
    drop((full, patch, msg));

    eprintln!("bench-discovery: starting the proxy process and the controller");
    // 3. The proxy process, first with an empty table: the controller is not
    // up yet.
    let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let mut proxy_command = String::new();
    let process = match &args.proxy_bin {
        _ if args.self_proxy => {
            proxy_command = "this harness's stand-in (--self-proxy)".into();
            Some(ProxyProcess::start(ProxyCommand::StandIn, grpc)?)
        }
        Some(bin) => {
            let p = ProxyProcess::start(ProxyCommand::Divert(bin), grpc).map_err(|e| {
                format!(
                    "{} proxy did not start ({e}); --self-proxy runs the same proxy code as a child of this harness",
                    bin.display()
                )
            })?;
            proxy_command = format!("{} proxy --transparent", bin.display());
            Some(p)
        }
        None => None,
    };
    if !proxy_command.is_empty() {
        println!("# proxy process: {proxy_command}");
    }
    let mut rss_empty = None;
    if let Some(p) = &process {
        thread::sleep(Duration::from_secs(1));
        rss_empty = status_bytes(&p.pid, "VmRSS:");
    }

    // The controller's gRPC server, on a 2-worker runtime like `divert
    // controller`'s default.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("controller")
        .enable_all()
        .build()?;
    let listener = std::net::TcpListener::bind(grpc)
        .map_err(|e| format!("cannot listen on {grpc} (taken since it was picked?): {e}"))?;
    listener.set_nonblocking(true)?;
    let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let _guard = rt.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        rt.spawn(divert_controller::server::serve(
            listener,
            store.clone(),
            divert_controller::auth::Access::Open,
            None,
            async move {
                let _ = shutdown_rx.await;
            },
        ))
    };

    let faults_empty = process.as_ref().and_then(|p| minor_faults(&p.pid));
    let mut faults_snapshot = None;
    let mut took_logged = None;
    let (mut rss_table, mut hwm_table) = (None, None);
    if let Some(p) = &process {
        let (_, line) = p
            .wait_line(
                "table snapshot from the controller",
                Duration::from_secs(60),
            )
            .ok_or("the proxy process logged no snapshot within 60 s")?;
        took_logged = field(&line, "took=").and_then(parse_debug_duration);
        faults_snapshot = minor_faults(&p.pid).zip(faults_empty).map(|(a, b)| a - b);
        let want = services.len() as f64;
        let ok = wait_until(Duration::from_secs(30), || {
            http_get(p.admin, "/metrics")
                .ok()
                .and_then(|m| metric(&m, "divert_proxy_table_services"))
                == Some(want)
        });
        if !ok {
            return Err("the proxy process's table never held every service".into());
        }
        rss_table = status_bytes(&p.pid, "VmRSS:");
        hwm_table = status_bytes(&p.pid, "VmHWM:");
    }

    // In-process proxies.
    eprintln!(
        "bench-discovery: starting {} in-process proxies",
        args.in_process
    );
    let mut in_process = Vec::new();
    for i in 0..args.in_process {
        in_process.push(InProcess::start(format!("http://{grpc}"), i)?);
    }
    if !wait_until(Duration::from_secs(60), || {
        in_process.iter().all(|p| p.revision() >= first_revision)
    }) {
        return Err("an in-process proxy got no snapshot within 60 s".into());
    }

    // 4. Churn: one change per store.apply, at a fixed rate.
    eprintln!(
        "bench-discovery: churn, {} changes/s for {} s",
        args.rate, args.duration
    );
    let count = (args.rate * args.duration).round() as usize;
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut rng = Rng(args.seed);
    let mut applied: Vec<(u64, Instant)> = Vec::with_capacity(count);
    let (mut reschedules, mut adds, mut deletes, mut late) = (0, 0, 0, 0usize);
    let cpu_proxy_before = process.as_ref().and_then(|p| cpu_seconds(&p.pid));
    let cpu_self_before = cpu_seconds("self");
    let machine_before = machine_cpu();
    let updates_before: Vec<u64> = in_process
        .iter()
        .map(|p| p.shared.tables.status().updates_applied)
        .collect();
    let lines_before = process.as_ref().map_or(0, |p| p.revisions().len());
    let started = Instant::now();
    for i in 0..count {
        let roll = rng.below(100);
        let change = if roll < 90 || services.len() < 2 {
            reschedules += 1;
            let k = rng.below(services.len());
            let slot = rng.below(PODS);
            maker.reschedule(&mut services[k], slot);
            Change::Service(services[k].clone())
        } else if roll < 95 {
            adds += 1;
            let ns = all_namespaces[rng.below(all_namespaces.len())].clone();
            let svc = maker.service(ns, format!("churn-{i}"));
            services.push(svc.clone());
            Change::Service(svc)
        } else {
            deletes += 1;
            let gone = services.swap_remove(rng.below(services.len()));
            Change::DeleteService(pb::ServiceKey {
                namespace: gone.namespace,
                name: gone.name,
            })
        };
        let due = started + period * i as u32;
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        } else if now - due > period {
            late += 1;
        }
        // Timed from the call: on 2 cores, the thread that apply wakes can
        // preempt this one before apply even returns.
        let called = Instant::now();
        let revision = store.apply([change]);
        applied.push((revision, called));
    }
    let churn_wall = started.elapsed();
    let last = applied.last().map_or(first_revision, |a| a.0);
    let caught_up = wait_until(Duration::from_secs(10), || {
        in_process.iter().all(|p| p.revision() >= last)
            && process
                .as_ref()
                .is_none_or(|p| p.revisions().last().is_some_and(|&(_, r)| r >= last))
    });
    let cpu_wall = started.elapsed();
    let cpu_proxy = process
        .as_ref()
        .and_then(|p| cpu_seconds(&p.pid))
        .zip(cpu_proxy_before)
        .map(|(a, b)| a - b);
    let cpu_self = cpu_seconds("self").zip(cpu_self_before).map(|(a, b)| a - b);
    let machine_churn = machine_before.zip(machine_cpu());
    let ours_churn = cpu_self.map(|c| c + cpu_proxy.unwrap_or(0.0));
    let proxy_total = process.as_ref().and_then(|p| cpu_seconds(&p.pid));
    let machine_run = machine_start.zip(machine_cpu());
    let ours_run = cpu_seconds("self")
        .zip(self_start)
        .map(|(a, b)| a - b + proxy_total.unwrap_or(0.0));
    let run_wall = run_started.elapsed();
    let rss_churn = process
        .as_ref()
        .and_then(|p| status_bytes(&p.pid, "VmRSS:"));

    // Latencies per proxy.
    let mut rows = Vec::new();
    for (i, p) in in_process.iter().enumerate() {
        let mut events = p.events.lock().map(|e| e.clone()).unwrap_or_default();
        events.sort_by_key(|e| e.0);
        let updates = p.shared.tables.status().updates_applied - updates_before[i];
        rows.push((
            format!("in-process {}", i + 1),
            latencies(&applied, &events),
            updates,
        ));
    }
    if let Some(p) = &process {
        let events = p.revisions();
        let updates = (events.len() - lines_before) as u64;
        rows.push((
            "process (log line)".to_string(),
            latencies(&applied, &events),
            updates,
        ));
    }

    // Shut down before printing, so nothing runs beside the summary.
    // (A graceful shutdown waits for open streams, hence the timeout.)
    drop(in_process);
    drop(process);
    let _ = shutdown.send(());
    let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), server).await });
    rt.shutdown_timeout(Duration::from_secs(1));

    // The summary.
    println!();
    println!(
        "## Snapshot ({} services, revision {first_revision})",
        args.services
    );
    println!();
    println!("| what | value |");
    println!("|---|---:|");
    println!(
        "| encoded `TableUpdate` (prost `encoded_len`) | {encoded_len} B ({} MiB) |",
        mib(encoded_len as f64)
    );
    println!(
        "| controller store: heap for the table | {} MiB |",
        mib(store_bytes as f64)
    );
    println!(
        "| controller: first `Store::apply` of everything | {} ms |",
        ms(store_apply)
    );
    println!();
    println!("## Time, in-process, {runs} runs (ms)");
    println!();
    println!("| step | run 1 | min | median | max |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| controller: `Store::subscribe` (builds the snapshot) | {} |",
        spread(&subscribe)
    );
    println!(
        "| controller: encode (`encode_to_vec`) | {} |",
        spread(&encode)
    );
    println!(
        "| proxy: decode (`TableUpdate::decode`) | {} |",
        spread(&decode)
    );
    println!("| proxy: `to_patch` | {} |", spread(&patching));
    println!(
        "| proxy: `Table::default().patch` | {} |",
        spread(&applying)
    );
    let apply: Vec<Duration> = patching
        .iter()
        .zip(&applying)
        .map(|(p, a)| *p + *a)
        .collect();
    println!(
        "| proxy: `to_patch` + `patch` (the logged `took`) | {} |",
        spread(&apply)
    );
    println!(
        "| proxy: decode + `to_patch` + `patch` | {} |",
        spread(&total)
    );
    println!(
        "| proxy: snapshot onto a full table (reconnect) | {} |",
        spread(&resnapshot)
    );
    println!(
        "| proxy: one changed service onto a full table ({} runs) | {} |",
        single.len(),
        spread(&single)
    );
    println!();
    println!("## Memory");
    println!();
    println!("| what | MiB |");
    println!("|---|---:|");
    println!(
        "| heap held by the proxy's `Table` (in-process, requested bytes) | {} |",
        mib(table_bytes as f64)
    );
    // Every endpoint gets its connection pool when the table is built.
    let pool = std::mem::size_of::<divert_proxy::upstream::Pool>();
    println!(
        "| of which connection pools: {endpoints} endpoints × {pool} B (`size_of::<Pool>()`, {}-byte aligned) | {} |",
        std::mem::align_of::<divert_proxy::upstream::Pool>(),
        mib((endpoints * pool) as f64)
    );
    if args.proxy_bin.is_none() && !args.self_proxy {
        println!("| (no proxy process: give --proxy-bin or --self-proxy) | |");
    }
    if let (Some(e), Some(t)) = (rss_empty, rss_table) {
        println!("| proxy process VmRSS, empty table | {} |", mib(e));
        println!("| proxy process VmRSS, snapshot applied | {} |", mib(t));
        println!("| difference | {} |", mib(t - e));
    }
    if let Some(h) = hwm_table {
        println!("| proxy process VmHWM after the snapshot | {} |", mib(h));
    }
    if let Some(c) = rss_churn {
        println!("| proxy process VmRSS after the churn | {} |", mib(c));
    }
    if let Some(t) = took_logged {
        println!();
        println!(
            "proxy process logged `took={}` ms for the snapshot (`to_patch` + `Table::patch`)",
            ms(t)
        );
    }
    if let Some(f) = faults_snapshot {
        println!(
            "proxy process: {f} minor page faults while it received, decoded and applied the snapshot"
        );
    }
    if let (Some(first), Some(rest)) = (patch_faults.first(), patch_faults.get(1..)) {
        let mut rest = rest.to_vec();
        rest.sort();
        println!(
            "in-process `Table::patch`: {first} minor page faults in run 1 (fresh heap), median {} in later runs",
            rest.get(rest.len() / 2).copied().unwrap_or_default()
        );
    }
    let mut worst_p99 = Duration::ZERO;
    let mut all_seen = caught_up;
    let process_updates = rows
        .iter()
        .find(|r| r.0.starts_with("process"))
        .map_or(0, |r| r.2);
    if count > 0 {
        println!();
        println!(
            "## Churn: {count} changes at {}/s for {} s ({reschedules} pod reschedules, {adds} service adds, {deletes} deletes; one `Store::apply` each; {late} applied more than one period late)",
            args.rate, args.duration
        );
        println!();
        println!("| proxy | updates received | changes seen | p50 ms | p99 ms | max ms |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (name, l, updates) in &rows {
            worst_p99 = worst_p99.max(pct(l, 99.0));
            all_seen &= l.len() == applied.len();
            println!(
                "| {name} | {updates} | {}/{} | {} | {} | {} |",
                l.len(),
                applied.len(),
                ms(pct(l, 50.0)),
                ms(pct(l, 99.0)),
                ms(l.last().copied().unwrap_or_default())
            );
        }
        println!();
        if let Some(c) = cpu_proxy {
            println!(
                "proxy process CPU during the churn: {c:.2} s in {:.1} s = {:.1} % of one core, {:.2} ms per update received",
                cpu_wall.as_secs_f64(),
                100.0 * c / cpu_wall.as_secs_f64(),
                1e3 * c / process_updates.max(1) as f64
            );
        }
        if let Some(c) = cpu_self {
            println!(
                "this process (store, gRPC server, {} in-process proxies, driver): {c:.2} s = {:.1} % of one core",
                args.in_process,
                100.0 * c / cpu_wall.as_secs_f64()
            );
        }
        println!("churn wall time {:.2} s", churn_wall.as_secs_f64());
    }
    println!();
    println!(
        "machine during the whole run: {}",
        others(machine_run, ours_run, run_wall, cpus)
    );
    if count > 0 {
        println!(
            "machine during the churn: {}",
            others(machine_churn, ours_churn, cpu_wall, cpus)
        );
    }
    println!();
    println!("## Against the targets");
    println!();
    let mut sorted = apply.clone();
    sorted.sort();
    let median = pct(&sorted, 50.0);
    let worst = took_logged.map_or(median, |t| t.max(median));
    println!(
        "- apply a {}-service snapshot (`to_patch` + `Table::patch`) <= 50 ms: {} (in-process median {} ms{})",
        args.services,
        if worst <= Duration::from_millis(50) {
            "met"
        } else {
            "NOT met"
        },
        ms(median),
        took_logged.map_or(String::new(), |t| format!(", proxy process {} ms", ms(t)))
    );
    if count > 0 {
        println!(
            "- change visible in every proxy <= 100 ms p99: {} (worst p99 {} ms{})",
            if worst_p99 <= Duration::from_millis(100) && all_seen {
                "met"
            } else {
                "NOT met"
            },
            ms(worst_p99),
            if all_seen {
                ""
            } else {
                "; some changes never seen"
            }
        );
    }
    Ok(())
}
