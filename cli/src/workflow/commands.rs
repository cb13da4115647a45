//! The manifest's commands, run one after the other with `sh -c`, their
//! output streamed as it comes (the terminal's, not captured), stopping at
//! the first that fails. Each has a time limit; one past it is killed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

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
            .arg(&step.command)
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| CommandError::Start {
                name: step.name.clone(),
                source,
            })?;
        let status = match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => status.map_err(|source| CommandError::Start {
                name: step.name.clone(),
                source,
            })?,
            Err(_) => {
                let _ = child.kill().await;
                return Err(CommandError::TimedOut {
                    name: step.name.clone(),
                    limit,
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

    #[tokio::test(start_paused = true)]
    async fn a_command_past_its_limit_is_killed() {
        let dir = std::env::temp_dir();
        let err = run(
            "deploy",
            &[step("sleep 600")],
            &dir,
            &[],
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CommandError::TimedOut { .. }), "{err}");
    }
}
