//! OCI hooks: each stage runs at its point with the state on stdin; failures of the early
//! stages fail `create` and leave nothing, failures of poststart/poststop only warn.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value};
use tests::{stderr, stdout, unique_id, Bundle};

/// A hook that saves its stdin (the state) as OUT/NAME.json.
fn recorder(out: &Path, name: &str) -> Value {
    json!({
        "path": "/bin/sh",
        "args": ["sh", "-c", format!("cat > {}/{name}.json", out.display())]
    })
}

#[test]
fn every_stage_runs_with_the_state_on_stdin() {
    let b = Bundle::new(&["sh", "-c", "cat /dev/shm/started-by-hook"]);
    let out = b.dir.path().join("hooks-out");
    fs::create_dir(&out).unwrap();
    // createContainer runs as the container's root user (an unprivileged host uid).
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    b.edit(|s| {
        s["hooks"] = json!({
            "prestart": [recorder(&out, "prestart")],
            "createRuntime": [recorder(&out, "createRuntime")],
            "createContainer": [recorder(&out, "createContainer")],
            "startContainer": [{
                "path": "/bin/sh",
                "args": ["sh", "-c", "echo hello-from-startContainer > /dev/shm/started-by-hook"]
            }],
            "poststart": [recorder(&out, "poststart")],
            "poststop": [recorder(&out, "poststop")]
        });
    });
    let id = unique_id("hooks");
    let result = b.run(&id);
    assert!(result.status.success(), "{}", stderr(&result));
    assert_eq!(stdout(&result).trim(), "hello-from-startContainer");
    for stage in [
        "prestart",
        "createRuntime",
        "createContainer",
        "poststart",
        "poststop",
    ] {
        let text = fs::read_to_string(out.join(format!("{stage}.json")))
            .unwrap_or_else(|e| panic!("{stage} hook did not run: {e}"));
        let state: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(state["id"], id.as_str(), "{stage}: {state}");
        assert!(
            state["pid"].as_i64().unwrap() > 0 || stage == "poststop",
            "{stage}: {state}"
        );
    }
    b.assert_clean(&id);
}

#[test]
fn a_failing_create_runtime_hook_fails_create_and_leaves_nothing() {
    let b = Bundle::new(&["sleep", "60"]);
    b.edit(|s| {
        s["hooks"] = json!({ "createRuntime": [{
            "path": "/bin/sh", "args": ["sh", "-c", "echo no-network-for-you >&2; exit 3"]
        }]});
    });
    let id = unique_id("hookfail");
    let out = b.create(&id);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("createRuntime hook /bin/sh") && err.contains("no-network-for-you"),
        "{err}"
    );
    b.assert_clean(&id);
}

#[test]
fn a_hook_past_its_timeout_is_killed_and_fails_create() {
    let b = Bundle::new(&["true"]);
    b.edit(|s| {
        s["hooks"] = json!({ "prestart": [{
            "path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1
        }]});
    });
    let id = unique_id("hooktime");
    let start = std::time::Instant::now();
    let out = b.create(&id);
    assert!(!out.status.success());
    assert!(
        start.elapsed().as_secs() < 10,
        "the timeout was not enforced"
    );
    assert!(
        stderr(&out).contains("timed out after 1s"),
        "{}",
        stderr(&out)
    );
    b.assert_clean(&id);
}

#[test]
fn failing_poststart_and_poststop_hooks_only_warn() {
    let b = Bundle::new(&["true"]);
    b.edit(|s| {
        s["hooks"] = json!({
            "poststart": [{ "path": "/bin/false" }],
            "poststop": [{ "path": "/bin/false" }]
        });
    });
    let id = unique_id("hookwarn");
    let out = b.run(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("poststart hook /bin/false"),
        "{}",
        stderr(&out)
    );
    b.assert_clean(&id);
}
