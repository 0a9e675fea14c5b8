//! Atomic, reusable output directories.
//!
//! A rootfs is built in a hidden temporary directory next to its destination and renamed into
//! place (swapped atomically with `RENAME_EXCHANGE` when an older build is there), so a reader
//! sees either the old tree or the new one and a failed build leaves nothing behind. The
//! finished tree holds a marker file with its content key and the fingerprints of every host
//! input, so a later identical request can be answered without rebuilding.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The marker at the top of every built tree.
pub const MARKER: &str = ".rootfs-builder.json";
/// Changes whenever the builder would lay out the same inputs differently.
pub const BUILDER_VERSION: &str = concat!("rootfs-builder/", env!("CARGO_PKG_VERSION"), "/3");
/// Every host-mode entry gets this mtime (1980-01-01, the zip epoch), so that the same inputs
/// give the same tree.
pub const FIXED_MTIME: i64 = 315_532_800;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("output {path} exists and is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("output {path} is a non-empty directory not built by rootfs-builder; remove it or choose another --out")]
    NotOurs { path: PathBuf },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `lstat` says about an input; a changed input means a stale build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Fingerprint {
    /// `None` when the path does not exist (its absence is an input too).
    pub fn of(path: &Path) -> Option<Fingerprint> {
        fs::symlink_metadata(path)
            .ok()
            .map(|m| Fingerprint::from(&m))
    }
}

impl From<&fs::Metadata> for Fingerprint {
    fn from(m: &fs::Metadata) -> Self {
        Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    pub path: PathBuf,
    pub fingerprint: Option<Fingerprint>,
}

/// The marker file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    pub builder: String,
    pub kind: String,
    /// Hash of the request (arguments and the environment that steers resolution).
    pub request_key: String,
    /// Hash of the built tree: equal keys mean equal trees.
    pub key: String,
    pub inputs: Vec<Input>,
}

impl Marker {
    /// The marker of an existing build at `out`, if any and readable.
    pub fn read(out: &Path) -> Option<Marker> {
        let text = fs::read(out.join(MARKER)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Whether this build answers `request_key` now: same builder, same request, and no input
    /// changed on the host since.
    pub fn is_fresh(&self, request_key: &str) -> bool {
        self.builder == BUILDER_VERSION
            && self.request_key == request_key
            && self
                .inputs
                .iter()
                .all(|i| Fingerprint::of(&i.path) == i.fingerprint)
    }
}

/// Hex SHA-256 of a serializable value (for request keys).
pub fn hash_json<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).expect("request serializes");
    hex::encode(Sha256::digest(bytes))
}

/// A build in progress: a temporary directory removed on drop unless committed.
#[derive(Debug)]
pub struct Staging {
    dir: TempDir,
    out: PathBuf,
}

impl Staging {
    /// Prepares a build of `out`; refuses to ever replace something rootfs-builder did not make.
    pub fn begin(out: &Path) -> Result<Staging, OutputError> {
        match fs::symlink_metadata(out) {
            Ok(m) if !m.is_dir() => {
                return Err(OutputError::NotADirectory {
                    path: out.to_path_buf(),
                })
            }
            Ok(_) => {
                let empty = fs::read_dir(out).map_err(io_err(out))?.next().is_none();
                if !empty && !out.join(MARKER).is_file() {
                    return Err(OutputError::NotOurs {
                        path: out.to_path_buf(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(out)(e)),
        }
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let name = out.file_name().unwrap_or_default().to_string_lossy();
        let dir = tempfile::Builder::new()
            .prefix(&format!(".{name}.tmp-"))
            .tempdir_in(&parent)
            .map_err(io_err(&parent))?;
        Ok(Staging {
            dir,
            out: out.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the marker and moves the tree into place, replacing an older build atomically.
    pub fn commit(self, marker: &Marker) -> Result<PathBuf, OutputError> {
        let root = self.dir.path().to_path_buf();
        let marker_path = root.join(MARKER);
        // Compact: the marker is read on every cache check, where parse time counts.
        let json = serde_json::to_vec(marker).expect("marker serializes");
        fs::write(&marker_path, json).map_err(io_err(&marker_path))?;
        set_mode(&marker_path, 0o444)?;
        // The temporary directory was made 0700; a rootfs root is world-readable.
        set_mode(&root, 0o755)?;
        if fs::symlink_metadata(&self.out).is_ok() {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &root,
                rustix::fs::CWD,
                &self.out,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(|e| io_err(&self.out)(e.into()))?;
            // `self.dir` now names the previous build; dropping it removes that.
            drop(self.dir);
        } else {
            fs::rename(&root, &self.out).map_err(io_err(&self.out))?;
            let _ = self.dir.keep();
        }
        Ok(self.out)
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), OutputError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// Visits every entry under `root` (not `root` itself) in sorted order, parents first.
pub fn walk(
    root: &Path,
    visit: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<(), OutputError>,
) -> Result<(), OutputError> {
    fn inner(
        root: &Path,
        rel: &Path,
        visit: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<(), OutputError>,
    ) -> Result<(), OutputError> {
        let dir = root.join(rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err(&dir))?;
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let full = root.join(&rel);
            let meta = fs::symlink_metadata(&full).map_err(io_err(&full))?;
            visit(&rel, &meta)?;
            if meta.is_dir() {
                inner(root, &rel, visit)?;
            }
        }
        Ok(())
    }
    inner(root, Path::new(""), visit)
}

/// Sets every mtime under `root` (and of `root`) to `secs`, children before their directories.
pub fn fix_mtimes(root: &Path, secs: i64) -> Result<(), OutputError> {
    let mut all = Vec::new();
    walk(root, &mut |rel, _| {
        all.push(rel.to_path_buf());
        Ok(())
    })?;
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    // Reverse pre-order visits children before parents, so no later write bumps a parent.
    for rel in all.iter().rev().chain(std::iter::once(&PathBuf::new())) {
        let full = root.join(rel);
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &full,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err(&full)(e.into()))?;
    }
    Ok(())
}

/// Hash of a tree: names, types, modes, owners, mtimes, link targets and file contents.
/// The marker is left out, as it holds the key itself.
pub fn tree_key(root: &Path) -> Result<String, OutputError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    walk(root, &mut |rel, m| {
        if rel == Path::new(MARKER) {
            return Ok(());
        }
        let full = root.join(rel);
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        let head = format!(
            "{:o} {} {} {} {} {}\0",
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime(),
            m.size(),
            m.rdev()
        );
        h.update(head.as_bytes());
        if m.is_symlink() {
            let target = fs::read_link(&full).map_err(io_err(&full))?;
            h.update(target.as_os_str().as_encoded_bytes());
        } else if m.is_file() {
            let mut f = fs::File::open(&full).map_err(io_err(&full))?;
            loop {
                let n = f.read(&mut buf).map_err(io_err(&full))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
        h.update([0]);
        Ok(())
    })?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(key: &str) -> Marker {
        Marker {
            builder: BUILDER_VERSION.into(),
            kind: "test".into(),
            request_key: "r".into(),
            key: key.into(),
            inputs: Vec::new(),
        }
    }

    #[test]
    fn commit_replaces_previous_build_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("rootfs");
        let s = Staging::begin(&out).unwrap();
        fs::write(s.path().join("a"), "1").unwrap();
        s.commit(&marker("k1")).unwrap();
        let s = Staging::begin(&out).unwrap();
        fs::write(s.path().join("b"), "2").unwrap();
        s.commit(&marker("k2")).unwrap();
        assert!(!out.join("a").exists() && out.join("b").exists());
        assert_eq!(Marker::read(&out).unwrap().key, "k2");
        // Nothing but the output is left next to it.
        let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn dropped_staging_leaves_nothing_and_foreign_dirs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("rootfs");
        let s = Staging::begin(&out).unwrap();
        fs::write(s.path().join("a"), "1").unwrap();
        drop(s);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
        fs::create_dir(&out).unwrap();
        fs::write(out.join("precious"), "x").unwrap();
        assert!(matches!(
            Staging::begin(&out),
            Err(OutputError::NotOurs { .. })
        ));
    }

    #[test]
    fn tree_key_sees_content_changes() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("f"), "a").unwrap();
        fix_mtimes(tmp.path(), FIXED_MTIME).unwrap();
        let k1 = tree_key(tmp.path()).unwrap();
        assert_eq!(k1, tree_key(tmp.path()).unwrap());
        fs::write(tmp.path().join("f"), "b").unwrap();
        fix_mtimes(tmp.path(), FIXED_MTIME).unwrap();
        assert_ne!(k1, tree_key(tmp.path()).unwrap());
    }
}
