//! jobd benchmarks: start latency and throughput, output fan-out, many running jobs.
//!
//! Starts its own jobd (the binary given by `--jobd`, normally the release build) on a
//! temporary data directory and drives it over mTLS with the zero-config admin identity.
//! Run through `daemon/bench.sh`. Needs root (jobs run through the runtime).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use proto::job_service_client::JobServiceClient;
use proto::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Parser)]
struct Args {
    /// The jobd binary.
    #[arg(long)]
    jobd: PathBuf,
    /// Sequential starts measured for latency.
    #[arg(long, default_value_t = 100)]
    latency_jobs: usize,
    /// Sequential Python jobs (importing common modules) measured for latency; 0 skips them.
    #[arg(long, default_value_t = 20)]
    python_jobs: usize,
    /// Jobs started for the throughput figure.
    #[arg(long, default_value_t = 400)]
    throughput_jobs: usize,
    /// Concurrent StartJob calls in the throughput run.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Clients streaming the fan-out job (0 skips the fan-out run).
    #[arg(long, default_value_t = 1000)]
    fanout_clients: usize,
    /// Bytes the fan-out job writes.
    #[arg(long, default_value_t = 100_000_000)]
    fanout_bytes: u64,
    /// Concurrently running `sleep` jobs (0 skips that run).
    #[arg(long, default_value_t = 1000)]
    running_jobs: usize,
    /// Where the default rootfs is built once and kept, and the image of each run's data
    /// filesystem is made. Not a fresh temporary directory: rebuilding and deleting the
    /// rootfs's thousands of files on every run slows the next run's file creations on
    /// journal-less ext4 (see `fs_create_cost`).
    #[arg(long, default_value = "/var/tmp/jobd-bench")]
    dir: PathBuf,
    /// The nice value of this benchmark's clients (jobd starts at 0 and sets its configured
    /// one): clients elsewhere do not compete with the job for the host's CPUs, clients here
    /// do unless they yield.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    client_nice: i32,
    /// The nice value of the fan-out's streaming clients. They stand for clients on other
    /// machines: at 0 here, their TLS work would take turns with the job on the same two CPUs
    /// (the job's whole cgroup weighs as much as one of their threads), and the ratio would
    /// measure the benchmark, not jobd.
    #[arg(long, default_value_t = 19, allow_hyphen_values = true)]
    fanout_client_nice: i32,
    /// Fan-out rounds, each the job alone and then with the clients; the ratio printed is
    /// their median (one run of a 50 ms write swings by about 10%).
    #[arg(long, default_value_t = 3)]
    fanout_rounds: usize,
    /// Put the data directory under --dir on the host's filesystem instead of a new ext4 made
    /// for the run (see `FreshFs`).
    #[arg(long)]
    data_on_host_fs: bool,
    /// jobd's `nice` setting for the run (its configured default when not given).
    #[arg(long, allow_hyphen_values = true)]
    jobd_nice: Option<i32>,
    /// CPU-bound jobs kept running while GetJob and ListJobs latencies are measured
    /// (0 skips that part). The default fills every CPU.
    #[arg(long)]
    load_jobs: Option<usize>,
    /// GetJob calls measured under load, 10 ms apart.
    #[arg(long, default_value_t = 300)]
    load_calls: usize,
}

const PYTHON_IMPORTS: &str = "import json, ssl, hashlib, subprocess, argparse; print(1)";

fn print_latencies(what: &str, mut lat: Vec<Duration>) {
    println!(
        "{what} ({} jobs, sequential): p50 {}  p90 {}  max {}",
        lat.len(),
        ms(pct(&mut lat, 0.5)),
        ms(pct(&mut lat, 0.9)),
        ms(pct(&mut lat, 1.0))
    );
}

/// StartJob -> first output byte of `spec`, `n` times one after another.
async fn first_byte_latencies(
    c: &mut JobServiceClient<Channel>,
    spec: &JobSpec,
    n: usize,
) -> Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let job = start(c, spec.clone()).await?;
        let mut s = c
            .stream_output(StreamOutputRequest {
                job_id: job.id.clone(),
                offset: 0,
                no_follow: false,
            })
            .await?
            .into_inner();
        s.message().await?.context("no output")?;
        lat.push(t.elapsed());
        while s.message().await?.is_some() {}
    }
    Ok(lat)
}

