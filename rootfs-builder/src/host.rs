//! `host` builds: a rootfs holding the requested host programs, everything they load, a minimal
//! `/etc` and empty mount points, and nothing else.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::closure::{ClosureError, Resolver};
use crate::hostcopy::{CopyError, FileMode, HostCopy};
use crate::output::{self, Input, Marker, OutputError, Staging, BUILDER_VERSION, FIXED_MTIME};
use crate::python::{self, PythonError};
use crate::resolve::{self, Env, ResolveError};

/// Where a job finds requested programs by bare name.
const LINK_DIR: &str = "/usr/bin";
/// Mount points the runtime mounts over; they must exist as real directories.
const MOUNT_POINTS: &[(&str, u32)] = &[
    ("proc", 0o555),
    ("dev", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
];
/// Top-level directories that merged-/usr hosts make symlinks.
const MERGED_USR: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];
const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";
const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n";

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("no program given: name at least one program to put in the rootfs")]
    NoPrograms,
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Closure(#[from] ClosureError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error(transparent)]
    Python(#[from] PythonError),
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// A request for a rootfs made of host programs.
#[derive(Debug, Clone, Default)]
pub struct HostRequest {
    /// Destination directory (replaced atomically; never a directory the builder did not make).
    pub out: PathBuf,
    /// Program names (looked up in PATH) or paths.
    pub programs: Vec<String>,
    /// Extra host files or directories copied as they are.
    pub with: Vec<PathBuf>,
    /// Rebuild even when `out` already holds a build of the same request with unchanged inputs.
    pub force: bool,
}

/// A finished (or reused) rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltRootfs {
    pub path: PathBuf,
    /// Content key: equal keys mean identical trees.
    pub key: String,
    /// True when an existing build was reused without any work.
    pub reused: bool,
}

/// Everything that decides the result besides host files (those are fingerprinted).
#[derive(Serialize)]
struct RequestKey<'a> {
    builder: &'a str,
    kind: &'a str,
    programs: &'a [String],
    with: &'a [PathBuf],
    path_env: &'a str,
    cwd: &'a Path,
}

fn request_key(req: &HostRequest, env: &Env) -> String {
    output::hash_json(&RequestKey {
        builder: BUILDER_VERSION,
        kind: "host",
        programs: &req.programs,
        with: &req.with,
        path_env: &env.path,
        cwd: &env.cwd,
    })
}

/// Builds (or reuses) a rootfs for `req`, resolving names with this process's PATH and cwd.
pub fn build(req: &HostRequest) -> Result<BuiltRootfs, HostError> {
    build_with_env(req, &Env::from_process())
}

/// As [`build`], with the PATH and working directory given explicitly.
pub fn build_with_env(req: &HostRequest, env: &Env) -> Result<BuiltRootfs, HostError> {
    if req.programs.is_empty() {
        return Err(HostError::NoPrograms);
    }
    let request_key = request_key(req, env);
    if !req.force {
        if let Some(marker) = Marker::read(&req.out).filter(|m| m.is_fresh(&request_key)) {
            tracing::info!(out = %req.out.display(), key = %marker.key, "reusing rootfs");
            return Ok(BuiltRootfs {
                path: req.out.clone(),
                key: marker.key,
                reused: true,
            });
        }
    }
    let staging = Staging::begin(&req.out)?;
    let mut copy = HostCopy::new(staging.path());
    let mut resolver = Resolver::new(Path::new("/"))?;
    let mut links = Vec::new();
    for name in &req.programs {
        add_program(name, env, &mut copy, &mut resolver, &mut links)?;
    }
    for extra in &req.with {
        copy.add_tree(&env.cwd.join(extra), FileMode::AsHost, &|_, _| true)?;
    }
    add_skeleton(&mut copy)?;
    add_merged_usr_links(&mut copy)?;
    // Links last: a copied host file at the same path wins over a convenience link.
    for (name, target) in links {
        copy.symlink_new(&Path::new(LINK_DIR).join(name), &target)?;
    }
    add_ld_cache(&mut copy, &resolver)?;
    for input in [Path::new("/etc/ld.so.cache"), Path::new("/etc/ld.so.conf")] {
        copy.note_input(input);
    }
    for dir in &resolver.probed_dirs {
        copy.note_input(dir);
    }
    output::fix_mtimes(staging.path(), FIXED_MTIME)?;
    let key = output::tree_key(staging.path())?;
    let marker = Marker {
        builder: BUILDER_VERSION.to_owned(),
        kind: "host".to_owned(),
        request_key,
        key: key.clone(),
        inputs: copy
            .inputs()
            .map(|(path, fingerprint)| Input {
                path: path.clone(),
                fingerprint: fingerprint.clone(),
            })
            .collect(),
    };
    let path = staging.commit(&marker)?;
    Ok(BuiltRootfs {
        path,
        key,
        reused: false,
    })
}

