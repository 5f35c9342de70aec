//! HTTP and HTTPS benchmark: examples/static-website against nginx serving
//! the same files with the same certificate, behind identical TAP set-ups,
//! in the same run (see `net.rs` for the set-up):
//!
//! ```text
//! skiff:  [client ns] wrk -> tap0 10.0.0.1 ==TAP== skiff-tender -- static-website 10.0.0.2
//! nginx:  [client ns] wrk -> tap0 10.0.0.1 ==TAP== forwarder ==TAP== tap1 10.0.0.2 [server ns] nginx
//! ```
//!
//! Measures requests per second and latency (wrk) for a 1 KiB and a
//! 100 KiB file over HTTP keep-alive and over HTTPS keep-alive, with 16 and
//! 256 connections; new TLS handshakes per second (no resumption: a
//! connection per request, both servers with session caches and tickets
//! off); the image size without the site's content; and the smallest
//! `--mem` that serves 256 HTTPS connections.
//!
//! nginx runs one worker process, as the unikernel runs on one vCPU.
//!
//! `cargo run --release -p skiff-bench --bin http` (root, KVM, wrk, nginx).
//! `SKIFF_BENCH_ONLY=handshakes` measures only the new-handshake row
//! (three rounds of 5 s each, Skiff and nginx alternating, every round's
//! ratio printed); `SKIFF_BENCH_PROFILE=PREFIX` then also profiles the guest
//! in each round (folded stacks in `PREFIX-N.folded`; in the other modes,
//! `PREFIX-run-N.folded` per run, with `--stats`).

