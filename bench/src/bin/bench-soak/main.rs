//! `bench-soak`: the proxy under a long mix of real traffic, churn and
//! hostile clients, judged on two things: no request is lost or misrouted,
//! and the proxy's memory and file descriptors stay flat once warm.
//!
//! The proxy is the real `divert-proxy` binary, in transparent mode in a
//! client pod (a network namespace with the init container's rules); the
//! driver's clients run inside that pod and the upstreams in two others
//! (staging and alice). `bench/soak.sh` builds and runs it; BENCHMARKS.md
//! has the results. Needs root (network namespaces, iptables).
//!
//! Modules, in the order a run uses them: [`world`] (the pods and the
//! registry), [`servers`] (the upstreams), [`sidecar`] (the proxy process),
//! [`traffic`] (the clients), [`hostile`], [`churn`], [`sample`], [`ledger`]
//! (what both sides counted).

#![forbid(unsafe_code)]

mod churn;
mod hostile;
mod ledger;
mod sample;
mod servers;
mod sidecar;
mod traffic;
mod world;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::watch;

use crate::churn::{Epoch, Upstreams};
use crate::ledger::{Counts, ServiceCopy};
use crate::sample::Sample;
use crate::sidecar::Sidecar;
use crate::traffic::{Ctx, Traffic};
use crate::world::{Layout, World};

/// Soaks the proxy: mixed traffic, churn and hostile clients for a long
/// time; fails if a request is lost or misrouted, or if memory or file
/// descriptors grow once warm.
#[derive(Parser, Debug)]
#[command(name = "bench-soak")]
struct Args {
    /// The `divert-proxy` binary to soak (the image's build: musl, stripped).
    #[arg(long)]
    proxy: PathBuf,

    /// How long the traffic runs.
    #[arg(long, default_value = "30m", value_parser = divert_core::duration::parse)]
    duration: Duration,

    /// Readings before this are warm-up and not judged.
    #[arg(long, default_value = "2m", value_parser = divert_core::duration::parse)]
    warmup: Duration,

    /// The readings just after warm-up that later ones are compared with.
    #[arg(long, default_value = "2m", value_parser = divert_core::duration::parse)]
    reference: Duration,

    /// Between two readings of the proxy's memory and descriptors.
    #[arg(long, default_value = "10s", value_parser = divert_core::duration::parse)]
    sample_every: Duration,

    /// Between two table changes.
    #[arg(long, default_value = "10s", value_parser = divert_core::duration::parse)]
    churn_every: Duration,

    /// Each client loop makes one exchange per period.
    #[arg(long, default_value = "10ms", value_parser = divert_core::duration::parse)]
    period: Duration,

    /// How far above the reference (percent) memory and descriptors may go.
    #[arg(long, default_value_t = 10)]
    tolerance: u64,

