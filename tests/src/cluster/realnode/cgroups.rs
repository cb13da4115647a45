//! The node's own cgroup subtree: one folder of the same name in each of the
//! machine's cgroup v1 hierarchies (and in the cgroup2 one beside them),
//! which the kubelet takes as its `cgroupRoot` and the node's agents are
//! started in. Dropping it kills every process left in the subtree (the
//! containers, and containerd's shims, which leave their parent) and removes
//! each folder, deepest first: the machine's own cgroups are never touched.
//!
//! Why v1: this machine's kernel binds cpu, memory, pids and the rest to v1
//! hierarchies, with only an empty cgroup2 at `/sys/fs/cgroup/unified`. A
//! controller stays bound to v1 while any of its hierarchies has a cgroup, so
//! no cgroup2 tree with controllers can be made beside them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the machine mounts its cgroup hierarchies.
const CGROUP_FS: &str = "/sys/fs/cgroup";
/// How long killing the subtree's processes may take.
const KILL_TIMEOUT: Duration = Duration::from_secs(20);

/// The subtree `/<name>` in every hierarchy.
pub struct Subtree {
    name: String,
    /// Each hierarchy's folder of the subtree, made by [`Subtree::new`].
    roots: Vec<PathBuf>,
}

impl Subtree {
    /// Makes `/<name>` in each hierarchy, with the parent's cpus and memory
    /// nodes where the hierarchy is cpuset (a new cpuset is empty, and no
    /// process may join an empty one).
    pub fn new(name: &str) -> std::io::Result<Subtree> {
        let mut subtree = Subtree {
            name: name.to_string(),
            roots: Vec::new(),
        };
        for hierarchy in hierarchies()? {
            let root = hierarchy.join(name);
            std::fs::create_dir(&root)?;
            subtree.roots.push(root.clone());
            if hierarchy.join("cpuset.cpus").exists() {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let parent = std::fs::read_to_string(hierarchy.join(file))?;
                    std::fs::write(root.join(file), parent.trim())?;
                }
            }
        }
        Ok(subtree)
    }

    /// The kubelet's `cgroupRoot`.
    pub fn name(&self) -> String {
        format!("/{}", self.name)
    }

    /// The `cgroup.procs` file of `/<name>/<child>` in the pids hierarchy,
    /// made if missing: a process that writes its PID there (and all it
    /// forks) is found and killed on drop.
    pub fn procs_file(&self, child: &str) -> std::io::Result<PathBuf> {
        let root = self
            .roots
            .iter()
            .find(|r| r.parent().is_some_and(|h| h.ends_with("pids")))
            .ok_or_else(|| std::io::Error::other("the machine has no cgroup v1 pids hierarchy"))?;
        let dir = root.join(child);
        if !dir.exists() {
            std::fs::create_dir(&dir)?;
        }
        Ok(dir.join("cgroup.procs"))
    }

    /// The subtree's folder in each hierarchy.
    pub fn folders(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Every process still in the subtree, by any hierarchy.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for root in &self.roots {
            walk(root, &mut |dir| {
                if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
            });
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

impl Drop for Subtree {
    fn drop(&mut self) {
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                eprintln!("the node's cgroups still hold processes {pids:?}; leaving them");
                return;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for root in &self.roots {
            let mut dirs = Vec::new();
            walk(root, &mut |d| dirs.push(d.to_path_buf()));
            // Deepest first: a cgroup with children cannot be removed.
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                // A cgroup that just lost its last process may be busy a
                // moment longer.
                let until = Instant::now() + Duration::from_secs(5);
                while std::fs::remove_dir(&d).is_err() && d.exists() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if d.exists() {
                    eprintln!("cannot remove the node's cgroup {}", d.display());
                }
            }
        }
    }
}

/// The machine's cgroup hierarchies: each folder of [`CGROUP_FS`] that
/// holds a `cgroup.procs` (skipping the symlinks such as `cpu,cpuacct`).
fn hierarchies() -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(CGROUP_FS)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() && entry.path().join("cgroup.procs").exists() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Calls `f` on `dir` and every cgroup below it.
fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    if !dir.is_dir() {
        return;
    }
    f(dir);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&entry.path(), f);
            }
        }
    }
}
