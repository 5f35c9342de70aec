//! skiff-oci driven directly, as an engine drives it: create, state,
//! start, kill, delete on a bundle the test writes, and the refusals of
//! bad bundles and unknown containers, with the runtime's JSON log.
//! The test process is a child subreaper, as conmon and containerd's
//! shim are, so it reaps the container's process and sees its status.
//!
//! Needs root and `/dev/kvm`.

mod common;

use common::{require, run, runtime, scratch};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A bundle in `dir` with hello as its image and `args` for it.
fn bundle(dir: &Path, args: &[&str], extra: &str) -> PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(b.join("rootfs/skiff")).unwrap();
    std::fs::copy(common::guest("examples/hello"), b.join("rootfs/skiff/image")).unwrap();
    let mut all = vec!["/skiff/image"];
    all.extend_from_slice(args);
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "args": all, "user": { "uid": 0, "gid": 0 } },
        "root": { "path": "rootfs" },
        "hostname": "skiffy",
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}],
            "cgroupsPath": format!("/skiff-oci-test/{}", std::process::id()),
        },
    });
    let mut text = config.to_string();
    if !extra.is_empty() {
        text = text.replacen('{', &format!("{{{extra},"), 1);
    }
    std::fs::write(b.join("config.json"), text).unwrap();
    b
}

fn oci(root: &Path, args: &[&str]) -> common::Ran {
    run(Command::new(runtime()).arg("--root").arg(root).args(args), Duration::from_secs(30))
}

fn status_of(root: &Path, id: &str) -> serde_json::Value {
    let r = oci(root, &["state", id]);
    assert_eq!(r.status, 0, "{r:?}");
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("state is not JSON ({e}): {r:?}"))
}

