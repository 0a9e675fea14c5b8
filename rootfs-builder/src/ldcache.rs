//! Where the host's dynamic linker finds libraries outside its built-in directories:
//! `/etc/ld.so.cache` (parsed directly, as ld.so does) and, where there is no cache,
//! `/etc/ld.so.conf` with its `include` lines. A rootfs gets the part of the host's cache
//! that names its own libraries ([`LdCache::subset`], [`LdCache::to_bytes`]).

use std::path::{Path, PathBuf};

const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
const NEW_HEADER_LEN: usize = 48;
const NEW_ENTRY_LEN: usize = 24;
const OLD_HEADER_LEN: usize = 16;
const OLD_ENTRY_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum LdCacheError {
    #[error("read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a glibc ld.so.cache (bad magic); run ldconfig or remove it")]
    BadMagic { path: PathBuf },
    #[error("{path}: truncated ld.so.cache ({what}); run ldconfig")]
    Truncated { path: PathBuf, what: &'static str },
}

/// The `soname -> path` pairs of an ld.so.cache, in the cache's (priority) order.
#[derive(Debug, Default, Clone)]
pub struct LdCache {
    entries: Vec<Entry>,
    /// The header's flags byte (endianness), kept for a cache written from this one.
    header_flags: u8,
}

/// One library of the cache, with the fields ld.so matches on besides the name.
#[derive(Debug, Clone)]
struct Entry {
    key: String,
    value: PathBuf,
    /// Object type and ABI (e.g. libc6 x86-64); ld.so skips entries of other ABIs.
    flags: i32,
    osversion: u32,
    /// Non-zero for hwcap-specific copies (glibc-hwcaps subdirectories and older schemes).
    hwcap: u64,
}

impl LdCache {
    /// Reads `path`; a missing file is `Ok(None)` (musl systems and minimal images have none).
    pub fn load(path: &Path) -> Result<Option<LdCache>, LdCacheError> {
        match std::fs::read(path) {
            Ok(bytes) => parse(&bytes, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LdCacheError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Every path the cache lists for `soname`, best first.
    pub fn lookup<'a>(&'a self, soname: &'a str) -> impl Iterator<Item = &'a Path> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.key == soname)
            .map(|e| e.value.as_path())
    }

    /// The entries whose library `present` says is there, in the same order (ld.so
    /// binary-searches the table, so the order ldconfig sorted it in must stay). Entries for
    /// hwcap-specific directories are left out: they point into the cache's extension
    /// section, which a subset does not carry, and without them ld.so uses the plain copy.
    pub fn subset(&self, present: impl Fn(&Path) -> bool) -> LdCache {
        LdCache {
            entries: self
                .entries
                .iter()
                .filter(|e| e.hwcap == 0 && present(&e.value))
                .cloned()
                .collect(),
            header_flags: self.header_flags,
        }
    }

    /// The cache in glibc's "new" format (what ldconfig writes since glibc 2.32): header,
    /// entry table, then the strings, their offsets counted from the header's start.
    pub fn to_bytes(&self) -> Vec<u8> {
        let strings_at = NEW_HEADER_LEN + self.entries.len() * NEW_ENTRY_LEN;
        let mut table = Vec::with_capacity(strings_at);
        let mut strings: Vec<u8> = Vec::new();
        let mut add_string = |text: &[u8]| {
            let offset = (strings_at + strings.len()) as u32;
            strings.extend_from_slice(text);
            strings.push(0);
            offset
        };
        for e in &self.entries {
            let key = add_string(e.key.as_bytes());
            let value = add_string(e.value.as_os_str().as_encoded_bytes());
            table.extend(e.flags.to_ne_bytes());
            table.extend(key.to_ne_bytes());
            table.extend(value.to_ne_bytes());
            table.extend(e.osversion.to_ne_bytes());
            table.extend(e.hwcap.to_ne_bytes());
        }
        let mut out = NEW_MAGIC.to_vec();
        out.extend((self.entries.len() as u32).to_ne_bytes());
        out.extend((strings.len() as u32).to_ne_bytes());
        out.push(self.header_flags);
        // Padding, no extension section (offset 0), unused words.
        out.resize(NEW_HEADER_LEN, 0);
        out.extend(table);
        out.extend(strings);
        out
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_ne_bytes(s.try_into().expect("4 bytes")))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8)
        .map(|s| u64::from_ne_bytes(s.try_into().expect("8 bytes")))
}

/// Parses the "new" format (glibc >= 2.32 writes only it), also when it follows an old-format
/// table, as older ldconfig versions wrote both.
pub fn parse(bytes: &[u8], path: &Path) -> Result<LdCache, LdCacheError> {
    let truncated = |what| LdCacheError::Truncated {
        path: path.to_path_buf(),
        what,
    };
    let start = if bytes.starts_with(NEW_MAGIC) {
        0
    } else if bytes.starts_with(OLD_MAGIC) {
        let nlibs = u32_at(bytes, 12).ok_or(truncated("old header"))? as usize;
        // The new table follows the old one, aligned like `struct cache_file_new` (8 bytes).
        let end = OLD_HEADER_LEN + nlibs * OLD_ENTRY_LEN;
        let aligned = end.div_ceil(8) * 8;
        if !bytes[aligned.min(bytes.len())..].starts_with(NEW_MAGIC) {
            return Err(LdCacheError::BadMagic {
                path: path.to_path_buf(),
            });
        }
        aligned
    } else {
        return Err(LdCacheError::BadMagic {
            path: path.to_path_buf(),
        });
    };
    let new = &bytes[start..];
    let nlibs = u32_at(new, 20).ok_or(truncated("header"))? as usize;
    let table_end = NEW_HEADER_LEN + nlibs * NEW_ENTRY_LEN;
    if new.len() < table_end {
        return Err(truncated("entry table"));
    }
    // String offsets count from the start of the new-format header.
    let string = |off: u32| -> Option<String> {
        let s = new.get(off as usize..)?;
        let end = s.iter().position(|&c| c == 0)?;
        Some(String::from_utf8_lossy(&s[..end]).into_owned())
    };
    let mut entries = Vec::with_capacity(nlibs);
    for i in 0..nlibs {
        let e = NEW_HEADER_LEN + i * NEW_ENTRY_LEN;
        let key = u32_at(new, e + 4).and_then(string);
        let value = u32_at(new, e + 8).and_then(string);
        let (Some(key), Some(value)) = (key, value) else {
            return Err(truncated("string table"));
        };
        // The table's length was checked above, so the fixed fields are there.
        entries.push(Entry {
            key,
            value: PathBuf::from(value),
            flags: u32_at(new, e).unwrap_or(0) as i32,
            osversion: u32_at(new, e + 12).unwrap_or(0),
            hwcap: u64_at(new, e + 16).unwrap_or(0),
        });
    }
    Ok(LdCache {
        entries,
        header_flags: new.get(28).copied().unwrap_or(0),
    })
}

/// Directories named by an `ld.so.conf` and the files it includes, in order. Unreadable or
/// missing files contribute nothing, as with ldconfig.
pub fn conf_dirs(conf: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    read_conf(conf, &mut dirs, 0);
    dirs
}

fn read_conf(conf: &Path, dirs: &mut Vec<PathBuf>, depth: u32) {
    // Include cycles are a configuration error; ldconfig would loop too, we stop.
    if depth > 8 {
        return;
    }
    let Ok(text) = std::fs::read_to_string(conf) else {
        return;
    };
    let base = conf.parent().unwrap_or(Path::new("/"));
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(patterns) = line.strip_prefix("include") {
            if !patterns.starts_with(char::is_whitespace) {
                continue;
            }
            for pattern in patterns.split_whitespace() {
                for file in glob(&base.join(pattern)) {
                    read_conf(&file, dirs, depth + 1);
                }
            }
        } else if line.starts_with("hwcap") || line.is_empty() {
            continue;
        } else {
            // Old syntax allowed `dir=TYPE` and comma/space separated lists.
            for dir in line.split([' ', '\t', ',', ':']).filter(|d| !d.is_empty()) {
                let dir = dir.split('=').next().unwrap_or(dir);
                if dir.starts_with('/') && !dirs.iter().any(|d| d == Path::new(dir)) {
                    dirs.push(PathBuf::from(dir));
                }
            }
        }
    }
}