struct Jobd {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Jobd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Microseconds to create an empty file in a new directory under `dir` (median of 200): ext4
/// without a journal skips inodes deleted in the last minutes when it allocates one, which
/// makes creations near many recent deletions cost a millisecond each instead of 20 µs.
fn fs_create_cost(dir: &Path) -> Result<(String, u128)> {
    let probe = tempfile::Builder::new().prefix("probe").tempdir_in(dir)?;
    let mut t = Vec::new();
    for i in 0..200 {
        let s = Instant::now();
        std::fs::File::create(probe.path().join(i.to_string()))?;
        t.push(s.elapsed());
    }
    let fs = nix::sys::statfs::statfs(dir)?;
    let kind = match fs.filesystem_type() {
        nix::sys::statfs::EXT4_SUPER_MAGIC => "ext4",
        nix::sys::statfs::TMPFS_MAGIC => "tmpfs",
        nix::sys::statfs::XFS_SUPER_MAGIC => "xfs",
        nix::sys::statfs::BTRFS_SUPER_MAGIC => "btrfs",
        _ => "other",
    };
    Ok((kind.to_string(), pct(&mut t, 0.5).as_micros()))
}

/// A new journaled ext4 (a sparse image under `base`, loop-mounted on `base/mnt`) for one
/// run's data directory, unmounted when dropped: every run starts from the same clean
/// filesystem, as a host's /var/lib would be, instead of inheriting the previous runs'
/// deletions.
struct FreshFs {
    mnt: PathBuf,
}

impl FreshFs {
    fn new(base: &Path) -> Result<FreshFs> {
        let img = base.join("data.img");
        let mnt = base.join("mnt");
        // A run that was killed (Ctrl-C) left its filesystem mounted here; mkfs would refuse.
        if std::fs::read_to_string("/proc/self/mountinfo")?
            .lines()
            .any(|l| l.split(' ').nth(4) == mnt.to_str())
        {
            nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("detach {} left by an earlier run", mnt.display()))?;
        }
        std::fs::File::create(&img)?.set_len(4 << 30)?;
        let run = |cmd: &mut Command| -> Result<()> {
            let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
            if !out.status.success() {
                bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img))?;
        std::fs::create_dir_all(&mnt)?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt))?;
        // Direct IO to the image: the data is cached once, in the filesystem on it, as it
        // would be on a disk (buffered, every byte would also fill the image file's cache).
        let dev = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&mnt)
            .output()?;
        let dev = String::from_utf8_lossy(&dev.stdout).trim().to_string();
        run(Command::new("losetup").args(["--direct-io=on", &dev]))?;
        Ok(FreshFs { mnt })
    }
}

impl Drop for FreshFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn spawn(jobd: &Path, base: &Path, run_parent: &Path, nice: Option<i32>) -> Result<Jobd> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(base)?;
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o711))?;
    std::fs::set_permissions(run_parent, std::fs::Permissions::from_mode(0o711))?;
    let dir = tempfile::Builder::new()
        .prefix("run")
        .tempdir_in(run_parent)?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(dir.path().join("jobd.log"))?;
    let cfg = dir.path().join("jobd.toml");
    std::fs::write(
        &cfg,
        format!(
            "client_identity_dir = \"{}\"\nrootfs = \"{}\"\n{}[max_limits]\npids = 32768\n[default_limits]\nmemory_bytes = 67108864\npids = 64\n",
            dir.path().join("client").display(),
            base.join("rootfs").display(),
            nice.map_or(String::new(), |n| format!("nice = {n}\n")),
        ),
    )?;
    let mut cmd = Command::new(jobd);
    cmd.args([
        "--data-dir",
        dir.path().join("data").to_str().unwrap_or_default(),
    ])
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .args(["--config", cfg.to_str().unwrap_or_default()])
    .env("JOBD_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log);
    // jobd leads a session of its own, as under systemd: with autogroup scheduling that is
    // what lets its nice value yield to the jobs (see `daemon::priority`).
    // Out of the benchmark's session a Ctrl-C no longer reaches it: it gets a SIGTERM (its
    // orderly shutdown) when the thread that started it, this one, ends with the benchmark.
    // SAFETY: the closure runs in the forked child before exec and only makes three syscalls
    // with integer arguments.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::setpriority(libc::PRIO_PROCESS, 0, 0) != 0
                || libc::setsid() < 0
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("spawn jobd")?;
    Ok(Jobd {
        child,
        addr: format!("https://127.0.0.1:{port}"),
        dir,
    })
}

