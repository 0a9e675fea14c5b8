//! Job output as jobd serves it: one append-only file per job (written by the job's shim, see
//! [`crate::output_store`]) followed by any number of readers.
//!
//! jobd learns that the file grew from inotify (one instance for all jobs, [`OutputWatcher`]):
//! on each event the job's [`OutputTail`] reads the file's length and the new stream-index
//! records and publishes the new length on a `tokio::sync::watch` channel; followers read the
//! file with `pread` from their own offset and sleep on that channel when they have caught up.
//! Nothing polls or sleeps. A follower that is slow only falls behind in the file: the shim never
//! waits for it, and it loses nothing, because it reads the file, not a buffer. Each follower
//! sends through a small bounded channel to its gRPC stream and stops as soon as the client goes
//! away. The same tail picks up a job re-adopted after a jobd restart, from the file.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use proto::{OutputChunk, OutputStream};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::output_store::{self, decode_streams, StoreError, STREAM_RECORD};
pub use crate::output_store::{cap_marker, OUTPUT_FILE, STREAMS_FILE};

/// The largest chunk sent to a client. Each stream holds about three chunks at a time (queue,
/// encoder, HTTP/2 buffer), all of them while its client is slow: with 1,000 streams of one
/// job read by clients at nice 19, 16 KiB chunks took jobd to 148-155 MB peak RSS and 8 KiB
/// to 86 MB (32 KiB had taken 268 MB), for about 10-20% longer to deliver 100 MB to all.
pub const CHUNK: usize = 8 * 1024;
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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("watch output {path}: {source}")]
    Watch { path: PathBuf, source: nix::Error },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OutputError + 'a {
    move |source| OutputError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
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

/// A job's output: cheap to clone, shared by its tail and the followers.
#[derive(Debug, Clone)]
pub struct OutputLog {
    inner: Arc<Inner>,
}

impl OutputLog {
    fn new(path: PathBuf, progress: Progress, segments: Vec<(u64, OutputStream)>) -> OutputLog {
        OutputLog {
            inner: Arc::new(Inner {
                path,
                progress: watch::channel(progress).0,
                segments: RwLock::new(segments),
            }),
        }
    }

    /// Creates the empty output files of a new job in `dir` (they must not exist) and the tail
    /// that follows what the job's shim appends to them.
    pub fn create(dir: &Path) -> Result<(OutputLog, OutputTail), OutputError> {
        output_store::create_files(dir)?;
        Self::resume(dir)
    }