use skiff_bench::{
    Linking, Wrk, client_ns, guest, median_wrk as median, release_tender, start_linux, start_logged, workspace, wrk,
};
use skiff_testnet::{Guard, NetNs, require_kvm, require_program, require_root, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const GUEST: &str = "10.0.0.2";

struct Skiff {
    ns: NetNs,
    guest: Guard,
    log: PathBuf,
}

fn start_skiff(tender: &Path, image: &Path, cert: &skiff_bench::Cert, mem: &str, extra: &[&str]) -> Skiff {
    start_skiff_with(tender, image, cert, mem, None, extra)
}

/// CPU time spent during one wrk run, seconds.
struct CpuSpent {
    /// The server's processes (`server` pids), and this process's own
    /// threads (the nginx set-up's TAP forwarder; idle otherwise).
    server: f64,
    /// wrk (the children reaped meanwhile).
    client: f64,
}

fn own_cpu(who: libc::c_int) -> f64 {
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` lives across the call.
    unsafe { libc::getrusage(who, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Runs `f` (a wrk run) and measures the CPU time the server processes
/// `pids`, this process and wrk spent meanwhile.
fn wrk_with_cpu(pids: &[u32], f: impl FnOnce() -> skiff_bench::Wrk) -> (skiff_bench::Wrk, CpuSpent) {
    let server = || pids.iter().map(|&p| skiff_bench::cpu_seconds(p)).sum::<f64>() + own_cpu(libc::RUSAGE_SELF);
    let (s0, c0) = (server(), own_cpu(libc::RUSAGE_CHILDREN));
    let w = f();
    let cpu = CpuSpent { server: server() - s0, client: own_cpu(libc::RUSAGE_CHILDREN) - c0 };
    (w, cpu)
}

/// [`start_skiff`], with the guest profiled into `profile` if given.
fn start_skiff_with(
    tender: &Path,
    image: &Path,
    cert: &skiff_bench::Cert,
    mem: &str,
    profile: Option<&str>,
    extra: &[&str],
) -> Skiff {
    let ns = client_ns();
    let mut cmd = ns.command(tender);
    cmd.args(["--net", "service=tap0", "--mem", mem, "--timeout", "600s"]);
    // A profile file for this run, or SKIFF_BENCH_PROFILE=PREFIX: the
    // guest's profile (PREFIX-run-N.folded, the first N not taken) and
    // --stats of each run (written when the run is dropped: SIGTERM).
    let numbered = || {
        let prefix = std::env::var("SKIFF_BENCH_PROFILE").ok()?;
        (0..).map(|n| format!("{prefix}-run-{n}.folded")).find(|f| !Path::new(f).exists())
    };
    if let Some(file) = profile.map(str::to_string).or_else(numbered) {
        cmd.arg("--stats").arg("--profile").arg(file);
    }
    cmd.arg(image)
        .arg("--")
        .args(["--ipv4", "10.0.0.2/24", "--http", "serve"])
        .arg("--cert")
        .arg(std::fs::read_to_string(&cert.cert).unwrap())
        .arg("--key")
        .arg(std::fs::read_to_string(&cert.key).unwrap())
        .args(extra);
    let (guest, log, _) = start_logged(cmd, &format!("http-{}", ns.name()), "static-website:");
    Skiff { ns, guest, log }
}

impl Drop for Skiff {
    /// SIGTERM first, so the tender writes its profile and statistics.
    fn drop(&mut self) {
        // SAFETY: kill has no memory effects; the pid is our child's.
        unsafe { libc::kill(self.guest.0.id() as libc::pid_t, libc::SIGTERM) };
        let _ = wait_for(Duration::from_secs(10), || self.guest.0.try_wait().ok().flatten());
        if std::env::var_os("SKIFF_BENCH_PROFILE").is_some()
            && let Some(stats) = self.log().find("skiff-tender stats").map(|at| self.log()[at..].to_string())
        {
            eprintln!("{stats}");
        }
    }
}

impl Skiff {
    fn alive(&mut self) -> bool {
        self.guest.0.try_wait().ok().flatten().is_none()
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// nginx in the server namespace, serving the site on 80 and 443.
struct Nginx {
    _child: Guard,
}

fn start_nginx(server: &NetNs, cert: &skiff_bench::Cert, dir: &Path, resumption: bool) -> Nginx {
    let site = workspace().join("examples/static-website/site");
    let prefix = dir.join(format!("nginx-{}", if resumption { "resume" } else { "full" }));
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let sessions = if resumption {
        "ssl_session_cache shared:SSL:10m; ssl_session_tickets on;"
    } else {
        "ssl_session_cache off; ssl_session_tickets off;"
    };
    let conf = format!(
        "user root;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  tcp_nodelay on;\n\
         keepalive_requests 1000000;\n  keepalive_timeout 60s;\n  types {{ text/html html; text/css css; \
         image/png png; image/svg+xml svg; application/javascript js; text/plain txt; }}\n\
         client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n  \
         fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n\
         server {{\n    listen {GUEST}:80;\n    listen {GUEST}:443 ssl;\n    root {site};\n\
         ssl_certificate {cert};\n    ssl_certificate_key {key};\n    ssl_protocols TLSv1.2 TLSv1.3;\n    \
         {sessions}\n  }}\n}}\n",
        prefix = prefix.display(),
        site = site.display(),
        cert = cert.cert.display(),
        key = cert.key.display(),
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = server
        .command("nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let child = Guard(child);
    // Ready when port 80 answers.
    let ready = wait_for(Duration::from_secs(10), || {
        server.run(|| std::net::TcpStream::connect(format!("{GUEST}:80")).ok()).map(|_| ())
    });
    assert!(
        ready.is_some(),
        "nginx did not start: {}",
        std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default()
    );
    Nginx { _child: child }
}

impl Drop for Nginx {
    /// A fast shutdown through the master, which stops its workers; killing
    /// the master outright would leave them running.
    fn drop(&mut self) {
        let pid = self._child.0.id() as libc::pid_t;
        // SAFETY: kill has no memory effects; the pid is our child's.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let _ = wait_for(Duration::from_secs(5), || self._child.0.try_wait().ok().flatten());
    }
}

/// New TLS handshakes per second, no resumption, 16 clients: one wrk run
/// against Skiff, then one against nginx, `rounds` times; prints each
/// round's ratio and the spread.
fn handshakes_only(tender: &Path, image: &Path, cert: &skiff_bench::Cert, rounds: u32, secs: u32, load_before: &str) {
    let dir = std::env::temp_dir().join(format!("skiff-bench-handshakes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let profile = std::env::var("SKIFF_BENCH_PROFILE").ok();
    let url = format!("https://{GUEST}/bench/1k.html");
    // SKIFF_BENCH_CONNECTIONS=N: N clients instead of 16 (1 shows the
    // latency of one handshake).
    let conns: u32 = std::env::var("SKIFF_BENCH_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let mut rows = Vec::new();
    for round in 1..=rounds {
        let (skiff, skiff_cpu) = {
            let file = profile.as_ref().map(|p| format!("{p}-{round}.folded"));
            let off = ["--tls-resumption", "off"];
            let mut s = start_skiff_with(tender, image, cert, "64M", file.as_deref(), &off);
            let pid = s.guest.0.id();
            let (w, cpu) = wrk_with_cpu(&[pid], || wrk(&s.ns, &url, conns, secs, true));
            assert!(s.alive(), "the website stopped:\n{}", s.log());
            if let Some(f) = &file {
                // SIGTERM ends the guest and writes the profile.
                // SAFETY: kill has no memory effects; the pid is our child's.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                let _ = wait_for(Duration::from_secs(10), || s.guest.0.try_wait().ok().flatten());
                eprintln!("    profile written to {f}");
            }
            (w, cpu)
        };
        let (nginx, nginx_cpu) = {
            let l = start_linux();
            let n = start_nginx(&l.server, cert, &dir, false);
            let workers = skiff_bench::children(n._child.0.id());
            wrk_with_cpu(&workers, || wrk(&l.client, &url, conns, secs, true))
        };
        let per = |cpu: f64, w: &skiff_bench::Wrk| cpu / (w.rps * secs as f64) * 1e6;
        eprintln!(
            "  round {round}, {conns} clients: Skiff {:.0}/s ({} errors, p50 {:.0} us), nginx {:.0}/s ({} errors, p50 {:.0} us), {:.2}",
            skiff.rps,
            skiff.errors,
            skiff.p50_us,
            nginx.rps,
            nginx.errors,
            nginx.p50_us,
            skiff.rps / nginx.rps
        );
        eprintln!(
            "    CPU per connection: Skiff {:.0} us (tender: vCPU and I/O threads), wrk {:.0} us; \
             nginx {:.0} us (worker and the TAP forwarder), wrk {:.0} us",
            per(skiff_cpu.server, &skiff),
            per(skiff_cpu.client, &skiff),
            per(nginx_cpu.server, &nginx),
            per(nginx_cpu.client, &nginx)
        );
        rows.push((skiff, nginx, skiff_cpu, nginx_cpu));
    }
    println!("{}", skiff_bench::load_report(load_before, &skiff_bench::load_average()));
    println!();
    println!(
        "| round ({conns} clients) | Skiff handshakes/s | nginx | Skiff / nginx | CPU per connection: Skiff, its wrk | \
         nginx, its wrk |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for (i, (s, n, sc, nc)) in rows.iter().enumerate() {
        let per = |cpu: f64, w: &skiff_bench::Wrk| cpu / (w.rps * secs as f64) * 1e6;
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.0} us, {:.0} us | {:.0} us, {:.0} us |",
            i + 1,
            s.rps,
            n.rps,
            s.rps / n.rps,
            per(sc.server, s),
            per(sc.client, s),
            per(nc.server, n),
            per(nc.client, n)
        );
    }
    let ratios: Vec<f64> = rows.iter().map(|(s, n, _, _)| s.rps / n.rps).collect();
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(0.0, f64::max);
    println!();
    println!("Skiff / nginx: {min:.2} to {max:.2} (median {:.2})", skiff_bench::median(ratios));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The stripped image size, and the same without the baked site (the
/// store blob the build script wrote).
fn image_sizes(image: &Path) -> (u64, u64) {
    let stripped = std::env::temp_dir().join("skiff-bench-website-stripped");
    let status = Command::new("objcopy").arg("--strip-all").arg(image).arg(&stripped).status().expect("objcopy");
    assert!(status.success());
    let size = std::fs::metadata(&stripped).unwrap().len();
    let build = workspace().join("target/guest/x86_64-unknown-linux-gnu/release/build");
    let blob = std::fs::read_dir(&build)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("out/site.kv"))
        .filter(|p| p.exists())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("the baked site (site.kv) in the guest build directory");
    let blob_len = std::fs::metadata(blob).unwrap().len();
    (size, size - blob_len)
}

fn main() {
    require_root();
    require_kvm();
    require_program("wrk", "wrk");
    require_program("nginx", "nginx-light");
    require_program("openssl", "openssl");
    require_program("objcopy", "binutils");
    let tender = release_tender(Linking::Static);
    let image = guest("examples/static-website");
    let dir = std::env::temp_dir().join(format!("skiff-bench-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = skiff_bench::make_cert(&dir, "10.0.0.2");
    // SKIFF_BENCH_QUICK=1: one short round, for trying changes.
    let quick = std::env::var_os("SKIFF_BENCH_QUICK").is_some();
    let secs = if quick { 2 } else { 5 };
    let rounds = if quick { 1 } else { 3 };
    let load_before = skiff_bench::load_average();
    eprintln!(
        "http benchmark: {rounds} rounds of {secs} s per case, Skiff and nginx alternating; load average {load_before}"
    );

    let cases: [(&str, &str, u32); 8] = [
        ("1 KiB", "http", 16),
        ("1 KiB", "http", 256),
        ("100 KiB", "http", 16),
        ("100 KiB", "http", 256),
        ("1 KiB", "https", 16),
        ("1 KiB", "https", 256),
        ("100 KiB", "https", 16),
        ("100 KiB", "https", 256),
    ];
    let path = |size: &str| if size == "1 KiB" { "/bench/1k.html" } else { "/bench/100k.html" };
    let mut results: Vec<(Vec<Wrk>, Vec<Wrk>)> = vec![(Vec::new(), Vec::new()); cases.len()];
    let (mut hs_skiff, mut hs_nginx) = (Vec::new(), Vec::new());
    // SKIFF_BENCH_ONLY=memory: only the memory search and the image size.
    let only_memory = std::env::var("SKIFF_BENCH_ONLY").is_ok_and(|v| v == "memory");
    // SKIFF_BENCH_ONLY=handshakes: only the new-handshake row.
    if std::env::var("SKIFF_BENCH_ONLY").is_ok_and(|v| v == "handshakes") {
        handshakes_only(&tender, &image, &cert, rounds, secs, &load_before);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    // SKIFF_BENCH_CONNS=16: only the cases with that many connections,
    // and no handshake or memory runs.
    let conns_only: Option<u32> = std::env::var("SKIFF_BENCH_CONNS").ok().and_then(|v| v.parse().ok());
    let wanted = |conns: u32| conns_only.is_none_or(|c| c == conns);
    for round in 0..if only_memory { 0 } else { rounds } {
        eprintln!("  round {}", round + 1);
        // SKIFF_BENCH_BASELINE_TENDER=PATH: the same cases under that
        // tender (an earlier build) too, for before/after figures.
        // SKIFF_BENCH_BASELINE_ARGS: website options for that run only
        // (with the same tender: the effect of an option).
        if let Some(base) = std::env::var_os("SKIFF_BENCH_BASELINE_TENDER") {
            let args = std::env::var("SKIFF_BENCH_BASELINE_ARGS").unwrap_or_default();
            let args: Vec<&str> = args.split_whitespace().collect();
            let mut s = start_skiff(Path::new(&base), &image, &cert, "64M", &args);
            for (size, scheme, conns) in cases.iter().filter(|c| wanted(c.2)) {
                let cpu = skiff_bench::cpu_seconds(s.guest.0.id());
                let w = wrk(&s.ns, &format!("{scheme}://{GUEST}{}", path(size)), *conns, secs, false);
                let cpu = (skiff_bench::cpu_seconds(s.guest.0.id()) - cpu) / (w.rps * f64::from(secs)).max(1.0);
                eprintln!(
                    "    baseline {size} {scheme} {conns}: {:.0} req/s, p99 {:.0} us, tender CPU {:.1} us/request, {} \
                     errors",
                    w.rps,
                    w.p99_us,
                    cpu * 1e6,
                    w.errors
                );
            }
            assert!(s.alive(), "the website stopped:\n{}", s.log());
        }
        {
            let mut s = start_skiff(&tender, &image, &cert, "64M", &[]);
            for (i, (size, scheme, conns)) in cases.iter().enumerate().filter(|(_, c)| wanted(c.2)) {
                let cpu = skiff_bench::cpu_seconds(s.guest.0.id());
                let w = wrk(&s.ns, &format!("{scheme}://{GUEST}{}", path(size)), *conns, secs, false);
                let cpu = (skiff_bench::cpu_seconds(s.guest.0.id()) - cpu) / (w.rps * f64::from(secs)).max(1.0);
                eprintln!("    tender CPU {:.1} us/request", cpu * 1e6);
                eprintln!(
                    "    skiff {size} {scheme} {conns}: {:.0} req/s, p99 {:.0} us, {} errors",
                    w.rps, w.p99_us, w.errors
                );
                results[i].0.push(w);
            }
            assert!(s.alive(), "the website stopped:\n{}", s.log());
        }
        {
            let l = start_linux();
            let _n = start_nginx(&l.server, &cert, &dir, true);
            for (i, (size, scheme, conns)) in cases.iter().enumerate().filter(|(_, c)| wanted(c.2)) {
                let w = wrk(&l.client, &format!("{scheme}://{GUEST}{}", path(size)), *conns, secs, false);
                eprintln!(
                    "    nginx {size} {scheme} {conns}: {:.0} req/s, p99 {:.0} us, {} errors",
                    w.rps, w.p99_us, w.errors
                );
                results[i].1.push(w);
            }
        }
        if conns_only.is_some() {
            continue;
        }
        // New handshakes: one request per connection, no resumption.
        {
            let mut s = start_skiff(&tender, &image, &cert, "64M", &["--tls-resumption", "off"]);
            hs_skiff.push(wrk(&s.ns, &format!("https://{GUEST}/bench/1k.html"), 16, secs, true));
            assert!(s.alive(), "the website stopped:\n{}", s.log());
        }
        {
            let l = start_linux();
            let _n = start_nginx(&l.server, &cert, &dir, false);
            hs_nginx.push(wrk(&l.client, &format!("https://{GUEST}/bench/1k.html"), 16, secs, true));
        }
    }

    // The smallest --mem that serves 256 HTTPS connections at once.
    let mut smallest = None;
    for mem in [8, 10, 12, 14, 16, 20, 24, 32, 48, 64].into_iter().filter(|_| conns_only.is_none()) {
        let mut s = start_skiff(&tender, &image, &cert, &format!("{mem}M"), &[]);
        let w = wrk(&s.ns, &format!("https://{GUEST}/bench/1k.html"), 256, 3, false);
        let ok = s.alive() && w.errors == 0;
        eprintln!(
            "  --mem {mem}M: {} ({} errors, {:.0} requests/s)",
            if ok { "serves" } else { "fails" },
            w.errors,
            w.rps
        );
        if ok {
            smallest = Some(mem);
            break;
        }
    }
    let (size, without) = image_sizes(&image);

    if only_memory {
        println!("image {size} bytes stripped, {without} without the site; smallest --mem {smallest:?} MiB");
        return;
    }
    println!("## HTTP and HTTPS: static-website against nginx (median of {rounds} runs of {secs} s)");
    println!();
    println!("{}", skiff_bench::linux_path());
    println!();
    println!(
        "| file | scheme | connections | Skiff req/s | nginx req/s | Skiff / nginx | Skiff p50 / p99 | nginx p50 / p99 |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (i, (size, scheme, conns)) in cases.iter().enumerate().filter(|(i, _)| !results[*i].0.is_empty()) {
        let (s, n) = (median(results[i].0.clone()), median(results[i].1.clone()));
        println!(
            "| {size} | {scheme} | {conns} | {:.0} | {:.0} | {:.2} | {:.0} / {:.0} us | {:.0} / {:.0} us |",
            s.rps,
            n.rps,
            s.rps / n.rps,
            s.p50_us,
            s.p99_us,
            n.p50_us,
            n.p99_us
        );
    }
    if conns_only.is_some() {
        return;
    }
    let (hs, hn) = (median(hs_skiff), median(hs_nginx));
    println!();
    println!("{}", skiff_bench::load_report(&load_before, &skiff_bench::load_average()));
    println!();
    println!("| new TLS handshakes (no resumption, 16 clients) | Skiff | nginx | Skiff / nginx |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| handshakes + 1 KiB request per second | {:.0} | {:.0} | {:.2} |", hs.rps, hn.rps, hs.rps / hn.rps);
    println!();
    println!("| measure | value | target |");
    println!("| --- | ---: | ---: |");
    println!("| static-website image, stripped | {:.0} KiB | |", size as f64 / 1024.0);
    println!("| the same without the baked site | {:.0} KiB | at most 1536 KiB |", without as f64 / 1024.0);
    match smallest {
        Some(m) => println!("| smallest --mem serving 256 HTTPS connections | {m} MiB | at most 16 MiB |"),
        None => println!("| smallest --mem serving 256 HTTPS connections | over 64 MiB | at most 16 MiB |"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
