//! `bundle`: an OCI bundle around a built rootfs whose `config.json` is the runtime library's
//! secure default spec, so `job-runtime spec`, the daemon and this tool agree on one default.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("rootfs {path} is not a directory: {source}")]
    Rootfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("create bundle directory {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Spec(#[from] runtime::spec::SpecError),
}

/// Writes `bundle/config.json` for `rootfs` running `args` (the default spec's `sh` when
/// empty). A rootfs at `bundle/rootfs` is referenced relatively, any other by absolute path,
/// so a shared, cached rootfs needs no copy. Returns the config path.
pub fn write(rootfs: &Path, bundle: &Path, args: &[String]) -> Result<PathBuf, BundleError> {
    let rootfs_err = |source| BundleError::Rootfs {
        path: rootfs.to_path_buf(),
        source,
    };
    let rootfs = std::fs::canonicalize(rootfs).map_err(rootfs_err)?;
    if !rootfs.is_dir() {
        return Err(rootfs_err(std::io::Error::from(
            std::io::ErrorKind::NotADirectory,
        )));
    }
    std::fs::create_dir_all(bundle).map_err(|source| BundleError::Create {
        path: bundle.to_path_buf(),
        source,
    })?;
    let bundle = std::fs::canonicalize(bundle).map_err(|source| BundleError::Create {
        path: bundle.to_path_buf(),
        source,
    })?;
    let root_path = if rootfs == bundle.join("rootfs") {
        PathBuf::from("rootfs")
    } else {
        rootfs
    };
    let mut spec = runtime::spec::default_spec(args);
    if let Some(root) = spec.root_mut() {
        root.set_path(root_path);
    }
    let config = bundle.join("config.json");
    runtime::spec::save_pretty(&spec, &config)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_the_runtime_default_with_our_rootfs() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("cache/rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let bundle = tmp.path().join("bundle");
        let args = vec!["python3".to_string(), "-c".into(), "print(1)".into()];
        let config = write(&rootfs, &bundle, &args).unwrap();
        let loaded = runtime::spec::load(&bundle).unwrap();
        assert_eq!(loaded.rootfs, std::fs::canonicalize(&rootfs).unwrap());
        let spec: oci_spec::runtime::Spec =
            serde_json::from_slice(&std::fs::read(config).unwrap()).unwrap();
        let want = runtime::spec::default_spec(&args);
        assert_eq!(spec.process(), want.process());
        assert_eq!(spec.linux(), want.linux());
        // A rootfs inside the bundle stays relative.
        let inner = bundle.join("rootfs");
        std::fs::create_dir(&inner).unwrap();
        write(&inner, &bundle, &[]).unwrap();
        let spec = runtime::spec::load(&bundle).unwrap().spec;
        assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("rootfs"));
    }
}
