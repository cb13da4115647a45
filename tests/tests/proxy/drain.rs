//! Graceful drain of the real `divert-proxy proxy` binary (bind mode, on loopback):
//! on SIGTERM it stops accepting (new connections are refused at once),
//! answers `/ready` with 503 "draining", sends HTTP/2 clients GOAWAY, lets
//! every request already in flight finish, and exits 0 as soon as the last
//! connection has closed; under load no request that reached an upstream
//! goes unanswered. `--shutdown-grace` bounds the wait, and a second signal
//! ends it at once.
//!
//! Each test has its own loopback address and its own proxy process, and
//! waits on conditions with deadlines (what the upstream has seen, the proxy's
//! log, connect results), never on fixed sleeps.

use std::collections::HashSet;
use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use divert_tests::netns::{Process, sidecar_bin};
use divert_tests::*;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// The port the service is dialed on (its address is unique to the test).
const SERVICE_PORT: u16 = 8080;
/// The admin server's port, on the same unique address.
const ADMIN_PORT: u16 = 4191;
/// What the upstream answers to every request without a body.
const BODY: &str = "web@staging 0\n";
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(20);

/// An upstream `web@staging`, the proxy routing the service address to it,
/// and the proxy's admin address. The proxy's log is printed if the test
/// fails.
struct Setup {
    upstream: Upstream,
    svc: SocketAddr,
    admin: SocketAddr,
    proxy: Process,
    dir: TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- divert proxy log ---\n{}", self.proxy.log());
        }
    }
}

/// Starts the upstream and `divert-proxy proxy --shutdown-grace <grace>` in bind
/// mode, returning once the proxy is ready.
async fn start(grace: &str) -> Setup {
    let upstream = Upstream::start("web", "staging").await;
    let ip = unique_ip();
    let svc = SocketAddr::new(ip, SERVICE_PORT);
    let admin = SocketAddr::new(ip, ADMIN_PORT);
    let dir = TempDir::new("drain");
    let registry = dir.path().join("registry.yaml");
    let yaml = format!(
        "namespaces:\n  - name: staging\nservices:\n{}",
        service_yaml("web", "staging", ip, SERVICE_PORT, &[upstream.addr])
    );
    std::fs::write(&registry, yaml).expect("write registry");
    let mut cmd = Command::new(sidecar_bin());
    cmd.args(["--log-level", "info", "proxy", "--registry"])
        .arg(&registry)
        .arg("--admin-addr")
        .arg(admin.to_string())
        .args(["--shutdown-grace", grace]);
    let proxy = tokio::task::block_in_place(|| Process::spawn(cmd, "divert proxy ready"));
    Setup {
        upstream,
        svc,
        admin,
        proxy,
        dir,
    }
}

impl Setup {
    /// Requests the upstream has seen on `path` (or under it, with a
    /// trailing `/`).
    fn seen_on(&self, path: &str) -> usize {
        self.upstream
            .seen()
            .iter()
            .filter(|s| s.path == path || (path.ends_with('/') && s.path.starts_with(path)))
            .count()
    }

    /// Waits (off the runtime's threads) up to `timeout` for the proxy to
    /// exit; panics if it does not.
    fn exit_within(&mut self, timeout: Duration) -> std::process::ExitStatus {
        tokio::task::block_in_place(|| self.proxy.wait_exit(timeout))
            .unwrap_or_else(|| panic!("the proxy is still running {timeout:?} later"))
    }

    /// Whether the proxy's log shows `needle` within a few seconds (the log
    /// is read by a thread, so it may trail the process by a moment).
    fn logged(&self, needle: &str) -> bool {
        tokio::task::block_in_place(|| self.proxy.wait_for_log(needle, Duration::from_secs(5)))
    }
}

/// Polls `check` every [`POLL`] until it gives a value; panics after
/// `timeout`, naming `what` it waited for.
async fn until<T, Fut>(what: &str, timeout: Duration, mut check: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "waited {timeout:?} in vain until {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

type H1 = http1::SendRequest<Empty<Bytes>>;
type H2 = http2::SendRequest<Empty<Bytes>>;

/// A GET of `path` (origin form, with Host) for an HTTP/1.1 connection to
/// `addr`.
fn h1_get(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::new())
        .expect("request")
}

