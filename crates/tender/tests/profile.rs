//! `--profile`: the tender samples a guest's call stacks and writes folded
//! stacks (or a flame graph). A guest that spins in a known function must
//! show it, under its caller; a guest whose frame pointer points anywhere
//! must not hurt the tender; the website under load must show its TLS and
//! network code; bad options are refused with one clear line.
//! `profile_process.rs` runs the same tests in process mode.

mod common;

use common::workspace;
use skiff_testnet::{Guard, require_program, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn probe() -> &'static Path {
    common::require_sandbox();
    common::guest("tests/guests/probe")
}

fn out_file(name: &str) -> PathBuf {
    let dir = workspace().join("target/profile-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let mode = if common::sandbox() == common::Sandbox::Process { "process" } else { "kvm" };
    dir.join(format!("{}-{mode}-{name}", std::process::id()))
}

/// Runs the tender with `tender_args` on `image` and `guest_args`; its
/// status and its output (standard output, then error).
fn tender(tender_args: &[&str], image: &Path, guest_args: &[&str]) -> (i32, String) {
    let out = Command::new(common::tender())
        .args(common::sandbox_args())
        .args(["--timeout", "60s"])
        .args(tender_args)
        .arg(image)
        .arg("--")
        .args(guest_args)
        .stdin(Stdio::null())
        .output()
        .expect("run skiff-tender");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// A folded profile: each stack, outermost frame first, and its count.
/// Panics on a line that is not `frame;frame count`.
fn parse_folded(text: &str) -> Vec<(Vec<String>, u64)> {
    text.lines()
        .map(|line| {
            let (stack, count) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no count in {line:?}"));
            let count: u64 = count.parse().unwrap_or_else(|_| panic!("bad count in {line:?}"));
            let frames: Vec<String> = stack.split(';').map(str::to_string).collect();
            assert!(count > 0 && frames.iter().all(|f| !f.is_empty()), "{line:?}");
            assert!(frames.len() <= skiff_tender::profile::DEPTH, "{line:?}");
            (frames, count)
        })
        .collect()
}

fn total(stacks: &[(Vec<String>, u64)], pick: impl Fn(&[String]) -> bool) -> u64 {
    stacks.iter().filter(|(f, _)| pick(f)).map(|(_, c)| c).sum()
}

/// Runs the probe's `profile-spin` for `ms` with `--profile` into `file`.
fn profile_spin(file: &Path, ms: u64) -> String {
    let ms = ms.to_string();
    let (status, out) = tender(&["--profile", file.to_str().unwrap(), "--stats"], probe(), &["profile-spin", &ms]);
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("profile of ") && out.contains(&format!("samples written to {}", file.display())), "{out}");
    out
}

#[test]
fn a_spinning_guest_shows_its_hot_function_under_its_caller() {
    let file = out_file("spin.folded");
    let out = profile_spin(&file, 800);
    let stacks = parse_folded(&std::fs::read_to_string(&file).unwrap());
    let all = total(&stacks, |_| true);
    let hot_at = |f: &[String]| f.iter().position(|n| n.ends_with("profile_hot_loop"));
    let hot = total(&stacks, |f| hot_at(f).is_some());
    let under_caller = total(&stacks, |f| hot_at(f).is_some_and(|i| i > 0 && f[i - 1].ends_with("profile_caller")));
    let halted = total(&stacks, |f| f == ["[halted]"]);
    let guest = total(&stacks, |f| !f[0].starts_with('['));
    eprintln!("{all} samples: {hot} in the hot loop ({under_caller} under its caller), {halted} halted\n{out}");
    // 800 ms busy and 400 ms asleep at 997 Hz: about 1,200 samples, fewer
    // on a loaded machine.
    assert!(all >= 200, "{all} samples");
    assert!(hot * 10 >= guest * 8, "the hot loop has {hot} of {guest} guest samples");
    assert!(under_caller * 10 >= hot * 9, "{under_caller} of {hot} hot samples show profile_caller above");
    assert!(halted > 0, "no [halted] sample while the guest slept");
    // The chain goes on past the caller, into the service's main.
    assert!(stacks.iter().any(|(f, _)| hot_at(f).is_some_and(|i| i >= 2)), "no frames above the caller");
    // Under KVM each guest sample is an interruption counted as such.
    if common::sandbox() == common::Sandbox::Kvm {
        assert!(out.contains("profile "), "{out}");
    }
}

#[test]
fn a_corrupt_frame_chain_ends_the_stack_not_the_tender() {
    let file = out_file("corrupt.folded");
    let (status, out) =
        tender(&["--profile", file.to_str().unwrap(), "--profile-hz", "2000"], probe(), &["profile-corrupt", "600"]);
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("profile corrupt "), "{out}");
    let stacks = parse_folded(&std::fs::read_to_string(&file).unwrap());
    let all = total(&stacks, |_| true);
    let corrupt = total(&stacks, |f| f.last().is_some_and(|n| n.ends_with("profile_corrupt")));
    eprintln!("{all} samples, {corrupt} in profile_corrupt");
    assert!(all >= 100, "{all} samples");
    assert!(corrupt * 2 >= all, "{corrupt} of {all} samples in the function with the bad frame pointer");
}

