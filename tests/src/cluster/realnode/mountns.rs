//! The node's mount namespace: containerd, the kubelet and kube-proxy share
//! one, so that each sees the mounts the others make (the kubelet's volume
//! mounts, which containerd binds into containers; containerd's snapshots),
//! and none of those mounts is the machine's.
//!
//! In it, a folder of the node's replaces `/var` (the kubelet's
//! `/var/lib/kubelet` and `/var/log/pods`, the CNI's `/var/lib/cni`), a
//! tmpfs replaces `/run` (containerd's shim sockets, the pods' network
//! namespaces in `/run/netns`, iptables' lock), and the kernel settings the
//! kubelet would otherwise change for the whole machine
//! (`vm.overcommit_memory`, `kernel.panic_on_oops`, …) read as the values
//! it wants from files of the node's. The namespace is pinned by a bind
//! mount of its `/proc/PID/ns/mnt`; unmounting that (on drop) ends it, and
//! every mount in it goes with its last process.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::netns::run_ok;

/// The kernel settings the kubelet sets unless they hold its values
/// already (`setupKernelTunables`), with those values.
const KUBELET_TUNABLES: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// A pinned mount namespace; unpinned on drop.
pub struct MountNs {
    /// The bind mount that pins the namespace.
    pin: PathBuf,
    /// `dir`, bound onto itself as a private mount (a namespace can only be
    /// pinned on a mount that does not propagate).
    private: PathBuf,
}

impl MountNs {
    /// Makes the namespace, with `dir/var` as its `/var`, a tmpfs as its
    /// `/run`, and the kubelet's kernel settings, all kept in `dir`.
    pub fn new(dir: &Path) -> MountNs {
        run_ok(Command::new("mount").args(["--bind"]).arg(dir).arg(dir));
        // From here on, a failure unmounts what was made (drop).
        let ns = MountNs {
            pin: dir.join("mnt.ns"),
            private: dir.to_path_buf(),
        };
        run_ok(Command::new("mount").arg("--make-private").arg(dir));
        std::fs::write(&ns.pin, "").expect("create the mount namespace's pin");
        run_ok(
            Command::new("unshare")
                .arg(format!("--mount={}", ns.pin.display()))
                .args(["--propagation", "private", "true"]),
        );

        let var = dir.join("var");
        for sub in [
            "lib/kubelet",
            "lib/cni",
            "log/pods",
            "log/containers",
            "tmp",
        ] {
            std::fs::create_dir_all(var.join(sub)).expect("create the node's /var");
        }
        // Debian's /var/run and /var/lock point into /run.
        std::os::unix::fs::symlink("/run", var.join("run")).expect("link /var/run");
        std::os::unix::fs::symlink("/run/lock", var.join("lock")).expect("link /var/lock");
        let tunables = dir.join("tunables");
        std::fs::create_dir_all(&tunables).expect("create the tunables folder");
        let mut script = format!(
            "set -e\nmount --bind {var} /var\nmount -t tmpfs -o mode=0755 divert-node-run /run\nmkdir -p /run/lock /run/netns\n",
            var = var.display()
        );
        for (key, value) in KUBELET_TUNABLES {
            let file = tunables.join(key.replace('/', "."));
            std::fs::write(&file, format!("{value}\n")).expect("write a tunable");
            script.push_str(&format!(
                "mount --bind {} /proc/sys/{key}\n",
                file.display()
            ));
        }
        run_ok(ns.command("sh").args(["-c", &script]));
        ns
    }

    /// `program` run in the namespace (and no other).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount={}", self.pin.display()))
            .arg("--")
            .arg(program);
        c
    }

    /// The pin, for `nsenter --mount=`.
    pub fn pin(&self) -> &Path {
        &self.pin
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        // Lazily: a process of the node that is still exiting may hold it.
        let _ = Command::new("umount").arg("-l").arg(&self.pin).status();
        let _ = Command::new("umount").arg("-l").arg(&self.private).status();
    }
}
