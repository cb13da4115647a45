//! Shared pieces of the end-to-end tests: real upstream servers that record
//! what they saw, the proxy started on a registry file, unique loopback
//! addresses, and running real clients (curl, nghttp, Python).
//!
//! Every test gets its own loopback addresses and ephemeral ports, so tests run
//! in parallel; everything a test starts stops when its handles drop.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use divert_proxy::{Config, Proxy, Source};
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub mod backend;
pub mod cluster;
// The Markdown files' links and paths, checked by this crate's unit tests.
#[cfg(test)]
mod docs;
pub mod grpc;
pub mod ingress;
pub mod netns;
pub mod raw;
pub mod scenario;
pub mod tcp;
pub mod ws;

/// A loopback address no other test (in this or another test process) uses:
/// 127.X.Y.Z from the process id and a counter, away from 127.0.0.0/16 and the
/// demo's 127.77.0.0/16.
pub fn unique_ip() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let b = 100 + (pid % 100) as u8; // 100..199
    // The counter runs on into the third octet: 62 500 addresses a process
    // before one comes round again.
    let c = ((pid / 100 + n / 250) % 250) as u8 + 1;
    let d = (n % 250) as u8 + 1;
    IpAddr::V4(Ipv4Addr::new(127, b, c, d))
}

/// Whether a test that needs `tool` can run. Under CI=true a missing tool is a
/// failure, never a skip; elsewhere the test prints why it skips.
pub fn have_tool(tool: &str, probe_args: &[&str]) -> bool {
    let mut probe = Command::new(tool);
    probe.args(probe_args);
    available(probe, tool)
}

/// Runs `probe`: true if it succeeds. Otherwise the test skips with a reason,
/// or under CI=true fails, since CI must have everything.
fn available(mut probe: Command, what: &str) -> bool {
    let ok = probe.output().is_ok_and(|o| o.status.success());
    ok || skip_or_fail(&format!("{what} is not installed"))
}

/// A test that cannot run here: under CI=true it fails (CI must have
/// everything), elsewhere it is recorded as skipped and `false` is returned,
/// for the test to return early.
///
/// The test harness counts a test that returns early as passed and hides what
/// it printed, so the skip is also appended to the file `DIVERT_SKIP_LOG`
/// names (one `test name<TAB>reason` line), which `tests/run.sh` shows and
/// counts as skipped, not passed.
pub fn skip_or_fail(reason: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason}: required under CI=true; tests/run.sh must install it");
    }
    // `binary::test`, the binary's name without cargo's hash suffix.
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| {
            s.rsplit_once('-')
                .map_or(s.clone(), |(name, _)| name.to_string())
        })
        .unwrap_or_default();
    let test = format!(
        "{binary}::{}",
        std::thread::current().name().unwrap_or("unnamed test")
    );
    eprintln!("SKIP: {test}: {reason}");
    if let Some(path) = std::env::var_os("DIVERT_SKIP_LOG") {
        use std::io::Write;
        let line = format!("{test}\t{reason}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("cannot record the skip in {}: {e}", path.to_string_lossy());
        }
    }
    false
}

/// One request as an upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Who connected: the caller, or a proxy in front of the upstream.
    pub peer: SocketAddr,
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub baggage: Vec<String>,
    pub headers: http::HeaderMap,
    pub body_len: usize,
}

/// A real HTTP/1.1 + h2c server playing `service@namespace`. It answers every
/// request with that name in the body and in `x-served-by`, and records it.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicU32>,
    released: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// How long `/hold` holds a request the test never releases (then 504).
const HOLD_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

impl Upstream {
    pub async fn start(service: &str, namespace: &str) -> Upstream {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind upstream");
        Self::serve(listener, service, namespace)
    }

    /// Serves on a listener bound elsewhere (in a network namespace, say).
    pub fn serve(listener: TcpListener, service: &str, namespace: &str) -> Upstream {
        let addr = listener.local_addr().expect("upstream addr");
        let name = format!("{service}@{namespace}");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU32::new(0));
        let (released, _) = tokio::sync::watch::channel(false);
        let task = {
            let name = name.clone();
            let seen = seen.clone();
            let connections = connections.clone();
            let released = released.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, peer)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    connections.fetch_add(1, Ordering::Relaxed);
                    let name = name.clone();
                    let seen = seen.clone();
                    let released = released.subscribe();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            answer(req, peer, name.clone(), seen.clone(), released.clone())
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            })
        };
        Upstream {
            addr,
            name,
            seen,
            connections,
            released,
            task,
        }
    }

    /// Answers every `/hold` request, held or still to come.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("seen lock").len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `/echo` streams the request body back as it arrives (to prove nothing in
