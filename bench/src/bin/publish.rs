//! New HTTPS connections per second through `--publish`: the static website
//! on the tender's user network, reached on 127.0.0.1, against nginx
//! listening on 127.0.0.1 itself, in the same run:
//!
//! ```text
//! skiff:  wrk -> 127.0.0.1:P (tender's listener) -> user network relay -> static-website 10.0.2.15:443
//! nginx:  wrk -> 127.0.0.1:Q (nginx, one worker)
//! ```
//!
//! Every request is its own connection (`Connection: close`): a TCP
//! handshake, a full TLS 1.3 handshake (no resumption on either server) and
//! a 1 KiB response. nginx gets the host's loopback directly, the best path
//! a host server has; the ratio is what the unikernel and the user network
//! cost against it. Three rounds alternate the two; medians are printed.
//!
//! `cargo run --release -p skiff-bench --bin publish` (KVM, wrk, nginx-light,
//! openssl).

use skiff_bench::{Linking, guest, release_tender, workspace};
use skiff_testnet::{Guard, require_kvm, require_program, wait_for};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn start_skiff(tender: &Path, image: &Path, cert: &skiff_bench::Cert, log: &Path) -> (Guard, SocketAddr) {
    let port = free_port();
    let file = std::fs::File::create(log).unwrap();
    let child = Command::new(tender)
        .args(["--net", "service=user", "--timeout", "600s", "--publish", &format!("127.0.0.1:{port}:443")])
        .arg(image)
        .arg("--")
        .args(["--tls-resumption", "off", "--https-port", &port.to_string()])
        .arg("--cert")
        .arg(std::fs::read_to_string(&cert.cert).unwrap())
        .arg("--key")
        .arg(std::fs::read_to_string(&cert.key).unwrap())
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("start the tender");
    let guest = Guard(child);
    let up = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(log).ok().filter(|l| l.contains("static-website:")).map(|_| ())
    });
    assert!(up.is_some(), "the website did not come up:\n{}", std::fs::read_to_string(log).unwrap_or_default());
    (guest, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// nginx on 127.0.0.1, one worker, no session cache or tickets.
struct Nginx {
    child: Guard,
    addr: SocketAddr,
}

fn start_nginx(dir: &Path, cert: &skiff_bench::Cert) -> Nginx {
    let site = workspace().join("examples/static-website/site");
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let port = free_port();
    let conf = format!(
        "user root;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  tcp_nodelay on;\n\
         types {{ text/html html; }}\n\
         client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n  \
         fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n\
         server {{\n    listen 127.0.0.1:{port} ssl;\n    root {site};\n\
         ssl_certificate {cert};\n    ssl_certificate_key {key};\n    ssl_protocols TLSv1.2 TLSv1.3;\n    \
         ssl_session_cache off;\n    ssl_session_tickets off;\n  }}\n}}\n",
        prefix = prefix.display(),
        site = site.display(),
        cert = cert.cert.display(),
        key = cert.key.display(),
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new("nginx")
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
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ready = wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(addr).ok().map(|_| ()));
    assert!(
        ready.is_some(),
        "nginx did not start: {}",
        std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default()
    );
    Nginx { child, addr }
}

impl Drop for Nginx {
    /// A fast shutdown through the master, which stops its workers.
    fn drop(&mut self) {
        let pid = self.child.0.id() as libc::pid_t;
        // SAFETY: kill has no memory effects; the pid is our child's.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let _ = wait_for(Duration::from_secs(5), || self.child.0.try_wait().ok().flatten());
    }
}

/// Requests per second and errors of one wrk run, a connection per request.
fn wrk(addr: SocketAddr, connections: u32, secs: u32) -> (f64, u64) {
    let out = Command::new("wrk")
        .args(["-t", "1", "-c", &connections.to_string(), "-d", &format!("{secs}s"), "-H", "Connection: close"])
        .arg(format!("https://{addr}/bench/1k.html"))
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (mut rps, mut errors) = (0.0, 0);
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            errors += v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    if rps == 0.0 {
        eprintln!("    wrk measured nothing for {addr}:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    }
    (rps, errors)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    require_kvm();
    require_program("wrk", "wrk");
    require_program("nginx", "nginx-light");
    require_program("openssl", "openssl");
    let tender = release_tender(Linking::Static);
    let image = guest("examples/static-website");
    let dir = std::env::temp_dir().join(format!("skiff-bench-publish-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = skiff_bench::make_cert(&dir, "127.0.0.1");
    let quick = std::env::var_os("SKIFF_BENCH_QUICK").is_some();
    let (secs, rounds, connections) = (if quick { 2 } else { 5 }, if quick { 1 } else { 3 }, 16);
    eprintln!("publish benchmark: {rounds} rounds of {secs} s, {connections} clients, Skiff and nginx alternating");
    let (mut skiff, mut nginx, mut errors) = (Vec::new(), Vec::new(), (0, 0));
    for round in 0..rounds {
        {
            let log = dir.join(format!("skiff-{round}.log"));
            let (mut g, addr) = start_skiff(&tender, &image, &cert, &log);
            let (rps, e) = wrk(addr, connections, secs);
            assert!(
                g.0.try_wait().ok().flatten().is_none(),
                "the website stopped:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            eprintln!("  round {}: skiff {rps:.0} connections/s, {e} errors", round + 1);
            skiff.push(rps);
            errors.0 += e;
        }
        {
            let n = start_nginx(&dir, &cert);
            let (rps, e) = wrk(n.addr, connections, secs);
            eprintln!("  round {}: nginx {rps:.0} connections/s, {e} errors", round + 1);
            nginx.push(rps);
            errors.1 += e;
        }
    }
    let (s, n) = (median(skiff), median(nginx));
    println!(
        "| new HTTPS connections per second, {connections} clients | Skiff via --publish | nginx on 127.0.0.1 | Skiff / nginx |"
    );
    println!("| --- | ---: | ---: | ---: |");
    println!("| TCP + TLS 1.3 handshake + 1 KiB response (median of {rounds}) | {s:.0} | {n:.0} | {:.2} |", s / n);
    println!("errors: Skiff {}, nginx {}", errors.0, errors.1);
    let _ = std::fs::remove_dir_all(&dir);
}
