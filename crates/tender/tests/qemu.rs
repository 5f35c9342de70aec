//! The same images under QEMU's microvm machine, through their PVH entry
//! (the virtio platform of skiff-rt): console on COM1, exit status through
//! `isa-debug-exit`, faults and panics reported by the guest itself,
//! virtio-net on QEMU's user network (host forwards on loopback ports) and
//! virtio-rng as the entropy source.
//!
//! QEMU exits with `(status << 1) | 1` for a status written to
//! `isa-debug-exit`; [`Qemu::guest_status`] maps it back.
//!
//! These tests need `qemu-system-x86_64` (`scripts/setup` installs it) and
//! `/dev/kvm`; without them they fail with a message that says so.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The QEMU binary: `SKIFF_QEMU`, or `qemu-system-x86_64` on the `PATH`.
/// A missing QEMU fails the test that needs it, with what to do.
fn qemu_binary() -> String {
    let qemu = std::env::var("SKIFF_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    find_qemu(&qemu).unwrap_or_else(|e| panic!("{e}"))
}

fn find_qemu(qemu: &str) -> Result<String, String> {
    match Command::new(qemu).arg("--version").stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(qemu.into()),
        Ok(out) => Err(format!("{qemu} --version failed ({}); the QEMU tests need a working QEMU", out.status)),
        Err(e) => Err(format!(
            "the QEMU tests need {qemu} ({e}); install it with scripts/setup (Debian package \
             qemu-system-x86) or point SKIFF_QEMU at one"
        )),
    }
}

#[test]
fn a_missing_qemu_is_a_clear_failure_not_a_skip() {
    let e = find_qemu("/nonexistent/qemu-system-x86_64").unwrap_err();
    assert!(e.contains("the QEMU tests need /nonexistent/qemu-system-x86_64"), "{e}");
    assert!(e.contains("scripts/setup"), "{e}");
    assert_eq!(find_qemu(&qemu_binary()), Ok(qemu_binary()));
}

fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!("the QEMU tests run guests under KVM and need read-write access to /dev/kvm ({e})");
    }
}

/// The microvm command line for `image` with `args` on its command line.
fn qemu_command(image: &Path, args: &str) -> Command {
    qemu_command_with_memory(image, args, "64M")
}

/// The same with `memory` (QEMU's `-m`).
fn qemu_command_with_memory(image: &Path, args: &str, memory: &str) -> Command {
    machine_command(MICROVM, image, args, memory)
}

/// QEMU's microvm machine, without option ROMs or a real-time clock.
const MICROVM: &str = "microvm,x-option-roms=off,rtc=off";
/// The PC with PCI Express: SeaBIOS, then the image's PVH entry through
/// QEMU's PVH option ROM (about 3 s here: the firmware runs in emulated
/// ring 0).
const Q35: &str = "q35";

/// The command line for `image` on `machine`.
fn machine_command(machine: &str, image: &Path, args: &str, memory: &str) -> Command {
    let mut cmd = Command::new(qemu_binary());
    cmd.args([
        "-M",
        machine,
        "-enable-kvm",
        // This machine's KVM refuses the ARCH_CAPABILITIES MSR that `max`
        // would set.
        "-cpu",
        "max,-arch-capabilities",
        "-m",
        memory,
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
        "-kernel",
    ]);
    cmd.arg(image).arg("-append").arg(args);
    cmd
}

#[derive(Debug)]
struct Qemu {
    /// QEMU's exit status.
    code: i32,
    output: String,
}

impl Qemu {
    /// The status the guest wrote to `isa-debug-exit`.
    fn guest_status(&self) -> Option<i32> {
        (self.code & 1 == 1).then_some(self.code >> 1)
    }
}

/// Runs `image` under QEMU with `args`, for at most 30 s.
fn qemu(image: &Path, args: &str) -> Qemu {
    qemu_with(image, args, &[])
}

