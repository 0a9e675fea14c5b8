//! Certificates for jobd's mTLS: a CA, the server certificate and client identities (rcgen,
//! Ed25519 keys; certificates with ECDSA P-384 keys made by earlier versions keep working).
//!
//! Layout of a TLS directory made by [`init`]:
//! `ca.pem`, `ca.key` (the CA), `server.pem`, `server.key` (the daemon), and `admin/` holding the
//! admin client identity (`ca.pem`, `client.pem`, `client.key`). Keys are written with mode 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SignatureAlgorithm, PKCS_ED25519,
};
use time::{Duration, OffsetDateTime};

use crate::auth::Role;

/// Ed25519, which the issue allows beside P-384: ring signs and verifies it in tens of
/// microseconds where its P-384 takes milliseconds, and every connection pays for a signature
/// and verifications on both sides (`jobctl list`: 10.6 ms with P-384 keys, 5.4 ms with these).
const KEY_ALGORITHM: &SignatureAlgorithm = &PKCS_ED25519;

/// File names inside a TLS directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key.
pub const CA_KEY: &str = "ca.key";
/// The daemon's certificate.
pub const SERVER_CERT: &str = "server.pem";
/// The daemon's private key.
pub const SERVER_KEY: &str = "server.key";
/// A client identity's certificate.
pub const CLIENT_CERT: &str = "client.pem";
/// A client identity's private key.
pub const CLIENT_KEY: &str = "client.key";

/// Validity of the CA (10 years), the server and client certificates (1 year).
const CA_VALIDITY_DAYS: i64 = 3650;
const LEAF_VALIDITY_DAYS: i64 = 365;

/// Errors of certificate generation and loading.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generate certificate for {name}: {source}")]
    Generate { name: String, source: rcgen::Error },
    #[error("load CA from {path}: {source}")]
    LoadCa { path: PathBuf, source: rcgen::Error },
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists: refusing to overwrite a CA")]
    Exists { path: PathBuf },
    #[error("invalid client name {name:?}: use 1-64 characters from [A-Za-z0-9._@-]")]
    BadName { name: String },
}

/// PEM text of a certificate and its private key.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// A loaded certificate authority that can issue certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone)]
pub enum Purpose {
    /// A server certificate with these SANs (serverAuth EKU).
    Server { sans: Vec<String> },
    /// A client certificate: CN = name, OU = role (clientAuth EKU).
    Client { name: String, role: String },
}

fn gen_err(name: &str) -> impl FnOnce(rcgen::Error) -> CertError + '_ {
    move |source| CertError::Generate {
        name: name.to_string(),
        source,
    }
}

impl Ca {
    /// Makes a new self-signed CA named `cn`.
    pub fn generate(cn: &str) -> Result<Ca, CertError> {
        Self::generate_with_validity(cn, OffsetDateTime::now_utc(), CA_VALIDITY_DAYS)
    }

    fn generate_with_validity(cn: &str, from: OffsetDateTime, days: i64) -> Result<Ca, CertError> {
        let key = KeyPair::generate_for(KEY_ALGORITHM).map_err(gen_err(cn))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationName, "jobworker");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = from - Duration::minutes(5);
        params.not_after = from + Duration::days(days);
        let cert = params.self_signed(&key).map_err(gen_err(cn))?;
        let cert_pem = cert.pem();
        let key_pem = key_pem(&key);
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// Loads the CA of a TLS directory (`ca.pem`, `ca.key`).
    pub fn load(dir: &Path) -> Result<Ca, CertError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| CertError::LoadCa {
            path: key_path.clone(),
            source,
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| CertError::LoadCa {
                path: cert_path.clone(),
                source,
            })?;
        Ok(Ca {
            issuer,
            cert_pem,
            key_pem,
        })
    }

    /// Issues a leaf certificate valid for a year from now.
    pub fn issue(&self, purpose: &Purpose) -> Result<Identity, CertError> {
        let (from, to) = leaf_validity();
        self.issue_valid(purpose, from, to)
    }

    /// Issues a leaf certificate valid from `not_before` to `not_after` (tests use this for
    /// expired and not-yet-valid certificates).
    pub fn issue_valid(
        &self,
        purpose: &Purpose,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Identity, CertError> {
        self.issue_with(purpose, not_before, not_after, KEY_ALGORITHM)
    }

    /// Issues a leaf with a P-384 key, as versions before Ed25519 did (tests check that such
    /// identities keep working).
    pub fn issue_p384(&self, purpose: &Purpose) -> Result<Identity, CertError> {
        let (from, to) = leaf_validity();
        self.issue_with(purpose, from, to, &rcgen::PKCS_ECDSA_P384_SHA384)
    }

    fn issue_with(
        &self,
        purpose: &Purpose,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        algorithm: &'static SignatureAlgorithm,
    ) -> Result<Identity, CertError> {
        let (label, mut params) = match purpose {
            Purpose::Server { sans } => {
                let mut params = CertificateParams::new(sans.clone()).map_err(gen_err("server"))?;
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, "jobd");
                params.distinguished_name = dn;
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                ("server".to_string(), params)
            }
            Purpose::Client { name, role } => {
                let mut params = CertificateParams::default();
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, name.as_str());
                if !role.is_empty() {
                    dn.push(DnType::OrganizationalUnitName, role.as_str());
                }
                params.distinguished_name = dn;
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                (name.clone(), params)
            }
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate_for(algorithm).map_err(gen_err(&label))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(gen_err(&label))?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key_pem(&key),
        })
    }
}

/// A leaf's validity: a year from now (from five minutes ago, for clocks slightly behind).
fn leaf_validity() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (
        now - Duration::minutes(5),
        now + Duration::days(LEAF_VALIDITY_DAYS),
    )
}

