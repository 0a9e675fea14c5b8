//! Request checks: every refusal is INVALID_ARGUMENT with a message naming the field.

use std::path::{Component, Path};

use proto::{JobSpec, JobState};
use tonic::Status;

use crate::config::{Config, LimitValues};

/// Smallest memory limit accepted (below this nothing starts).
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;
/// Smallest CPU share accepted.
pub const MIN_CPU_MILLICORES: u32 = 10;
/// Longest wall-clock timeout accepted (30 days).
pub const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;
/// Longest stop grace period accepted (1 hour).
pub const MAX_GRACE_MS: u64 = 3600 * 1000;
/// Largest page.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Default page.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// argv and env limits.
const MAX_ARGS: usize = 4096;
const MAX_ARG_BYTES: usize = 128 * 1024;

fn bad(field: impl std::fmt::Display, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

/// Checks a job id (a UUID as jobd makes them) and returns it in canonical form.
pub fn job_id(id: &str) -> Result<String, Status> {
    if id.is_empty() {
        return Err(bad("job_id", "required"));
    }
    uuid::Uuid::parse_str(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| bad("job_id", format!("{id:?} is not a job id (a UUID)")))
}

fn text(field: &str, s: &str) -> Result<(), Status> {
    if s.contains('\0') {
        return Err(bad(field, "contains a NUL byte"));
    }
    if s.len() > MAX_ARG_BYTES {
        return Err(bad(field, format!("longer than {MAX_ARG_BYTES} bytes")));
    }
    Ok(())
}

fn limit<T: PartialOrd + Copy + std::fmt::Display + Default>(
    field: &str,
    asked: T,
    default: T,
    min: T,
    max: T,
) -> Result<T, Status> {
    if asked == T::default() {
        return Ok(default);
    }
    if asked < min {
        return Err(bad(field, format!("{asked} is below the minimum {min}")));
    }
    if asked > max {
        return Err(bad(field, format!("{asked} exceeds the maximum {max}")));
    }
    Ok(asked)
}

/// Checks a job spec and resolves its limits against the configured defaults and ceilings.
pub fn spec(cfg: &Config, spec: Option<&JobSpec>) -> Result<LimitValues, Status> {
    let spec = spec.ok_or_else(|| bad("spec", "required"))?;
    if spec.command.trim().is_empty() {
        return Err(bad("spec.command", "must not be empty"));
    }
    text("spec.command", &spec.command)?;
    if spec.args.len() > MAX_ARGS {
        return Err(bad("spec.args", format!("more than {MAX_ARGS} arguments")));
    }
    for (i, a) in spec.args.iter().enumerate() {
        text(&format!("spec.args[{i}]"), a)?;
    }
    for (k, v) in &spec.env {
        let field = format!("spec.env[{k:?}]");
        if k.is_empty() || k.contains('=') {
            return Err(bad(
                field,
                "a name must be non-empty and must not contain '='",
            ));
        }
        text(&field, k)?;
        text(&field, v)?;
    }
    if !spec.working_dir.is_empty() {
        text("spec.working_dir", &spec.working_dir)?;
        let p = Path::new(&spec.working_dir);
        if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(bad(
                "spec.working_dir",
                format!(
                    "{:?} must be an absolute path without '..'",
                    spec.working_dir
                ),
            ));
        }
    }
    if spec.timeout_ms > MAX_TIMEOUT_MS {
        return Err(bad(
            "spec.timeout_ms",
            format!("{} exceeds the maximum {MAX_TIMEOUT_MS}", spec.timeout_ms),
        ));
    }
    if spec.input_tar.len() as u64 > cfg.upload_cap_bytes {
        return Err(bad(
            "spec.input_tar",
            format!(
                "{} bytes exceeds the upload cap of {} bytes",
                spec.input_tar.len(),
                cfg.upload_cap_bytes
            ),
        ));
    }
    if !spec.input_tar.is_empty() {
        tar_paths(&spec.input_tar)?;
    }
    let l = spec.limits.unwrap_or_default();
    let d = &cfg.default_limits;
    let m = &cfg.max_limits;
    Ok(LimitValues {
        memory_bytes: limit(
            "spec.limits.memory_bytes",
            l.memory_bytes,
            d.memory_bytes,
            MIN_MEMORY_BYTES,
            m.memory_bytes,
        )?,
        cpu_millicores: limit(
            "spec.limits.cpu_millicores",
            l.cpu_millicores,
            d.cpu_millicores,
            MIN_CPU_MILLICORES,
            m.cpu_millicores,
        )?,
        pids: limit("spec.limits.pids", l.pids, d.pids, 1, m.pids)?,
        io_read_bps: limit(
            "spec.limits.io_read_bps",
            l.io_read_bps,
            d.io_read_bps,
            1,
            m.io_read_bps,
        )?,
        io_write_bps: limit(
            "spec.limits.io_write_bps",
            l.io_write_bps,
            d.io_write_bps,
            1,
            m.io_write_bps,
        )?,
        io_read_iops: limit(
            "spec.limits.io_read_iops",
            l.io_read_iops,
            d.io_read_iops,
            1,
            m.io_read_iops,
        )?,
        io_write_iops: limit(
            "spec.limits.io_write_iops",
            l.io_write_iops,
            d.io_write_iops,
            1,
            m.io_write_iops,
        )?,
    })
}

