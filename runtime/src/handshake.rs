//! The messages between the runtime (parent) and job-init (child), and their framing.
//!
//! One `SOCK_STREAM` socketpair carries everything. The parent writes the uid/gid maps and puts
//! the child in its cgroup, then sends one [`GO_BYTE`]: the clone child waits for it before it
//! execs job-init (an exec before the uid map exists would cost job-init its capabilities).
//! Then the parent sends [`ToInit::Setup`]. Nothing of the container runs before it is inside
//! its cgroup. job-init answers [`FromInit::Ready`] once
//! the container is set up and waiting for `start`, or [`FromInit::Failed`] with a message fit
//! for the user. EOF without a message means the child died; the parent never waits on anything
//! else, so a dead child cannot hang it.
//!
//! Frame: a little-endian `u32` length, then that many bytes of JSON. The length
//! [`RAW_ERRNO_MARK`] instead announces 8 raw bytes (`u32` step, `i32` errno): the only thing the
//! freshly cloned child can send before it execs job-init, when it must not allocate.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

/// Environment variable that tells job-init which fd is its end of the handshake socket.
pub const INIT_FD_ENV: &str = "_JOB_INIT_FD";
/// Frame length that marks a raw pre-exec failure report instead of JSON.
pub const RAW_ERRNO_MARK: u32 = u32::MAX;
/// Sent alone, before any frame, once the child is mapped and in its cgroup.
pub const GO_BYTE: u8 = b'G';
/// Largest JSON frame accepted; a spec is a few KiB, this only stops a corrupt length.
const MAX_FRAME: u32 = 64 << 20;

/// What the clone child was doing when it failed, before job-init ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum PreExecStep {
    JoinNamespace = 1,
    Stdio = 2,
    KeepSocket = 3,
    Exec = 4,
    WaitGo = 5,
    BecomeRoot = 6,
    JoinCgroup = 7,
}

impl PreExecStep {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::JoinNamespace,
            2 => Self::Stdio,
            3 => Self::KeepSocket,
            4 => Self::Exec,
            5 => Self::WaitGo,
            6 => Self::BecomeRoot,
            7 => Self::JoinCgroup,
            _ => return None,
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::JoinNamespace => "join namespace",
            Self::Stdio => "set up stdio",
            Self::KeepSocket => "keep handshake socket",
            Self::Exec => "exec job-init",
            Self::WaitGo => "wait for its id maps",
            Self::BecomeRoot => "become root of its user namespace",
            Self::JoinCgroup => "join its cgroup",
        }
    }
}

/// How job-init makes `/sys/fs/cgroup` show the container's own cgroup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CgroupMount {
    /// cgroup v1: a tmpfs with each hierarchy's container directory bind-mounted by name
    /// (v1 hierarchies cannot be mounted from inside a user namespace).
    V1 { binds: Vec<(String, PathBuf)> },
    /// cgroup v2: `cgroup2` mounted from inside the container's cgroup namespace, or the
    /// container's directory bind-mounted when there is none.
    V2 { host_dir: PathBuf },
}

/// Everything job-init needs, sent once the child is mapped and in its cgroup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    pub spec: Spec,
    /// Absolute host path of the rootfs.
    pub rootfs: PathBuf,
    /// Fds 3..3+N stay open into the container process.
    pub preserve_fds: u32,
    /// The container is in a user namespace of its own or a joined one (devices are
    /// bind-mounted, not created: mknod is not allowed there).
    pub new_userns: bool,
    /// The container got a new network namespace (sysfs can be mounted).
    pub new_netns: bool,
    /// job-init must unshare a cgroup namespace now that it is in its cgroup.
    pub new_cgroupns: bool,
    pub cgroup_mount: Option<CgroupMount>,
    /// An extra process in a running container (`exec`): the container is already set up,
    /// so only the process's own settings apply, and it runs at once (no exec fifo).
    pub exec: bool,
    /// The compiled seccomp filters (`seccomp::CompiledFilter::to_bytes`), installed by
    /// job-init as late as it can. Sent as hex: serde_json writes bytes as an array of
    /// numbers, three to four times the size and slower to parse.
    #[serde(with = "hex_bytes")]
    pub seccomp: Option<Vec<u8>>,
    /// The state JSON given to createContainer and startContainer hooks on stdin.
    pub state_json: String,
}

