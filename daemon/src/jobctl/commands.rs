//! What each jobctl subcommand does, against a connected `JobServiceClient`.

use std::io::Write;
use std::path::{Component, Path};
use std::time::Duration;

use proto::job_service_client::JobServiceClient;
use proto::{
    GetJobRequest, GetStatsRequest, GetStatsResponse, Job, JobSpec, JobState, Limits,
    ListJobsRequest, OutputStream, StartJobRequest, StopJobRequest, StreamOutputRequest,
    WatchJobRequest,
};
use serde_json::json;
use tonic::transport::Channel;
use tonic::Code;

use super::cli::{Cli, Cmd, Format, SpecArgs};
use super::connect::{self, ConnectError};

/// Exit status when jobctl or the daemon failed (as `docker run`).
pub const EXIT_FAILED: i32 = 125;
/// Exit status when the command could not be invoked.
pub const EXIT_CANNOT_INVOKE: i32 = 126;
/// Exit status when the command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;
/// The largest input tar jobctl sends (jobd's default `upload_cap_bytes`).
pub const UPLOAD_CAP: u64 = 16 << 20;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{what}: {}", explain_status(.status))]
    Rpc {
        what: &'static str,
        status: tonic::Status,
    },
    #[error("no job with id {0:?} (or prefix of one) visible to you")]
    NoSuchJob(String),
    #[error("id prefix {prefix:?} is ambiguous: {matches}")]
    Ambiguous { prefix: String, matches: String },
    #[error("upload {path}: {source}")]
    Upload {
        path: String,
        source: std::io::Error,
    },
    #[error("write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("the server answered without a job record")]
    NoJob,
    #[error(transparent)]
    CliAsset(#[from] runtime::cli_assets::CliAssetError),
}

fn rpc(what: &'static str) -> impl FnOnce(tonic::Status) -> CommandError {
    move |status| CommandError::Rpc { what, status }
}

/// A status in words, with what to do about it.
pub fn explain_status(s: &tonic::Status) -> String {
    let msg = s.message();
    match s.code() {
        Code::PermissionDenied => format!(
            "permission denied: {msg} (the role in your certificate's OU does not allow this: viewers cannot start or stop jobs, users only see their own jobs)"
        ),
        Code::Unauthenticated => format!("not authenticated: {msg} (check the client certificate)"),
        Code::Unavailable | Code::Unknown | Code::Cancelled
            if msg.contains("transport error") || msg.contains("operation was canceled") =>
        {
            let raw = std::error::Error::source(s)
                .map(connect::chain)
                .map(|c| {
                    if c.starts_with(msg) {
                        c
                    } else {
                        format!("{msg}: {c}")
                    }
                })
                .unwrap_or_else(|| msg.to_string());
            connect::explain_rpc(&raw)
        }
        Code::Unavailable => format!("jobd is unavailable: {msg} (is it running? did it restart?)"),
        Code::InvalidArgument => format!("refused: {msg}"),
        Code::NotFound => format!("not found: {msg}"),
        Code::DeadlineExceeded => format!("timed out: {msg}"),
        c => format!("{c:?}: {msg}"),
    }
}

