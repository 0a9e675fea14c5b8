//! `image` builds: a real umoci-made busybox image, hand-made layouts in every format the
//! builder reads, and hostile archives that try to write outside the target.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rootfs_builder::extract::IdShift;
use rootfs_builder::image::{self, ImageError, ImageRequest};
use sha2::{Digest, Sha256};

const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn request(source: &Path, out: &Path) -> ImageRequest {
    ImageRequest {
        source: source.to_path_buf(),
        out: out.to_path_buf(),
        ..Default::default()
    }
}

/// One tar entry of a test layer.
enum E<'a> {
    File(&'a str, &'a str),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// A tar stream whose names are written raw, so hostile names (`../x`, `/x`) survive: the
/// `tar` crate's safe path setters would refuse them.
fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let (name, data): (&str, &[u8]) = match e {
            E::File(n, c) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (n, c.as_bytes())
            }
            E::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, b"")
            }
            E::Symlink(n, t) | E::Hardlink(n, t) => {
                let kind = if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                h.set_entry_type(kind);
                h.set_mode(0o777);
                let raw = &mut h.as_old_mut().linkname;
                raw[..t.len()].copy_from_slice(t.as_bytes());
                (n, b"")
            }
        };
        h.set_size(data.len() as u64);
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn write_blob(layout: &Path, data: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(data));
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    format!("sha256:{hex}")
}

