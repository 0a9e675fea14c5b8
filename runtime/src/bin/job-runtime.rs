//! `job-runtime`: a runc-compatible command line over the runtime library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use runtime::container::{self, Container, CreateOptions, ExecOptions, DEFAULT_ROOT};
use runtime::logging::{self, LogFormat};
use runtime::spec;

#[derive(Parser)]
#[command(
    name = "job-runtime",
    version,
    about = "jobworker's OCI runtime (runc-compatible CLI)"
)]
struct Cli {
    /// Directory for container state
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Write logs to this file instead of stderr
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json (one {"level","msg","time"} object per line)
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log debug messages
    #[arg(long, global = true)]
    debug: bool,
    /// Manage cgroups through systemd (slice:prefix:name cgroupsPath)
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Bundle directory holding config.json
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Write the container's init pid to this file
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to (process.terminal: true)
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Pass N additional fds (3..3+N) into the container
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for runc compatibility; job-runtime always uses pivot_root
    #[arg(long = "no-pivot", hide = true)]
    no_pivot: bool,
    /// Accepted for runc compatibility
    #[arg(long = "no-new-keyring", hide = true)]
    no_new_keyring: bool,
    /// Container ID
    id: String,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container: set up, waiting for start
    Create(CreateArgs),
    /// Start the process of a created container
    Start { id: String },
    /// Print the OCI state of a container as JSON
    State { id: String },
    /// Send a signal (name or number, default TERM) to a container
    Kill {
        /// Signal every process in the container's cgroup
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Delete a stopped container (or any, with --force)
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create, start and wait for a container; exits with its process's exit code
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return after start, leaving the container running
        #[arg(short, long)]
        detach: bool,
        /// Keep the container's state after it exits
        #[arg(long = "keep")]
        keep: bool,
    },
    /// Write a default config.json into a bundle
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Accepted for runc compatibility (the default spec already uses a user namespace)
        #[arg(long, hide = true)]
        rootless: bool,
    },
    /// List containers
    List {
        #[arg(short, long)]
        quiet: bool,
        #[arg(short, long, value_parser = ["table", "json"], default_value = "table")]
        format: String,
    },
    /// List the processes of a container
    Ps {
        #[arg(short, long, value_parser = ["table", "json"], default_value = "table")]
        format: String,
        id: String,
    },
    /// Run an extra process inside a running container
    Exec {
        /// The process as runtime-spec JSON (instead of ARGS)
        #[arg(short, long)]
        process: Option<PathBuf>,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// Return once the process runs instead of waiting for it
        #[arg(short, long)]
        detach: bool,
        /// Give the process a terminal (needs --console-socket)
        #[arg(short, long)]
        tty: bool,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
        /// Working directory inside the container
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Extra environment variables (KEY=VALUE)
        #[arg(short, long)]
        env: Vec<String>,
        id: String,
        /// The command and its arguments
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print what this runtime supports (runtime-spec features JSON)
    Features,
    /// Print a container's resource usage (`--stats`: once, as runc's JSON, in ns and bytes)
    Events {
        #[arg(long)]
        stats: bool,
        id: String,
    },
    /// Freeze every process of a container
    Pause { id: String },
    /// Thaw a paused container
    Resume { id: String },
    /// Check what this host supports: one line per feature; exits 1 when a required one is missing
    Check {
        /// text for people, json for scripts
        #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
        format: CheckFormat,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(hide = true)]
    Completions(runtime::cli_assets::CompletionsArgs),
    /// Print the man page (roff), or write every page into --dir
    #[command(hide = true)]
    Man(runtime::cli_assets::ManArgs),
}