/// The same with `extra` QEMU arguments.
fn qemu_with(image: &Path, args: &str, extra: &[&str]) -> Qemu {
    qemu_on(MICROVM, image, args, extra)
}

/// The same on `machine`.
fn qemu_on(machine: &str, image: &Path, args: &str, extra: &[&str]) -> Qemu {
    let mut cmd = machine_command(machine, image, args, "64M");
    cmd.args(extra);
    run_qemu(cmd)
}

/// Runs a QEMU command to its end, for at most 30 s.
fn run_qemu(mut cmd: Command) -> Qemu {
    require_kvm();
    let start = Instant::now();
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn QEMU");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for QEMU") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            let output = out.join().unwrap() + &err.join().unwrap();
            panic!("QEMU did not end within 30 s; output so far:\n{output}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let output = out.join().expect("stdout") + &err.join().expect("stderr");
    Qemu { code: status.code().unwrap_or(-1), output }
}

#[track_caller]
fn expect(run: &Qemu, status: i32, needles: &[&str]) {
    assert_eq!(run.guest_status(), Some(status), "QEMU exited {}; output:\n{}", run.code, run.output);
    for n in needles {
        assert!(run.output.contains(n), "output lacks {n:?}:\n{}", run.output);
    }
}

fn probe() -> &'static Path {
    common::guest("tests/guests/probe")
}

