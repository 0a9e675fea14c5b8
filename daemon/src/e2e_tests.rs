//! End-to-end tests of the service: a real jobd (TLS 1.3 mTLS, certificates from `certs`,
//! SQLite, output store) on 127.0.0.1, driven through the generated gRPC client. Jobs run through
//! the unisolated test executor; the runtime-backed tests live in `runner`.

use std::sync::Arc;
use std::time::Duration;

use proto::job_service_client::JobServiceClient;
use proto::*;
use tonic::transport::Channel;
use tonic::Code;

use crate::certs::Purpose;
use crate::testutil::{Harness, HostExecutor};

async fn harness() -> Harness {
    Harness::start(Arc::new(HostExecutor), |_| {}).await
}

fn sh(script: &str) -> JobSpec {
    JobSpec {
        command: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

async fn start(c: &mut JobServiceClient<Channel>, spec: JobSpec) -> Result<Job, tonic::Status> {
    c.start_job(StartJobRequest { spec: Some(spec) })
        .await
        .map(|r| r.into_inner().job.expect("job"))
}

async fn get(c: &mut JobServiceClient<Channel>, id: &str) -> Result<Job, tonic::Status> {
    c.get_job(GetJobRequest { job_id: id.into() })
        .await
        .map(|r| r.into_inner().job.expect("job"))
}

async fn wait_final(c: &mut JobServiceClient<Channel>, id: &str) -> Job {
    let mut s = c
        .watch_job(WatchJobRequest { job_id: id.into() })
        .await
        .expect("watch")
        .into_inner();
    let mut last = None;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(30), s.message())
        .await
        .expect("watch timed out")
        .expect("watch stream")
    {
        last = ev.job;
    }
    let job = last.expect("at least one event");
    assert!(crate::manager::is_final(job.state), "{job:?}");
    job
}

async fn output(
    c: &mut JobServiceClient<Channel>,
    id: &str,
    offset: u64,
) -> Result<Vec<OutputChunk>, tonic::Status> {
    let mut s = c
        .stream_output(StreamOutputRequest {
            job_id: id.into(),
            offset,
            no_follow: false,
        })
        .await?
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(ch) = s.message().await? {
        chunks.push(ch);
    }
    Ok(chunks)
}

fn cat(chunks: &[OutputChunk]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.data.iter().copied()).collect()
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("expected an error").code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix_both_ways() {
    let h = harness().await;
    let mut admin = h.client("root", "admin").await;
    let mut alice = h.client("alice", "user").await;
    let mut bob = h.client("bob", "user").await;
    let mut vera = h.client("vera", "viewer").await;
    let mut nobody = h.client("eve", "").await;
    let mut odd = h.client("mallory", "superuser").await;

    // StartJob: admin and user yes; viewer, missing and unknown roles no.
    let a = start(&mut alice, sh("echo alice")).await.unwrap();
    let b = start(&mut bob, sh("echo bob")).await.unwrap();
    let r = start(&mut admin, sh("echo root")).await.unwrap();
    assert_eq!(a.owner, "alice");
    assert_eq!(
        code(start(&mut vera, sh("true")).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(start(&mut nobody, sh("true")).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(start(&mut odd, sh("true")).await),
        Code::PermissionDenied
    );
    for j in [&a, &b, &r] {
        wait_final(&mut admin, &j.id).await;
    }

    // Get/Stream/Watch/Stats: admin any, user own only (others' are NOT_FOUND), viewer any.
    for id in [&a.id, &b.id, &r.id] {
        get(&mut admin, id).await.unwrap();
        get(&mut vera, id).await.unwrap();
        assert!(!cat(&output(&mut vera, id, 0).await.unwrap()).is_empty());
        vera.get_stats(GetStatsRequest { job_id: id.clone() })
            .await
            .unwrap();
    }
    get(&mut alice, &a.id).await.unwrap();
    assert_eq!(
        cat(&output(&mut alice, &a.id, 0).await.unwrap()),
        b"alice\n"
    );
    for id in [&b.id, &r.id] {
        assert_eq!(code(get(&mut alice, id).await), Code::NotFound);
        assert_eq!(code(output(&mut alice, id, 0).await), Code::NotFound);
        assert_eq!(
            code(
                alice
                    .watch_job(WatchJobRequest { job_id: id.clone() })
                    .await
            ),
            Code::NotFound
        );
        assert_eq!(
            code(
                alice
                    .get_stats(GetStatsRequest { job_id: id.clone() })
                    .await
            ),
            Code::NotFound
        );
        assert_eq!(
            code(
                alice
                    .stop_job(StopJobRequest {
                        job_id: id.clone(),
                        grace_period_ms: 0
                    })
                    .await
            ),
            Code::NotFound
        );
    }
    // A job id that does not exist answers exactly like another user's job.
    let ghost = uuid::Uuid::new_v4().to_string();
    let not_found = alice
        .get_job(GetJobRequest {
            job_id: ghost.clone(),
        })
        .await
        .unwrap_err();
    let hidden = alice
        .get_job(GetJobRequest {
            job_id: b.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(not_found.code(), hidden.code());
    assert_eq!(
        not_found.message().replace(&ghost, "ID"),
        hidden.message().replace(&b.id, "ID")
    );

    // Stop: admin any, user own, viewer none.
    let stop = |c: &mut JobServiceClient<Channel>, id: &str| {
        let mut c = c.clone();
        let id = id.to_string();
        async move {
            c.stop_job(StopJobRequest {
                job_id: id,
                grace_period_ms: 0,
            })
            .await
        }
    };
    assert_eq!(code(stop(&mut vera, &a.id).await), Code::PermissionDenied);
    stop(&mut alice, &a.id).await.unwrap();
    stop(&mut admin, &b.id).await.unwrap();
    assert_eq!(code(stop(&mut nobody, &a.id).await), Code::PermissionDenied);
    assert_eq!(code(get(&mut nobody, &a.id).await), Code::PermissionDenied);

    // ListJobs: admin and viewer all, user own.
    let list = |c: &mut JobServiceClient<Channel>, owner: &str| {
        let mut c = c.clone();
        let owner = owner.to_string();
        async move {
            c.list_jobs(ListJobsRequest {
                owner,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().jobs)
        }
    };
    assert_eq!(list(&mut admin, "").await.unwrap().len(), 3);
    assert_eq!(list(&mut vera, "").await.unwrap().len(), 3);
    assert_eq!(list(&mut admin, "bob").await.unwrap().len(), 1);
    let mine = list(&mut alice, "").await.unwrap();
    assert_eq!(
        mine.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        [a.id.as_str()]
    );
    assert!(list(&mut alice, "bob").await.unwrap().is_empty());
    assert_eq!(code(list(&mut nobody, "").await), Code::PermissionDenied);
    assert_eq!(code(list(&mut odd, "").await), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_bad_clients() {
    use time::{Duration as TD, OffsetDateTime};
    let h = harness().await;
    let ca = h.ca();
    // Sanity: the right identity works.
    let good = h.identity("root", "admin");
    let mut c = h.client_with(&ca.cert_pem, Some(&good)).await.unwrap();
    c.list_jobs(ListJobsRequest::default()).await.unwrap();
    // Identities with P-384 keys, as earlier versions issued them, still work.
    let p384 = ca
        .issue_p384(&Purpose::Client {
            name: "root".into(),
            role: "admin".into(),
        })
        .unwrap();
    let mut c = h.client_with(&ca.cert_pem, Some(&p384)).await.unwrap();
    c.list_jobs(ListJobsRequest::default()).await.unwrap();

    let other_ca = crate::certs::Ca::generate("other").unwrap();
    let foreign = other_ca
        .issue(&Purpose::Client {
            name: "root".into(),
            role: "admin".into(),
        })
        .unwrap();
    let now = OffsetDateTime::now_utc();
    let client = Purpose::Client {
        name: "root".into(),
        role: "admin".into(),
    };
    let expired = ca
        .issue_valid(&client, now - TD::days(30), now - TD::days(1))
        .unwrap();
    let future = ca
        .issue_valid(&client, now + TD::days(1), now + TD::days(30))
        .unwrap();
    let server_as_client = ca
        .issue(&Purpose::Server {
            sans: vec!["localhost".into()],
        })
        .unwrap();
    let cases: [(&str, Option<&crate::certs::Identity>); 5] = [
        ("no client certificate", None),
        ("certificate from another CA", Some(&foreign)),
        ("expired certificate", Some(&expired)),
        ("not yet valid certificate", Some(&future)),
        ("server certificate used as client", Some(&server_as_client)),
    ];
    for (what, id) in cases {
        let refused = match h.client_with(&ca.cert_pem, id).await {
            Err(_) => true,
            Ok(mut c) => c.list_jobs(ListJobsRequest::default()).await.is_err(),
        };
        assert!(refused, "{what} was accepted");
    }

    // Protocol and suites, with a raw rustls client holding a valid identity.
    let tls12 = raw_handshake(&h, &good, &[&rustls::version::TLS12], None).await;
    assert!(tls12.is_err(), "TLS 1.2 was accepted");
    let aes128 = raw_handshake(
        &h,
        &good,
        &[&rustls::version::TLS13],
        Some(vec![
            rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ]),
    )
    .await;
    assert!(aes128.is_err(), "TLS13_AES_128_GCM_SHA256 was accepted");
    let ok = raw_handshake(&h, &good, &[&rustls::version::TLS13], None)
        .await
        .unwrap();
    assert!(
        ["TLS13_AES_256_GCM_SHA384", "TLS13_CHACHA20_POLY1305_SHA256"].contains(&ok.as_str()),
        "{ok}"
    );

    // And with openssl, when the host has it.
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok()
    {
        let dir = h.dir.path().join("ossl");
        crate::certs::write_identity(&dir, &ca.cert_pem, &good).unwrap();
        let run = |extra: &[&str]| {
            let mut cmd = std::process::Command::new("openssl");
            cmd.args([
                "s_client",
                "-connect",
                &h.addr().to_string(),
                "-servername",
                "localhost",
            ])
            .args(["-CAfile", dir.join("ca.pem").to_str().unwrap()])
            .args(extra)
            .stdin(std::process::Stdio::null());
            let out = cmd.output().unwrap();
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
        };
        let cert = dir.join("client.pem");
        let key = dir.join("client.key");
        let with_cert = [
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
        ];
        let t12 = run(&[&["-tls1_2"][..], &with_cert[..]].concat());
        assert!(
            !t12.contains("Cipher is ECDHE")
                && !t12.contains("Protocol  : TLSv1.2\n    Cipher    : ECDHE"),
            "{t12}"
        );
        assert!(
            t12.contains("alert")
                || t12.contains("no protocols")
                || t12.contains("Cipher is (NONE)"),
            "{t12}"
        );
        let t13 = run(&[&["-tls1_3"][..], &with_cert[..]].concat());
        assert!(t13.contains("TLSv1.3"), "{t13}");
    }
}

/// A bare TLS handshake followed by a read, returning the negotiated suite.
async fn raw_handshake(
    h: &Harness,
    id: &crate::certs::Identity,
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: Option<Vec<rustls::SupportedCipherSuite>>,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(s) = suites {
        provider.cipher_suites = s;
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(h.ca().cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<_> = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(h.addr())
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let mut s = conn
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3 client auth is judged after the client's Finished: make the server answer.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let suite = s.get_ref().1.negotiated_cipher_suite().unwrap();
    Ok(format!("{:?}", suite.suite()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_streams_get_identical_binary_output() {
    let h = harness().await;
    let mut c = h.client("root", "admin").await;
    // 4 MiB of random bytes, written in bursts while the streams follow live.
    let job = start(
        &mut c,
        sh("for i in 1 2 3 4; do head -c 1048576 /dev/urandom; sleep 0.05; done; echo oops >&2"),
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut c = c.clone();
        let id = job.id.clone();
        tasks.push(tokio::spawn(async move {
            output(&mut c, &id, 0).await.unwrap()
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.unwrap());
    }
    let done = wait_final(&mut c, &job.id).await;
    assert_eq!(done.state, JobState::Exited as i32);
    assert_eq!(done.exit_code, Some(0));
    let file = std::fs::read(h.cfg.data_dir.join("jobs").join(&job.id).join("output")).unwrap();
    assert_eq!(file.len(), 4 * 1048576 + 5);
    assert_eq!(done.output_bytes, file.len() as u64);
    for chunks in &all {
        assert_eq!(cat(chunks), file);
        let last = chunks.last().unwrap();
        assert_eq!(last.stream, OutputStream::Stderr as i32);
        assert_eq!(last.data, b"oops\n");
    }
    // After the end: a new stream gets everything, and an offset gets the tail.
    assert_eq!(cat(&output(&mut c, &job.id, 0).await.unwrap()), file);
    assert_eq!(
        cat(&output(&mut c, &job.id, 1000).await.unwrap()),
        file[1000..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_the_field() {
    let h = Harness::start(Arc::new(HostExecutor), |c| {
        c.upload_cap_bytes = 1024;
        c.max_message_bytes = 64 * 1024;
    })
    .await;
    let mut c = h.client("root", "admin").await;
    let e = start(&mut c, JobSpec::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("spec.command:"), "{}", e.message());
    let mut big = sh("true");
    big.limits = Some(Limits {
        memory_bytes: u64::MAX,
        ..Default::default()
    });
    let e = start(&mut c, big).await.unwrap_err();
    assert!(
        e.message().starts_with("spec.limits.memory_bytes:"),
        "{}",
        e.message()
    );
    let mut up = sh("true");
    up.input_tar = vec![0; 2048];
    let e = start(&mut c, up).await.unwrap_err();
    assert!(
        e.message().starts_with("spec.input_tar:"),
        "{}",
        e.message()
    );
    let mut huge = sh("true");
    huge.args.push("x".repeat(100 * 1024));
    let e = start(&mut c, huge).await.unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    let e = c
        .get_job(GetJobRequest {
            job_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("job_id:"));
    let e = c
        .get_job(GetJobRequest {
            job_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .list_jobs(ListJobsRequest {
            page_token: "zz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("page_token:"));
    // Not an executable: the job is recorded as failed with the reason.
    let j = start(
        &mut c,
        JobSpec {
            command: "/nonexistent/prog".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(j.state, JobState::Failed as i32);
    assert!(
        j.failure_reason.contains("not found"),
        "{}",
        j.failure_reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_timeout_states_and_pagination() {
    let h = harness().await;
    let mut c = h.client("root", "admin").await;
    let long = start(&mut c, sh("trap '' TERM; echo ready; sleep 30"))
        .await
        .unwrap();
    assert_eq!(long.state, JobState::Running as i32);
    // Stop only once the trap is in place.
    let mut s = c
        .stream_output(StreamOutputRequest {
            job_id: long.id.clone(),
            offset: 0,
            no_follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.message().await.unwrap().unwrap().data, b"ready\n");
    let t = std::time::Instant::now();
    let stopped = c
        .stop_job(StopJobRequest {
            job_id: long.id.clone(),
            grace_period_ms: 300,
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(stopped.state, JobState::Stopped as i32, "{stopped:?}");
    assert_eq!(
        stopped.signal,
        Some(9),
        "TERM was ignored, so KILL after the grace period"
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    let polite = start(&mut c, sh("sleep 30")).await.unwrap();
    let s = c
        .stop_job(StopJobRequest {
            job_id: polite.id.clone(),
            grace_period_ms: 5000,
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!((s.state, s.signal), (JobState::Stopped as i32, Some(15)));
    let mut timed = sh("sleep 30");
    timed.timeout_ms = 200;
    let timed = start(&mut c, timed).await.unwrap();
    let t = wait_final(&mut c, &timed.id).await;
    assert_eq!(t.state, JobState::Stopped as i32);
    assert!(t.failure_reason.contains("timeout"), "{}", t.failure_reason);
    let code3 = start(&mut c, sh("exit 3")).await.unwrap();
    let e = wait_final(&mut c, &code3.id).await;
    assert_eq!((e.state, e.exit_code), (JobState::Exited as i32, Some(3)));
    let killed = start(&mut c, sh("kill -9 $$")).await.unwrap();
    let k = wait_final(&mut c, &killed.id).await;
    assert_eq!((k.state, k.signal), (JobState::Killed as i32, Some(9)));

    // Pages of 2 over 5 jobs, then a state filter.
    let mut token = String::new();
    let mut ids = Vec::new();
    loop {
        let r = c
            .list_jobs(ListJobsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.jobs.len() <= 2);
        ids.extend(r.jobs.into_iter().map(|j| j.id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(ids.len(), 5);
    assert_eq!(ids[0], killed.id, "newest first");
    let stopped_only = c
        .list_jobs(ListJobsRequest {
            states: vec![JobState::Stopped as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(stopped_only.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_finished_jobs_and_keeps_running_ones() {
    let h = Harness::start(Arc::new(HostExecutor), |cfg| cfg.retention_secs = 1).await;
    let mut c = h.client("root", "admin").await;
    let running = start(&mut c, sh("sleep 30")).await.unwrap();
    let done = start(&mut c, sh("echo bye")).await.unwrap();
    wait_final(&mut c, &done.id).await;
    let dir_of = |id: &str| h.cfg.data_dir.join("jobs").join(id);
    assert!(dir_of(&done.id).join("output").exists());
    // Record and files go within a few periods of the retention (1 s, checked every second).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match get(&mut c, &done.id).await {
            Err(s) if s.code() == Code::NotFound => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "finished job kept past retention: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!dir_of(&done.id).exists(), "files of the deleted job left");
    // The running job, created before the deleted one, is untouched.
    let r = get(&mut c, &running.id).await.unwrap();
    assert_eq!(r.state, JobState::Running as i32);
    assert!(dir_of(&running.id).join("output").exists());
    c.stop_job(StopJobRequest {
        job_id: running.id.clone(),
        grace_period_ms: 100,
    })
    .await
    .unwrap();
    wait_final(&mut c, &running.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_finished_jobs_and_output_and_settles_stale_ones() {
    let mut h = harness().await;
    let mut c = h.client("root", "admin").await;
    let job = start(&mut c, sh("printf 'a\\0b'; sleep 0.2; echo err >&2"))
        .await
        .unwrap();
    let before = wait_final(&mut c, &job.id).await;
    let out_before = output(&mut c, &job.id, 0).await.unwrap();
    // A record a crashed daemon left as running.
    let stale = proto::Job {
        id: uuid::Uuid::new_v4().to_string(),
        owner: "root".into(),
        state: JobState::Running as i32,
        spec: Some(sh("sleep 100")),
        ..Default::default()
    };
    crate::db::Db::open(&h.cfg.data_dir.join("jobs.db"))
        .unwrap()
        .insert(&stale)
        .unwrap();
    h.restart().await;
    let mut c = h.client("root", "admin").await;
    let after = get(&mut c, &job.id).await.unwrap();
    assert_eq!(after, before);
    let out_after = output(&mut c, &job.id, 0).await.unwrap();
    assert_eq!(out_after, out_before);
    assert_eq!(cat(&out_after), b"a\0berr\n");
    let s = get(&mut c, &stale.id).await.unwrap();
    assert_eq!(s.state, JobState::Failed as i32);
    assert!(
        s.failure_reason.contains("jobd restarted"),
        "{}",
        s.failure_reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_and_stops_jobs() {
    let mut h = harness().await;
    let mut c = h.client("root", "admin").await;
    let job = start(&mut c, sh("echo started; sleep 60")).await.unwrap();
    let mut s = c
        .stream_output(StreamOutputRequest {
            job_id: job.id.clone(),
            offset: 0,
            no_follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.message().await.unwrap().unwrap().data, b"started\n");
    let running = h.running.take().unwrap();
    let t = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(20), running.shutdown())
        .await
        .expect("shutdown hung")
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    // The stream ended (cleanly or by the connection closing), never hangs.
    let end = tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("stream hung");
    assert!(!matches!(end, Ok(Some(_))));
    let db = crate::db::Db::open(&h.cfg.data_dir.join("jobs.db")).unwrap();
    let rec = db.get(&job.id).unwrap().unwrap();
    assert_eq!(rec.state, JobState::Stopped as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_config_writes_admin_identity_for_jobctl() {
    let h = harness().await;
    let client_dir = h.cfg.client_identity_dir();
    let read = |n: &str| std::fs::read_to_string(client_dir.join(n)).unwrap();
    let id = crate::certs::Identity {
        cert_pem: read("client.pem"),
        key_pem: read("client.key"),
    };
    let mut c = h.client_with(&read("ca.pem"), Some(&id)).await.unwrap();
    let j = start(&mut c, sh("true")).await.unwrap();
    assert_eq!(j.owner, "admin");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(client_dir.join("client.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
