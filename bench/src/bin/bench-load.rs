//! `bench-load`: a fixed-rate (open-loop) HTTP/1.1 load generator for latency.
//!
//! Request `i` has an intended send time `start + i / rate`. Its latency is
//! measured from that intended time, not from the moment it was actually
//! written, so a slow server cannot hide its stalls by slowing the sender down
//! (coordinated omission). The latency from the actual send is reported too,
//! as `svc_*`, for comparison.
//!
//! The generator is single-threaded. Each of the `--connections` keep-alive
//! connections takes the next free slot of the schedule whenever it is idle,
//! waits for the slot's time and sends. Tokio's timer has a 1 ms granularity,
//! so the last stretch before a slot is spent yielding in a loop: the load
//! generator is meant to have a core to itself.

#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::LocalSet;

/// Fixed-rate HTTP/1.1 load generator reporting latency percentiles as JSON.
#[derive(Parser, Debug)]
#[command(name = "bench-load")]
struct Args {
    /// Target URL, e.g. http://127.0.0.1:8080/path (plain http only).
    #[arg(long)]
    url: String,

    /// Requests per second to schedule.
    #[arg(long)]
    rate: f64,

    /// Length of the measured run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// Keep-alive connections to open.
    #[arg(long, default_value_t = 16)]
    connections: usize,

    /// Extra request header, "Name: value" (may be given several times).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,

    /// Seconds of load at the same rate before the measured run (not recorded).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,

    /// Per-request timeout in seconds; a request past it counts as an error.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,

    /// Count a response whose body is not exactly this (after trimming
    /// trailing whitespace) as an error; used to check routing.
    #[arg(long)]
    expect_body: Option<String>,

    /// Microseconds before a send time at which the generator stops sleeping
    /// on the timer and starts busy-yielding. Idle cores in virtual machines can
    /// take a millisecond or more to wake up, hence the generous default.
    #[arg(long, default_value_t = 5000)]
    spin_us: u64,
}

/// Everything needed to build requests against the target.
struct Target {
    connect_to: String,
    path: Uri,
    headers: HeaderMap,
    timeout: Duration,
    expect_body: Option<Bytes>,
    spin: Duration,
}