#[test]
fn hello_boots_under_qemu_microvm_logs_and_exits_zero() {
    let hello = common::guest("examples/hello");
    let run = qemu(hello, "first 'second arg'");
    expect(&run, 0, &["INFO  hello: Hello from Skiff!", "asked for 10 ms", r#"command line: ["first", "second arg"]"#]);
    assert!(!run.output.contains("skiff-tender"), "{}", run.output);
    // The sleep is timed by the TSC at the frequency the guest found.
    let line = run.output.lines().find(|l| l.contains("slept")).expect("a sleep line");
    let ms: f64 = line.split("slept ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
    assert!((10.0..60.0).contains(&ms), "slept {ms} ms for 10: {line}");
}

#[test]
fn hello_whole_process_time_under_qemu_against_the_tender() {
    let hello = common::guest("examples/hello");
    require_kvm();
    let runs = 5;
    let mut tender_best = Duration::MAX;
    let mut qemu_best = Duration::MAX;
    for _ in 0..runs {
        let t = common::run_measured(Command::new(env!("CARGO_BIN_EXE_skiff-tender")).arg(hello).args([
            "--",
            "--sleep-ms",
            "0",
        ]));
        assert_eq!(t.status, 0, "{}", t.output);
        tender_best = tender_best.min(t.elapsed);
        let q = common::run_measured(&mut qemu_command(hello, "--sleep-ms 0"));
        assert_eq!(q.status, 1, "QEMU should exit 1 for status 0: {}", q.output);
        assert!(q.output.contains("Hello from Skiff!"), "{}", q.output);
        qemu_best = qemu_best.min(q.elapsed);
    }
    println!(
        "hello, boot to exit, whole process, best of {runs}: skiff-tender {:.1} ms, QEMU microvm {:.1} ms ({:.1}x)",
        tender_best.as_secs_f64() * 1e3,
        qemu_best.as_secs_f64() * 1e3,
        qemu_best.as_secs_f64() / tender_best.as_secs_f64()
    );
}

#[test]
fn service_exit_statuses_pass_through_isa_debug_exit() {
    for (args, status) in [("exit 7", 7), ("exit 0", 0), ("fail", 1)] {
        let run = qemu(probe(), args);
        expect(&run, status, &[]);
        assert_eq!(run.code, (status << 1) | 1);
    }
}

#[test]
fn arguments_from_append_reach_the_service() {
    let run = qemu(probe(), r#"hello "two words" it\'s"#);
    expect(&run, 0, &[r#"probe says hello; args ["hello", "two words", "it's"]"#]);
}

#[test]
fn a_panic_prints_message_and_location_and_exits_101() {
    let run = qemu(probe(), "panic");
    expect(&run, 101, &["panicked at src/main.rs:", "probe panic 42", "skiff: guest aborted (panic)"]);
}

#[test]
fn cpu_exceptions_are_reported_by_the_guest_with_status_102() {
    let cases: &[(&str, &[&str])] = &[
        ("divzero", &["divide error (#DE, vector 0)", "integer division by zero"]),
        ("read-null", &["page fault (#PF, vector 14)", "address 0x0: read of an unmapped page", "null pointer"]),
        ("write-text", &["write to a page whose protection forbids it", "the code of the image, read-only (r-x user"]),
        (
            "jump-data",
            &["instruction fetch from a page whose protection forbids it", "the data of the image (rw- user"],
        ),
        ("write-rodata", &["write to a page whose protection forbids it", "the read-only data of the image (r-- user"]),
        ("stack-overflow", &["write to an unmapped page", "stack overflow"]),
        ("privileged", &["general protection fault (#GP, vector 13)"]),
        // The hypercall ports are closed under the PVH entry.
        ("port", &["general protection fault (#GP, vector 13)"]),
        ("ud2", &["invalid opcode (#UD, vector 6)"]),
    ];
    for (scenario, needles) in cases {
        let run = qemu(probe(), scenario);
        let mut all = vec!["skiff: guest CPU exception in ring 3 (the service)", "rip 0x"];
        all.extend_from_slice(needles);
        expect(&run, 102, &all);
    }
}

#[test]
fn an_image_whose_nic_has_no_virtio_net_device_fails_clearly_instead_of_hanging() {
    let echo = common::guest("examples/echo");
    let run = qemu(echo, "");
    expect(&run, 104, &["declares the net device \"service\"", "no virtio-net device", "-device virtio-net-device"]);
}

#[test]
fn an_image_whose_disk_has_no_virtio_blk_device_stops_with_104_and_one_without_a_serial_goes_by_order() {
    let disk = common::guest("tests/guests/disk");
    // No device at all.
    let run = qemu(disk, "rw");
    expect(&run, 104, &["declares the block device \"disk\"", "no virtio-blk device", "serial=disk"]);
    let file = std::env::temp_dir().join(format!("skiff-qemu-vblk-{}.img", std::process::id()));
    std::fs::File::create(&file).unwrap().set_len(8 << 20).unwrap();
    let drive = format!("file={},if=none,id=d0,format=raw,discard=unmap", file.display());
    // A device whose serial names another disk is not this one's.
    let run = qemu_with(disk, "rw", &["-drive", &drive, "-device", "virtio-blk-device,drive=d0,serial=other"]);
    expect(&run, 104, &["no virtio-blk device for it", "serial numbers \"other\""]);
    // Without a serial number, the disks go by order.
    let run = qemu_with(disk, "rw", &["-drive", &drive, "-device", "virtio-blk-device,drive=d0"]);
    let _ = std::fs::remove_file(&file);
    expect(&run, 0, &["disk: 16384 sectors of 512 bytes", "read back"]);
}

/// A free TCP and a free UDP port on the loopback address.
fn free_ports() -> (u16, u16) {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind TCP").local_addr().unwrap().port();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind UDP").local_addr().unwrap().port();
    (tcp, udp)
}

/// A QEMU guest left running, its output gathered line by line; killed
/// when dropped.
struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: String,
}

impl Running {
    /// Starts `image` under microvm with `args` on its command line and
    /// `extra` QEMU arguments.
    fn start(image: &Path, args: &str, extra: &[&str]) -> Running {
        Running::start_on(MICROVM, image, args, extra)
    }

    /// The same on `machine`.
    fn start_on(machine: &str, image: &Path, args: &str, extra: &[&str]) -> Running {
        require_kvm();
        let mut cmd = machine_command(machine, image, args, "64M");
        cmd.args(extra);
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn QEMU");
        let (tx, lines) = std::sync::mpsc::channel();
        for r in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufRead::lines(std::io::BufReader::new(r)) {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Running { child, lines, seen: String::new() }
    }

    /// Waits (at most 20 s) for a line containing `needle`; returns it.
    fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_within(needle, Duration::from_secs(20))
    }

    /// Waits (at most `limit`) for a line containing `needle`; returns it.
    fn wait_for_within(&mut self, needle: &str, limit: Duration) -> String {
        let until = Instant::now() + limit;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line with {needle:?} within {limit:?}; output:\n{}", self.seen);
    }

    /// The CPU time QEMU used so far (user and system, from /proc).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("QEMU's stat");
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// QEMU's user network with host forwards to the guest's port 7.
fn user_net(tcp: u16, udp: u16) -> [String; 4] {
    [
        "-netdev".into(),
        format!("user,id=n0,hostfwd=tcp:127.0.0.1:{tcp}-:7,hostfwd=udp:127.0.0.1:{udp}-:7"),
        "-device".into(),
        "virtio-net-device,netdev=n0".into(),
    ]
}

/// Sends `data` on a TCP connection to `port` and returns what comes back
/// until the guest closes.
fn tcp_echo(port: u16, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the forward");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let got = std::thread::spawn(move || {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).map(|_| got)
    });
    stream.write_all(data).expect("send");
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    got.join().unwrap().expect("read the echo")
}

fn udp_echo(port: u16, payload: &[u8]) -> Vec<u8> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 2048];
    // QEMU's user network may drop the first datagram while it sets up
    // the forward; a few tries, each answered or not within 2 s.
    for _ in 0..3 {
        socket.send_to(payload, ("127.0.0.1", port)).unwrap();
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            return buf[..n].to_vec();
        }
    }
    panic!("no UDP echo from the guest through the forward");
}

