//! `jobd check`: the runtime's host check ([`runtime::check::host`]) plus what jobd itself
//! needs: a writable data directory, job-init (and jobd-shim when built) next to jobd, python3
//! for the default rootfs, usable TLS material and a free listen address. Every probe is real
//! (a file created and removed, a socket bound and closed) and leaves nothing behind.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use runtime::check::{Check, Report, Status};

use crate::config::Config;
use crate::tls::{self, ServerTlsFiles};

/// The host check and jobd's own lines, for `cfg` and the jobd binary at `jobd_exe`.
pub fn jobd(cfg: &Config, jobd_exe: &Path) -> Report {
    let mut report = runtime::check::host();
    // Every job's writable layer is an overlay over the shared rootfs: optional for the
    // runtime, required for jobd.
    for c in report.checks.iter_mut().filter(|c| c.name == "overlayfs") {
        c.required = true;
    }
    let bin_dir = jobd_exe.parent().unwrap_or(Path::new("."));
    report.push(data_dir(&cfg.data_dir));
    report.push(job_init(cfg.job_init.as_deref(), bin_dir));
    report.push(shim(bin_dir));
    report.push(python3());
    report.push(tls_material(&cfg.tls_dir()));
    report.push(listen(cfg.listen));
    report
}

/// A name no one else uses, for probe files.
fn probe_name() -> String {
    format!(".jobd-check-{}", std::process::id())
}

fn data_dir(dir: &Path) -> Check {
    let name = "data dir";
    let shown = dir.display();
    if dir.is_dir() {
        let probe = dir.join(probe_name());
        return match std::fs::File::create_new(&probe) {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                Check::new(name, Status::Ok, true, format!("{shown} is writable"))
            }
            Err(e) => Check::new(
                name,
                Status::Missing,
                true,
                format!("{shown} is not writable: {e}"),
            ),
        };
    }
    if dir.exists() {
        return Check::new(
            name,
            Status::Missing,
            true,
            format!("{shown} exists but is not a directory"),
        );
    }
    let Some(parent) = dir.ancestors().skip(1).find(|a| a.exists()) else {
        return Check::new(
            name,
            Status::Missing,
            true,
            format!("{shown}: no existing parent directory"),
        );
    };
    let probe = parent.join(probe_name());
    match std::fs::create_dir(&probe) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&probe);
            Check::new(
                name,
                Status::Ok,
                true,
                format!(
                    "{shown} does not exist yet; jobd creates it ({} is writable)",
                    parent.display()
                ),
            )
        }
        Err(e) => Check::new(
            name,
            Status::Missing,
            true,
            format!(
                "{shown} does not exist and cannot be created in {}: {e}",
                parent.display()
            ),
        ),
    }
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// job-init: the configured path, `$JOB_RUNTIME_INIT`, or next to jobd (the order the
/// runtime uses).
fn job_init(configured: Option<&Path>, bin_dir: &Path) -> Check {
    let name = "job-init";
    let (path, source) = match (configured, std::env::var_os(runtime::launch::INIT_PATH_ENV)) {
        (Some(p), _) => (p.to_path_buf(), "job_init in the configuration"),
        (None, Some(p)) => (PathBuf::from(p), "$JOB_RUNTIME_INIT"),
        (None, None) => (bin_dir.join("job-init"), "next to jobd"),
    };
    if is_executable_file(&path) {
        match has_interpreter(&path) {
            Ok(true) => Check::new(
                name,
                Status::Warn,
                true,
                format!(
                    "{} ({source}) is dynamically linked: it works, but every job starts about \
                     2 ms of CPU slower; build it with scripts/build-job-init.sh --release",
                    path.display()
                ),
            ),
            _ => Check::new(
                name,
                Status::Ok,
                true,
                format!("{} ({source}), statically linked", path.display()),
            ),
        }
    } else {
        Check::new(
            name,
            Status::Missing,
            true,
            format!(
                "{} ({source}) is not an executable file: install job-init next to jobd",
                path.display()
            ),
        )
    }
}

