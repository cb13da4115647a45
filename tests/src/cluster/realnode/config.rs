//! What the real node's agents are configured with, as the files they read.
//! Each setting that differs from the upstream default says why.

use std::net::Ipv4Addr;
use std::path::Path;

use super::images::PAUSE;
use crate::cluster::{DNS_SERVICE_IP, NODE_IP, POD_CIDR};

/// Where pods' addresses start on the node's bridge: the addresses below
/// are the node's own (the gateway, and room for its other addresses).
const FIRST_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
/// The kubelet's API (exec, logs) on the node's address.
pub const KUBELET_PORT: u16 = 10250;
/// The kubelet's health endpoint, on the node's loopback.
pub const KUBELET_HEALTHZ_PORT: u16 = 10248;

/// containerd 2.x (config version 3). Its root and state stay at their
/// defaults, `/var/lib/containerd` and `/run/containerd`, which the node's
/// mount namespace keeps in the node's folder and a tmpfs.
pub fn containerd(runtime: &Path, cni_conf: &Path) -> String {
    let runtime = runtime.display();
    format!(
        r#"version = 3

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{PAUSE}'

[plugins.'io.containerd.cri.v1.runtime']
  # This machine withholds CAP_SYS_RESOURCE from every process, root's
  # too, so no OOM score may go below containerd's own: the kubelet's -998
  # for pause would fail every sandbox. Clamp, as rootless nodes do.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '{runtime}/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{runtime}']
    conf_dir = '{cni_conf}'
"#,
        cni_conf = cni_conf.display(),
    )
}

/// The CNI network: the reference `bridge` plugin on the node's `br0`
/// (which holds [`NODE_IP`], the pods' gateway), addresses from
/// `host-local`, and hairpin mode so that a pod reaches itself through its
/// Service's ClusterIP.
pub fn cni() -> String {
    format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "divert-test",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "br0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{"subnet": "{POD_CIDR}", "rangeStart": "{FIRST_POD_IP}", "gateway": "{NODE_IP}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}]
      }}
    }}
  ]
}}
"#
    )
}

/// The kubelet's configuration file.
pub fn kubelet(ca: &Path, cgroup_root: &str, resolv_conf: &Path) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine mounts cgroup v1 (see cgroups.rs): the kubelet refuses it
# unless told otherwise, and still supports it in this release.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: {NODE_IP}
port: {KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {KUBELET_HEALTHZ_PORT}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
clusterDNS: [{DNS_SERVICE_IP}]
clusterDomain: cluster.local
resolvConf: {resolv_conf}
# The machine may have swap, and its disk is shared with other work: evict
# only when it is truly full, and collect no image the tests imported.
failSwapOn: false
# Its own OOM score stays the machine's (no CAP_SYS_RESOURCE here).
oomScoreAdj: 0
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Status often, so that the tests wait less for what the node reports.
nodeStatusUpdateFrequency: 2s
syncFrequency: 10s
serializeImagePulls: false
"#,
        ca = ca.display(),
        resolv_conf = resolv_conf.display(),
    )
}
