//! From a program name to the host files that make it run: PATH lookup, script interpreters
//! named by shebang lines, and version-manager shims (pyenv and its kin) replaced by the real
//! interpreter they would run.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::elf;

/// Scripts may name interpreters that are scripts; real chains are short.
const MAX_INTERPRETER_DEPTH: u32 = 4;
/// Managers whose shims end in `exec "<manager>" exec <program>` and that answer
/// `<manager> which <program>` with the real path, and the file that pins a local version.
const SHIM_MANAGERS: &[(&str, &str)] = &[
    ("pyenv", ".python-version"),
    ("rbenv", ".ruby-version"),
    ("nodenv", ".node-version"),
    ("goenv", ".go-version"),
    ("plenv", ".perl-version"),
    ("asdf", ".tool-versions"),
];

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown program {name}: not found in PATH ({path_env})")]
    UnknownProgram { name: String, path_env: String },
    #[error("program {path} does not exist")]
    Missing { path: PathBuf },
    #[error("{path} is neither an ELF executable nor a script with a #! line")]
    NotExecutable { path: PathBuf },
    #[error("{path}: #! line names no interpreter")]
    BadShebang { path: PathBuf },
    #[error("{path} is a {manager} shim and `{manager} which {name}` failed ({detail}); pass the real interpreter's path instead")]
    UnresolvedShim {
        path: PathBuf,
        manager: String,
        name: String,
        detail: String,
    },
    #[error("interpreter chain of {path} is deeper than {MAX_INTERPRETER_DEPTH}")]
    TooDeep { path: PathBuf },
    #[error("read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One file to copy because a requested program needs it to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The host path (possibly a symlink) to copy.
    pub path: PathBuf,
    /// True for ELF files, whose library closure must follow.
    pub is_elf: bool,
    /// A bare name this program must be reachable by through the job's PATH (`/usr/bin/NAME`).
    pub link_name: Option<String>,
}

/// What steers resolution besides the file system.
#[derive(Debug, Clone)]
pub struct Env {
    pub path: String,
    pub cwd: PathBuf,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            path: std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
        }
    }
}

/// Resolves `name` to the files it takes to run it, the program itself first. `inputs`
/// receives every host path whose change would change the answer.
pub fn resolve(
    name: &str,
    env: &Env,
    inputs: &mut Vec<PathBuf>,
) -> Result<Vec<Program>, ResolveError> {
    let mut out = Vec::new();
    resolve_into(name, env, inputs, &mut out, 0)?;
    Ok(out)
}

fn resolve_into(
    name: &str,
    env: &Env,
    inputs: &mut Vec<PathBuf>,
    out: &mut Vec<Program>,
    depth: u32,
) -> Result<(), ResolveError> {
    let mut path = locate(name, env, inputs)?;
    if depth > MAX_INTERPRETER_DEPTH {
        return Err(ResolveError::TooDeep { path });
    }
    let bare = (!name.contains('/')).then(|| name.to_owned());
    let mut head = read_head(&path)?;
    if let Some(manager) = shim_manager(&head) {
        path = resolve_shim(&path, &manager, env, inputs)?;
        head = read_head(&path)?;
    }
    if elf::has_elf_magic(&head) {
        out.push(Program {
            path,
            is_elf: true,
            link_name: bare,
        });
        return Ok(());
    }
    let Some(shebang) = parse_shebang(&head) else {
        return Err(ResolveError::NotExecutable { path });
    };
    let Some((interp, args)) = shebang.split_first() else {
        return Err(ResolveError::BadShebang { path });
    };
    out.push(Program {
        path: path.clone(),
        is_elf: false,
        link_name: bare,
    });
    // The interpreter is needed at the very path the #! line names.
    resolve_into(interp, env, inputs, out, depth + 1)?;
    if Path::new(interp).file_name() == Some("env".as_ref()) {
        if let Some(target) = env_target(args) {
            // `env NAME` searches the job's PATH, where /usr/bin/NAME will be.
            resolve_into(&target, env, inputs, out, depth + 1)?;
        }
    }
    Ok(())
}

/// PATH lookup as execvp does it, for names without a slash.
fn locate(name: &str, env: &Env, inputs: &mut Vec<PathBuf>) -> Result<PathBuf, ResolveError> {
    if name.contains('/') {
        let path = env.cwd.join(name);
        inputs.push(path.clone());
        if path.is_file() {
            return Ok(path);
        }
        return Err(ResolveError::Missing { path });
    }
    for dir in env.path.split(':').filter(|d| !d.is_empty()) {
        let dir = env.cwd.join(dir);
        // A new file in an earlier PATH directory changes the answer.
        inputs.push(dir.clone());
        let cand = dir.join(name);
        let executable = std::fs::metadata(&cand)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if executable {
            return Ok(cand);
        }
    }
    Err(ResolveError::UnknownProgram {
        name: name.to_owned(),
        path_env: env.path.clone(),
    })
}