use runtime::check::Format as CheckFormat;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(cli.log.as_deref(), cli.log_format, cli.debug) {
        eprintln!("job-runtime: open log {:?}: {e}", cli.log);
        return ExitCode::from(1);
    }
    match dispatch(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{e:#}");
            // Clients (conmon, containerd) read the error from the log file; people read stderr.
            if cli.log.is_some() {
                tracing::error!("{msg}");
            }
            eprintln!("job-runtime: {msg}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: &Cli) -> Result<u8> {
    let root = cli.root.as_path();
    match &cli.command {
        Command::Create(args) => {
            create(cli, args)?;
        }
        Command::Start { id } => load(root, id)?.start()?,
        Command::State { id } => {
            let c = load(root, id)?;
            let text = serde_json::to_string_pretty(&c.state().oci())?;
            println!("{text}");
        }
        Command::Kill { all, id, signal } => {
            let sig = parse_signal(signal)?;
            load(root, id)?.kill(sig, *all)?;
        }
        Command::Delete { force, id } => delete(root, id, *force)?,
        Command::Run {
            create: args,
            detach,
            keep,
        } => return run(cli, args, *detach, *keep),
        Command::Spec { bundle, .. } => write_spec(bundle)?,
        Command::List { quiet, format } => list(root, *quiet, format)?,
        Command::Ps { format, id } => ps(root, id, format)?,
        Command::Exec {
            process,
            pid_file,
            detach,
            tty,
            console_socket,
            preserve_fds,
            cwd,
            env,
            id,
            args,
        } => {
            let process = match process {
                Some(path) => Some(read_process(path)?),
                None => None,
            };
            let opts = ExecOptions {
                process,
                args: args.clone(),
                env: env.clone(),
                cwd: cwd.clone(),
                tty: *tty,
                console_socket: console_socket.clone(),
                pid_file: pid_file.clone(),
                preserve_fds: *preserve_fds,
                ..ExecOptions::default()
            };
            return exec(root, id, &opts, *detach);
        }
        Command::Events { stats, id } => {
            if !stats {
                bail!("only `events --stats` is supported: streaming events is not implemented");
            }
            let c = load(root, id)?;
            let cgroup = c.cgroup()?;
            let raw = c.stats()?;
            let event = runtime::stats::normalize(id, &raw, cgroup.version());
            println!("{}", serde_json::to_string(&event)?);
        }
        Command::Features => {
            println!(
                "{}",
                serde_json::to_string_pretty(&runtime::features::features())?
            );
        }
        Command::Pause { id } => load(root, id)?.pause()?,
        Command::Resume { id } => load(root, id)?.resume()?,
        Command::Check { format } => return Ok(check(*format)),
        Command::Completions(args) => runtime::cli_assets::write_completions(
            Cli::command(),
            args.shell,
            &mut std::io::stdout(),
        )?,
        Command::Man(args) => {
            let pages = runtime::cli_assets::write_man(
                Cli::command(),
                args.dir.as_deref(),
                &mut std::io::stdout(),
            )?;
            for p in pages {
                println!("{}", p.display());
            }
        }
    }
    Ok(0)
}

/// Prints the host check; 1 when a required feature is missing.
fn check(format: CheckFormat) -> u8 {
    u8::from(!runtime::check::host().print(format))
}

fn load(root: &Path, id: &str) -> Result<Container> {
    Ok(Container::load(root, id)?)
}

fn create(cli: &Cli, args: &CreateArgs) -> Result<Container> {
    let opts = CreateOptions {
        pid_file: args.pid_file.clone(),
        console_socket: args.console_socket.clone(),
        preserve_fds: args.preserve_fds,
        systemd_cgroup: cli.systemd_cgroup,
        ..CreateOptions::new(&args.id, &args.bundle, &cli.root)
    };
    Ok(container::create(&opts)?)
}

fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    match Container::load(root, id) {
        Ok(c) => Ok(c.delete(force)?),
        // runc: deleting what is already gone succeeds with --force.
        Err(container::ContainerError::State(runtime::state::StateError::NotFound(_))) if force => {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// `TERM`, `SIGTERM` or `15`.
fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| anyhow!("unknown signal {s:?}"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name)
        .map_err(|_| anyhow!("unknown signal {s:?}: use a name like TERM or a number like 15"))
}

/// The signals `run` passes on to the container instead of acting on them itself.
const FORWARDED: [Signal; 8] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
];

fn forwarded_mask() -> SigSet {
    let mut mask = SigSet::empty();
    for s in FORWARDED {
        mask.add(s);
    }
    mask.add(Signal::SIGCHLD);
    mask
}

fn run(cli: &Cli, args: &CreateArgs, detach: bool, keep: bool) -> Result<u8> {
    // Blocked before the clone so none is lost; job-init unblocks them before exec.
    let mask = forwarded_mask();
    if !detach {
        mask.thread_block().context("block signals")?;
    }
    let mut c = create(cli, args)?;
    if let Err(e) = c.start() {
        let _ = c.delete(true);
        return Err(e.into());
    }
    if detach {
        return Ok(0);
    }
    let code = wait_forwarding(c.pid(), &mask)?;
    if !keep {
        load(&cli.root, &args.id)?.delete(true)?;
    }
    Ok(code)
}

/// Waits for the container's init (our child), passing forwarded signals on to it.
fn wait_forwarding(pid: i32, mask: &SigSet) -> Result<u8> {
    let child = Pid::from_raw(pid);
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code as u8),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as u8),
            Ok(_) => {}
            Err(e) => bail!("wait for container process {pid}: {e}"),
        }
        match mask.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(sig) => {
                let _ = kill(child, sig);
            }
            Err(e) => bail!("wait for signals: {e}"),
        }
    }
}

fn read_process(path: &Path) -> Result<oci_spec::runtime::Process> {
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a runtime-spec process", path.display()))
}

fn exec(root: &Path, id: &str, opts: &ExecOptions, detach: bool) -> Result<u8> {
    let mask = forwarded_mask();
    if !detach {
        mask.thread_block().context("block signals")?;
    }
    let pid = load(root, id)?.exec(opts)?;
    if detach {
        return Ok(0);
    }
    wait_forwarding(pid, &mask)
}

fn write_spec(bundle: &Path) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("{} exists; remove it first", path.display());
    }
    spec::save_pretty(&spec::default_spec(&[]), &path)?;
    Ok(())
}

fn list(root: &Path, quiet: bool, format: &str) -> Result<()> {
    let containers = container::list(root)?;
    let mut out = std::io::stdout().lock();
    if quiet {
        for c in &containers {
            writeln!(out, "{}", c.id())?;
        }
        return Ok(());
    }
    if format == "json" {
        let states: Vec<_> = containers.iter().map(|c| c.state().oci()).collect();
        writeln!(out, "{}", serde_json::to_string(&states)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:<8} {:<10} {:<40} CREATED",
        "ID", "PID", "STATUS", "BUNDLE"
    )?;
    for c in &containers {
        let s = c.state().oci();
        writeln!(
            out,
            "{:<20} {:<8} {:<10} {:<40} {}",
            s.id,
            s.pid,
            s.status,
            s.bundle.display(),
            s.created
        )?;
    }
    Ok(())
}

fn ps(root: &Path, id: &str, format: &str) -> Result<()> {
    let pids = load(root, id)?.pids()?;
    if format == "json" {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(());
    }
    println!("{:<8} CMD", "PID");
    for pid in pids {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .split('\0')
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        println!("{pid:<8} {cmd}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("SIGKILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("hup").unwrap(), Signal::SIGHUP);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }
}
