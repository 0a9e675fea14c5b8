//! Copies host paths into a staging tree at the same absolute locations, keeping symlinks as
//! symlinks: every symlink met on the way (in a parent directory or at the end) is recreated
//! with its original target text, and the path it points to is copied too. Absolute targets
//! therefore resolve inside the rootfs after pivot_root, exactly as on the host.
//!
//! Writes go only to staged paths whose host counterparts are real directories, so no symlink
//! created in the staging tree is ever followed while building it.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::output::Fingerprint;

/// ELOOP's limit in the kernel, used for the same purpose here.
const MAX_SYMLINK_HOPS: u32 = 40;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{path} does not exist on the host (while resolving {requested})")]
    Missing { path: PathBuf, requested: PathBuf },
    #[error("too many levels of symbolic links resolving {path}")]
    SymlinkLoop { path: PathBuf },
    #[error("{path}: a non-directory is used as a directory (while resolving {requested})")]
    NotADirectory { path: PathBuf, requested: PathBuf },
    #[error("{path} is a device, fifo or socket; only files, directories and symlinks can be copied from the host")]
    Special { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a copied regular file's permission bits are derived from the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// Host permission bits without setuid/setgid/sticky.
    AsHost,
    /// Also without execute bits: data (such as a standard library) is not a program.
    NoExec,
}

/// The staging tree being filled from the host, and the host inputs read so far.
#[derive(Debug)]
pub struct HostCopy {
    root: PathBuf,
    /// The staging tree's real path: a copied host directory that contains it (say
    /// `--with /tmp` while building in /tmp) must not copy it into itself.
    real_root: PathBuf,
    done: HashSet<PathBuf>,
    inputs: BTreeMap<PathBuf, Option<Fingerprint>>,
}

