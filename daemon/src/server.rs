//! Putting jobd together: data directory, certificates (made on first start), TLS listener,
//! database, job manager, gRPC service, and an orderly shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use proto::job_service_server::JobServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::certs::{self, CertError};
use crate::config::Config;
use crate::db::{Db, DbError};
use crate::executor::Executor;
use crate::manager::{self, Manager, ManagerError};
use crate::service::Service;
use crate::tls::{self, ServerTlsFiles, TlsError};

/// Errors starting or running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("set permissions of {path}: {source}")]
    Perms {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Zero-config certificates: when the TLS directory has no CA, make one (with a server
/// certificate and an admin identity) and copy the admin identity to where jobctl looks, unless
/// something is there already. Returns true when certificates were made.
pub fn ensure_certs(cfg: &Config) -> Result<bool, ServerError> {
    let dir = cfg.tls_dir();
    if dir.join(certs::CA_CERT).exists() {
        return Ok(false);
    }
    let made = certs::init(&dir, &[])?;
    tracing::info!(dir = %made.dir.display(), "created CA, server certificate and admin identity");
    let client_dir = cfg.client_identity_dir();
    if client_dir.join(certs::CLIENT_CERT).exists() {
        tracing::warn!(
            dir = %client_dir.display(),
            admin = %made.admin_dir.display(),
            "a client identity exists already: left as is; the new admin identity is in the TLS directory"
        );
    } else {
        let read = |name: &str| {
            let path = made.admin_dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CertError::Read { path, source })
        };
        let id = certs::Identity {
            cert_pem: read(certs::CLIENT_CERT)?,
            key_pem: read(certs::CLIENT_KEY)?,
        };
        certs::write_identity(&client_dir, &read(certs::CA_CERT)?, &id)?;
        tracing::info!(dir = %client_dir.display(), "wrote the admin client identity for jobctl");
    }
    Ok(true)
}

/// A running daemon.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its job manager.
    pub manager: Arc<Manager>,
    shutdown: watch::Sender<bool>,
    serve: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, ends open streams, applies the shutdown policy to running jobs and
    /// waits for the server to finish.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        tracing::info!("shutting down");
        self.shutdown.send_replace(true);
        self.manager.shutdown().await;
        if let Err(e) = self.serve.await {
            tracing::error!(error = %e, "server task failed");
        }
        Ok(())
    }

    /// Kills the server task without any cleanup (tests use it to simulate a crash of the
    /// network side; the jobs' supervisors keep running in this process).
    pub fn abort(&self) {
        self.serve.abort();
    }
}

/// The response data HTTP/2 buffers for one stream before it stops taking more from the
/// stream's follower (hyper's default is 400 KiB). A frame larger than this is still taken
/// whole, so this small value means: one output chunk per stream waits in HTTP/2, the next is
/// taken when it has gone. With 1,000 streams of one job every buffered chunk counts 1,000
/// times; a connection carrying many streams stays busy all the same.
const STREAM_SEND_BUFFER: usize = 1024;
/// How long shutdown waits for open connections to finish their calls.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// HTTP/2 pings on idle connections.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves gRPC over the accepted TLS connections until `stop`, then lets open calls end
/// (streams are ended by the service on shutdown). jobd drives hyper itself instead of
/// `tonic::transport::Server` because tonic does not expose the per-stream send buffer.
async fn serve_http2(
    mut incoming: impl tokio_stream::Stream<
            Item = Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
        > + Unpin,
    grpc: JobServiceServer<Service>,
    mut stop: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tokio_stream::StreamExt;
    use tonic::transport::server::Connected;
    let routes = tonic::service::Routes::new(grpc).prepare();
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_send_buf_size(STREAM_SEND_BUFFER)
        .keep_alive_interval(KEEPALIVE);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            s = incoming.next() => match s {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
                None => break,
            },
            _ = stop.wait_for(|v| *v) => break,
        };
        // What `Request::peer_certs` reads: the verified client chain of this connection.
        let info = stream.connect_info();
        let routes = routes.clone();
        let svc = tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(info.clone());
            let mut routes = routes.clone();
            async move { tower::Service::call(&mut routes, req).await }
        });
        let conn = http2.serve_connection(
            TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(svc),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    // Stop accepting first, then give open connections a bounded time to finish their calls
    // (the service ends its streams on shutdown; GOAWAY tells clients not to start new ones).
    drop(incoming);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
}

/// Starts jobd: prepares the data directory and certificates, recovers jobs a previous run
/// left, binds `cfg.listen` and serves.
pub async fn start(cfg: Config, exec: Arc<dyn Executor>) -> Result<Running, ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let cfg = Arc::new(cfg);
    manager::ensure_dir(&cfg.data_dir)?;
    // 0711: jobs' user-namespaced roots must traverse to their bundles; nothing is listable.
    for dir in [cfg.data_dir.clone(), cfg.data_dir.join("jobs")] {
        manager::ensure_dir(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).map_err(
            |source| ServerError::Perms {
                path: dir.clone(),
                source,
            },
        )?;
    }
    ensure_certs(&cfg)?;
    let tls_config = tls::server_config(&ServerTlsFiles::in_dir(&cfg.tls_dir()))?;
    let db_path = cfg.data_dir.join("jobs.db");
    let db = Arc::new(Db::open(&db_path)?);
    std::fs::set_permissions(&db_path, std::fs::Permissions::from_mode(0o600)).map_err(
        |source| ServerError::Perms {
            path: db_path.clone(),
            source,
        },
    )?;
    let manager = Manager::new(cfg.clone(), db, exec)?;
    let recovered = manager.recover().await?;
    if recovered > 0 {
        tracing::warn!(
            jobs = recovered,
            "settled jobs a previous jobd left running (re-adopted, finalised or cleaned up)"
        );
    }
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let (shutdown, rx) = watch::channel(false);
    let service = Service::new(cfg.clone(), manager.clone(), rx.clone());
    let grpc = JobServiceServer::new(service)
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);
    let incoming = tls::incoming(listener, tls_config);
    let serve = tokio::spawn(serve_http2(incoming, grpc, rx));
    tokio::spawn(manager.clone().run_retention());
    tracing::info!(%addr, data_dir = %cfg.data_dir.display(), "jobd listening");
    Ok(Running {
        addr,
        manager,
        shutdown,
        serve,
    })
}