#[test]
fn echo_over_virtio_net_gets_an_address_by_dhcp_and_echoes_tcp_and_udp_through_host_forwards() {
    echo_over_user_network(MICROVM, "virtio-net-device");
}

#[test]
fn echo_under_q35_over_virtio_net_pci_gets_an_address_by_dhcp_echoes_and_idles_on_msix() {
    echo_over_user_network(Q35, "virtio-net-pci,romfile=");
}

/// echo on `machine` with its NIC a `device` on QEMU's user network: the
/// address from QEMU's DHCP server, 16 MiB of TCP echo byte-identical and
/// a UDP echo through host forwards, and an idle guest waiting on its NIC
/// that costs the host under 5% of a core and answers at once after.
fn echo_over_user_network(machine: &str, device: &str) {
    let echo = common::guest("examples/echo");
    let (tcp, udp) = free_ports();
    let mut extra = user_net(tcp, udp);
    extra[3] = format!("{device},netdev=n0");
    let mut guest = Running::start_on(machine, echo, "--dhcp", &extra.iter().map(String::as_str).collect::<Vec<_>>());
    // q35 boots through SeaBIOS first (about 3 s here).
    guest.wait_for_within("DHCP: leased 10.0.2.15/24 from 10.0.2.2", Duration::from_secs(40));
    guest.wait_for("echo: serving TCP and UDP on 10.0.2.15:7");

    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i ^ i >> 8 ^ i >> 16) as u8).collect();
    let start = Instant::now();
    let back = tcp_echo(tcp, &data);
    let took = start.elapsed();
    assert_eq!(back.len(), data.len(), "TCP echo length");
    assert!(back == data, "the 16 MiB TCP echo differs");
    println!(
        "16 MiB TCP echo over {device} on {machine} (QEMU user network): {took:.2?}, {:.0} MB/s each way",
        data.len() as f64 / took.as_secs_f64() / 1e6
    );
    assert_eq!(udp_echo(udp, b"virtio datagram"), b"virtio datagram");

    // Idle with a task waiting on the NIC: the guest sleeps until the
    // device's interrupt, so a second costs the host next to nothing.
    std::thread::sleep(Duration::from_millis(200));
    let before = guest.cpu();
    std::thread::sleep(Duration::from_secs(1));
    let idle = guest.cpu() - before;
    println!("an idle echo guest under QEMU {machine}: {:.1} ms of host CPU in 1 s", idle.as_secs_f64() * 1e3);
    assert!(idle < Duration::from_millis(50), "an idle guest with a NIC cost {idle:?} of host CPU in 1 s");
    // And still answers after the idle: the frame's interrupt ends the
    // sleep (nothing else would: no timer is pending).
    let start = Instant::now();
    assert_eq!(tcp_echo(tcp, b"after the idle"), b"after the idle");
    println!("the echo after the idle: {:.1?}", start.elapsed());
}