/// Checks that an input tar parses and that every entry stays inside the working directory.
fn tar_paths(data: &[u8]) -> Result<(), Status> {
    let mut ar = tar::Archive::new(data);
    let entries = ar
        .entries()
        .map_err(|e| bad("spec.input_tar", format!("not a tar archive: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| bad("spec.input_tar", format!("not a tar archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad("spec.input_tar", format!("bad entry name: {e}")))?;
        let escapes = path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::RootDir));
        if escapes {
            return Err(bad(
                "spec.input_tar",
                format!("entry {:?} leaves the working directory", path.display()),
            ));
        }
    }
    Ok(())
}

/// Checks a ListJobs state filter.
pub fn states(raw: &[i32]) -> Result<Vec<JobState>, Status> {
    raw.iter()
        .enumerate()
        .map(|(i, s)| match JobState::try_from(*s) {
            Ok(JobState::Unspecified) | Err(_) => Err(bad(
                format!("states[{i}]"),
                format!("{s} is not a job state"),
            )),
            Ok(st) => Ok(st),
        })
        .collect()
}

/// Resolves a page size.
pub fn page_size(n: u32) -> Result<u32, Status> {
    match n {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n > MAX_PAGE_SIZE => Err(bad(
            "page_size",
            format!("{n} exceeds the maximum {MAX_PAGE_SIZE}"),
        )),
        n => Ok(n),
    }
}

/// Checks a stop grace period.
pub fn grace(ms: u64) -> Result<u64, Status> {
    if ms > MAX_GRACE_MS {
        return Err(bad(
            "grace_period_ms",
            format!("{ms} exceeds the maximum {MAX_GRACE_MS}"),
        ));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Limits;

    fn msg(r: Result<LimitValues, Status>) -> String {
        let s = r.unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        s.message().to_string()
    }

    #[test]
    fn refusals_name_the_field() {
        let cfg = Config::default();
        let ok = JobSpec {
            command: "echo".into(),
            ..Default::default()
        };
        assert_eq!(spec(&cfg, Some(&ok)).unwrap(), cfg.default_limits);
        assert!(msg(spec(&cfg, None)).starts_with("spec:"));
        let cases: Vec<(JobSpec, &str)> = vec![
            (
                JobSpec {
                    command: " ".into(),
                    ..ok.clone()
                },
                "spec.command",
            ),
            (
                JobSpec {
                    args: vec!["a\0b".into()],
                    ..ok.clone()
                },
                "spec.args[0]",
            ),
            (
                JobSpec {
                    working_dir: "rel".into(),
                    ..ok.clone()
                },
                "spec.working_dir",
            ),
            (
                JobSpec {
                    working_dir: "/a/../b".into(),
                    ..ok.clone()
                },
                "spec.working_dir",
            ),
            (
                JobSpec {
                    limits: Some(Limits {
                        memory_bytes: 1,
                        ..Default::default()
                    }),
                    ..ok.clone()
                },
                "spec.limits.memory_bytes",
            ),
            (
                JobSpec {
                    limits: Some(Limits {
                        memory_bytes: u64::MAX,
                        ..Default::default()
                    }),
                    ..ok.clone()
                },
                "spec.limits.memory_bytes",
            ),
            (
                JobSpec {
                    limits: Some(Limits {
                        cpu_millicores: 1_000_000,
                        ..Default::default()
                    }),
                    ..ok.clone()
                },
                "spec.limits.cpu_millicores",
            ),
            (
                JobSpec {
                    limits: Some(Limits {
                        pids: u32::MAX,
                        ..Default::default()
                    }),
                    ..ok.clone()
                },
                "spec.limits.pids",
            ),
            (
                JobSpec {
                    timeout_ms: u64::MAX,
                    ..ok.clone()
                },
                "spec.timeout_ms",
            ),
            (
                JobSpec {
                    input_tar: vec![0; (16 << 20) + 1],
                    ..ok.clone()
                },
                "spec.input_tar",
            ),
            (
                JobSpec {
                    input_tar: vec![7; 1000],
                    ..ok.clone()
                },
                "spec.input_tar",
            ),
        ];
        for (s, field) in cases {
            let m = msg(spec(&cfg, Some(&s)));
            assert!(m.starts_with(&format!("{field}:")), "{m}");
        }
        let mut env = JobSpec { ..ok.clone() };
        env.env.insert("A=B".into(), "x".into());
        assert!(msg(spec(&cfg, Some(&env))).starts_with("spec.env"));
    }

    #[test]
    fn tar_escapes_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "x.py", &b"x"[..]).unwrap();
        let good = b.into_inner().unwrap();
        assert!(tar_paths(&good).is_ok());
        // Write a raw "../evil" name (the builder refuses to).
        let mut evil = good.clone();
        evil[..100].fill(0);
        evil[..7].copy_from_slice(b"../evil");
        let mut h = tar::Header::from_byte_slice(&evil[..512]).clone();
        h.set_cksum();
        evil[..512].copy_from_slice(h.as_bytes());
        assert!(tar_paths(&evil).unwrap_err().message().contains("leaves"));
    }

    #[test]
    fn ids_pages_states() {
        assert!(job_id("").is_err());
        assert!(job_id("../etc")
            .unwrap_err()
            .message()
            .starts_with("job_id:"));
        let u = uuid::Uuid::new_v4().to_string();
        assert_eq!(job_id(&u.to_uppercase()).unwrap(), u);
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert!(page_size(5000).is_err());
        assert!(states(&[0]).is_err());
        assert!(states(&[99]).is_err());
        assert_eq!(states(&[2]).unwrap(), vec![JobState::Running]);
    }
}
