//! The TLS channel to jobd: the CA, client certificate and key from a directory or flags, and
//! connection failures explained.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::job_service_client::JobServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

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
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(host);
    let ep = Endpoint::from_shared(format!("https://{server}"))
        .map_err(|_| ConnectError::Address(args.server.clone()))?
        .connect_timeout(Duration::from_secs(10))
        .tls_config(tls)
        .map_err(|e| ConnectError::Connect(format!("tls configuration: {}", chain(&e))))?;
    let ch = ep
        .connect()
        .await
        .map_err(|e| ConnectError::Connect(explain(server, &files, &chain(&e))))?;
    Ok(JobServiceClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
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
        || l.contains("reset")
        || l == "transport error"
    {
        "the server closed the connection, most likely refusing the client certificate (signed by another CA, expired, not yet valid, or not a client certificate): check --tls-dir or --cert/--key"
    } else {
        "the connection to jobd failed (is it still running?)"
    };
    format!("{hint} ({raw})")
}
