//! jobd's configuration: defaults, an optional TOML file, command-line overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Limits applied to a job (resolved: no zero means "default" any more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitValues {
    /// Memory limit in bytes.
    pub memory_bytes: u64,
    /// CPU in millicores (1000 = one CPU).
    pub cpu_millicores: u32,
    /// Process/thread count limit.
    pub pids: u32,
    /// Read bytes/s (0 = unlimited).
    pub io_read_bps: u64,
    /// Write bytes/s (0 = unlimited).
    pub io_write_bps: u64,
    /// Read IOPS (0 = unlimited).
    pub io_read_iops: u64,
    /// Write IOPS (0 = unlimited).
    pub io_write_iops: u64,
}

impl Default for LimitValues {
    fn default() -> Self {
        LimitValues {
            memory_bytes: 512 << 20,
            cpu_millicores: 1000,
            pids: 256,
            io_read_bps: 0,
            io_write_bps: 0,
            io_read_iops: 0,
            io_write_iops: 0,
        }
    }
}

impl LimitValues {
    /// The largest values a request may ask for.
    pub fn default_ceilings() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        LimitValues {
            memory_bytes: 64 << 30,
            cpu_millicores: cpus * 1000,
            pids: 32768,
            io_read_bps: 100 << 30,
            io_write_bps: 100 << 30,
            io_read_iops: 10_000_000,
            io_write_iops: 10_000_000,
        }
    }
}

/// What jobd does with running jobs when it shuts down on SIGTERM/SIGINT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownPolicy {
    /// Stop every running job (SIGTERM, grace period, SIGKILL) and record it as stopped.
    #[default]
    Stop,
    /// Leave jobs running (their shims hold them); the next jobd re-adopts them.
    Leave,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Database, output files, job bundles.
    pub data_dir: PathBuf,
    /// TLS material (`ca.pem`, `server.pem`, `server.key`); default `DATA/tls`.
    pub tls_dir: Option<PathBuf>,
    /// Where the zero-config start writes the admin client identity; default
    /// `$HOME/.config/jobctl` (`/root/.config/jobctl` for root).
    pub client_identity_dir: Option<PathBuf>,
    /// The shared read-only rootfs; default `DATA/rootfs`.
    pub rootfs: Option<PathBuf>,
    /// The job-init binary; default: next to jobd, or `$JOB_RUNTIME_INIT`.
    pub job_init: Option<PathBuf>,
    /// The per-job shim binary; default: `$JOBD_SHIM`, or `jobd-shim` next to jobd.
    pub shim: Option<PathBuf>,
    /// Limits for fields a request leaves at 0.
    pub default_limits: LimitValues,
    /// The largest limits a request may ask for.
    pub max_limits: LimitValues,
    /// SIGTERM-to-SIGKILL grace period for StopJob and timeouts, milliseconds.
    pub grace_period_ms: u64,
    /// Per-job output cap in bytes; then a marker ends the output.
    pub output_cap_bytes: u64,
    /// Largest accepted input tar in bytes.
    pub upload_cap_bytes: u64,
    /// Largest gRPC message in bytes.
    pub max_message_bytes: usize,
    /// What to do with running jobs on shutdown.
    pub shutdown_policy: ShutdownPolicy,
    /// jobd's own nice value (-20..=19). The jobs and their shims run at 0 whatever it is, so
    /// with the default 19 a job gets the CPU before jobd's work for clients (TLS, streaming):
    /// a thousand followers do not slow the job they follow. Where the kernel groups threads
    /// by session (autogroup), jobd also gives its session's group this value when it leads
    /// the session, as under systemd ([`crate::priority`]). The API stays prompt all the
    /// same: a call wakes a jobd that was asleep, and the scheduler runs a waking task soon
    /// whatever its weight (the bench's API-under-load part measures it).
    pub nice: i32,
    /// Finished jobs (record and output) are deleted this many seconds after they ended;
    /// 0 keeps them. Running and starting jobs are never deleted.
    pub retention_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("/var/lib/jobd"),
            tls_dir: None,
            client_identity_dir: None,
            rootfs: None,
            job_init: None,
            shim: None,
            default_limits: LimitValues::default(),
            max_limits: LimitValues::default_ceilings(),
            grace_period_ms: 10_000,
            output_cap_bytes: 1 << 30,
            upload_cap_bytes: 16 << 20,
            max_message_bytes: 20 << 20,
            shutdown_policy: ShutdownPolicy::Stop,
            nice: 19,
            retention_secs: 0,
        }
    }
}

impl Config {
    /// How long finished jobs are kept, if not for ever.
    pub fn retention(&self) -> Option<std::time::Duration> {
        (self.retention_secs > 0).then(|| std::time::Duration::from_secs(self.retention_secs))
    }

    /// Loads a TOML file over the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks cross-field consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.default_limits;
        let m = &self.max_limits;
        let checks: [(&'static str, bool); 4] = [
            (
                "default_limits.memory_bytes",
                d.memory_bytes > 0 && d.memory_bytes <= m.memory_bytes,
            ),
            (
                "default_limits.cpu_millicores",
                d.cpu_millicores > 0 && d.cpu_millicores <= m.cpu_millicores,
            ),
            ("default_limits.pids", d.pids > 0 && d.pids <= m.pids),
            (
                "upload_cap_bytes",
                (self.upload_cap_bytes as usize) < self.max_message_bytes,
            ),
        ];
        for (field, ok) in checks {
            if !ok {
                return Err(ConfigError::Invalid {
                    field,
                    reason: "must be positive and within max_limits (upload cap below the message limit)"
                        .into(),
                });
            }
        }
        if !(-20..=19).contains(&self.nice) {
            return Err(ConfigError::Invalid {
                field: "nice",
                reason: format!("{} is not a nice value: expected -20 to 19", self.nice),
            });
        }
        Ok(())
    }

    /// The TLS directory.
    pub fn tls_dir(&self) -> PathBuf {
        self.tls_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls"))
    }

    /// The shared rootfs directory.
    pub fn rootfs(&self) -> PathBuf {
        self.rootfs
            .clone()
            .unwrap_or_else(|| self.data_dir.join("rootfs"))
    }

    /// Where the admin client identity goes on a zero-config start.
    pub fn client_identity_dir(&self) -> PathBuf {
        self.client_identity_dir
            .clone()
            .unwrap_or_else(default_client_identity_dir)
    }
}

/// `$HOME/.config/jobctl`, or `/root/.config/jobctl` without `HOME`: where jobctl looks by default.
pub fn default_client_identity_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".config").join("jobctl")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("jobd.toml");
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:6000\"\ngrace_period_ms = 500\nshutdown_policy = \"leave\"\n[default_limits]\npids = 64\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.listen.port(), 6000);
        assert_eq!(c.grace_period_ms, 500);
        assert_eq!(c.shutdown_policy, ShutdownPolicy::Leave);
        assert_eq!(c.default_limits.pids, 64);
        assert_eq!(c.default_limits.memory_bytes, 512 << 20);
        assert_eq!(c.nice, 19);
        std::fs::write(&p, "bogus = 1\n").unwrap();
        assert!(matches!(Config::load(&p), Err(ConfigError::Parse { .. })));
        std::fs::write(&p, "nice = 20\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("nice") && e.contains("-20 to 19"), "{e}");
    }
}
