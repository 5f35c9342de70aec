//! Disks: a guest with one disk (`tests/guests/disk`) attached to a file
//! with `--disk`, and what the host file holds afterwards.

#[path = "common/mod.rs"]
mod common;

use skiff_store::block_on;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

struct Run {
    status: i32,
    out: String,
}

/// A scratch directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("skiff-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tender_cmd(disk: &str, scenario: &str) -> Command {
    common::require_sandbox();
    let image = common::guest("tests/guests/disk");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff-tender"));
    cmd.args(common::sandbox_args())
        .args(["--timeout", "30s", "--disk", disk])
        .arg(image)
        .args(["--", scenario])
        .stdin(Stdio::null());
    cmd
}

fn run(disk: &str, scenario: &str) -> Run {
    let out = tender_cmd(disk, scenario).output().expect("run skiff-tender");
    Run {
        status: out.status.code().unwrap_or(-1),
        out: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    }
}

#[track_caller]
fn expect(run: &Run, status: i32, needles: &[&str]) {
    assert_eq!(run.status, status, "unexpected status; output:\n{}", run.out);
    for n in needles {
        assert!(run.out.contains(n), "output lacks {n:?}:\n{}", run.out);
    }
}

fn spec(path: &Path, extra: &str) -> String {
    format!("disk={}{extra}", path.display())
}

#[test]
fn a_guest_writes_flushes_and_reads_back_and_the_file_holds_it() {
    let dir = Scratch::new("rw");
    let file = dir.file("d.img");
    let r = run(&spec(&file, ",size=8M"), "rw");
    expect(&r, 0, &["disk: 16384 sectors of 512 bytes", "read back"]);
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len(), 8 << 20, "created at the size asked for");
    for i in 0..8 {
        let sector = &bytes[i * 512..(i + 1) * 512];
        assert_eq!(&sector[..10], b"skiff-disk");
        assert!(sector[10..].iter().all(|&b| b == i as u8 + 1), "sector {i}");
    }
    // Sectors 72.. of the large write are there; 64..72 were discarded.
    assert!(bytes[72 * 512..(64 * 512 + (3 << 20))].iter().all(|&b| b == 0xa5));
    assert!(bytes[64 * 512..72 * 512].iter().all(|&b| b == 0));
}

#[test]
fn four_kib_sectors_are_reported() {
    let dir = Scratch::new("4k");
    let file = dir.file("d.img");
    let r = run(&spec(&file, ",size=8M,sector=4096"), "rw");
    expect(&r, 0, &["disk: 2048 sectors of 4096 bytes", "read back"]);
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes[4096..2 * 4096].starts_with(b"skiff-disk"));
}

#[test]
fn a_read_only_disk_refuses_writes_with_an_error_the_guest_sees() {
    let dir = Scratch::new("ro");
    let file = dir.file("d.img");
    std::fs::write(&file, vec![7u8; 1 << 20]).unwrap();
    let r = run(&spec(&file, ",ro"), "ro");
    expect(&r, 0, &["read-only", "write refused: the disk is read-only", "the host refused the write too"]);
    assert!(std::fs::read(&file).unwrap().iter().all(|&b| b == 7));
}

#[test]
fn bad_requests_end_the_guest_with_the_tenders_message() {
    let dir = Scratch::new("bad");
    let file = dir.file("d.img");
    let disk = spec(&file, ",size=1M");
    let r = run(&disk, "past-end");
    expect(&r, 110, &["guest ended for a bad hypercall", "sectors 2048+1 are outside the disk (2048 sectors)"]);
    let r = run(&disk, "wrap");
    expect(&r, 110, &["sectors 18446744073709551614+4 are outside the disk"]);
    let r = run(&disk, "undeclared");
    expect(&r, 110, &["block-notify: there is no device 5"]);
}

#[test]
fn a_disk_the_image_does_not_declare_is_refused_at_start() {
    let dir = Scratch::new("undeclared");
    let file = dir.file("d.img");
    let r = run(&format!("other={},size=1M", file.display()), "rw");
    expect(&r, 125, &["--disk other=...: the image declares no disk of that name (it has: disk)"]);
    let image = common::guest("tests/guests/disk");
    let out =
        Command::new(env!("CARGO_BIN_EXE_skiff-tender")).args(common::sandbox_args()).arg(image).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the image needs a disk named \"disk\""));
}

