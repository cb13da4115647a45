//! A hostile HTTP/2 upstream: the proxy's own HTTP/2 client
//! (`upstream::h2`) reads whatever frames the input holds.
//!
//! A real h2c client sends one request (with a small body, so the body's
//! pipe runs too) through a real proxy listener (bind mode) to an upstream
//! that answers the proxy's connection with a valid SETTINGS frame and then
//! the input's bytes, and closes. Beyond not panicking or hanging: the
//! client gets an HTTP/2 response or a stream error within the limits, and
//! the proxy goes on serving (a well-behaved upstream's request afterwards is
//! answered).
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use divert_proxy::Proxy;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An empty SETTINGS frame: what an HTTP/2 server must send first (RFC 9113
/// §3.4), so that the input reaches the client's frame handling.
const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// How long one exchange may take, all waits included.
const LIMIT: Duration = Duration::from_secs(10);

struct Harness {
    runtime: tokio::runtime::Runtime,
    dialed: SocketAddr,
    /// What the upstream sends after its SETTINGS on the next connection.
    script: &'static Mutex<Vec<u8>>,
    _proxy: Proxy,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    static SCRIPT: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    H.get_or_init(|| {
        let runtime = divert_fuzz::runtime();
        let (dialed, proxy) = runtime.block_on(async {
            divert_fuzz::ignore_sigpipe();
            let up = divert_fuzz::upstream(|s| {
                let script = SCRIPT.lock().map(|s| s.clone()).unwrap_or_default();
                play(s, script)
            })
            .await;
            divert_fuzz::proxy_on(Ipv4Addr::new(127, 94, 0, 1), |port| format!(
                "services:\n  - {{ name: web, namespace: staging, addresses: [127.94.0.1], ports: [{{ port: {port} }}], endpoints: [\"{up}\"] }}\n"
            ), Duration::from_millis(500)).await
        });
        Harness {
            runtime,
            dialed,
            script: &SCRIPT,
            _proxy: proxy,
        }
    })
}

/// The upstream's side of one connection: SETTINGS, the script, then a
/// close once the proxy has had a moment to read it.
async fn play(mut s: TcpStream, script: Vec<u8>) {
    let _ = s.write_all(&SETTINGS).await;
    let _ = s.write_all(&script).await;
    // Read (and drop) what the proxy sends until it closes or goes quiet,
    // so the script is not cut off by a reset on unread data.
    let mut sink = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(5), s.read(&mut sink)).await {
        if n == 0 {
            break;
        }
    }
}

/// One h2c request through the proxy; `Ok` once a response head or a
/// stream error came, `Err` if neither came within [`LIMIT`].
async fn exchange(dialed: SocketAddr) -> Result<Option<u16>, &'static str> {
    let tcp = TcpStream::connect(dialed)
        .await
        .map_err(|_| "the proxy refused the connection")?;
    let Ok((client, conn)) = h2::client::handshake(tcp).await else {
        return Err("the proxy did not speak HTTP/2");
    };
    tokio::spawn(conn);
    let mut client = client
        .ready()
        .await
        .map_err(|_| "the proxy closed at once")?;
    let req = http::Request::post(format!("http://{dialed}/fuzz"))
        .body(())
        .map_err(|_| "request")?;
    let Ok((resp, mut body)) = client.send_request(req, false) else {
        return Ok(None);
    };
    let _ = body.send_data(Bytes::from_static(b"hello"), true);
    match tokio::time::timeout(LIMIT, resp).await {
        Ok(Ok(r)) => {
            let status = r.status().as_u16();
            // The body ends, or breaks off, within the limit too.
            let mut recv = r.into_body();
            let drained = tokio::time::timeout(LIMIT, async {
                while let Some(Ok(c)) = recv.data().await {
                    let _ = recv.flow_control().release_capacity(c.len());
                }
            })
            .await;
            drained
                .map(|()| Some(status))
                .map_err(|_| "the response body neither ended nor broke off")
        }
        Ok(Err(_)) => Ok(None),
        Err(_) => Err("no response head and no stream error"),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 64 * 1024 {
        return;
    }
    let h = harness();
    if let Ok(mut s) = h.script.lock() {
        s.clear();
        s.extend_from_slice(data);
    }
    let got = h.runtime.block_on(exchange(h.dialed));
    if let Err(why) = got {
        panic!("{why}");
    }
    // The proxy still serves: the next request gets an answer, from the
    // next connection's well-behaved upstream (HEADERS with `:status 200`,
    // HPACK index 8, and END_STREAM, on stream 1, a new connection's first
    // request), or the proxy's own if the hostile one is still pooled.
    if let Ok(mut s) = h.script.lock() {
        s.clear();
        s.extend_from_slice(&[0, 0, 1, 1, 0x05, 0, 0, 0, 1, 0x88]);
    }
    let after = h.runtime.block_on(exchange(h.dialed));
    assert!(
        matches!(after, Ok(Some(_))),
        "a well-behaved upstream after a hostile one gets no answer through: {after:?}"
    );
});
