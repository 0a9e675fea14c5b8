//! What a CPython interpreter needs beyond its ELF closure: its standard library, and the
//! extension modules of `lib-dynload` with the libraries they load. Tests, caches, docs, GUI
//! and installer packages, and third-party site-packages are left out.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::closure::{ClosureError, Resolver};
use crate::hostcopy::{CopyError, FileMode, HostCopy};

/// Printed by the interpreter itself, so the answer matches its real prefix logic.
const QUERY: &str = "import sys, sysconfig\n\
print(sysconfig.get_path('stdlib'))\n\
print(sysconfig.get_path('platstdlib'))\n\
print(next((p for p in sys.path if p.endswith('lib-dynload')), ''))\n";

/// Directories never needed to run programs, wherever they are in the stdlib.
const DROP_ANYWHERE: &[&str] = &["__pycache__", "test", "tests", "idle_test"];
/// Top-level stdlib entries that are GUI, docs, installers or third-party code.
const DROP_TOP: &[&str] = &[
    "site-packages",
    "dist-packages",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "pydoc_data",
    "lib-dynload",
];
/// Extension modules that exist only for CPython's own tests or for Tk.
const DROP_EXTENSIONS: &[&str] = &[
    "_test",
    "_ctypes_test",
    "_xxtestfuzz",
    "xxlimited",
    "_tkinter",
];

#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    #[error("run {exe} to find its standard library: {detail}")]
    Query { exe: PathBuf, detail: String },
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error(transparent)]
    Closure(#[from] ClosureError),
}

