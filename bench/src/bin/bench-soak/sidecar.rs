//! The proxy under soak: the real `divert-proxy` binary, started in the
//! client pod as its own user (as the sidecar container runs), on a registry
//! file the churn rewrites. Its admin server answers on the pod's loopback,
//! which the interception leaves alone.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use divert_core::names::{PROXY_UID, port};
use divert_tests::TempDir;
use divert_tests::netns::Process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::world::{Layout, World};

/// How long the proxy may take to serve a rewritten registry.
const APPLY_LIMIT: Duration = Duration::from_secs(10);
/// How long one admin request may take.
const ADMIN_LIMIT: Duration = Duration::from_secs(5);
/// The largest admin answer read (the metrics are a few KiB).
const ADMIN_MAX: u64 = 1 << 20;

pub struct Sidecar {
    process: Process,
    registry: PathBuf,
    _dir: TempDir,
}

impl Sidecar {
    /// Writes `layout` as the registry and starts the proxy on it; returns
    /// once it says it is ready.
    pub fn start(world: &World, bin: &Path, layout: &Layout) -> Sidecar {
        let dir = TempDir::readable_by_all("soak");
        let registry = dir.path().join("registry.yaml");
        write(&registry, layout);
        let mut cmd = world.client.ns.command_as(PROXY_UID, bin);
        cmd.args(["proxy", "--transparent", "--registry"])
            .arg(&registry);
        let process = Process::spawn(cmd, "divert proxy ready");
        Sidecar {
            process,
            registry,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Whether the proxy is still running, and its log if not.
    pub fn exited(&mut self) -> Option<String> {
        self.process.try_exit().map(|status| {
            format!(
                "the proxy exited ({status}); its log:\n{}",
                self.process.log()
            )
        })
    }

    /// Rewrites the registry and waits until the proxy serves the new table;
    /// returns how long that took.
    pub async fn apply(&self, layout: &Layout) -> Result<Duration, String> {
        let before = self.table_version().await?;
        let started = Instant::now();
        write(&self.registry, layout);
        loop {
            if self.table_version().await? > before {
                return Ok(started.elapsed());
            }
            if started.elapsed() > APPLY_LIMIT {
                return Err(format!(
                    "the proxy did not serve the rewritten registry within {APPLY_LIMIT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The version of the table the proxy serves, from `/ready`.
    pub async fn table_version(&self) -> Result<u64, String> {
        let ready = admin("/ready").await?;
        ready
            .split("table version ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("/ready said {ready:?}"))
    }

    /// The sum of a metric's samples (over all its labels), from `/metrics`.
    pub async fn metric(&self, name: &str) -> Result<f64, String> {
        Ok(metric_sum(&admin("/metrics").await?, name))
    }

    /// The lines of `/metrics` for the given metric families.
    pub async fn metric_lines(&self, names: &[&str]) -> Result<Vec<String>, String> {
        let text = admin("/metrics").await?;
        Ok(text
            .lines()
            .filter(|l| names.iter().any(|n| is_sample_of(l, n)))
            .map(str::to_string)
            .collect())
    }
}

/// Replaces the registry atomically (write and rename), as a ConfigMap
/// update does.
fn write(registry: &Path, layout: &Layout) {
    let tmp = registry.with_extension("tmp");
    std::fs::write(&tmp, layout.yaml()).expect("write the registry");
    std::fs::rename(&tmp, registry).expect("rename the registry into place");
}

/// `GET path` on the proxy's admin server; the body of a 200.
async fn admin(path: &str) -> Result<String, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port::PROXY_ADMIN));
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        s.take(ADMIN_MAX).read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(ADMIN_LIMIT, exchange)
        .await
        .map_err(|_| format!("the admin server did not answer {path} within {ADMIN_LIMIT:?}"))?
        .map_err(|e| format!("admin {path}: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("admin {path}: no complete answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("admin {path}: {head}"));
    }
    Ok(body.to_string())
}

fn is_sample_of(line: &str, name: &str) -> bool {
    line.strip_prefix(name)
        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
}

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| is_sample_of(l, name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_summed_over_its_labels_and_not_its_namesakes() {
        let text =
            "# HELP x_total a\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3\nx_total_more 100\nx 7\n";
        assert_eq!(metric_sum(text, "x_total"), 5.0);
        assert_eq!(metric_sum(text, "x"), 7.0);
        assert_eq!(metric_sum(text, "y"), 0.0);
    }
}