fn read_head(path: &Path) -> Result<Vec<u8>, ResolveError> {
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .map_err(|source| ResolveError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(head)
}

/// The interpreter and its arguments from a `#!` line, split on whitespace as Linux does for
/// the first argument and `env -S` does for the rest.
pub fn parse_shebang(head: &[u8]) -> Option<Vec<String>> {
    let rest = head.strip_prefix(b"#!")?;
    let line = rest.split(|&c| c == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    Some(line.split_whitespace().map(str::to_owned).collect())
}

/// The program `env` would run given these arguments: the first that is no option and no
/// `NAME=value` assignment.
fn env_target(args: &[String]) -> Option<String> {
    args.iter()
        .flat_map(|a| a.split_whitespace())
        .find(|a| !a.starts_with('-') && !a.contains('='))
        .map(str::to_owned)
}

/// Which version manager a script is a shim of, if any.
fn shim_manager(head: &[u8]) -> Option<String> {
    if !head.starts_with(b"#!") {
        return None;
    }
    let text = String::from_utf8_lossy(head);
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("exec ") else {
            continue;
        };
        let mut words = rest.split_whitespace().map(|w| w.trim_matches('"'));
        let (Some(cmd), Some("exec")) = (words.next(), words.next()) else {
            continue;
        };
        let base = Path::new(cmd).file_name()?.to_string_lossy().into_owned();
        if SHIM_MANAGERS.iter().any(|(m, _)| *m == base) {
            return Some(cmd.to_owned());
        }
    }
    None
}

/// Asks the manager which real program its shim runs now, and records what decides that
/// (its global version file and local version files from the working directory up).
fn resolve_shim(
    shim: &Path,
    manager: &str,
    env: &Env,
    inputs: &mut Vec<PathBuf>,
) -> Result<PathBuf, ResolveError> {
    let base = Path::new(manager)
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = shim
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fail = |detail: String| ResolveError::UnresolvedShim {
        path: shim.to_path_buf(),
        manager: base.clone(),
        name: name.clone(),
        detail,
    };
    // Shims live in <root>/shims; the manager reads <root>/version and local pin files.
    if let Some(root) = shim.parent().and_then(Path::parent) {
        inputs.push(root.join("version"));
    }
    if let Some((_, local)) = SHIM_MANAGERS.iter().find(|(m, _)| *m == base) {
        inputs.extend(env.cwd.ancestors().map(|d| d.join(local)));
    }
    let output = Command::new(manager)
        .args(["which", &name])
        .current_dir(&env.cwd)
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(fail(stderr.trim().to_owned()));
    }
    let real = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let head = read_head(&real).map_err(|e| fail(e.to_string()))?;
    if !real.is_absolute() || shim_manager(&head).is_some() {
        return Err(fail(format!("it answered {}", real.display())));
    }
    inputs.push(real.clone());
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with_path(path: &Path) -> Env {
        Env {
            path: path.display().to_string(),
            cwd: PathBuf::from("/"),
        }
    }

    #[test]
    fn unknown_program_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve("no-such-prog", &env_with_path(dir.path()), &mut Vec::new());
        let msg = err.unwrap_err().to_string();
        assert!(msg.contains("unknown program no-such-prog"), "{msg}");
    }

    #[test]
    fn env_script_brings_env_and_interpreter() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hello");
        std::fs::write(&script, "#!/usr/bin/env -S sh -e\necho hi\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = Env {
            path: format!("{}:/usr/bin:/bin", dir.path().display()),
            cwd: PathBuf::from("/"),
        };
        let progs = resolve("hello", &env, &mut Vec::new()).unwrap();
        let paths: Vec<_> = progs.iter().map(|p| p.path.clone()).collect();
        assert_eq!(paths[0], script);
        assert!(paths.contains(&PathBuf::from("/usr/bin/env")));
        assert!(progs
            .iter()
            .any(|p| p.link_name.as_deref() == Some("sh") && p.is_elf));
    }

    #[test]
    fn broken_shim_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let shims = dir.path().join("shims");
        std::fs::create_dir(&shims).unwrap();
        let shim = shims.join("python3");
        let text = format!(
            "#!/usr/bin/env bash\nset -e\nexec \"{}/libexec/pyenv\" exec \"$program\" \"$@\"\n",
            dir.path().display()
        );
        std::fs::write(&shim, text).unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = resolve("python3", &env_with_path(&shims), &mut Vec::new()).unwrap_err();
        assert!(matches!(err, ResolveError::UnresolvedShim { .. }), "{err}");
        assert!(err.to_string().contains("pyenv shim"), "{err}");
    }
}
