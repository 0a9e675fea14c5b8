//! Shell completions and man pages generated from a binary's clap definition, shared by
//! `job-runtime`, `jobd` and `jobctl` (each has hidden `completions` and `man` subcommands that
//! call into here, and `scripts/install.sh` installs what they print).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Errors writing completions or man pages.
#[derive(Debug, thiserror::Error)]
pub enum CliAssetError {
    #[error("write {what}: {source}")]
    Stdout {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("write man pages into {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// `completions SHELL`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `man [--dir DIR]`.
#[derive(Debug, Clone, clap::Args)]
pub struct ManArgs {
    /// Write one page per command and subcommand (NAME.1, NAME-SUB.1) into DIR instead of
    /// printing the main page.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the completion script for `shell` to `out`.
pub fn write_completions(
    mut cmd: clap::Command,
    shell: Shell,
    out: &mut dyn Write,
) -> Result<(), CliAssetError> {
    let name = cmd.get_name().to_string();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut buf);
    out.write_all(&buf)
        .and_then(|()| out.flush())
        .map_err(|source| CliAssetError::Stdout {
            what: "completions",
            source,
        })
}

/// Prints the main man page (roff) to `out`, or with `dir` writes every visible command's page
/// there and returns their paths.
pub fn write_man(
    cmd: clap::Command,
    dir: Option<&Path>,
    out: &mut dyn Write,
) -> Result<Vec<PathBuf>, CliAssetError> {
    let Some(dir) = dir else {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut buf)
            .and_then(|()| out.write_all(&buf))
            .and_then(|()| out.flush())
            .map_err(|source| CliAssetError::Stdout {
                what: "man page",
                source,
            })?;
        return Ok(Vec::new());
    };
    let dir_error = |source| CliAssetError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(dir_error)?;
    // As clap_mangen::generate_to does, but keeping the paths: a built command gives its
    // subcommands display names like `jobctl-run`, which name their pages.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_pages(cmd, dir, &mut written).map_err(dir_error)?;
    written.sort();
    Ok(written)
}

fn write_pages(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), dir, written)?;
    }
    written.push(clap_mangen::Man::new(cmd).generate_to(dir)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> clap::Command {
        clap::Command::new("sample")
            .version("1.0")
            .subcommand(clap::Command::new("go").about("go somewhere"))
            .arg(clap::Arg::new("loud").long("loud").help("be loud"))
    }

    #[test]
    fn man_page_lists_options_and_subcommand_pages_go_to_the_dir() {
        let mut out = Vec::new();
        write_man(sample(), None, &mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(page.contains(".TH sample 1"), "{page}");
        assert!(page.contains("loud"), "{page}");
        let dir = tempfile::tempdir().unwrap();
        let written = write_man(sample(), Some(dir.path()), &mut std::io::sink()).unwrap();
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["sample-go.1", "sample.1"]);
    }

    #[test]
    fn bash_completion_names_the_subcommands() {
        let mut out = Vec::new();
        write_completions(sample(), Shell::Bash, &mut out).unwrap();
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains("complete -F"), "{script}");
        assert!(script.contains("go"), "{script}");
    }
}