#[test]
fn create_start_kill_delete_as_an_engine_does() {
    require(&[]);
    nix::sys::prctl::set_child_subreaper(true).expect("become a subreaper");
    let dir = scratch("runtime-lifecycle");
    let root = dir.join("state");
    let b = bundle(&dir, &["--sleep-ms", "600000"], "");
    let id = "lifecycle";
    let out = dir.join("out.log");
    // The container's process keeps create's standard streams: a file,
    // as conmon's pipes.
    let file = std::fs::File::create(&out).unwrap();
    let status = Command::new(runtime())
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle", b.to_str().unwrap(), "--pid-file", dir.join("pid").to_str().unwrap(), id])
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    assert!(status.success(), "create: {}", std::fs::read_to_string(&out).unwrap());
    let pid: i32 = std::fs::read_to_string(dir.join("pid")).unwrap().parse().unwrap();
    let state = status_of(&root, id);
    assert_eq!(state["status"], "created");
    assert_eq!(state["pid"], pid);
    assert_eq!(state["bundle"], b.to_str().unwrap());
    // Created: the process waits, the guest has not booted.
    std::thread::sleep(Duration::from_millis(100));
    assert!(!std::fs::read_to_string(&out).unwrap().contains("Hello"));
    let r = oci(&root, &["create", "--bundle", b.to_str().unwrap(), id]);
    assert!(r.stderr.contains("container lifecycle already exists"), "{r:?}");

    let r = oci(&root, &["start", id]);
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(status_of(&root, id)["status"], "running");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&out).unwrap().contains("Hello from Skiff!") {
        assert!(Instant::now() < deadline, "no greeting: {}", std::fs::read_to_string(&out).unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = oci(&root, &["start", id]);
    assert!(r.stderr.contains("container lifecycle is running: only a created container starts"), "{r:?}");
    let r = oci(&root, &["delete", id]);
    assert!(r.stderr.contains("is running: stop it first, or delete --force"), "{r:?}");

    // SIGTERM: the tender stops the guest cleanly, status 0.
    let r = oci(&root, &["kill", id, "TERM"]);
    assert_eq!(r.status, 0, "{r:?}");
    let waited = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).expect("reap the container");
    assert_eq!(waited, nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 0));
    let state = status_of(&root, id);
    assert_eq!(state["status"], "stopped");
    assert_eq!(state["pid"], 0);
    let r = oci(&root, &["kill", id, "KILL"]);
    assert!(r.stderr.contains("is stopped: no process to signal"), "{r:?}");
    let r = oci(&root, &["delete", id]);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(!root.join(id).exists());
    let cgroup = format!("/sys/fs/cgroup/memory/skiff-oci-test/{}", std::process::id());
    assert!(!Path::new(&cgroup).exists(), "{cgroup} is left");
    let _ = std::fs::remove_dir(Path::new(&cgroup).parent().unwrap());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_bundles_and_unknown_containers_get_one_clear_line_and_a_json_log() {
    require(&[]);
    let dir = scratch("runtime-bad");
    let root = dir.join("state");
    let log = dir.join("log.json");
    let create = |b: &Path, id: &str| {
        let mut c = Command::new(runtime());
        c.arg("--root").arg(&root).arg("--log").arg(&log).args(["--log-format", "json", "create", "--bundle"]);
        run(c.arg(b).arg(id), Duration::from_secs(30))
    };
    let last_logged = || {
        let text = std::fs::read_to_string(&log).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(line["level"], "error");
        line["msg"].as_str().unwrap().to_string()
    };

    let b = bundle(&dir, &[], "");
    std::fs::write(b.join("config.json"), r#"{"process": {"args": ["/skiff/image"]}}"#).unwrap();
    let r = create(&b, "noroot");
    assert_eq!(r.status, 1, "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(r.stderr.starts_with("skiff-oci: the bundle "), "{r:?}");
    assert!(r.stderr.contains("has no root file system"), "{r:?}");
    assert!(last_logged().contains("has no root file system"));
    assert!(!root.join("noroot").exists(), "a refused create left state");

    std::fs::write(b.join("config.json"), "{\"root\": ").unwrap();
    let r = create(&b, "badjson");
    assert!(r.stderr.contains("is not a valid OCI runtime configuration"), "{r:?}");

    let b = bundle(&dir, &[], r#""annotations": {"org.skiff.mem": "a lot"}"#);
    let r = create(&b, "badmem");
    assert!(r.stderr.contains("annotation org.skiff.mem=\"a lot\""), "{r:?}");
    assert!(last_logged().contains("org.skiff.mem"));

    for args in [&["state", "nope"][..], &["start", "nope"], &["kill", "nope"], &["delete", "nope"]] {
        let r = oci(&root, args);
        assert_eq!(r.status, 1, "{args:?}: {r:?}");
        assert_eq!(r.stderr.trim(), "skiff-oci: container nope does not exist", "{args:?}");
    }
    assert_eq!(oci(&root, &["delete", "--force", "nope"]).status, 0, "delete --force of nothing is done");
    let r = oci(&root, &["state", "../etc"]);
    assert!(r.stderr.contains("is not a valid container ID"), "{r:?}");
    let r = oci(&root, &["kill", "nope", "LOUD"]);
    assert!(r.stderr.contains("container nope does not exist"), "{r:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn version_and_features_answer_as_runc_does() {
    let r = run(Command::new(runtime()).arg("--version"), Duration::from_secs(10));
    assert_eq!(r.status, 0);
    assert!(r.stdout.starts_with("skiff-oci "), "{r:?}");
    assert!(r.stdout.contains("spec: 1.0.2"), "{r:?}");
    let r = run(
        Command::new(runtime()).args(["--root", "/nonexistent", "--systemd-cgroup", "features"]),
        Duration::from_secs(10),
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["linux"]["cgroup"]["v1"], true);
}

#[test]
fn a_pods_sandbox_container_is_run_by_runc_through_every_command() {
    require(&["runc", "gcc"]);
    nix::sys::prctl::set_child_subreaper(true).expect("become a subreaper");
    let dir = scratch("runtime-sandbox");
    let root = dir.join("state");
    // A pause program, as Kubernetes' sandbox image holds: a static Linux
    // executable that waits for a signal.
    let b = dir.join("bundle");
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    std::fs::write(dir.join("pause.c"), "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n").unwrap();
    let gcc = run(
        Command::new("gcc").args(["-static", "-O2", "-o"]).arg(b.join("rootfs/pause")).arg(dir.join("pause.c")),
        Duration::from_secs(60),
    );
    assert_eq!(gcc.status, 0, "gcc -static: {gcc:?}");
    let spec = run(Command::new("runc").args(["spec", "--bundle", b.to_str().unwrap()]), Duration::from_secs(10));
    assert_eq!(spec.status, 0, "runc spec: {spec:?}");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("config.json")).unwrap()).unwrap();
    config["process"]["args"] = serde_json::json!(["/pause"]);
    config["process"]["terminal"] = false.into();
    config["annotations"] = serde_json::json!({"io.kubernetes.cri.container-type": "sandbox"});
    config["linux"]["cgroupsPath"] = format!("/skiff-oci-test/sandbox-{}", std::process::id()).into();
    std::fs::write(b.join("config.json"), config.to_string()).unwrap();

    let id = "pod-sandbox";
    let pid_file = dir.join("pid");
    // runc's container process keeps create's standard streams: a file,
    // as conmon's pipes (a pipe here would stay open).
    let out = dir.join("out.log");
    let file = std::fs::File::create(&out).unwrap();
    let status = Command::new(runtime())
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle", b.to_str().unwrap(), "--pid-file", pid_file.to_str().unwrap(), id])
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    assert!(status.success(), "create: {}", std::fs::read_to_string(&out).unwrap());
    // runc holds it, under skiff-oci's root; skiff-oci has no state of it.
    assert!(root.join(".runc").join(id).join("state.json").is_file());
    assert!(!root.join(id).exists());
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert_eq!(status_of(&root, id)["status"], "created");
    let r = oci(&root, &["start", id]);
    assert_eq!(r.status, 0, "{r:?}");
    let state = status_of(&root, id);
    assert_eq!(state["status"], "running");
    assert_eq!(state["pid"], pid);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe.ends_with("pause"), "{exe:?}");
    let r = oci(&root, &["kill", id, "KILL"]);
    assert_eq!(r.status, 0, "{r:?}");
    let waited = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).expect("reap the sandbox");
    assert!(matches!(waited, nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::SIGKILL, _)), "{waited:?}");
    assert_eq!(status_of(&root, id)["status"], "stopped");
    let r = oci(&root, &["delete", id]);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(!root.join(".runc").join(id).exists());
    // Back to skiff-oci's own answer for what neither holds.
    let r = oci(&root, &["state", id]);
    assert_eq!(r.stderr.trim(), format!("skiff-oci: container {id} does not exist"));
    for parent in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(parent.path().join("skiff-oci-test"));
    }
    let _ = std::fs::remove_dir_all(dir);
}
