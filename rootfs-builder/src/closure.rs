//! The shared-library closure of an ELF program, found the way glibc's ld.so finds it:
//! `DT_RPATH` (of the object and its loaders, when the object has no `DT_RUNPATH`), `DT_RUNPATH`,
//! `/etc/ld.so.cache` (or `ld.so.conf` where there is no cache), then the built-in directories.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use crate::elf::{self, Class, ElfError, ElfInfo};
use crate::ldcache::{self, LdCache, LdCacheError};

const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    LdCache(#[from] LdCacheError),
    #[error("library {name} needed by {needed_by} not found in its rpath/runpath, ld.so.cache or the default directories; install it or add it with --with")]
    MissingLibrary { name: String, needed_by: PathBuf },
    #[error("{path} is not an ELF file, but {needed_by} needs it as library {name}")]
    NotElfLibrary {
        name: String,
        path: PathBuf,
        needed_by: PathBuf,
    },
    #[error("interpreter {interp} of {program} does not exist")]
    MissingInterpreter { interp: PathBuf, program: PathBuf },
}

/// Finds libraries for many programs, sharing the parsed cache and what it learned.
#[derive(Debug)]
pub struct Resolver {
    cache: Option<LdCache>,
    conf_dirs: Vec<PathBuf>,
    /// Directories whose listing decided a lookup (inputs of the build's content key).
    pub probed_dirs: BTreeSet<PathBuf>,
}

/// One object to load and the RPATHs it inherits from the objects that loaded it.
struct Pending {
    path: PathBuf,
    info: ElfInfo,
    inherited_rpath: Vec<PathBuf>,
}

impl Resolver {
    /// Reads the host's linker configuration under `root` (normally `/`).
    pub fn new(root: &Path) -> Result<Self, ClosureError> {
        let cache = LdCache::load(&root.join("etc/ld.so.cache"))?;
        let conf_dirs = if cache.is_none() {
            ldcache::conf_dirs(&root.join("etc/ld.so.conf"))
        } else {
            Vec::new()
        };
        Ok(Resolver {
            cache,
            conf_dirs,
            probed_dirs: BTreeSet::new(),
        })
    }

    /// The host's parsed ld.so.cache, if it has one.
    pub fn ld_cache(&self) -> Option<&LdCache> {
        self.cache.as_ref()
    }

    /// The interpreter and every library `program` loads, as host paths in the form they were
    /// found (possibly symlinks), the program itself excluded. A static program has none.
    pub fn closure(&mut self, program: &Path) -> Result<Vec<PathBuf>, ClosureError> {
        let root = elf::read(program)?;
        let mut found = Vec::new();
        if let Some(interp) = &root.interp {
            let interp = PathBuf::from(interp);
            if !interp.exists() {
                return Err(ClosureError::MissingInterpreter {
                    interp,
                    program: program.to_path_buf(),
                });
            }
            found.push(interp);
        }
        // $ORIGIN of the main program is where it really lives (ld.so reads /proc/self/exe).
        let real = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
        let mut queue = VecDeque::from([Pending {
            path: real,
            info: root.clone(),
            inherited_rpath: Vec::new(),
        }]);
        let mut seen_names: HashSet<String> = HashSet::new();
        while let Some(obj) = queue.pop_front() {
            let own_rpath = if obj.info.runpath.is_empty() {
                self.expand(&obj.info.rpath, &obj.path, obj.info.class)
            } else {
                Vec::new()
            };
            let runpath = self.expand(&obj.info.runpath, &obj.path, obj.info.class);
            let mut rpath_chain = own_rpath;
            rpath_chain.extend(obj.inherited_rpath.iter().cloned());
            for name in &obj.info.needed {
                if !seen_names.insert(name.clone()) {
                    continue;
                }
                let (path, info) = self.find(name, &root, &rpath_chain, &runpath, &obj.path)?;
                found.push(path.clone());
                queue.push_back(Pending {
                    path,
                    info,
                    inherited_rpath: rpath_chain.clone(),
                });
            }
        }
        Ok(found)
    }

    /// Expands `$ORIGIN`, `$LIB` and `$PLATFORM` in RPATH/RUNPATH entries of `object`.
    fn expand(&self, dirs: &[String], object: &Path, class: Class) -> Vec<PathBuf> {
        let origin = object.parent().unwrap_or(Path::new("/")).to_string_lossy();
        let lib = if class == Class::Elf64 {
            "lib64"
        } else {
            "lib"
        };
        dirs.iter()
            .map(|d| {
                let d = d
                    .replace("${ORIGIN}", &origin)
                    .replace("$ORIGIN", &origin)
                    .replace("${LIB}", lib)
                    .replace("$LIB", lib)
                    .replace("${PLATFORM}", std::env::consts::ARCH)
                    .replace("$PLATFORM", std::env::consts::ARCH);
                PathBuf::from(d)
            })
            .collect()
    }