/// Whether the ELF file at `path` names a program interpreter (`PT_INTERP`): the dynamic
/// loader that a static executable does without. A file that is not ELF counts as not dynamic.
fn has_interpreter(path: &Path) -> std::io::Result<bool> {
    use rootfs_builder::elf::{self, ElfError};
    match elf::read(path) {
        Ok(info) => Ok(info.interp.is_some()),
        Err(ElfError::Io { source, .. }) => Err(source),
        Err(ElfError::NotElf { .. } | ElfError::Corrupt { .. }) => Ok(false),
    }
}

fn shim(bin_dir: &Path) -> Check {
    let path = bin_dir.join("jobd-shim");
    let detail = if is_executable_file(&path) {
        format!("{}", path.display())
    } else {
        format!(
            "no jobd-shim next to jobd ({}): jobs are supervised by jobd itself",
            bin_dir.display()
        )
    };
    Check::new("jobd-shim", Status::Ok, false, detail)
}

fn python3() -> Check {
    let name = "python3";
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("python3"))
            .find(|p| is_executable_file(p))
    });
    match found {
        Some(p) => Check::new(
            name,
            Status::Ok,
            false,
            format!("{}: the default rootfs includes it", p.display()),
        ),
        None => Check::new(
            name,
            Status::Warn,
            false,
            "not on PATH: the default rootfs will have no python3".into(),
        ),
    }
}

fn tls_material(dir: &Path) -> Check {
    let name = "tls";
    let files = ServerTlsFiles::in_dir(dir);
    if !files.ca.exists() {
        return Check::new(
            name,
            Status::Ok,
            true,
            format!(
                "no {} yet: the first start creates a CA, a server certificate and an admin identity",
                files.ca.display()
            ),
        );
    }
    match tls::server_config(&files) {
        Ok(_) => Check::new(
            name,
            Status::Ok,
            true,
            format!("{}: ca.pem, server.pem and server.key load", dir.display()),
        ),
        Err(e) => Check::new(name, Status::Missing, true, e.to_string()),
    }
}

fn listen(addr: SocketAddr) -> Check {
    let name = "listen";
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Check::new(name, Status::Ok, true, format!("{addr} is free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Check::new(
            name,
            Status::Missing,
            true,
            format!("{addr} is in use (jobd already running?): stop it or pass --listen"),
        ),
        Err(e) => Check::new(name, Status::Missing, true, format!("bind {addr}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dynamic executable has an interpreter; a static one (busybox-static, a test
    /// dependency), a text file and a missing file do not.
    #[test]
    fn dynamic_linking_is_told_from_static() {
        assert!(has_interpreter(Path::new("/bin/true")).unwrap());
        if let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
        {
            assert!(!has_interpreter(busybox).unwrap(), "{}", busybox.display());
        }
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("script");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(!has_interpreter(&text).unwrap());
        assert!(has_interpreter(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn data_dir_is_probed_by_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let c = data_dir(tmp.path());
        assert_eq!(c.status, Status::Ok, "{c:?}");
        let missing = tmp.path().join("a/b");
        let c = data_dir(&missing);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.detail.contains("creates it"), "{c:?}");
        assert!(!missing.exists());
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(data_dir(&file).fails());
        assert!(data_dir(&file.join("sub")).fails());
        // Nothing is left behind.
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn a_taken_port_is_reported() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let c = listen(addr);
        assert!(c.fails(), "{c:?}");
        assert!(c.detail.contains("in use"), "{c:?}");
        drop(taken);
        assert_eq!(listen(addr).status, Status::Ok);
    }

    #[test]
    fn broken_tls_material_fails_and_absent_is_fine() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(tls_material(tmp.path()).status, Status::Ok);
        std::fs::write(tmp.path().join("ca.pem"), "not a certificate").unwrap();
        let c = tls_material(tmp.path());
        assert!(c.fails(), "{c:?}");
    }
}
