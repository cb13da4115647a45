//! A pod's sandbox: its network namespace on the node's bridge, its address,
//! its `resolv.conf`, and its volumes as directories on this machine.
//!
//! Each pod gets a /32 address from the node's pod CIDR and a default route
//! via the node ([`super::NODE_IP`]), so all of its traffic, to other pods
//! too, is routed through the node's namespace, where the kube-proxy stand-in
//! rewrites ClusterIPs (as a routed CNI plugin such as Calico does it).
//! `ip netns exec` bind-mounts `/etc/netns/<name>/resolv.conf` over
//! `/etc/resolv.conf`, which gives each pod its own DNS settings.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::netns::{Netns, run_ok};

/// A pod's network namespace and files; removed on drop.
pub struct Sandbox {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// `volumes/<name>` for each volume, and the containers' logs.
    pub dir: PathBuf,
    etc: PathBuf,
    host_if: String,
    node: String,
}

impl Sandbox {
    /// Makes the namespace with `ip` on `node`'s bridge, and `dir`.
    pub fn new(node: &str, ip: Ipv4Addr, dir: PathBuf, resolv_conf: &str) -> Sandbox {
        let ns = Netns::new("pod");
        let host_if = format!("vp{}", u32::from(ip) & 0xffff);
        let node_ip = |args: &[&str]| {
            run_ok(
                std::process::Command::new("ip")
                    .args(["-n", node])
                    .args(args),
            );
        };
        node_ip(&[
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        node_ip(&["link", "set", &host_if, "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        let gw = super::NODE_IP.to_string();
        ns.ip(&["route", "add", &gw, "dev", "eth0", "scope", "link"]);
        ns.ip(&["route", "add", "default", "via", &gw, "dev", "eth0"]);
        let etc = PathBuf::from("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&etc).unwrap_or_else(|e| panic!("create {}: {e}", etc.display()));
        std::fs::write(etc.join("resolv.conf"), resolv_conf).expect("write resolv.conf");
        std::fs::create_dir_all(dir.join("volumes")).expect("create the pod directory");
        Sandbox {
            ns,
            ip,
            dir,
            etc,
            host_if,
            node: node.to_string(),
        }
    }

    /// The directory that backs volume `name`, created world-writable (an
    /// emptyDir any container user may write).
    pub fn volume(&self, name: &str) -> PathBuf {
        let d = self.dir.join("volumes").join(name);
        std::fs::create_dir_all(&d).expect("create a volume directory");
        set_mode(&d, 0o777);
        d
    }

    /// Where container `name` writes its output.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.etc);
        let _ = std::fs::remove_dir_all(&self.dir);
        // Deleting the namespace deletes eth0 and with it the node's end.
        let _ = std::process::Command::new("ip")
            .args(["-n", &self.node, "link", "del", &self.host_if])
            .output();
    }
}

/// Writes `files` (relative path, content) under `dir`, readable by all.
pub fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (rel, content) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create a volume subdirectory");
        }
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        set_mode(&path, 0o644);
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

/// The node's side: no ICMP redirects (pods must keep sending through the
/// node), forwarding on.
pub fn prepare_node(node: &Netns) {
    for key in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.br0.send_redirects=0",
    ] {
        run_ok(node.command("sysctl").args(["-qw", key]));
    }
}
