//! Just enough ELF reading to compute a program's shared-library closure: the class and machine
//! (to skip libraries of another architecture), `PT_INTERP`, and the dynamic section's
//! `DT_NEEDED`, `DT_RPATH` and `DT_RUNPATH`.
//!
//! Hand-written rather than a general ELF crate: only program headers and the dynamic string
//! table are read, so a 20 MB `libpython` costs a few page reads, not a symbol-table parse.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
/// Program headers and the dynamic section of any sane object fit well inside this; bigger
/// tables are read on demand.
const HEAD_LEN: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file")]
    NotElf { path: PathBuf },
    #[error("{path}: truncated or corrupt ELF ({what})")]
    Corrupt { path: PathBuf, what: &'static str },
}

/// Word size of an ELF object; a 64-bit program cannot load a 32-bit library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Elf32,
    Elf64,
}

/// What the dynamic linker needs to know about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    pub class: Class,
    pub machine: u16,
    pub interp: Option<String>,
    pub needed: Vec<String>,
    pub rpath: Vec<String>,
    pub runpath: Vec<String>,
}

impl ElfInfo {
    /// Whether `other` could be loaded into a process of this object.
    pub fn compatible(&self, other: &ElfInfo) -> bool {
        self.class == other.class && self.machine == other.machine
    }
}

/// True when the bytes start with the ELF magic.
pub fn has_elf_magic(head: &[u8]) -> bool {
    head.len() >= 4 && &head[..4] == ELF_MAGIC
}

/// Reads the dynamic-linking facts of the file at `path`.
pub fn read(path: &Path) -> Result<ElfInfo, ElfError> {
    let io = |source| ElfError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut head = Vec::with_capacity(HEAD_LEN);
    (&mut file)
        .take(HEAD_LEN as u64)
        .read_to_end(&mut head)
        .map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut src = Source {
        file,
        head,
        len,
        path: path.to_path_buf(),
    };
    parse(&mut src)
}

/// The start of the file, plus the file for the rare object whose tables lie further in.
struct Source {
    file: File,
    head: Vec<u8>,
    len: u64,
    path: PathBuf,
}

impl Source {
    fn bytes(&mut self, off: u64, len: usize, what: &'static str) -> Result<Vec<u8>, ElfError> {
        let end = off.checked_add(len as u64).ok_or(self.corrupt(what))?;
        // Sizes come from the file: never allocate more than the file holds.
        if end > self.len {
            return Err(self.corrupt(what));
        }
        if end <= self.head.len() as u64 {
            return Ok(self.head[off as usize..end as usize].to_vec());
        }
        let mut buf = vec![0u8; len];
        self.file
            .seek(SeekFrom::Start(off))
            .and_then(|_| self.file.read_exact(&mut buf))
            .map_err(|_| self.corrupt(what))?;
        Ok(buf)
    }

    fn corrupt(&self, what: &'static str) -> ElfError {
        ElfError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }
}

/// Fixed-layout integer reads in the object's byte order.
#[derive(Clone, Copy)]
struct Endian {
    little: bool,
}

impl Endian {
    fn u16(self, b: &[u8], off: usize) -> u16 {
        let a = [b[off], b[off + 1]];
        if self.little {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        }
    }
    fn u32(self, b: &[u8], off: usize) -> u32 {
        let a: [u8; 4] = b[off..off + 4].try_into().expect("4 bytes");
        if self.little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    }
    fn u64(self, b: &[u8], off: usize) -> u64 {
        let a: [u8; 8] = b[off..off + 8].try_into().expect("8 bytes");
        if self.little {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        }
    }
    /// A native word: 4 bytes in ELF32, 8 in ELF64.
    fn word(self, class: Class, b: &[u8], off: usize) -> u64 {
        match class {
            Class::Elf32 => u64::from(self.u32(b, off)),
            Class::Elf64 => self.u64(b, off),
        }
    }
}

struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

