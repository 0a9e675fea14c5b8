//! jobd's CPU priority against the jobs it runs.
//!
//! jobd runs at a low priority (`Config::nice`, default 19) so that its work for clients (TLS,
//! streaming output to many followers) never takes a CPU from a job. A thread's nice value
//! does not achieve that by itself where the kernel schedules by autogroup
//! (`kernel.sched_autogroup_enabled`, on by default in many distributions' kernels): the CPUs
//! are first shared between groups, each session's processes forming one group (for
//! processes in the root CPU cgroup), and a nice value orders a thread only among the threads
//! of its own group. A job runs in a cgroup of its own, which weighs as much as jobd's whole
//! session: jobd at nice 19 then took as much CPU from a busy job as a process at nice 0.
//! On the 2-vCPU reference VM a job writing 100 MB ran 1.17x its time alone beside jobd's
//! TLS work for 1,000 followers of it (median of 9 rounds), and 0.98x (median of 10) with
//! the group's nice set as well.
//!
//! The group has a nice value of its own (`/proc/self/autogroup`). jobd sets it when the
//! session is jobd's own: systemd starts every service as a session leader, and `setsid jobd`
//! does the same by hand. In a session jobd does not lead, setting it would also lower every
//! other process of the caller's session (a login shell, a test harness), so jobd leaves it
//! alone and says so.

use std::path::{Path, PathBuf};

/// Where the kernel exposes the calling process's autogroup and the group's nice value.
const AUTOGROUP: &str = "/proc/self/autogroup";
/// Whether the kernel schedules by autogroup at all.
const AUTOGROUP_ENABLED: &str = "/proc/sys/kernel/sched_autogroup_enabled";

/// Errors setting jobd's priority.
#[derive(Debug, thiserror::Error)]
pub enum PriorityError {
    #[error("set this thread's nice value to {nice}: {source}")]
    Nice { nice: i32, source: std::io::Error },
    #[error("set the nice value of the session's scheduling group to {nice} ({path}): {source}")]
    Autogroup {
        nice: i32,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What [`lower`] did about the session's scheduling group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Group {
    /// The kernel has no autogroup scheduling, or it is switched off: the nice value is all.
    NoAutogroup,
    /// jobd leads its session, and the session's group now has the nice value too.
    Set,
    /// jobd shares session `sid` with its caller: the group was left as it is.
    Shared { sid: i32 },
}

/// Sets the calling thread's nice value (threads created afterwards inherit it) and, where the
/// kernel groups by session and the session is jobd's own, its group's nice value.
pub fn lower(nice: i32) -> Result<Group, PriorityError> {
    // SAFETY: setpriority with integer arguments; who = 0 is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        return Err(PriorityError::Nice {
            nice,
            source: std::io::Error::last_os_error(),
        });
    }
    if !autogroup_enabled() {
        return Ok(Group::NoAutogroup);
    }
    // SAFETY: getsid(0) and getpid take no pointers.
    let (sid, pid) = unsafe { (libc::getsid(0), libc::getpid()) };
    if sid != pid {
        return Ok(Group::Shared { sid });
    }
    set_session_group_nice(nice)?;
    Ok(Group::Set)
}

/// Whether the kernel schedules by session group here (switched on, and this process has a
/// group file).
pub fn autogroup_enabled() -> bool {
    switched_on(Path::new(AUTOGROUP_ENABLED)) && Path::new(AUTOGROUP).exists()
}

fn switched_on(switch: &Path) -> bool {
    std::fs::read_to_string(switch).is_ok_and(|v| v.trim() == "1")
}

/// Gives the calling process's session group `nice`: every process of the session is
/// affected, so only a session leader that owns its session should (as [`lower`] checks).
pub fn set_session_group_nice(nice: i32) -> Result<(), PriorityError> {
    set_group_nice(Path::new(AUTOGROUP), nice)
}

/// Writes `nice` to an autogroup file (the kernel reads a decimal number).
fn set_group_nice(file: &Path, nice: i32) -> Result<(), PriorityError> {
    std::fs::write(file, nice.to_string()).map_err(|source| PriorityError::Autogroup {
        nice,
        path: file.to_path_buf(),
        source,
    })
}

/// The nice value an autogroup file shows (`/autogroup-123 nice 19`).
pub fn group_nice(file: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(file).ok()?;
    text.split_whitespace()
        .skip_while(|w| *w != "nice")
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_nice_is_read_from_the_autogroup_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("autogroup");
        std::fs::write(&f, "/autogroup-186599 nice 19\n").unwrap();
        assert_eq!(group_nice(&f), Some(19));
        std::fs::write(&f, "/autogroup-7 nice -5\n").unwrap();
        assert_eq!(group_nice(&f), Some(-5));
        std::fs::write(&f, "garbage\n").unwrap();
        assert_eq!(group_nice(&f), None);
        assert_eq!(group_nice(&dir.path().join("missing")), None);
    }

    #[test]
    fn autogroup_counts_as_enabled_only_when_switched_on() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sched_autogroup_enabled");
        std::fs::write(&f, "1\n").unwrap();
        assert!(switched_on(&f));
        std::fs::write(&f, "0\n").unwrap();
        assert!(!switched_on(&f));
        assert!(!switched_on(&dir.path().join("missing")));
    }

    #[test]
    fn a_failed_group_write_names_the_file_and_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir/autogroup");
        let e = set_group_nice(&missing, 19).unwrap_err().to_string();
        assert!(
            e.contains("no-such-dir/autogroup") && e.contains("19"),
            "{e}"
        );
    }
}