/// Whether the real file `exe` is a CPython interpreter (`python`, `python3`, `python3.11`).
pub fn is_python(exe: &Path) -> bool {
    let Some(name) = exe.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.strip_prefix("python")
        .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// The interpreter's own idea of where its library lives.
struct Layout {
    stdlib: PathBuf,
    platstdlib: PathBuf,
    dynload: Option<PathBuf>,
}

fn query(exe: &Path) -> Result<Layout, PythonError> {
    let fail = |detail: String| PythonError::Query {
        exe: exe.to_path_buf(),
        detail,
    };
    // -S: no site (third-party code stays out of the answer); -E: no PYTHONHOME overrides.
    let out = Command::new(exe)
        .args(["-S", "-E", "-c", QUERY])
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let [stdlib, platstdlib, dynload] = lines[..] else {
        return Err(fail(format!("unexpected answer {text:?}")));
    };
    Ok(Layout {
        stdlib: PathBuf::from(stdlib),
        platstdlib: PathBuf::from(platstdlib),
        dynload: (!dynload.is_empty()).then(|| PathBuf::from(dynload)),
    })
}

fn keep_stdlib_entry(rel: &Path, is_dir: bool) -> bool {
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let top = rel.components().count() == 1;
    if is_dir && DROP_ANYWHERE.contains(&name) {
        return false;
    }
    if top && (DROP_TOP.contains(&name) || name.starts_with("config-")) {
        return false;
    }
    !name.ends_with(".pyc")
}

/// Compiles the copied standard library to bytecode in the rootfs, with the interpreter that
/// will run it. Without it every job recompiles each module it imports (the rootfs is
/// read-only to jobs and a job's own layer is thrown away): `import json, ssl, hashlib,
/// subprocess, argparse` costs 180 ms of CPU instead of 40. The host's own `__pycache__` cannot
/// be reused: those files are valid only for the sources' host mtimes, and the rootfs gets
/// fixed ones.
///
/// Hash-checked pycs (PEP 552) are valid whatever the mtimes, and a job that edits a stdlib
/// file in its layer gets its edit, not stale bytecode. A fixed hash seed makes the output the
/// same on every build (set constants are ordered by hash), so the rootfs key stays stable.
/// Recorded file names are the paths inside the rootfs, as tracebacks should show them. A
/// failure only costs speed, so it is a warning.
fn compile_bytecode(exe: &Path, copy: &HostCopy, libs: &[&Path]) {
    let root = copy.staged(Path::new(""));
    let compileall = |workers: &str| {
        Command::new(exe)
            .env_clear()
            .env("PYTHONHASHSEED", "0")
            .args(["-S", "-m", "compileall", "-q", "-j", workers])
            .args(["--invalidation-mode", "checked-hash", "-s"])
            .arg(&root)
            .args(["-p", "/"])
            .args(libs.iter().map(|lib| copy.staged(lib)))
            .output()
    };
    // One worker per CPU needs process pools (POSIX semaphores), which a sandboxed build may
    // lack: then once more in one process.
    let out = match compileall("0") {
        Ok(out) if out.status.success() => return,
        _ => compileall("1"),
    };
    let problem = match out {
        Ok(out) if out.status.success() => return,
        Ok(out) => {
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
                + String::from_utf8_lossy(&out.stderr).trim()
        }
        Err(e) => e.to_string(),
    };
    tracing::warn!(
        interpreter = %exe.display(),
        %problem,
        "standard library left uncompiled: jobs will compile what they import"
    );
}

fn keep_extension(name: &str) -> bool {
    let module = name.split('.').next().unwrap_or(name);
    name.ends_with(".so") && !DROP_EXTENSIONS.iter().any(|d| module.starts_with(d))
}

/// Copies the standard library of the interpreter at `exe` and its extension modules. An
/// extension whose libraries are missing on the host is left out with a warning: the
/// interpreter still runs, and `import` names the missing module.
pub fn add_runtime(
    copy: &mut HostCopy,
    resolver: &mut Resolver,
    exe: &Path,
) -> Result<(), PythonError> {
    let layout = query(exe)?;
    copy.add_tree(&layout.stdlib, FileMode::NoExec, &keep_stdlib_entry)?;
    let mut libs = vec![layout.stdlib.as_path()];
    if layout.platstdlib != layout.stdlib {
        copy.add_tree(&layout.platstdlib, FileMode::NoExec, &keep_stdlib_entry)?;
        libs.push(layout.platstdlib.as_path());
    }
    compile_bytecode(exe, copy, &libs);
    let Some(dynload) = layout.dynload else {
        return Ok(());
    };
    copy.add(&dynload, FileMode::AsHost)?;
    copy.note_input(&dynload);
    let mut names: Vec<String> = std::fs::read_dir(&dynload)
        .map_err(|e| CopyError::Io {
            path: dynload.clone(),
            source: e,
        })?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| keep_extension(n))
        .collect();
    names.sort();
    for name in names {
        let module = dynload.join(&name);
        match resolver.closure(&module) {
            Ok(libs) => {
                copy.add(&module, FileMode::AsHost)?;
                for lib in libs {
                    copy.add(&lib, FileMode::AsHost)?;
                }
            }
            Err(e @ (ClosureError::MissingLibrary { .. } | ClosureError::NotElfLibrary { .. })) => {
                tracing::warn!(module = %module.display(), error = %e, "leaving out extension module");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_interpreter_names() {
        assert!(is_python(Path::new("/usr/bin/python3.11")));
        assert!(is_python(Path::new("/x/python3")));
        assert!(!is_python(Path::new("/usr/bin/python3-config")));
        assert!(!is_python(Path::new("/usr/bin/pythonista")));
    }

    #[test]
    fn filters_tests_caches_and_gui() {
        assert!(!keep_stdlib_entry(Path::new("test"), true));
        assert!(!keep_stdlib_entry(Path::new("ctypes/test"), true));
        assert!(!keep_stdlib_entry(Path::new("json/__pycache__"), true));
        assert!(!keep_stdlib_entry(Path::new("tkinter"), true));
        assert!(!keep_stdlib_entry(
            Path::new("config-3.11-x86_64-linux-gnu"),
            true
        ));
        assert!(keep_stdlib_entry(Path::new("json"), true));
        assert!(keep_stdlib_entry(Path::new("json/decoder.py"), false));
        assert!(keep_extension("_ssl.cpython-311-x86_64-linux-gnu.so"));
        assert!(!keep_extension("_testcapi.cpython-311-x86_64-linux-gnu.so"));
        assert!(!keep_extension("_tkinter.cpython-311-x86_64-linux-gnu.so"));
    }
}
