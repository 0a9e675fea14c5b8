//! Job output: one append-only file per job is the source of truth, followed by any number of
//! readers.
//!
//! The writer (the job's pump, reading the job's stdout and stderr pipes) appends to `output` and
//! then publishes the new length on a `tokio::sync::watch` channel; followers read the file with
//! `pread` from their own offset and sleep on that channel when they have caught up. Nothing
//! polls. A follower that is slow only falls behind in the file: the writer never waits for it, and
//! it loses nothing, because it reads the file, not a buffer. Each follower sends through a small
//! bounded channel to its gRPC stream and stops as soon as the client goes away.
//!
//! Which bytes came from stdout and which from stderr is kept in a sidecar `output.streams`: a
//! 9-byte record (u64 LE start offset, u8 stream) each time the stream changes, written before the
//! bytes it describes. When the output reaches the cap, a marker line (stream `SYSTEM`) ends it and
//! further output is read from the pipes and discarded, so the job is never blocked by the cap.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use proto::{OutputChunk, OutputStream};
use tokio::sync::{mpsc, watch};
use tonic::Status;

/// The data file's name in a job directory.
pub const OUTPUT_FILE: &str = "output";
/// The stream index file's name.
pub const STREAMS_FILE: &str = "output.streams";
/// The largest chunk sent to a client.
pub const CHUNK: usize = 32 * 1024;
/// Chunks queued per follower before it waits for its client.
const FOLLOWER_QUEUE: usize = 1;

/// Errors of the output store.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OutputError + 'a {
    move |source| OutputError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The marker that ends an output cut at the cap.
pub fn cap_marker(cap: u64) -> String {
    format!("\n[jobd: output cap of {cap} bytes reached; further output was discarded]\n")
}

/// Published progress of a job's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Bytes in the file that readers may read.
    pub len: u64,
    /// No more bytes will come.
    pub done: bool,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    progress: watch::Sender<Progress>,
    /// (start offset, stream), ascending.
    segments: RwLock<Vec<(u64, OutputStream)>>,
}

/// A job's output: cheap to clone, shared by the writer and the followers.
#[derive(Debug, Clone)]
pub struct OutputLog {
    inner: Arc<Inner>,
}

fn stream_from_u8(b: u8) -> OutputStream {
    OutputStream::try_from(b as i32).unwrap_or(OutputStream::Unspecified)
}

impl OutputLog {
    /// Creates an empty output in `dir` (truncating nothing: the files must not exist) and its
    /// writer, which enforces `cap`.
    pub fn create(dir: &Path, cap: u64) -> Result<(OutputLog, OutputWriter), OutputError> {
        let path = dir.join(OUTPUT_FILE);
        let spath = dir.join(STREAMS_FILE);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("create", &path))?;
        let streams = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&spath)
            .map_err(io("create", &spath))?;
        let (tx, _) = watch::channel(Progress::default());
        let log = OutputLog {
            inner: Arc::new(Inner {
                path,
                progress: tx,
                segments: RwLock::new(Vec::new()),
            }),
        };
        let writer = OutputWriter {
            log: log.clone(),
            file,
            streams,
            spath,
            len: 0,
            cap,
            capped: false,
            current: None,
        };
        Ok((log, writer))
    }

    /// Opens the finished output of a job in `dir` (after a restart). A missing file reads as empty.
    pub fn open_finished(dir: &Path) -> Result<OutputLog, OutputError> {
        let path = dir.join(OUTPUT_FILE);
        let spath = dir.join(STREAMS_FILE);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io("stat", &path)(e)),
        };
        let mut raw = Vec::new();
        match File::open(&spath) {
            Ok(mut f) => {
                f.read_to_end(&mut raw).map_err(io("read", &spath))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("open", &spath)(e)),
        }
        let segments = raw
            .chunks_exact(9)
            .map(|r| {
                let mut off = [0u8; 8];
                off.copy_from_slice(&r[..8]);
                (u64::from_le_bytes(off), stream_from_u8(r[8]))
            })
            .collect();
        let (tx, _) = watch::channel(Progress { len, done: true });
        Ok(OutputLog {
            inner: Arc::new(Inner {
                path,
                progress: tx,
                segments: RwLock::new(segments),
            }),
        })
    }

    /// The current progress.
    pub fn progress(&self) -> Progress {
        *self.inner.progress.borrow()
    }

    /// Marks the output complete (used when a writer was lost, e.g. the job never started).
    pub fn finish(&self) {
        self.inner.progress.send_modify(|p| p.done = true);
    }

    /// The stream of the byte at `offset` and where that stream's run ends.
    fn segment_at(&self, offset: u64) -> (OutputStream, Option<u64>) {
        let segs = self
            .inner
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let i = segs.partition_point(|(start, _)| *start <= offset);
        let stream = if i == 0 {
            OutputStream::Unspecified
        } else {
            segs[i - 1].1
        };
        (stream, segs.get(i).map(|(s, _)| *s))
    }

    /// Starts a follower from `offset`: it sends every byte from there, then (if `follow`) waits
    /// for more until the output is done. It ends at once when the receiver is dropped.
    pub fn follow(&self, offset: u64, follow: bool) -> mpsc::Receiver<Result<OutputChunk, Status>> {
        let (tx, rx) = mpsc::channel(FOLLOWER_QUEUE);
        let log = self.clone();
        tokio::spawn(async move {
            if let Err(status) = log.run_follower(offset, follow, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        rx
    }

    async fn run_follower(
        &self,
        mut offset: u64,
        follow: bool,
        tx: &mpsc::Sender<Result<OutputChunk, Status>>,
    ) -> Result<(), Status> {
        let path = self.inner.path.clone();
        let file = File::open(&path)
            .map_err(|e| Status::internal(format!("open output {}: {e}", path.display())))?;
        let mut rx = self.inner.progress.subscribe();
        loop {
            let p = *rx.borrow_and_update();
            if offset < p.len {
                let (stream, run_end) = self.segment_at(offset);
                let end = run_end.map_or(p.len, |e| e.min(p.len));
                let n = ((end - offset) as usize).min(CHUNK);
                // Read on this task: a bounded pread that the page cache almost always answers
                // (jobd creates no threads at run time; see manager::Workers).
                let mut data = vec![0u8; n];
                let got = file.read_at(&mut data, offset).map_err(|e| {
                    Status::internal(format!("read output {}: {e}", path.display()))
                })?;
                data.truncate(got);
                if data.is_empty() {
                    return Err(Status::internal(format!(
                        "output {} is shorter than recorded ({} < {})",
                        path.display(),
                        offset,
                        p.len
                    )));
                }
                let chunk = OutputChunk {
                    offset,
                    stream: stream as i32,
                    data,
                };
                offset += chunk.data.len() as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    return Ok(()); // the client went away
                }
                continue;
            }
            if p.done || !follow {
                return Ok(());
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Ok(()); // the log itself is gone
                    }
                }
                _ = tx.closed() => return Ok(()),
            }
        }
    }
}

