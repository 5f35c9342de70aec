//! `skiff run --vmm qemu`: the same images under QEMU through their PVH
//! entry, started by the `skiff` command. Needs `/dev/kvm` and
//! `qemu-system-x86_64` (`scripts/setup` installs it); without them these
//! tests fail with a message that says so.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../tender/tests/common/mod.rs"]
#[allow(dead_code)]
mod common;

fn require_kvm_and_qemu() {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!("these tests boot guests under QEMU/KVM and need read-write access to /dev/kvm ({e})");
    }
    if let Err(e) = Command::new("qemu-system-x86_64").arg("--version").stdout(Stdio::null()).status() {
        panic!("these tests need qemu-system-x86_64 ({e}): scripts/setup installs it (Debian package qemu-system-x86)");
    }
}

struct Out {
    status: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

fn skiff(args: &[&str]) -> Out {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_skiff")).args(args).stdin(Stdio::null()).output().expect("run skiff");
    Out {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn hello() -> &'static str {
    path(common::guest("examples/hello"))
}

fn probe() -> &'static str {
    path(common::guest("tests/guests/probe"))
}

#[track_caller]
fn expect(out: &Out, status: i32, needles: &[&str]) {
    assert_eq!(out.status, status, "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    for n in needles {
        assert!(out.stdout.contains(n) || out.stderr.contains(n), "no {n:?} in:\n{}\n{}", out.stdout, out.stderr);
    }
}

#[test]
fn hello_under_qemu_microvm_prints_its_lines_and_exits_zero() {
    require_kvm_and_qemu();
    let out = skiff(&["run", hello(), "--vmm", "qemu", "--", "first", "second arg"]);
    expect(&out, 0, &["INFO  hello: Hello from Skiff!", "asked for 10 ms", r#"command line: ["first", "second arg"]"#]);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    // --log reaches the guest as skiff.log=LEVEL.
    let quiet = skiff(&["run", hello(), "--vmm", "qemu", "--log", "warn", "--", "--sleep-ms", "0"]);
    expect(&quiet, 0, &[]);
    assert!(!quiet.stdout.contains("Hello from Skiff!"), "{}", quiet.stdout);
}

#[test]
fn the_guests_status_is_skiffs_own() {
    require_kvm_and_qemu();
    expect(&skiff(&["run", probe(), "--vmm", "qemu", "--", "exit", "7"]), 7, &[]);
    expect(
        &skiff(&["run", probe(), "--vmm", "qemu", "--", "panic"]),
        101,
        &["probe panic 42", "skiff: guest aborted (panic)"],
    );
}

#[test]
fn arguments_with_spaces_and_quotes_arrive_intact() {
    require_kvm_and_qemu();
    let args = ["hello", "two words", "it's", "say \"hi\"", "a,b", "$HOME", "back\\slash"];
    let mut cmd = vec!["run", probe(), "--vmm", "qemu", "--"];
    cmd.extend(args);
    let out = skiff(&cmd);
    let expected = format!("probe says hello; args {:?}", &args[..]);
    expect(&out, 0, &[&expected]);
}

#[test]
fn the_timeout_kills_qemu_with_status_111() {
    require_kvm_and_qemu();
    let out = skiff(&["run", probe(), "--vmm", "qemu", "--timeout", "1s", "--", "sleep", "30000"]);
    expect(&out, 111, &["skiff: --timeout 1s expired: QEMU killed"]);
    assert!(out.elapsed < Duration::from_secs(5), "took {:?}", out.elapsed);
}

#[test]
fn a_stop_signal_is_passed_on_and_ends_the_guest_with_114() {
    require_kvm_and_qemu();
    let probe = probe();
    let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["run", probe, "--vmm", "qemu", "--", "sleep", "30000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill takes plain integers; the child is ours and not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(114), "{stderr}");
    assert!(stderr.contains("skiff: SIGTERM passed on to QEMU, which ended the guest at once"), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
}

#[test]
fn tender_only_options_and_a_missing_qemu_are_clear_errors() {
    let out = skiff(&["run", "/nonexistent", "--vmm", "qemu", "--net-max-connections", "5", "--stats"]);
    expect(&out, 124, &["skiff: --stats, --net-max-connections only with --vmm tender"]);
    let out = skiff(&["run", "/nonexistent", "--machine", "q35"]);
    expect(&out, 124, &["skiff: --machine only with --vmm qemu"]);
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["run", hello(), "--vmm", "qemu"])
        .env("SKIFF_QEMU", "/nonexistent/qemu-system-x86_64")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("/nonexistent/qemu-system-x86_64 not found"), "{stderr}");
    assert!(stderr.contains("Debian package qemu-system-x86"), "{stderr}");
}

#[test]
fn a_cpu_exception_is_reported_with_its_function_as_under_the_tender() {
    require_kvm_and_qemu();
    let rip_line = |out: &Out| {
        let line = out.stdout.lines().chain(out.stderr.lines()).find(|l| l.starts_with("  rip 0x"));
        line.unwrap_or_else(|| panic!("no rip line in:\n{}\n{}", out.stdout, out.stderr)).to_string()
    };
    let qemu = skiff(&["run", probe(), "--vmm", "qemu", "--", "divzero"]);
    expect(&qemu, 102, &["guest CPU exception in ring 3 (the service): divide error (#DE, vector 0)"]);
    let tender = skiff(&["run", probe(), "--", "divzero"]);
    expect(&tender, 102, &["divide error (#DE, vector 0)"]);
    // The same image at the same addresses: the same line, name included.
    assert!(rip_line(&qemu).contains(" in ") && rip_line(&qemu).contains("+0x"), "{}", qemu.stdout);
    assert_eq!(rip_line(&qemu), rip_line(&tender));
}

#[test]
fn hello_boots_under_q35_through_pvh() {
    require_kvm_and_qemu();
    let out = skiff(&["run", hello(), "--vmm", "qemu", "--machine", "q35", "--timeout", "60s", "--", "on q35"]);
    expect(&out, 0, &["INFO  hello: Hello from Skiff!", r#"command line: ["on q35"]"#]);
}

/// The network path end to end: `skiff run --vmm qemu --publish` puts echo's
/// NIC on QEMU's user network with a host forward, the guest's virtio-net
/// driver gets an address by DHCP, and 1 MiB comes back byte-identical.
#[test]
fn a_published_port_reaches_the_guest_over_virtio_net() {
    use std::io::{BufRead, BufReader, Read, Write};
    require_kvm_and_qemu();
    let echo = path(common::guest("examples/echo"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["run", echo, "--vmm", "qemu", "--timeout", "60s", "--publish", "0:7"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run skiff");
    let stderr = child.stderr.take().expect("stderr");
    // Killed when the test ends, passing or not; QEMU goes with it (it is
    // started to die with its parent).
    let _guard = skiff_testnet::Guard(child);
    // "skiff: 127.0.0.1:PORT/tcp -> guest port 7" on stderr.
    let mut stderr = BufReader::new(stderr);
    let mut port = None;
    let mut seen = String::new();
    let mut line = String::new();
    while port.is_none() && stderr.read_line(&mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        port = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("127.0.0.1:"))
            .and_then(|w| w.strip_suffix("/tcp"))
            .and_then(|p| p.parse::<u16>().ok());
        line.clear();
    }
    let port = port.unwrap_or_else(|| panic!("no published port announced:\n{seen}"));
    // The guest takes a few milliseconds to lease its address; retry briefly.
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let echoed = loop {
        let attempt = (|| -> std::io::Result<Vec<u8>> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut w = s.try_clone()?;
            let sent = data.clone();
            let writer = std::thread::spawn(move || {
                let r = w.write_all(&sent);
                let _ = w.shutdown(std::net::Shutdown::Write);
                r
            });
            let mut back = Vec::new();
            s.read_to_end(&mut back)?;
            writer.join().expect("writer")?;
            Ok(back)
        })();
        match attempt {
            Ok(back) if back.len() == data.len() => break back,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(back) => panic!("echo returned {} of {} bytes", back.len(), data.len()),
            Err(e) => panic!("echo through the published port failed: {e}"),
        }
    };
    assert!(echoed == data, "the echoed bytes differ");
}

/// `skiff run --vmm qemu --net service=TAP`: echo's NIC on a TAP device in
/// a network namespace the test creates (QEMU's `-netdev tap`), a static
/// address, and 16 MiB of TCP echo byte-identical from a client in that
/// namespace.
#[test]
fn echo_over_a_tap_device_under_qemu_microvm_echoes_16_mib_byte_identical() {
    use std::io::{BufRead, BufReader, Read, Write};
    require_kvm_and_qemu();
    skiff_testnet::require_root();
    let echo = path(common::guest("examples/echo"));
    let ns = skiff_testnet::NetNs::new().expect("create a network namespace");
    ns.add_tap("tap0", &["10.0.0.1/24"]).expect("create the TAP device");
    let mut child = ns
        .command(env!("CARGO_BIN_EXE_skiff"))
        .args(["run", echo, "--vmm", "qemu", "--timeout", "60s", "--net", "service=tap0", "--"])
        .args(["--ipv4", "10.0.0.2/24", "--gateway", "10.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run skiff in the namespace");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    // Killed when the test ends, passing or not; QEMU goes with it.
    let guard = skiff_testnet::Guard(child);
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let until = Instant::now() + Duration::from_secs(20);
    while !seen.contains("echo: serving TCP and UDP on 10.0.0.2:7") {
        match until.checked_duration_since(Instant::now()).map(|left| lines.recv_timeout(left)) {
            Some(Ok(line)) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            _ => {
                drop(guard);
                panic!("echo did not serve on the TAP device within 20 s:\n{seen}\n{}", errors.join().unwrap());
            }
        }
    }

    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i ^ i >> 7 ^ i >> 19) as u8).collect();
    let sent = data.clone();
    let (back, took) = ns.run(move || {
        let start = Instant::now();
        let addr = "10.0.0.2:7".parse().unwrap();
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect to the guest");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            w.write_all(&sent).expect("send");
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        (&s).read_to_end(&mut back).expect("read the echo");
        writer.join().unwrap();
        (back, start.elapsed())
    });
    assert_eq!(back.len(), data.len(), "echo length");
    assert!(back == data, "the 16 MiB echoed over the TAP device differ");
    println!(
        "16 MiB TCP echo over a TAP device under QEMU microvm: {took:.2?}, {:.0} MB/s each way",
        data.len() as f64 / took.as_secs_f64() / 1e6
    );
}

fn disk_guest() -> &'static str {
    path(common::guest("tests/guests/disk"))
}

/// A scratch directory for one test's disk files, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("skiff-qemu-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str) -> String {
        path(&self.0.join(name)).to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The disk guest's store on a file under QEMU `machine`: committed and
/// flushed in one boot, read back in the next on the same file, and the
/// file checked clean by `skiff disk check`.
fn store_survives_a_reboot(machine: &str) {
    require_kvm_and_qemu();
    let dir = Scratch::new(machine);
    let file = dir.file("store.img");
    let disk = format!("disk={file},size=4M");
    let run = |disk: &str, scenario| {
        skiff(&["run", disk_guest(), "--vmm", "qemu", "--machine", machine, "--disk", disk, "--", scenario])
    };
    let first = run(&disk, "store");
    expect(&first, 0, &["disk: 8192 sectors of 512 bytes", "committed generation", "serial \"disk\""]);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 4 << 20, "size= created the file");
    let second = run(&format!("disk={file}"), "store-read");
    expect(&second, 0, &["read back 100 keys"]);
    let check = skiff(&["disk", "check", &file]);
    expect(&check, 0, &["ok: generation", "100 keys"]);
}

#[test]
fn a_store_written_under_qemu_microvm_survives_a_reboot_on_the_same_file() {
    store_survives_a_reboot("microvm");
}

#[test]
fn a_store_written_under_qemu_q35_survives_a_reboot_on_the_same_file() {
    store_survives_a_reboot("q35");
}

#[test]
fn four_kib_sectors_and_discard_under_qemu_reach_the_file() {
    require_kvm_and_qemu();
    let dir = Scratch::new("4k");
    let file = dir.file("d.img");
    let out = skiff(&[
        "run",
        disk_guest(),
        "--vmm",
        "qemu",
        "--disk",
        &format!("disk={file},size=8M,sector=4096"),
        "--",
        "rw",
    ]);
    expect(&out, 0, &["disk: 2048 sectors of 4096 bytes", "discarded", "read back"]);
    let bytes = std::fs::read(&file).unwrap();
    for i in 0..8 {
        let sector = &bytes[i * 4096..(i + 1) * 4096];
        assert_eq!(&sector[..10], b"skiff-disk");
        assert!(sector[10..].iter().all(|&b| b == i as u8 + 1), "sector {i}");
    }
    // Sectors 64..72 were discarded (holes punched: zeros), the rest of the
    // large write is there.
    assert!(bytes[64 * 4096..72 * 4096].iter().all(|&b| b == 0));
    assert!(bytes[72 * 4096..64 * 4096 + (3 << 20)].iter().all(|&b| b == 0xa5));
}

#[test]
fn a_read_only_disk_under_qemu_refuses_writes_with_the_apis_error() {
    require_kvm_and_qemu();
    let dir = Scratch::new("ro");
    let file = dir.file("d.img");
    std::fs::write(&file, vec![7u8; 1 << 20]).unwrap();
    let out = skiff(&["run", disk_guest(), "--vmm", "qemu", "--disk", &format!("disk={file},ro"), "--", "ro"]);
    // The driver refuses, and so does QEMU's read-only drive past it.
    expect(&out, 0, &["read-only", "write refused: the disk is read-only", "the host refused the write too"]);
    assert!(std::fs::read(&file).unwrap().iter().all(|&b| b == 7));
    // A disk the image does not declare, or none for one it does: refused
    // before QEMU starts, as under the tender.
    let out = skiff(&["run", disk_guest(), "--vmm", "qemu", "--disk", &format!("other={file}")]);
    expect(&out, 125, &["--disk other=...: the image declares no disk of that name (it has: disk)"]);
    let out = skiff(&["run", disk_guest(), "--vmm", "qemu"]);
    expect(&out, 125, &["the image needs a disk named \"disk\""]);
}
