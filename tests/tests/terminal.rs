//! `process.terminal` with `--console-socket`: the pty master reaches the caller over
//! SCM_RIGHTS and the job runs with the slave as its controlling terminal.

use std::io::{IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use serde_json::json;
use tests::{stderr, unique_id, Bundle};

/// Accepts one connection (bounded) and receives the fd sent over it.
fn receive_master(listener: &UnixListener) -> (OwnedFd, String) {
    listener.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "runtime never connected"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    let mut buf = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .expect("recvmsg on the console socket");
    let mut fd = None;
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            fd = fds.first().copied();
        }
    }
    let n = msg.bytes;
    let name = String::from_utf8_lossy(&buf[..n]).into_owned();
    // SAFETY (test): the kernel installed this fd in our table for us.
    (
        unsafe { OwnedFd::from_raw_fd(fd.expect("no fd in the message")) },
        name,
    )
}

#[test]
fn a_terminal_is_handed_over_the_console_socket() {
    let b = Bundle::new(&["sh", "-c", "tty; echo hi-from-tty; stty size"]);
    b.edit(|s| {
        s["process"]["terminal"] = json!(true);
        s["process"]["consoleSize"] = json!({ "height": 33, "width": 101 });
    });
    let sock = b.dir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let id = unique_id("tty");
    let bundle = b.path();
    let child = b
        .command(&[
            "run",
            "--console-socket",
            sock.to_str().unwrap(),
            "-b",
            bundle.to_str().unwrap(),
            &id,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (master, name) = receive_master(&listener);
    assert!(name.starts_with("/dev/pts/"), "pty name payload: {name:?}");
    let mut master = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match master.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            // EIO: the slave side is closed, the job has exited.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => panic!("read pty master: {e}"),
        }
    }
    let result = child.wait_with_output().unwrap();
    assert!(result.status.success(), "{}", stderr(&result));
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("/dev/pts/0"),
        "the job has no terminal: {text:?}"
    );
    assert!(text.contains("hi-from-tty\r\n"), "{text:?}");
    assert!(
        text.contains("33 101"),
        "console size not applied: {text:?}"
    );
    b.assert_clean(&id);
}
