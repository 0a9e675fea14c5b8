//! jobctl, jobd's command-line client: [`cli`] (the flags), [`limits`] (parsing flag values),
//! [`connect`] (the mTLS channel) and [`commands`] (what each subcommand does).

pub mod cli;
pub mod commands;
pub mod connect;
pub mod limits;

pub use commands::{execute, CommandError, EXIT_FAILED};