/// The single writer of a job's output.
#[derive(Debug)]
pub struct OutputWriter {
    log: OutputLog,
    file: File,
    streams: File,
    spath: PathBuf,
    len: u64,
    cap: u64,
    capped: bool,
    current: Option<OutputStream>,
}

impl OutputWriter {
    /// Appends `data` from `stream`, up to the cap; publishes the new length.
    pub fn write(&mut self, stream: OutputStream, data: &[u8]) -> Result<(), OutputError> {
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
            tracing::warn!(path = %self.log.inner.path.display(), cap = self.cap, "output cap reached");
        }
        Ok(())
    }

    fn append(&mut self, stream: OutputStream, data: &[u8]) -> Result<(), OutputError> {
        if self.current != Some(stream) {
            let mut rec = [0u8; 9];
            rec[..8].copy_from_slice(&self.len.to_le_bytes());
            rec[8] = stream as i32 as u8;
            self.streams
                .write_all(&rec)
                .map_err(io("write", &self.spath))?;
            self.log
                .inner
                .segments
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push((self.len, stream));
            self.current = Some(stream);
        }
        let path = &self.log.inner.path;
        self.file.write_all(data).map_err(io("write", path))?;
        self.len += data.len() as u64;
        let len = self.len;
        self.log.inner.progress.send_modify(|p| p.len = len);
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

    /// The log this writer appends to.
    pub fn log(&self) -> &OutputLog {
        &self.log
    }
}