fn parse(src: &mut Source) -> Result<ElfInfo, ElfError> {
    if !has_elf_magic(&src.head) {
        return Err(ElfError::NotElf {
            path: src.path.clone(),
        });
    }
    if src.head.len() < 64 {
        return Err(src.corrupt("header"));
    }
    let class = match src.head[4] {
        1 => Class::Elf32,
        2 => Class::Elf64,
        _ => return Err(src.corrupt("class")),
    };
    let e = Endian {
        little: src.head[5] != 2,
    };
    let h = &src.head;
    let machine = e.u16(h, 18);
    let (phoff, phentsize, phnum) = match class {
        Class::Elf32 => (u64::from(e.u32(h, 28)), e.u16(h, 42), e.u16(h, 44)),
        Class::Elf64 => (e.u64(h, 32), e.u16(h, 54), e.u16(h, 56)),
    };
    let min_phent = if class == Class::Elf64 { 56 } else { 32 };
    if phnum > 0 && usize::from(phentsize) < min_phent {
        return Err(src.corrupt("program header size"));
    }
    let table = src.bytes(
        phoff,
        usize::from(phentsize) * usize::from(phnum),
        "program headers",
    )?;
    let segments: Vec<Segment> = (0..usize::from(phnum))
        .map(|i| segment(e, class, &table[i * usize::from(phentsize)..]))
        .collect();
    let mut info = ElfInfo {
        class,
        machine,
        interp: None,
        needed: Vec::new(),
        rpath: Vec::new(),
        runpath: Vec::new(),
    };
    for seg in &segments {
        if seg.kind == PT_INTERP {
            let raw = src.bytes(seg.offset, seg.filesz as usize, "PT_INTERP")?;
            info.interp = Some(c_string(&raw));
        }
    }
    if let Some(dynamic) = segments.iter().find(|s| s.kind == PT_DYNAMIC) {
        read_dynamic(src, e, class, dynamic, &segments, &mut info)?;
    }
    Ok(info)
}

fn segment(e: Endian, class: Class, b: &[u8]) -> Segment {
    match class {
        Class::Elf32 => Segment {
            kind: e.u32(b, 0),
            offset: u64::from(e.u32(b, 4)),
            vaddr: u64::from(e.u32(b, 8)),
            filesz: u64::from(e.u32(b, 16)),
        },
        Class::Elf64 => Segment {
            kind: e.u32(b, 0),
            offset: e.u64(b, 8),
            vaddr: e.u64(b, 16),
            filesz: e.u64(b, 32),
        },
    }
}

fn read_dynamic(
    src: &mut Source,
    e: Endian,
    class: Class,
    dynamic: &Segment,
    segments: &[Segment],
    info: &mut ElfInfo,
) -> Result<(), ElfError> {
    let entsize = if class == Class::Elf64 { 16 } else { 8 };
    let raw = src.bytes(dynamic.offset, dynamic.filesz as usize, "PT_DYNAMIC")?;
    let mut entries = Vec::new();
    let (mut strtab, mut strsz) = (None, None);
    for chunk in raw.chunks_exact(entsize) {
        let tag = e.word(class, chunk, 0);
        let val = e.word(class, chunk, entsize / 2);
        match tag {
            DT_NULL => break,
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_NEEDED | DT_RPATH | DT_RUNPATH => entries.push((tag, val)),
            _ => {}
        }
    }
    if entries.is_empty() {
        return Ok(());
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        return Err(src.corrupt("dynamic section without string table"));
    };
    // DT_STRTAB is a virtual address: map it to a file offset through the PT_LOAD segments.
    let offset = segments
        .iter()
        .find(|s| s.kind == PT_LOAD && s.vaddr <= strtab && strtab < s.vaddr + s.filesz)
        .map(|s| strtab - s.vaddr + s.offset)
        .ok_or(src.corrupt("string table outside loaded segments"))?;
    let strings = src.bytes(offset, strsz as usize, "dynamic string table")?;
    for (tag, val) in entries {
        let s = strings
            .get(val as usize..)
            .map(c_string)
            .ok_or(src.corrupt("string offset"))?;
        match tag {
            DT_NEEDED => info.needed.push(s),
            DT_RPATH => info.rpath.extend(split_path_list(&s)),
            _ => info.runpath.extend(split_path_list(&s)),
        }
    }
    Ok(())
}

fn split_path_list(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(':').filter(|p| !p.is_empty()).map(str::to_owned)
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sh_interpreter_and_libc() {
        let info = read(Path::new("/bin/sh")).expect("parse /bin/sh");
        assert!(info.interp.as_deref().unwrap_or("").contains("ld-"));
        assert!(info.needed.iter().any(|n| n.starts_with("libc.so")));
    }

    #[test]
    fn rejects_non_elf_and_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("text");
        std::fs::write(&text, "#!/bin/sh\necho hi\n").unwrap();
        assert!(matches!(read(&text), Err(ElfError::NotElf { .. })));
        let cut = dir.path().join("cut");
        let sh = std::fs::read("/bin/sh").unwrap();
        std::fs::write(&cut, &sh[..40]).unwrap();
        assert!(matches!(read(&cut), Err(ElfError::Corrupt { .. })));
    }
}
