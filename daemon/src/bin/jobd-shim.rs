//! jobd-shim: holds one job for jobd (see `daemon::shim`), or with `--serve` forks such shims
//! for jobd (see `daemon::shim_server`). jobd starts it; it is not meant to be run by hand.

fn main() {
    let mut args = std::env::args_os().skip(1).peekable();
    let code = if args
        .peek()
        .is_some_and(|a| a == daemon::shim_server::SERVE_FLAG)
    {
        daemon::shim_server::serve()
    } else {
        daemon::shim::main(args)
    };
    std::process::exit(code);
}