/// ring writes Ed25519 keys as PKCS#8 v2 (with the public key), which OpenSSL 3.0 and other
/// tools cannot load; the v1 form (the seed alone) is what they and ring all read.
const ED25519_PKCS8_V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The private key as PEM, Ed25519 keys in PKCS#8 v1 (see [`ED25519_PKCS8_V2_PREFIX`]).
fn key_pem(key: &KeyPair) -> String {
    let der = key.serialize_der();
    match der.strip_prefix(&ED25519_PKCS8_V2_PREFIX[..]) {
        Some(rest) if der.len() == 83 => {
            let v1 = [&ED25519_PKCS8_V1_PREFIX[..], &rest[..32]].concat();
            pem::encode(&pem::Pem::new("PRIVATE KEY", v1))
        }
        _ => key.serialize_pem(),
    }
}

/// The SANs of the server certificate: localhost, 127.0.0.1, ::1, the hostname and `extra`.
pub fn server_sans(extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = nix::unistd::gethostname() {
        if let Some(host) = host.to_str() {
            if !host.is_empty() {
                sans.push(host.to_string());
            }
        }
    }
    for san in extra {
        if !sans.contains(san) {
            sans.push(san.clone());
        }
    }
    sans.dedup();
    sans
}

/// What [`init`] wrote.
#[derive(Debug, Clone)]
pub struct InitOutcome {
    /// The TLS directory.
    pub dir: PathBuf,
    /// The admin client identity directory (`DIR/admin`).
    pub admin_dir: PathBuf,
}

/// `jobd certs init`: makes a CA, a server certificate and an admin client identity in `dir`.
/// Refuses to overwrite an existing CA.
pub fn init(dir: &Path, extra_sans: &[String]) -> Result<InitOutcome, CertError> {
    let ca_path = dir.join(CA_CERT);
    if ca_path.exists() {
        return Err(CertError::Exists { path: ca_path });
    }
    fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca = Ca::generate("jobworker CA")?;
    let server = ca.issue(&Purpose::Server {
        sans: server_sans(extra_sans),
    })?;
    write_file(&dir.join(CA_KEY), &ca.key_pem, 0o600)?;
    write_file(&dir.join(SERVER_KEY), &server.key_pem, 0o600)?;
    write_file(&dir.join(SERVER_CERT), &server.cert_pem, 0o644)?;
    let admin_dir = dir.join("admin");
    issue_to(&ca, "admin", Role::Admin.as_str(), &admin_dir)?;
    // The CA certificate last: its presence marks a complete directory.
    write_file(&ca_path, &ca.cert_pem, 0o644)?;
    Ok(InitOutcome {
        dir: dir.to_path_buf(),
        admin_dir,
    })
}

/// Checks a client name: 1-64 characters from `[A-Za-z0-9._@-]`.
pub fn validate_name(name: &str) -> Result<(), CertError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CertError::BadName {
            name: name.to_string(),
        })
    }
}

/// `jobd certs issue`: writes `out/ca.pem`, `out/client.pem`, `out/client.key` for a client.
pub fn issue_to(ca: &Ca, name: &str, role: &str, out: &Path) -> Result<(), CertError> {
    validate_name(name)?;
    let id = ca.issue(&Purpose::Client {
        name: name.to_string(),
        role: role.to_string(),
    })?;
    write_identity(out, &ca.cert_pem, &id)
}

/// Writes a client identity directory.
pub fn write_identity(out: &Path, ca_pem: &str, id: &Identity) -> Result<(), CertError> {
    fs::create_dir_all(out).map_err(|source| CertError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    write_file(&out.join(CLIENT_KEY), &id.key_pem, 0o600)?;
    write_file(&out.join(CLIENT_CERT), &id.cert_pem, 0o644)?;
    write_file(&out.join(CA_CERT), ca_pem, 0o644)?;
    Ok(())
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `contents` to `path` atomically (temp file + rename) with `mode`.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let err = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    // The umask may have narrowed the mode; make it exact.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_private_keys_0600_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let out = init(&tls, &["jobs.example".into()]).unwrap();
        for key in [
            tls.join(CA_KEY),
            tls.join(SERVER_KEY),
            out.admin_dir.join(CLIENT_KEY),
        ] {
            let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        assert!(matches!(init(&tls, &[]), Err(CertError::Exists { .. })));
        // Ed25519 keys: PKCS#8 naming the algorithm 1.3.101.112.
        for key in [tls.join(CA_KEY), out.admin_dir.join(CLIENT_KEY)] {
            let pem = fs::read_to_string(&key).unwrap();
            use rustls::pki_types::pem::PemObject;
            let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
            let ed25519_oid = [0x06, 0x03, 0x2b, 0x65, 0x70];
            assert!(
                der.secret_der().windows(5).any(|w| w == ed25519_oid),
                "{} is not an Ed25519 key",
                key.display()
            );
            assert!(
                der.secret_der().starts_with(&ED25519_PKCS8_V1_PREFIX),
                "PKCS#8 v1"
            );
        }
        let ca = Ca::load(&tls).unwrap();
        let issued = dir.path().join("alice");
        issue_to(&ca, "alice", "user", &issued).unwrap();
        assert!(issued.join(CLIENT_CERT).exists());
        assert!(issue_to(&ca, "bad name", "user", &issued).is_err());
    }

    #[test]
    fn server_sans_include_loopback_and_extras() {
        let sans = server_sans(&["jobs.example".into()]);
        for want in ["localhost", "127.0.0.1", "::1", "jobs.example"] {
            assert!(
                sans.iter().any(|s| s == want),
                "{want} missing from {sans:?}"
            );
        }
    }
}