/// Reads a job's stdout and stderr pipes until both reach EOF, appending to `writer`.
/// Returns the writer; the caller marks the log done once the job's record is final.
pub async fn pump(
    mut writer: OutputWriter,
    stdout: std::os::fd::OwnedFd,
    stderr: std::os::fd::OwnedFd,
) -> Result<OutputWriter, OutputError> {
    use tokio::io::AsyncReadExt;
    use tokio::net::unix::pipe;
    let open = |fd| {
        pipe::Receiver::from_owned_fd(fd).map_err(|source| OutputError::Io {
            op: "watch pipe of",
            path: writer.log.inner.path.clone(),
            source,
        })
    };
    let mut out = open(stdout)?;
    let mut err = open(stderr)?;
    let (mut out_open, mut err_open) = (true, true);
    let mut obuf = vec![0u8; CHUNK];
    let mut ebuf = vec![0u8; CHUNK];
    while out_open || err_open {
        tokio::select! {
            r = out.read(&mut obuf), if out_open => match r {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => writer.write(OutputStream::Stdout, &obuf[..n])?,
            },
            r = err.read(&mut ebuf), if err_open => match r {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => writer.write(OutputStream::Stderr, &ebuf[..n])?,
            },
        }
    }
    Ok(writer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn collect(mut rx: mpsc::Receiver<Result<OutputChunk, Status>>) -> Vec<OutputChunk> {
        let mut v = Vec::new();
        while let Some(c) = rx.recv().await {
            v.push(c.unwrap());
        }
        v
    }

    fn bytes(chunks: &[OutputChunk]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.data.clone()).collect()
    }

    #[tokio::test]
    async fn followers_from_zero_and_offset_get_all_bytes_live() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut w) = OutputLog::create(dir.path(), 1 << 30).unwrap();
        let early = log.follow(0, true);
        w.write(OutputStream::Stdout, b"hello ").unwrap();
        let mid = log.follow(3, true);
        let a = tokio::spawn(collect(early));
        let b = tokio::spawn(collect(mid));
        tokio::time::sleep(Duration::from_millis(20)).await;
        w.write(OutputStream::Stderr, b"oops ").unwrap();
        w.write(OutputStream::Stdout, &[0u8, 255, 10]).unwrap();
        log.finish();
        let a = a.await.unwrap();
        let b = b.await.unwrap();
        assert_eq!(bytes(&a), b"hello oops \x00\xff\n");
        assert_eq!(bytes(&b), b"lo oops \x00\xff\n");
        let streams: Vec<i32> = a.iter().map(|c| c.stream).collect();
        assert!(streams.starts_with(&[OutputStream::Stdout as i32]));
        assert!(a
            .iter()
            .any(|c| c.stream == OutputStream::Stderr as i32 && c.data == b"oops "));
        // After the end: everything, then close; and the stream index survives reopening.
        let late = collect(log.follow(0, true)).await;
        assert_eq!(bytes(&late), bytes(&a));
        let reopened = OutputLog::open_finished(dir.path()).unwrap();
        let again = collect(reopened.follow(0, true)).await;
        assert_eq!(
            again
                .iter()
                .map(|c| (c.offset, c.stream))
                .collect::<Vec<_>>(),
            late.iter()
                .map(|c| (c.offset, c.stream))
                .collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn cap_ends_with_marker_and_discards_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut w) = OutputLog::create(dir.path(), 10).unwrap();
        w.write(OutputStream::Stdout, b"0123456").unwrap();
        w.write(OutputStream::Stdout, b"789abcdef").unwrap();
        w.write(OutputStream::Stdout, b"more").unwrap();
        assert!(w.capped());
        log.finish();
        let chunks = collect(log.follow(0, true)).await;
        let mut want = b"0123456789".to_vec();
        want.extend_from_slice(cap_marker(10).as_bytes());
        assert_eq!(bytes(&chunks), want);
        assert_eq!(chunks.last().unwrap().stream, OutputStream::System as i32);
    }

    #[tokio::test]
    async fn slow_follower_does_not_block_writer_or_others_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut w) = OutputLog::create(dir.path(), 1 << 30).unwrap();
        let mut slow = log.follow(0, true);
        let fast = tokio::spawn(collect(log.follow(0, true)));
        let block: Vec<u8> = (0..=255u8).cycle().take(CHUNK * 3 + 17).collect();
        let t = std::time::Instant::now();
        for _ in 0..64 {
            w.write(OutputStream::Stdout, &block).unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(5), "writer was slowed");
        log.finish();
        let fast = fast.await.unwrap();
        let total = block.len() * 64;
        assert_eq!(bytes(&fast).len(), total);
        // The slow one reads only now, and still gets every byte.
        let mut got = Vec::new();
        while let Some(c) = slow.recv().await {
            got.extend_from_slice(&c.unwrap().data);
        }
        assert_eq!(got, bytes(&fast));
    }

    #[tokio::test]
    async fn dropped_follower_ends_its_task_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _w) = OutputLog::create(dir.path(), 100).unwrap();
        let rx = log.follow(0, true);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(log.inner.progress.receiver_count(), 1);
        drop(rx);
        tokio::time::timeout(Duration::from_secs(2), async {
            while log.inner.progress.receiver_count() != 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("follower task still alive after its client left");
    }

    #[tokio::test]
    async fn pump_keeps_stdout_and_stderr_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (log, w) = OutputLog::create(dir.path(), 1 << 20).unwrap();
        let (or, ow) = nix::unistd::pipe().unwrap();
        let (er, ew) = nix::unistd::pipe().unwrap();
        let task = tokio::spawn(pump(w, or, er));
        nix::unistd::write(&ow, b"out").unwrap();
        drop(ow);
        tokio::time::sleep(Duration::from_millis(20)).await;
        nix::unistd::write(&ew, b"err").unwrap();
        drop(ew);
        let w = task.await.unwrap().unwrap();
        assert_eq!(w.len(), 6);
        log.finish();
        let chunks = collect(log.follow(0, true)).await;
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            (chunks[0].stream, &chunks[0].data[..]),
            (OutputStream::Stdout as i32, &b"out"[..])
        );
        assert_eq!(
            (chunks[1].stream, &chunks[1].data[..]),
            (OutputStream::Stderr as i32, &b"err"[..])
        );
    }
}
