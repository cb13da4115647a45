//! Pods as network namespaces, for the tests of transparent interception.
//!
//! A [`Lan`] is a hub namespace holding a bridge; each [`Pod`] is a namespace
//! with an `eth0` veth on that bridge, an IPv4 and an IPv6 address, and a
//! default route, as a pod has. Namespace names are unique per process and
//! call, so tests run in parallel; everything is deleted on drop, iptables
//! rules included (they live in the namespace).
//!
//! Sockets for servers and raw clients are made inside a namespace by a
//! short-lived thread that enters it ([`Netns::in_ns`]): a socket stays in the
//! namespace it was created in, whichever thread later uses it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

/// Whether network-namespace tests can run: root, `ip`, `iptables`, `setpriv`.
/// Under CI=true anything missing fails the test; elsewhere it skips.
pub fn available() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        return crate::skip_or_fail("network-namespace tests need root");
    }
    crate::have_tool("ip", &["-V"])
        && crate::have_tool("iptables-legacy", &["--version"])
        && crate::have_tool("iptables-nft", &["--version"])
        && crate::have_tool("setpriv", &["--version"])
}

/// An unconnected tokio TCP socket made inside the namespace `ns` (by name),
/// for the family of `addr`: connections it makes start there.
pub fn socket_in(ns: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }?;
            Ok(socket)
        })
        .join()
        .map_err(|_| std::io::Error::other("the thread inside the namespace panicked"))?
    })
}

/// The `divert` binary (controller and CLI) that `cargo test --workspace`
/// builds beside the tests; `DIVERT_BIN` names another.
pub fn divert_bin() -> PathBuf {
    workspace_bin("divert", "DIVERT_BIN", "divert-cli")
}

/// The sidecar binary, `divert-proxy` (`proxy` and `init`), that `cargo test
/// --workspace` builds beside the tests; `DIVERT_PROXY_BIN` names another.
pub fn sidecar_bin() -> PathBuf {
    workspace_bin("divert-proxy", "DIVERT_PROXY_BIN", "divert-sidecar")
}

fn workspace_bin(name: &str, env: &str, package: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(name))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p {package}; cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// A network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "dvt-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` run inside the namespace (as root).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// `program` run inside the namespace as `uid`:`uid` with no other groups
    /// and no capabilities.
    pub fn command_as(&self, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = self.command("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "--"])
            .arg(program);
        c
    }

    /// `ip -n <ns> args…`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("enter {path}: {e}"));
                f()
            })
            .join()
            .expect("thread inside the namespace")
        })
    }

    /// A listening socket inside the namespace, for a tokio server. Call it
    /// from within a tokio runtime.
    pub fn listen(&self, addr: SocketAddr) -> tokio::net::TcpListener {
        let std = self
            .in_ns(|| std::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", self.name));
        std.set_nonblocking(true).expect("nonblocking");
        tokio::net::TcpListener::from_std(std).expect("tokio listener")
    }

    /// A TCP connection made from inside the namespace (as root, so it is
    /// redirected like an application's).
    pub fn connect(&self, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
        self.in_ns(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Pods on one bridge: 10.244.0.0/24 and fd00:244::/64.
pub struct Lan {
    hub: Netns,
    next: u8,
}

/// A pod: its namespace and addresses.
pub struct Pod {
    pub ns: Netns,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl Lan {
    pub fn new() -> Lan {
        let hub = Netns::new("hub");
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.ip(&["link", "set", "br0", "up"]);
        Lan { hub, next: 2 }
    }

    pub fn pod(&mut self, tag: &str) -> Pod {
        let n = self.next;
        self.next += 1;
        let ns = Netns::new(tag);
        let peer = format!("veth{n}");
        ns.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            self.hub.name(),
        ]);
        self.hub.ip(&["link", "set", &peer, "master", "br0", "up"]);
        let ipv4 = Ipv4Addr::new(10, 244, 0, n);
        let ipv6 = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, u16::from(n));
        ns.ip(&["addr", "add", &format!("{ipv4}/24"), "dev", "eth0"]);
        ns.ip(&["addr", "add", &format!("{ipv6}/64"), "dev", "eth0", "nodad"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        // Everything off the pod network (service IPs, say) goes out eth0,
        // as it would towards the node.
        ns.ip(&["route", "add", "default", "dev", "eth0"]);
        ns.ip(&["-6", "route", "add", "default", "dev", "eth0"]);
        Pod { ns, ipv4, ipv6 }
    }
}

impl Default for Lan {
    fn default() -> Self {
        Lan::new()
    }
}

/// A long-running process (the proxy, say) whose stderr is collected; killed
/// on drop.
pub struct Process {
    child: Child,
    log: Arc<(Mutex<String>, Condvar)>,
}

impl Process {
    /// Starts `cmd` and waits until its stderr shows `ready` (within 20 s).
    pub fn spawn(mut cmd: Command, ready: &str) -> Process {
        let shown = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
        let log = Arc::new((Mutex::new(String::new()), Condvar::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let (text, cv) = &*log;
                    if let Ok(mut t) = text.lock() {
                        t.push_str(&line);
                        t.push('\n');
                    }
                    cv.notify_all();
                }
            });
        }
        let p = Process { child, log };
        if !p.wait_for_log(ready, Duration::from_secs(20)) {
            panic!("{shown} did not print {ready:?}; its log:\n{}", p.log());
        }
        p
    }

    pub fn log(&self) -> String {
        self.log.0.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it `signal` (a name kill(1) knows: `TERM`, `INT`, …). Does
    /// nothing once it has exited and been reaped, so the signal can never
    /// reach another process that reused the id.
    pub fn signal(&mut self, signal: &str) {
        if self.try_exit().is_some() {
            return;
        }
        let pid = self.pid().to_string();
        run_ok(Command::new("kill").args(["-s", signal, &pid]));
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for it to exit; `None` if it is still running.
    /// Blocks the thread: from async code, call it in
    /// `tokio::task::block_in_place`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the log contains `needle`; false after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (text, cv) = &*self.log;
        let Ok(mut t) = text.lock() else {
            return false;
        };
        loop {
            if t.contains(needle) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            t = match cv.wait_timeout(t, left) {
                Ok((t, _)) => t,
                Err(_) => return false,
            };
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd`, which must succeed; returns its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