/// A GET of `path` for an HTTP/2 connection to `addr` (with :scheme and
/// :authority).
fn h2_get(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .expect("request")
}

/// A new HTTP/1.1 keep-alive connection to `addr`.
async fn h1_connect(addr: SocketAddr) -> H1 {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (tx, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    tx
}

/// A new HTTP/2 prior-knowledge connection to `addr`.
async fn h2_connect(addr: SocketAddr) -> H2 {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    tx
}

/// Sends `req` and reads the whole response: its status and body.
async fn h1_send(tx: &mut H1, req: Request<Empty<Bytes>>) -> hyper::Result<(StatusCode, Bytes)> {
    tx.ready().await?;
    let resp = tx.send_request(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// Sends `req` on the HTTP/2 connection and reads the whole response.
async fn h2_send(mut tx: H2, req: Request<Empty<Bytes>>) -> hyper::Result<(StatusCode, Bytes)> {
    let resp = tx.send_request(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// `GET path` on the admin server (a new connection each time).
async fn admin_get(admin: SocketAddr, path: &str) -> (StatusCode, String) {
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut tx = h1_connect(admin).await;
        h1_send(&mut tx, h1_get(admin, path)).await
    })
    .await
    .unwrap_or_else(|_| panic!("the admin server answers {path} within 10 s"))
    .unwrap_or_else(|e| panic!("GET {path} on the admin server: {e}"));
    (got.0, String::from_utf8_lossy(&got.1).into_owned())
}

/// Waits until `/ready` no longer answers 200 (the drain has started) and
/// returns what it answers then.
async fn ready_once_draining(admin: SocketAddr) -> (StatusCode, String) {
    until(
        "/ready stops answering 200",
        Duration::from_secs(10),
        || async move {
            let (code, body) = admin_get(admin, "/ready").await;
            (code != StatusCode::OK).then_some((code, body))
        },
    )
    .await
}

/// Awaits a spawned request, which must finish within `timeout`.
async fn finished<T>(what: &str, timeout: Duration, task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(timeout, task)
        .await
        .unwrap_or_else(|_| panic!("{what} still pending {timeout:?} later"))
        .unwrap_or_else(|e| panic!("{what} panicked: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_and_new_connections_are_refused() {
    // Held by the upstream until the checks below are done.
    const HELD: &str = "/hold";
    let mut s = start("20s").await;
    let svc = s.svc;

    // Two HTTP/1.1 requests, each on its own connection, and four streams on
    // one HTTP/2 connection, all held by the upstream.
    let mut in_flight = Vec::new();
    for _ in 0..2 {
        let mut tx = h1_connect(svc).await;
        in_flight.push(tokio::spawn(async move {
            h1_send(&mut tx, h1_get(svc, HELD)).await
        }));
    }
    let h2 = h2_connect(svc).await;
    for _ in 0..4 {
        in_flight.push(tokio::spawn(h2_send(h2.clone(), h2_get(svc, HELD))));
    }
    let up = &s.upstream;
    until(
        "the upstream has seen all six requests",
        Duration::from_secs(10),
        || async move { (up.count() == 6).then_some(()) },
    )
    .await;

    s.proxy.signal("TERM");

    // Not ready, and saying why; the admin server still answers.
    let (code, body) = ready_once_draining(s.admin).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "/ready: {body}");
    // 3 connections, and for a moment the accept loop, which counts as open
    // until it has seen the drain.
    let open: Option<u32> = body
        .strip_prefix("not ready: draining, ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok());
    assert!(
        matches!(open, Some(3 | 4)) && body.contains("connections still open"),
        "/ready while draining 3 connections: {body}"
    );

    // The listener is closed: a new connection is refused (not accepted and
    // then dropped), while the proxy is still running.
    until(
        "a new connection is refused",
        Duration::from_secs(5),
        || async move {
            match TcpStream::connect(svc).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
                _ => None,
            }
        },
    )
    .await;
    assert!(s.proxy.try_exit().is_none(), "the proxy is still draining");

    // GOAWAY: the HTTP/2 client stops opening streams on a connection whose
    // streams still run (hyper's client only refuses new streams once it has
    // received GOAWAY; without it they would go out and be answered). A
    // stream opened before the GOAWAY arrived is served like any other.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut late_answered = 0;
    let refused = loop {
        match h2_send(h2.clone(), h2_get(svc, "/late")).await {
            Ok((status, body)) => {
                assert_eq!((status, &body[..]), (StatusCode::OK, BODY.as_bytes()));
                late_answered += 1;
            }
            Err(e) => break e,
        }
        assert!(
            Instant::now() < deadline,
            "the HTTP/2 connection still takes new streams 5 s into the drain"
        );
        tokio::time::sleep(POLL).await;
    };
    eprintln!("new HTTP/2 stream refused after {late_answered} late ones were served: {refused}");
    assert!(
        in_flight.iter().all(|t| !t.is_finished()),
        "the in-flight requests were still open when the new stream was refused ({refused})"
    );

    // Every request in flight completes with the upstream's answer, once it
    // gives it.
    s.upstream.release();
    for (i, task) in in_flight.into_iter().enumerate() {
        let what = if i < 2 {
            "HTTP/1.1 request"
        } else {
            "HTTP/2 stream"
        };
        let (status, body) = finished(what, Duration::from_secs(15), task)
            .await
            .unwrap_or_else(|e| panic!("the in-flight {what} #{i} failed: {e}"));
        assert_eq!(
            (status, String::from_utf8_lossy(&body).as_ref()),
            (StatusCode::OK, BODY),
            "{what} #{i}"
        );
    }
    assert_eq!(s.seen_on(HELD), 6);
    assert_eq!(
        s.seen_on("/late"),
        late_answered,
        "only answered late streams reached the upstream"
    );

    // And the proxy exits 0 as soon as they have, not at the end of the
    // grace period (its log says which ended the drain).
    let status = s.exit_within(Duration::from_secs(10));
    assert!(status.success(), "the proxy exited with {status}");
    assert!(s.logged("drained: every connection finished"));
}

/// An idle HTTP/1.1 keep-alive connection ends as the drain starts, both
/// while it still holds its buffers (idle under a second) and once it has
/// let them go (past the idle mark, waiting for a first byte without one):
/// the proxy then exits at once, not at the end of its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_end_as_the_drain_starts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut s = start("30s").await;
    let svc = s.svc;
    let get = format!("GET /idle HTTP/1.1\r\nHost: {svc}\r\n\r\n");
    let answered = |mut c: TcpStream| {
        let get = get.clone();
        async move {
            c.write_all(get.as_bytes()).await.expect("send");
            let mut got = Vec::new();
            let mut chunk = [0u8; 512];
            while !got.ends_with(BODY.as_bytes()) {
                let n = c.read(&mut chunk).await.expect("read the answer");
                assert!(n > 0, "closed before the answer: {got:?}");
                got.extend_from_slice(&chunk[..n]);
            }
            c
        }
    };
    let long_idle = answered(TcpStream::connect(svc).await.expect("connect")).await;
    // Past the idle mark (a second), its buffers are gone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let short_idle = answered(TcpStream::connect(svc).await.expect("connect")).await;

    s.proxy.signal("TERM");
    for (what, mut c) in [
        ("past the idle mark", long_idle),
        ("just answered", short_idle),
    ] {
        let mut rest = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), c.read(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the idle connection {what} is closed by the drain within 5 s: {read:?}"
        );
    }
    let status = s.exit_within(Duration::from_secs(10));
    assert!(status.success(), "the proxy exited with {status}");
    assert!(s.logged("drained: every connection finished"));
}

/// What one HTTP/1.1 load connection got.
#[derive(Default)]
struct H1Load {
    /// Paths answered 200 with the upstream's body.
    ok: HashSet<String>,
    /// Responses that were not (path, status, body).
    bad: Vec<String>,
    /// How the connection ended (the request that failed, and why).
    ended: Option<String>,
}

/// Sends `/h1/<task>/<n>` back to back on one keep-alive connection until a
/// request fails (the drain closes the connection), for at most 60 s.
async fn h1_load(svc: SocketAddr, task: usize) -> H1Load {
    let mut tx = h1_connect(svc).await;
    let mut got = H1Load::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0.. {
        if Instant::now() > deadline {
            got.ended = Some("still running after 60 s".into());
            break;
        }
        let path = format!("/h1/{task}/{n}");
        match h1_send(&mut tx, h1_get(svc, &path)).await {
            Ok((StatusCode::OK, body)) if body == BODY.as_bytes() => {
                got.ok.insert(path);
            }
            Ok((status, body)) => got.bad.push(format!("{path}: {status} {body:?}")),
            Err(e) => {
                got.ended = Some(format!("{path}: {e}"));
                break;
            }
        }
    }
    got
}

/// A child process killed on drop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// h2load's `requests:` summary line: (total, started, done, succeeded,
/// failed, errored).
fn h2load_requests(out: &str) -> [u64; 6] {
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("requests:"))
        .unwrap_or_else(|| panic!("no requests: line in h2load's output:\n{out}"));
    let mut n = [0; 6];
    for (i, word) in ["total", "started", "done", "succeeded", "failed", "errored"]
        .iter()
        .enumerate()
    {
        n[i] = line
            .split(',')
            .find_map(|part| part.trim().strip_suffix(word)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {word:?} count in h2load's {line:?}"));
    }
    n
}

/// "Lost" means: the upstream saw the request (so the proxy forwarded it) but
/// its client did not get a complete 200 with the upstream's body. Requests
/// the proxy turned away before forwarding them (refused connections, idle
/// keep-alive connections closed, streams refused after GOAWAY) are allowed:
/// their clients know they were not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_lost_under_load() {
    if !have_tool("h2load", &["--version"]) {
        return;
    }
    let mut s = start("10s").await;
    let svc = s.svc;

    let h1: Vec<_> = (0..4)
        .map(|task| tokio::spawn(h1_load(svc, task)))
        .collect();
    let out_path = s.dir.path().join("h2load.out");
    let out = File::create(&out_path).expect("h2load output file");
    let mut h2load = KillOnDrop(
        Command::new("h2load")
            .args(["-c", "2", "-m", "8", "-n", "200000"])
            .arg(format!("http://{svc}/h2load"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("start h2load"),
    );

    // Both loads are well under way before the signal.
    let s_ref = &s;
    until(
        "the upstream has seen 150 HTTP/1.1 and 300 h2load requests",
        Duration::from_secs(60),
        || async move {
            (s_ref.seen_on("/h1/") >= 150 && s_ref.seen_on("/h2load") >= 300).then_some(())
        },
    )
    .await;
    assert!(
        h1.iter().all(|t| !t.is_finished()),
        "an HTTP/1.1 load connection ended before the signal"
    );
    s.proxy.signal("TERM");
    let signaled = Instant::now();

    // The loads end (their connections are closed or refused), then the
    // proxy exits.
    let mut loads = Vec::new();
    for (task, t) in h1.into_iter().enumerate() {
        loads.push(finished(&format!("HTTP/1.1 load {task}"), Duration::from_secs(30), t).await);
    }
    let h2load_status = until("h2load ends", Duration::from_secs(30), || {
        let status = h2load.0.try_wait().expect("h2load status");
        async move { status }
    })
    .await;
    let status = s.exit_within(Duration::from_secs(20));
    assert!(status.success(), "the proxy exited with {status}");
    let drain_took = signaled.elapsed();
    assert!(
        s.logged("drained: every connection finished"),
        "the drain ended before the grace period"
    );

    // HTTP/1.1: every request the upstream saw was answered at its client.
    let seen: Vec<String> = s
        .upstream
        .seen()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.starts_with("/h1/"))
        .collect();
    let answered: HashSet<&String> = loads.iter().flat_map(|l| &l.ok).collect();
    let lost: Vec<&String> = seen.iter().filter(|p| !answered.contains(p)).collect();
    assert!(
        lost.is_empty(),
        "HTTP/1.1 requests lost (seen upstream, never answered): {lost:?}"
    );
    for (task, l) in loads.iter().enumerate() {
        assert!(
            l.bad.is_empty(),
            "HTTP/1.1 load {task} got bad answers: {:?}",
            l.bad
        );
        assert!(
            !l.ok.is_empty(),
            "HTTP/1.1 load {task} got nothing answered"
        );
        eprintln!(
            "HTTP/1.1 load {task}: {} answered, then {}",
            l.ok.len(),
            l.ended.as_deref().unwrap_or("?")
        );
    }
    assert_eq!(
        seen.len(),
        answered.len(),
        "every answered HTTP/1.1 path reached the upstream exactly once"
    );

    // h2load: as many succeeded as the upstream saw, and no error statuses.
    let out = std::fs::read_to_string(&out_path).expect("h2load output");
    let [total, started, done, succeeded, failed, errored] = h2load_requests(&out);
    let seen_h2 = s.seen_on("/h2load") as u64;
    eprintln!(
        "h2load ({h2load_status}): {total} total, {started} started, {done} done, {succeeded} succeeded, {failed} failed, {errored} errored; upstream saw {seen_h2}; drain took {drain_took:?}"
    );
    assert_eq!(
        succeeded, seen_h2,
        "h2load requests lost: the upstream saw {seen_h2}, h2load got {succeeded} answered:\n{out}"
    );
    assert_eq!(failed, errored, "h2load got non-2xx answers:\n{out}");
    assert!(
        succeeded < total,
        "h2load finished before the drain; the test proves nothing"
    );
}

/// One HTTP/1.1 request the upstream holds (and never releases), once the
/// upstream has seen it.
async fn long_request_in_flight(
    s: &Setup,
) -> tokio::task::JoinHandle<hyper::Result<(StatusCode, Bytes)>> {
    let svc = s.svc;
    let mut tx = h1_connect(svc).await;
    let request = tokio::spawn(async move { h1_send(&mut tx, h1_get(svc, "/hold")).await });
    let up = &s.upstream;
    until(
        "the upstream has seen the request",
        Duration::from_secs(10),
        || async move { (up.count() == 1).then_some(()) },
    )
    .await;
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_the_drain() {
    let mut s = start("1s").await;
    let request = long_request_in_flight(&s).await;

    let signaled = Instant::now();
    s.proxy.signal("TERM");
    let status = s.exit_within(Duration::from_secs(8));
    let took = signaled.elapsed();
    assert!(status.success(), "the proxy exited with {status}");
    assert!(
        took >= Duration::from_secs(1),
        "the proxy gave up before the grace period: {took:?}"
    );
    assert!(s.logged("grace period over"));

    // The client learns its request is over (the connection closed) instead
    // of waiting for an upstream that never answers.
    let got = finished(
        "the request cut by the grace period",
        Duration::from_secs(10),
        request,
    )
    .await;
    assert!(
        got.is_err(),
        "the request cut by the grace period succeeded: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let mut s = start("60s").await;
    let request = long_request_in_flight(&s).await;

    s.proxy.signal("TERM");
    // The proxy listens for the second signal from the moment the drain
    // starts, which is when /ready turns 503.
    let (code, body) = ready_once_draining(s.admin).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "/ready: {body}");
    assert!(
        s.proxy.try_exit().is_none(),
        "the proxy waits for the request in flight"
    );

    let second = Instant::now();
    s.proxy.signal("INT");
    let status = s.exit_within(Duration::from_secs(5));
    assert!(status.success(), "the proxy exited with {status}");
    assert!(second.elapsed() < Duration::from_secs(5));
    assert!(s.logged("second signal"));
    let got = finished(
        "the request cut by the second signal",
        Duration::from_secs(10),
        request,
    )
    .await;
    assert!(
        got.is_err(),
        "the request cut by the second signal succeeded: {got:?}"
    );
}
