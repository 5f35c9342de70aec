//! Skiff images as containers against Linux containers under the same
//! podman, in one run (rootful podman with a store of the benchmark's own):
//!
//! 1. Start to exit: `podman run --rm` of hello with skiff-oci against
//!    `podman run --rm` of a static C hello (`gcc -static`, a one-file
//!    image made with `podman import`) with runc; on podman's default
//!    network and with `--network none`, interleaved.
//! 2. Memory on the host per running static-website container (the
//!    tender's resident set, which holds the guest memory the guest has
//!    touched, and the container cgroup's `memory.usage_in_bytes`) against
//!    an nginx container with runc serving the same files (the image built
//!    from the host's nginx binary and its libraries, `podman import`),
//!    each measured after serving the same load.
//! 3. 1 KiB HTTPS requests per second (wrk, keep-alive, 16 connections)
//!    through `podman run -p` against the same image under the tender's
//!    `--publish` (what `skiff run --publish` runs), alternating.
//!
//! `cargo run --release -p skiff-bench --bin oci` (root, KVM; podman, runc,
//! conmon, netavark and iptables from `scripts/setup`; gcc, nginx-light,
//! wrk, openssl, curl). The release profile aborts on a panic: a failed
//! run leaves its store under the temporary directory and netavark's
//! chains for `podman rm` and iptables to remove by hand.

use skiff_bench::{
    Linking, Podman, Runtime, Sample, guest, import, load_skiff, make_cert, make_nginx, measure, median, ms,
    release_runtime, release_tender, summary,
};
use skiff_testnet::{Guard, require_kvm, require_program, require_root, wait_for};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// The static C hello: one file, `/hello`.
fn make_c_hello(p: &Podman, dir: &Path) {
    let rootfs = dir.join("chello");
    std::fs::create_dir_all(&rootfs).unwrap();
    let src = dir.join("hello.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(int argc, char **argv) {\n  puts(\"Hello from C!\");\n  return 0;\n}\n",
    )
    .unwrap();
    let status = Command::new("gcc").args(["-static", "-O2", "-o"]).arg(rootfs.join("hello")).arg(&src).status();
    assert!(status.is_ok_and(|s| s.success()), "gcc -static failed (is glibc's static library, libc6-dev, there?)");
    import(p, &rootfs, "localhost/chello", "[\"/hello\"]");
}

/// Waits until `https://127.0.0.1:PORT/bench/1k.html` answers.
fn wait_https(port: u16) {
    let up = wait_for(Duration::from_secs(30), || {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "2", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("https://127.0.0.1:{port}/bench/1k.html"))
            .output()
            .ok()?;
        (out.stdout == b"200").then_some(())
    });
    assert!(up.is_some(), "nothing served on port {port}");
}

/// Requests per second and errors of one wrk run (keep-alive) from the
/// host.
fn wrk(addr: SocketAddr, connections: u32, secs: u32) -> (f64, u64) {
    let url = format!("https://{addr}/bench/1k.html");
    let out =
        Command::new("wrk").args(skiff_bench::wrk_args(&url, connections, secs, false)).output().expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let w = skiff_bench::parse_wrk(&text);
    if w.rps == 0.0 {
        eprintln!("    wrk measured nothing for {addr}:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    }
    (w.rps, w.errors)
}

/// A process's resident set (`VmRSS`), bytes.
fn rss(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

/// The memory cgroup directory of process `pid` (v1 `memory` controller,
/// or the v2 tree).
fn memory_cgroup(pid: &str) -> PathBuf {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("the process's cgroups");
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if controllers.split(',').any(|c| c == "memory") {
            return PathBuf::from(format!("/sys/fs/cgroup/memory{path}"));
        }
        if controllers.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            return PathBuf::from(format!("/sys/fs/cgroup{path}"));
        }
    }
    panic!("process {pid} is in no memory cgroup");
}

/// The container's memory: its processes' resident sets summed, and its
/// cgroup's usage.
fn container_memory(p: &Podman, id: &str) -> (u64, u64) {
    let pid = p.ok(Runtime::Runc, &["inspect", "-f", "{{.State.Pid}}", id]);
    let cg = memory_cgroup(&pid);
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
    let rss_sum: u64 = procs.lines().map(rss).sum();
    let usage = ["memory.usage_in_bytes", "memory.current"]
        .iter()
        .find_map(|f| std::fs::read_to_string(cg.join(f)).ok()?.trim().parse().ok())
        .unwrap_or(0);
    (rss_sum, usage)
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / f64::from(1 << 20))
}