#[test]
fn a_host_io_error_is_an_error_in_the_guest_not_a_tender_crash() {
    let dir = Scratch::new("trunc");
    let file = dir.file("d.img");
    let mut child = tender_cmd(&spec(&file, ",size=1M"), "truncated")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the guest to have read the last sector once, then cut the
    // file short under it.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(n > 0, "the guest ended before it was ready:\n{seen}");
        seen.push_str(&line);
        if line.contains("ready") {
            break;
        }
    }
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(4096).unwrap();
    std::io::Read::read_to_string(&mut stdout, &mut seen).unwrap();
    let out = child.wait_with_output().unwrap();
    let all = format!("{seen}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("read failed: the host's I/O failed (errno 5)"), "{all}");
    assert!(all.contains("still serving"), "{all}");
}

#[test]
fn a_store_committed_in_the_guest_is_read_on_the_host() {
    let dir = Scratch::new("store");
    let file = dir.file("store.img");
    let r = run(&spec(&file, ",size=4M"), "store");
    expect(&r, 0, &["committed generation"]);
    // The host reads it with the code `skiff disk check` and `dump` use.
    let dev = skiff_store::FileDevice::open(&file, 512, true).unwrap();
    let report = block_on(skiff_store::check(&dev)).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let store = block_on(skiff_store::Store::open(dev, Default::default())).unwrap();
    assert_eq!(store.info().keys, 100);
    assert_eq!(block_on(store.get(b"key042")).unwrap().as_deref(), Some(&b"value 42"[..]));
}

