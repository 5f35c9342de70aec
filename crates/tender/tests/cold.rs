//! Cold start on the user network: a client that connects as the tender
//! starts is held, not refused or left to a retransmission timer, and gets
//! its first answer within milliseconds; the ready file says when the
//! service listens; a guest that never listens gets its early connections
//! reset after the hold, within the connection limits.

mod common;

use skiff_testnet::{Guard, require_kvm, wait_for};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn website_image() -> &'static Path {
    common::guest("examples/static-website")
}

/// A free port on 127.0.0.1 (bound and released; the tender binds it next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scratch(name: &str) -> PathBuf {
    let dir = common::workspace().join("target/cold-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{name}", std::process::id()))
}

/// One HTTPS GET; the status line's first bytes.
fn https_get(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Result<String, String> {
    let mut sock = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut head = [0u8; 15];
    tls.read_exact(&mut head).map_err(|e| format!("read: {e}"))?;
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// What the client saw: the first `HTTP/1.1 200` after the start, how
/// many attempts failed before, and whether the ready file was there.
struct FirstAnswer {
    after: Duration,
    failed: u32,
    ready_file_was_there: bool,
}

/// Starts a client that connects (and retries at once on failure) to
/// 127.0.0.1:`port` from now on, then starts `command`; returns the child
/// and what the client saw.
fn race(port: u16, ready_file: &Path, command: &mut Command) -> (Guard, FirstAnswer) {
    require_kvm();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let config = skiff_testnet::tls::any_certificate();
    let ready_file = ready_file.to_path_buf();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<Instant>();
    let client = std::thread::spawn(move || {
        let start = go_rx.recv().unwrap();
        let mut failed = 0;
        loop {
            match https_get(addr, &config) {
                Ok(head) if head == "HTTP/1.1 200 OK" => {
                    let after = start.elapsed();
                    return FirstAnswer { after, failed, ready_file_was_there: ready_file.exists() };
                }
                // Refused (the tender has not bound the port yet) or reset:
                // again a millisecond later.
                _ => {
                    failed += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no 200 in 10 s ({failed} failed attempts)");
        }
    });
    let start = Instant::now();
    go_tx.send(start).unwrap();
    let child = Guard(command.spawn().expect("start"));
    let seen = client.join().expect("client");
    (child, seen)
}

fn tender(port: u16, ready: &Path, out: &Path, extra: &[&str]) -> Command {
    let file = std::fs::File::create(out).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_skiff-tender"));
    c.args(["--mem", "32M", "--net", "service=user", "--timeout", "60s", "--publish"])
        .arg(format!("{port}:443"))
        .arg("--ready-file")
        .arg(ready)
        .args(extra)
        .arg(website_image())
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    c
}

/// The bound: the lost second was 1,000 ms; a held connection is
/// handed over within milliseconds of the guest listening.
const FIRST_ANSWER_LIMIT: Duration = Duration::from_millis(100);

#[test]
fn a_client_connecting_as_the_tender_starts_gets_its_first_200_within_100_ms() {
    let image = website_image();
    assert!(image.exists());
    let port = free_port();
    let (ready, out) = (scratch("ready"), scratch("tender.out"));
    let (_child, seen) = race(port, &ready, &mut tender(port, &ready, &out, &[]));
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    eprintln!(
        "first HTTP/1.1 200 {:.1} ms after the tender's start ({} failed attempts before)",
        seen.after.as_secs_f64() * 1e3,
        seen.failed
    );
    assert!(seen.after < FIRST_ANSWER_LIMIT, "first 200 after {:?}:\n{text}", seen.after);
    assert!(seen.ready_file_was_there, "the ready file came after the first answer:\n{text}");
    let ready_text = std::fs::read_to_string(&ready).unwrap();
    assert!(ready_text.lines().any(|l| l == "listening service 443"), "{ready_text}");
    assert!(ready_text.lines().any(|l| l == format!("published 127.0.0.1:{port} 443")), "{ready_text}");
    let text = wait_for(Duration::from_secs(5), || {
        let t = std::fs::read_to_string(&out).unwrap_or_default();
        t.contains("skiff: ready (listening on guest port 443").then_some(t)
    })
    .expect("the ready line");
    let line = text.lines().find(|l| l.starts_with("skiff: ready")).unwrap();
    assert!(line.contains(&format!("published at 127.0.0.1:{port}")), "{line}");
    let _ = std::fs::remove_file(&ready);
}

/// A guest port nobody listens on: three times more early connections than
/// relays (the rest wait in the listen backlog) are all reset after their
/// hold, none held for ever, the relay limit holds, and the website still
/// serves afterwards.
#[test]
fn connections_the_guest_never_accepts_are_reset_after_the_hold_within_the_limits() {
    let image = website_image();
    let (https, dead) = (free_port(), free_port());
    let out = scratch("hold.out");
    let file = std::fs::File::create(&out).unwrap();
    let hold = Duration::from_millis(300);
    let child = Guard(
        Command::new(env!("CARGO_BIN_EXE_skiff-tender"))
            .args(["--mem", "32M", "--net", "service=user", "--timeout", "5s", "--stats"])
            .args(["--net-hold", "300ms", "--net-max-connections", "4", "--net-backlog", "8"])
            .arg("--publish")
            .arg(format!("{https}:443"))
            .arg("--publish")
            .arg(format!("{dead}:444"))
            .arg(image)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap(),
    );
    let mut child = child;
    let config = skiff_testnet::tls::any_certificate();
    // Wait until the website answers.
    let addr: SocketAddr = ([127, 0, 0, 1], https).into();
    wait_for(Duration::from_secs(20), || https_get(addr, &config).ok().filter(|h| h.contains("200")))
        .expect("the website answers");
    // Twelve clients at once on the dead port: four relays, the rest in
    // the backlog.
    let dead_addr: SocketAddr = ([127, 0, 0, 1], dead).into();
    let start = Instant::now();
    let clients: Vec<_> = (0..12)
        .map(|_| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = TcpStream::connect_timeout(&dead_addr, Duration::from_secs(10)).and_then(|mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let mut b = [0u8; 1];
                    c.read(&mut b)
                });
                (r.map_err(|e| e.kind()), t.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let took = start.elapsed();
    eprintln!("12 early connections to a port nobody listens on ended within {took:?}: {results:?}");
    for (r, t) in &results {
        assert_eq!(*r, Err(std::io::ErrorKind::ConnectionReset), "after {t:?}: {results:?}");
        assert!(*t >= hold, "ended after {t:?}, before the hold");
    }
    // 12 connections through 4 relays (one may still be the website's) at
    // 300 ms each: about a second, not for ever.
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(https_get(addr, &config).as_deref(), Ok("HTTP/1.1 200 OK"), "the website still serves");
    let (status, text) = {
        let status = wait_for(Duration::from_secs(40), || child.0.try_wait().ok().flatten()).expect("the tender ends");
        (status.code(), std::fs::read_to_string(&out).unwrap())
    };
    assert_eq!(status, Some(111), "{text}");
    let user = text.lines().find(|l| l.contains("outbound connections")).expect("--stats user line");
    assert!(user.contains("at most 4 at once"), "{user}");
    assert!(user.contains("(12 past the hold)"), "{user}");
}