fn run_container(p: &Podman, runtime: Runtime, image: &str, port: u16) -> String {
    let out = p.run(runtime).args(["-d", "-p", &format!("127.0.0.1:{port}:443"), image]).output().expect("podman");
    assert!(out.status.success(), "podman run {image}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn main() {
    require_root();
    require_kvm();
    for (program, package) in [
        ("podman", "podman"),
        ("runc", "runc"),
        ("gcc", "gcc"),
        ("nginx", "nginx-light"),
        ("wrk", "wrk"),
        ("openssl", "openssl"),
        ("curl", "curl"),
        ("iptables-save", "iptables"),
    ] {
        require_program(program, package);
    }
    let quick = std::env::var_os("SKIFF_BENCH_QUICK").is_some();
    let dir = std::env::temp_dir().join(format!("skiff-bench-oci-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = release_runtime();
    let tender = release_tender(Linking::Static);
    let hello = guest("examples/hello");
    let website = guest("examples/static-website");
    let p = Podman::new(&dir, runtime);
    load_skiff(&p, &dir, &hello, "localhost/hello");
    load_skiff(&p, &dir, &website, "localhost/static-website");
    make_c_hello(&p, &dir);
    let cert = make_cert(&dir, "127.0.0.1");
    make_nginx(&p, &dir, &cert);

    // 1. Start to exit.
    let runs = if quick { 5 } else { 20 };
    println!("## podman run --rm, start to exit ({runs} runs each, interleaved)\n");
    println!(
        "| network | skiff-oci hello: median (p10-p90) ms | runc static C hello: median (p10-p90) ms | skiff-oci / runc |"
    );
    println!("| --- | ---: | ---: | ---: |");
    for network in ["default (bridge)", "none"] {
        let net: &[&str] = if network == "none" { &["--network", "none"] } else { &[] };
        let (mut skiff, mut runc) = (Vec::<Sample>::new(), Vec::<Sample>::new());
        for _ in 0..runs {
            for (runtime, image, out) in
                [(Runtime::SkiffOci, "localhost/hello", &mut skiff), (Runtime::Runc, "localhost/chello", &mut runc)]
            {
                let s = measure(p.run(runtime).arg("--rm").args(net).arg(image));
                assert_eq!(s.status, 0, "podman run --rm {image} with {runtime:?} failed");
                out.push(s);
            }
        }
        let (s, r) = (summary(&skiff), summary(&runc));
        println!(
            "| {network} | {} ({}-{}) | {} ({}-{}) | {:.2} |",
            ms(s.0),
            ms(s.1),
            ms(s.2),
            ms(r.0),
            ms(r.1),
            ms(r.2),
            s.0.as_secs_f64() / r.0.as_secs_f64()
        );
    }

    // 2 and 3. Serving: memory per container and 1 KiB HTTPS req/s.
    let (secs, rounds, connections) = (if quick { 2 } else { 5 }, if quick { 1 } else { 3 }, 16);
    let (mut podman_rps, mut publish_rps, mut nginx_rps) = (Vec::new(), Vec::new(), Vec::new());
    let (mut skiff_mem, mut nginx_mem) = (Vec::new(), Vec::new());
    let mut errors = 0;
    for round in 0..rounds {
        let port = free_port();
        let id = run_container(&p, Runtime::SkiffOci, "localhost/static-website", port);
        wait_https(port);
        let (rps, e) = wrk(SocketAddr::from(([127, 0, 0, 1], port)), connections, secs);
        skiff_mem.push(container_memory(&p, &id));
        p.ok(Runtime::Runc, &["rm", "-f", "-t", "5", &id]);
        eprintln!("  round {}: static-website under podman -p: {rps:.0} req/s, {e} errors", round + 1);
        podman_rps.push(rps);
        errors += e;

        let port = free_port();
        let log = dir.join("publish.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(&tender)
            .args(["--net", "service=user", "--timeout", "600s", "--publish", &format!("127.0.0.1:{port}:443")])
            .arg(&website)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start the tender");
        let guard = Guard(child);
        wait_https(port);
        let (rps, e) = wrk(SocketAddr::from(([127, 0, 0, 1], port)), connections, secs);
        drop(guard);
        eprintln!("  round {}: static-website under --publish: {rps:.0} req/s, {e} errors", round + 1);
        publish_rps.push(rps);
        errors += e;

        let port = free_port();
        let id = run_container(&p, Runtime::Runc, "localhost/nginx-light", port);
        wait_https(port);
        let (rps, e) = wrk(SocketAddr::from(([127, 0, 0, 1], port)), connections, secs);
        nginx_mem.push(container_memory(&p, &id));
        p.ok(Runtime::Runc, &["rm", "-f", "-t", "5", &id]);
        eprintln!("  round {}: nginx under podman -p (runc): {rps:.0} req/s, {e} errors", round + 1);
        nginx_rps.push(rps);
        errors += e;
    }
    let mem_median = |v: &[(u64, u64)], which: fn(&(u64, u64)) -> u64| {
        let mut x: Vec<u64> = v.iter().map(which).collect();
        x.sort();
        x[x.len() / 2]
    };
    println!("\n## Memory per running container, after {secs} s of 1 KiB HTTPS load (median of {rounds})\n");
    println!("| container | processes' resident set, MiB | cgroup memory usage, MiB |");
    println!("| --- | ---: | ---: |");
    for (name, v) in [
        ("static-website, skiff-oci (tender + guest memory touched)", &skiff_mem),
        ("nginx-light, runc (master + 1 worker)", &nginx_mem),
    ] {
        println!("| {name} | {} | {} |", mib(mem_median(v, |m| m.0)), mib(mem_median(v, |m| m.1)));
    }
    println!(
        "| skiff-oci / runc | {:.2} | {:.2} |",
        mem_median(&skiff_mem, |m| m.0) as f64 / mem_median(&nginx_mem, |m| m.0) as f64,
        mem_median(&skiff_mem, |m| m.1) as f64 / mem_median(&nginx_mem, |m| m.1) as f64
    );
    let (pr, sr, nr) = (median(podman_rps), median(publish_rps), median(nginx_rps));
    println!("\n## 1 KiB HTTPS requests per second, keep-alive, {connections} connections (median of {rounds})\n");
    println!(
        "| static-website via podman -p (skiff-oci) | static-website via --publish | podman -p / --publish | nginx via podman -p (runc) |"
    );
    println!("| ---: | ---: | ---: | ---: |");
    println!("| {pr:.0} | {sr:.0} | {:.2} | {nr:.0} |", pr / sr);
    println!("errors: {errors}");
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}
