//! `rootfs-builder`: the command-line face of the `rootfs_builder` library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rootfs_builder::extract::IdShift;
use rootfs_builder::host::{self, HostRequest};
use rootfs_builder::image::{self, ImageRequest};

#[derive(Parser)]
#[command(
    name = "rootfs-builder",
    version,
    about = "minimal root filesystems from host programs and OCI images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy host programs and everything they load into a new rootfs.
    Host {
        /// Destination directory (replaced atomically).
        #[arg(long)]
        out: PathBuf,
        /// Extra file or directory to copy as it is (repeatable).
        #[arg(long = "with", value_name = "PATH")]
        with: Vec<PathBuf>,
        /// Rebuild even if OUT already holds an up-to-date build.
        #[arg(long)]
        force: bool,
        /// Program names (searched in PATH) or paths.
        #[arg(required = true)]
        programs: Vec<String>,
    },
    /// Unpack an OCI image layout, OCI archive or docker-save archive into a new rootfs.
    Image {
        /// Destination directory (replaced atomically).
        #[arg(long)]
        out: PathBuf,
        /// Add N to every file owner uid (for a user-namespace mapping).
        #[arg(long, default_value_t = 0, value_name = "N")]
        shift_uid: u32,
        /// Add N to every file owner gid.
        #[arg(long, default_value_t = 0, value_name = "N")]
        shift_gid: u32,
        /// Manifest to use when the layout holds several (org.opencontainers.image.ref.name).
        #[arg(long = "ref", value_name = "NAME")]
        reference: Option<String>,
        /// Rebuild even if OUT already holds an up-to-date build.
        #[arg(long)]
        force: bool,
        /// OCI layout directory or archive file.
        source: PathBuf,
    },
    /// Write an OCI bundle (config.json from the runtime's secure default spec) for a rootfs.
    Bundle {
        /// A rootfs built by `host` or `image`.
        #[arg(long)]
        rootfs: PathBuf,
        /// Bundle directory to write config.json into.
        #[arg(long)]
        out: PathBuf,
        /// The job's command line (after `--`); the default spec's `sh` when empty.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROOTFS_BUILDER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rootfs-builder: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Host {
            out,
            with,
            force,
            programs,
        } => {
            let built = host::build(&HostRequest {
                out,
                programs,
                with,
                force,
            })?;
            print_built(&built);
        }
        Command::Image {
            out,
            shift_uid,
            shift_gid,
            reference,
            force,
            source,
        } => {
            let built = image::build(&ImageRequest {
                source,
                out,
                shift: IdShift {
                    uid: shift_uid,
                    gid: shift_gid,
                },
                reference,
                force,
            })?;
            print_built(&built);
        }
        Command::Bundle { rootfs, out, args } => {
            let config = rootfs_builder::bundle::write(&rootfs, &out, &args)?;
            println!("{}", config.display());
        }
    }
    Ok(())
}

/// One line a script can parse: the key, whether it was reused, and the path.
fn print_built(built: &rootfs_builder::BuiltRootfs) {
    let state = if built.reused { "reused" } else { "built" };
    println!("{} {} {}", built.key, state, built.path.display());
}