/// Copies one requested program with its interpreters, libraries and runtime files.
fn add_program(
    name: &str,
    env: &Env,
    copy: &mut HostCopy,
    resolver: &mut Resolver,
    links: &mut Vec<(String, PathBuf)>,
) -> Result<(), HostError> {
    let mut inputs = Vec::new();
    let programs = resolve::resolve(name, env, &mut inputs)?;
    for input in &inputs {
        copy.note_input(input);
    }
    for prog in programs {
        let real = copy.add(&prog.path, FileMode::AsHost)?;
        if let Some(link) = prog.link_name {
            links.push((link, prog.path.clone()));
        }
        if !prog.is_elf {
            continue;
        }
        for lib in resolver.closure(&prog.path)? {
            copy.add(&lib, FileMode::AsHost)?;
        }
        if python::is_python(&real) {
            python::add_runtime(copy, resolver, &real)?;
        }
    }
    Ok(())
}

/// Top-level directories that are symlinks into /usr on the host (merged /usr) are linked the
/// same way when their target is in the rootfs, so `/bin/sh` works when `sh` came from /usr/bin.
fn add_merged_usr_links(copy: &mut HostCopy) -> Result<(), CopyError> {
    for name in MERGED_USR {
        let host = Path::new("/").join(name);
        let Ok(target) = std::fs::read_link(&host) else {
            continue;
        };
        let staged_target = copy.staged(&Path::new("/").join(&target));
        if staged_target.is_dir() {
            copy.note_input(&host);
            copy.symlink_new(&host, &target)?;
        }
    }
    Ok(())
}

/// The host's ld.so.cache cut down to the libraries the rootfs holds: ld.so then opens each
/// library at once instead of probing a dozen hwcap and multiarch directories for it (on a
/// job's overlay, every miss is a lookup in each layer), libraries outside its built-in
/// directories are found, and the host's other library names stay out of the rootfs.
fn add_ld_cache(copy: &mut HostCopy, resolver: &Resolver) -> Result<(), CopyError> {
    let Some(host) = resolver.ld_cache() else {
        return Ok(());
    };
    let subset = host.subset(|lib| std::fs::symlink_metadata(copy.staged(lib)).is_ok());
    if subset.is_empty() {
        return Ok(());
    }
    copy.write_new(Path::new("/etc/ld.so.cache"), &subset.to_bytes(), 0o644)
}

/// The minimal /etc and the empty mount points every rootfs gets.
fn add_skeleton(copy: &mut HostCopy) -> Result<(), CopyError> {
    for (name, perm) in MOUNT_POINTS {
        copy.mkdir_new(Path::new(name), *perm)?;
    }
    for (path, text) in [
        ("/etc/passwd", PASSWD),
        ("/etc/group", GROUP),
        ("/etc/hosts", HOSTS),
        ("/etc/nsswitch.conf", NSSWITCH),
    ] {
        copy.write_new(Path::new(path), text.as_bytes(), 0o644)?;
    }
    Ok(())
}
