//! `image` builds: an OCI image layout (directory), an OCI archive (a tar of a layout, as
//! `skopeo copy oci-archive:` writes) or a `docker save` archive, unpacked layer by layer with
//! [`crate::extract`].
//!
//! Every layout file is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a
//! hostile archive cannot make the builder read host files through a symlinked blob, and
//! every blob is checked against its digest before a byte of it is unpacked.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::extract::{ExtractError, Extractor, IdShift, Options};
use crate::host::BuiltRootfs;
use crate::output::{self, Fingerprint, Input, Marker, OutputError, Staging, BUILDER_VERSION};

const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const REF_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Mount points a runtime needs in a (read-only) rootfs, with their usual modes.
const MOUNT_POINTS: &[(&str, u32)] = &[
    ("proc", 0o555),
    ("dev", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is neither an OCI image layout (index.json) nor a docker save archive (manifest.json)")]
    NotAnImage { path: PathBuf },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: no image manifest for linux/{}{}; pick another image or --ref", oci_arch(), reference.as_ref().map(|r| format!(" named {r}")).unwrap_or_default())]
    NoManifest {
        path: PathBuf,
        reference: Option<String>,
    },
    #[error("unsupported media type {media_type} (blob {digest}); supported: OCI/Docker manifests and tar, tar+gzip, tar+zstd layers")]
    UnsupportedMediaType { media_type: String, digest: String },
    #[error("unsupported or malformed digest {digest}; only sha256:<64 hex> is accepted")]
    BadDigest { digest: String },
    #[error("blob {digest} is missing from the image")]
    MissingBlob { digest: String },
    #[error("blob {digest} is corrupt: its content hashes to sha256:{actual}")]
    DigestMismatch { digest: String, actual: String },
    #[error("docker manifest names layer {path}, which is not a plain path inside the archive")]
    BadLayerPath { path: String },
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Output(#[from] OutputError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A request to unpack an image.
#[derive(Debug, Clone, Default)]
pub struct ImageRequest {
    /// An OCI layout directory, or an OCI/docker-save archive file.
    pub source: PathBuf,
    pub out: PathBuf,
    /// Added to every owner id, for a user-namespace mapping.
    pub shift: IdShift,
    /// Which manifest of a multi-image layout (`org.opencontainers.image.ref.name`).
    pub reference: Option<String>,
    pub force: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexOrManifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    layers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
    /// Decided from the first bytes (docker save layers carry no media type).
    Sniff,
}

/// One layer blob to apply.
struct Layer {
    path: PathBuf,
    digest: Option<String>,
    compression: Compression,
}

#[derive(Serialize)]
struct RequestKey<'a> {
    builder: &'a str,
    kind: &'a str,
    source: &'a Path,
    shift: (u32, u32),
    reference: &'a Option<String>,
}

/// Unpacks (or reuses) the image `req.source` into `req.out`.
pub fn build(req: &ImageRequest) -> Result<BuiltRootfs, ImageError> {
    let source = std::fs::canonicalize(&req.source).map_err(io_err(&req.source))?;
    let request_key = output::hash_json(&RequestKey {
        builder: BUILDER_VERSION,
        kind: "image",
        source: &source,
        shift: (req.shift.uid, req.shift.gid),
        reference: &req.reference,
    });
    // Blobs are content-addressed: the archive file, or the layout's index, identifies it.
    let inputs: Vec<PathBuf> = if source.is_dir() {
        vec![source.join("index.json"), source.join("manifest.json")]
    } else {
        vec![source.clone()]
    };
    if !req.force {
        if let Some(marker) = Marker::read(&req.out).filter(|m| m.is_fresh(&request_key)) {
            return Ok(BuiltRootfs {
                path: req.out.clone(),
                key: marker.key,
                reused: true,
            });
        }
    }
    let staging = Staging::begin(&req.out)?;
    // An archive is unpacked next to the output first (same file system, removed on drop).
    let unpacked = if source.is_dir() {
        None
    } else {
        Some(unpack_archive(&source, &req.out)?)
    };
    let layout = unpacked.as_ref().map(|d| d.path()).unwrap_or(&source);
    let layout_fd = rustix::fs::open(
        layout,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(layout)(e.into()))?;
    let layers = read_layers(&layout_fd, layout, req.reference.as_deref())?;
    let mut extractor = Extractor::new(
        staging.path(),
        Options {
            whiteouts: true,
            ownership: true,
            shift: req.shift,
            devices: true,
        },
    )?;
    extractor.own_root()?;
    for layer in &layers {
        apply_layer(&layout_fd, layout, layer, &mut extractor)?;
    }
    extractor.ensure_dirs(MOUNT_POINTS)?;
    extractor.finish()?;
    drop(unpacked);
    let key = output::tree_key(staging.path())?;
    let marker = Marker {
        builder: BUILDER_VERSION.to_owned(),
        kind: "image".to_owned(),
        request_key,
        key: key.clone(),
        inputs: inputs
            .into_iter()
            .map(|path| Input {
                fingerprint: Fingerprint::of(&path),
                path,
            })
            .collect(),
    };
    let path = staging.commit(&marker)?;
    Ok(BuiltRootfs {
        path,
        key,
        reused: false,
    })
}

/// Unpacks the outer archive (no whiteouts, no owners: it only holds blobs and JSON).
fn unpack_archive(archive: &Path, out: &Path) -> Result<tempfile::TempDir, ImageError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = tempfile::Builder::new()
        .prefix(".rootfs-builder-archive-")
        .tempdir_in(&parent)
        .map_err(io_err(&parent))?;
    let file = File::open(archive).map_err(io_err(archive))?;
    let mut ex = Extractor::new(
        dir.path(),
        Options {
            whiteouts: false,
            ownership: false,
            shift: IdShift::default(),
            devices: false,
        },
    )?;
    let name = archive.display().to_string();
    // `docker save | gzip` and compressed OCI archives are common: accept them too.
    let mut reader = BufReader::new(file);
    match sniff(&mut reader).map_err(io_err(archive))? {
        Compression::Gzip => ex.apply(flate2::bufread::MultiGzDecoder::new(reader), &name)?,
        Compression::Zstd => ex.apply(
            zstd::stream::read::Decoder::with_buffer(reader).map_err(|source| {
                ExtractError::Corrupt {
                    layer: name.clone(),
                    source,
                }
            })?,
            &name,
        )?,
        Compression::None | Compression::Sniff => ex.apply(reader, &name)?,
    }
    Ok(dir)
}

/// Opens `rel` strictly inside the layout: no `..`, no symlinks anywhere on the way.
fn open_in(layout: &OwnedFd, base: &Path, rel: &Path) -> Result<File, ImageError> {
    let fd = rustix::fs::openat2(
        layout,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| io_err(&base.join(rel))(e.into()))?;
    Ok(File::from(fd))
}

fn read_json<T: serde::de::DeserializeOwned>(
    layout: &OwnedFd,
    base: &Path,
    rel: &Path,
) -> Result<T, ImageError> {
    let mut text = Vec::new();
    open_in(layout, base, rel)?
        .read_to_end(&mut text)
        .map_err(io_err(&base.join(rel)))?;
    serde_json::from_slice(&text).map_err(|source| ImageError::Json {
        path: base.join(rel),
        source,
    })
}

fn exists_in(layout: &OwnedFd, rel: &str) -> bool {
    rustix::fs::statat(layout, rel, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok()
}

/// The layers to apply, bottom first.
fn read_layers(
    layout: &OwnedFd,
    base: &Path,
    reference: Option<&str>,
) -> Result<Vec<Layer>, ImageError> {
    if exists_in(layout, "index.json") {
        let index: IndexOrManifest = read_json(layout, base, Path::new("index.json"))?;
        let manifest = select_manifest(layout, base, index, reference)?;
        manifest
            .layers
            .unwrap_or_default()
            .into_iter()
            .map(|d| {
                let media_type = d.media_type.clone().unwrap_or_default();
                Ok(Layer {
                    path: blob_path(&d.digest)?,
                    compression: layer_compression(&media_type, &d.digest)?,
                    digest: Some(d.digest),
                })
            })
            .collect()
    } else if exists_in(layout, "manifest.json") {
        let entries: Vec<DockerEntry> = read_json(layout, base, Path::new("manifest.json"))?;
        let entry = entries.into_iter().next().ok_or(ImageError::NoManifest {
            path: base.to_path_buf(),
            reference: None,
        })?;
        entry.layers.into_iter().map(docker_layer).collect()
    } else {
        Err(ImageError::NotAnImage {
            path: base.to_path_buf(),
        })
    }
}

fn docker_layer(rel: String) -> Result<Layer, ImageError> {
    let path = PathBuf::from(&rel);
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(ImageError::BadLayerPath { path: rel });
    }
    // Docker 25+ stores layers as blobs/sha256/<hex>: then the digest can be checked.
    let digest = rel
        .strip_prefix("blobs/sha256/")
        .map(|hex| format!("sha256:{hex}"));
    Ok(Layer {
        path,
        digest,
        compression: Compression::Sniff,
    })
}

/// Walks nested indexes down to one image manifest, preferring this machine's platform.
fn select_manifest(
    layout: &OwnedFd,
    base: &Path,
    mut doc: IndexOrManifest,
    reference: Option<&str>,
) -> Result<IndexOrManifest, ImageError> {
    // Nested indexes are finite in valid images; the bound stops a hostile cycle.
    for _ in 0..8 {
        let Some(manifests) = doc.manifests.take() else {
            return Ok(doc);
        };
        let no_manifest = || ImageError::NoManifest {
            path: base.to_path_buf(),
            reference: reference.map(str::to_owned),
        };
        let named: Vec<Descriptor> = manifests
            .into_iter()
            .filter(|d| match reference {
                Some(r) => d.annotations.get(REF_ANNOTATION).map(String::as_str) == Some(r),
                None => true,
            })
            .collect();
        let arch = oci_arch();
        let chosen = named
            .iter()
            .position(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })
            .or_else(|| named.iter().position(|d| d.platform.is_none()))
            .ok_or_else(no_manifest)?;
        let desc = &named[chosen];
        let media_type = desc.media_type.clone().unwrap_or_default();
        if ![
            MT_OCI_INDEX,
            MT_OCI_MANIFEST,
            MT_DOCKER_LIST,
            MT_DOCKER_MANIFEST,
        ]
        .contains(&media_type.as_str())
        {
            return Err(ImageError::UnsupportedMediaType {
                media_type,
                digest: desc.digest.clone(),
            });
        }
        let path = blob_path(&desc.digest)?;
        verify_blob(layout, base, &path, &desc.digest)?;
        doc = read_json(layout, base, &path)?;
        if doc.media_type.is_none() {
            doc.media_type = Some(media_type);
        }
    }
    Err(ImageError::NoManifest {
        path: base.to_path_buf(),
        reference: reference.map(str::to_owned),
    })
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// `blobs/sha256/<hex>` for a well-formed digest; anything else could name another path.
fn blob_path(digest: &str) -> Result<PathBuf, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| ImageError::BadDigest {
            digest: digest.to_owned(),
        })?;
    Ok(PathBuf::from("blobs/sha256").join(hex))
}

