//! Cold start and density: examples/static-website under the static
//! release tender on the user network against nginx (one worker) serving
//! the same files with the same certificate, both started the same way, in
//! the same run.
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
//! Density: N instances spawned at once (Skiff with `--mem 16M`, each with
//! its own published port), the time until every one has answered an
//! HTTPS request, the host memory they hold (sum of RSS and of PSS from
//! `/proc/PID/smaps_rollup`, and the fall of `MemAvailable`), and the CPU
//! all of them use while idle for 10 s. The same for N nginx instances
//! (master and one worker each). The benchmark raises its own
//! `RLIMIT_NOFILE` soft limit to the hard limit first.
//!
//! `cargo run --release -p skiff-bench --bin cold [-- density 50 200 500]`
//! (root for nginx's user, KVM, nginx-light, openssl).

use skiff_bench::{Linking, cpu_seconds, guest, make_cert, percentile, release_tender, workspace};
use skiff_testnet::{Guard, require_kvm, require_program, wait_for};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A TLS client that takes the benchmark's self-signed certificate.
fn tls_config() -> Arc<rustls::ClientConfig> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    #[derive(Debug)]
    struct Any(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Any(provider)))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every request is a full handshake, as a new client's would be.
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

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
    (&head == b"HTTP/1.1 200").then(|| Timed { connected, handshake, answer: start.elapsed() })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// The two servers under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Skiff,
    Nginx,
}

/// What both servers need.
struct Setup {
    tender: PathBuf,
    image: PathBuf,
    cert: String,
    key: String,
    cert_paths: skiff_bench::Cert,
    dir: PathBuf,
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

/// One cold start: the client first, then the spawn; the time from the
/// spawn to the first 200.
fn cold_start(setup: &Setup, kind: Kind, config: &Arc<rustls::ClientConfig>, n: usize) -> Timed {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<Instant>();
    let config = config.clone();
    let client = std::thread::spawn(move || {
        let start = go_rx.recv().expect("the start");
        loop {
            if let Some(t) = https_get_timed(addr, &config, start) {
                return Some(t);
            }
            if start.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let mut cmd = setup.command(kind, port, "32M", n);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let start = Instant::now();
    let child = Guard(cmd.spawn().expect("spawn"));
    go_tx.send(start).expect("the client");
    let took = client.join().expect("the client thread");
    stop(child);
    took.unwrap_or_else(|| panic!("{kind:?} gave no 200 within 10 s of its start"))
}

fn cold(setup: &Setup, starts: usize) {
    let config = tls_config();
    // One start of each first, to warm the page cache.
    cold_start(setup, Kind::Skiff, &config, 0);
    cold_start(setup, Kind::Nginx, &config, 0);
    let (mut skiff, mut nginx) = (Vec::new(), Vec::new());
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for i in 0..starts {
        skiff.push(cold_start(setup, Kind::Skiff, &config, i));
        nginx.push(cold_start(setup, Kind::Nginx, &config, i));
        let (s, n) = (skiff[i], nginx[i]);
        eprintln!(
            "  start {}: skiff {:.1} ms (connected {:.1}, handshake done {:.1}), nginx {:.1} ms (connected {:.1}, \
             handshake done {:.1})",
            i + 1,
            ms(s.answer),
            ms(s.connected),
            ms(s.handshake),
            ms(n.answer),
            ms(n.connected),
            ms(n.handshake)
        );
    }
    let sorted = |v: &[Timed], f: fn(&Timed) -> Duration| {
        let mut d: Vec<Duration> = v.iter().map(f).collect();
        d.sort();
        d
    };
    let f = |d: Duration| format!("{:.1}", ms(d));
    println!("## Cold start to the first HTTPS 200 ({starts} starts each, alternating)");
    println!();
    println!("| server | first 200 median ms | p90 ms | min - max ms | connected (median) | handshake done (median) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, v) in [("Skiff (static tender, user network)", &skiff), ("nginx (1 worker)", &nginx)] {
        let a = sorted(v, |t| t.answer);
        println!(
            "| {name} | {} | {} | {} - {} | {} | {} |",
            f(percentile(&a, 50)),
            f(percentile(&a, 90)),
            f(a[0]),
            f(a[a.len() - 1]),
            f(percentile(&sorted(v, |t| t.connected), 50)),
            f(percentile(&sorted(v, |t| t.handshake), 50)),
        );
    }
    let (s, n) = (sorted(&skiff, |t| t.answer), sorted(&nginx, |t| t.answer));
    let ratio = |p| percentile(&s, p).as_secs_f64() / percentile(&n, p).as_secs_f64();
    println!("| Skiff / nginx | {:.2} | {:.2} | | | |", ratio(50), ratio(90));
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
    let config = tls_config();
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
    let setup = Setup {
        tender,
        image,
        cert: std::fs::read_to_string(&cert_paths.cert).expect("cert"),
        key: std::fs::read_to_string(&cert_paths.key).expect("key"),
        cert_paths,
        dir: dir.clone(),
    };
    if args.first().map(String::as_str) == Some("density") {
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
        };
        let text = std::fs::read_to_string(setup.nginx_conf(4443, 7)).unwrap();
        assert!(text.contains("listen 127.0.0.1:4443 ssl;"), "{text}");
        assert!(text.contains("worker_processes 1;"), "{text}");
        assert!(text.contains(&format!("{}", dir.join("nginx-7").display())));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