/// Where a client finds jobd: its address and the client identity it wrote.
#[derive(Clone)]
struct Target {
    addr: String,
    dir: PathBuf,
}

impl Jobd {
    fn target(&self) -> Target {
        Target {
            addr: self.addr.clone(),
            dir: self.dir.path().to_path_buf(),
        }
    }
}

async fn connect(j: &Target) -> Result<JobServiceClient<Channel>> {
    let id = j.dir.join("client");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if id.join("ca.pem").exists() {
            let read = |n: &str| std::fs::read_to_string(id.join(n));
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read("ca.pem")?))
                .identity(Identity::from_pem(read("client.pem")?, read("client.key")?))
                .domain_name("localhost");
            let ep = Endpoint::from_shared(j.addr.clone())?.tls_config(tls)?;
            if let Ok(ch) = ep.connect().await {
                return Ok(JobServiceClient::new(ch).max_decoding_message_size(64 << 20));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "jobd did not come up; see {}",
                j.dir.join("jobd.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sh(script: &str) -> JobSpec {
    JobSpec {
        command: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

async fn start(c: &mut JobServiceClient<Channel>, spec: JobSpec) -> Result<Job> {
    let job = c
        .start_job(StartJobRequest { spec: Some(spec) })
        .await?
        .into_inner()
        .job
        .context("no job")?;
    if job.state == JobState::Failed as i32 {
        bail!("job failed to start: {}", job.failure_reason);
    }
    Ok(job)
}

/// Streams a job's whole output: its length, the time to the first chunk, and its stderr
/// (the last 4 KiB of it). The job's two pipes are read by its shim as they fill, so stderr
/// need not come after the stdout the job wrote before it.
async fn drain(
    c: &mut JobServiceClient<Channel>,
    id: &str,
) -> Result<(u64, Option<Duration>, Vec<u8>)> {
    let t = Instant::now();
    let mut s = c
        .stream_output(StreamOutputRequest {
            job_id: id.into(),
            offset: 0,
            no_follow: false,
        })
        .await?
        .into_inner();
    let mut n = 0;
    let mut first = None;
    let mut stderr = Vec::new();
    while let Some(ch) = s.message().await? {
        if first.is_none() {
            first = Some(t.elapsed());
        }
        n += ch.data.len() as u64;
        if ch.stream == OutputStream::Stderr as i32 {
            stderr.extend_from_slice(&ch.data);
            stderr.drain(..stderr.len().saturating_sub(4096));
        }
    }
    Ok((n, first, stderr))
}

/// The host's busy and stolen CPU time so far, in clock ticks (/proc/stat's `cpu` line): a
/// per-job CPU cost that the hypervisor's scheduling noise does not move as it moves rates.
fn host_cpu_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Ok((at(0) + at(1) + at(2) + at(5) + at(6), at(7)))
}

/// This process's CPU time so far (user and system, all threads): the benchmark's client
/// runs on the measured host, where a real client would not.
fn own_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn ticks_per_s() -> f64 {
    // SAFETY: sysconf with a constant name has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// The fan-out job: after [`FANOUT_DELAY_MS`], writes `bytes` zero bytes to stdout and then,
/// on stderr, how long the writing took as the job itself measured it (`took N us`).
fn fanout_writer(bytes: u64) -> JobSpec {
    let delay = FANOUT_DELAY_MS / 1000;
    let py = format!(
        "import sys,time\nb=bytes(100000);o=sys.stdout.buffer;t=time.monotonic()\n\
         for _ in range({}): o.write(b)\n\
         o.write(bytes({}));o.flush()\n\
         sys.stderr.write('\\ntook %d us\\n' % ((time.monotonic()-t)*1e6))",
        bytes / 100_000,
        bytes % 100_000
    );
    JobSpec {
        command: "sh".into(),
        args: vec![
            "-c".into(),
            format!("sleep {delay}; exec python3 -c \"$0\""),
            py,
        ],
        ..Default::default()
    }
}

/// The writer's own measurement from its stream's length and stderr: `(payload bytes, µs)`.
fn self_timed(n: u64, stderr: &[u8]) -> Option<(u64, u64)> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.rsplit_once("\ntook ")?.1;
    let us = line.strip_suffix(" us\n")?.parse().ok()?;
    Some((n - ("\ntook ".len() + line.len()) as u64, us))
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn wait_end(c: &mut JobServiceClient<Channel>, id: &str) -> Result<Job> {
    let mut w = c
        .watch_job(WatchJobRequest { job_id: id.into() })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(ev) = w.message().await? {
        last = ev.job;
    }
    last.context("no record")
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Before the runtime's threads exist: they inherit it.
    set_nice(args.client_nice)?;
    let group = SessionGroup::own();
    group.set(args.client_nice);
    let nice = args.fanout_client_nice;
    let fanout_clients = tokio::runtime::Builder::new_multi_thread()
        .thread_name("fan-out-client")
        .on_thread_start(move || {
            if let Err(e) = set_nice(nice) {
                eprintln!("fan-out client thread: {e}");
            }
        })
        .enable_all()
        .build()?;
    let pool = fanout_clients.handle().clone();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args, pool, group))
}

/// The benchmark's session's scheduling group (autogroup). Where the kernel groups by
/// session, a thread's nice value orders it only within its session's group, and that group
/// competes with each job's cgroup as an equal: the fan-out's clients at nice 19 would still
/// take half of a contended CPU from the job they follow. So the benchmark leads a session
/// of its own (when it is not a process group leader, as when a script or `daemon/bench.sh`
/// runs it) and gives the group the clients' nice value for the fan-out part.
struct SessionGroup {
    leads: bool,
}

impl SessionGroup {
    fn own() -> SessionGroup {
        // SAFETY: getsid, getpid and setsid take no pointers.
        let leads = unsafe { libc::getsid(0) == libc::getpid() || libc::setsid() >= 0 };
        let grouped = daemon::priority::autogroup_enabled();
        if grouped && !leads {
            eprintln!(
                "note: the benchmark shares its caller's session (it is a process group \
                 leader), so the clients' nice values order them only within that session's \
                 scheduling group, which competes with the jobs as an equal; run it from a \
                 script or under setsid"
            );
        }
        SessionGroup {
            leads: leads && grouped,
        }
    }

    /// Gives the session's group `nice` (nothing where it is not the benchmark's own).
    fn set(&self, nice: i32) {
        if self.leads {
            if let Err(e) = daemon::priority::set_session_group_nice(nice) {
                eprintln!("{e}");
            }
        }
    }
}

/// This thread's nice value (new threads and children inherit it).
fn set_nice(nice: i32) -> Result<()> {
    // SAFETY: setpriority with integer arguments; who = 0 is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        bail!("setpriority({nice}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

async fn run(args: Args, fanout_pool: tokio::runtime::Handle, group: SessionGroup) -> Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let fresh = if args.data_on_host_fs {
        None
    } else {
        Some(FreshFs::new(&args.dir)?)
    };
    let run_parent = fresh.as_ref().map_or(args.dir.clone(), |f| f.mnt.clone());
    // jobd uses a configured rootfs as it finds it: bring the kept one up to date with this
    // build's rootfs-builder first (a no-op when nothing changed), so the run measures the
    // default rootfs jobd would build today.
    daemon::rootfs::build_default_rootfs(&args.dir.join("rootfs"))?;
    let jobd = spawn(&args.jobd, &args.dir, &run_parent, args.jobd_nice)?;
    let pid = jobd.child.id();
    let mut c = connect(&jobd.target()).await?;
    let jobs_dir = jobd.dir.path().join("data/jobs");
    let (fs, create_us) = fs_create_cost(&jobs_dir)?;
    println!(
        "jobd {} pid {pid}, RSS at start {} KiB; data directory on {fs}, {create_us} µs to create a file",
        args.jobd.display(),
        rss_kib(pid, "VmRSS")
    );

    // 1. StartJob -> first output byte, sequential.
    let warm = start(&mut c, sh("echo warm")).await?;
    drain(&mut c, &warm.id).await?;
    let echo = JobSpec {
        command: "echo".into(),
        args: vec!["x".into()],
        ..Default::default()
    };
    let lat = first_byte_latencies(&mut c, &echo, args.latency_jobs).await?;
    print_latencies("start -> first byte", lat);
    // The same for a Python job that imports common modules: what a `python3 x.py` pays
    // before its first line runs (interpreter start, imports from the shared rootfs).
    if args.python_jobs > 0 {
        let python = JobSpec {
            command: "python3".into(),
            args: vec!["-c".into(), PYTHON_IMPORTS.into()],
            ..Default::default()
        };
        let lat = first_byte_latencies(&mut c, &python, args.python_jobs).await?;
        print_latencies(
            &format!("python3 {PYTHON_IMPORTS:?}: start -> first byte"),
            lat,
        );
    }

    // 2. Throughput: StartJob with `concurrency` in flight.
    let cpu_before = host_cpu_ticks()?;
    let client_before = own_cpu();
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tasks = Vec::new();
    for _ in 0..args.throughput_jobs {
        let permit = sem.clone().acquire_owned().await?;
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let r = start(
                &mut c,
                JobSpec {
                    command: "true".into(),
                    ..Default::default()
                },
            )
            .await;
            drop(permit);
            r
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await??.id);
    }
    let started = t.elapsed();
    for id in &ids {
        wait_end(&mut c, id).await?;
    }
    let ended = t.elapsed();
    let (busy, stolen) = host_cpu_ticks()?;
    let client = own_cpu().saturating_sub(client_before);
    let per_job_ms = |ticks: u64| ticks as f64 * 1000.0 / ticks_per_s() / ids.len() as f64;
    println!(
        "throughput ({} jobs, {} concurrent): {:.0} starts/s, {:.0} jobs/s to completion; \
         host CPU {:.1} ms per job (every process; {:.1} ms of it this client's, \
         {:.1} ms more stolen by the hypervisor)",
        ids.len(),
        args.concurrency,
        ids.len() as f64 / started.as_secs_f64(),
        ids.len() as f64 / ended.as_secs_f64(),
        per_job_ms(busy - cpu_before.0),
        client.as_secs_f64() * 1000.0 / ids.len() as f64,
        per_job_ms(stolen - cpu_before.1),
    );

    println!(
        "after: {} µs to create a file in the data directory",
        fs_create_cost(&jobs_dir)?.1
    );
    let load_jobs = args
        .load_jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from));
    if load_jobs > 0 {
        api_under_load(&mut c, load_jobs, args.load_calls).await?;
    }
    if args.fanout_clients > 0 {
        group.set(args.fanout_client_nice);
        let done = fan_out(&args, &jobd.target(), &mut c, pid, &fanout_pool, &jobs_dir).await;
        group.set(args.client_nice);
        done?;
    }
    if args.running_jobs > 0 {
        many_running(&args, &mut c, pid).await?;
    }
    Ok(())
}