/// Runs the parsed command line; returns the exit status.
pub async fn execute(cli: Cli) -> Result<i32, CommandError> {
    if let Some(code) = without_server(&cli.cmd)? {
        return Ok(code);
    }
    let mut c = connect::connect(&cli.conn).await?;
    let fmt = cli.output;
    match cli.cmd {
        Cmd::Run { detach, spec } => run(&mut c, fmt, spec, detach).await,
        Cmd::Start { spec } => {
            let spec = build_spec(&spec)?;
            let job = start(&mut c, spec).await?;
            print_started(fmt, &job)?;
            Ok(0)
        }
        Cmd::Stop { id, timeout } => {
            let id = resolve(&mut c, &id).await?;
            let job = c
                .stop_job(StopJobRequest {
                    job_id: id,
                    grace_period_ms: timeout.map(|d| d.as_millis() as u64).unwrap_or(0),
                })
                .await
                .map_err(rpc("stop job"))?
                .into_inner()
                .job
                .ok_or(CommandError::NoJob)?;
            print_job(fmt, &job)?;
            Ok(0)
        }
        Cmd::Status { id } => {
            let id = resolve(&mut c, &id).await?;
            let job = get(&mut c, &id).await?;
            print_job(fmt, &job)?;
            Ok(0)
        }
        Cmd::List { state, all } => {
            let states: Vec<i32> = if !state.is_empty() {
                state.iter().map(|s| s.to_proto() as i32).collect()
            } else if all {
                Vec::new()
            } else {
                vec![JobState::Starting as i32, JobState::Running as i32]
            };
            let jobs = list(&mut c, states).await?;
            print_list(fmt, &jobs)?;
            Ok(0)
        }
        Cmd::Logs { id, follow } => {
            let id = resolve(&mut c, &id).await?;
            let mut s = c
                .stream_output(StreamOutputRequest {
                    job_id: id,
                    offset: 0,
                    no_follow: !follow,
                })
                .await
                .map_err(rpc("stream output"))?
                .into_inner();
            while let Some(chunk) = s.message().await.map_err(rpc("stream output"))? {
                write_chunk(&chunk)?;
            }
            Ok(0)
        }
        Cmd::Stats { id } => {
            let id = resolve(&mut c, &id).await?;
            let st = c
                .get_stats(GetStatsRequest { job_id: id.clone() })
                .await
                .map_err(rpc("get stats"))?
                .into_inner();
            print_stats(fmt, &id, &st)?;
            Ok(0)
        }
        Cmd::Watch { id } => {
            let id = resolve(&mut c, &id).await?;
            let mut s = c
                .watch_job(WatchJobRequest { job_id: id })
                .await
                .map_err(rpc("watch job"))?
                .into_inner();
            let mut out = std::io::stdout();
            while let Some(ev) = s.message().await.map_err(rpc("watch job"))? {
                if let Some(job) = ev.job {
                    match fmt {
                        Format::Json => writeln!(out, "{}", job_json(&job))?,
                        Format::Table => writeln!(
                            out,
                            "{}  {}  {}",
                            fmt_time(now_ms()),
                            state_name(job.state),
                            outcome(&job)
                        )?,
                    }
                    out.flush()?;
                }
            }
            Ok(0)
        }
        Cmd::Completions(_) | Cmd::Man(_) => unreachable!("handled by without_server"),
    }
}

/// The commands that generate files from the command line itself: no connection needed.
fn without_server(cmd: &Cmd) -> Result<Option<i32>, CommandError> {
    use clap::CommandFactory;
    let mut out = std::io::stdout();
    match cmd {
        Cmd::Completions(args) => {
            runtime::cli_assets::write_completions(Cli::command(), args.shell, &mut out)?;
        }
        Cmd::Man(args) => {
            for page in
                runtime::cli_assets::write_man(Cli::command(), args.dir.as_deref(), &mut out)?
            {
                writeln!(out, "{}", page.display())?;
            }
        }
        _ => return Ok(None),
    }
    Ok(Some(0))
}

async fn start(c: &mut JobServiceClient<Channel>, spec: JobSpec) -> Result<Job, CommandError> {
    c.start_job(StartJobRequest { spec: Some(spec) })
        .await
        .map_err(rpc("start job"))?
        .into_inner()
        .job
        .ok_or(CommandError::NoJob)
}

async fn get(c: &mut JobServiceClient<Channel>, id: &str) -> Result<Job, CommandError> {
    c.get_job(GetJobRequest { job_id: id.into() })
        .await
        .map_err(rpc("get job"))?
        .into_inner()
        .job
        .ok_or(CommandError::NoJob)
}

async fn list(
    c: &mut JobServiceClient<Channel>,
    states: Vec<i32>,
) -> Result<Vec<Job>, CommandError> {
    let mut jobs = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_jobs(ListJobsRequest {
                states: states.clone(),
                owner: String::new(),
                page_size: 1000,
                page_token: token,
            })
            .await
            .map_err(rpc("list jobs"))?
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok(jobs);
        }
        token = page.next_page_token;
    }
}

/// A full id as given, or the one job whose id starts with `prefix`.
async fn resolve(c: &mut JobServiceClient<Channel>, prefix: &str) -> Result<String, CommandError> {
    if uuid::Uuid::parse_str(prefix).is_ok() {
        return Ok(prefix.to_string());
    }
    let p = prefix.to_lowercase();
    let matches: Vec<String> = list(c, Vec::new())
        .await?
        .into_iter()
        .map(|j| j.id)
        .filter(|id| !p.is_empty() && id.starts_with(&p))
        .collect();
    match matches.len() {
        0 => Err(CommandError::NoSuchJob(prefix.to_string())),
        1 => Ok(matches.into_iter().next().unwrap_or_default()),
        _ => Err(CommandError::Ambiguous {
            prefix: prefix.to_string(),
            matches: matches.join(", "),
        }),
    }
}

