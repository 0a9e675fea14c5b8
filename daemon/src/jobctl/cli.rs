//! jobctl's command line (clap derive).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::limits;

/// jobctl: run and manage jobs on a jobd server.
///
/// Bad flag values are usage errors (exit status 2) and nothing is sent. `run` exits with the
/// job's exit status: 128+N when killed by signal N, 125 when jobctl or jobd failed, 126 when the
/// command could not be invoked, 127 when it was not found.
#[derive(Debug, Parser)]
#[command(name = "jobctl", version)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Output format: tables for people, json for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Where the server is and who we are.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// jobd's address (HOST:PORT).
    #[arg(
        long,
        global = true,
        env = "JOBCTL_SERVER",
        default_value = "127.0.0.1:50051"
    )]
    pub server: String,
    /// Directory holding ca.pem, client.pem and client.key [default: $HOME/.config/jobctl].
    #[arg(long, global = true, env = "JOBCTL_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// The CA certificate the server's certificate must chain to (overrides the TLS directory's).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// The client certificate (overrides the TLS directory's).
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// The client key (overrides the TLS directory's).
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Start a job, stream its output and exit with its exit status.
    Run {
        /// Start the job, print its id and return.
        #[arg(short = 'd', long)]
        detach: bool,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Start a job and print its id.
    Start {
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Stop a job: SIGTERM, then SIGKILL after the grace period.
    Stop {
        /// Job id (or a unique prefix).
        id: String,
        /// Grace period between SIGTERM and SIGKILL [default: the server's].
        #[arg(long, value_parser = limits::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Show a job.
    Status {
        /// Job id (or a unique prefix).
        id: String,
    },
    /// List jobs (running and starting ones unless --all or --state).
    #[command(alias = "ls")]
    List {
        /// Only jobs in this state (repeatable).
        #[arg(long, value_enum)]
        state: Vec<StateArg>,
        /// All jobs, finished ones too.
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// Print a job's output.
    Logs {
        /// Job id (or a unique prefix).
        id: String,
        /// Keep following until the job ends.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Show a job's resource usage.
    Stats {
        /// Job id (or a unique prefix).
        id: String,
    },
    /// Print the job's state changes until it ends.
    Watch {
        /// Job id (or a unique prefix).
        id: String,
    },
    /// Print a shell completion script (needs no server).
    #[command(hide = true)]
    Completions(runtime::cli_assets::CompletionsArgs),
    /// Print the man page (roff), or write every page into --dir (needs no server).
    #[command(hide = true)]
    Man(runtime::cli_assets::ManArgs),
}

/// Job states as flag values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Starting,
    Running,
    Exited,
    Killed,
    Stopped,
    Failed,
}

impl StateArg {
    /// The API's value.
    pub fn to_proto(self) -> proto::JobState {
        match self {
            StateArg::Starting => proto::JobState::Starting,
            StateArg::Running => proto::JobState::Running,
            StateArg::Exited => proto::JobState::Exited,
            StateArg::Killed => proto::JobState::Killed,
            StateArg::Stopped => proto::JobState::Stopped,
            StateArg::Failed => proto::JobState::Failed,
        }
    }
}

/// What a job is: its command, limits and environment.
#[derive(Debug, Clone, Args)]
pub struct SpecArgs {
    /// Memory limit, e.g. 128M, 1G, 512Ki (powers of 1024).
    #[arg(short = 'm', long, value_parser = limits::parse_bytes)]
    pub memory: Option<u64>,
    /// CPUs, e.g. 0.5 (half a CPU), 2.
    #[arg(long, value_parser = limits::parse_cpus)]
    pub cpus: Option<u32>,
    /// Maximum number of processes and threads.
    #[arg(long, value_parser = limits::parse_count)]
    pub pids: Option<u32>,
    /// Read bandwidth limit, bytes per second, e.g. 10M.
    #[arg(long, value_parser = limits::parse_bytes)]
    pub io_read_bps: Option<u64>,
    /// Write bandwidth limit, bytes per second, e.g. 10M.
    #[arg(long, value_parser = limits::parse_bytes)]
    pub io_write_bps: Option<u64>,
    /// Read operations per second.
    #[arg(long, value_parser = limits::parse_count64)]
    pub io_read_iops: Option<u64>,
    /// Write operations per second.
    #[arg(long, value_parser = limits::parse_count64)]
    pub io_write_iops: Option<u64>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_parser = limits::parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the job [default: /work].
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Wall-clock timeout, e.g. 30s, 5m; the job is stopped when it expires.
    #[arg(long, value_parser = limits::parse_duration)]
    pub timeout: Option<Duration>,
    /// Do not upload the files of the current directory that the command names.
    #[arg(long)]
    pub no_upload: bool,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}