/// Part 3, fan-out: one job's output streamed by many clients at once, in rounds of the job
/// alone (one stream) and then with every client; the ratios printed are the rounds' medians.
async fn fan_out(
    args: &Args,
    jobd: &Target,
    c: &mut JobServiceClient<Channel>,
    pid: u32,
    pool: &tokio::runtime::Handle,
    jobs_dir: &Path,
) -> Result<()> {
    // The clients' channels live on the pool's (niced) threads: a channel's connection task
    // runs on the runtime that connected it.
    let mut clients = Vec::new();
    for _ in 0..args.fanout_clients.div_ceil(100) {
        let target = jobd.clone();
        clients.push(pool.spawn(async move { connect(&target).await }).await??);
    }
    let (mut self_ratios, mut shim_ratios, mut peak_rss) = (Vec::new(), Vec::new(), 0);
    for round in 1..=args.fanout_rounds.max(1) {
        // The lone write is cheap: take the median of five, so the ratio's noise is the
        // crowded write's alone.
        let mut lone = Vec::new();
        for _ in 0..5 {
            lone.push(lone_write(c, &clients[0], pool, args.fanout_bytes, jobs_dir).await?);
        }
        lone.sort_by_key(|w| w.self_us);
        let lone_ms: Vec<String> = lone
            .iter()
            .map(|w| format!("{:.0}", w.self_us as f64 / 1000.0))
            .collect();
        let alone = lone.swap_remove(2);
        let crowd = crowded_write(args, c, &clients, pid, pool, jobs_dir).await?;
        let self_ratio = crowd.time.self_us as f64 / alone.self_us.max(1) as f64;
        let shim_ratio = crowd.time.shim_ms as f64 / alone.shim_ms.max(1) as f64;
        println!(
            "fan-out round {round}: {} clients (streams over {} TLS connections, clients at nice {}) x {} bytes: \
             {}/{} complete in {:.1} s; jobd peak RSS {} KiB",
            args.fanout_clients,
            clients.len(),
            args.fanout_client_nice,
            args.fanout_bytes,
            crowd.complete,
            args.fanout_clients,
            crowd.elapsed.as_secs_f64(),
            crowd.peak_rss_kib,
        );
        println!(
            "  the job alone (median of {} ms) vs with the clients: writing as it measured it \
             {:.0} vs {:.0} ms (ratio {self_ratio:.2}); start to end as its shim saw it {} vs {} ms \
             (ratio {shim_ratio:.2})",
            lone_ms.join(", "),
            alone.self_us as f64 / 1000.0,
            crowd.time.self_us as f64 / 1000.0,
            alone.shim_ms,
            crowd.time.shim_ms,
        );
        self_ratios.push(self_ratio);
        shim_ratios.push(shim_ratio);
        peak_rss = peak_rss.max(crowd.peak_rss_kib);
    }
    println!(
        "fan-out over {} rounds: slowdown median {:.2} as the job measured it, {:.2} by its shim's clock; \
         jobd peak RSS {peak_rss} KiB",
        self_ratios.len(),
        median(&mut self_ratios),
        median(&mut shim_ratios),
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Puts the host in the same state before every timed write: nothing dirty, and the earlier
/// jobs' output out of the page cache. Each fan-out job leaves 100 MB in the data filesystem
/// (a loop-mounted image: twice over in the cache). Without the sync, the flusher threads
/// write an earlier job's output back while a later one is timed. Without the eviction, the
/// cache grows into memory the VM never touched, and here that made writes 3-8x slower once
/// about a gigabyte was cached (30 ms, then 200-280 ms, for 100 MB written by a shell
/// pipeline; back to 30 ms after dropping the cache).
fn settle(jobs_dir: &Path) -> Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    for entry in std::fs::read_dir(jobs_dir)? {
        let Ok(file) = std::fs::File::open(entry?.path().join("output")) else {
            continue;
        };
        // Advice only: an error leaves the pages cached, which only makes the run noisier.
        let _ = nix::fcntl::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }
    Ok(())
}

/// How long one fan-out job took: by its own clock, and from start to end by its shim's.
struct WriteTime {
    self_us: u64,
    shim_ms: i64,
}

/// How long every fan-out job sleeps before it writes: the crowded one so that all its streams
/// are open at its first byte, the lone ones so that they start writing from the same state
/// (after a second's sleep, a 100 MB write took 20-30% longer here than straight away).
const FANOUT_DELAY_MS: i64 = 1000;

/// The fan-out job with a single stream reading it.
async fn lone_write(
    c: &mut JobServiceClient<Channel>,
    reader: &JobServiceClient<Channel>,
    pool: &tokio::runtime::Handle,
    bytes: u64,
    jobs_dir: &Path,
) -> Result<WriteTime> {
    settle(jobs_dir)?;
    let job = start(c, fanout_writer(bytes)).await?;
    // Read by a fan-out client, at the fan-out clients' priority: a reader at the job's own
    // priority decrypts beside the job and made the lone writes 15-20% slower than the
    // crowded one with a single client.
    let (mut r, id) = (reader.clone(), job.id.clone());
    let (n, _, tail) = pool
        .spawn(async move { drain(&mut r, &id).await })
        .await??;
    let rec = wait_end(c, &job.id).await?;
    let Some((payload, self_us)) = self_timed(n, &tail) else {
        bail!("the lone stream ended without the writer's timing on stderr: {tail:?}");
    };
    if payload != bytes {
        bail!("lone stream got {payload} bytes, expected {bytes}");
    }
    Ok(WriteTime {
        self_us,
        shim_ms: shim_write_ms(&rec),
    })
}

/// A fan-out job's run time by its shim's clock, without the sleep before it writes.
fn shim_write_ms(rec: &Job) -> i64 {
    (rec.ended_at_ms - rec.started_at_ms - FANOUT_DELAY_MS).max(1)
}

/// The fan-out job with every client: its times, and what the clients and jobd went through.
struct Crowd {
    time: WriteTime,
    complete: u32,
    elapsed: Duration,
    peak_rss_kib: u64,
}

/// The fan-out job with every client streaming it from its start (the job waits a second
/// before writing, so all streams are open when the first byte comes).
async fn crowded_write(
    args: &Args,
    c: &mut JobServiceClient<Channel>,
    clients: &[JobServiceClient<Channel>],
    pid: u32,
    pool: &tokio::runtime::Handle,
    jobs_dir: &Path,
) -> Result<Crowd> {
    settle(jobs_dir)?;
    let job = start(c, fanout_writer(args.fanout_bytes)).await?;
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid, "VmRSS"), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let t = Instant::now();
    let tasks: Vec<_> = (0..args.fanout_clients)
        .map(|i| {
            let mut c = clients[i / 100].clone();
            let id = job.id.clone();
            pool.spawn(async move { drain(&mut c, &id).await })
        })
        .collect();
    let (mut complete, mut self_us) = (0, None);
    for t in tasks {
        let (n, _, tail) = t.await??;
        if let Some((payload, us)) = self_timed(n, &tail) {
            complete += u32::from(payload == args.fanout_bytes);
            self_us = Some(us);
        }
    }
    let elapsed = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    let rec = wait_end(c, &job.id).await?;
    Ok(Crowd {
        time: WriteTime {
            self_us: self_us.context("no stream carried the writer's timing")?,
            shim_ms: shim_write_ms(&rec),
        },
        complete,
        elapsed,
        peak_rss_kib: peak.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// 3a. The API while jobs keep every CPU busy: GetJob and ListJobs latencies from a client
/// that calls every 10 ms (as a person or a dashboard would), so each call wakes an idle jobd
/// that must get a CPU from the jobs. This is what jobd's nice value costs its clients.
async fn api_under_load(
    c: &mut JobServiceClient<Channel>,
    jobs: usize,
    calls: usize,
) -> Result<()> {
    let mut burners = Vec::new();
    for _ in 0..jobs {
        let spec = JobSpec {
            limits: Some(Limits {
                cpu_millicores: 1000,
                ..Default::default()
            }),
            ..sh("while :; do :; done")
        };
        burners.push(start(c, spec).await?.id);
    }
    // Every tenth call is a ListJobs: at least one of each.
    let calls = calls.max(10);
    // Let the burners reach their full share first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut get, mut list) = (Vec::with_capacity(calls), Vec::with_capacity(calls / 10));
    for i in 0..calls {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t = Instant::now();
        if i % 10 == 9 {
            c.list_jobs(ListJobsRequest {
                page_size: 100,
                ..Default::default()
            })
            .await?;
            list.push(t.elapsed());
        } else {
            c.get_job(GetJobRequest {
                job_id: burners[i % jobs].clone(),
            })
            .await?;
            get.push(t.elapsed());
        }
    }
    for id in burners {
        c.stop_job(StopJobRequest {
            job_id: id.clone(),
            grace_period_ms: 100,
        })
        .await?;
        wait_end(c, &id).await?;
    }
    println!(
        "API with {jobs} CPU-bound jobs running: GetJob p50 {} p99 {} max {}; ListJobs p50 {} max {}",
        ms(pct(&mut get, 0.5)),
        ms(pct(&mut get, 0.99)),
        ms(pct(&mut get, 1.0)),
        ms(pct(&mut list, 0.5)),
        ms(pct(&mut list, 1.0)),
    );
    Ok(())
}

/// 4. Many running jobs: start cost, daemon RSS, ListJobs latency.
async fn many_running(args: &Args, c: &mut JobServiceClient<Channel>, pid: u32) -> Result<()> {
    let t = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..args.running_jobs {
        ids.push(
            start(
                c,
                JobSpec {
                    command: "sleep".into(),
                    args: vec!["600".into()],
                    ..Default::default()
                },
            )
            .await?
            .id,
        );
    }
    println!(
        "{} sleep jobs started in {:.1} s; jobd RSS {} KiB",
        ids.len(),
        t.elapsed().as_secs_f64(),
        rss_kib(pid, "VmRSS")
    );
    let mut lat = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        c.list_jobs(ListJobsRequest {
            states: vec![JobState::Running as i32],
            page_size: 100,
            ..Default::default()
        })
        .await?;
        lat.push(t.elapsed());
    }
    println!(
        "ListJobs (running, page 100) with {} running: p50 {}",
        ids.len(),
        ms(pct(&mut lat, 0.5))
    );
    // `sleep` is PID 1 of its namespace and ignores SIGTERM: stop all at once, short grace.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for id in ids {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.stop_job(StopJobRequest {
                job_id: id,
                grace_period_ms: 200,
            })
            .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!("stopped them in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}
