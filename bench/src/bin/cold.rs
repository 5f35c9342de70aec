//! Cold start and density: examples/static-website under the static
//! release tender on the user network against nginx (one worker) serving
//! the same files with the same certificate, both started the same way, in
//! the same run; and, for the cold start, both as containers under podman.
//!
//! ```text
//! cold [STARTS]          cold start to the first HTTPS 200 (default 20 starts each)
//! cold density N [N...]  N instances of each at once (default 50 200 500)
//! ```
//!
//! Cold start: a client thread is started first; it connects to the
//! published port at once and, on any failure, again a millisecond later,
//! until it reads `HTTP/1.1 200`; then the server is spawned. The time is
//! from just before the spawn to the 200. Skiff runs as
//! `skiff-tender --mem 32M --net service=user --publish 127.0.0.1:P:443`,
//! nginx as `nginx -g 'daemon off;'` with `worker_processes 1` listening on
//! 127.0.0.1:P; the two alternate.
//!
//! Containers (when run as root with podman, runc and iptables; otherwise
//! one line says why they are left out): the same client against
//! `podman run -d -p 127.0.0.1:P:443` of the oci benchmark's nginx image
//! (the host's nginx-light and its libraries, the same site, certificate
//! and one worker, `podman import`ed) with runc, and of the website's
//! `skiff package` image (`podman load`) with the built skiff-oci as
//! `--runtime`, `org.skiff.mem=32M` and the same `--cert`/`--key` as the
//! guest's arguments; the time from the spawn of `podman run` to the first
//! 200. Each container is removed (`podman rm -f`) after its start, the
//! benchmark's podman store (rootful, of its own, as the oci benchmark's)
//! at the end. All four alternate.
//!
//! Density: N instances spawned at once (Skiff with `--mem 16M`, each with
//! its own published port), the time until every one has answered an
//! HTTPS request, the host memory they hold (sum of RSS and of PSS from
//! `/proc/PID/smaps_rollup`, and the fall of `MemAvailable`), and the CPU
//! all of them use while idle for 10 s. The same for N nginx instances
//! (master and one worker each). The benchmark raises its own
//! `RLIMIT_NOFILE` soft limit to the hard limit first.
//!
//! `cargo run --release -p skiff-bench --bin cold [-- density 50 200 500]`
//! (root for nginx's user and podman, KVM, nginx-light, openssl; podman,
//! runc, conmon, netavark and iptables from `scripts/setup` for the
//! container rows).

use skiff_bench::{
    Linking, Podman, Runtime, cpu_seconds, guest, load_skiff, make_cert, make_nginx, percentile, podman_unavailable,
    release_runtime, release_tender, workspace,
};
use skiff_testnet::{Guard, require_kvm, require_program, wait_for};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One HTTPS GET of `/`; true when the answer starts `HTTP/1.1 200`.
fn https_200(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> bool {
    https_get_timed(addr, config, Instant::now()).is_some()
}

/// When (after `start`) a successful GET had connected, finished its
/// handshake, and read `HTTP/1.1 200`.
#[derive(Clone, Copy, Debug)]
struct Timed {
    connected: Duration,
    handshake: Duration,
    answer: Duration,
    /// For a container, when `podman run -d` returned (the container
    /// running).
    podman_returned: Option<Duration>,
}

/// One HTTPS GET of `/`, timed from `start`; `None` unless the answer
/// starts `HTTP/1.1 200`.
fn https_get_timed(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, start: Instant) -> Option<Timed> {
    let mut sock = TcpStream::connect(addr).ok()?;
    let connected = start.elapsed();
    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = sock.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    let mut conn = rustls::ClientConnection::new(config.clone(), name).ok()?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).ok()?;
    }
    let handshake = start.elapsed();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).ok()?;
    (&head == b"HTTP/1.1 200").then(|| Timed { connected, handshake, answer: start.elapsed(), podman_returned: None })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// The servers under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// The static tender on the user network.
    Skiff,
    /// nginx with one worker.
    Nginx,
    /// `podman run -d` of the nginx image with runc.
    NginxContainer,
    /// `podman run -d` of the website's image with skiff-oci.
    SkiffContainer,
}

impl Kind {
    fn is_container(self) -> bool {
        matches!(self, Kind::NginxContainer | Kind::SkiffContainer)
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Skiff => "Skiff (static tender, user network)",
            Kind::Nginx => "nginx (1 worker)",
            Kind::NginxContainer => "nginx container (`podman run -d -p`, runc)",
            Kind::SkiffContainer => "Skiff container (`podman run -d -p`, skiff-oci)",
        }
    }
}

