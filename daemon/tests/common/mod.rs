//! Helpers shared by the daemon's process-level tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// job-init beside the jobd under test (built if missing): jobs start through it.
pub fn job_init() -> PathBuf {
    let jobd = Path::new(env!("CARGO_BIN_EXE_jobd"));
    let init = jobd.parent().unwrap().join("job-init");
    if !init.is_file() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "job-init"])
            .status()
            .expect("run cargo build -p job-init");
        assert!(st.success(), "cargo build -p job-init failed");
    }
    assert!(init.is_file(), "{} missing", init.display());
    init
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
