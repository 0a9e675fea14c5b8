//! `host` builds against this machine's real programs (needs root for chroot).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rootfs_builder::elf;
use rootfs_builder::host::{self, HostRequest};
use rootfs_builder::output::{self, MARKER};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn request(out: &Path, programs: &[&str]) -> HostRequest {
    HostRequest {
        out: out.to_path_buf(),
        programs: programs.iter().map(|s| s.to_string()).collect(),
        with: Vec::new(),
        force: false,
    }
}

/// Every file in `root` that could be exec'd as a program: an ELF with an interpreter, a static
/// ELF executable, or an executable script.
fn programs_in(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    output::walk(root, &mut |rel, meta| {
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Ok(());
        }
        let full = root.join(rel);
        let head = fs::read(&full).unwrap_or_default();
        let is_program = if elf::has_elf_magic(&head) {
            // Shared libraries have no PT_INTERP; the dynamic loader itself is allowed.
            let info = elf::read(&full).unwrap();
            info.interp.is_some() && !rel.to_string_lossy().contains(".so")
        } else {
            head.starts_with(b"#!")
        };
        if is_program {
            found.push(Path::new("/").join(rel));
        }
        Ok(())
    })
    .unwrap();
    found.sort();
    found
}

/// Where `/usr/bin/NAME` leads inside the rootfs, resolving symlinks relative to `root` as the
/// kernel does after pivot_root.
fn which_real(name: &str, root: &Path) -> PathBuf {
    let mut pending: Vec<PathBuf> = vec![PathBuf::from("usr/bin"), PathBuf::from(name)];
    pending.reverse();
    let mut cur = PathBuf::from("/");
    while let Some(c) = pending.pop() {
        if c == Path::new("..") {
            cur.pop();
            continue;
        }
        let next = cur.join(&c);
        match fs::read_link(root.join(next.strip_prefix("/").unwrap())) {
            Ok(target) => {
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                let comps: Vec<PathBuf> = target
                    .components()
                    .filter(|c| !matches!(c, std::path::Component::RootDir))
                    .map(|c| PathBuf::from(c.as_os_str()))
                    .collect();
                pending.extend(comps.into_iter().rev());
            }
            Err(_) => cur = next,
        }
    }
    cur
}

#[test]
fn sh_and_python3_rootfs_runs_and_holds_only_their_programs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rootfs");
    let built = host::build(&request(&out, &["sh", "python3"])).unwrap();
    assert!(!built.reused);
    assert_eq!(built.key.len(), 64);
    for dir in ["proc", "dev", "sys", "tmp", "etc"] {
        assert!(out.join(dir).is_dir(), "{dir} missing");
    }
    let passwd = fs::read_to_string(out.join("etc/passwd")).unwrap();
    assert!(passwd.contains("root:x:0:0") && passwd.contains("nobody:x:65534"));
    assert!(!out
        .join("usr/bin/python3")
        .symlink_metadata()
        .unwrap()
        .is_dir());

    let programs = programs_in(&out);
    let sh = which_real("sh", &out);
    let python = which_real("python3", &out);
    assert_eq!(programs, {
        let mut want = vec![sh, python];
        want.sort();
        want
    });
    // No tests or GUI toolkits came along; the host's bytecode neither (see below).
    let mut unwanted = Vec::new();
    let mut json_pyc = None;
    output::walk(&out, &mut |rel, _| {
        let name = rel.file_name().unwrap().to_string_lossy();
        if rel.ends_with("json/__pycache__") {
            json_pyc = fs::read_dir(out.join(rel))
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("__init__.")
                });
        }
        if ["test", "tests", "tkinter", "idlelib", "site-packages"].contains(&name.as_ref()) {
            unwanted.push(rel.to_path_buf());
        }
        Ok(())
    })
    .unwrap();
    assert!(unwanted.is_empty(), "{unwanted:?}");
    // The stdlib is compiled in the rootfs, hash-checked (PEP 552 flags 0b11), not copied.
    let json_pyc = json_pyc.expect("json/__pycache__/__init__.*.pyc in the rootfs");
    let header = fs::read(&json_pyc).unwrap();
    assert_eq!(u32::from_le_bytes(header[4..8].try_into().unwrap()), 3);
    let fixed_mtime = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
    let built_at = fixed_mtime(&json_pyc);
    // The cache lists the rootfs's own libraries, not the host's others.
    let cache = fs::read(out.join("etc/ld.so.cache")).expect("etc/ld.so.cache");
    let host_cache = fs::read("/etc/ld.so.cache").unwrap();
    assert!(cache.len() < host_cache.len());

    if !is_root() {
        eprintln!("skipping chroot run: needs root");
        return;
    }
    // ld.so finds every library of `sh` through the cache, without probing directories.
    let traced = Command::new("chroot")
        .arg(&out)
        .args(["/bin/sh", "-c", "true"])
        .env("LD_DEBUG", "libs")
        .output()
        .unwrap();
    let trace = String::from_utf8_lossy(&traced.stderr);
    assert!(trace.contains("search cache=/etc/ld.so.cache"), "{trace}");
    assert!(!trace.contains("system search path"), "{trace}");
    let run = Command::new("chroot")
        .arg(&out)
        .env_remove("PYTHONDONTWRITEBYTECODE")
        .args([
            "/usr/bin/python3",
            "-c",
            "import json, sqlite3, ssl, ctypes, hashlib; \
             print(json.dumps([sqlite3.sqlite_version_info[0], ssl.OPENSSL_VERSION.split()[0], \
             hashlib.sha256(b'job').hexdigest()[:6], ctypes.sizeof(ctypes.c_int)]))",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "[3, \"OpenSSL\", \"5e8c99\", 4]"
    );
    // Python took the bytecode as valid: it would otherwise have rewritten it.
    assert_eq!(
        fixed_mtime(&json_pyc),
        built_at,
        "json's bytecode was recompiled"
    );
    let sh = Command::new("chroot")
        .arg(&out)
        .args(["/bin/sh", "-c", "echo ok"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&sh.stdout), "ok\n");
}