impl HostCopy {
    pub fn new(root: &Path) -> Self {
        HostCopy {
            root: root.to_path_buf(),
            real_root: fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf()),
            done: HashSet::new(),
            inputs: BTreeMap::new(),
        }
    }

    /// Where a host (or rootfs) absolute path lives in the staging tree.
    pub fn staged(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Records a host path that steered the build (its absence counts too).
    pub fn note_input(&mut self, path: &Path) {
        self.inputs
            .entry(path.to_path_buf())
            .or_insert_with(|| Fingerprint::of(path));
    }

    pub fn inputs(&self) -> impl Iterator<Item = (&PathBuf, &Option<Fingerprint>)> {
        self.inputs.iter()
    }

    /// Copies `host` (with every symlink on its way) and returns the real path it names.
    pub fn add(&mut self, host: &Path, mode: FileMode) -> Result<PathBuf, CopyError> {
        let absolute;
        let host = if host.is_absolute() {
            host
        } else {
            absolute = std::path::absolute(host).map_err(io(host))?;
            &absolute
        };
        let mut pending: VecDeque<OsString> = normal_components(host);
        let mut cur = PathBuf::from("/");
        let mut hops = 0;
        while let Some(c) = pending.pop_front() {
            if c == ".." {
                // `cur` holds no symlinks, so dropping its last component is exact.
                cur.pop();
                continue;
            }
            let next = cur.join(&c);
            let meta = match fs::symlink_metadata(&next) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(CopyError::Missing {
                        path: next,
                        requested: host.to_path_buf(),
                    })
                }
                Err(e) => return Err(io(&next)(e)),
            };
            if meta.is_symlink() {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(CopyError::SymlinkLoop {
                        path: host.to_path_buf(),
                    });
                }
                let target = fs::read_link(&next).map_err(io(&next))?;
                self.place_symlink(&next, &target, &meta)?;
                let mut resolved = normal_components(&target);
                resolved.extend(pending);
                pending = resolved;
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
            } else if meta.is_dir() {
                self.place_dir(&next, &meta)?;
                cur = next;
            } else if pending.is_empty() {
                self.place_file(&next, &meta, mode)?;
                cur = next;
            } else {
                return Err(CopyError::NotADirectory {
                    path: next,
                    requested: host.to_path_buf(),
                });
            }
        }
        Ok(cur)
    }

    /// Copies the directory `host` and what is below it that `keep` accepts (called with the
    /// path relative to `host` and whether it is a directory). Symlinks inside are kept as
    /// symlinks, and what they point to is copied as well.
    pub fn add_tree(
        &mut self,
        host: &Path,
        mode: FileMode,
        keep: &dyn Fn(&Path, bool) -> bool,
    ) -> Result<PathBuf, CopyError> {
        let real = self.add(host, mode)?;
        if fs::symlink_metadata(&real)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            self.copy_dir_contents(&real, Path::new(""), mode, keep)?;
        }
        Ok(real)
    }

    fn copy_dir_contents(
        &mut self,
        base: &Path,
        rel: &Path,
        mode: FileMode,
        keep: &dyn Fn(&Path, bool) -> bool,
    ) -> Result<(), CopyError> {
        let dir = base.join(rel);
        self.note_input(&dir);
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .collect::<Result<_, _>>()
            .map_err(io(&dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child_rel = rel.join(entry.file_name());
            let path = base.join(&child_rel);
            if path == self.real_root {
                continue;
            }
            let meta = fs::symlink_metadata(&path).map_err(io(&path))?;
            if !keep(&child_rel, meta.is_dir()) {
                continue;
            }
            if meta.is_symlink() {
                self.add(&path, mode)?;
            } else if meta.is_dir() {
                self.place_dir(&path, &meta)?;
                self.copy_dir_contents(base, &child_rel, mode, keep)?;
            } else {
                self.place_file(&path, &meta, mode)?;
            }
        }
        Ok(())
    }

    fn place_dir(&mut self, host: &Path, meta: &fs::Metadata) -> Result<(), CopyError> {
        if !self.done.insert(host.to_path_buf()) {
            return Ok(());
        }
        let staged = self.staged(host);
        if host == Path::new("/") {
            return Ok(());
        }
        match fs::create_dir(&staged) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&staged)(e)),
        }
        // Everyone may traverse and list: a job runs as an unprivileged (often user-namespace
        // mapped) user and must reach what the rootfs holds, even below a host's 0700 /root.
        // The owner keeps write access so the build can fill it; suid/sgid bits are dropped.
        let perm = (meta.mode() & 0o777) | 0o755;
        fs::set_permissions(&staged, fs::Permissions::from_mode(perm)).map_err(io(&staged))
    }

    fn place_file(
        &mut self,
        host: &Path,
        meta: &fs::Metadata,
        mode: FileMode,
    ) -> Result<(), CopyError> {
        if !self.done.insert(host.to_path_buf()) {
            return Ok(());
        }
        self.inputs
            .insert(host.to_path_buf(), Some(Fingerprint::from(meta)));
        if !meta.is_file() {
            return Err(CopyError::Special {
                path: host.to_path_buf(),
            });
        }
        let staged = self.staged(host);
        fs::copy(host, &staged).map_err(io(host))?;
        let mut perm = meta.mode() & 0o777;
        if mode == FileMode::NoExec {
            perm &= !0o111;
        }
        fs::set_permissions(&staged, fs::Permissions::from_mode(perm)).map_err(io(&staged))
    }

    fn place_symlink(
        &mut self,
        host: &Path,
        target: &Path,
        meta: &fs::Metadata,
    ) -> Result<(), CopyError> {
        if !self.done.insert(host.to_path_buf()) {
            return Ok(());
        }
        self.inputs
            .insert(host.to_path_buf(), Some(Fingerprint::from(meta)));
        let staged = self.staged(host);
        std::os::unix::fs::symlink(target, &staged).map_err(io(&staged))
    }

    /// Writes a file the builder makes itself (e.g. /etc/passwd) unless one was copied there.
    pub fn write_new(&mut self, path: &Path, contents: &[u8], perm: u32) -> Result<(), CopyError> {
        let staged = self.staged(path);
        if fs::symlink_metadata(&staged).is_ok() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            self.mkdir_new(parent, 0o755)?;
        }
        fs::write(&staged, contents).map_err(io(&staged))?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(perm)).map_err(io(&staged))
    }

    /// Makes a directory (and its parents) unless something is there already.
    pub fn mkdir_new(&mut self, path: &Path, perm: u32) -> Result<(), CopyError> {
        let mut cur = self.root.clone();
        for c in normal_components(path) {
            cur.push(c);
            if fs::symlink_metadata(&cur).is_err() {
                fs::create_dir(&cur).map_err(io(&cur))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(perm)).map_err(io(&cur))?;
            }
        }
        Ok(())
    }

    /// Adds a symlink the builder makes itself unless the path is taken.
    pub fn symlink_new(&mut self, path: &Path, target: &Path) -> Result<(), CopyError> {
        let staged = self.staged(path);
        if fs::symlink_metadata(&staged).is_ok() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            self.mkdir_new(parent, 0o755)?;
        }
        std::os::unix::fs::symlink(target, &staged).map_err(io(&staged))
    }
}

/// The components of `path` that name something, `..` kept for the caller to apply.
fn normal_components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_kept_and_followed() {
        let host = tempfile::tempdir().unwrap();
        let h = host.path();
        fs::create_dir_all(h.join("real/lib")).unwrap();
        fs::write(h.join("real/lib/libx.so.1.2"), "x").unwrap();
        std::os::unix::fs::symlink("libx.so.1.2", h.join("real/lib/libx.so.1")).unwrap();
        std::os::unix::fs::symlink("real", h.join("alias")).unwrap();
        let stage = tempfile::tempdir().unwrap();
        let mut copy = HostCopy::new(stage.path());
        let real = copy
            .add(&h.join("alias/lib/libx.so.1"), FileMode::AsHost)
            .unwrap();
        assert_eq!(real, h.join("real/lib/libx.so.1.2"));
        let s = |p: &Path| copy.staged(p);
        assert_eq!(
            fs::read_link(s(&h.join("alias"))).unwrap(),
            Path::new("real")
        );
        assert_eq!(
            fs::read_link(s(&h.join("real/lib/libx.so.1"))).unwrap(),
            Path::new("libx.so.1.2")
        );
        assert_eq!(fs::read(s(&real)).unwrap(), b"x");
    }
}