#[test]
fn virtio_net_devices_named_on_the_command_line_without_acpi_work_too() {
    // With acpi=off, QEMU names the devices on the command line
    // (virtio_mmio.device=512@0xfeb00e00:12) and they sit on the first
    // I/O APIC; the guest must not take the entry for an argument.
    let echo = common::guest("examples/echo");
    let (tcp, udp) = free_ports();
    let extra = user_net(tcp, udp);
    let mut args: Vec<&str> = extra.iter().map(String::as_str).collect();
    args.extend(["-M", "microvm,x-option-roms=off,rtc=off,acpi=off"]);
    let mut guest = Running::start(echo, "--dhcp", &args);
    guest.wait_for("echo: serving TCP and UDP on 10.0.2.15:7");
    assert_eq!(udp_echo(udp, b"no acpi"), b"no acpi");
    assert_eq!(tcp_echo(tcp, b"no acpi either"), b"no acpi either");
}

#[test]
fn an_idle_guest_sleeps_in_the_supervisor_instead_of_spinning() {
    let hello = common::guest("examples/hello");
    require_kvm();
    let idle = common::run_measured(&mut qemu_command(hello, "--sleep-ms 1000"));
    assert_eq!(idle.status, 1, "{}", idle.output);
    assert!(idle.output.contains("asked for 1000 ms"), "{}", idle.output);
    let busy = common::run_measured(&mut qemu_command(hello, "--sleep-ms 0"));
    assert_eq!(busy.status, 1, "{}", busy.output);
    // What the second of sleep cost the host, beyond QEMU's own start.
    let sleeping = idle.cpu.saturating_sub(busy.cpu);
    println!(
        "a guest sleeping 1 s under QEMU: {:.1} ms of host CPU ({:.1}% of a core) beyond a guest that does not sleep",
        sleeping.as_secs_f64() * 1e3,
        sleeping.as_secs_f64() * 100.0
    );
    assert!(sleeping < Duration::from_millis(50), "sleeping 1 s cost {sleeping:?} of host CPU");
}

#[test]
fn memory_sizes_give_the_heap_in_large_or_small_pages() {
    let hello = common::guest("examples/hello");
    require_kvm();
    // 64 MiB: 2 MiB pages from the first 2 MiB boundary past the image;
    // 5 MiB: memory ends before a whole 2 MiB page, so 4 KiB pages.
    for (memory, needle) in [("64M", "64 MiB of memory (6"), ("5M", "5 MiB of memory (2")] {
        let run = common::run_measured(&mut qemu_command_with_memory(hello, "skiff.log=debug --sleep-ms 0", memory));
        assert_eq!(run.status, 1, "{memory}: {}", run.output);
        assert!(run.output.contains(needle), "{memory}: {}", run.output);
        assert!(run.output.contains("TSC at") && run.output.contains("us in ring 0"), "{}", run.output);
    }
}

