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
    expect(&r, 0, &["read-only", "write refused: the disk is read-only", "the tender refused the write too"]);
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