/// A glob whose wildcards (`*`, `?`) are only in the last component, which is all
/// `ld.so.conf` includes use in practice. Matches are sorted, as glob(3) sorts them.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    if !name.contains(['*', '?']) {
        return vec![pattern.to_path_buf()];
    }
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .filter(|e| wildcard_match(name.as_bytes(), e.file_name().as_encoded_bytes()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// `*` and `?` matching; a leading dot must be matched literally, as in glob(3).
fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    if name.first() == Some(&b'.') && pattern.first() != Some(&b'.') {
        return false;
    }
    let (mut p, mut n) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_cache_lists_libc() {
        let cache = LdCache::load(Path::new("/etc/ld.so.cache"))
            .expect("parse host cache")
            .expect("host has /etc/ld.so.cache");
        assert!(!cache.is_empty());
        assert!(cache.lookup("libc.so.6").next().is_some());
    }

    /// A new-format cache with `(key, value)` entries, optionally behind an old-format table
    /// of `old` entries, as ldconfig before glibc 2.32 wrote it.
    fn synthetic(entries: &[(&str, &str)], old: Option<usize>) -> Vec<u8> {
        let mut new = NEW_MAGIC.to_vec();
        new.extend((entries.len() as u32).to_ne_bytes());
        new.resize(NEW_HEADER_LEN, 0);
        let strings_at = NEW_HEADER_LEN + entries.len() * NEW_ENTRY_LEN;
        let mut strings = Vec::new();
        for (k, v) in entries {
            let key = (strings_at + strings.len()) as u32;
            strings.extend(k.as_bytes());
            strings.push(0);
            let value = (strings_at + strings.len()) as u32;
            strings.extend(v.as_bytes());
            strings.push(0);
            new.extend(0x0303i32.to_ne_bytes());
            new.extend(key.to_ne_bytes());
            new.extend(value.to_ne_bytes());
            new.extend([0u8; 12]);
        }
        new.extend(strings);
        let Some(n) = old else {
            return new;
        };
        let mut bytes = OLD_MAGIC.to_vec();
        bytes.resize(12, 0);
        bytes.extend((n as u32).to_ne_bytes());
        bytes.resize(OLD_HEADER_LEN + n * OLD_ENTRY_LEN, 0);
        bytes.resize(bytes.len().div_ceil(8) * 8, 0);
        bytes.extend(new);
        bytes
    }

    #[test]
    fn synthetic_caches_in_both_layouts() {
        let entries = [
            ("libfoo.so.1", "/opt/foo/lib/libfoo.so.1"),
            ("libfoo.so.1", "/usr/lib/libfoo.so.1"),
            ("libbar.so.2", "/lib/libbar.so.2"),
        ];
        for old in [None, Some(3)] {
            let cache = parse(&synthetic(&entries, old), Path::new("/x")).unwrap();
            let foo: Vec<_> = cache.lookup("libfoo.so.1").collect();
            assert_eq!(
                foo,
                vec![
                    Path::new("/opt/foo/lib/libfoo.so.1"),
                    Path::new("/usr/lib/libfoo.so.1")
                ]
            );
            assert_eq!(cache.len(), 3);
        }
    }

    /// A subset of the host's cache written out parses back to the same entries in the same
    /// order, with the ABI flags ld.so checks carried over byte for byte.
    #[test]
    fn subset_of_the_host_cache_round_trips() {
        let host = LdCache::load(Path::new("/etc/ld.so.cache"))
            .unwrap()
            .expect("host has /etc/ld.so.cache");
        let subset =
            host.subset(|p| p.to_string_lossy().contains("libc.so") || p.ends_with("libm.so.6"));
        assert!(subset.lookup("libc.so.6").next().is_some(), "{subset:?}");
        assert!(subset.len() < host.len());
        assert!(subset.entries.iter().all(|e| e.hwcap == 0));
        let bytes = subset.to_bytes();
        let back = parse(&bytes, Path::new("/x")).unwrap();
        let fields = |c: &LdCache| -> Vec<(String, PathBuf, i32, u32)> {
            c.entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone(), e.flags, e.osversion))
                .collect()
        };
        assert_eq!(fields(&back), fields(&subset));
        assert_eq!(back.header_flags, host.header_flags);
        let in_host: Vec<_> = fields(&host)
            .into_iter()
            .filter(|f| fields(&subset).contains(f))
            .collect();
        assert_eq!(fields(&subset), in_host, "order kept");
        // The header's string length is what follows the table.
        let strings = u32_at(&bytes, 24).unwrap() as usize;
        assert_eq!(
            NEW_HEADER_LEN + subset.len() * NEW_ENTRY_LEN + strings,
            bytes.len()
        );
    }

    #[test]
    fn truncated_cache_is_an_error() {
        let bytes = std::fs::read("/etc/ld.so.cache").unwrap();
        let cut = &bytes[..NEW_HEADER_LEN + 10];
        let err = parse(cut, Path::new("/x")).unwrap_err();
        assert!(matches!(err, LdCacheError::Truncated { .. }), "{err}");
        assert!(matches!(
            parse(b"garbage", Path::new("/x")),
            Err(LdCacheError::BadMagic { .. })
        ));
    }

    #[test]
    fn conf_follows_includes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/a.conf"), "/opt/a/lib\n# c\n").unwrap();
        std::fs::write(dir.path().join("d/b.conf"), "/opt/b/lib /opt/c\n").unwrap();
        std::fs::write(dir.path().join("d/skip.txt"), "/nope\n").unwrap();
        let conf = dir.path().join("ld.so.conf");
        std::fs::write(&conf, "include d/*.conf\n/usr/local/lib\n").unwrap();
        let dirs = conf_dirs(&conf);
        let want: Vec<PathBuf> = ["/opt/a/lib", "/opt/b/lib", "/opt/c", "/usr/local/lib"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(dirs, want);
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match(b"*.conf", b"x86_64-linux-gnu.conf"));
        assert!(!wildcard_match(b"*.conf", b".hidden.conf"));
        assert!(!wildcard_match(b"*.conf", b"a.confx"));
        assert!(wildcard_match(b"a?c*", b"abcdef"));
    }
}