/// The request's spec from the flags, with the upload tar unless `--no-upload`.
pub fn build_spec(a: &SpecArgs) -> Result<JobSpec, CommandError> {
    let mut spec = JobSpec {
        command: a.command.first().cloned().unwrap_or_default(),
        args: a.command.iter().skip(1).cloned().collect(),
        env: a.env.iter().cloned().collect(),
        working_dir: a.workdir.clone().unwrap_or_default(),
        limits: Some(Limits {
            memory_bytes: a.memory.unwrap_or(0),
            cpu_millicores: a.cpus.unwrap_or(0),
            pids: a.pids.unwrap_or(0),
            io_read_bps: a.io_read_bps.unwrap_or(0),
            io_write_bps: a.io_write_bps.unwrap_or(0),
            io_read_iops: a.io_read_iops.unwrap_or(0),
            io_write_iops: a.io_write_iops.unwrap_or(0),
        }),
        timeout_ms: a.timeout.map(|d| d.as_millis() as u64).unwrap_or(0),
        input_tar: Vec::new(),
    };
    if !a.no_upload {
        spec.input_tar = upload_tar(&a.command, Path::new("."))?;
    }
    Ok(spec)
}

/// A relative path inside the current directory (no `..`, not absolute), without `./`.
fn local_name(arg: &str) -> Option<String> {
    let p = Path::new(arg);
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    }
}

/// The tar of the regular files in `dir` that the command's words name (e.g. `x.py` of
/// `python3 x.py`), up to [`UPLOAD_CAP`] in all; says on stderr what was sent and what not.
pub fn upload_tar(command: &[String], dir: &Path) -> Result<Vec<u8>, CommandError> {
    let mut b = tar::Builder::new(Vec::new());
    let mut total = 0u64;
    let mut sent = Vec::new();
    for word in command {
        let Some(name) = local_name(word) else {
            continue;
        };
        if sent.iter().any(|(n, _)| n == &name) {
            continue;
        }
        let path = dir.join(&name);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if total + meta.len() > UPLOAD_CAP {
            eprintln!(
                "jobctl: not uploading {name} ({}): over the upload cap of {} in all",
                human(meta.len()),
                human(UPLOAD_CAP)
            );
            continue;
        }
        let data = std::fs::read(&path).map_err(|source| CommandError::Upload {
            path: name.clone(),
            source,
        })?;
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        });
        h.set_cksum();
        b.append_data(&mut h, &name, data.as_slice())
            .map_err(|source| CommandError::Upload {
                path: name.clone(),
                source,
            })?;
        total += data.len() as u64;
        sent.push((name, data.len() as u64));
    }
    if sent.is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<String> = sent
        .iter()
        .map(|(n, s)| format!("{n} ({})", human(*s)))
        .collect();
    eprintln!(
        "jobctl: uploaded {} to the job's working directory (--no-upload to turn off)",
        list.join(", ")
    );
    b.into_inner().map_err(|source| CommandError::Upload {
        path: "tar".into(),
        source,
    })
}

use std::os::unix::fs::PermissionsExt;

