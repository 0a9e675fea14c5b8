//! jobd-shim: holds one job for jobd (see `daemon::shim`). jobd starts it; it is not meant to
//! be run by hand.

fn main() {
    std::process::exit(daemon::shim::main(std::env::args_os().skip(1)));
}
