//! A container as a process in its pod's sandbox: the program its image maps
//! to (or its `command`), `args` with `$(VAR)` references expanded, its
//! environment, its user and group, its capabilities and its volume mounts.
//!
//! The process is started as
//! `ip netns exec POD sh -c MOUNTS setpriv … -- PROGRAM ARGS`: `ip netns exec`
//! enters the pod's network namespace and a mount namespace of its own, the
//! shell mounts a pod-private tmpfs on `/run` and the volumes under it, and
//! setpriv drops to the container's user and capabilities.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::images::Images;

/// Why a container cannot be started (the kubelet's waiting reasons).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("ErrImagePull: image {0:?} has no program in the pod runner's image table")]
    Image(String),
    #[error("CreateContainerConfigError: {0}")]
    Config(String),
}

impl ConfigError {
    /// The kubelet's waiting reason for it.
    pub fn reason(&self) -> &'static str {
        match self {
            ConfigError::Image(_) => "ErrImagePull",
            ConfigError::Config(_) => "CreateContainerConfigError",
        }
    }
}

/// What a container runs with, resolved from the pod.
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    pub caps: Option<Vec<String>>,
    pub no_new_privs: bool,
    /// (host directory, path in the container, read-only)
    pub mounts: Vec<(PathBuf, String, bool)>,
}

/// Resolves container `c` of `pod`. `env` is the pod-level environment (the
/// `kubernetes` Service's variables), `volume` finds a volume's directory,
/// `field` a downward-API field's value.
pub fn resolve(
    pod: &Pod,
    c: &Container,
    images: &Images,
    base_env: &[(String, String)],
    volume: &dyn Fn(&str) -> Option<PathBuf>,
    field: &dyn Fn(&str) -> Option<String>,
) -> Result<Launch, ConfigError> {
    let image = c.image.clone().unwrap_or_default();
    let program = images
        .lookup(&image)
        .ok_or_else(|| ConfigError::Image(image.clone()))?;

    let mut env: Vec<(String, String)> = base_env.to_vec();
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            expand(v, &env)
        } else if let Some(from) = &e.value_from {
            let path = from
                .field_ref
                .as_ref()
                .map(|f| f.field_path.clone())
                .ok_or_else(|| {
                    ConfigError::Config(format!(
                        "env {}: only fieldRef is supported in valueFrom",
                        e.name
                    ))
                })?;
            field(&path).ok_or_else(|| {
                ConfigError::Config(format!("env {}: unsupported field {path}", e.name))
            })?
        } else {
            String::new()
        };
        env.retain(|(k, _)| k != &e.name);
        env.push((e.name.clone(), value));
    }
    if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(ConfigError::Config("envFrom is not supported".into()));
    }

    // `command` replaces the image's entrypoint (its first word, if it names
    // the image's program, is that program); `args` its arguments.
    let (program_path, mut args) = match &c.command {
        Some(cmd) if !cmd.is_empty() => (
            program.named(&cmd[0]),
            cmd[1..].iter().map(|a| expand(a, &env)).collect::<Vec<_>>(),
        ),
        _ => (program.path.clone(), Vec::new()),
    };
    args.extend(c.args.iter().flatten().map(|a| expand(a, &env)));

    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = c.security_context.as_ref();
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|s| s.run_as_user))
        .map_or(program.user.0, |u| u as u32);
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_sc.and_then(|s| s.run_as_group))
        .map_or(program.user.1, |g| g as u32);
    let run_as_non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    if run_as_non_root && uid == 0 {
        return Err(ConfigError::Config(
            "container has runAsNonRoot and image will run as root".into(),
        ));
    }
    let capabilities = sc.and_then(|s| s.capabilities.as_ref());
    let drops_all = capabilities
        .and_then(|c| c.drop.as_ref())
        .is_some_and(|d| d.iter().any(|c| c == "ALL"));
    let adds: Vec<String> = capabilities
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
        .iter()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    if !adds.is_empty() && uid != 0 {
        return Err(ConfigError::Config(
            "the pod runner grants added capabilities to root containers only".into(),
        ));
    }
    let caps = drops_all.then_some(adds);
    let no_new_privs = sc.and_then(|s| s.allow_privilege_escalation) == Some(false);

    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let target = m
            .mount_path
            .strip_prefix("/var/run/")
            .map_or(m.mount_path.clone(), |rest| format!("/run/{rest}"));
        if target != "/run" && !target.starts_with("/run/") {
            return Err(ConfigError::Config(format!(
                "volume mount {}: the pod runner mounts under /run and /var/run only",
                m.mount_path
            )));
        }
        let dir = volume(&m.name).ok_or_else(|| {
            ConfigError::Config(format!(
                "volume mount {}: no volume {}",
                m.mount_path, m.name
            ))
        })?;
        mounts.push((dir, target, m.read_only.unwrap_or(false)));
    }
    Ok(Launch {
        program: program_path,
        args,
        env,
        uid,
        gid,
        caps,
        no_new_privs,
        mounts,
    })
}

/// Expands `$(VAR)` from `env` as the kubelet does: `$$` is a literal `$`,
/// and an unknown reference is left as written.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[at..at + 2 + end + 1]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

impl Launch {
    /// The command that starts it in the namespace `ns`.
    pub fn command(&self, ns: &str) -> tokio::process::Command {
        let mut script = String::from("set -e; mount -t tmpfs -o mode=0755 pod-run /run; ");
        let mut args: Vec<String> = Vec::new();
        for (i, (src, target, ro)) in self.mounts.iter().enumerate() {
            // Paths are passed as positional arguments, never spliced into
            // the script.
            let (s, t) = (2 * i + 1, 2 * i + 2);
            script.push_str(&format!(
                "mkdir -p \"${t}\"; mount --bind \"${s}\" \"${t}\"; "
            ));
            if *ro {
                script.push_str(&format!("mount -o remount,bind,ro \"${t}\"; "));
            }
            args.push(src.display().to_string());
            args.push(target.clone());
        }
        script.push_str(&format!("shift {}; exec \"$@\"", args.len()));

        let mut cmd = tokio::process::Command::new("ip");
        cmd.env_clear()
            .args(["netns", "exec", ns, "sh", "-c", &script, "sh"])
            .args(&args)
            .arg("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups");
        if self.no_new_privs {
            cmd.arg("--no-new-privs");
        }
        if let Some(adds) = &self.caps {
            let set: String = std::iter::once("-all".to_string())
                .chain(adds.iter().map(|c| format!("+{c}")))
                .collect::<Vec<_>>()
                .join(",");
            cmd.arg(format!("--bounding-set={set}"));
            cmd.arg(format!("--inh-caps={set}"));
        }
        cmd.arg("--").arg(&self.program).args(&self.args);
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn var_references_expand_like_the_kubelet() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x y".to_string()),
        ];
        assert_eq!(expand("$(A)-$(B)", &env), "1-x y");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("$(C)", &env), "$(C)");
        assert_eq!(expand("cost $5 $(A", &env), "cost $5 $(A");
    }
}