/// The website's image in the podman store.
const SKIFF_IMAGE: &str = "localhost/static-website";
/// The nginx image [`make_nginx`] imports.
const NGINX_IMAGE: &str = "localhost/nginx-light";

/// What both servers need.
struct Setup {
    tender: PathBuf,
    image: PathBuf,
    cert: String,
    key: String,
    cert_paths: skiff_bench::Cert,
    dir: PathBuf,
    /// The benchmark's podman store with both images, when podman can run.
    podman: Option<Podman>,
}

impl Setup {
    /// The command that starts one instance of `kind` on 127.0.0.1:`port`.
    fn command(&self, kind: Kind, port: u16, mem: &str, n: usize) -> Command {
        match kind {
            Kind::Skiff => {
                let mut c = Command::new(&self.tender);
                c.args(["--mem", mem, "--net", "service=user", "--timeout", "3600s", "--publish"])
                    .arg(format!("127.0.0.1:{port}:443"))
                    .arg(&self.image)
                    .arg("--")
                    .arg("--cert")
                    .arg(&self.cert)
                    .arg("--key")
                    .arg(&self.key);
                skiff_tender::sys::unblock_stop_signals_on_exec(&mut c);
                c
            }
            Kind::Nginx => {
                let conf = self.nginx_conf(port, n);
                let mut c = Command::new("nginx");
                c.arg("-c").arg(conf).args(["-g", "daemon off;"]);
                c
            }
            Kind::NginxContainer | Kind::SkiffContainer => {
                let p = self.podman.as_ref().expect("the podman store");
                let publish = format!("127.0.0.1:{port}:443");
                let mut c = if kind == Kind::NginxContainer {
                    let mut c = p.run(Runtime::Runc);
                    c.args(["-d", "-p", &publish, NGINX_IMAGE]);
                    c
                } else {
                    let mut c = p.run(Runtime::SkiffOci);
                    c.args(["-d", "-p", &publish, "--annotation"])
                        .arg(format!("{}={mem}", skiff_oci::spec::ANNOTATION_MEM))
                        .arg(SKIFF_IMAGE)
                        .arg("--cert")
                        .arg(&self.cert)
                        .arg("--key")
                        .arg(&self.key);
                    c
                };
                skiff_tender::sys::unblock_stop_signals_on_exec(&mut c);
                c
            }
        }
    }

    /// An nginx configuration for one instance on `port` (prefix of its
    /// own, one worker, the site and certificate the guest serves).
    fn nginx_conf(&self, port: u16, n: usize) -> PathBuf {
        let prefix = self.dir.join(format!("nginx-{n}"));
        std::fs::create_dir_all(prefix.join("logs")).expect("nginx prefix");
        let site = workspace().join("examples/static-website/site");
        let conf = format!(
            "user root;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nodelay on;\n  \
             types {{ text/html html; text/css css; image/png png; image/svg+xml svg; \
             application/javascript js; text/plain txt; }}\n\
             client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n  \
             fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n\
             server {{\n    listen 127.0.0.1:{port} ssl;\n    root {site};\n\
             ssl_certificate {cert};\n    ssl_certificate_key {key};\n    ssl_protocols TLSv1.2 TLSv1.3;\n  }}\n}}\n",
            prefix = prefix.display(),
            site = site.display(),
            cert = self.cert_paths.cert.display(),
            key = self.cert_paths.key.display(),
        );
        let path = prefix.join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        path
    }
}

/// Stops an instance as a supervisor would: SIGTERM, then waits (nginx's
/// master stops its worker; the tender ends the guest).
fn stop(mut g: Guard) {
    let pid = g.0.id() as libc::pid_t;
    // SAFETY: kill takes plain integers; the pid is our unreaped child's.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if wait_for(Duration::from_secs(10), || g.0.try_wait().ok().flatten()).is_none() {
        eprintln!("  pid {pid} did not stop within 10 s of SIGTERM; killed");
    }
}

