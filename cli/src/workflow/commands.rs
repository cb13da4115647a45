//! The manifest's commands, run one after the other with `sh -c`, their
//! output streamed as it comes (the terminal's, not captured), stopping at
//! the first that fails. Each runs in a process group of its own, so that
//! one past its time limit is killed with everything it started, and Ctrl-C
//! interrupts the command before `divert` stops.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::manifest::Step;

/// How a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot start {name:?} (sh -c): {source}")]
    Start {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name:?} failed with exit status {code}: its output is above; fix it and run again")]
    Failed { name: String, code: i32 },
    #[error("{name:?} was killed by a signal: its output is above")]
    Killed { name: String },
    #[error(
        "{name:?} did not finish within {limit:?}: killed; raise --command-timeout if it needs longer"
    )]
    TimedOut { name: String, limit: Duration },
    #[error("{name:?} was interrupted (Ctrl-C)")]
    Interrupted { name: String },
}

/// Runs `steps` in `dir` with `env` added to this process's environment.
/// `what` names the section in the progress lines (`deploy`, `destroy`).
pub async fn run(
    what: &str,
    steps: &[Step],
    dir: &Path,
    env: &[(String, String)],
    limit: Duration,
) -> Result<(), CommandError> {
    for (i, step) in steps.iter().enumerate() {
        eprintln!("▸ {what} {}/{}: {}", i + 1, steps.len(), step.name);
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&step.run)
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| CommandError::Start {
                name: step.name.clone(),
                source,
            })?;
        let group = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw);
        let stop = |signal| {
            if let Some(g) = group {
                let _ = killpg(g, signal);
            }
        };
        let status = tokio::select! {
            status = child.wait() => status.map_err(|source| CommandError::Start {
                name: step.name.clone(),
                source,
            })?,
            () = tokio::time::sleep(limit) => {
                stop(Signal::SIGKILL);
                let _ = child.wait().await;
                return Err(CommandError::TimedOut {
                    name: step.name.clone(),
                    limit,
                });
            }
            _ = tokio::signal::ctrl_c() => {
                stop(Signal::SIGINT);
                let _ = child.wait().await;
                return Err(CommandError::Interrupted {
                    name: step.name.clone(),
                });
            }
        };
        match status.code() {
            Some(0) => {}
            Some(code) => {
                return Err(CommandError::Failed {
                    name: step.name.clone(),
                    code,
                });
            }
            None => {
                return Err(CommandError::Killed {
                    name: step.name.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(command: &str) -> Step {
        Step {
            name: command.to_owned(),
            command: command.to_owned(),
            run: command.to_owned(),
        }
    }

    #[tokio::test]
    async fn commands_run_in_order_with_the_environment_and_stop_at_the_first_failure() {
        let dir = std::env::temp_dir().join(format!("divert-commands-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let env = [("DIVERT_NAMESPACE".to_owned(), "alice".to_owned())];
        let steps = [
            step("echo \"$DIVERT_NAMESPACE\" > first"),
            step("cat first > second && exit 3"),
            step("touch third"),
        ];
        let err = run("deploy", &steps, &dir, &env, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Failed { code: 3, .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join("second")).unwrap(),
            "alice\n"
        );
        assert!(!dir.join("third").exists(), "stopped at the failure");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // A real clock: a paused one would pass the limit before the shell ran.
    #[tokio::test]
    async fn a_command_past_its_limit_is_killed_with_what_it_started() {
        let dir = std::env::temp_dir().join(format!("divert-timeout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The shell starts a child and waits: both must go.
        let err = run(
            "deploy",
            &[step("sleep 600 & echo $! > child; wait")],
            &dir,
            &[],
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CommandError::TimedOut { .. }), "{err}");
        let pid: i32 = std::fs::read_to_string(dir.join("child"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed: gone, or a zombie until init reaps it; not sleeping. The
        // SIGKILL is sent, but the child dies only once it next runs (seen
        // still runnable, `R`, right after): it gets a few seconds for that.
        let dead = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or("gone")
                .to_owned();
            (matches!(state.as_str(), "gone" | "Z" | "X"), stat)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = dead();
        while !seen.0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            seen = dead();
        }
        assert!(seen.0, "the command's child survived: {}", seen.1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
