//! OCI hooks: programs the spec names, run at fixed points of the lifecycle with the
//! container's state JSON on stdin, their own `args` and `env`, and an optional timeout.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{stage} hook {path}: {reason}")]
    Failed {
        stage: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The lifecycle points a hook can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Prestart => "prestart",
            Stage::CreateRuntime => "createRuntime",
            Stage::CreateContainer => "createContainer",
            Stage::StartContainer => "startContainer",
            Stage::Poststart => "poststart",
            Stage::Poststop => "poststop",
        }
    }

    fn select(self, hooks: &Hooks) -> &[Hook] {
        #[allow(deprecated)]
        let list = match self {
            Stage::Prestart => hooks.prestart(),
            Stage::CreateRuntime => hooks.create_runtime(),
            Stage::CreateContainer => hooks.create_container(),
            Stage::StartContainer => hooks.start_container(),
            Stage::Poststart => hooks.poststart(),
            Stage::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or_default()
    }
}

/// Runs every hook of `stage` in order; the first failure stops the rest and is returned.
pub fn run(stage: Stage, hooks: Option<&Hooks>, state_json: &str) -> Result<(), HookError> {
    let Some(hooks) = hooks else {
        return Ok(());
    };
    for hook in stage.select(hooks) {
        run_one(stage, hook, state_json)?;
    }
    Ok(())
}

/// Runs the hooks of a stage whose failures must not stop the container: logs them.
pub fn run_warn(stage: Stage, hooks: Option<&Hooks>, state_json: &str) {
    if let Err(e) = run(stage, hooks, state_json) {
        tracing::warn!("{e}");
    }
}

fn run_one(stage: Stage, hook: &Hook, state_json: &str) -> Result<(), HookError> {
    let fail = |reason: String| HookError::Failed {
        stage: stage.name(),
        path: hook.path().clone(),
        reason,
    };
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((arg0, rest)) = args.split_first() {
            cmd.arg0(arg0).args(rest);
        }
    }
    cmd.env_clear();
    for entry in hook.env().as_deref().unwrap_or_default() {
        if let Some((k, v)) = entry.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| fail(format!("start: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state is not an error.
        let _ = stdin.write_all(state_json.as_bytes());
    }
    let limit = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t as u64));
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(fail(format!("wait: {e}"))),
        }
        if let Some(limit) = limit {
            if start.elapsed() >= limit {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("timed out after {}s", limit.as_secs())));
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.by_ref().take(4096).read_to_string(&mut err);
    }
    let err = err.trim();
    Err(fail(if err.is_empty() {
        format!("{status}")
    } else {
        format!("{status}: {err}")
    }))
}