fn layer_compression(media_type: &str, digest: &str) -> Result<Compression, ImageError> {
    let base = media_type
        .replace(".nondistributable", "")
        .replace("rootfs.foreign.diff", "rootfs.diff");
    match base.as_str() {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
        _ => Err(ImageError::UnsupportedMediaType {
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
        }),
    }
}

/// Hashes the whole blob before anything of it is used.
fn verify_blob(layout: &OwnedFd, base: &Path, rel: &Path, digest: &str) -> Result<(), ImageError> {
    let mut file = match open_in(layout, base, rel) {
        Ok(f) => f,
        Err(ImageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImageError::MissingBlob {
                digest: digest.to_owned(),
            })
        }
        Err(e) => return Err(e),
    };
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io_err(&base.join(rel)))?;
    let actual = hex::encode(hasher.finalize());
    if digest.strip_prefix("sha256:") != Some(actual.as_str()) {
        return Err(ImageError::DigestMismatch {
            digest: digest.to_owned(),
            actual,
        });
    }
    Ok(())
}

fn apply_layer(
    layout: &OwnedFd,
    base: &Path,
    layer: &Layer,
    ex: &mut Extractor,
) -> Result<(), ImageError> {
    if let Some(digest) = &layer.digest {
        verify_blob(layout, base, &layer.path, digest)?;
    }
    let name = layer
        .digest
        .clone()
        .unwrap_or_else(|| layer.path.display().to_string());
    let mut reader = BufReader::new(open_in(layout, base, &layer.path)?);
    let compression = match layer.compression {
        Compression::Sniff => sniff(&mut reader).map_err(io_err(&layer.path))?,
        c => c,
    };
    let corrupt = |source| ExtractError::Corrupt {
        layer: name.clone(),
        source,
    };
    match compression {
        Compression::Gzip => ex.apply(flate2::bufread::MultiGzDecoder::new(reader), &name)?,
        Compression::Zstd => ex.apply(
            zstd::stream::read::Decoder::with_buffer(reader).map_err(corrupt)?,
            &name,
        )?,
        Compression::None | Compression::Sniff => ex.apply(reader, &name)?,
    }
    Ok(())
}

fn sniff(reader: &mut BufReader<File>) -> std::io::Result<Compression> {
    use std::io::BufRead;
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}
