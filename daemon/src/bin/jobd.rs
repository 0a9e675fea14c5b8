//! jobd: the mTLS gRPC job service. See daemon/README.md.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use daemon::config::Config;
use daemon::{certs, manager, priority, rootfs, runner, server};

#[derive(Parser)]
#[command(
    name = "jobd",
    version,
    about = "the jobworker daemon: runs isolated jobs over mTLS gRPC"
)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "JOBD_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Data directory [default: /var/lib/jobd].
    #[arg(long, env = "JOBD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TLS directory with ca.pem, server.pem, server.key [default: DATA/tls].
    #[arg(long, env = "JOBD_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, env = "JOBD_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Certificate management.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Check this host and configuration: one line per feature; exits 1 when a required one
    /// is missing.
    Check {
        #[command(flatten)]
        serve: ServeArgs,
        /// text for people, json for scripts.
        #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
        format: CheckFormat,
    },
    /// Print a shell completion script.
    #[command(hide = true)]
    Completions(runtime::cli_assets::CompletionsArgs),
    /// Print the man page (roff), or write every page into --dir.
    #[command(hide = true)]
    Man(runtime::cli_assets::ManArgs),
}

use runtime::check::Format as CheckFormat;

#[derive(Subcommand)]
enum CertsCmd {
    /// Make a CA, a server certificate and an admin client identity in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Extra subject alternative name for the server certificate (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Issue a client identity (OUT/ca.pem, OUT/client.pem, OUT/client.key).
    Issue {
        /// The TLS directory holding ca.pem and ca.key.
        #[arg(long)]
        dir: PathBuf,
        /// The client's name (certificate CN).
        #[arg(long)]
        name: String,
        /// admin, user or viewer (certificate OU).
        #[arg(long)]
        role: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JOBD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libcgroups=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Certs(CertsCmd::Init { dir, sans })) => {
            let out = certs::init(&dir, &sans)?;
            println!("wrote CA and server certificate to {}", out.dir.display());
            println!("admin client identity: {}", out.admin_dir.display());
            Ok(())
        }
        Some(Cmd::Certs(CertsCmd::Issue {
            dir,
            name,
            role,
            out,
        })) => {
            if daemon::auth::Role::parse(&role).is_none() {
                anyhow::bail!("--role {role:?}: use admin, user or viewer");
            }
            let ca = certs::Ca::load(&dir)?;
            certs::issue_to(&ca, &name, &role, &out)?;
            println!(
                "wrote {}/{{ca.pem,client.pem,client.key}} for {name} ({role})",
                out.display()
            );
            Ok(())
        }
        Some(Cmd::Check { serve, format }) => {
            let code = check(&config(serve)?, format)?;
            std::process::exit(code);
        }
        Some(Cmd::Completions(args)) => Ok(runtime::cli_assets::write_completions(
            Cli::command(),
            args.shell,
            &mut std::io::stdout(),
        )?),
        Some(Cmd::Man(args)) => {
            let pages = runtime::cli_assets::write_man(
                Cli::command(),
                args.dir.as_deref(),
                &mut std::io::stdout(),
            )?;
            for p in pages {
                println!("{}", p.display());
            }
            Ok(())
        }
        None => serve(config(cli.serve)?),
    }
}

/// Prints the check; the exit code is 1 when something required is missing.
fn check(cfg: &Config, format: CheckFormat) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("locate the jobd executable")?;
    Ok(i32::from(!daemon::check::jobd(cfg, &exe).print(format)))
}

/// Defaults, then the configuration file, then flags and environment.
fn config(args: ServeArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if let Some(t) = args.tls_dir {
        cfg.tls_dir = Some(t);
    }
    cfg.validate()?;
    Ok(cfg)
}

fn serve(cfg: Config) -> anyhow::Result<()> {
    // Orphaned descendants of jobs (e.g. of a job whose shim was killed) come to jobd, not to
    // PID 1.
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_CHILD_SUBREAPER)");
    }
    // Before the runtime's threads exist, which inherit it (on Linux a nice value is per
    // thread). The shims put themselves and their jobs back at 0.
    match priority::lower(cfg.nice)? {
        priority::Group::Shared { sid } => tracing::warn!(
            nice = cfg.nice,
            session = sid,
            "jobd shares its caller's session, whose scheduling group (autogroup) competes with \
             each job's cgroup as an equal whatever jobd's nice value: start jobd as a session \
             leader (systemd does; by hand, `setsid jobd`) so that jobs come before its clients"
        ),
        group => tracing::debug!(nice = cfg.nice, ?group, "jobd's priority"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking-pool threads, once made, stay: no thread churn under load.
        .thread_keep_alive(std::time::Duration::from_secs(24 * 3600))
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        manager::ensure_dir(&cfg.data_dir)?;
        let rootfs_dir = cfg.rootfs();
        let rootfs = if rootfs_dir.join("bin").exists() && cfg.rootfs.is_some() {
            rootfs_dir
        } else {
            tokio::task::spawn_blocking(move || rootfs::build_default_rootfs(&rootfs_dir)).await??
        };
        let exec = runner::RuntimeExecutor::new(&cfg.data_dir, rootfs, cfg.job_init.clone())
            .with_context(|| format!("create {}/scratch", cfg.data_dir.display()))?;
        let running = server::start(cfg, Arc::new(exec)).await?;
        tokio::spawn(manager::run_reaper(running.manager.children()));
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        running.shutdown().await?;
        Ok(())
    })
}
