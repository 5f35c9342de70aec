//! `skiff run IMAGE` on the user network: a client that connects as it
//! starts gets its first `HTTP/1.1 200` within 100 ms (a connection that
//! reaches the published port before the guest listens is held, not lost
//! for a second), and `--ready-file` appears by then.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One plain HTTP GET; the status line's first bytes.
fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut c = TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 15];
    c.read_exact(&mut head)?;
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[test]
fn skiff_run_answers_a_client_connecting_as_it_starts_within_100_ms() {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!("this test boots a guest and needs read-write access to /dev/kvm ({e})");
    }
    let target = workspace().join("target/guest");
    // The image, built once beforehand (the build is not what is timed).
    let build = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["build", "-q", "--target-dir"])
        .arg(&target)
        .arg(workspace().join("examples/static-website"))
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    let image = target.join("x86_64-unknown-linux-gnu/release/static-website");
    assert!(image.exists(), "{}", image.display());
    let dir = workspace().join("target/cli-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let (ready, out) = (dir.join("cold.ready"), dir.join("cold.out"));
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<Instant>();
    let ready_path = ready.clone();
    let client = std::thread::spawn(move || {
        let start = go_rx.recv().unwrap();
        let mut failed = 0u32;
        loop {
            if let Ok(head) = http_get(addr)
                && head == "HTTP/1.1 200 OK"
            {
                return (start.elapsed(), failed, ready_path.exists());
            }
            failed += 1;
            std::thread::sleep(Duration::from_millis(1));
            assert!(start.elapsed() < Duration::from_secs(10), "no 200 in 10 s ({failed} failed attempts)");
        }
    });
    let file = std::fs::File::create(&out).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_skiff"));
    command
        .arg("run")
        .arg(&image)
        .args(["--mem", "32M", "--timeout", "60s", "--publish"])
        .arg(format!("{port}:80"))
        .arg("--ready-file")
        .arg(&ready)
        .args(["--", "--http", "serve"])
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let start = Instant::now();
    go_tx.send(start).unwrap();
    let _running = Running(command.spawn().expect("start skiff run"));
    let (after, failed, ready_was_there) = client.join().expect("client");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    eprintln!(
        "skiff run: first HTTP/1.1 200 {:.1} ms after the start ({failed} failed attempts)",
        after.as_secs_f64() * 1e3
    );
    assert!(after < Duration::from_millis(100), "first 200 after {after:?}:\n{text}");
    assert!(ready_was_there, "the ready file came after the first answer:\n{text}");
    let ready_text = std::fs::read_to_string(&ready).unwrap();
    assert!(ready_text.lines().any(|l| l.starts_with("listening service ")), "{ready_text}");
    let _ = std::fs::remove_file(&ready);
}
