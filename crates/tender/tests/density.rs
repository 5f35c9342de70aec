//! Density: many websites on one host, started at once, each on the user
//! network with a published port of its own; all serve HTTPS, share the
//! image file's pages, and all stop cleanly on SIGTERM.

mod common;

use skiff_testnet::{Guard, require_kvm, wait_for};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One HTTPS GET of `/`: true on `HTTP/1.1 200`.
fn https_200(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> bool {
    let Ok(mut sock) = TcpStream::connect(addr) else { return false };
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    if tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200"
}

const INSTANCES: usize = 50;

#[test]
fn fifty_websites_started_at_once_all_serve_share_the_image_and_stop_cleanly() {
    require_kvm();
    let image = common::workspace().join(common::guest("examples/static-website"));
    // Distinct free ports below the kernel's ephemeral range (no client's
    // own port can take one before its tender binds it): all bound at
    // once, then released for the tenders.
    let listeners: Vec<TcpListener> =
        (21000..32768).filter_map(|p| TcpListener::bind(("127.0.0.1", p)).ok()).take(INSTANCES).collect();
    assert_eq!(listeners.len(), INSTANCES, "free ports");
    let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
    drop(listeners);
    let start = Instant::now();
    let mut children: Vec<Guard> = ports
        .iter()
        .map(|port| {
            Guard(
                Command::new(env!("CARGO_BIN_EXE_skiff-tender"))
                    .args(["--mem", "16M", "--net", "service=user", "--timeout", "60s", "--publish"])
                    .arg(format!("127.0.0.1:{port}:443"))
                    .arg(&image)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("start a tender"),
            )
        })
        .collect();
    // Four clients, each polling its share until every site has answered.
    let config = skiff_testnet::tls::any_certificate();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (ports, config) = (&ports, &config);
            s.spawn(move || {
                let mut pending: Vec<u16> = ports.iter().copied().skip(t).step_by(4).collect();
                while !pending.is_empty() && start.elapsed() < Duration::from_secs(15) {
                    pending.retain(|&p| !https_200(([127, 0, 0, 1], p).into(), config));
                    std::thread::sleep(Duration::from_millis(5));
                }
                assert!(pending.is_empty(), "no HTTPS 200 within 15 s from ports {pending:?}");
            });
        }
    });
    let all_serve = start.elapsed();
    // Every tender maps the image file (its pages shared in the page
    // cache) instead of holding a private copy, and so does every guest's
    // memory for the image's read-only segments (text, read-only data):
    // the file once, and two segments or more in guest memory.
    let mut anon_kib = 0u64;
    for c in &children {
        let pid = c.0.id();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let mapped = maps.lines().filter(|l| l.ends_with(&*image.to_string_lossy())).count();
        assert!(mapped >= 3, "tender {pid} maps {} {mapped} times:\n{maps}", image.display());
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
        anon_kib += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss_Anon:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    let private = anon_kib as f64 / 1024.0 / INSTANCES as f64;
    eprintln!(
        "{INSTANCES} websites all served HTTPS {:.2} s after the first start; {private:.2} MiB private memory each",
        all_serve.as_secs_f64(),
    );
    // Private memory per instance: the tender's own and the guest memory
    // its guest wrote (about 1.2 MiB; 4.8 MiB when the image was read and
    // copied).
    assert!(private < 2.5, "{private:.2} MiB of private memory per instance");
    // SIGTERM to all: each guest is asked to stop and ends with status 0.
    let stop = Instant::now();
    for c in &children {
        // SAFETY: kill takes plain integers; the pid is our unreaped child's.
        unsafe { libc::kill(c.0.id() as libc::pid_t, libc::SIGTERM) };
    }
    for c in &mut children {
        let status = wait_for(Duration::from_secs(10), || c.0.try_wait().ok().flatten());
        let mut err = String::new();
        if let Some(mut e) = c.0.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        assert_eq!(status.and_then(|s| s.code()), Some(0), "a tender did not stop cleanly:\n{err}");
        assert!(err.contains("SIGTERM: asking the guest to stop"), "{err}");
    }
    eprintln!("all {INSTANCES} stopped with status 0 {:.2} s after SIGTERM", stop.elapsed().as_secs_f64());
}
