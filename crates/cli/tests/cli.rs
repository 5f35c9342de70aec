//! Tests of the `skiff` command: `new` makes a service that builds and
//! runs, `run` boots examples, `inspect` describes images, and build
//! failures come with a useful hint. Booting needs `/dev/kvm`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

// The boot tests' helpers: guest images built once, hostile images made
// from them, and child processes measured.
#[path = "../../tender/tests/common/mod.rs"]
#[allow(dead_code)]
mod common;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

fn guest_target_dir() -> String {
    workspace().join("target/guest").to_string_lossy().into_owned()
}

fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!("these tests boot guests and need read-write access to /dev/kvm ({e})");
    }
}

struct Out {
    status: i32,
    stdout: String,
    stderr: String,
}

fn skiff(args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff")).args(args).output().expect("run skiff");
    Out {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = workspace().join("target/cli-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    dir
}

#[test]
fn a_new_service_builds_and_runs_as_it_is() {
    require_kvm();
    let dir = scratch("fresh-service");
    let d = dir.to_str().unwrap();
    let out = skiff(&["new", "fresh-service", "--path", d]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stdout.contains("created service `fresh-service`"));
    assert!(dir.join("Cargo.toml").is_file() && dir.join("src/main.rs").is_file());

    // The default template is the README's first sample (tests/docs.rs
    // checks the text): it greets its first argument and ticks three times.
    let run = skiff(&["run", d, "--target-dir", &guest_target_dir(), "-q", "--", "Ada"]);
    assert_eq!(run.status, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("hello, Ada"), "{}", run.stdout);
    assert!(run.stdout.contains("tick 2"), "{}", run.stdout);

    let again = skiff(&["new", "fresh-service", "--path", d]);
    assert_eq!(again.status, 125);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
}

#[test]
fn bad_service_names_are_refused() {
    let out = skiff(&["new", "9lives", "--path", scratch("bad-name").to_str().unwrap()]);
    assert_eq!(out.status, 125);
    assert!(out.stderr.contains("not a valid service name"), "{}", out.stderr);
}

#[test]
fn command_line_errors_are_status_124_and_run_help_lists_the_statuses() {
    for args in [&["run", "--mem", "lots", "."][..], &["no-such-command"], &["run", "--stop-grace", "soon"]] {
        let out = skiff(args);
        assert_eq!(out.status, 124, "skiff {args:?}: {}", out.stderr);
        assert!(!out.stderr.is_empty());
    }
    let help = skiff(&["run", "--help"]);
    assert_eq!(help.status, 0);
    assert!(help.stdout.contains("Exit status:") && help.stdout.contains("120  the tender made a system call"));
}

#[test]
fn run_boots_hello_and_passes_arguments() {
    require_kvm();
    let hello = workspace().join("examples/hello");
    let out = skiff(&["run", hello.to_str().unwrap(), "--target-dir", &guest_target_dir(), "-q", "--", "a", "b"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stdout.contains("Hello from Skiff!"));
    assert!(out.stdout.contains(r#"command line: ["a", "b"]"#));
}

#[test]
fn run_in_process_mode_boots_hello_without_a_vm() {
    let hello = workspace().join("examples/hello");
    let args = ["run", hello.to_str().unwrap(), "--sandbox", "process", "--target-dir", &guest_target_dir(), "-q"];
    let out = skiff(&[&args[..], &["--", "a", "b"]].concat());
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stdout.contains("Hello from Skiff!"));
    assert!(out.stdout.contains(r#"command line: ["a", "b"]"#));
}

/// What process mode is for: the demo website served on a host without
/// /dev/kvm (here /dev/null is bind-mounted over it in a private mount
/// namespace, so nothing could use KVM).
#[test]
fn the_website_serves_in_process_mode_without_dev_kvm() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test makes a mount namespace; run the suite as root");
    let site = workspace().join("examples/static-website");
    let target_dir = guest_target_dir();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind /dev/null /dev/kvm && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_skiff"))
        .args(["run", site.to_str().unwrap(), "--sandbox", "process", "-q", "--target-dir", &target_dir])
        .args(["--publish", "0:443", "--timeout", "120s"]);
    let log = workspace().join("target/cli-tests/website-process.out");
    let (running, addr) = command_until_published(cmd, &log, "static-website:", 443);
    let page = curl(&[&format!("https://{addr}/")]);
    drop(running);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(page.contains("<!DOCTYPE html>"), "{page}\n{text}");
    assert!(!text.contains("/dev/kvm"), "{text}");
}

#[test]
fn build_reports_the_image_and_inspect_describes_it() {
    let hello = workspace().join("examples/hello");
    let out = skiff(&["build", hello.to_str().unwrap(), "--target-dir", &guest_target_dir(), "-q"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stdout.contains("no system calls, no undefined symbols"), "{}", out.stdout);
    let image = workspace().join("target/guest/x86_64-unknown-linux-gnu/release/hello");
    let out = skiff(&["inspect", image.to_str().unwrap()]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let abi = format!("ABI version  {} (matches this tender)", skiff_abi::ABI_VERSION);
    for needle in [
        abi.as_str(),
        "entry        0x",
        "PVH entry    0x",
        "process entry 0x",
        "devices      none",
        "r-x supervisor",
        "rw- user stack",
        "checks       ok",
    ] {
        assert!(out.stdout.contains(needle), "inspect lacks {needle:?}:\n{}", out.stdout);
    }
    let out = skiff(&["inspect", "/nonexistent"]);
    assert_eq!(out.status, 125);
    assert!(out.stderr.contains("cannot read /nonexistent"));
}

fn broken_service(name: &str, main_rs: &str) -> PathBuf {
    let dir = scratch(name);
    let out = skiff(&["new", name, "--path", dir.to_str().unwrap()]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    std::fs::write(dir.join("src/main.rs"), main_rs).unwrap();
    dir
}

#[test]
fn a_service_without_main_gets_a_hint() {
    let dir = broken_service("no-main", "#![no_std]\n#![no_main]\nuse skiff as _;\n");
    let out = skiff(&["build", dir.to_str().unwrap(), "--target-dir", &guest_target_dir(), "-q"]);
    assert_eq!(out.status, 125, "{}", out.stdout);
    assert!(out.stderr.contains("the service has no `#[skiff::main]` function"), "{}", out.stderr);
}

#[test]
fn a_service_that_needs_std_gets_a_hint() {
    let dir = broken_service(
        "uses-std",
        "#![no_main]\nextern crate std;\n#[skiff::main]\nasync fn main() { std::println!(\"hi\"); }\n",
    );
    let out = skiff(&["build", dir.to_str().unwrap(), "--target-dir", &guest_target_dir(), "-q"]);
    assert_eq!(out.status, 125, "{}", out.stdout);
    assert!(out.stderr.contains("a dependency needs `std`"), "{}", out.stderr);
}

#[test]
fn a_service_that_calls_libc_fails_to_link_instead_of_pulling_in_glibc() {
    // The `libc` crate asks rustc to link `-lc`; the guest's empty C library
    // stand-ins turn the call into a link error, never glibc code.
    let dir = broken_service(
        "uses-libc",
        "#![no_std]\n#![no_main]\n#[skiff::main]\nasync fn main() { \
         skiff::log::info!(\"{}\", unsafe { libc::getpid() }); }\n",
    );
    let toml = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let toml =
        toml.replace("[dependencies]\n", "[dependencies]\nlibc = { version = \"0.2\", default-features = false }\n");
    std::fs::write(dir.join("Cargo.toml"), toml).unwrap();
    let out = skiff(&["build", dir.to_str().unwrap(), "--target-dir", &guest_target_dir(), "-q"]);
    assert_eq!(out.status, 125, "{}", out.stdout);
    assert!(out.stderr.contains("undefined symbol: getpid"), "{}", out.stderr);
    assert!(out.stderr.contains("needs a C library or OS function"), "{}", out.stderr);
}

/// A `skiff run` in the background, ended when dropped (also when a test
/// fails).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `skiff run ARGS` with its output in `out`, and waits until a
/// line of it contains `ready` (the guest is serving) and the tender has
/// printed the host address published for `guest_port`.
fn run_until_published(args: &[&str], out: &Path, ready: &str, guest_port: u16) -> (Running, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.args(args);
    command_until_published(cmd, out, ready, guest_port)
}

/// [`run_until_published`] for any command that ends in `skiff run`.
fn command_until_published(mut cmd: Command, out: &Path, ready: &str, guest_port: u16) -> (Running, String) {
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let file = std::fs::File::create(out).unwrap();
    let running = Running(cmd.stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap());
    let published = format!("/tcp -> guest port {guest_port}");
    let start = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        if text.contains(ready)
            && let Some(line) = text.lines().find(|l| l.contains(&published))
        {
            let addr = line.split_whitespace().nth(1).unwrap().trim_end_matches("/tcp").to_string();
            return (running, addr);
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(300), "the service did not come up:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--insecure", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl (scripts/setup installs it)");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_https_template_serves_its_api_to_curl() {
    require_kvm();
    let dir = scratch("https-template");
    let d = dir.to_str().unwrap();
    let out = skiff(&["new", "https-template", "--template", "https", "--path", d]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stdout.contains("curl -k https://localhost:8443/hello"), "{}", out.stdout);
    assert!(dir.join("build.rs").is_file());
    // The demo's lock file: the same dependency versions as the boot tests
    // build, so the shared guest target directory already has them.
    std::fs::copy(workspace().join("examples/static-website/Cargo.lock"), dir.join("Cargo.lock")).unwrap();

    let log = workspace().join("target/cli-tests/https-template.out");
    let target_dir = guest_target_dir();
    let args = ["run", d, "-q", "--target-dir", &target_dir, "--publish", "0:443", "--timeout", "120s"];
    let (running, addr) = run_until_published(&args, &log, "HTTPS on 10.0.2.15:443", 443);
    let hello = curl(&[&format!("https://{addr}/hello")]);
    let echo = curl(&["--data-binary", "ping over TLS", &format!("https://{addr}/echo")]);
    let missing = curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("https://{addr}/nothing")]);
    drop(running);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(hello, "hello\n", "{text}");
    assert_eq!(echo, "ping over TLS", "{text}");
    assert_eq!(missing, "404", "{text}");

    // An argument it does not know: one clear line, status 1.
    let image = workspace().join("target/guest/x86_64-unknown-linux-gnu/release/https-template");
    let bad = skiff(&["run", image.to_str().unwrap(), "--", "--bogus"]);
    assert_eq!(bad.status, 1, "{}\n{}", bad.stdout, bad.stderr);
    assert!(bad.stdout.contains(r#"main failed: unknown argument "--bogus""#), "{}", bad.stdout);
}

#[test]
fn run_puts_a_service_with_a_nic_on_the_user_network() {
    require_kvm();
    use std::io::{Read, Write};
    let echo = workspace().join("examples/echo");
    let out = workspace().join("target/cli-tests/run-user.out");
    let target_dir = guest_target_dir();
    let args =
        ["run", echo.to_str().unwrap(), "-q", "--target-dir", &target_dir, "--publish", "0:7", "--timeout", "60s"];
    let (running, addr) = run_until_published(&args, &out, "echo: serving", 7);
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"no root needed").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    s.read_to_string(&mut back).unwrap();
    drop(running);
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(back, "no root needed");
    assert!(text.contains("NIC \"service\" goes on the user network"), "{text}");
}

/// A 44-byte Rust (v0) symbol name whose back-references demangle to
/// about a megabyte.
const NAME_BOMB: &[u8] = b"_RYFG_FGyyEvRYFF_EvRYFFEvERLB_B_B_ERLRjB_B_B_";

#[test]
fn inspect_and_run_stay_within_budget_on_images_full_of_hostile_symbol_names() {
    // 4,000 symbols sharing the bomb once took a minute and 4 GB; 100,000
    // sharing a 1 MiB name meant reading 100 GB.
    require_kvm();
    let hello = std::fs::read(common::guest("examples/hello")).unwrap();
    let long = vec![b'x'; 1 << 20];
    for (tag, count, name) in [("name-bombs", 4000, NAME_BOMB), ("long-names", 100_000, &long[..])] {
        let path = scratch(tag);
        std::fs::write(&path, common::with_symbols(&hello, count, name)).unwrap();
        let path = path.to_str().unwrap();
        let skiff = || Command::new(env!("CARGO_BIN_EXE_skiff"));
        let inspect = common::run_measured(skiff().args(["inspect", path]));
        assert_eq!(inspect.status, 0, "{tag}: {}", inspect.output);
        assert!(inspect.output.contains(&format!("symbols      {count}\n")), "{tag}: {}", inspect.output);
        let run = common::run_measured(skiff().args(["run", path, "--timeout", "10s"]));
        assert_eq!(run.status, 0, "{tag}: {}", run.output);
        for m in [&inspect, &run] {
            assert!(m.elapsed < Duration::from_secs(2), "{tag}: took {:?}", m.elapsed);
            assert!(m.peak_rss < 64 << 20, "{tag}: peak RSS {} bytes", m.peak_rss);
        }
    }
}

#[test]
fn inspect_lists_a_bounded_number_of_findings() {
    // Every byte pair of the service's code made a `syscall`: tens of
    // thousands of findings, of which the first 32 are listed and named.
    let mut data = std::fs::read(common::guest("examples/hello")).unwrap();
    let ph = 64 + 56 * 2; // the user text segment
    let offset = u64::from_le_bytes(data[ph + 8..ph + 16].try_into().unwrap()) as usize;
    let size = u64::from_le_bytes(data[ph + 32..ph + 40].try_into().unwrap()) as usize;
    for pair in data[offset..offset + size].chunks_exact_mut(2) {
        pair.copy_from_slice(&[0x0f, 0x05]);
    }
    let path = scratch("all-syscalls");
    std::fs::write(&path, data).unwrap();
    let out = common::run_measured(Command::new(env!("CARGO_BIN_EXE_skiff")).args(["inspect", path.to_str().unwrap()]));
    assert_eq!(out.status, 1, "{}", out.output);
    assert_eq!(out.output.matches("system call instruction `syscall`").count(), skiff_build::check::MAX_FINDINGS);
    let more: u64 =
        out.output.split("and ").last().and_then(|s| s.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert_eq!(more as usize, size / 2 - skiff_build::check::MAX_FINDINGS, "{}", out.output);
    assert!(out.elapsed < Duration::from_secs(5), "took {:?}", out.elapsed);
}

#[test]
fn package_writes_the_same_archive_twice_and_refuses_an_image_of_another_abi() {
    let dir = scratch("package");
    std::fs::create_dir_all(&dir).unwrap();
    let hello = common::guest("examples/hello");
    let (a, b) = (dir.join("a.tar"), dir.join("b.tar"));
    let out = skiff(&["package", hello.to_str().unwrap(), "--tag", "demo/hello:1", "-o", a.to_str().unwrap()]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    for needle in
        ["(localhost/demo/hello:1)", "manifest     sha256:", "label        org.skiff.abi-version=", "podman run"]
    {
        assert!(out.stdout.contains(needle), "package's report lacks {needle:?}:\n{}", out.stdout);
    }
    let again = skiff(&["package", hello.to_str().unwrap(), "--tag", "demo/hello:1", "-o", b.to_str().unwrap()]);
    assert_eq!(again.status, 0, "{}", again.stderr);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "the same image gave two archives");
    // An image the tender would refuse is not packaged.
    let mut data = std::fs::read(hello).unwrap();
    let note = skiff_abi::manifest::NOTE_NAME;
    let at = data.windows(note.len()).position(|w| w == note).expect("the manifest note") + note.len();
    data[at..at + 4].copy_from_slice(&(skiff_abi::ABI_VERSION + 1).to_le_bytes());
    let old = dir.join("old-abi");
    std::fs::write(&old, data).unwrap();
    let out = skiff(&["package", old.to_str().unwrap(), "-o", dir.join("c.tar").to_str().unwrap()]);
    assert_eq!(out.status, 125, "{}", out.stderr);
    assert!(out.stderr.contains("built for Skiff ABI version"), "{}", out.stderr);
    assert!(!dir.join("c.tar").exists());
    let out = skiff(&["package", hello.to_str().unwrap(), "--tag", "Not Valid"]);
    assert!(out.stderr.contains("is not a valid image name"), "{}", out.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

/// A store image made by `skiff disk create`, filled through the library
/// (the guest's code) with `entries`.
fn disk_with(name: &str, sector_size: &str, entries: &[(&[u8], &[u8])]) -> PathBuf {
    let dir = scratch(name);
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("data.img");
    let out = skiff(&["disk", "create", image.to_str().unwrap(), "--size", "1M", "--sector-size", sector_size]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stdout.contains("256 pages of 4096 bytes"), "{}", out.stdout);
    let ss = sector_size.parse().unwrap();
    let dev = skiff_store::FileDevice::open(&image, ss, false).unwrap();
    let store = skiff_store::block_on(skiff_store::Store::open(dev, skiff_store::Options::default())).unwrap();
    skiff_store::block_on(async {
        let mut tx = store.write().await.unwrap();
        for (k, v) in entries {
            tx.put(k, v).await.unwrap();
        }
        tx.commit().await.unwrap();
        // Confirmed, as a service leaves its store when it stops.
        store.close().await.unwrap();
    });
    image
}

#[test]
fn disk_create_inspect_check_and_dump_a_store() {
    let big = vec![b'x'; 10_000];
    let image = disk_with(
        "disk-roundtrip",
        "4096",
        &[(b"user/ada", b"{\"n\":1}"), (b"user/bob\t2", b"line\nbreak"), (b"blob", &big), (b"\x00bin", b"\xff")],
    );
    let f = image.to_str().unwrap();

    let out = skiff(&["disk", "inspect", f]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    for line in [
        "format       version 1, 4096-byte pages, 4096-byte sectors",
        "keys         4",
        "size         1048576 bytes (256 pages)",
    ] {
        assert!(out.stdout.contains(line), "no {line:?} in:\n{}", out.stdout);
    }
    assert!(out.stdout.contains("generation   3 (last commit confirmed)"), "{}", out.stdout);

    let out = skiff(&["disk", "check", f]);
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(": ok: generation 3, 4 keys, depth 1"), "{}", out.stdout);

    let out = skiff(&["disk", "dump", f]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert_eq!(lines[0], "\\x00bin\t\\xff");
    assert!(lines[1].starts_with("blob\txxxx") && lines[1].len() == 5 + 10_000);
    assert_eq!(&lines[2..], ["user/ada\t{\\\"n\\\":1}", "user/bob\\t2\tline\\nbreak"]);

    let out = skiff(&["disk", "dump", f, "--prefix", "user/"]);
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    let out = skiff(&["disk", "dump", f, "--prefix", "\\x00"]);
    assert_eq!(out.stdout, "\\x00bin\t\\xff\n");
}

#[test]
fn disk_check_prints_one_line_per_problem_and_fails() {
    let entries: Vec<(Vec<u8>, Vec<u8>)> =
        (0..300u32).map(|i| (format!("key/{i:04}").into_bytes(), vec![b'v'; 200])).collect();
    let refs: Vec<(&[u8], &[u8])> = entries.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
    let image = disk_with("disk-damaged", "512", &refs);
    let f = image.to_str().unwrap();
    assert_eq!(skiff(&["disk", "check", f]).status, 0);
    // Flip a byte in two leaves (pages 2.. hold the tree; the last pages
    // written are the branch and leaves).
    let mut bytes = std::fs::read(&image).unwrap();
    let used: Vec<usize> = (2..256).filter(|p| bytes[p * 4096..p * 4096 + 4096].iter().any(|b| *b != 0)).collect();
    assert!(used.len() > 3, "{used:?}");
    for p in [used[0], used[1]] {
        bytes[p * 4096 + 100] ^= 0x20;
    }
    std::fs::write(&image, &bytes).unwrap();
    let out = skiff(&["disk", "check", f]);
    assert_eq!(out.status, 1, "{}{}", out.stdout, out.stderr);
    let problems: Vec<&str> = out.stdout.lines().filter(|l| l.contains("damaged: checksum mismatch")).collect();
    assert_eq!(problems.len(), 2, "{}", out.stdout);
    assert!(problems[0].starts_with(&format!("{f}: page ")), "{}", problems[0]);
    assert!(out.stderr.contains("2 problems"), "{}", out.stderr);
    // The rest still reads; the damaged part is an error, not data.
    let out = skiff(&["disk", "dump", f]);
    assert_eq!(out.status, 1);
    assert!(out.stderr.contains("damaged"), "{}", out.stderr);
    assert!(!out.stdout.contains("key/") || out.stdout.lines().all(|l| l.ends_with(&"v".repeat(200))));
    let out = skiff(&["disk", "inspect", f]);
    assert_eq!(out.status, 1);
    assert!(out.stdout.contains("damage       2 problems"), "{}", out.stdout);
}

#[test]
fn disk_commands_give_clear_errors_for_files_that_are_not_stores() {
    let dir = scratch("disk-errors");
    std::fs::create_dir_all(&dir).unwrap();
    let path = |n: &str| dir.join(n).to_string_lossy().into_owned();

    let garbage: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    std::fs::write(path("garbage.img"), garbage).unwrap();
    std::fs::write(path("tiny.img"), vec![0u8; 4096]).unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["disk", "check", &path("garbage.img")], "garbage.img: not a Skiff store: no Skiff store magic"),
        (&["disk", "inspect", &path("tiny.img")], "tiny.img: the device has 4096 bytes, a store needs at least 262144"),
        (&["disk", "dump", &path("missing.img")], "cannot open"),
        (
            &["disk", "create", &path("small.img"), "--size", "100K"],
            "small.img: the device has 102400 bytes, a store needs at least 262144",
        ),
        (
            &["disk", "create", &path("odd.img"), "--size", "1M", "--sector-size", "1024"],
            "sectors of 1024 bytes are not supported (512 or 4096)",
        ),
        (&["disk", "create", &path("tiny.img"), "--size", "1M"], "File exists (os error 17) (--force overwrites it)"),
        (&["disk", "create", &path("bad-size.img"), "--size", "lots"], "lots"),
    ];
    for (args, message) in cases {
        let out = skiff(args);
        assert_ne!(out.status, 0, "{args:?}");
        assert!(out.stderr.contains(message), "{args:?}: no {message:?} in {:?}", out.stderr);
        if !args.contains(&"lots") {
            assert_eq!(out.stderr.lines().count(), 1, "one clear line: {}", out.stderr);
        }
    }
    assert!(!dir.join("small.img").exists(), "a failed create leaves no file behind");

    let image = disk_with("disk-sector", "512", &[(b"k", b"v")]);
    let out = skiff(&["disk", "check", image.to_str().unwrap(), "--sector-size", "4096"]);
    assert_eq!(out.status, 2);
    assert!(
        out.stderr.contains("the store was made with 512-byte sectors, the device has 4096-byte sectors"),
        "{}",
        out.stderr
    );
}