/// An OCI layout holding one image with `layers` (media type, blob bytes), bottom first.
fn oci_layout(layout: &Path, layers: &[(&str, Vec<u8>)]) {
    fs::create_dir_all(layout).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let config = write_blob(layout, br#"{"architecture":"amd64","os":"linux"}"#);
    let descs: Vec<String> = layers
        .iter()
        .map(|(mt, data)| {
            let d = write_blob(layout, data);
            format!(
                r#"{{"mediaType":"{mt}","digest":"{d}","size":{}}}"#,
                data.len()
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[{}]}}"#,
        descs.join(",")
    );
    let m = write_blob(layout, manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":{}}}]}}"#,
        manifest.len()
    );
    fs::write(layout.join("index.json"), index).unwrap();
}

/// A tar of a directory's contents (an oci-archive, or a docker save).
fn tar_dir(dir: &Path, archive: &Path) {
    let mut b = tar::Builder::new(fs::File::create(archive).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// Builds an image of the given layers and returns the result, plus the directory that
/// serves as "outside": it must stay untouched.
fn build_hostile(layers: &[Vec<u8>]) -> (tempfile::TempDir, PathBuf, Result<(), ImageError>) {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "host data").unwrap();
    let layout = tmp.path().join("layout");
    let tagged: Vec<(&str, Vec<u8>)> = layers.iter().map(|l| (LAYER_TAR, l.clone())).collect();
    oci_layout(&layout, &tagged);
    let out = tmp.path().join("work/rootfs");
    let result = image::build(&request(&layout, &out)).map(|_| ());
    (tmp, outside, result)
}

fn assert_outside_untouched(outside: &Path) {
    let names: Vec<_> = fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    assert_eq!(
        fs::read_to_string(outside.join("secret")).unwrap(),
        "host data"
    );
    assert_eq!(fs::metadata(outside.join("secret")).unwrap().nlink(), 1);
}

fn assert_no_output(tmp: &Path) {
    let work = tmp.join("work");
    let left: Vec<_> = fs::read_dir(&work)
        .map(|r| r.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn hostile_dotdot_entry_is_rejected() {
    let (tmp, outside, result) =
        build_hostile(&[layer(&[E::Dir("a"), E::File("a/../../outside/pwned", "x")])]);
    let err = result.unwrap_err();
    assert!(err.to_string().contains("'..'"), "{err}");
    assert_outside_untouched(&outside);
    assert_no_output(tmp.path());
}

#[test]
fn hostile_absolute_path_is_contained() {
    let tmp_probe = tempfile::tempdir().unwrap();
    let abs_target = tmp_probe.path().join("pwned");
    let name = abs_target.to_str().unwrap().to_owned();
    let (tmp, outside, result) = build_hostile(&[layer(&[E::File(&name, "x")])]);
    result.unwrap();
    assert!(!abs_target.exists(), "absolute entry written to the host");
    let inside = tmp
        .path()
        .join("work/rootfs")
        .join(name.trim_start_matches('/'));
    assert_eq!(fs::read_to_string(inside).unwrap(), "x");
    assert_outside_untouched(&outside);
}

#[test]
fn hostile_symlink_then_write_across_layers_is_rejected() {
    let probe = tempfile::tempdir().unwrap();
    let outside_abs = probe.path().to_str().unwrap().to_owned();
    for target in [outside_abs.as_str(), "../../../../../../..", "/"] {
        let (tmp, outside, result) = build_hostile(&[
            layer(&[E::Symlink("escape", target)]),
            layer(&[E::File("escape/pwned", "x")]),
        ]);
        let err = result.unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_outside_untouched(&outside);
        assert!(!probe.path().join("pwned").exists());
        assert!(!Path::new("/pwned").exists());
        assert_no_output(tmp.path());
    }
}

#[test]
fn hostile_symlink_then_write_in_one_layer_is_rejected() {
    let probe = tempfile::tempdir().unwrap();
    let target = probe.path().to_str().unwrap().to_owned();
    let (_tmp, outside, result) = build_hostile(&[layer(&[
        E::Symlink("etc", &target),
        E::File("etc/passwd", "root::0:0::/:/bin/sh"),
    ])]);
    assert!(result.is_err());
    assert!(!probe.path().join("passwd").exists());
    assert_outside_untouched(&outside);
}

#[test]
fn hostile_hardlinks_to_outside_are_rejected() {
    let tmp_probe = tempfile::tempdir().unwrap();
    let secret = tmp_probe.path().join("secret");
    fs::write(&secret, "s").unwrap();
    let abs = secret.to_str().unwrap().to_owned();
    let cases = [
        vec![layer(&[E::Hardlink("link", "../outside/secret")])],
        vec![layer(&[E::Hardlink("link", &abs)])],
        vec![
            layer(&[E::Symlink("s", tmp_probe.path().to_str().unwrap())]),
            layer(&[E::Hardlink("link", "s/secret")]),
        ],
    ];
    for layers in cases {
        let (tmp, outside, result) = build_hostile(&layers);
        assert!(result.is_err(), "hard link to outside accepted");
        assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);
        assert_outside_untouched(&outside);
        assert_no_output(tmp.path());
    }
}

#[test]
fn existing_symlink_is_replaced_not_written_through() {
    let probe = tempfile::tempdir().unwrap();
    let victim = probe.path().join("victim");
    fs::write(&victim, "original").unwrap();
    let (tmp, outside, result) = build_hostile(&[
        layer(&[E::Symlink("f", victim.to_str().unwrap())]),
        layer(&[E::File("f", "new content")]),
    ]);
    result.unwrap();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "original");
    let f = tmp.path().join("work/rootfs/f");
    assert!(fs::symlink_metadata(&f).unwrap().is_file());
    assert_eq!(fs::read_to_string(f).unwrap(), "new content");
    assert_outside_untouched(&outside);
}

#[test]
fn whiteouts_opaque_dirs_and_compressions() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let base = layer(&[
        E::Dir("etc"),
        E::File("etc/motd", "hello"),
        E::File("etc/hostname", "box"),
        E::Dir("data"),
        E::File("data/old.txt", "old"),
        E::Dir("data/sub"),
        E::File("data/sub/deep.txt", "deep"),
        E::Hardlink("etc/hostname.link", "etc/hostname"),
        E::Symlink("motd", "/etc/motd"),
    ]);
    let upper = layer(&[
        E::File("etc/.wh.motd", ""),
        E::File("data/new.txt", "new"),
        E::Dir("data/sub"),
        E::File("data/.wh..wh..opq", ""),
    ]);
    // A whiteout after an entry of the same layer hides only lower layers' entry.
    let top = layer(&[
        E::File("top.txt", "zstd"),
        E::File("etc/issue", "same layer"),
        E::File("etc/.wh.issue", ""),
    ]);
    oci_layout(
        &layout,
        &[
            (LAYER_GZIP, gzip(&base)),
            (LAYER_TAR, upper),
            (LAYER_ZSTD, zstd::encode_all(&top[..], 3).unwrap()),
        ],
    );
    let out = tmp.path().join("rootfs");
    let built = image::build(&request(&layout, &out)).unwrap();
    assert!(!out.join("etc/motd").exists());
    assert_eq!(fs::read_to_string(out.join("etc/hostname")).unwrap(), "box");
    assert_eq!(
        fs::read_to_string(out.join("etc/issue")).unwrap(),
        "same layer"
    );
    let hl = fs::metadata(out.join("etc/hostname.link")).unwrap();
    assert_eq!(
        hl.ino(),
        fs::metadata(out.join("etc/hostname")).unwrap().ino()
    );
    let mut data: Vec<_> = fs::read_dir(out.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    data.sort();
    assert_eq!(data, vec!["new.txt", "sub"]);
    assert_eq!(fs::read_dir(out.join("data/sub")).unwrap().count(), 0);
    assert_eq!(fs::read_to_string(out.join("top.txt")).unwrap(), "zstd");
    assert_eq!(
        fs::read_link(out.join("motd")).unwrap(),
        Path::new("/etc/motd")
    );
    assert_eq!(
        fs::metadata(out.join("top.txt")).unwrap().mtime(),
        1_000_000
    );
    for dir in ["proc", "dev", "sys", "tmp"] {
        assert!(out.join(dir).is_dir(), "mount point {dir} missing");
    }

    // The same image as an oci-archive gives the same tree; a second request is reused.
    let archive = tmp.path().join("image.tar");
    tar_dir(&layout, &archive);
    let out2 = tmp.path().join("rootfs2");
    let from_archive = image::build(&request(&archive, &out2)).unwrap();
    assert_eq!(from_archive.key, built.key);
    assert!(image::build(&request(&archive, &out2)).unwrap().reused);
}

#[test]
fn docker_save_archive_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("save");
    fs::create_dir_all(dir.join("abc")).unwrap();
    fs::write(
        dir.join("abc/layer.tar"),
        layer(&[E::File("hello", "docker"), E::File("implicit/dirs/f", "x")]),
    )
    .unwrap();
    fs::create_dir_all(dir.join("def")).unwrap();
    fs::write(
        dir.join("def/layer.tar"),
        gzip(&layer(&[E::File("two", "2")])),
    )
    .unwrap();
    fs::write(
        dir.join("manifest.json"),
        r#"[{"Config":"c.json","RepoTags":["x:latest"],"Layers":["abc/layer.tar","def/layer.tar"]}]"#,
    )
    .unwrap();
    let plain = tmp.path().join("save.tar");
    tar_dir(&dir, &plain);
    // As `docker save | gzip` writes it.
    let archive = tmp.path().join("save.tar.gz");
    fs::write(&archive, gzip(&fs::read(&plain).unwrap())).unwrap();
    let out = tmp.path().join("rootfs");
    let first = image::build(&request(&archive, &out)).unwrap();
    assert_eq!(fs::read_to_string(out.join("hello")).unwrap(), "docker");
    assert_eq!(fs::read_to_string(out.join("two")).unwrap(), "2");
    // Directories the archive never lists still come out the same every time.
    let mut again = request(&archive, &tmp.path().join("rootfs2"));
    again.force = true;
    assert_eq!(image::build(&again).unwrap().key, first.key);
}

#[test]
fn broken_images_name_the_problem_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    fs::create_dir(&work).unwrap();
    let out = work.join("rootfs");
    // Truncated gzip layer (digest matches the truncated bytes, so the tar reader sees it).
    let cut = {
        let full = gzip(&layer(&[E::File("big", &"x".repeat(100_000))]));
        full[..full.len() / 2].to_vec()
    };
    let l1 = tmp.path().join("l1");
    oci_layout(&l1, &[(LAYER_GZIP, cut)]);
    let err = image::build(&request(&l1, &out)).unwrap_err();
    assert!(err.to_string().contains("corrupt or truncated"), "{err}");
    // Unsupported media type.
    let l2 = tmp.path().join("l2");
    oci_layout(
        &l2,
        &[("application/vnd.example.layer.v1.squashfs", vec![1, 2, 3])],
    );
    let err = image::build(&request(&l2, &out)).unwrap_err();
    assert!(
        matches!(err, ImageError::UnsupportedMediaType { .. }),
        "{err}"
    );
    // A blob whose content does not match its digest.
    let l3 = tmp.path().join("l3");
    oci_layout(&l3, &[(LAYER_TAR, layer(&[E::File("a", "a")]))]);
    let blobs: Vec<_> = fs::read_dir(l3.join("blobs/sha256")).unwrap().collect();
    for b in blobs {
        let p = b.unwrap().path();
        if fs::read(&p).unwrap().len() > 512 {
            fs::write(&p, layer(&[E::File("a", "tampered")])).unwrap();
        }
    }
    let err = image::build(&request(&l3, &out)).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    // A blob that is a symlink to a host file (even one with the right digest) is not read.
    let l4 = tmp.path().join("l4");
    let content = layer(&[E::File("from-host", "x")]);
    oci_layout(&l4, &[(LAYER_TAR, content.clone())]);
    let hex = hex::encode(Sha256::digest(&content));
    let host_copy = tmp.path().join("host-file");
    fs::write(&host_copy, &content).unwrap();
    let blob = l4.join("blobs/sha256").join(&hex);
    fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink(&host_copy, &blob).unwrap();
    let err = image::build(&request(&l4, &out)).unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }), "{err}");
    // A reference that names no manifest.
    let mut wrong_ref = request(&l3, &out);
    wrong_ref.reference = Some("nope".into());
    let err = image::build(&wrong_ref).unwrap_err();
    assert!(err.to_string().contains("named nope"), "{err}");
    // Not an image at all.
    let garbage = tmp.path().join("garbage.tar");
    fs::write(&garbage, vec![7u8; 3000]).unwrap();
    let err = image::build(&request(&garbage, &out)).unwrap_err();
    assert!(
        err.to_string().contains("corrupt") || err.to_string().contains("neither"),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(&work).unwrap().count(),
        0,
        "half-built output left"
    );
}