#[test]
fn same_inputs_give_same_tree_and_the_key_is_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let first = host::build(&request(&a, &["sh"])).unwrap();
    let second = host::build(&request(&b, &["sh"])).unwrap();
    assert_eq!(first.key, second.key);
    assert_eq!(output::tree_key(&a).unwrap(), output::tree_key(&b).unwrap());
    let again = host::build(&request(&a, &["sh"])).unwrap();
    assert!(again.reused);
    assert_eq!(again.key, first.key);
    let mut forced = request(&a, &["sh"]);
    forced.force = true;
    let rebuilt = host::build(&forced).unwrap();
    assert!(!rebuilt.reused);
    assert_eq!(rebuilt.key, first.key);
    // A different request is rebuilt in place.
    let other = host::build(&request(&a, &["sh", "env"])).unwrap();
    assert!(!other.reused);
    assert_ne!(other.key, first.key);
    assert!(a.join("usr/bin/env").exists());
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        2,
        "temp dirs left"
    );
}

#[test]
fn with_paths_and_scripts_bring_what_they_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    fs::write(data.join("sub/file.txt"), "hello").unwrap();
    let script = tmp.path().join("greet");
    fs::write(&script, "#!/bin/sh\necho greet\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let out = tmp.path().join("rootfs");
    let mut req = request(&out, &[script.to_str().unwrap()]);
    // The whole temporary directory, which also holds the build's own staging directory.
    req.with = vec![tmp.path().to_path_buf()];
    host::build(&req).unwrap();
    let staged = |p: &Path| out.join(p.strip_prefix("/").unwrap());
    let copied: Vec<_> = fs::read_dir(staged(tmp.path()))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        copied.iter().all(|n| !n.contains(".tmp-")),
        "staging copied into itself: {copied:?}"
    );
    assert_eq!(
        fs::read_to_string(staged(&data.join("sub/file.txt"))).unwrap(),
        "hello"
    );
    assert!(staged(&script).is_file());
    assert!(out.join("bin/sh").exists(), "the #! interpreter came along");
    if is_root() {
        let run = Command::new("chroot")
            .arg(&out)
            .arg(&script)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&run.stdout), "greet\n");
    }
}

#[test]
fn failures_name_the_problem_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rootfs");
    let err = host::build(&request(&out, &["sh", "no-such-program-xyz"])).unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown program no-such-program-xyz"),
        "{err}"
    );
    let notes = tmp.path().join("notes.txt");
    fs::write(&notes, "just text").unwrap();
    fs::set_permissions(&notes, fs::Permissions::from_mode(0o755)).unwrap();
    let err = host::build(&request(&out, &[notes.to_str().unwrap()])).unwrap_err();
    assert!(err.to_string().contains("neither an ELF"), "{err}");
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("notes.txt")]);
    // A directory the builder did not make is never replaced.
    fs::create_dir(&out).unwrap();
    fs::write(out.join("keep"), "x").unwrap();
    let err = host::build(&request(&out, &["sh"])).unwrap_err();
    assert!(
        err.to_string().contains("not built by rootfs-builder"),
        "{err}"
    );
    assert!(out.join("keep").exists() && !out.join(MARKER).exists());
}

/// pyenv's `python3` shim is a bash script around `pyenv exec`; the rootfs must get the real
/// interpreter it selects, never the launcher.
#[test]
fn pyenv_shim_is_resolved_to_the_real_interpreter() {
    let Some(home) = std::env::var_os("HOME") else {
        return;
    };
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&home).join(".pyenv"));
    let shims = root.join("shims");
    if !shims.join("python3").is_file() {
        eprintln!("skipping: no pyenv python3 shim at {}", shims.display());
        return;
    }
    let env = rootfs_builder::resolve::Env {
        path: format!("{}:/usr/bin:/bin", shims.display()),
        cwd: PathBuf::from("/"),
    };
    let mut inputs = Vec::new();
    let progs = rootfs_builder::resolve::resolve("python3", &env, &mut inputs).unwrap();
    assert_eq!(progs.len(), 1, "{progs:?}");
    let real = &progs[0];
    assert!(real.is_elf, "{real:?}");
    assert!(!real.path.starts_with(&shims), "{real:?}");
    assert_eq!(real.link_name.as_deref(), Some("python3"));
    assert!(inputs.contains(&root.join("version")));
}