    fn find(
        &mut self,
        name: &str,
        root: &ElfInfo,
        rpath: &[PathBuf],
        runpath: &[PathBuf],
        needed_by: &Path,
    ) -> Result<(PathBuf, ElfInfo), ClosureError> {
        let mut not_elf = None;
        if name.contains('/') {
            if let Some(hit) = self.try_candidate(Path::new(name), root, &mut not_elf)? {
                return Ok(hit);
            }
        } else {
            let defaults = default_dirs(root);
            let cached: Vec<PathBuf> = self
                .cache
                .as_ref()
                .map(|c| c.lookup(name).map(Path::to_path_buf).collect())
                .unwrap_or_default();
            let conf: Vec<PathBuf> = self.conf_dirs.iter().map(|d| d.join(name)).collect();
            let explicit = rpath.iter().chain(runpath).map(|d| d.join(name));
            for cand in explicit.clone() {
                if let Some(hit) = self.try_candidate(&cand, root, &mut not_elf)? {
                    return Ok(hit);
                }
            }
            for cand in cached.iter().chain(&conf) {
                if let Some(hit) = self.try_candidate(cand, root, &mut not_elf)? {
                    return Ok(hit);
                }
            }
            for dir in &defaults {
                if let Some(hit) = self.try_candidate(&dir.join(name), root, &mut not_elf)? {
                    return Ok(hit);
                }
            }
        }
        match not_elf {
            Some(path) => Err(ClosureError::NotElfLibrary {
                name: name.to_owned(),
                path,
                needed_by: needed_by.to_path_buf(),
            }),
            None => Err(ClosureError::MissingLibrary {
                name: name.to_owned(),
                needed_by: needed_by.to_path_buf(),
            }),
        }
    }

    /// A candidate is taken when it is an ELF object of the program's class and machine;
    /// others are skipped as ld.so skips them (e.g. a 32-bit library in a shared directory).
    fn try_candidate(
        &mut self,
        cand: &Path,
        root: &ElfInfo,
        not_elf: &mut Option<PathBuf>,
    ) -> Result<Option<(PathBuf, ElfInfo)>, ClosureError> {
        if let Some(dir) = cand.parent() {
            self.probed_dirs.insert(dir.to_path_buf());
        }
        if !cand.is_file() {
            return Ok(None);
        }
        match elf::read(cand) {
            Ok(info) if root.compatible(&info) => Ok(Some((cand.to_path_buf(), info))),
            Ok(_) => Ok(None),
            Err(ElfError::NotElf { .. }) => {
                not_elf.get_or_insert_with(|| cand.to_path_buf());
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The linker's built-in directories, multiarch ones first (Debian's ld.so searches them).
fn default_dirs(root: &ElfInfo) -> Vec<PathBuf> {
    let triplet = match (root.class, root.machine) {
        (Class::Elf64, EM_X86_64) => Some("x86_64-linux-gnu"),
        (Class::Elf64, EM_AARCH64) => Some("aarch64-linux-gnu"),
        (Class::Elf32, EM_386) => Some("i386-linux-gnu"),
        _ => None,
    };
    let mut dirs = Vec::new();
    if let Some(t) = triplet {
        dirs.push(PathBuf::from(format!("/lib/{t}")));
        dirs.push(PathBuf::from(format!("/usr/lib/{t}")));
    }
    if root.class == Class::Elf64 {
        dirs.push(PathBuf::from("/lib64"));
        dirs.push(PathBuf::from("/usr/lib64"));
    }
    dirs.push(PathBuf::from("/lib"));
    dirs.push(PathBuf::from("/usr/lib"));
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_needs_libc_and_loader() {
        let mut r = Resolver::new(Path::new("/")).unwrap();
        let libs = r.closure(Path::new("/bin/sh")).unwrap();
        assert!(libs
            .iter()
            .any(|p| p.to_string_lossy().contains("ld-linux")));
        assert!(libs.iter().any(|p| p.ends_with("libc.so.6")));
    }

    #[test]
    fn origin_and_lib_are_expanded() {
        let r = Resolver::new(Path::new("/")).unwrap();
        let dirs = vec!["$ORIGIN/../lib".to_string(), "${ORIGIN}/x:$LIB".to_string()];
        let got = r.expand(&dirs, Path::new("/opt/app/bin/tool"), Class::Elf64);
        assert_eq!(
            got,
            vec![
                PathBuf::from("/opt/app/bin/../lib"),
                PathBuf::from("/opt/app/bin/x:lib64")
            ]
        );
    }

    #[test]
    fn missing_library_names_library_and_needer() {
        let mut r = Resolver::new(Path::new("/")).unwrap();
        let root = elf::read(Path::new("/bin/sh")).unwrap();
        let err = r
            .find("libdoesnotexist.so.9", &root, &[], &[], Path::new("/bin/x"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("libdoesnotexist.so.9") && msg.contains("/bin/x"),
            "{msg}"
        );
    }

    #[test]
    fn non_elf_library_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("libfake.so.1"), "not a library").unwrap();
        let mut r = Resolver::new(Path::new("/")).unwrap();
        let root = elf::read(Path::new("/bin/sh")).unwrap();
        let err = r
            .find(
                "libfake.so.1",
                &root,
                &[dir.path().to_path_buf()],
                &[],
                Path::new("/bin/x"),
            )
            .unwrap_err();
        assert!(matches!(err, ClosureError::NotElfLibrary { .. }), "{err}");
    }
}