#[test]
fn virtio_rng_seeds_the_entropy_pool_and_is_required_when_asked_for() {
    // The CPU here shows RDSEED to ring 3, so the guest is told to prefer
    // the device (`skiff.entropy=virtio-rng`), as it would use it on its
    // own on a CPU without RDSEED and RDRAND.
    let run = qemu_with(probe(), "random skiff.entropy=virtio-rng", &["-device", "virtio-rng-device"]);
    expect(&run, 0, &["random: source virtio-rng, draws differ true, 256 byte values"]);
    let line = run.output.lines().find(|l| l.contains("random: source")).unwrap();
    let fraction: f64 = line.rsplit(", ").next().unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((0.49..0.51).contains(&fraction), "{line}");

    let run = qemu(probe(), "random skiff.entropy=virtio-rng");
    expect(&run, 104, &["skiff.entropy=virtio-rng, but the VM has no virtio-rng device", "-device virtio-rng-device"]);
    let run = qemu(probe(), "random skiff.entropy=dice");
    expect(&run, 104, &["skiff.entropy=dice: not an entropy source (cpu, virtio-rng)"]);
}

#[test]
fn static_website_over_virtio_net_serves_every_file_over_tls13_and_tls12_with_entropy_from_virtio_rng() {
    let mut run = website_on(MICROVM, &["virtio-net-device,netdev=n0", "virtio-rng-device"], "");
    serve_every_file(&mut run);
}