    /// Follows the output of a job whose shim is (or was) writing it, from what is already
    /// there: used for new jobs and for jobs re-adopted after a restart.
    pub fn resume(dir: &Path) -> Result<(OutputLog, OutputTail), OutputError> {
        let path = dir.join(OUTPUT_FILE);
        let spath = dir.join(STREAMS_FILE);
        let file = File::open(&path).map_err(io("open", &path))?;
        let streams = File::open(&spath).map_err(io("open", &spath))?;
        let log = OutputLog::new(path, Progress::default(), Vec::new());
        let mut tail = OutputTail {
            log: log.clone(),
            file,
            streams,
            spath,
            partial: Vec::new(),
        };
        tail.scan()?;
        Ok((log, tail))
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
        Ok(OutputLog::new(
            path,
            Progress { len, done: true },
            decode_streams(&raw),
        ))
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
                // Room in the client's queue first, then the read: a follower that waits for a
                // slow client holds no chunk (1,000 streams of one job cost 1,000 chunks less).
                let Ok(permit) = tx.reserve().await else {
                    return Ok(()); // the client went away
                };
                let (stream, run_end) = self.segment_at(offset);
                let end = run_end.map_or(p.len, |e| e.min(p.len));
                let n = ((end - offset) as usize).min(CHUNK);
                // Read on this task: a bounded pread that the page cache almost always answers
                // (a trip to a blocking thread would cost more than the read).
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
                permit.send(Ok(chunk));
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

/// jobd's reader of a job's output files, which another process (the shim) appends to:
/// publishes what is there each time it is asked to look.
#[derive(Debug)]
pub struct OutputTail {
    log: OutputLog,
    file: File,
    streams: File,
    spath: PathBuf,
    /// Bytes of an incomplete stream-index record read so far.
    partial: Vec<u8>,
}

impl OutputTail {
    /// Publishes the output's current length (and the stream records of its bytes); returns it.
    pub fn scan(&mut self) -> Result<u64, OutputError> {
        // Length first: the shim writes a byte's stream record before the byte, so every byte
        // below this length has its record in the index read next.
        let len = self
            .file
            .metadata()
            .map_err(io("stat", &self.log.inner.path))?
            .len();
        let mut raw = std::mem::take(&mut self.partial);
        self.streams
            .read_to_end(&mut raw)
            .map_err(io("read", &self.spath))?;
        let whole = raw.len() - raw.len() % STREAM_RECORD;
        if whole > 0 {
            self.log
                .inner
                .segments
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .extend(decode_streams(&raw[..whole]));
        }
        self.partial = raw[whole..].to_vec();
        self.log.inner.progress.send_if_modified(|p| {
            let grew = len > p.len;
            if grew {
                p.len = len;
            }
            grew
        });
        Ok(len)
    }

    /// The log this tail publishes to.
    pub fn log(&self) -> &OutputLog {
        &self.log
    }
}

/// The inotify fd, for tokio.
#[derive(Debug)]
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

type SharedTail = Arc<Mutex<OutputTail>>;

/// One inotify instance for every job's output (the per-user limit on instances is small, on
/// watches large): each modification of a watched `output` file makes its tail look again.
#[derive(Debug)]
pub struct OutputWatcher {
    fd: AsyncFd<InotifyFd>,
    tails: Mutex<HashMap<WatchDescriptor, SharedTail>>,
}

/// A watched job output; give it back to [`OutputWatcher::unwatch`].
#[derive(Debug)]
pub struct Watched {
    wd: WatchDescriptor,
    tail: SharedTail,
}

fn lock(t: &SharedTail) -> std::sync::MutexGuard<'_, OutputTail> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

impl OutputWatcher {
    /// A watcher and its event task (call inside the tokio runtime).
    pub fn start() -> std::io::Result<Arc<OutputWatcher>> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // SAFETY: the AsyncFd owns the Inotify (and its fd), which stays open and the same
        // for the AsyncFd's whole lifetime.
        let fd = unsafe { AsyncFd::register(InotifyFd(inotify)) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let w = Arc::new(OutputWatcher {
            fd,
            tails: Mutex::new(HashMap::new()),
        });
        // The task keeps the watcher for the life of the process, like the manager that owns it.
        tokio::spawn(Self::run(w.clone()));
        Ok(w)
    }

    fn tails(&self) -> std::sync::MutexGuard<'_, HashMap<WatchDescriptor, SharedTail>> {
        self.tails.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts following `tail`'s file; what was written before the watch existed is published
    /// at once.
    pub fn watch(&self, tail: OutputTail) -> Result<Watched, OutputError> {
        let path = tail.log.inner.path.clone();
        let wd = self
            .fd
            .get_ref()
            .0
            .add_watch(
                &path,
                AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CLOSE_WRITE,
            )
            .map_err(|source| OutputError::Watch {
                path: path.clone(),
                source,
            })?;
        let tail = Arc::new(Mutex::new(tail));
        self.tails().insert(wd, tail.clone());
        lock(&tail).scan()?;
        Ok(Watched { wd, tail })
    }

    /// Stops following: a last look publishes everything written; returns the final length.
    pub fn unwatch(&self, w: Watched) -> Result<u64, OutputError> {
        self.tails().remove(&w.wd);
        let _ = self.fd.get_ref().0.rm_watch(w.wd);
        let len = lock(&w.tail).scan()?;
        Ok(len)
    }

    async fn run(w: Arc<OutputWatcher>) {
        loop {
            let mut guard = match w.fd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "inotify: output is no longer followed");
                    return;
                }
            };
            match w.fd.get_ref().0.read_events() {
                Ok(events) => {
                    let overflow = events
                        .iter()
                        .any(|e| e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW));
                    let tails: Vec<SharedTail> = if overflow {
                        w.tails().values().cloned().collect()
                    } else {
                        let map = w.tails();
                        let mut seen = Vec::new();
                        let mut out = Vec::new();
                        for e in &events {
                            if seen.contains(&e.wd) {
                                continue;
                            }
                            seen.push(e.wd);
                            if let Some(t) = map.get(&e.wd) {
                                out.push(t.clone());
                            }
                        }
                        out
                    };
                    for t in tails {
                        if let Err(e) = lock(&t).scan() {
                            tracing::error!(error = %e, "output scan failed");
                        }
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => {
                    tracing::error!(error = %e, "inotify read failed");
                    guard.clear_ready();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each streamed message is one chunk: it must fit the codec's initial encode buffer, or
    /// every message would reallocate it (see proto::codec).
    #[test]
    fn a_full_chunk_fits_the_codecs_encode_buffer() {
        use prost::Message;
        let chunk = proto::OutputChunk {
            offset: u64::MAX,
            data: vec![0xff; CHUNK],
            stream: OutputStream::Stderr as i32,
        };
        assert!(chunk.encoded_len() + 5 <= proto::codec::ENCODE_BUFFER_BYTES);
    }
    use crate::output_store::OutputWriter;
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

    /// A new job's output: the log, its tail and the writer the shim would hold.
    fn new_output(dir: &Path, cap: u64) -> (OutputLog, OutputTail, OutputWriter) {
        let (log, tail) = OutputLog::create(dir).unwrap();
        let w = OutputWriter::open(dir, cap).unwrap();
        (log, tail, w)
    }

    #[tokio::test]
    async fn followers_from_zero_and_offset_get_all_bytes_live() {
        let dir = tempfile::tempdir().unwrap();
        let (log, tail, mut w) = new_output(dir.path(), 1 << 30);
        let watcher = OutputWatcher::start().unwrap();
        let watched = watcher.watch(tail).unwrap();
        let early = log.follow(0, true);
        w.write(OutputStream::Stdout, b"hello ").unwrap();
        let a = tokio::spawn(collect(early));
        // The watcher publishes the write (an inotify event, no polling).
        let mut rx = log.inner.progress.subscribe();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|p| p.len == 6))
            .await
            .expect("inotify event")
            .unwrap();
        let b = tokio::spawn(collect(log.follow(3, true)));
        w.write(OutputStream::Stderr, b"oops ").unwrap();
        w.write(OutputStream::Stdout, &[0u8, 255, 10]).unwrap();
        assert_eq!(watcher.unwatch(watched).unwrap(), 14);
        log.finish();
        let a = a.await.unwrap();
        let b = b.await.unwrap();
        assert_eq!(bytes(&a), b"hello oops \x00\xff\n");
        assert_eq!(bytes(&b), b"lo oops \x00\xff\n");
        assert!(a
            .iter()
            .any(|c| c.stream == OutputStream::Stderr as i32 && c.data == b"oops "));
        assert_eq!(a[0].stream, OutputStream::Stdout as i32);
        // After the end: everything, then close; and the stream index survives reopening.
        let late = collect(log.follow(0, true)).await;
        assert_eq!(bytes(&late), bytes(&a));
        let reopened = OutputLog::open_finished(dir.path()).unwrap();
        let again = collect(reopened.follow(0, true)).await;
        let shape = |v: &[OutputChunk]| v.iter().map(|c| (c.offset, c.stream)).collect::<Vec<_>>();
        assert_eq!(shape(&again), shape(&late));
    }

    #[tokio::test]
    async fn resumed_tail_sees_what_was_written_while_nobody_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (_, tail, mut w) = new_output(dir.path(), 1 << 20);
        drop(tail);
        w.write(OutputStream::Stdout, b"before ").unwrap();
        w.write(OutputStream::Stderr, b"restart").unwrap();
        let (log, tail) = OutputLog::resume(dir.path()).unwrap();
        assert_eq!(log.progress().len, 14);
        let watcher = OutputWatcher::start().unwrap();
        let watched = watcher.watch(tail).unwrap();
        w.write(OutputStream::Stdout, b"!").unwrap();
        watcher.unwatch(watched).unwrap();
        log.finish();
        let chunks = collect(log.follow(0, true)).await;
        assert_eq!(bytes(&chunks), b"before restart!");
        assert_eq!(
            chunks.iter().map(|c| c.stream).collect::<Vec<_>>(),
            [
                OutputStream::Stdout as i32,
                OutputStream::Stderr as i32,
                OutputStream::Stdout as i32
            ]
        );
    }

    #[tokio::test]
    async fn slow_follower_does_not_block_writer_or_others_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (log, tail, mut w) = new_output(dir.path(), 1 << 30);
        let watcher = OutputWatcher::start().unwrap();
        let watched = watcher.watch(tail).unwrap();
        let mut slow = log.follow(0, true);
        let fast = tokio::spawn(collect(log.follow(0, true)));
        let block: Vec<u8> = (0..=255u8).cycle().take(CHUNK * 3 + 17).collect();
        let t = std::time::Instant::now();
        for _ in 0..64 {
            w.write(OutputStream::Stdout, &block).unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(5), "writer was slowed");
        watcher.unwatch(watched).unwrap();
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
        let (log, _tail, _w) = new_output(dir.path(), 100);
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
}
