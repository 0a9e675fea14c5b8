//! A job's output on disk, the format both its writer (the job's shim) and its readers (jobd)
//! share. No async runtime here: the shim links this and must stay cheap to exec.
//!
//! - `output`: the bytes, appended in the order they were read from the job's pipes.
//! - `output.streams`: a 9-byte record (u64 LE start offset, u8 stream) each time the stream
//!   changes, written before the bytes it describes, so a reader that sees `output` at length L
//!   finds the record of every byte below L.
//! - At the cap a marker line (stream `SYSTEM`) ends the output; later output is discarded.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use proto::OutputStream;

/// The data file's name in a job directory.
pub const OUTPUT_FILE: &str = "output";
/// The stream index file's name.
pub const STREAMS_FILE: &str = "output.streams";
/// Bytes per record of the stream index.
pub const STREAM_RECORD: usize = 9;

/// Errors of the output files.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The marker that ends an output cut at the cap.
pub fn cap_marker(cap: u64) -> String {
    format!("\n[jobd: output cap of {cap} bytes reached; further output was discarded]\n")
}

/// The stream a record's byte names.
pub fn stream_from_u8(b: u8) -> OutputStream {
    OutputStream::try_from(b as i32).unwrap_or(OutputStream::Unspecified)
}

/// Decodes whole stream-index records (a trailing partial record is ignored).
pub fn decode_streams(raw: &[u8]) -> Vec<(u64, OutputStream)> {
    raw.chunks_exact(STREAM_RECORD)
        .map(|r| {
            let mut off = [0u8; 8];
            off.copy_from_slice(&r[..8]);
            (u64::from_le_bytes(off), stream_from_u8(r[8]))
        })
        .collect()
}

/// Creates the two empty files of a job's output (they must not exist yet).
pub fn create_files(dir: &Path) -> Result<(), StoreError> {
    for name in [OUTPUT_FILE, STREAMS_FILE] {
        let path = dir.join(name);
        OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("create", &path))?;
    }
    Ok(())
}

/// The single writer of a job's output, enforcing the cap.
#[derive(Debug)]
pub struct OutputWriter {
    path: PathBuf,
    spath: PathBuf,
    file: File,
    streams: File,
    len: u64,
    cap: u64,
    capped: bool,
    current: Option<OutputStream>,
}

impl OutputWriter {
    /// Opens the (empty) output files in `dir` for appending, with `cap` bytes allowed.
    pub fn open(dir: &Path, cap: u64) -> Result<OutputWriter, StoreError> {
        let path = dir.join(OUTPUT_FILE);
        let spath = dir.join(STREAMS_FILE);
        let open = |p: &Path| {
            OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(p)
                .map_err(io("open", p))
        };
        let file = open(&path)?;
        let streams = open(&spath)?;
        let len = file.metadata().map_err(io("stat", &path))?.len();
        Ok(OutputWriter {
            path,
            spath,
            file,
            streams,
            len,
            cap,
            capped: false,
            current: None,
        })
    }

    /// Appends `data` from `stream`, up to the cap (then the marker, once).
    pub fn write(&mut self, stream: OutputStream, data: &[u8]) -> Result<(), StoreError> {
        if self.capped || data.is_empty() {
            return Ok(());
        }
        let room = self.cap.saturating_sub(self.len);
        let take = (data.len() as u64).min(room) as usize;
        if take > 0 {
            self.append(stream, &data[..take])?;
        }
        if take < data.len() {
            self.capped = true;
            let marker = cap_marker(self.cap);
            self.append(OutputStream::System, marker.as_bytes())?;
        }
        Ok(())
    }

    fn append(&mut self, stream: OutputStream, data: &[u8]) -> Result<(), StoreError> {
        if self.current != Some(stream) {
            let mut rec = [0u8; STREAM_RECORD];
            rec[..8].copy_from_slice(&self.len.to_le_bytes());
            rec[8] = stream as i32 as u8;
            self.streams
                .write_all(&rec)
                .map_err(io("write", &self.spath))?;
            self.current = Some(stream);
        }
        self.file.write_all(data).map_err(io("write", &self.path))?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the cap was reached.
    pub fn capped(&self) -> bool {
        self.capped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_cuts_writes_and_appends_the_marker_once() {
        let dir = tempfile::tempdir().unwrap();
        create_files(dir.path()).unwrap();
        let mut w = OutputWriter::open(dir.path(), 10).unwrap();
        w.write(OutputStream::Stdout, b"0123456").unwrap();
        w.write(OutputStream::Stderr, b"789abcdef").unwrap();
        w.write(OutputStream::Stdout, b"more").unwrap();
        assert!(w.capped());
        let mut want = b"0123456789".to_vec();
        want.extend_from_slice(cap_marker(10).as_bytes());
        assert_eq!(std::fs::read(dir.path().join(OUTPUT_FILE)).unwrap(), want);
        let idx = decode_streams(&std::fs::read(dir.path().join(STREAMS_FILE)).unwrap());
        assert_eq!(
            idx,
            [
                (0, OutputStream::Stdout),
                (7, OutputStream::Stderr),
                (10, OutputStream::System)
            ]
        );
        assert!(create_files(dir.path()).is_err(), "existing files are kept");
    }
}
