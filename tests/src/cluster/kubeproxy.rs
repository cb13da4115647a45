//! The kube-proxy stand-in: for every Service's ClusterIP and TCP port, DNAT
//! rules in the node's namespace to the ready endpoints of its
//! EndpointSlices, chosen at random per connection, as kube-proxy's iptables
//! mode does. Pods without a sidecar (and the sidecar itself, for what it
//! passes through) reach Services as in a cluster. A pod that reaches itself
//! through its Service is masqueraded (the hairpin case).
//!
//! The rules are rewritten whole, atomically (`iptables-restore --noflush`
//! replacing only this module's chains), after every change.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

const SERVICES: &str = "TEST-SERVICES";
/// In the filter table: Services without endpoints refuse connections.
const REJECTS: &str = "TEST-REJECT";
const POSTROUTING: &str = "TEST-POSTROUTING";
const MASQ_MARK: &str = "0x4000/0x4000";

/// Keeps the node's DNAT rules in step with Services and EndpointSlices
/// until aborted.
pub async fn run(client: Client, node_ns: String) {
    install_jumps(&node_ns);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let svc_events = watcher::watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|_| ());
    let slice_events = watcher::watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|_| ());
    let mut events = futures_util::stream::select(svc_events, slice_events).boxed();
    // Aborted with this task (when the node stops).
    let _forward = AbortOnDrop(tokio::spawn(async move {
        while events.next().await.is_some() {
            let _ = tx.try_send(());
        }
    }));
    while rx.recv().await.is_some() {
        // Let a burst of events settle, then render once.
        tokio::time::sleep(Duration::from_millis(20)).await;
        while rx.try_recv().is_ok() {}
        match render(&client).await {
            Ok(rules) => {
                let ns = node_ns.clone();
                match tokio::task::spawn_blocking(move || restore(&ns, &rules)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("kube-proxy: {e}"),
                    Err(e) => eprintln!("kube-proxy: {e}"),
                }
            }
            Err(e) => eprintln!("kube-proxy: {e}"),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn install_jumps(node_ns: &str) {
    let rules = format!(
        "*filter\n:{REJECTS} - [0:0]\n-A FORWARD -j {REJECTS}\n-A OUTPUT -j {REJECTS}\nCOMMIT\n\
         *nat\n:{SERVICES} - [0:0]\n:{POSTROUTING} - [0:0]\n\
         -A PREROUTING -j {SERVICES}\n-A OUTPUT -j {SERVICES}\n\
         -A POSTROUTING -j {POSTROUTING}\nCOMMIT\n"
    );
    if let Err(e) = restore(node_ns, &rules) {
        panic!("kube-proxy: cannot install its jumps: {e}");
    }
}

/// The whole rule set for the current Services and EndpointSlices.
async fn render(client: &Client) -> Result<String, kube::Error> {
    let services = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let slices = Api::<EndpointSlice>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    // (namespace, service, port name) → ready endpoint addresses with port.
    let mut endpoints: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for s in &slices.items {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            continue;
        };
        if s.address_type != "IPv4" {
            continue;
        }
        for p in s.ports.iter().flatten() {
            let (Some(port), name) = (p.port, p.name.clone().unwrap_or_default()) else {
                continue;
            };
            if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            for e in &s.endpoints {
                let c = e.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true)
                    && !c.and_then(|c| c.terminating).unwrap_or(false);
                if !ready {
                    continue;
                }
                for a in &e.addresses {
                    endpoints
                        .entry((ns.clone(), svc.clone(), name.clone()))
                        .or_default()
                        .push(format!("{a}:{port}"));
                }
            }
        }
    }

    let mut chains = String::new();
    let mut rules = String::new();
    let mut rejects = String::new();
    let mut n = 0usize;
    for svc in &services.items {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let Some(spec) = &svc.spec else { continue };
        let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| ip.contains('.')) else {
            continue;
        };
        for p in spec.ports.iter().flatten() {
            if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let port_name = p.name.clone().unwrap_or_default();
            let eps = endpoints
                .get(&(ns.clone(), name.clone(), port_name))
                .cloned()
                .unwrap_or_default();
            let comment = format!("{ns}/{name}:{}", p.port);
            if eps.is_empty() {
                // As kube-proxy: no endpoints, the connection is refused.
                rejects.push_str(&format!(
                    "-A {REJECTS} -d {ip}/32 -p tcp --dport {} -m comment --comment \"{comment} has no endpoints\" -j REJECT --reject-with tcp-reset\n",
                    p.port
                ));
                continue;
            }
            let chain = format!("TEST-SVC-{n}");
            n += 1;
            chains.push_str(&format!(":{chain} - [0:0]\n"));
            rules.push_str(&format!(
                "-A {SERVICES} -d {ip}/32 -p tcp --dport {} -m comment --comment \"{comment}\" -j {chain}\n",
                p.port
            ));
            let count = eps.len();
            for (i, ep) in eps.iter().enumerate() {
                let host = ep.split(':').next().unwrap_or("");
                let sep = format!("TEST-SEP-{n}-{i}");
                chains.push_str(&format!(":{sep} - [0:0]\n"));
                let left = count - i;
                if left > 1 {
                    rules.push_str(&format!(
                        "-A {chain} -m statistic --mode random --probability {:.5} -j {sep}\n",
                        1.0 / left as f64
                    ));
                } else {
                    rules.push_str(&format!("-A {chain} -j {sep}\n"));
                }
                rules.push_str(&format!(
                    "-A {sep} -s {host}/32 -j MARK --set-xmark {MASQ_MARK}\n-A {sep} -p tcp -j DNAT --to-destination {ep}\n"
                ));
            }
        }
    }
    Ok(format!(
        "*filter\n:{REJECTS} - [0:0]\n{rejects}COMMIT\n\
         *nat\n:{SERVICES} - [0:0]\n:{POSTROUTING} - [0:0]\n{chains}\
         -A {POSTROUTING} -m mark --mark {MASQ_MARK} -j MASQUERADE\n{rules}COMMIT\n"
    ))
}

fn restore(node_ns: &str, rules: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            node_ns,
            "iptables-legacy-restore",
            "--noflush",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("iptables-legacy-restore: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| format!("iptables-legacy-restore: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("iptables-legacy-restore: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables-legacy-restore failed: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