/// between buffers it); `/hold` is answered once the test calls
/// [`Upstream::release`] (a request in flight for as long as a test needs, a
/// drain say; it counts as seen on arrival); any other path at once after
/// reading the body.
async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    mut released: tokio::sync::watch::Receiver<bool>,
) -> Result<Response<Either<Incoming, Full<Bytes>>>, Infallible> {
    let (parts, body) = req.into_parts();
    if parts.uri.path() == "/echo" {
        let mut resp = Response::new(Either::Left(body));
        resp.headers_mut()
            .insert("x-served-by", name.parse().expect("header value"));
        return Ok(resp);
    }
    // Read the whole body (it is streamed to us; we only count it).
    let body_len = match body.collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => usize::MAX,
    };
    let baggage = parts
        .headers
        .get_all("baggage")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    seen.lock().expect("seen lock").push(Seen {
        peer,
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        version: parts.version,
        baggage,
        headers: parts.headers.clone(),
        body_len,
    });
    if parts.uri.path() == "/hold" {
        let release = released.wait_for(|r| *r);
        if !matches!(tokio::time::timeout(HOLD_LIMIT, release).await, Ok(Ok(_))) {
            let mut resp = Response::new(Either::Right(Full::new(Bytes::from(
                "held past the limit: the test never released it\n",
            ))));
            *resp.status_mut() = http::StatusCode::GATEWAY_TIMEOUT;
            return Ok(resp);
        }
    }
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "{name} {body_len}\n"
    )))));
    resp.headers_mut()
        .insert("x-served-by", name.parse().expect("header value"));
    Ok(resp)
}

/// One line of a registry's `services:` list: `name.namespace` dialed at
/// `ip:port`, sent to `endpoints`.
pub fn service_yaml(
    name: &str,
    namespace: &str,
    ip: IpAddr,
    port: u16,
    endpoints: &[SocketAddr],
) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("'{e}'")).collect();
    format!(
        "  - {{ name: {name}, namespace: {namespace}, addresses: ['{ip}'], ports: [{{ name: http, port: {port} }}], endpoints: [{}] }}\n",
        eps.join(", ")
    )
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "divert-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// A temporary directory that other users may read and enter: for files
    /// the proxy, running as its own user, reads (its registry).
    pub fn readable_by_all(tag: &str) -> TempDir {
        let dir = TempDir::new(tag);
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod the temp dir");
        dir
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `service` in staging, alice's copy diverting from it, and a proxy in
/// bind mode in front of both, listening on staging's address.
pub struct Diverted {
    pub staging: Upstream,
    pub alice: Upstream,
    /// Staging's service address, where clients dial.
    pub addr: SocketAddr,
    pub proxy: TestProxy,
}

impl Diverted {
    pub async fn start(service: &str, port: u16) -> Diverted {
        let staging = Upstream::start(service, "staging").await;
        let alice = Upstream::start(service, "alice").await;
        let ip = unique_ip();
        let mut yaml = String::from(
            "namespaces:\n  - name: staging\n  - { name: alice, sharedNamespace: staging }\nservices:\n",
        );
        yaml += &service_yaml(service, "staging", ip, port, &[staging.addr]);
        yaml += &service_yaml(service, "alice", unique_ip(), port, &[alice.addr]);
        let proxy = TestProxy::start(&yaml).await;
        Diverted {
            staging,
            alice,
            addr: SocketAddr::new(ip, port),
            proxy,
        }
    }
}

/// The proxy on a registry file in its own temporary directory.
pub struct TestProxy {
    pub proxy: Proxy,
    pub registry: PathBuf,
    _dir: TempDir,
}

impl TestProxy {
    /// Writes `yaml` as the registry and starts the proxy on it, returning once
    /// every dialed address is listening.
    pub async fn start(yaml: &str) -> TestProxy {
        Self::start_with(yaml, Config::default()).await
    }

    pub async fn start_with(yaml: &str, config: Config) -> TestProxy {
        let dir = TempDir::new("registry");
        let registry = dir.path().join("registry.yaml");
        std::fs::write(&registry, yaml).expect("write registry");
        let proxy = Proxy::start(config, Source::Registry(registry.clone())).expect("proxy starts");
        let l = proxy.listening(1).await;
        assert!(l.failed.is_empty(), "listeners failed: {:?}", l.failed);
        TestProxy {
            proxy,
            registry,
            _dir: dir,
        }
    }

    /// Replaces the registry file atomically (write + rename, as editors and
    /// ConfigMap updates do) and waits until the proxy serves the new table.
    pub async fn reload(&self, yaml: &str) -> u64 {
        let before = self.proxy.table_version();
        let tmp = self.registry.with_extension("tmp");
        std::fs::write(&tmp, yaml).expect("write registry");
        std::fs::rename(&tmp, &self.registry).expect("rename registry");
        let mut rx = self.proxy.shared.tables.subscribe();
        let v = *tokio::time::timeout(
            std::time::Duration::from_secs(10),
            rx.wait_for(|v| *v > before),
        )
        .await
        .expect("the proxy sees the new registry within 10 s")
        .expect("table version channel");
        let l = self.proxy.listening(v).await;
        assert!(l.failed.is_empty(), "listeners failed: {:?}", l.failed);
        v
    }
}

/// Runs a command off the runtime's threads and returns its output.
pub async fn run(cmd: Command) -> Output {
    let mut cmd = cmd;
    let shown = format!("{cmd:?}");
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

/// Runs `cmd` with `input` on its stdin, to its end.
pub fn output_with_input(mut cmd: Command, input: &[u8]) -> std::io::Result<Output> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input)?;
    }
    child.wait_with_output()
}