/// Opening a store walks its tree; the guest reads it in batches through
/// the disk's ring, so the tender is notified about once per 64 pages, not
/// once per page.
#[test]
fn a_large_store_opens_in_the_guest_with_one_notification_per_batch_of_pages() {
    let dir = Scratch::new("open");
    let file = dir.file("open.img");
    let used = {
        let dev = skiff_store::FileDevice::create(&file, 512, 16 << 20).unwrap();
        let store = block_on(skiff_store::Store::create(dev, Default::default())).unwrap();
        block_on(async {
            let mut tx = store.write().await.unwrap();
            for i in 0..40_000u32 {
                tx.put(format!("key/{i:08}").as_bytes(), format!("value {i}").as_bytes()).await.unwrap();
            }
            tx.commit().await.unwrap();
        });
        let used = store.info().used_pages;
        block_on(store.close()).unwrap();
        used
    };
    assert!(used > 500, "a tree of {used} pages");
    common::require_sandbox();
    let out = Command::new(env!("CARGO_BIN_EXE_skiff-tender"))
        .args(common::sandbox_args())
        .args(["--stats", "--timeout", "30s", "--disk", &spec(&file, "")])
        .arg(common::guest("tests/guests/disk"))
        .args(["--", "store-open"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains(&format!("opened 40000 keys, {used} tree pages")), "{all}");
    let notifies: u64 = all
        .split("block-notify ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("--stats counts block-notify exits:\n{all}"));
    assert!(notifies * 16 < used, "{notifies} notifications to open a tree of {used} pages:\n{all}");
}

#[path = "../../../tests/guests/disk/src/workload.rs"]
mod workload;

/// The store's contents after the first `t` transactions of the workload.
#[derive(Default)]
struct Model {
    done: u64,
    entries: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Model {
    fn advance_to(&mut self, seed: u64, t: u64) {
        while self.done < t {
            self.done += 1;
            let t = self.done;
            for op in workload::ops(seed, t) {
                match op {
                    workload::Op::Put { key, len } => {
                        let mut v = vec![0u8; len];
                        workload::fill_value(seed, t, key, &mut v);
                        self.entries.insert(workload::key_name(key).to_vec(), v);
                    }
                    workload::Op::Delete { key } => {
                        self.entries.remove(&workload::key_name(key)[..]);
                    }
                }
            }
            self.entries.insert(workload::COUNTER.to_vec(), t.to_string().into_bytes());
        }
    }
}

/// A small deterministic generator for the test's own choices.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// The seed of a randomised test: `SKIFF_CRASH_SEED` when set, else the
/// clock's; printed so that a failure can be repeated.
fn crash_seed() -> u64 {
    let seed = match std::env::var("SKIFF_CRASH_SEED") {
        Ok(s) => s.parse().expect("SKIFF_CRASH_SEED is a number"),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    };
    eprintln!("crash test seed {seed} (SKIFF_CRASH_SEED={seed} repeats it)");
    seed
}

/// A child's output lines as they come, gathered by a thread per stream.
struct Lines {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Lines {
    fn gather(child: &mut std::process::Child) -> Lines {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().expect("piped"));
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().expect("piped"));
        let readers = [stdout, stderr]
            .into_iter()
            .map(|r| {
                let lines = lines.clone();
                std::thread::spawn(move || {
                    for line in std::io::BufRead::lines(std::io::BufReader::new(r)) {
                        match line {
                            Ok(l) => lines.lock().unwrap().push(l),
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        Lines { lines, readers }
    }

    fn any(&self, needle: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits for the streams to end; every line.
    fn finish(self) -> Vec<String> {
        for r in self.readers {
            r.join().unwrap();
        }
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

/// Crash consistency through the tender: the guest runs seeded
/// transactions on a store and prints each acknowledged commit; the tender
/// is killed with SIGKILL at a random instant (during boot and open, or
/// during the transactions), 200 times on the same disk file. After each
/// kill the file checks clean, holds every acknowledged transaction, and
/// holds exactly the first N transactions of the workload, whole: N is
/// the last acknowledged one or the one after it (under way at the kill).
#[test]
fn the_store_keeps_every_acknowledged_transaction_across_200_kills() {
    const ITERATIONS: usize = 200;
    let dir = Scratch::new("crash");
    let file = dir.file("crash.img");
    let seed = crash_seed();
    let mut rng = Rng(seed);
    let workload_seed = rng.below(u64::MAX);
    {
        let dev = skiff_store::FileDevice::create(&file, 512, 4 << 20).unwrap();
        block_on(skiff_store::Store::create(dev, Default::default())).unwrap();
    }
    let disk = spec(&file, "");
    let mut model = Model::default();
    let (mut total_acks, mut kills_in_boot, mut torn) = (0u64, 0, 0);
    let start = std::time::Instant::now();
    for i in 0..ITERATIONS {
        let mut child = tender_cmd(&disk, "txn")
            .arg(workload_seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Lines::gather(&mut child);
        // One kill in eight lands anywhere in the first 8 ms (boot, open,
        // recovery); the others up to 30 ms into the transactions.
        if i % 8 == 0 {
            std::thread::sleep(std::time::Duration::from_micros(rng.below(8000)));
        } else {
            let opened = skiff_testnet::wait_for(std::time::Duration::from_secs(10), || {
                lines.any("opened at txn").then_some(())
            });
            assert!(opened.is_some(), "iteration {i}: the guest did not open the store");
            std::thread::sleep(std::time::Duration::from_micros(rng.below(30_000)));
        }
        let ended_early = child.try_wait().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let out = lines.finish();
        assert!(ended_early.is_none(), "iteration {i}: the guest ended by itself:\n{}", out.join("\n"));
        if !out.iter().any(|l| l.contains("opened at txn")) {
            kills_in_boot += 1;
        }
        let acked = out.iter().filter_map(|l| l.split("ack ").nth(1)?.trim().parse::<u64>().ok()).max();
        total_acks += out.iter().filter(|l| l.contains(" ack ")).count() as u64;
        let floor = acked.unwrap_or(0).max(model.done);

        // What `skiff disk check` runs.
        let dev = skiff_store::FileDevice::open(&file, 512, true).unwrap();
        let report = block_on(skiff_store::check(&dev)).unwrap();
        assert!(report.problems.is_empty(), "iteration {i}: check found {:?}", report.problems);
        torn += u32::from(report.discarded.is_some());
        let store = block_on(skiff_store::Store::open(dev, Default::default())).unwrap();
        let entries = block_on(async { store.snapshot().scan(b"").collect(usize::MAX).await }).unwrap();
        let held = entries
            .iter()
            .find(|(k, _)| k == workload::COUNTER)
            .map(|(_, v)| String::from_utf8_lossy(v).parse::<u64>().unwrap())
            .unwrap_or(0);
        assert!(
            held >= floor,
            "iteration {i}: transaction {floor} was acknowledged (or found before) but the store holds {held}:\n{}",
            out.join("\n")
        );
        assert!(held <= floor + 1, "iteration {i}: the store holds {held}, past the one under way ({})", floor + 1);
        model.advance_to(workload_seed, held);
        let want: Vec<(Vec<u8>, Vec<u8>)> = model.entries.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if entries != want {
            let differ: Vec<_> = want
                .iter()
                .map(|e| &e.0)
                .chain(entries.iter().map(|e| &e.0))
                .filter(|k| want.iter().find(|e| &e.0 == *k) != entries.iter().find(|e| &e.0 == *k))
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            panic!("iteration {i}: the store is not the first {held} transactions, whole: keys {differ:?} differ");
        }
    }
    eprintln!(
        "{ITERATIONS} kills in {:.1} s: {} transactions, {total_acks} acknowledged in runs, {kills_in_boot} kills before \
         the store was open, {torn} torn commits set aside",
        start.elapsed().as_secs_f64(),
        model.done
    );
    assert!(model.done > ITERATIONS as u64, "too few transactions ran ({}) for the kills to test much", model.done);
}

/// An HTTPS/1.1 client on one keep-alive connection.
struct Https {
    tls: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    buf: Vec<u8>,
}

impl Https {
    fn connect(addr: std::net::SocketAddr) -> Https {
        let tcp = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10)).expect("connect");
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(skiff_testnet::tls::any_certificate(), name).unwrap();
        Https { tls: rustls::StreamOwned::new(conn, tcp), buf: Vec::new() }
    }

    /// Sends a request and reads its response: the status and the body.
    fn request(&mut self, method: &str, target: &str, body: &[u8]) -> (u16, Vec<u8>) {
        use std::io::{Read, Write};
        let mut req =
            format!("{method} {target} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n", body.len())
                .into_bytes();
        req.extend_from_slice(body);
        self.tls.write_all(&req).expect("send the request");
        self.tls.flush().unwrap();
        let mut chunk = [0u8; 16 * 1024];
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.tls.read(&mut chunk).expect("read the response");
            assert!(n > 0, "the server closed the connection during {method} {target}");
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < head_end + len {
            let n = self.tls.read(&mut chunk).expect("read the body");
            assert!(n > 0, "the server closed the connection in a body");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        (status, body)
    }
}

/// The kv-server on the user network with its disk; output lines gathered.
struct KvServer {
    child: skiff_testnet::Guard,
    lines: Option<Lines>,
}

impl KvServer {
    fn start(disk: &str, args: &[&str]) -> KvServer {
        common::require_sandbox();
        let image = common::guest("examples/kv-server");
        let mut child = Command::new(env!("CARGO_BIN_EXE_skiff-tender"))
            .args(common::sandbox_args())
            .args(["--timeout", "120s", "--net", "service=user", "--publish", "0:443", "--disk", disk])
            .arg(image)
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the tender");
        let lines = Lines::gather(&mut child);
        KvServer { child: skiff_testnet::Guard(child), lines: Some(lines) }
    }

    fn output(&self) -> String {
        self.lines.as_ref().map(|l| l.lines.lock().unwrap().join("\n")).unwrap_or_default()
    }

    fn wait_line(&self, needle: &str) -> String {
        let lines = self.lines.as_ref().unwrap();
        skiff_testnet::wait_for(std::time::Duration::from_secs(30), || {
            lines.lines.lock().unwrap().iter().find(|l| l.contains(needle)).cloned()
        })
        .unwrap_or_else(|| panic!("no {needle:?} in the output:\n{}", self.output()))
    }

    /// Where the tender published guest port 443, once the service serves.
    fn address(&self) -> std::net::SocketAddr {
        self.wait_line("kv-server: serving");
        let line = self.wait_line("/tcp -> guest port 443");
        line.split_whitespace()
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .expect("a published address")
    }

    /// Sends `signal`, waits for the end; the status and every line.
    fn end(mut self, signal: libc::c_int) -> (Option<i32>, String) {
        if signal == libc::SIGKILL {
            let _ = self.child.0.kill();
        } else if self.child.0.try_wait().unwrap().is_none() {
            // SAFETY: kill takes plain integers; the pid is our child's,
            // not yet reaped (try_wait just said it runs).
            unsafe { libc::kill(self.child.0.id() as libc::pid_t, signal) };
        }
        let status = self.child.0.wait().unwrap();
        let out = self.lines.take().unwrap().finish().join("\n");
        (status.code(), out)
    }
}

/// The `--disk` of kv-server's disk `data`.
fn data(path: &Path, extra: &str) -> String {
    format!("data={}{extra}", path.display())
}

const KEYS: usize = 10_000;
const CONNECTIONS: usize = 4;

fn kv_key(i: usize) -> String {
    format!("user/{i:05}")
}

fn kv_value(i: usize) -> Vec<u8> {
    format!("value of key {i}: {}", "x".repeat(i % 300)).into_bytes()
}

/// Runs `f(connection, i)` for keys 0..KEYS over a few keep-alive
/// connections at once.
fn on_connections(addr: std::net::SocketAddr, f: impl Fn(&mut Https, usize) + Sync) {
    std::thread::scope(|s| {
        for c in 0..CONNECTIONS {
            let f = &f;
            s.spawn(move || {
                let mut conn = Https::connect(addr);
                for i in (c..KEYS).step_by(CONNECTIONS) {
                    f(&mut conn, i);
                }
            });
        }
    });
}

/// kv-server keeps its data across a kill: 10,000 keys PUT over HTTPS
/// (keep-alive, four connections), the tender killed with SIGKILL right
/// after the last answer (no idle sync yet: the last commit is
/// unconfirmed), the file checks clean, a new guest on the same file
/// serves every key, lists them in order, and stops cleanly on SIGTERM.
#[test]
fn kv_server_keeps_10000_keys_across_a_kill() {
    let dir = Scratch::new("kv");
    let file = dir.file("kv.img");
    let server = KvServer::start(&data(&file, ",size=32M"), &["--idle-sync", "60s"]);
    let addr = server.address();
    let start = std::time::Instant::now();
    on_connections(addr, |conn, i| {
        let (status, body) = conn.request("PUT", &format!("/v1/keys/{}", kv_key(i)), &kv_value(i));
        assert_eq!(status, 204, "PUT {i}: {}", String::from_utf8_lossy(&body));
    });
    let put = start.elapsed();
    let (status, out) = server.end(libc::SIGKILL);
    assert_eq!(status, None, "killed by the signal:\n{out}");

    // What `skiff disk check` runs.
    let dev = skiff_store::FileDevice::open(&file, 512, true).unwrap();
    let report = block_on(skiff_store::check(&dev)).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.superblock.keys, KEYS as u64);
    drop(dev);

    let server = KvServer::start(&data(&file, ""), &[]);
    let addr = server.address();
    let start = std::time::Instant::now();
    on_connections(addr, |conn, i| {
        let (status, body) = conn.request("GET", &format!("/v1/keys/{}", kv_key(i)), b"");
        assert_eq!(status, 200, "GET {i}: {}", String::from_utf8_lossy(&body));
        assert!(body == kv_value(i), "key {i} read back wrong");
    });
    let get = start.elapsed();
    // The listing pages through them in order.
    let mut conn = Https::connect(addr);
    let (mut listed, mut after) = (Vec::new(), String::new());
    loop {
        let (status, body) = conn.request("GET", &format!("/v1/keys?prefix=user/&limit=1000&after={after}"), b"");
        assert_eq!(status, 200);
        let body = String::from_utf8(body).unwrap();
        let keys = body.split("\"keys\":[").nth(1).unwrap().split(']').next().unwrap();
        listed.extend(keys.split(',').filter(|k| !k.is_empty()).map(|k| k.trim_matches('"').to_string()));
        match body.split("\"next\":\"").nth(1) {
            Some(next) => after = next.split('"').next().unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(listed, (0..KEYS).map(kv_key).collect::<Vec<_>>(), "the listing");
    let (status, out) = server.end(libc::SIGTERM);
    assert_eq!(status, Some(0), "{out}");
    assert!(out.contains("kv-server: stopping; the store is synced at generation"), "{out}");
    eprintln!(
        "{KEYS} PUTs on {CONNECTIONS} connections in {:.2} s, {KEYS} GETs in {:.2} s",
        put.as_secs_f64(),
        get.as_secs_f64()
    );
    let dev = skiff_store::FileDevice::open(&file, 512, true).unwrap();
    let report = block_on(skiff_store::check(&dev)).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.superblock.confirmed(), "the store was confirmed at the stop");
}

/// kv-server's refusals: sizes, bad transactions (nothing applied), a
/// transaction applied whole, deletes, unknown keys; then a disk that is
/// not a store is refused at start and left as it was.
#[test]
fn kv_server_refuses_bad_requests_and_applies_transactions_whole() {
    let dir = Scratch::new("kvbad");
    let file = dir.file("kv.img");
    let server = KvServer::start(&data(&file, ",size=4M"), &["--max-key", "64", "--max-value", "4K"]);
    let mut c = Https::connect(server.address());
    let text = |(s, b): (u16, Vec<u8>)| (s, String::from_utf8_lossy(&b).into_owned());
    assert_eq!(c.request("PUT", "/v1/keys/a%20b", b"1").0, 204);
    assert_eq!(text(c.request("GET", "/v1/keys/a%20b", b"")), (200, "1".into()));
    let long = "k".repeat(65);
    assert_eq!(
        text(c.request("PUT", &format!("/v1/keys/{long}"), b"1")),
        (400, "a key of 65 bytes is too long (at most 64)\n".into())
    );
    assert_eq!(
        text(c.request("PUT", "/v1/keys/big", &[7u8; 5000])),
        (413, "a value of 5000 bytes is too large (at most 4096)\n".into())
    );
    assert_eq!(text(c.request("GET", "/v1/keys/nope", b"")), (404, "no such key\n".into()));
    assert_eq!(text(c.request("DELETE", "/v1/keys/nope", b"")).0, 404);
    assert_eq!(text(c.request("GET", "/v1/keys/%zz", b"")).0, 400);
    // A bad line: nothing of the transaction is applied.
    let (status, body) = text(c.request("POST", "/v1/txn", b"put x 1\nput y\n"));
    assert_eq!((status, body.as_str()), (400, "line 2: put needs a value\n"));
    assert_eq!(c.request("GET", "/v1/keys/x", b"").0, 404);
    let (status, body) = text(c.request("POST", "/v1/txn", b"put x 1\nfrob y\n"));
    assert_eq!((status, body.as_str()), (400, "line 2: unknown operation \"frob\" (put or delete)\n"));
    // A good one, whole.
    let (status, body) = text(c.request("POST", "/v1/txn", b"put x 1\nput y%0A two%00\ndelete a%20b\n"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"puts\":2,\"deletes\":1"), "{body}");
    assert_eq!(c.request("GET", "/v1/keys/y%0A", b""), (200, b"two\0".to_vec()));
    assert_eq!(c.request("GET", "/v1/keys/a%20b", b"").0, 404);
    assert_eq!(text(c.request("GET", "/v1/keys?limit=5000", b"")).0, 400);
    assert_eq!(text(c.request("GET", "/v1/keys", b"")), (200, "{\"keys\":[\"x\",\"y%0A\"]}\n".into()));
    assert_eq!(text(c.request("POST", "/v1/keys/x", b"1")).0, 405);
    drop(c);
    let (status, out) = server.end(libc::SIGTERM);
    assert_eq!(status, Some(0), "{out}");

    // Not a store, not blank: refused, untouched.
    let other = dir.file("other.img");
    std::fs::write(&other, vec![0x42u8; 1 << 20]).unwrap();
    let mut server = KvServer::start(&data(&other, ""), &[]);
    let status = skiff_testnet::wait_for(std::time::Duration::from_secs(20), || server.child.0.try_wait().ok()?);
    let (_, out) = server.end(libc::SIGKILL);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{out}");
    assert!(out.contains("the disk holds data that is not a store"), "{out}");
    assert!(out.contains("refusing to format it"), "{out}");
    assert!(std::fs::read(&other).unwrap().iter().all(|&b| b == 0x42));
}
