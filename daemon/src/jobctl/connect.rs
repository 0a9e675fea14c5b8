//! The TLS channel to jobd: the CA, client certificate and key from a directory or flags, and
//! connection failures explained.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use proto::job_service_client::JobServiceClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::cli::ConnArgs;

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no TLS directory: set --tls-dir, JOBCTL_TLS_DIR or HOME")]
    NoTlsDir,
    #[error("read {what} {path}: {err} (jobd's zero-config start writes the admin identity to $HOME/.config/jobctl; or pass --tls-dir, --ca/--cert/--key)")]
    Read {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("server address {0:?}: expected HOST:PORT, e.g. 127.0.0.1:50051")]
    Address(String),
    #[error("{0}")]
    Connect(String),
}

/// The files of the client identity.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Resolves `--ca/--cert/--key` over `--tls-dir` (default `$HOME/.config/jobctl`).
pub fn tls_files(args: &ConnArgs) -> Result<TlsFiles, ConnectError> {
    let dir = match &args.tls_dir {
        Some(d) => Some(d.clone()),
        None => std::env::var_os("HOME").map(|h| Path::new(&h).join(".config/jobctl")),
    };
    let pick = |flag: &Option<PathBuf>, name: &str| -> Result<PathBuf, ConnectError> {
        match (flag, &dir) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(d)) => Ok(d.join(name)),
            (None, None) => Err(ConnectError::NoTlsDir),
        }
    };
    Ok(TlsFiles {
        ca: pick(&args.ca, "ca.pem")?,
        cert: pick(&args.cert, "client.pem")?,
        key: pick(&args.key, "client.key")?,
    })
}

fn read(what: &'static str, path: &Path) -> Result<String, ConnectError> {
    std::fs::read_to_string(path).map_err(|err| ConnectError::Read {
        what,
        path: path.to_path_buf(),
        err,
    })
}

/// Connects (TCP and the TLS handshake) to the server.
pub async fn connect(args: &ConnArgs) -> Result<JobServiceClient<Channel>, ConnectError> {
    let files = tls_files(args)?;
    let ca = read("CA certificate", &files.ca)?;
    let cert = read("client certificate", &files.cert)?;
    let key = read("client key", &files.key)?;
    let server = args.server.trim();
    let server = server
        .strip_prefix("https://")
        .unwrap_or(server)
        .trim_end_matches('/');
    let host = match server.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {
            h.trim_start_matches('[').trim_end_matches(']').to_string()
        }
        _ => return Err(ConnectError::Address(args.server.clone())),
    };
    let config = client_config(&files, ca, cert, key)?;
    let name = ServerName::try_from(host.clone())
        .map_err(|_| ConnectError::Address(args.server.clone()))?;
    let connector = TlsConnector::from(config);
    let target = server.to_string();
    let ep = Endpoint::from_shared(format!("http://{server}"))
        .map_err(|_| ConnectError::Address(args.server.clone()))?
        .connect_timeout(Duration::from_secs(10));
    let svc = tower::service_fn(move |_: tonic::transport::Uri| {
        let connector = connector.clone();
        let name = name.clone();
        let target = target.clone();
        async move {
            let tcp = TcpStream::connect(&target).await?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let ch = tokio::time::timeout(Duration::from_secs(15), ep.connect_with_connector(svc))
        .await
        .map_err(|_| ConnectError::Connect(explain(server, &files, "timed out")))?
        .map_err(|e| ConnectError::Connect(explain(server, &files, &chain(&e))))?;
    Ok(JobServiceClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// The client's rustls configuration: TLS 1.3 only, jobd's two suites, the CA as the only root,
/// the client certificate, ALPN h2.
fn client_config(
    files: &TlsFiles,
    ca: String,
    cert: String,
    key: String,
) -> Result<std::sync::Arc<ClientConfig>, ConnectError> {
    let bad = |path: &Path, what: &str| {
        ConnectError::Connect(format!("{}: {what} (expected PEM)", path.display()))
    };
    let mut roots = RootCertStore::empty();
    let cas = CertificateDer::pem_slice_iter(ca.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&files.ca, &e.to_string()))?;
    if cas.is_empty() {
        return Err(bad(&files.ca, "no certificate"));
    }
    for c in cas {
        roots.add(c).map_err(|e| bad(&files.ca, &e.to_string()))?;
    }
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&files.cert, &e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(&files.cert, "no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| bad(&files.key, &e.to_string()))?;
    let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConnectError::Connect(format!("tls configuration: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            ConnectError::Connect(format!(
                "client certificate {} and key {} do not fit together: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(std::sync::Arc::new(config))
}

/// The error and its sources, joined.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    s
}

/// A transport error in words: what to check.
pub fn explain(server: &str, files: &TlsFiles, raw: &str) -> String {
    let l = raw.to_lowercase();
    let hint = if l.contains("connection refused") {
        format!("nothing is listening at {server}: is jobd running there? (start it with `jobd`, or pass --server)")
    } else if l.contains("unknownissuer")
        || l.contains("unknown issuer")
        || l.contains("badsignature")
    {
        format!(
            "the server's certificate is not signed by the CA in {}: wrong CA or wrong server?",
            files.ca.display()
        )
    } else if l.contains("notvalidforname") || l.contains("not valid for name") {
        format!("the server's certificate is not valid for the name in --server {server}: use a name or address among its SANs (e.g. localhost, 127.0.0.1)")
    } else if l.contains("certificateexpired") || l.contains("expired") {
        format!(
            "a certificate has expired (check {} and the server's; issue new ones with `jobd certs issue`)",
            files.cert.display()
        )
    } else if l.contains("badcertificate")
        || l.contains("unknownca")
        || l.contains("certificaterequired")
        || l.contains("decrypterror")
        || l.contains("alert")
    {
        format!(
            "the server refused the client certificate {} (signed by another CA, expired, not yet valid, or not a client certificate)",
            files.cert.display()
        )
    } else if l.contains("timed out") || l.contains("deadline") {
        format!("no answer from {server} in time: is the address right and jobd running?")
    } else if l.contains("private key")
        || l.contains("pem")
        || l.contains("key") && l.contains("parse")
    {
        format!(
            "the client identity could not be read: check {} and {}",
            files.cert.display(),
            files.key.display()
        )
    } else {
        format!("cannot reach jobd at {server}")
    };
    format!("{hint} ({raw})")
}

/// A transport error during a call (after the handshake): with TLS 1.3 the server's refusal of
/// the client certificate arrives here.
pub fn explain_rpc(raw: &str) -> String {
    let l = raw.to_lowercase();
    let hint = if l.contains("expired") {
        "the server refused the client certificate: it has expired (issue a new one with `jobd certs issue`)"
    } else if l.contains("certificate")
        || l.contains("alert")
        || l.contains("unknownca")
        || l.contains("tls")
        || l.contains("broken pipe")
        || l.contains("connection closed")
        || l.contains("canceled")
        || l.contains("reset")
        || l == "transport error"
    {
        "the server closed the connection, most likely refusing the client certificate (signed by another CA, expired, not yet valid, or not a client certificate): check --tls-dir or --cert/--key"
    } else {
        "the connection to jobd failed (is it still running?)"
    };
    format!("{hint} ({raw})")
}