#[test]
fn ownership_is_shifted_for_user_namespaces() {
    if !is_root() {
        eprintln!("skipping: chown needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    oci_layout(
        &layout,
        &[(LAYER_TAR, layer(&[E::Dir("d"), E::File("d/f", "x")]))],
    );
    let out = tmp.path().join("rootfs");
    let mut req = request(&layout, &out);
    req.shift = IdShift {
        uid: 100_000,
        gid: 200_000,
    };
    image::build(&req).unwrap();
    let m = fs::metadata(out.join("d/f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (100_000, 200_000));
    assert_eq!(fs::metadata(out.join("d")).unwrap().uid(), 100_000);
    // The mapped root owns the rootfs and the mount points the builder adds.
    assert_eq!(fs::metadata(&out).unwrap().uid(), 100_000);
    assert_eq!(fs::metadata(out.join("proc")).unwrap().gid(), 200_000);
}

/// umoci's own output: a busybox base layer, a layer in which umoci records a deleted file
/// as a whiteout, and a layer (added raw) that makes a directory opaque.
#[test]
fn umoci_busybox_image_unpacks_and_runs() {
    let umoci_ok = Command::new("umoci").arg("--version").output().is_ok();
    if !umoci_ok {
        eprintln!("skipping: umoci is not installed (apt-get install umoci)");
        return;
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        eprintln!("skipping: /bin/busybox missing (apt-get install busybox-static)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let image_ref = format!("{}:v1", layout.display());
    let bundle = tmp.path().join("bundle");
    let umoci = |args: &[&str]| {
        let out = Command::new("umoci").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "umoci {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &image_ref]);
    umoci(&["unpack", "--image", &image_ref, bundle.to_str().unwrap()]);
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "etc", "data/sub"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    fs::write(rootfs.join("etc/motd"), "delete me").unwrap();
    fs::write(rootfs.join("etc/hostname"), "box").unwrap();
    fs::write(rootfs.join("data/old.txt"), "old").unwrap();
    fs::write(rootfs.join("data/sub/deep.txt"), "deep").unwrap();
    umoci(&["repack", "--image", &image_ref, bundle.to_str().unwrap()]);
    // Second layer: umoci writes the deletion as etc/.wh.motd.
    fs::remove_dir_all(&bundle).unwrap();
    umoci(&["unpack", "--image", &image_ref, bundle.to_str().unwrap()]);
    fs::remove_file(bundle.join("rootfs/etc/motd")).unwrap();
    umoci(&["repack", "--image", &image_ref, bundle.to_str().unwrap()]);
    // Third layer: the directory is replaced wholesale (opaque), as Docker records it.
    let opaque = tmp.path().join("opaque.tar");
    fs::write(
        &opaque,
        layer(&[
            E::Dir("data"),
            E::File("data/.wh..wh..opq", ""),
            E::File("data/new.txt", "new"),
        ]),
    )
    .unwrap();
    umoci(&[
        "raw",
        "add-layer",
        "--image",
        &image_ref,
        opaque.to_str().unwrap(),
    ]);

    let out = tmp.path().join("rootfs");
    let mut req = request(&layout, &out);
    req.reference = Some("v1".into());
    image::build(&req).unwrap();
    assert!(!out.join("etc/motd").exists(), "whiteout not applied");
    assert_eq!(fs::read_to_string(out.join("etc/hostname")).unwrap(), "box");
    let mut data: Vec<_> = fs::read_dir(out.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    data.sort();
    assert_eq!(data, vec!["new.txt"], "opaque directory kept lower content");
    assert_eq!(fs::read_to_string(out.join("data/new.txt")).unwrap(), "new");
    assert_eq!(
        fs::read_link(out.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    if is_root() {
        let run = Command::new("chroot")
            .arg(&out)
            .args([
                "/bin/sh",
                "-c",
                "busybox cat /data/new.txt; echo; busybox ls /etc",
            ])
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&run.stdout), "new\nhostname\n");
    }
}

/// `SCHILY.xattr.*` PAX records become extended attributes (user.* works on any file system
/// the tests run on; failures elsewhere are tolerated by design).
#[test]
fn pax_xattrs_are_applied() {
    let mut b = tar::Builder::new(Vec::new());
    let record = "32 SCHILY.xattr.user.rootfs=yes\n";
    assert_eq!(record.len(), 32);
    let mut pax = tar::Header::new_ustar();
    pax.set_entry_type(tar::EntryType::XHeader);
    pax.set_path("PaxHeaders/f").unwrap();
    pax.set_size(record.len() as u64);
    pax.set_mode(0o644);
    pax.set_cksum();
    b.append(&pax, record.as_bytes()).unwrap();
    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_path("f").unwrap();
    file.set_size(1);
    file.set_mode(0o644);
    file.set_cksum();
    b.append(&file, &b"x"[..]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    oci_layout(&layout, &[(LAYER_TAR, b.into_inner().unwrap())]);
    let out = tmp.path().join("rootfs");
    image::build(&request(&layout, &out)).unwrap();
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(out.join("f"), "user.rootfs", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"yes");
}