/// Debian's own interpreter keeps its stdlib in /usr/lib/python3.X and its extension
/// modules in lib-dynload: the same knowledge must cover it.
#[test]
fn distribution_python_runs_too() {
    let python = Path::new("/usr/bin/python3");
    if !python.exists() || !is_root() {
        eprintln!("skipping: needs /usr/bin/python3 and root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rootfs");
    host::build(&request(&out, &["/usr/bin/python3"])).unwrap();
    let run = Command::new("chroot")
        .arg(&out)
        .env_remove("PYTHONDONTWRITEBYTECODE")
        .args([
            "/usr/bin/python3",
            "-c",
            "import json, sqlite3, ssl, ctypes, hashlib; print('ok')",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout), "ok\n");
}

/// A program that finds its library through `$ORIGIN/../lib`, as DT_RUNPATH (the linker's
/// default) and as DT_RPATH: the library must come along and load inside the rootfs.
#[test]
fn origin_relative_rpath_and_runpath_are_followed() {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("skipping: no C compiler (cc)");
        return;
    }
    for (variant, dtags) in [
        ("runpath", "-Wl,--enable-new-dtags"),
        ("rpath", "-Wl,--disable-new-dtags"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("app");
        fs::create_dir_all(app.join("lib")).unwrap();
        fs::create_dir_all(app.join("bin")).unwrap();
        fs::write(
            tmp.path().join("greet.c"),
            "const char *greet(void) { return \"hi from lib\"; }\n",
        )
        .unwrap();
        fs::write(
            tmp.path().join("main.c"),
            "#include <stdio.h>\nconst char *greet(void);\nint main(void) { puts(greet()); return 0; }\n",
        )
        .unwrap();
        let cc = |args: &[&str]| {
            let out = Command::new("cc")
                .current_dir(tmp.path())
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "cc {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        cc(&["-shared", "-fPIC", "-o", "app/lib/libgreet.so", "greet.c"]);
        cc(&[
            "-o",
            "app/bin/hello",
            "main.c",
            "-Lapp/lib",
            "-lgreet",
            "-Wl,-rpath,$ORIGIN/../lib",
            dtags,
        ]);
        let info = elf::read(&app.join("bin/hello")).unwrap();
        let tag = if variant == "runpath" {
            &info.runpath
        } else {
            &info.rpath
        };
        assert_eq!(
            tag,
            &vec!["$ORIGIN/../lib".to_string()],
            "{variant}: {info:?}"
        );

        let out = tmp.path().join("rootfs");
        let program = app.join("bin/hello");
        host::build(&request(&out, &[program.to_str().unwrap()])).unwrap();
        let staged = out.join(app.join("lib/libgreet.so").strip_prefix("/").unwrap());
        assert!(staged.is_file(), "{variant}: library not copied");
        if is_root() {
            // ld.so finds the main program's $ORIGIN through /proc/self/exe, so /proc must be
            // mounted (as job-runtime does); a private mount namespace keeps the host clean.
            let run = Command::new("unshare")
                .args(["--mount", "--pid", "--fork"])
                .arg(format!("--mount-proc={}", out.join("proc").display()))
                .arg("chroot")
                .arg(&out)
                .arg(&program)
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&run.stdout),
                "hi from lib\n",
                "{variant}"
            );
        }
    }
}

/// A program whose library is gone: the error names the library and who needs it, and no
/// output is left.
#[test]
fn missing_library_is_named_with_its_needer() {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("skipping: no C compiler (cc)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(dir.join("gone.c"), "int gone(void) { return 1; }\n").unwrap();
    fs::write(
        dir.join("main.c"),
        "int gone(void);\nint main(void) { return gone(); }\n",
    )
    .unwrap();
    for args in [
        &["-shared", "-fPIC", "-o", "libgone.so", "gone.c"][..],
        &["-o", "needy", "main.c", "-L.", "-lgone"][..],
    ] {
        let out = Command::new("cc")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::remove_file(dir.join("libgone.so")).unwrap();
    let work = dir.join("work");
    let program = dir.join("needy");
    let err = host::build(&request(&work.join("rootfs"), &[program.to_str().unwrap()]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("library libgone.so needed by"), "{err}");
    assert!(err.contains(program.to_str().unwrap()), "{err}");
    assert_eq!(
        fs::read_dir(&work).unwrap().count(),
        0,
        "output left behind"
    );
}
