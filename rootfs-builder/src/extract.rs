//! Layer extraction that cannot write outside its root.
//!
//! The `tar` crate only parses; every file-system operation here is relative to a directory
//! file descriptor, and each path is walked one component at a time with `O_NOFOLLOW`, so
//! no symlink is ever followed while extracting:
//! - `..` components are refused (the whole archive is rejected);
//! - absolute names are taken relative to the root;
//! - a parent that is a symlink (say `etc -> /` from a lower layer, then `etc/passwd`) is refused;
//! - the final component is unlinked and recreated with `O_CREAT|O_EXCL|O_NOFOLLOW`, so an
//!   existing symlink at that name is replaced, never written through;
//! - hard-link targets are walked the same way inside the root, so they cannot name an
//!   outside file.
//!
//! OCI whiteouts (`.wh.NAME`) remove the named entry of lower layers and opaque markers
//! (`.wh..wh..opq`) empty a directory of lower-layer content.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(
        "{layer}: entry {entry} has a '..' component and could escape the rootfs; archive rejected"
    )]
    Traversal { layer: String, entry: PathBuf },
    #[error("{layer}: entry {entry} goes through {component}, which is a symlink or not a directory; refusing to write through it")]
    ThroughNonDirectory {
        layer: String,
        entry: PathBuf,
        component: PathBuf,
    },
    #[error("{layer}: hard link {entry} -> {target}: the target is not an earlier file inside the rootfs")]
    BadHardlink {
        layer: String,
        entry: PathBuf,
        target: PathBuf,
    },
    #[error("{layer}: corrupt or truncated tar archive: {source}")]
    Corrupt {
        layer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{layer}: {op} {entry}: {source}")]
    Io {
        layer: String,
        op: &'static str,
        entry: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("open extraction root {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Added to every uid/gid from the archive, for a rootfs used under a user-namespace mapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdShift {
    pub uid: u32,
    pub gid: u32,
}

/// How entries are applied.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Apply OCI whiteouts (image layers) or keep `.wh.` files as data (plain archives).
    pub whiteouts: bool,
    /// Set owners from the archive (only possible as root).
    pub ownership: bool,
    pub shift: IdShift,
    /// Create device nodes and fifos (image layers, as root); an outer archive of blobs has
    /// no business holding any.
    pub devices: bool,
}

/// Extracts layers into one root, in order.
pub struct Extractor {
    root: OwnedFd,
    opts: Options,
    can_chown: bool,
    /// Directory mtimes are set after everything, since later entries bump them.
    dir_times: Vec<(Vec<OsString>, i64)>,
    /// Directories made for entries whose parents the archive never listed; they get a fixed
    /// mtime so that the same archive always gives the same tree.
    implicit_dirs: Vec<Vec<OsString>>,
}

/// Context for one entry's errors.
struct Ctx<'a> {
    layer: &'a str,
    entry: &'a Path,
}

impl Ctx<'_> {
    fn io(&self, op: &'static str) -> impl FnOnce(Errno) -> ExtractError + '_ {
        move |e| ExtractError::Io {
            layer: self.layer.to_owned(),
            op,
            entry: self.entry.to_path_buf(),
            source: e.into(),
        }
    }
}

impl Extractor {
    /// Opens `root` (which must exist) as the extraction root.
    pub fn new(root: &Path, opts: Options) -> Result<Self, ExtractError> {
        let root_fd = rfs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ExtractError::Root {
            path: root.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Extractor {
            root: root_fd,
            opts,
            can_chown: opts.ownership && rustix::process::geteuid().is_root(),
            dir_times: Vec::new(),
            implicit_dirs: Vec::new(),
        })
    }