/// `Option<Vec<u8>>` as an optional lowercase hex string.
mod hex_bytes {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            None => s.serialize_none(),
            Some(b) => {
                let mut text = String::with_capacity(b.len() * 2);
                for &byte in b {
                    text.push(DIGITS[usize::from(byte >> 4)] as char);
                    text.push(DIGITS[usize::from(byte & 0xf)] as char);
                }
                s.serialize_some(&text)
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let Some(text) = Option::<std::borrow::Cow<'de, str>>::deserialize(d)? else {
            return Ok(None);
        };
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(D::Error::custom(format!(
                "seccomp filter: {:?} is not a lowercase hex digit",
                c as char
            ))),
        };
        let raw = text.as_bytes();
        if raw.len() % 2 != 0 {
            return Err(D::Error::custom("seccomp filter: odd number of hex digits"));
        }
        raw.chunks_exact(2)
            .map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?))
            .collect::<Result<Vec<u8>, _>>()
            .map(Some)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ToInit {
    Setup(Box<InitConfig>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum FromInit {
    /// Set up; blocked on the exec fifo until `start`.
    Ready,
    /// Setup failed; the message names what and why.
    Failed(String),
}

/// What the parent can read from the child.
#[derive(Debug)]
pub enum Received<T> {
    Message(T),
    /// The clone child failed before exec (see [`PreExecStep`]).
    PreExec {
        step: u32,
        errno: i32,
    },
    /// The other end closed without a message.
    Eof,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("handshake frame of {0} bytes is too large")]
    TooLarge(u32),
}

/// One end of the handshake socket.
pub struct Channel {
    stream: UnixStream,
}

impl Channel {
    /// A connected pair, both ends close-on-exec.
    pub fn pair() -> Result<(Channel, OwnedFd), HandshakeError> {
        let (a, b) = UnixStream::pair()?;
        Ok((Channel { stream: a }, OwnedFd::from(b)))
    }

    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel {
            stream: UnixStream::from(fd),
        }
    }

    /// The single byte that lets the clone child exec job-init (see the module docs).
    pub fn send_go(&mut self) -> Result<(), HandshakeError> {
        self.stream.write_all(&[GO_BYTE])?;
        Ok(())
    }

    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), HandshakeError> {
        let body = serde_json::to_vec(msg)?;
        let len = u32::try_from(body.len()).map_err(|_| HandshakeError::TooLarge(u32::MAX))?;
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame)?;
        Ok(())
    }

    pub fn recv<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Received<T>, HandshakeError> {
        let mut len = [0u8; 4];
        if !read_full_or_eof(&mut self.stream, &mut len)? {
            return Ok(Received::Eof);
        }
        let len = u32::from_le_bytes(len);
        if len == RAW_ERRNO_MARK {
            let mut raw = [0u8; 8];
            if !read_full_or_eof(&mut self.stream, &mut raw)? {
                return Ok(Received::Eof);
            }
            let step = u32::from_le_bytes(raw[..4].try_into().expect("4 bytes"));
            let errno = i32::from_le_bytes(raw[4..].try_into().expect("4 bytes"));
            return Ok(Received::PreExec { step, errno });
        }
        if len > MAX_FRAME {
            return Err(HandshakeError::TooLarge(len));
        }
        let mut body = vec![0u8; len as usize];
        if !read_full_or_eof(&mut self.stream, &mut body)? {
            return Ok(Received::Eof);
        }
        Ok(Received::Message(serde_json::from_slice(&body)?))
    }

    pub fn raw_fd(&self) -> i32 {
        self.stream.as_fd().as_raw_fd()
    }
}

/// Reads exactly `buf.len()` bytes; `false` on EOF before the first byte or mid-frame.
fn read_full_or_eof(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => return Ok(false),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The raw pre-exec failure frame, built without allocating (for the clone child).
pub fn raw_errno_frame(step: PreExecStep, errno: i32) -> [u8; 12] {
    let mut f = [0u8; 12];
    f[..4].copy_from_slice(&RAW_ERRNO_MARK.to_le_bytes());
    f[4..8].copy_from_slice(&(step as u32).to_le_bytes());
    f[8..].copy_from_slice(&errno.to_le_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_eof_is_seen() {
        let (mut a, b) = Channel::pair().unwrap();
        let mut b = Channel::from_fd(b);
        a.send(&FromInit::Failed("mount /proc: permission denied".into()))
            .unwrap();
        match b.recv::<FromInit>().unwrap() {
            Received::Message(FromInit::Failed(m)) => assert!(m.contains("/proc")),
            other => panic!("unexpected {other:?}"),
        }
        drop(a);
        assert!(matches!(b.recv::<FromInit>().unwrap(), Received::Eof));
    }

    #[test]
    fn the_seccomp_filter_travels_as_hex_and_comes_back_whole() {
        let config = |seccomp| InitConfig {
            spec: Spec::default(),
            rootfs: PathBuf::from("/r"),
            preserve_fds: 0,
            new_userns: true,
            new_netns: true,
            new_cgroupns: true,
            cgroup_mount: None,
            exec: false,
            seccomp,
            state_json: "{}".into(),
        };
        let bytes: Vec<u8> = (0..=255).collect();
        let text = serde_json::to_string(&config(Some(bytes.clone()))).unwrap();
        assert!(text.contains("\"000102"), "{text}");
        let back: InitConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back.seccomp, Some(bytes));
        let none: InitConfig =
            serde_json::from_str(&serde_json::to_string(&config(None)).unwrap()).unwrap();
        assert_eq!(none.seccomp, None);
        for bad in ["0g", "abc", "AB"] {
            let text = text.replacen("\"000102", &format!("\"{bad}"), 1);
            let e = serde_json::from_str::<InitConfig>(&text)
                .unwrap_err()
                .to_string();
            assert!(e.contains("seccomp filter"), "{bad}: {e}");
        }
    }

    #[test]
    fn raw_errno_frames_decode() {
        let (a, b) = Channel::pair().unwrap();
        let mut b = Channel::from_fd(b);
        let mut s = a.stream;
        s.write_all(&raw_errno_frame(PreExecStep::Exec, 2)).unwrap();
        match b.recv::<FromInit>().unwrap() {
            Received::PreExec { step, errno } => {
                assert_eq!(PreExecStep::from_u32(step), Some(PreExecStep::Exec));
                assert_eq!(errno, 2);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