#[test]
fn an_svg_profile_is_a_valid_flame_graph() {
    let file = out_file("spin.svg");
    profile_spin(&file, 300);
    let svg = std::fs::read_to_string(&file).unwrap();
    assert!(svg.starts_with("<?xml"), "{}", &svg[..svg.len().min(200)]);
    let mut reader = quick_xml::Reader::from_str(&svg);
    let (mut depth, mut root, mut frames) = (0i32, None, 0);
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(e)) => {
                depth += 1;
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                root.get_or_insert(name.clone());
                frames += usize::from(name == "g");
            }
            Ok(quick_xml::events::Event::End(_)) => depth -= 1,
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("not well-formed XML at {}: {e}", reader.buffer_position()),
        }
    }
    assert_eq!(root.as_deref(), Some("svg"));
    assert_eq!(depth, 0, "unbalanced elements");
    assert!(frames >= 3, "{frames} frame groups");
    assert!(svg.contains("profile_hot_loop"), "the hot function is not in the graph");
}

#[test]
fn bad_profile_options_are_refused_with_one_clear_line() {
    let image = probe();
    let (status, out) = tender(&["--profile", "x.folded", "--profile-hz", "0"], image, &["hello"]);
    assert_eq!(status, 124, "{out}");
    assert!(out.contains("\"0\" is not a whole number from 1 to 10000"), "{out}");
    let (status, out) = tender(&["--profile-hz", "100"], image, &["hello"]);
    assert_eq!(status, 124, "--profile-hz without --profile: {out}");
    let missing = workspace().join("target/profile-tests/no-such-dir/p.folded");
    let (status, out) = tender(&["--profile", missing.to_str().unwrap()], image, &["hello"]);
    assert_eq!(status, 125, "{out}");
    let line = format!("cannot write the profile to {}: No such file or directory", missing.display());
    assert!(out.contains(&line), "{out}");
    assert!(!out.contains("probe says hello"), "the guest ran: {out}");
}

#[test]
fn the_website_under_load_shows_its_tls_and_network_code() {
    common::require_sandbox();
    require_program("curl", "curl");
    let image = common::guest("examples/static-website");
    let file = out_file("website.folded");
    let console = out_file("website.out");
    let log = std::fs::File::create(&console).unwrap();
    let child = Command::new(common::tender())
        .args(common::sandbox_args())
        .args(["--net", "service=user", "--publish", "0:443", "--timeout", "120s", "--stats"])
        // Five times the default rate: the short load below gives the
        // default rate about ten samples each in rustls and the network
        // code, in process mode, so none at all was possible.
        .args(["--profile", file.to_str().unwrap(), "--profile-hz", "4999"])
        .arg(image)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the tender");
    let mut tender = Guard(child);
    let output = || std::fs::read_to_string(&console).unwrap_or_default();
    let line = wait_for(Duration::from_secs(30), || {
        output().lines().find(|l| l.contains("/tcp -> guest port 443")).map(str::to_string)
    })
    .unwrap_or_else(|| panic!("the website did not publish its port:\n{}", output()));
    let addr = line.split_whitespace().nth(1).and_then(|a| a.split('/').next()).expect("address").to_string();
    wait_for(Duration::from_secs(30), || output().contains("static-website: ").then_some(()))
        .unwrap_or_else(|| panic!("the website did not start:\n{}", output()));
    // A short load: 4 clients, each making 15 connections of 4 requests.
    let url = format!("https://{addr}/");
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                for _ in 0..15 {
                    let out = Command::new("curl")
                        .args(["-sk", "--max-time", "10", "-w", "%{http_code} "])
                        .args((0..4).flat_map(|_| ["-o", "/dev/null", &url]))
                        .output()
                        .expect("run curl");
                    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 200 200 200 ");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("every request answered");
    }
    // SIGTERM: the website ends cleanly and the profile is written.
    // SAFETY: signals our own child, still running (the guard holds it).
    unsafe { libc::kill(tender.0.id() as i32, libc::SIGTERM) };
    let status = wait_for(Duration::from_secs(20), || tender.0.try_wait().ok().flatten())
        .unwrap_or_else(|| panic!("the tender did not end:\n{}", output()));
    let out = output();
    assert!(status.success(), "{status:?}\n{out}");
    assert!(out.contains("samples written to"), "{out}");
    let stacks = parse_folded(&std::fs::read_to_string(&file).unwrap());
    let all = total(&stacks, |_| true);
    let tls = total(&stacks, |f| f.iter().any(|n| n.contains("rustls::")));
    let net = total(&stacks, |f| f.iter().any(|n| n.contains("skiff_net::") || n.contains("smoltcp::")));
    let halted = total(&stacks, |f| f == ["[halted]"]);
    eprintln!("{all} samples: {tls} in rustls, {net} in skiff-net or smoltcp, {halted} halted\n{out}");
    assert!(tls > 0, "no rustls frame in {all} samples");
    assert!(net > 0, "no skiff-net or smoltcp frame in {all} samples");
    assert!(halted > 0, "no [halted] sample");
}