    /// Applies one uncompressed tar stream; `layer` names it in errors.
    pub fn apply(&mut self, reader: impl Read, layer: &str) -> Result<(), ExtractError> {
        let corrupt = |source| ExtractError::Corrupt {
            layer: layer.to_owned(),
            source,
        };
        let mut archive = tar::Archive::new(reader);
        // Paths of this layer's entries and their ancestors: an opaque marker must not
        // remove what the same layer put there.
        let mut created: HashSet<Vec<OsString>> = HashSet::new();
        let mut opaque: Vec<Vec<OsString>> = Vec::new();
        for entry in archive.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            let raw = entry.path().map_err(corrupt)?.into_owned();
            let ctx = Ctx { layer, entry: &raw };
            let comps = clean(&raw, &ctx)?;
            let Some((name, parent)) = comps.split_last() else {
                // The root itself ("./"): its mode and owner, if the archive gives them.
                if entry.header().entry_type() == tar::EntryType::Directory {
                    self.root_entry(entry.header(), &ctx)?;
                }
                continue;
            };
            let name_str = name.to_string_lossy();
            if self.opts.whiteouts && name_str.starts_with(WHITEOUT_PREFIX) {
                if name_str == OPAQUE_MARKER {
                    opaque.push(parent.to_vec());
                } else if let Some(victim) = name_str.strip_prefix(WHITEOUT_PREFIX) {
                    let mut victim_path = parent.to_vec();
                    victim_path.push(OsString::from(victim));
                    // Whiteouts hide lower layers only, never what this layer already wrote.
                    if !victim.starts_with(WHITEOUT_PREFIX)
                        && !victim.is_empty()
                        && !created.contains(&victim_path)
                    {
                        self.remove(parent, OsStr::new(victim), &ctx)?;
                    }
                }
                continue;
            }
            for i in 1..=comps.len() {
                created.insert(comps[..i].to_vec());
            }
            self.entry(&mut entry, parent, name, &ctx)?;
        }
        for dir in opaque {
            let ctx = Ctx {
                layer,
                entry: Path::new(OPAQUE_MARKER),
            };
            self.make_opaque(&dir, &created, &ctx)?;
        }
        Ok(())
    }

    /// Gives the root directory the (shifted) owner root, before any layer: a runtime in a
    /// user namespace then owns its rootfs. A `./` entry in a layer overrides this.
    pub fn own_root(&self) -> Result<(), ExtractError> {
        if !self.can_chown {
            return Ok(());
        }
        rfs::fchown(
            &self.root_dir().map_err(|e| self.root_err(e))?,
            Some(rustix::fs::Uid::from_raw(self.opts.shift.uid)),
            Some(rustix::fs::Gid::from_raw(self.opts.shift.gid)),
        )
        .map_err(|e| self.root_err(e))
    }

    /// Makes the mount points a runtime needs (`proc`, `dev`, ...) where the image has none:
    /// with a read-only rootfs the runtime could not create them itself.
    pub fn ensure_dirs(&mut self, dirs: &[(&str, u32)]) -> Result<(), ExtractError> {
        for (name, mode) in dirs {
            match rfs::statat(&self.root, *name, AtFlags::SYMLINK_NOFOLLOW) {
                Err(Errno::NOENT) => {}
                Ok(_) => continue,
                Err(e) => return Err(self.root_err(e)),
            }
            rfs::mkdirat(&self.root, *name, Mode::from_raw_mode(0o700))
                .map_err(|e| self.root_err(e))?;
            let fd = rfs::openat(
                &self.root,
                *name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.root_err(e))?;
            let ctx = Ctx {
                layer: "mount points",
                entry: Path::new(name),
            };
            self.set_owner_mode(&fd, 0, 0, *mode, &ctx)?;
            self.implicit_dirs.push(vec![OsString::from(name)]);
        }
        Ok(())
    }

    fn root_dir(&self) -> Result<OwnedFd, Errno> {
        rfs::openat(
            &self.root,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    }

    fn root_err(&self, e: Errno) -> ExtractError {
        ExtractError::Root {
            path: PathBuf::from("."),
            source: e.into(),
        }
    }

    fn root_entry(&self, header: &tar::Header, ctx: &Ctx<'_>) -> Result<(), ExtractError> {
        let fd = self.root_dir().map_err(ctx.io("open root"))?;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mode = header.mode().unwrap_or(0o755) & 0o7777;
        self.set_owner_mode(&fd, uid, gid, mode, ctx)
    }

    /// Sets the directory mtimes recorded during extraction; call once after the last layer.
    pub fn finish(self) -> Result<(), ExtractError> {
        let implicit = self
            .implicit_dirs
            .iter()
            .map(|c| (c.clone(), crate::output::FIXED_MTIME));
        let all: Vec<(Vec<OsString>, i64)> =
            implicit.chain(self.dir_times.iter().cloned()).collect();
        for (comps, mtime) in &all {
            let Some((name, parent)) = comps.split_last() else {
                continue;
            };
            // A later layer may have replaced a parent with a symlink: then skip.
            let Ok(Some(dir)) = self.open_dir(parent, None) else {
                continue;
            };
            let _ = rfs::utimensat(&dir, name, &times(*mtime), AtFlags::SYMLINK_NOFOLLOW);
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &[OsString],
        name: &OsString,
        ctx: &Ctx<'_>,
    ) -> Result<(), ExtractError> {
        let dir = self.require_dir(parent, ctx)?;
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = header.mtime().unwrap_or(0) as i64;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let xattrs = xattrs(entry);
        match kind {
            tar::EntryType::Directory => {
                let existing = rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).ok();
                let is_dir = existing
                    .map(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory)
                    .unwrap_or(false);
                if !is_dir {
                    if existing.is_some() {
                        remove_at(&dir, name).map_err(ctx.io("replace"))?;
                    }
                    rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))
                        .map_err(ctx.io("mkdir"))?;
                }
                let fd = rfs::openat(
                    &dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(ctx.io("open directory"))?;
                self.set_owner_mode(&fd, uid, gid, mode, ctx)?;
                set_xattrs(&fd, &xattrs);
                let mut comps = parent.to_vec();
                comps.push(name.clone());
                self.dir_times.push((comps, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                replace(&dir, name, ctx)?;
                let fd = rfs::openat(
                    &dir,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(ctx.io("create"))?;
                let mut file = File::from(fd);
                std::io::copy(entry, &mut file).map_err(|source| ExtractError::Corrupt {
                    layer: ctx.layer.to_owned(),
                    source,
                })?;
                self.set_owner_mode(&file, uid, gid, mode, ctx)?;
                set_xattrs(&file, &xattrs);
                rfs::futimens(&file, &times(mtime)).map_err(ctx.io("set times"))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|source| ExtractError::Corrupt {
                        layer: ctx.layer.to_owned(),
                        source,
                    })?
                    .unwrap_or_default()
                    .into_owned();
                replace(&dir, name, ctx)?;
                // The target text is stored as is: it is never followed here, and after
                // pivot_root the kernel resolves it inside the rootfs.
                rfs::symlinkat(&target, &dir, name).map_err(ctx.io("symlink"))?;
                if self.can_chown {
                    rfs::chownat(
                        &dir,
                        name,
                        self.shifted_uid(uid),
                        self.shifted_gid(gid),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(ctx.io("chown"))?;
                }
                let _ = rfs::utimensat(&dir, name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW);
            }
            tar::EntryType::Link => self.hardlink(entry, &dir, name, ctx)?,
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                self.special(entry, &dir, name, uid, gid, mode, ctx)?;
            }
            other => {
                tracing::debug!(entry = %ctx.entry.display(), kind = ?other, "skipping tar entry type");
            }
        }
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        dir: &OwnedFd,
        name: &OsString,
        ctx: &Ctx<'_>,
    ) -> Result<(), ExtractError> {
        let target = entry
            .link_name()
            .map_err(|source| ExtractError::Corrupt {
                layer: ctx.layer.to_owned(),
                source,
            })?
            .unwrap_or_default()
            .into_owned();
        let bad = || ExtractError::BadHardlink {
            layer: ctx.layer.to_owned(),
            entry: ctx.entry.to_path_buf(),
            target: target.clone(),
        };
        let tcomps = clean(&target, ctx)?;
        let (tname, tparent) = tcomps.split_last().ok_or_else(bad)?;
        let tdir = self
            .open_dir(tparent, None)
            .ok()
            .flatten()
            .ok_or_else(bad)?;
        let st = rfs::statat(&tdir, tname, AtFlags::SYMLINK_NOFOLLOW).map_err(|_| bad())?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Err(bad());
        }
        replace(dir, name, ctx)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
        rfs::linkat(&tdir, tname, dir, name, AtFlags::empty()).map_err(ctx.io("hard link"))
    }

    #[allow(clippy::too_many_arguments)]
    fn special<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        dir: &OwnedFd,
        name: &OsString,
        uid: u32,
        gid: u32,
        mode: u32,
        ctx: &Ctx<'_>,
    ) -> Result<(), ExtractError> {
        if !self.opts.devices {
            tracing::debug!(entry = %ctx.entry.display(), "skipping special file");
            return Ok(());
        }
        let header = entry.header();
        let (ftype, dev) = match header.entry_type() {
            tar::EntryType::Fifo => (FileType::Fifo, 0),
            kind => {
                // Device nodes need CAP_MKNOD; an unprivileged build leaves them to the
                // runtime, which creates /dev itself anyway.
                if !rustix::process::geteuid().is_root() {
                    tracing::debug!(entry = %ctx.entry.display(), "skipping device node: not root");
                    return Ok(());
                }
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let t = if kind == tar::EntryType::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                (t, rfs::makedev(major, minor))
            }
        };
        replace(dir, name, ctx)?;
        match rfs::mknodat(dir, name, ftype, Mode::from_raw_mode(0o600), dev) {
            Ok(()) => {}
            Err(Errno::PERM) => {
                tracing::warn!(entry = %ctx.entry.display(), "skipping device node: mknod not permitted");
                return Ok(());
            }
            Err(e) => return Err(ctx.io("mknod")(e)),
        }
        if self.can_chown {
            rfs::chownat(
                dir,
                name,
                self.shifted_uid(uid),
                self.shifted_gid(gid),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(ctx.io("chown"))?;
        }
        rfs::chmodat(dir, name, Mode::from_raw_mode(mode), AtFlags::empty())
            .map_err(ctx.io("chmod"))
    }

    /// The owner on disk for an archive uid. Ids past u32 saturate to -1, which chown reads as
    /// "leave unchanged": the file stays the builder's, never someone else's.
    fn shifted_uid(&self, uid: u32) -> Option<rustix::fs::Uid> {
        Some(rustix::fs::Uid::from_raw(
            uid.saturating_add(self.opts.shift.uid),
        ))
    }

    fn shifted_gid(&self, gid: u32) -> Option<rustix::fs::Gid> {
        Some(rustix::fs::Gid::from_raw(
            gid.saturating_add(self.opts.shift.gid),
        ))
    }

    fn set_owner_mode(
        &self,
        fd: impl AsFd,
        uid: u32,
        gid: u32,
        mode: u32,
        ctx: &Ctx<'_>,
    ) -> Result<(), ExtractError> {
        if self.can_chown {
            rfs::fchown(&fd, self.shifted_uid(uid), self.shifted_gid(gid))
                .map_err(ctx.io("chown"))?;
        }
        // After chown, which clears setuid/setgid bits.
        rfs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(ctx.io("chmod"))
    }

    /// Opens (and with `create`, makes) the directory `comps` below the root without following
    /// any symlink. `Ok(None)`: missing and not created. `Err(index)`: component `index` is a
    /// symlink or not a directory.
    fn open_dir(
        &self,
        comps: &[OsString],
        mut create: Option<&mut Vec<Vec<OsString>>>,
    ) -> Result<Option<OwnedFd>, usize> {
        let mut cur = rfs::openat(
            &self.root,
            ".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|_| 0usize)?;
        for (i, c) in comps.iter().enumerate() {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            cur = match rfs::openat(&cur, c, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create.is_some() => {
                    match rfs::mkdirat(&cur, c, Mode::from_raw_mode(0o755)) {
                        Ok(()) => {
                            if let Some(made) = create.as_deref_mut() {
                                made.push(comps[..=i].to_vec());
                            }
                        }
                        Err(Errno::EXIST) => {}
                        Err(_) => return Err(i),
                    }
                    rfs::openat(&cur, c, flags, Mode::empty()).map_err(|_| i)?
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(_) => return Err(i),
            };
        }
        Ok(Some(cur))
    }

    fn require_dir(&mut self, comps: &[OsString], ctx: &Ctx<'_>) -> Result<OwnedFd, ExtractError> {
        let mut made = Vec::new();
        let result = self.open_dir(comps, Some(&mut made));
        self.implicit_dirs.extend(made);
        match result {
            Ok(Some(fd)) => Ok(fd),
            Ok(None) => unreachable!("open_dir creates missing directories"),
            Err(i) => Err(ExtractError::ThroughNonDirectory {
                layer: ctx.layer.to_owned(),
                entry: ctx.entry.to_path_buf(),
                component: comps[..=i].iter().collect(),
            }),
        }
    }

    /// A whiteout: removes `parent/name` if it exists. A parent that is missing or a symlink
    /// holds nothing of the rootfs to remove.
    fn remove(&self, parent: &[OsString], name: &OsStr, ctx: &Ctx<'_>) -> Result<(), ExtractError> {
        let Ok(Some(dir)) = self.open_dir(parent, None) else {
            return Ok(());
        };
        match remove_at(&dir, name) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(ctx.io("whiteout")(e)),
        }
    }

    /// An opaque directory: everything in it that this layer did not add goes, also below
    /// subdirectories that this layer lists again.
    fn make_opaque(
        &mut self,
        comps: &[OsString],
        created: &HashSet<Vec<OsString>>,
        ctx: &Ctx<'_>,
    ) -> Result<(), ExtractError> {
        let dir = self.require_dir(comps, ctx)?;
        prune(&dir, comps, created).map_err(ctx.io("opaque"))
    }
}

/// Removes what is below `dir` (at `comps`) and not in `created`, never following symlinks.
fn prune(dir: &OwnedFd, comps: &[OsString], created: &HashSet<Vec<OsString>>) -> Result<(), Errno> {
    for child in list_dir(dir)? {
        let mut path = comps.to_vec();
        path.push(child.clone());
        if !created.contains(&path) {
            remove_at(dir, &child)?;
            continue;
        }
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if let Ok(sub) = rfs::openat(dir, &child, flags, Mode::empty()) {
            prune(&sub, &path, created)?;
        }
    }
    Ok(())
}

/// The entry's path as components below the root: `.` and `/` dropped, `..` refused.
fn clean(path: &Path, ctx: &Ctx<'_>) -> Result<Vec<OsString>, ExtractError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => {
                return Err(ExtractError::Traversal {
                    layer: ctx.layer.to_owned(),
                    entry: ctx.entry.to_path_buf(),
                })
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// Clears the way for a new non-directory entry at `dir/name`.
fn replace(dir: &OwnedFd, name: &OsStr, ctx: &Ctx<'_>) -> Result<(), ExtractError> {
    match remove_at(dir, name) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(ctx.io("replace")(e)),
    }
}

/// Removes `dir/name`, recursively for directories, never following symlinks.
fn remove_at(dir: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
    let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rfs::unlinkat(dir, name, AtFlags::empty());
    }
    let child = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for entry in list_dir(&child)? {
        remove_at(&child, &entry)?;
    }
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

fn list_dir(dir: &OwnedFd) -> Result<Vec<OsString>, Errno> {
    // Dir needs a readable descriptor, not an O_PATH one.
    let readable = rfs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(&readable)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

fn times(secs: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// `SCHILY.xattr.*` PAX records (how GNU tar, Docker and umoci store xattrs).
fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(String, Vec<u8>)> {
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return Vec::new();
    };
    exts.filter_map(Result::ok)
        .filter_map(|e| {
            let key = e.key().ok()?;
            let name = key.strip_prefix("SCHILY.xattr.")?;
            Some((name.to_owned(), e.value_bytes().to_vec()))
        })
        .collect()
}

/// Best effort: the file system or the caller's privileges may not allow a given namespace.
fn set_xattrs(fd: impl AsFd, xattrs: &[(String, Vec<u8>)]) {
    for (name, value) in xattrs {
        if let Err(e) = rfs::fsetxattr(&fd, name.as_str(), value, rfs::XattrFlags::empty()) {
            tracing::debug!(xattr = %name, error = %e, "xattr not set");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_strips_root_and_refuses_parent() {
        let ctx = Ctx {
            layer: "l",
            entry: Path::new("x"),
        };
        let c = clean(Path::new("/./etc//passwd"), &ctx).unwrap();
        assert_eq!(c, vec![OsString::from("etc"), OsString::from("passwd")]);
        assert!(matches!(
            clean(Path::new("a/../../b"), &ctx),
            Err(ExtractError::Traversal { .. })
        ));
    }
}