fn human(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn write_chunk(chunk: &proto::OutputChunk) -> std::io::Result<()> {
    if chunk.stream == OutputStream::Stderr as i32 || chunk.stream == OutputStream::System as i32 {
        let mut e = std::io::stderr().lock();
        e.write_all(&chunk.data)?;
        e.flush()
    } else {
        let mut o = std::io::stdout().lock();
        o.write_all(&chunk.data)?;
        o.flush()
    }
}

fn is_final(state: i32) -> bool {
    !matches!(
        JobState::try_from(state),
        Ok(JobState::Starting | JobState::Running | JobState::Unspecified) | Err(_)
    )
}

async fn run(
    c: &mut JobServiceClient<Channel>,
    fmt: Format,
    args: SpecArgs,
    detach: bool,
) -> Result<i32, CommandError> {
    let spec = build_spec(&args)?;
    // Registered before the start: a Ctrl-C from now on stops the job instead of killing jobctl.
    let mut sigint = if detach {
        None
    } else {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok()
    };
    let job = start(c, spec).await?;
    if detach {
        print_started(fmt, &job)?;
        return Ok(0);
    }
    if is_final(job.state) {
        return Ok(report(&job));
    }
    let id = job.id.clone();
    let mut s = c
        .stream_output(StreamOutputRequest {
            job_id: id.clone(),
            offset: 0,
            no_follow: false,
        })
        .await
        .map_err(rpc("stream output"))?
        .into_inner();
    let mut stopping = false;
    loop {
        tokio::select! {
            m = s.message() => match m.map_err(rpc("stream output"))? {
                Some(chunk) => write_chunk(&chunk)?,
                None => break,
            },
            Some(()) = async { match sigint.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                if stopping {
                    eprintln!("jobctl: detached; job {id} keeps running: reattach with `jobctl logs -f {id}`");
                    return Ok(130);
                }
                stopping = true;
                eprintln!("jobctl: stopping job {id} (Ctrl-C again to detach)");
                let mut c2 = c.clone();
                let id2 = id.clone();
                tokio::spawn(async move {
                    if let Err(e) = c2.stop_job(StopJobRequest { job_id: id2, grace_period_ms: 0 }).await {
                        eprintln!("jobctl: stop job: {}", explain_status(&e));
                    }
                });
            }
        }
    }
    let done = wait_final(c, &id).await?;
    if fmt == Format::Json {
        println!("{}", job_json(&done));
    }
    Ok(report(&done))
}

/// The job's record once it has reached a final state.
async fn wait_final(c: &mut JobServiceClient<Channel>, id: &str) -> Result<Job, CommandError> {
    let mut s = c
        .watch_job(WatchJobRequest { job_id: id.into() })
        .await
        .map_err(rpc("watch job"))?
        .into_inner();
    let mut last = None;
    while let Some(ev) = s.message().await.map_err(rpc("watch job"))? {
        if let Some(job) = ev.job {
            let fin = is_final(job.state);
            last = Some(job);
            if fin {
                break;
            }
        }
    }
    match last {
        Some(j) if is_final(j.state) => Ok(j),
        _ => {
            // The watch ended early: ask once more.
            tokio::time::sleep(Duration::from_millis(100)).await;
            get(c, id).await
        }
    }
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// The exit status for a finished job (see the module docs of `cli`), with a one-line reason on
/// stderr when it did not simply exit.
pub fn exit_status(job: &Job) -> (i32, Option<String>) {
    match JobState::try_from(job.state) {
        Ok(JobState::Exited) => (job.exit_code.unwrap_or(EXIT_FAILED), None),
        Ok(JobState::Killed) => {
            let sig = job.signal.unwrap_or(9);
            let mut why = format!("job killed by {}", signal_name(sig));
            if job.oom_killed {
                why.push_str(": out of memory (OOM-killed at the memory limit)");
            }
            (128 + sig, Some(why))
        }
        Ok(JobState::Stopped) => {
            let sig = job.signal.unwrap_or(15);
            let reason = if job.failure_reason.is_empty() {
                "by request".to_string()
            } else {
                job.failure_reason.clone()
            };
            (128 + sig, Some(format!("job stopped: {reason}")))
        }
        Ok(JobState::Failed) => {
            let r = &job.failure_reason;
            let code = if r.contains("not found in PATH") || r.contains("No such file") {
                EXIT_NOT_FOUND
            } else if r.contains("executable ")
                || r.contains("permission denied")
                || r.contains("cwd ")
            {
                EXIT_CANNOT_INVOKE
            } else {
                EXIT_FAILED
            };
            (code, Some(format!("job failed: {r}")))
        }
        _ => (
            EXIT_FAILED,
            Some(format!("job ended in state {}", state_name(job.state))),
        ),
    }
}

fn report(job: &Job) -> i32 {
    let (code, why) = exit_status(job);
    if let Some(why) = why {
        eprintln!("jobctl: {why}");
    }
    code
}

/// The state's short name: `running`, `exited`, ...
pub fn state_name(state: i32) -> &'static str {
    match JobState::try_from(state) {
        Ok(JobState::Starting) => "starting",
        Ok(JobState::Running) => "running",
        Ok(JobState::Exited) => "exited",
        Ok(JobState::Killed) => "killed",
        Ok(JobState::Stopped) => "stopped",
        Ok(JobState::Failed) => "failed",
        _ => "unknown",
    }
}

fn outcome(job: &Job) -> String {
    match JobState::try_from(job.state) {
        Ok(JobState::Exited) => format!("exit {}", job.exit_code.unwrap_or(-1)),
        Ok(JobState::Killed) => format!(
            "{}{}",
            signal_name(job.signal.unwrap_or(0)),
            if job.oom_killed { " (oom)" } else { "" }
        ),
        Ok(JobState::Stopped) => match job.signal {
            Some(s) => signal_name(s),
            None => String::new(),
        },
        Ok(JobState::Failed) => job.failure_reason.clone(),
        _ => String::new(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn fmt_time(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    match time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "-".into(),
    }
}

fn command_line(job: &Job) -> String {
    match &job.spec {
        Some(s) => std::iter::once(s.command.as_str())
            .chain(s.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        None => String::new(),
    }
}

/// A job as JSON (the input tar left out).
pub fn job_json(job: &Job) -> serde_json::Value {
    let spec = job.spec.clone().unwrap_or_default();
    let l = spec.limits.unwrap_or_default();
    json!({
        "id": job.id,
        "owner": job.owner,
        "state": state_name(job.state),
        "exit_code": job.exit_code,
        "signal": job.signal,
        "oom_killed": job.oom_killed,
        "failure_reason": job.failure_reason,
        "created_at_ms": job.created_at_ms,
        "started_at_ms": job.started_at_ms,
        "ended_at_ms": job.ended_at_ms,
        "output_bytes": job.output_bytes,
        "spec": {
            "command": spec.command,
            "args": spec.args,
            "env": spec.env,
            "working_dir": spec.working_dir,
            "timeout_ms": spec.timeout_ms,
            "limits": {
                "memory_bytes": l.memory_bytes,
                "cpu_millicores": l.cpu_millicores,
                "pids": l.pids,
                "io_read_bps": l.io_read_bps,
                "io_write_bps": l.io_write_bps,
                "io_read_iops": l.io_read_iops,
                "io_write_iops": l.io_write_iops,
            },
        },
    })
}

fn print_started(fmt: Format, job: &Job) -> Result<(), CommandError> {
    match fmt {
        Format::Json => println!("{}", job_json(job)),
        Format::Table => println!("{}", job.id),
    }
    if job.state == JobState::Failed as i32 {
        eprintln!("jobctl: job failed: {}", job.failure_reason);
    }
    Ok(())
}

fn print_job(fmt: Format, job: &Job) -> Result<(), CommandError> {
    let mut out = std::io::stdout().lock();
    match fmt {
        Format::Json => writeln!(out, "{}", job_json(job))?,
        Format::Table => {
            let l = job.spec.as_ref().and_then(|s| s.limits).unwrap_or_default();
            writeln!(out, "id:        {}", job.id)?;
            writeln!(out, "owner:     {}", job.owner)?;
            writeln!(out, "command:   {}", command_line(job))?;
            writeln!(out, "state:     {}", state_name(job.state))?;
            let o = outcome(job);
            if !o.is_empty() {
                writeln!(out, "outcome:   {o}")?;
            }
            if !job.failure_reason.is_empty() && job.state != JobState::Failed as i32 {
                writeln!(out, "reason:    {}", job.failure_reason)?;
            }
            writeln!(out, "created:   {}", fmt_time(job.created_at_ms))?;
            writeln!(out, "started:   {}", fmt_time(job.started_at_ms))?;
            writeln!(out, "ended:     {}", fmt_time(job.ended_at_ms))?;
            writeln!(out, "output:    {}", human(job.output_bytes))?;
            writeln!(
                out,
                "limits:    memory {}, cpu {}m, pids {}",
                human(l.memory_bytes),
                l.cpu_millicores,
                l.pids
            )?;
        }
    }
    Ok(())
}

fn print_list(fmt: Format, jobs: &[Job]) -> Result<(), CommandError> {
    let mut out = std::io::stdout().lock();
    match fmt {
        Format::Json => {
            let v: Vec<_> = jobs.iter().map(job_json).collect();
            writeln!(out, "{}", serde_json::Value::Array(v))?;
        }
        Format::Table => {
            let colour = use_colour();
            writeln!(
                out,
                "{:<12}  {:<8}  {:<12}  {:<19}  {:<10}  COMMAND",
                "ID", "STATE", "OWNER", "CREATED", "OUTCOME"
            )?;
            for j in jobs {
                let mut o = outcome(j);
                if o.chars().count() > 10 {
                    o = o.chars().take(9).collect::<String>() + "…";
                }
                writeln!(
                    out,
                    "{:<12}  {}  {:<12}  {:<19}  {:<10}  {}",
                    j.id.chars().take(12).collect::<String>(),
                    paint(colour, j.state, &format!("{:<8}", state_name(j.state))),
                    j.owner,
                    fmt_time(j.created_at_ms),
                    o,
                    command_line(j)
                )?;
            }
        }
    }
    Ok(())
}

/// Colour only on a terminal, and not when `NO_COLOR` is set.
fn use_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn paint(colour: bool, state: i32, text: &str) -> String {
    if !colour {
        return text.to_string();
    }
    let code = match JobState::try_from(state) {
        Ok(JobState::Running | JobState::Starting) => "32",
        Ok(JobState::Exited) => "2",
        Ok(JobState::Killed | JobState::Failed) => "31",
        Ok(JobState::Stopped) => "33",
        _ => return text.to_string(),
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

fn print_stats(fmt: Format, id: &str, s: &GetStatsResponse) -> Result<(), CommandError> {
    let mut out = std::io::stdout().lock();
    match fmt {
        Format::Json => writeln!(
            out,
            "{}",
            json!({
                "id": id,
                "live": s.live,
                "cpu_usage_ns": s.cpu_usage_ns,
                "memory_current_bytes": s.memory_current_bytes,
                "memory_peak_bytes": s.memory_peak_bytes,
                "io_read_bytes": s.io_read_bytes,
                "io_write_bytes": s.io_write_bytes,
                "pids_current": s.pids_current,
            })
        )?,
        Format::Table => {
            writeln!(out, "live:      {}", s.live)?;
            writeln!(
                out,
                "cpu:       {:.3} s",
                s.cpu_usage_ns as f64 / 1_000_000_000.0
            )?;
            writeln!(
                out,
                "memory:    {} (peak {})",
                human(s.memory_current_bytes),
                human(s.memory_peak_bytes)
            )?;
            writeln!(
                out,
                "io:        read {}, written {}",
                human(s.io_read_bytes),
                human(s.io_write_bytes)
            )?;
            writeln!(out, "pids:      {}", s.pids_current)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses() {
        let mut j = Job {
            state: JobState::Exited as i32,
            exit_code: Some(3),
            ..Default::default()
        };
        assert_eq!(exit_status(&j).0, 3);
        j.state = JobState::Killed as i32;
        j.signal = Some(9);
        j.oom_killed = true;
        let (c, why) = exit_status(&j);
        assert_eq!(c, 137);
        assert!(why.unwrap().contains("OOM"));
        j.state = JobState::Failed as i32;
        j.failure_reason = "executable \"x\" not found in PATH".into();
        assert_eq!(exit_status(&j).0, 127);
        j.failure_reason = "executable \"/x\": permission denied".into();
        assert_eq!(exit_status(&j).0, 126);
        j.failure_reason = "mount overlay: busy".into();
        assert_eq!(exit_status(&j).0, 125);
    }

    #[test]
    fn local_names() {
        assert_eq!(local_name("x.py").as_deref(), Some("x.py"));
        assert_eq!(local_name("./a/b.sh").as_deref(), Some("a/b.sh"));
        assert_eq!(local_name("../x"), None);
        assert_eq!(local_name("/etc/passwd"), None);
        assert_eq!(local_name("."), None);
    }

    #[test]
    fn upload_takes_named_files_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x.py"), b"print(1)\n").unwrap();
        std::fs::write(d.path().join("other"), b"no").unwrap();
        let cmd: Vec<String> = ["python3", "x.py", "-c", "/etc/passwd"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let t = upload_tar(&cmd, d.path()).unwrap();
        let mut a = tar::Archive::new(t.as_slice());
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["x.py"]);
        assert!(upload_tar(&["ls".to_string()], d.path())
            .unwrap()
            .is_empty());
    }
}