/// Runs `cmd` (with `input` on its stdin, if any) off the runtime's threads
/// and returns its stdout, failing the test with its output unless it
/// succeeds.
pub async fn ok(cmd: Command, input: Option<Vec<u8>>) -> String {
    let shown = format!("{cmd:?}");
    let out = match input {
        None => run(cmd).await,
        Some(input) => tokio::task::spawn_blocking(move || output_with_input(cmd, &input))
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("cannot run {shown}: {e}")),
    };
    assert!(
        out.status.success(),
        "{shown} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An HTTP/2 (prior knowledge) client connection to `addr` on the `h2`
/// crate, ready for a request: for tests that drive streams frame by frame
/// (a body sent in pieces, or stopped halfway).
pub async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    sender.ready().await.expect("ready for a stream")
}

/// `curl -s` with the given args; returns (status code, body).
pub async fn curl(args: &[&str]) -> (u16, String) {
    curl_with(Command::new("curl"), args).await
}

/// [`curl`] started by `cmd` (`ip netns exec NS curl`, say).
pub async fn curl_with(cmd: Command, args: &[&str]) -> (u16, String) {
    try_curl_with(cmd, args)
        .await
        .unwrap_or_else(|e| panic!("curl {args:?} failed: {e}"))
}

/// [`curl_with`], with curl's own failure (it could not connect, say) as
/// `Err`, for a test that polls until a path works.
pub async fn try_curl_with(mut cmd: Command, args: &[&str]) -> Result<(u16, String), String> {
    cmd.args([
        "-s",
        "-S",
        "--max-time",
        "10",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ]);
    cmd.args(args);
    let out = run(cmd).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or(0);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok((code, body.to_string()))
}

/// A response as `curl -D -` printed it: the status, the fields of its
/// (last) head with lowercase names, and the body.
#[derive(Debug, Clone, Default)]
pub struct Headed {
    pub status: u16,
    pub fields: Vec<(String, String)>,
    pub body: String,
}

impl Headed {
    /// Reads curl's output; with `-L`, the last head (curl prints each).
    pub fn parse(text: &str) -> Headed {
        let (head, body) = text
            .rsplit_once("\r\n\r\n")
            .map(|(h, b)| (h.rsplit("\r\n\r\n").next().unwrap_or(h), b))
            .unwrap_or((text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let fields = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Headed {
            status,
            fields,
            body: body.to_owned(),
        }
    }

    /// The first field named `name` (lowercase).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The directory of this crate, to find the Python helpers and the protos.
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `python3 tests/python/<script> args…` and returns its stdout, failing
/// the test with its stderr when it fails.
pub async fn python(script: &str, args: &[String]) -> String {
    python_with(Command::new("python3"), script, args).await
}

/// [`python`] started by `cmd` (`ip netns exec NS python3`, say).
pub async fn python_with(mut cmd: Command, script: &str, args: &[String]) -> String {
    cmd.arg(crate_dir().join("python").join(script)).args(args);
    ok(cmd, None).await
}

/// Whether Python has the given modules; like [`have_tool`] under CI.
pub fn have_python_modules(modules: &[&str]) -> bool {
    let code = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut probe = Command::new("python3");
    probe.args(["-c", &code]);
    available(probe, &format!("python modules {modules:?}"))
}
