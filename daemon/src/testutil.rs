//! Test support: a harness that runs a real jobd (TLS, certificates, database) on an ephemeral
//! port, and clients with chosen identities.
//!
//! [`HostExecutor`] runs commands as plain host processes WITHOUT any isolation (through the
//! real `jobd-shim`, in its `host` mode): it exists only so that the service, manager, shim and
//! output paths can be tested without root; jobd itself uses [`crate::runner::RuntimeExecutor`].

use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use proto::job_service_client::JobServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::certs::{self, Ca, Purpose};
use crate::config::Config;
use crate::executor::{ExecError, Executor, JobHandle, JobStats, Launch, LaunchRequest};
use crate::server::{self, Running};

/// Unisolated executor for tests (see the module docs).
#[derive(Debug, Default)]
pub struct HostExecutor;

#[derive(Debug)]
struct HostHandle {
    pid: i32,
}

impl Executor for HostExecutor {
    fn prepare(&self, req: LaunchRequest) -> Result<Launch, ExecError> {
        let work = req.job_dir.join("work");
        std::fs::create_dir_all(&work).map_err(|e| ExecError::Host {
            op: "create work dir",
            job_id: req.job_id.clone(),
            reason: e.to_string(),
        })?;
        if !req.input_tar.is_empty() {
            tar::Archive::new(req.input_tar.as_slice())
                .unpack(&work)
                .map_err(|e| ExecError::Job(format!("unpack input: {e}")))?;
        }
        Ok(Launch::Host {
            argv: req.argv,
            env: req.env,
            cwd: work,
        })
    }

    fn handle(
        &self,
        _job_id: &str,
        _job_dir: &std::path::Path,
        pid: i32,
        _pid_start: u64,
    ) -> Result<Box<dyn JobHandle>, ExecError> {
        Ok(Box::new(HostHandle { pid }))
    }

    fn cleanup(&self, _job_id: &str, _job_dir: &std::path::Path) -> Result<(), ExecError> {
        Ok(())
    }
}

impl JobHandle for HostHandle {
    fn pid(&self) -> i32 {
        self.pid
    }
    fn pid_start(&self) -> u64 {
        0
    }
    fn signal_all(&self, signal: Signal) -> Result<(), ExecError> {
        killpg(Pid::from_raw(self.pid), signal).map_err(|e| ExecError::Host {
            op: "signal",
            job_id: self.pid.to_string(),
            reason: e.to_string(),
        })
    }
    fn stats(&self) -> Result<JobStats, ExecError> {
        Ok(JobStats {
            pids_current: 1,
            ..Default::default()
        })
    }
    fn oom_killed(&self) -> bool {
        false
    }
    fn destroy(&self) -> Result<(), ExecError> {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        Ok(())
    }
}

/// The `jobd-shim` binary of this workspace's target directory (built by
/// `cargo build --workspace --bins`).
pub fn shim_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory")
        .join(crate::shim::BINARY);
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A jobd on 127.0.0.1 with an ephemeral port, in a temporary data directory.
pub struct Harness {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// The configuration it runs with.
    pub cfg: Config,
    /// The running daemon.
    pub running: Option<Running>,
    exec: Arc<dyn Executor>,
    _extra: Option<tempfile::TempDir>,
}

impl Harness {
    /// Starts a daemon with `exec`; `tweak` may adjust the configuration.
    pub async fn start(exec: Arc<dyn Executor>, tweak: impl FnOnce(&mut Config)) -> Harness {
        Self::start_with(|_| exec, tweak, None).await
    }

    /// Starts a daemon whose executor is made from the data directory; `extra` is kept alive
    /// as long as the harness.
    pub async fn start_with(
        make_exec: impl FnOnce(&std::path::Path) -> Arc<dyn Executor>,
        tweak: impl FnOnce(&mut Config),
        extra: Option<tempfile::TempDir>,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            use std::os::unix::fs::PermissionsExt;
            // Like /var/lib: traversable by the jobs' user-namespaced roots.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
            if let Some(extra) = &extra {
                std::fs::set_permissions(extra.path(), std::fs::Permissions::from_mode(0o711))
                    .unwrap();
            }
        }
        let mut cfg = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: dir.path().join("data"),
            client_identity_dir: Some(dir.path().join("client")),
            grace_period_ms: 2000,
            shim: Some(shim_binary()),
            ..Config::default()
        };
        tweak(&mut cfg);
        let exec = make_exec(&cfg.data_dir);
        let running = server::start(cfg.clone(), exec.clone())
            .await
            .expect("start jobd");
        Harness {
            dir,
            cfg,
            running: Some(running),
            exec,
            _extra: extra,
        }
    }

    /// Shuts the daemon down and starts a new one on the same data directory.
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("shutdown");
        }
        let mut cfg = self.cfg.clone();
        cfg.listen = "127.0.0.1:0".parse().expect("addr");
        self.running = Some(
            server::start(cfg, self.exec.clone())
                .await
                .expect("restart jobd"),
        );
    }

    /// The daemon's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.running.as_ref().expect("running").addr
    }

    /// The TLS directory.
    pub fn tls_dir(&self) -> PathBuf {
        self.cfg.tls_dir()
    }

    /// The daemon's CA.
    pub fn ca(&self) -> Ca {
        Ca::load(&self.tls_dir()).expect("load CA")
    }

    /// A fresh client identity `name` with role (OU) `role` ("" for none).
    pub fn identity(&self, name: &str, role: &str) -> certs::Identity {
        self.ca()
            .issue(&Purpose::Client {
                name: name.into(),
                role: role.into(),
            })
            .expect("issue")
    }

    /// A connected client for `name`/`role`.
    pub async fn client(&self, name: &str, role: &str) -> JobServiceClient<Channel> {
        let id = self.identity(name, role);
        self.client_with(&self.ca().cert_pem, Some(&id))
            .await
            .expect("connect")
    }

    /// A client trusting `ca_pem` and presenting `id` (or no certificate).
    pub async fn client_with(
        &self,
        ca_pem: &str,
        id: Option<&certs::Identity>,
    ) -> Result<JobServiceClient<Channel>, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        if let Some(id) = id {
            tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        let ch = Endpoint::from_shared(format!("https://{}", self.addr()))?
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(JobServiceClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }
}