#[test]
fn static_website_under_q35_serves_every_file_over_tls13_and_tls12_with_entropy_from_virtio_rng_pci() {
    // The debug lines name each device's transport and interrupt; with
    // skiff.entropy=virtio-rng the guest ends unless it found virtio-rng.
    let mut run = website_on(Q35, &["virtio-net-pci,netdev=n0,romfile=", "virtio-rng-pci"], "skiff.log=debug");
    let seen = &run.0.seen;
    assert!(seen.contains(r#"virtio-net at PCI 00:01.0 (MSI-X) is NIC "service""#), "{seen}");
    serve_every_file(&mut run);
}

/// static-website on `machine` with `devices`, its port 443 forwarded from
/// a free loopback port; returns once it serves.
fn website_on(machine: &str, devices: &[&str], args: &str) -> (Running, u16) {
    let website = common::guest("examples/static-website");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let netdev = format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:443");
    let mut extra = vec!["-netdev", &netdev];
    for d in devices {
        extra.extend(["-device", d]);
    }
    let mut guest = Running::start_on(machine, website, &format!("--dhcp skiff.entropy=virtio-rng {args}"), &extra);
    guest.wait_for_within("static-website: 16 files", Duration::from_secs(40));
    (guest, port)
}

/// curl fetches every file of the site over TLS 1.3 and over TLS 1.2, each
/// time on one keep-alive connection, byte-identical.
fn serve_every_file((guest, port): &mut (Running, u16)) {
    let port = *port;

    let files = common::site_files();
    let dir = common::workspace().join(format!("target/qemu-tests/site-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let resolve = format!("localhost:{port}:127.0.0.1");
    // The demo certificate is self-signed for localhost: -k.
    for (force, wanted) in [(&["--tlsv1.3"][..], "TLSv1.3"), (&["--tlsv1.2", "--tls-max", "1.2"][..], "TLSv1.2")] {
        let mut args: Vec<String> = ["-sS", "-v", "-k", "--max-time", "30", "--resolve", &resolve]
            .iter()
            .chain(force)
            .map(|s| s.to_string())
            .collect();
        args.extend(["-w".into(), "%{http_code} %{num_connects}\n".into()]);
        for (i, (path, _)) in files.iter().enumerate() {
            args.extend(["-o".into(), dir.join(i.to_string()).display().to_string()]);
            args.push(format!("https://localhost:{port}{path}"));
        }
        let out = Command::new("curl").args(&args).output().expect("run curl (scripts/setup installs it)");
        let report = String::from_utf8_lossy(&out.stdout);
        let verbose = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "curl {force:?} failed:\n{verbose}\nguest:\n{}", guest.seen);
        assert!(verbose.contains(&format!("SSL connection using {wanted}")), "{verbose}");
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(lines.len(), files.len(), "{report}");
        for (i, (path, bytes)) in files.iter().enumerate() {
            assert!(lines[i].starts_with("200 "), "{path}: {}", lines[i]);
            let got = std::fs::read(dir.join(i.to_string())).unwrap();
            assert!(got == *bytes, "{path}: {} bytes fetched, {} in the site", got.len(), bytes.len());
        }
        let connects: u32 = lines.iter().map(|l| l.rsplit(' ').next().unwrap().parse::<u32>().unwrap()).sum();
        assert_eq!(connects, 1, "one keep-alive connection carries every file: {report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_virtio_mmio_entries_on_the_command_line_end_the_boot_with_a_clear_line() {
    let run = qemu(probe(), "exit 0 virtio_mmio.device=512@0x1000:5");
    expect(&run, 104, &["the virtio-mmio device at 0x1000 (512 bytes) lies outside the page this runtime maps"]);
    let run = qemu(probe(), "exit 0 virtio_mmio.device=512@nowhere");
    expect(&run, 104, &["bad virtio-mmio device on the command line"]);
    // An empty slot named on the command line is skipped, not an error.
    let run = qemu(probe(), "exit 3 virtio_mmio.device=512@0xfeb00000:5");
    expect(&run, 3, &[]);
}

/// QEMU arguments for `image` without the exit device: `machine` and
/// `cpu` as given.
fn qemu_without_exit_device(image: &Path, args: &str, machine: &str, cpu: &str) -> Command {
    let mut cmd = Command::new(qemu_binary());
    cmd.args(["-M", machine, "-enable-kvm", "-cpu", cpu, "-m", "64M", "-nodefaults", "-no-user-config"]);
    cmd.args(["-nographic", "-no-reboot", "-serial", "stdio", "-kernel"]).arg(image).arg("-append").arg(args);
    cmd
}

#[test]
fn without_isa_debug_exit_the_status_goes_to_the_console_and_acpi_powers_q35_off() {
    let run = run_qemu(qemu_without_exit_device(probe(), "exit 3", "q35", "max,-arch-capabilities"));
    // QEMU ends (0) on the ACPI power-off; the status is on the console.
    assert_eq!(run.code, 0, "{}", run.output);
    assert!(run.output.contains("skiff: exit status 3 (this VM has no isa-debug-exit device"), "{}", run.output);
    assert!(!run.output.contains("did not power off"), "{}", run.output);
}

#[test]
fn without_kvmclock_the_wall_clock_comes_from_the_cmos_clock() {
    let machine = "microvm,x-option-roms=off,rtc=on";
    let mut cmd = qemu_without_exit_device(probe(), "wallclock", machine, "max,-arch-capabilities,-kvmclock");
    cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
    let run = run_qemu(cmd);
    expect(&run, 0, &["wall clock: "]);
    let secs: u64 = run
        .output
        .split("wall clock: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wall clock figure:\n{}", run.output));
    let host = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // The CMOS clock holds UTC to the second; allow for the boot itself.
    assert!(host.abs_diff(secs) < 30, "guest {secs} s, host {host} s:\n{}", run.output);
}

#[test]
fn a_legacy_only_virtio_pci_nic_under_q35_ends_the_boot_with_a_clear_line() {
    // disable-modern=on leaves the function without the virtio
    // capabilities a modern driver needs: one line and status 104, no hang.
    let echo = common::guest("examples/echo");
    let extra = ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,disable-modern=on,romfile="];
    let run = qemu_on(Q35, echo, "--dhcp", &extra);
    expect(
        &run,
        104,
        &["skiff: guest aborted", "virtio net device at PCI 00:01.0", "the common configuration capability is missing"],
    );
}
