//! job-init: the container's first process. It waits for the runtime's handshake, sets the
//! container up from inside and execs the job; all of that lives in `runtime::init`.

fn main() {
    runtime::init::main()
}