    /// Seeds the clients' choices (keys, body sizes, messages).
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Writes every reading here as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !divert_tests::netns::available() {
        eprintln!("bench-soak needs root, ip, iptables and setpriv (see the SKIP line above)");
        return ExitCode::from(2);
    }
    let world = World::new(&args.proxy);
    // The runtime's threads are made inside the client pod, so every
    // connection the clients open starts there and is intercepted.
    let verdict = world.client.ns.in_ns(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        Ok::<_, String>(rt.block_on(soak(&world, &args)))
    });
    match verdict {
        Ok(problems) if problems.is_empty() => {
            println!("soak: passed");
            ExitCode::SUCCESS
        }
        Ok(problems) => {
            println!("soak: FAILED");
            for p in problems {
                println!("  - {p}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the whole soak and returns what went wrong (nothing, on a pass).
async fn soak(world: &World, args: &Args) -> Vec<String> {
    let mut problems = Vec::new();
    let seen = Arc::new(Counts::default());
    let listen = |pod: &divert_tests::netns::Pod| pod.ns.listen((pod.ipv4, 0).into());
    let upstreams = Upstreams {
        web_staging: servers::http(
            listen(&world.staging),
            ServiceCopy::WebStaging,
            seen.clone(),
        ),
        catalog_staging: servers::grpc(
            listen(&world.staging),
            ServiceCopy::CatalogStaging,
            seen.clone(),
        ),
        seen: seen.clone(),
    };
    let web_alice = servers::http(listen(&world.alice), ServiceCopy::WebAlice, seen.clone());
    let catalog_alice = servers::grpc(
        listen(&world.alice),
        ServiceCopy::CatalogAlice,
        seen.clone(),
    );
    let db = servers::opaque(listen(&world.staging), ServiceCopy::DbStaging, seen.clone());
    let layout = Layout {
        alice_web: true,
        web_staging: upstreams.web_staging.addr,
        web_alice: web_alice.addr,
        catalog_staging: upstreams.catalog_staging.addr,
        catalog_alice: catalog_alice.addr,
        db_staging: db.addr,
        generation: 0,
    };
    let mut sidecar = tokio::task::block_in_place(|| Sidecar::start(world, &args.proxy, &layout));
    let pid = sidecar.pid();
    let clk_tck = clock_ticks();
    let idle = match sample::read(pid, clk_tck, Duration::ZERO, 0) {
        Ok(s) => s,
        Err(e) => return vec![format!("cannot read the proxy's /proc entries: {e}")],
    };
    println!(
        "soak: proxy {} (pid {pid}) idle: RSS {} KiB, {} file descriptors; running {:?}",
        args.proxy.display(),
        idle.rss_kib,
        idle.fds,
        args.duration
    );

    // The clients.
    let epoch = Arc::new(Epoch::default());
    let ctx = Arc::new(Ctx::new(epoch.clone(), args.period));
    let mut clients = tokio::task::JoinSet::new();
    let seed = |n: u64| args.seed.wrapping_mul(1_000_003).wrapping_add(n);
    for n in 0..4 {
        clients.spawn(traffic::http1(ctx.clone(), seed(n), 200));
    }
    clients.spawn(traffic::http1(ctx.clone(), seed(10), 1));
    clients.spawn(traffic::h2c(ctx.clone(), seed(20), 4, 2000));
    for n in 0..2 {
        clients.spawn(traffic::grpc(ctx.clone(), seed(30 + n)));
        clients.spawn(traffic::opaque(ctx.clone(), seed(40 + n)));
    }
    clients.spawn(traffic::upgrade(ctx.clone(), seed(50)));

    // The hostile ones.
    let (stop, stopped) = watch::channel(false);
    let defaults = divert_proxy::limits::Limits::default();
    let limits = hostile::Limits {
        header_read: defaults.header_read_timeout,
        idle: defaults.idle_timeout,
    };
    let hostile = Arc::new(hostile::Report::default());
    let mut hostiles = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (r, s) = (hostile.clone(), stopped.clone());
        hostiles.spawn(async move { hostile::slowloris(limits, &r, s).await });
        let (r, s) = (hostile.clone(), stopped.clone());
        hostiles.spawn(async move { hostile::silent(&r, s).await });
    }
    let (r, s) = (hostile.clone(), stopped.clone());
    hostiles.spawn(async move { hostile::idle_h2(limits, &r, s).await });
    let (r, s) = (hostile.clone(), stopped.clone());
    hostiles.spawn(async move { hostile::resets(&r, s).await });

    // The churn, and the readings until the time is up.
    let churn = churn::run(
        &sidecar,
        &world.staging,
        layout,
        upstreams,
        &epoch,
        args.churn_every,
        stopped.clone(),
    );
    let readings = async {
        let samples = readings(pid, clk_tck, args, &ctx).await;
        ctx.stop();
        stop.send_replace(true);
        samples
    };
    let ((upstreams, churned), samples) = tokio::join!(churn, readings);
    let samples = match samples {
        Ok(s) => s,
        Err(e) => {
            problems.push(e);
            Vec::new()
        }
    };
    let churned = match churned {
        Ok(report) => Some(report),
        Err(e) => {
            problems.push(format!("churn: {e}"));
            None
        }
    };

    // Everyone finishes what is in flight.
    let finish = async {
        while clients.join_next().await.is_some() {}
        while hostiles.join_next().await.is_some() {}
    };
    if tokio::time::timeout(traffic::EXCHANGE_LIMIT * 2, finish)
        .await
        .is_err()
    {
        problems.push("clients still busy long after the end".into());
    }
    let metrics = sidecar
        .metric_lines(&[
            "divert_proxy_timeouts_total",
            "divert_proxy_connections_refused_total",
            "divert_proxy_request_heads_too_large_total",
            "divert_proxy_client_connections",
        ])
        .await
        .unwrap_or_else(|e| vec![e]);

    // With no client left, the proxy lets go of everything: its client
    // connections at once, its upstream connections once the upstreams
    // close them.
    let clients_gone = until(Duration::from_secs(30), || async {
        sidecar.metric("divert_proxy_client_connections").await.ok() == Some(0.0)
    })
    .await;
    if !clients_gone {
        problems.push("the proxy still counts client connections after every client left".into());
    }
    let Upstreams {
        web_staging,
        catalog_staging,
        ..
    } = upstreams;
    for server in [web_staging, catalog_staging, web_alice, catalog_alice, db] {
        server.shutdown().await;
    }
    let mut after = idle;
    let fds_back = until(Duration::from_secs(30), || {
        let read = sample::read(pid, clk_tck, Duration::ZERO, 0);
        if let Ok(s) = &read {
            after = *s;
        }
        async move { read.is_ok_and(|s| s.fds <= idle.fds) }
    })
    .await;
    if !fds_back {
        problems.push(format!(
            "the proxy holds {} file descriptors once everything closed, {} when idle at the start",
            after.fds, idle.fds
        ));
    }
    if let Some(gone) = sidecar.exited() {
        problems.push(gone);
    }

    // The verdict.
    let tally = &ctx.tally;
    let differences = ledger::differences(&tally.answered, &seen);
    if tally.failed() > 0 {
        problems.push(format!("{} exchanges failed", tally.failed()));
    }
    if tally.misrouted() > 0 {
        problems.push(format!(
            "{} answers came from the wrong copy",
            tally.misrouted()
        ));
    }
    problems.extend(differences);
    if hostile.violations() > 0 {
        problems.push(format!(
            "{} hostile-client checks failed",
            hostile.violations()
        ));
    }
    let (flatness_problems, flatness) = judge(&samples, args);
    problems.extend(flatness_problems);
    if let Some(path) = &args.csv
        && let Err(e) = std::fs::write(path, csv(&samples))
    {
        problems.push(format!("cannot write {}: {e}", path.display()));
    }
    println!(
        "{}",
        summary(
            &samples,
            idle,
            after,
            tally,
            &hostile,
            churned.as_ref(),
            &metrics
        )
    );
    for line in flatness {
        println!("  {line}");
    }
    for d in tally.described().into_iter().chain(hostile.described()) {
        println!("  ! {d}");
    }
    problems
}

/// Reads the proxy every `sample_every` until the duration is up, printing
/// a line a minute.
async fn readings(pid: u32, clk_tck: u64, args: &Args, ctx: &Ctx) -> Result<Vec<Sample>, String> {
    let started = Instant::now();
    let mut tick = tokio::time::interval(args.sample_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples = Vec::new();
    let mut last_print = Duration::ZERO;
    while started.elapsed() < args.duration {
        tick.tick().await;
        let at = started.elapsed();
        let s = sample::read(pid, clk_tck, at, ctx.tally.answered.total())
            .map_err(|e| format!("the proxy is gone ({e}) after {at:?}"))?;
        if at >= last_print + Duration::from_secs(60) || samples.is_empty() {
            last_print = at;
            println!(
                "soak: {:>5.0} s  RSS {:>6} KiB  fds {:>4}  CPU {:>7.1} s  answered {:>9}  failed {}  misrouted {}",
                at.as_secs_f64(),
                s.rss_kib,
                s.fds,
                s.cpu.as_secs_f64(),
                s.answered,
                ctx.tally.failed(),
                ctx.tally.misrouted()
            );
        }
        samples.push(s);
    }
    Ok(samples)
}

/// Polls `check` every 100 ms until it holds or `limit` has passed.
async fn until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The kernel's clock ticks per second, for `/proc/PID/stat`.
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Whether memory and descriptors stayed flat after warm-up.
/// Returns the problems, and a line per quantity for the summary.
fn judge(samples: &[Sample], args: &Args) -> (Vec<String>, Vec<String>) {
    let per = |d: Duration| (d.as_secs_f64() / args.sample_every.as_secs_f64()).ceil() as usize;
    let (warmup, window) = (per(args.warmup), per(args.reference));
    let mut problems = Vec::new();
    let mut lines = Vec::new();
    for (what, values) in [
        (
            "RSS (KiB)",
            samples.iter().map(|s| s.rss_kib).collect::<Vec<_>>(),
        ),
        ("file descriptors", samples.iter().map(|s| s.fds).collect()),
    ] {
        let Some(f) = sample::flatness(&values, warmup, window, args.tolerance) else {
            problems.push(format!("too few readings to judge {what}: run longer"));
            continue;
        };
        lines.push(format!(
            "{what} after warm-up: reference {} (the highest of the first {:?}), highest later {} ({:+.1} %), mean of the last {:?} {:.0}: {}",
            f.reference,
            args.reference,
            f.highest_after,
            100.0 * (f.highest_after as f64 / f.reference.max(1) as f64 - 1.0),
            args.reference,
            f.last_mean,
            if f.flat { "flat" } else { "GREW" }
        ));
        if !f.flat {
            problems.push(format!(
                "{what} grew: {} at most after warm-up, then up to {} (more than {} % above)",
                f.reference, f.highest_after, args.tolerance
            ));
        }
    }
    (problems, lines)
}

fn csv(samples: &[Sample]) -> String {
    let mut out = String::from("seconds,rss_kib,fds,cpu_seconds,answered\n");
    for s in samples {
        let _ = writeln!(
            out,
            "{:.0},{},{},{:.2},{}",
            s.at.as_secs_f64(),
            s.rss_kib,
            s.fds,
            s.cpu.as_secs_f64(),
            s.answered
        );
    }
    out
}

fn summary(
    samples: &[Sample],
    idle: Sample,
    after: Sample,
    tally: &traffic::Tally,
    hostile: &hostile::Report,
    churned: Option<&churn::Report>,
    metrics: &[String],
) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::from("\nsoak: results\n");
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        let secs = (last.at - first.at).as_secs_f64().max(1.0);
        let answered = last.answered - first.answered;
        let cpu = (last.cpu - first.cpu).as_secs_f64();
        let _ = writeln!(
            out,
            "  {:.0} s of traffic, {answered} exchanges answered ({:.0}/s); proxy CPU {cpu:.1} s ({:.0} % of a core, {:.2} s per 10 000)",
            secs,
            answered as f64 / secs,
            100.0 * cpu / secs,
            if answered > 0 {
                cpu * 10_000.0 / answered as f64
            } else {
                0.0
            }
        );
        let rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
        let fds: Vec<u64> = samples.iter().map(|s| s.fds).collect();
        let _ = writeln!(
            out,
            "  RSS KiB: idle {}, min {}, max {}, last {}, after the end {};  fds: idle {}, min {}, max {}, last {}, after the end {}",
            idle.rss_kib,
            rss.iter().min().unwrap_or(&0),
            rss.iter().max().unwrap_or(&0),
            last.rss_kib,
            after.rss_kib,
            idle.fds,
            fds.iter().min().unwrap_or(&0),
            fds.iter().max().unwrap_or(&0),
            last.fds,
            after.fds
        );
    }
    for t in Traffic::ALL {
        let _ = writeln!(out, "  {:<17} {:>9} answered", t.name(), tally.answers(t));
    }
    let _ = writeln!(
        out,
        "  failed {}, misrouted {}; alice's web requests answered while her copy came or went: {}",
        tally.failed(),
        tally.misrouted(),
        tally.during_change()
    );
    for copy in ServiceCopy::ALL {
        let cells: Vec<String> = ledger::Key::ALL
            .iter()
            .map(|k| format!("{} {}", k.name(), tally.answered.get(copy, *k)))
            .collect();
        let _ = writeln!(out, "  {:<16} {}", copy.name(), cells.join(", "));
    }
    if let Some(c) = churned {
        let _ = writeln!(
            out,
            "  churn: {} table changes of alice's copy, {} upstream replacements; slowest table change served after {:?}",
            c.toggles, c.replacements, c.slowest_apply
        );
    }
    let _ = writeln!(
        out,
        "  hostile: {} slowloris cut (slowest {} ms), {} idle HTTP/2 closed ({}–{} ms), {} silent held, {} resets; {} violations",
        hostile.slowloris_cut.load(Relaxed),
        hostile.slowloris_slowest_ms.load(Relaxed),
        hostile.idle_h2_closed.load(Relaxed),
        hostile.idle_h2_soonest_ms.load(Relaxed),
        hostile.idle_h2_slowest_ms.load(Relaxed),
        hostile.silent_held.load(Relaxed),
        hostile.resets.load(Relaxed),
        hostile.violations()
    );
    for m in metrics {
        let _ = writeln!(out, "  {m}");
    }
    out
}