impl Target {
    fn from_args(args: &Args) -> Result<Self, Box<dyn Error>> {
        let uri: Uri = args
            .url
            .parse()
            .map_err(|e| format!("bad --url {:?}: {e}", args.url))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("--url must start with http:// (got {:?})", args.url).into());
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("--url has no host: {:?}", args.url))?;
        let port = authority.port_u16().unwrap_or(80);
        let connect_to = format!("{}:{port}", authority.host());
        let path: Uri = uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse()
            .map_err(|e| format!("bad path in --url: {e}"))?;

        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_str(authority.as_str())?);
        for raw in &args.headers {
            let (name, value) = raw
                .split_once(':')
                .ok_or_else(|| format!("--header must be \"Name: value\", got {raw:?}"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| format!("bad header name in {raw:?}: {e}"))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|e| format!("bad header value in {raw:?}: {e}"))?;
            headers.append(name, value);
        }
        if !(args.timeout > 0.0 && args.timeout.is_finite()) {
            return Err("--timeout must be a positive number of seconds".into());
        }
        Ok(Target {
            connect_to,
            path,
            headers,
            timeout: Duration::from_secs_f64(args.timeout),
            expect_body: args
                .expect_body
                .as_ref()
                .map(|b| Bytes::from(b.trim_end().to_owned())),
            spin: Duration::from_micros(args.spin_us),
        })
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = self.path.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, Box<dyn Error>> {
        let stream = TcpStream::connect(&self.connect_to).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::task::spawn_local(async move {
            // Errors surface on the sender side as failed requests.
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// The schedule and everything recorded while running it.
struct Run {
    start: Instant,
    /// Nanoseconds between two intended sends.
    interval_ns: f64,
    /// Slots before this index are warm-up and are not recorded.
    warmup_slots: u64,
    total_slots: u64,
    next_slot: Cell<u64>,
    /// Latency from the intended send time, in nanoseconds.
    latencies: RefCell<Vec<u64>>,
    /// Latency from the actual send time, in nanoseconds.
    service: RefCell<Vec<u64>>,
    /// How late each request was sent relative to its slot, in nanoseconds.
    send_lag: RefCell<Vec<u64>>,
    errors: RefCell<BTreeMap<&'static str, u64>>,
    warmup_errors: Cell<u64>,
    last_done: Cell<Option<Instant>>,
}

impl Run {
    fn intended(&self, slot: u64) -> Instant {
        // Computed from the start each time so rounding does not accumulate.
        self.start + Duration::from_nanos((slot as f64 * self.interval_ns) as u64)
    }

    fn take_slot(&self) -> Option<u64> {
        let slot = self.next_slot.get();
        if slot >= self.total_slots {
            return None;
        }
        self.next_slot.set(slot + 1);
        Some(slot)
    }

    fn error(&self, slot: u64, kind: &'static str) {
        if slot < self.warmup_slots {
            self.warmup_errors.set(self.warmup_errors.get() + 1);
        } else {
            *self.errors.borrow_mut().entry(kind).or_insert(0) += 1;
        }
    }
}

/// Sleep until `deadline` with sub-millisecond precision: the timer wheel for
/// the bulk of the wait, then yield until the deadline has passed.
async fn sleep_until_precise(deadline: Instant, spin: Duration) {
    let now = Instant::now();
    if deadline > now + spin {
        tokio::time::sleep_until((deadline - spin).into()).await;
    }
    while Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

enum Outcome {
    Ok,
    Status,
    Body,
    Transport,
    Timeout,
}

async fn send_one(sender: &mut SendRequest<Empty<Bytes>>, target: &Target) -> Outcome {
    let exchange = async {
        let response = sender.send_request(target.request()).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    };
    match tokio::time::timeout(target.timeout, exchange).await {
        Err(_) => Outcome::Timeout,
        Ok(Err(_)) => Outcome::Transport,
        Ok(Ok((status, _))) if !status.is_success() => Outcome::Status,
        Ok(Ok((_, body))) => match &target.expect_body {
            Some(expected) if body.trim_ascii_end() != expected.as_ref() => Outcome::Body,
            _ => Outcome::Ok,
        },
    }
}

/// One connection: take the next slot, wait for its time, send, record.
async fn connection(run: Rc<Run>, target: Rc<Target>, first: SendRequest<Empty<Bytes>>) {
    let mut sender = Some(first);
    while let Some(slot) = run.take_slot() {
        // Reconnect (if needed) before the slot's time, so an idle connection
        // closed by the server does not cost the next request a handshake.
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = None;
            match target.connect().await {
                Ok(s) => sender = Some(s),
                Err(_) => {
                    run.error(slot, "connect");
                    // Do not hammer a server that refuses connections.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };

        let intended = run.intended(slot);
        sleep_until_precise(intended, target.spin).await;
        if s.ready().await.is_err() {
            run.error(slot, "transport");
            sender = None;
            continue;
        }
        let sent = Instant::now();
        let outcome = send_one(s, &target).await;
        let done = Instant::now();

        match outcome {
            Outcome::Ok => {}
            Outcome::Status => run.error(slot, "status"),
            Outcome::Body => run.error(slot, "body_mismatch"),
            Outcome::Transport => {
                run.error(slot, "transport");
                sender = None;
            }
            Outcome::Timeout => {
                run.error(slot, "timeout");
                sender = None;
            }
        }
        if slot >= run.warmup_slots && matches!(outcome, Outcome::Ok) {
            run.latencies
                .borrow_mut()
                .push(done.duration_since(intended).as_nanos() as u64);
            run.service
                .borrow_mut()
                .push(done.duration_since(sent).as_nanos() as u64);
            run.send_lag
                .borrow_mut()
                .push(sent.saturating_duration_since(intended).as_nanos() as u64);
            run.last_done.set(Some(done));
        }
    }
}

/// Nearest-rank percentile of sorted samples, in microseconds.
fn percentile_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn summary(out: &mut String, prefix: &str, samples: &mut [u64]) {
    samples.sort_unstable();
    let mean = if samples.is_empty() {
        0.0
    } else {
        samples.iter().map(|&s| s as f64).sum::<f64>() / samples.len() as f64 / 1000.0
    };
    let points = [
        ("min", 0.0),
        ("p50", 0.50),
        ("p90", 0.90),
        ("p99", 0.99),
        ("p999", 0.999),
        ("max", 1.0),
    ];
    for (name, p) in points {
        let _ = write!(
            out,
            ",\"{prefix}{name}_us\":{:.1}",
            percentile_us(samples, p)
        );
    }
    let _ = write!(out, ",\"{prefix}mean_us\":{mean:.1}");
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn run_load(args: Args) -> Result<String, Box<dyn Error>> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err("--rate must be a positive number".into());
    }
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        return Err("--duration must be a positive number of seconds".into());
    }
    if !(args.warmup >= 0.0 && args.warmup.is_finite()) {
        return Err("--warmup must be zero or a positive number of seconds".into());
    }
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    let target = Rc::new(Target::from_args(&args)?);

    // Open every connection before the clock starts.
    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let sender = target
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", target.connect_to))?;
        senders.push(sender);
    }

    let warmup_slots = (args.warmup * args.rate).round() as u64;
    let measured_slots = ((args.duration * args.rate).round() as u64).max(1);
    let run = Rc::new(Run {
        start: Instant::now() + Duration::from_millis(5),
        interval_ns: 1e9 / args.rate,
        warmup_slots,
        total_slots: warmup_slots + measured_slots,
        next_slot: Cell::new(0),
        latencies: RefCell::new(Vec::with_capacity(measured_slots as usize)),
        service: RefCell::new(Vec::with_capacity(measured_slots as usize)),
        errors: RefCell::new(BTreeMap::new()),
        warmup_errors: Cell::new(0),
        send_lag: RefCell::new(Vec::with_capacity(measured_slots as usize)),
        last_done: Cell::new(None),
    });

    let tasks: Vec<_> = senders
        .into_iter()
        .map(|sender| tokio::task::spawn_local(connection(run.clone(), target.clone(), sender)))
        .collect();
    for task in tasks {
        task.await?;
    }

    let measure_start = run.intended(warmup_slots);
    let mut latencies = run.latencies.take();
    let mut service = run.service.take();
    let mut send_lag = run.send_lag.take();
    let ok = latencies.len() as u64;
    let elapsed = run.last_done.get().map_or(0.0, |t| {
        t.saturating_duration_since(measure_start).as_secs_f64()
    });
    let achieved = if elapsed > 0.0 {
        ok as f64 / elapsed
    } else {
        0.0
    };
    let errors = run.errors.take();
    let error_total: u64 = errors.values().sum();
    if run.warmup_errors.get() > 0 {
        eprintln!(
            "bench-load: {} errors during warm-up (not counted)",
            run.warmup_errors.get()
        );
    }

    let mut out = String::new();
    let _ = write!(
        out,
        "{{\"url\":{},\"rate\":{},\"duration_s\":{},\"connections\":{},\"scheduled\":{},\"ok\":{ok},\"errors\":{error_total},\"achieved_rate\":{achieved:.1}",
        json_string(&args.url),
        args.rate,
        args.duration,
        args.connections,
        measured_slots,
    );
    summary(&mut out, "", &mut latencies);
    summary(&mut out, "svc_", &mut service);
    summary(&mut out, "lag_", &mut send_lag);
    out.push_str(",\"error_kinds\":{");
    for (i, (kind, n)) in errors.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(out, "{sep}\"{kind}\":{n}");
    }
    out.push_str("}}");
    Ok(out)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let json = LocalSet::new().block_on(&runtime, run_load(args))?;
    println!("{json}");
    Ok(())
}
