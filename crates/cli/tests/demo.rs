//! The demo survives a hostile crowd: `skiff run examples/static-website
//! --publish 0:443`, as `scripts/demo` starts it, while ab (2,000
//! requests, 50 at once, no keep-alive), h2load (3,000 requests over 300
//! connections, HTTP/1.1) and testssl.sh (protocols and server defaults)
//! run against it together. No request may fail (the user network relays
//! 256 connections at once and queues 128 more in its listen backlog, so
//! 300 at once are all served), the demo must still serve the site
//! afterwards, and the tender must not have hit its system-call filter.
//!
//! Needs `/dev/kvm`, ab (apache2-utils), h2load (nghttp2-client), curl and
//! testssl.sh (`scripts/setup` installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

fn require(program: &str, package: &str) {
    assert!(available(program), "{program} is missing: install {package} (scripts/setup does)");
}

fn available(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The demo in the background, ended when dropped (also when the test
/// fails).
struct Demo {
    child: Child,
    log: PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts the demo the way `scripts/demo` does, on a port of the host's
/// choosing; returns it with its published address.
fn start_demo() -> (Demo, String) {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!("this test boots the demo and needs read-write access to /dev/kvm ({e})");
    }
    let dir = workspace().join("target/cli-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("demo-under-load.out");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .arg("run")
        .arg(workspace().join("examples/static-website"))
        .args(["-q", "--target-dir"])
        .arg(workspace().join("target/guest"))
        .args(["--publish", "0:443", "--timeout", "600s"])
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("start skiff run");
    let demo = Demo { child, log };
    let start = Instant::now();
    loop {
        let text = demo.output();
        if text.contains("static-website:")
            && let Some(line) = text.lines().find(|l| l.contains("/tcp -> guest port 443"))
        {
            let addr = line.split_whitespace().nth(1).unwrap().trim_end_matches("/tcp").to_string();
            return (demo, addr);
        }
        // The first build compiles the TLS stack.
        assert!(start.elapsed() < Duration::from_secs(600), "the demo did not come up:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a load tool under `timeout`, so that a hung run ends.
fn tool(program: &str, args: &[&str], limit_secs: u32) -> std::thread::JoinHandle<Output> {
    let mut command = Command::new("timeout");
    command.args(["-k", "5", &limit_secs.to_string(), program]).args(args).stdin(Stdio::null());
    let name = program.to_string();
    std::thread::spawn(move || command.output().unwrap_or_else(|e| panic!("run {name}: {e}")))
}

/// The number after `label` on the line that starts with it.
fn figure(text: &str, label: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
    line.trim_start()[label.len()..].split_whitespace().next()?.parse().ok()
}

/// h2load's summary: (succeeded, failed, errored, timed out).
fn h2load_counts(text: &str) -> Option<(u64, u64, u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("requests: "))?;
    let n = |what: &str| -> Option<u64> {
        let words: Vec<&str> = line.split([',', ' ']).filter(|w| !w.is_empty()).collect();
        let i = words.iter().position(|w| *w == what)?;
        words.get(i.checked_sub(1)?)?.parse().ok()
    };
    Some((n("succeeded")?, n("failed")?, n("errored")?, n("timeout")?))
}

#[test]
fn the_demo_survives_ab_h2load_and_testssl_together() {
    require("ab", "apache2-utils");
    require("h2load", "nghttp2-client");
    require("curl", "curl");
    require("testssl", "testssl.sh");
    let (mut demo, addr) = start_demo();
    let url = format!("https://{addr}/");

    let started = Instant::now();
    // -r: count a failed receive instead of stopping at it.
    let ab = tool("ab", &["-r", "-n", "2000", "-c", "50", "-s", "20", &url], 90);
    let h2load = tool("h2load", &["--h1", "-n", "3000", "-c", "300", "--connection-inactivity-timeout=20", &url], 90);
    // Protocols and server defaults: about 20 s.
    let testssl_args = ["--quiet", "--color", "0", "--warnings", "off", "--connect-timeout", "10"];
    let testssl =
        tool("testssl", &[&testssl_args[..], &["--openssl-timeout", "10", "--fast", "-p", "-S", &addr]].concat(), 90);
    let ab = ab.join().expect("ab");
    let h2load = h2load.join().expect("h2load");
    let testssl = testssl.join().expect("testssl");
    let took = started.elapsed();

    // Still serving, and the same page.
    let page = Command::new("curl").args(["-sS", "-k", "--max-time", "10", &url]).output().expect("run curl");
    let alive = demo.child.try_wait().expect("wait").is_none();
    let log = demo.output();

    let ab_text = String::from_utf8_lossy(&ab.stdout).to_string() + &String::from_utf8_lossy(&ab.stderr);
    let h2_text = String::from_utf8_lossy(&h2load.stdout).to_string() + &String::from_utf8_lossy(&h2load.stderr);
    eprintln!("ab, h2load and testssl together took {took:?}");
    assert!(alive, "the demo died under load:\n{log}");
    assert!(!log.contains("blocked system call"), "{log}");
    assert!(
        page.status.success()
            && page.stdout == std::fs::read(workspace().join("examples/static-website/site/index.html")).unwrap(),
        "the demo no longer serves its page after the load: {}\n{log}",
        String::from_utf8_lossy(&page.stderr)
    );

    let complete = figure(&ab_text, "Complete requests:");
    let failed = figure(&ab_text, "Failed requests:");
    assert!(
        complete == Some(2000) && failed == Some(0),
        "ab: {complete:?} complete, {failed:?} failed:\n{}",
        ab_text.lines().filter(|l| !l.contains("SSL routines")).take(40).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(h2load_counts(&h2_text), Some((3000, 0, 0, 0)), "h2load:\n{h2_text}");

    // testssl ran to its end against a live server (its findings are the
    // website tests' business).
    let text = String::from_utf8_lossy(&testssl.stdout);
    assert!(text.contains("Done"), "testssl did not finish:\n{text}");
    assert!(text.contains("TLS 1.3"), "testssl saw no TLS 1.3:\n{text}");
}

#[test]
fn the_load_tools_summaries_are_read() {
    let h2 = "finished in 2.12s\nrequests: 3000 total, 1950 started, 1950 done, 1950 succeeded, 1050 failed, \
              1050 errored, 0 timeout\n";
    assert_eq!(h2load_counts(h2), Some((1950, 1050, 1050, 0)));
    let ab = "Concurrency Level:      50\nComplete requests:      2000\nFailed requests:        3\n";
    assert_eq!(figure(ab, "Complete requests:"), Some(2000));
    assert_eq!(figure(ab, "Failed requests:"), Some(3));
    assert_eq!(figure("Total of 159 requests completed\n", "Complete requests:"), None);
}