/// `podman run -d`'s outcome: the container's id, or why it failed.
fn container_id(podman: Child) -> Result<String, String> {
    let out = podman.wait_with_output().map_err(|e| format!("waiting for podman: {e}"))?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !id.is_empty() {
        Ok(id)
    } else {
        Err(format!("podman run failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// One cold start: the client first, then the spawn; the time from the
/// spawn to the first 200. A container is removed after its start.
fn cold_start(setup: &Setup, kind: Kind, config: &Arc<rustls::ClientConfig>, n: usize) -> Timed {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<Instant>();
    let give_up = Arc::new(AtomicBool::new(false));
    let config = config.clone();
    let client = std::thread::spawn({
        let give_up = give_up.clone();
        move || {
            let start = go_rx.recv().expect("the start");
            loop {
                if let Some(t) = https_get_timed(addr, &config, start) {
                    return Some(t);
                }
                if start.elapsed() > Duration::from_secs(10) || give_up.load(Ordering::Relaxed) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let mut cmd = setup.command(kind, port, "32M", n);
    let output = if kind.is_container() { Stdio::piped } else { Stdio::null };
    cmd.stdin(Stdio::null()).stdout(output()).stderr(output());
    let start = Instant::now();
    let child = cmd.spawn().expect("spawn");
    go_tx.send(start).expect("the client");
    if kind.is_container() {
        // `podman run -d` ends once the container runs; its id is printed.
        let id = container_id(child);
        let returned = start.elapsed();
        if id.is_err() {
            give_up.store(true, Ordering::Relaxed);
        }
        let took = client.join().expect("the client thread");
        let id = id.unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
        let p = setup.podman.as_ref().expect("the podman store");
        let runtime = if kind == Kind::SkiffContainer { Runtime::SkiffOci } else { Runtime::Runc };
        p.ok(runtime, &["rm", "-f", "-t", "10", &id]);
        let took = took.unwrap_or_else(|| panic!("{} gave no 200 within 10 s of `podman run`", kind.name()));
        Timed { podman_returned: Some(returned), ..took }
    } else {
        let child = Guard(child);
        let took = client.join().expect("the client thread");
        stop(child);
        took.unwrap_or_else(|| panic!("{kind:?} gave no 200 within 10 s of its start"))
    }
}

fn cold(setup: &Setup, starts: usize) {
    let config = skiff_testnet::tls::any_certificate();
    let mut kinds = vec![Kind::Skiff, Kind::Nginx];
    if setup.podman.is_some() {
        kinds.extend([Kind::SkiffContainer, Kind::NginxContainer]);
    }
    // One start of each first, to warm the page cache.
    for &kind in &kinds {
        cold_start(setup, kind, &config, 0);
    }
    let mut times: Vec<Vec<Timed>> = vec![Vec::new(); kinds.len()];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for i in 0..starts {
        let mut line = format!("  start {}:", i + 1);
        for (k, &kind) in kinds.iter().enumerate() {
            let t = cold_start(setup, kind, &config, i);
            times[k].push(t);
            line += &format!(
                " {kind:?} {:.1} ms (connected {:.1}, handshake done {:.1}{});",
                ms(t.answer),
                ms(t.connected),
                ms(t.handshake),
                t.podman_returned.map(|r| format!(", podman run returned {:.1}", ms(r))).unwrap_or_default()
            );
        }
        eprintln!("{line}");
    }
    let sorted = |v: &[Timed], f: fn(&Timed) -> Duration| {
        let mut d: Vec<Duration> = v.iter().map(f).collect();
        d.sort();
        d
    };
    let f = |d: Duration| format!("{:.1}", ms(d));
    println!("## Cold start to the first HTTPS 200 ({starts} starts each, alternating)");
    println!();
    println!(
        "| server | first 200 median ms | p90 ms | min - max ms | connected (median) | handshake done (median) | \
         `podman run -d` returned (median) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (kind, v) in kinds.iter().zip(&times) {
        let a = sorted(v, |t| t.answer);
        let returned = if kind.is_container() {
            f(percentile(&sorted(v, |t| t.podman_returned.unwrap_or_default()), 50))
        } else {
            String::new()
        };
        println!(
            "| {} | {} | {} | {} - {} | {} | {} | {returned} |",
            kind.name(),
            f(percentile(&a, 50)),
            f(percentile(&a, 90)),
            f(a[0]),
            f(a[a.len() - 1]),
            f(percentile(&sorted(v, |t| t.connected), 50)),
            f(percentile(&sorted(v, |t| t.handshake), 50)),
        );
    }
    let of = |kind: Kind| kinds.iter().position(|&k| k == kind).map(|i| sorted(&times[i], |t| t.answer));
    for (name, a, b) in [
        ("Skiff / nginx", Kind::Skiff, Kind::Nginx),
        ("Skiff container / nginx container", Kind::SkiffContainer, Kind::NginxContainer),
        ("Skiff / nginx container", Kind::Skiff, Kind::NginxContainer),
    ] {
        if let (Some(s), Some(n)) = (of(a), of(b)) {
            let ratio = |p| percentile(&s, p).as_secs_f64() / percentile(&n, p).as_secs_f64();
            println!("| {name} | {:.2} | {:.2} | | | | |", ratio(50), ratio(90));
        }
    }
}

/// `MemAvailable` from `/proc/meminfo`, bytes.
fn mem_available() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `Rss` and `Pss` of a process from `/proc/PID/smaps_rollup`, bytes.
fn rss_pss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("Rss:"), field("Pss:"))
}

/// `n` distinct free ports below the kernel's ephemeral range (so no
/// client connection's own port takes one before its server binds it):
/// from 20000 up, each checked by binding it.
fn density_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> =
        (20000..32768).filter_map(|p| TcpListener::bind(("127.0.0.1", p)).ok()).take(n).collect();
    assert_eq!(held.len(), n, "not enough free ports in 20000..32768");
    held.iter().map(|l| l.local_addr().expect("a bound port").port()).collect()
}

/// What one density run measured.
struct Density {
    all_answer: Duration,
    processes: usize,
    rss: u64,
    pss: u64,
    available_drop: u64,
    idle_cpu: f64,
    stop: Duration,
    clean: usize,
}

fn density(setup: &Setup, kind: Kind, n: usize) -> Density {
    let config = skiff_testnet::tls::any_certificate();
    let ports = density_ports(n);
    let mut cmds: Vec<Command> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let mut c = setup.command(kind, p, "16M", i);
            c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
            c
        })
        .collect();
    // Settle the page cache's and slab's accounting before the baseline.
    std::thread::sleep(Duration::from_millis(500));
    let available_before = mem_available();
    let start = Instant::now();
    let mut children: Vec<Guard> = cmds.iter_mut().map(|c| Guard(c.spawn().expect("spawn"))).collect();
    // Clients: a few threads, each polling its share of the ports until
    // every one has answered once.
    let threads = 8.min(n);
    let answered: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (ports, config) = (&ports, &config);
                s.spawn(move || {
                    let mine: Vec<u16> = ports.iter().copied().skip(t).step_by(threads).collect();
                    let mut pending: Vec<u16> = mine;
                    let mut times = Vec::new();
                    while !pending.is_empty() && start.elapsed() < Duration::from_secs(120) {
                        pending.retain(|&p| {
                            if https_200(([127, 0, 0, 1], p).into(), config) {
                                times.push(start.elapsed());
                                false
                            } else {
                                true
                            }
                        });
                        if !pending.is_empty() {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    assert!(pending.is_empty(), "{} instances never answered: ports {pending:?}", pending.len());
                    times
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a client thread")).collect()
    });
    let all_answer = answered.iter().flatten().max().copied().unwrap_or_default();
    for c in &mut children {
        if let Ok(Some(status)) = c.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = c.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("an instance ended early ({status}):\n{err}");
        }
    }
    // All processes: the tenders, or nginx's masters and their workers.
    let mut pids: Vec<u32> = children.iter().map(|c| c.0.id()).collect();
    if kind == Kind::Nginx {
        let masters = pids.clone();
        for m in masters {
            pids.extend(skiff_bench::children(m));
        }
    }
    // Let the start-up work settle, then measure memory and idle CPU.
    std::thread::sleep(Duration::from_secs(2));
    let (mut rss, mut pss) = (0, 0);
    for &p in &pids {
        let (r, s) = rss_pss(p);
        rss += r;
        pss += s;
    }
    let available_drop = available_before.saturating_sub(mem_available());
    let cpu_before: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
    let idle_start = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let cpu_after: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
    let idle_cpu = (cpu_after - cpu_before) / idle_start.elapsed().as_secs_f64();
    // Stop all at once with SIGTERM and count clean exits.
    let stop_start = Instant::now();
    for c in &children {
        // SAFETY: kill takes plain integers; the pid is our unreaped child's.
        unsafe { libc::kill(c.0.id() as libc::pid_t, libc::SIGTERM) };
    }
    let mut clean = 0;
    for c in &mut children {
        let status = wait_for(Duration::from_secs(30), || c.0.try_wait().ok().flatten());
        if status.is_some_and(|s| s.code() == Some(0)) {
            clean += 1;
        }
    }
    let stop = stop_start.elapsed();
    Density { all_answer, processes: pids.len(), rss, pss, available_drop, idle_cpu, stop, clean }
}

fn density_table(setup: &Setup, counts: &[usize]) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("## Density: N instances started at once (Skiff --mem 16M; nginx master and 1 worker)");
    println!();
    println!(
        "| N | server | all answer HTTPS | processes | RSS total | PSS total | MemAvailable drop | \
         PSS per instance | idle CPU (all, 10 s) | SIGTERM to all stopped | exit 0 |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &n in counts {
        for kind in [Kind::Skiff, Kind::Nginx] {
            eprintln!("  {n} x {kind:?}");
            let d = density(setup, kind, n);
            println!(
                "| {n} | {} | {:.2} s | {} | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:.2} MiB | {:.1}% of a core | {:.2} s | {}/{n} |",
                if kind == Kind::Skiff { "Skiff" } else { "nginx" },
                d.all_answer.as_secs_f64(),
                d.processes,
                mib(d.rss),
                mib(d.pss),
                mib(d.available_drop),
                mib(d.pss) / n as f64,
                d.idle_cpu * 100.0,
                d.stop.as_secs_f64(),
                d.clean,
            );
            // Let the host reclaim before the next set.
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// Raises this process's (and so its children's) open-file soft limit to
/// the hard limit; returns it.
fn raise_nofile() -> u64 {
    // SAFETY: a zeroed rlimit is a valid out-parameter.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes into `lim`, which lives here.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads `lim`, which lives here.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    lim.rlim_cur
}

fn main() {
    skiff_bench::tear_down_on_signal();
    require_kvm();
    require_program("nginx", "nginx-light");
    require_program("openssl", "openssl");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nofile = raise_nofile();
    let tender = release_tender(Linking::Static);
    let image = guest("examples/static-website");
    let dir = std::env::temp_dir().join(format!("skiff-bench-cold-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let cert_paths = make_cert(&dir, "127.0.0.1");
    let density = args.first().map(String::as_str) == Some("density");
    let podman = if density {
        None
    } else if let Some(why) = podman_unavailable() {
        eprintln!("the container rows are left out: {why}");
        None
    } else {
        let p = Podman::new(&dir, release_runtime());
        load_skiff(&p, &dir, &image, SKIFF_IMAGE);
        make_nginx(&p, &dir, &cert_paths);
        Some(p)
    };
    let setup = Setup {
        tender,
        image,
        cert: std::fs::read_to_string(&cert_paths.cert).expect("cert"),
        key: std::fs::read_to_string(&cert_paths.key).expect("key"),
        cert_paths,
        dir: dir.clone(),
        podman,
    };
    if density {
        let counts: Vec<usize> = if args.len() > 1 {
            args[1..].iter().map(|a| a.parse().expect("a count")).collect()
        } else {
            vec![50, 200, 500]
        };
        eprintln!("density benchmark: {counts:?} instances, open-file limit {nofile}");
        density_table(&setup, &counts);
    } else {
        let starts = args.first().map_or(20, |a| a.parse().expect("a number of starts"));
        eprintln!("cold-start benchmark: {starts} starts of each, alternating");
        cold(&setup, starts);
    }
    // The podman store first (its containers, images and firewall rules).
    drop(setup);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_configuration_names_the_port_and_one_worker() {
        let dir = std::env::temp_dir().join(format!("skiff-bench-cold-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = skiff_bench::Cert { cert: dir.join("c.pem"), key: dir.join("k.pem") };
        let setup = Setup {
            tender: PathBuf::new(),
            image: PathBuf::new(),
            cert: String::new(),
            key: String::new(),
            cert_paths: cert,
            dir: dir.clone(),
            podman: None,
        };
        let text = std::fs::read_to_string(setup.nginx_conf(4443, 7)).unwrap();
        assert!(text.contains("listen 127.0.0.1:4443 ssl;"), "{text}");
        assert!(text.contains("worker_processes 1;"), "{text}");
        assert!(text.contains(&format!("{}", dir.join("nginx-7").display())));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_container_id_or_podmans_error_is_read() {
        let spawn = |script: &str| {
            Command::new("sh").args(["-c", script]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        };
        assert_eq!(container_id(spawn("echo 4f2a9c")), Ok("4f2a9c".to_string()));
        let e = container_id(spawn("echo 'Error: no such image' >&2; exit 125")).unwrap_err();
        assert!(e.contains("125") && e.contains("Error: no such image"), "{e}");
        // A zero status that printed no id is a failure too.
        assert!(container_id(spawn("true")).is_err());
    }
}
