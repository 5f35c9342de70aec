//! Store benchmark (host side): durable single-key commits per second and
//! random reads per second of `skiff-store` on a file, against SQLite (WAL,
//! `synchronous=FULL`) on the same file system in the same run, and against
//! the file system's raw `fdatasync` rate (the limit for one commit at a
//! time). Also commits per second with 64 concurrent writers (group
//! commit). The in-guest figure comes with the tender's block device.
//!
//! `cargo run --release -p skiff-bench --bin store [-- COMMITS [DIR]]`
//! (default 1000 commits, in `target/bench-store`).
//!
//! `cargo run --release -p skiff-bench --bin store -- guest [COMMITS [RUNS]]`
//! runs the store in a guest instead (`tests/guests/disk`'s `bench`, under
//! KVM on a `--disk` file with 4096-byte sectors, the release tender),
//! with the `fdatasync` limit and SQLite in a Linux process on the same
//! file system in the same run, RUNS times (default 3). `guest-mem`
//! fills a 1 GiB store on the host and finds the smallest `--mem` at which
//! a guest opens it and works it (reads, commits) with its page cache.
//!
//! `guest-open [RUNS]` fills a full 1 GiB store and times its open in a
//! host process and in a guest (`work` scenario), RUNS times (default 3).
//!
//! `cargo run --release -p skiff-bench --bin store -- open MIB [DIR]`
//! instead fills a store with MIB MiB of keys and values and times
//! `Store::open` (which walks the tree to rebuild free space), with the
//! file in the page cache and after dropping it from the cache.

use rusqlite::{Connection, params};
use skiff_store::{CommitMode, FileDevice, Options, Store, block_on};
use std::fs::OpenOptions;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

const KEYS: u64 = 10_000;
const READS: u64 = 200_000;
const STORE_SIZE: u64 = 256 << 20;

fn key(i: u64) -> Vec<u8> {
    format!("key/{:08}", i.wrapping_mul(2_654_435_761) % 1_000_000_007).into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    let mut v = format!("value {i} ").into_bytes();
    v.resize(100, b'.');
    v
}

/// A cheap deterministic sequence of key numbers.
struct Seq(u64);
impl Seq {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn fresh(path: &Path) {
    let _ = std::fs::remove_file(path);
    for suffix in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

fn rate(n: u64, start: Instant) -> f64 {
    n as f64 / start.elapsed().as_secs_f64()
}

fn fdatasync_rate(dir: &Path, n: u64) -> f64 {
    let path = dir.join("fdatasync.bin");
    fresh(&path);
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    // Written out, as `skiff disk create` writes a store's image.
    let zeros = vec![0u8; 1 << 20];
    for at in (0..STORE_SIZE).step_by(zeros.len()) {
        f.write_all_at(&zeros, at).unwrap();
    }
    f.sync_all().unwrap();
    let page = vec![7u8; 4096];
    let mut seq = Seq(88172645463325252);
    let start = Instant::now();
    for _ in 0..n {
        f.write_all_at(&page, seq.next(STORE_SIZE / 4096) * 4096).unwrap();
        f.sync_data().unwrap();
    }
    rate(n, start)
}

fn open_store(path: &Path, commit: CommitMode) -> Store<FileDevice> {
    fresh(path);
    let dev = FileDevice::create(path, 4096, STORE_SIZE).unwrap();
    block_on(Store::create(dev, Options { commit, ..Options::default() })).unwrap()
}

/// One-key commits, one at a time; the last one confirmed by `sync`
/// (each one-flush commit confirms the one before it).
fn store_commits(path: &Path, commit: CommitMode, n: u64) -> f64 {
    let store = open_store(path, commit);
    let start = Instant::now();
    for i in 0..n {
        block_on(store.put(&key(i), &value(i))).unwrap();
    }
    block_on(store.sync()).unwrap();
    rate(n, start)
}

/// Commits per second with `writers` tasks committing at once.
fn store_group_commits(path: &Path, writers: u64, each: u64) -> (f64, u64) {
    let store = open_store(path, CommitMode::OneFlush);
    let start = Instant::now();
    let mut tasks: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = (0..writers)
        .map(|w| {
            let store = &store;
            Box::pin(async move {
                for i in 0..each {
                    let k = w * each + i;
                    let mut tx = store.write().await.unwrap();
                    tx.put(&key(k), &value(k)).await.unwrap();
                    tx.commit().await.unwrap();
                }
            }) as Pin<Box<dyn Future<Output = ()>>>
        })
        .collect();
    let mut done = vec![false; tasks.len()];
    let mut cx = Context::from_waker(Waker::noop());
    while done.iter().any(|d| !d) {
        for (t, d) in tasks.iter_mut().zip(done.iter_mut()) {
            if !*d && t.as_mut().poll(&mut cx) == Poll::Ready(()) {
                *d = true;
            }
        }
    }
    (rate(writers * each, start), store.batches())
}

fn store_reads(path: &Path) -> f64 {
    let store = open_store(path, CommitMode::OneFlush);
    block_on(async {
        let mut tx = store.write().await.unwrap();
        for i in 0..KEYS {
            tx.put(&key(i), &value(i)).await.unwrap();
        }
        tx.commit().await.unwrap();
    });
    let mut seq = Seq(2463534242);
    let start = Instant::now();
    for _ in 0..READS {
        let i = seq.next(KEYS);
        assert_eq!(block_on(store.get(&key(i))).unwrap().map(|v| v.len()), Some(100));
    }
    rate(READS, start)
}

fn sqlite(path: &Path) -> Connection {
    fresh(path);
    let db = Connection::open(path).unwrap();
    db.pragma_update(None, "journal_mode", "WAL").unwrap();
    db.pragma_update(None, "synchronous", "FULL").unwrap();
    db.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID", []).unwrap();
    db
}

fn sqlite_commits(path: &Path, n: u64) -> f64 {
    let db = sqlite(path);
    let mut put = db.prepare("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)").unwrap();
    let start = Instant::now();
    for i in 0..n {
        put.execute(params![key(i), value(i)]).unwrap();
    }
    rate(n, start)
}

fn sqlite_reads(path: &Path) -> f64 {
    let mut db = sqlite(path);
    let tx = db.transaction().unwrap();
    {
        let mut put = tx.prepare("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)").unwrap();
        for i in 0..KEYS {
            put.execute(params![key(i), value(i)]).unwrap();
        }
    }
    tx.commit().unwrap();
    let mut get = db.prepare("SELECT v FROM kv WHERE k = ?1").unwrap();
    let mut seq = Seq(2463534242);
    let start = Instant::now();
    for _ in 0..READS {
        let i = seq.next(KEYS);
        let v: Vec<u8> = get.query_row(params![key(i)], |r| r.get(0)).unwrap();
        assert_eq!(v.len(), 100);
    }
    rate(READS, start)
}

/// Fills a store with `mib` MiB of 480-byte values (in the leaves) and
/// times opening it.
fn open_time(dir: &Path, mib: u64) {
    let path = dir.join("open.img");
    fresh(&path);
    let n = (mib << 20) / 480;
    // Appended keys leave leaves about half full.
    let size = (mib << 20) * 3 + (64 << 20);
    let dev = FileDevice::create(&path, 4096, size).unwrap();
    let store = block_on(Store::create(dev, Options::default())).unwrap();
    let start = Instant::now();
    let per_tx = 20_000;
    for first in (0..n).step_by(per_tx) {
        block_on(async {
            let mut tx = store.write().await.unwrap();
            for i in first..(first + per_tx as u64).min(n) {
                let mut v = format!("value {i} ").into_bytes();
                v.resize(480, b'.');
                tx.put(format!("key/{i:012}").as_bytes(), &v).await.unwrap();
            }
            tx.commit().await.unwrap();
        });
    }
    let info = store.info();
    eprintln!("filled {n} keys in {:.1} s", start.elapsed().as_secs_f64());
    drop(store);
    let dev = || FileDevice::open(&path, 4096, false).unwrap();
    let start = Instant::now();
    let store = block_on(Store::open(dev(), Options::default())).unwrap();
    let warm = start.elapsed();
    assert_eq!(store.info().keys, n);
    drop(store);
    // Cold: the image's pages dropped from the page cache (written out
    // first, so the kernel can drop them).
    let cold = {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&path).unwrap();
        f.sync_all().unwrap();
        // SAFETY: a plain system call on a descriptor this function owns.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        (rc == 0).then(|| {
            let start = Instant::now();
            block_on(Store::open(dev(), Options::default())).unwrap();
            start.elapsed()
        })
    };
    println!("## Store on the host: open time of a large store (issue 13)");
    println!();
    println!(
        "{n} keys, {} MiB of values, {} pages used ({} MiB) of {} MiB",
        (n * 480) >> 20,
        info.used_pages,
        (info.used_pages * 4096) >> 20,
        size >> 20
    );
    println!("- open, file in the page cache: {:.0} ms", warm.as_secs_f64() * 1e3);
    match cold {
        Some(c) => println!("- open, page cache dropped: {:.0} ms", c.as_secs_f64() * 1e3),
        None => println!("- open, page cache dropped: not measured (posix_fadvise failed)"),
    }
    fresh(&path);
}

/// The `bench: NAME VALUE...` lines of a guest's output.
fn bench_line<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    let tag = format!("bench: {name} ");
    out.lines()
        .find_map(|l| l.split_once(&tag).map(|(_, rest)| rest.split_whitespace().collect()))
        .unwrap_or_else(|| panic!("no {tag:?} line in the guest's output:\n{out}"))
}

/// The store in a guest against SQLite and `fdatasync` in this process.
fn guest_bench(dir: &Path, commits: u64, runs: u32) {
    let tender = skiff_bench::release_tender(skiff_bench::Linking::Dynamic);
    let image = skiff_bench::guest("tests/guests/disk");
    println!("## Store in a guest (issue 13)");
    println!();
    println!(
        "| run | `fdatasync`/s (limit) | SQLite commits/s | guest commits/s | / SQLite | / limit | 64 writers: commits/s (batches) | SQLite reads/s | guest reads/s | / SQLite |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for run in 1..=runs {
        let sync = fdatasync_rate(dir, commits);
        let sqlite_c = sqlite_commits(&dir.join("sqlite.db"), commits);
        let sqlite_r = sqlite_reads(&dir.join("sqlite.db"));
        let img = dir.join("guest.img");
        fresh(&img);
        let out = Command::new(&tender)
            .args(["--mem", "64M", "--timeout", "300s", "--disk"])
            .arg(format!("disk={},size={}M,sector=4096", img.display(), STORE_SIZE >> 20))
            .arg(&image)
            .args(["--", "bench", &commits.to_string()])
            .output()
            .expect("run the tender");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "the guest failed:\n{text}");
        let g_c: f64 = bench_line(&text, "commits")[0].parse().unwrap();
        let group = bench_line(&text, "group");
        let g_r: f64 = bench_line(&text, "reads")[0].parse().unwrap();
        println!(
            "| {run} | {sync:.0} | {sqlite_c:.0} | {g_c:.0} | {:.2} | {:.2} | {:.0} ({}) | {sqlite_r:.0} | {g_r:.0} | {:.2} |",
            g_c / sqlite_c,
            g_c / sync,
            group[0].parse::<f64>().unwrap(),
            group[1],
            g_r / sqlite_r
        );
        fresh(&img);
        fresh(&dir.join("sqlite.db"));
        fresh(&dir.join("fdatasync.bin"));
    }
}

/// Fills a store of 1 GiB on the host with 480-byte values (in the leaves:
/// the largest tree, the longest open) until 90% of it is used, then boots
/// the `work` guest on it with less and less memory.
fn guest_mem(dir: &Path) {
    let tender = skiff_bench::release_tender(skiff_bench::Linking::Dynamic);
    let image = skiff_bench::guest("tests/guests/disk");
    let path = dir.join("mem.img");
    // Closed, so confirmed: the first boot opens it without a walk too.
    let (n, info) = fill_gib(&path);
    println!("## Store in a guest: the smallest --mem for a 1 GiB store (issue 13)");
    println!();
    println!(
        "A 1 GiB store: {n} keys of 480-byte values, {} of {} pages used. The guest opens it, \
         walks the tree (at open, or in `finish_open` once a run has confirmed the store), reads 20,000 \
         random keys, commits 100 updates, syncs.",
        info.used_pages, info.pages
    );
    println!();
    println!("| --mem | result | open | heap peak |");
    println!("| ---: | --- | ---: | ---: |");
    for mem in [64u64, 48, 32, 24, 16, 12, 10, 8, 6, 4] {
        let out = Command::new(&tender)
            .args(["--mem", &format!("{mem}M"), "--timeout", "300s", "--disk"])
            .arg(format!("disk={},sector=4096", path.display()))
            .arg(&image)
            .args(["--", "work"])
            .output()
            .expect("run the tender");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let field = |tag: &str, end: &str| {
            text.lines()
                .find_map(|l| Some(l.split_once(tag)?.1.split(end).next()?.trim().to_string()))
                .unwrap_or_else(|| "-".into())
        };
        let result = if out.status.success() {
            "works".to_string()
        } else {
            text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().chars().take(90).collect()
        };
        println!("| {mem}M | {result} | {} ms | {} KiB |", field("keys in ", " ms"), field("heap peak ", " KiB"));
        if !out.status.success() {
            break;
        }
    }
    fresh(&path);
}

/// Fills a 1 GiB store as `guest-mem` does (the largest tree it holds)
/// into `path`; how many keys and pages.
fn fill_gib(path: &Path) -> (u64, skiff_store::Info) {
    const SIZE: u64 = 1 << 30;
    fresh(path);
    let dev = FileDevice::create(path, 4096, SIZE).unwrap();
    let store = block_on(Store::create(dev, Options::default())).unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while store.info().free_pages > store.info().pages / 10 {
        block_on(async {
            let mut tx = store.write().await.unwrap();
            for i in n..n + 20_000 {
                let mut v = format!("value {i} ").into_bytes();
                v.resize(480, b'.');
                tx.put(format!("key/{i:012}").as_bytes(), &v).await.unwrap();
            }
            tx.commit().await.unwrap();
        });
        n += 20_000;
    }
    let info = store.info();
    block_on(store.close()).unwrap();
    eprintln!("filled {n} keys in {:.1} s", start.elapsed().as_secs_f64());
    (n, info)
}

/// Open time of a full 1 GiB store (closed, so confirmed: open defers
/// the walk), and open plus the walk (`finish_open`): in a host process
/// (from the page cache), then in a guest (`work`, 64M), `runs` times.
fn guest_open(dir: &Path, runs: u32) {
    let tender = skiff_bench::release_tender(skiff_bench::Linking::Dynamic);
    let image = skiff_bench::guest("tests/guests/disk");
    let path = dir.join("open-gib.img");
    let (n, info) = fill_gib(&path);
    println!("## Store in a guest: opening a full 1 GiB store (issue 13)");
    println!();
    println!("{n} keys of 480-byte values, {} of {} pages used.", info.used_pages, info.pages);
    println!();
    println!("| run | host: open | host: open + walk | guest: open | guest: open + walk |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for run in 1..=runs {
        let start = Instant::now();
        let store = block_on(Store::open(FileDevice::open(&path, 4096, false).unwrap(), Options::default())).unwrap();
        let host = start.elapsed();
        block_on(store.finish_open()).unwrap();
        let host_walk = start.elapsed();
        assert_eq!(store.info().keys, n);
        drop(store);
        let out = Command::new(&tender)
            .args(["--mem", "64M", "--timeout", "300s", "--disk"])
            .arg(format!("disk={},sector=4096", path.display()))
            .arg(&image)
            .args(["--", "work"])
            .output()
            .expect("run the tender");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "the guest failed:\n{text}");
        let field = |tag: &str| {
            text.lines()
                .find_map(|l| Some(l.split_once(tag)?.1.split(" ms").next()?.trim().to_string()))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "| {run} | {} µs | {} ms | {} µs | {} ms |",
            host.as_micros(),
            host_walk.as_millis(),
            text.lines()
                .find_map(|l| Some(l.split_once(" ms (")?.1.split(" us)").next()?.trim().to_string()))
                .unwrap_or_else(|| "-".into()),
            field("free space known, at ")
        );
    }
    fresh(&path);
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let dir = || {
        let d = skiff_bench::workspace().join("target/bench-store");
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    if args.peek().map(String::as_str) == Some("guest") {
        args.next();
        let commits: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
        let runs: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
        guest_bench(&dir(), commits, runs);
        return;
    }
    if args.peek().map(String::as_str) == Some("guest-mem") {
        guest_mem(&dir());
        return;
    }
    if args.peek().map(String::as_str) == Some("guest-open") {
        args.next();
        let runs: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
        guest_open(&dir(), runs);
        return;
    }
    if args.peek().map(String::as_str) == Some("open") {
        args.next();
        let mib: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1024);
        let dir = args.next().map(PathBuf::from).unwrap_or_else(|| skiff_bench::workspace().join("target/bench-store"));
        std::fs::create_dir_all(&dir).unwrap();
        open_time(&dir, mib);
        return;
    }
    let commits: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let dir = args.next().map(PathBuf::from).unwrap_or_else(|| skiff_bench::workspace().join("target/bench-store"));
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!("store benchmark in {}: {commits} commits each, {READS} random reads of {KEYS} keys", dir.display());

    let sync = fdatasync_rate(&dir, commits);
    let sqlite_c = sqlite_commits(&dir.join("sqlite.db"), commits);
    let one_flush = store_commits(&dir.join("store.img"), CommitMode::OneFlush, commits);
    let two_phase = store_commits(&dir.join("store.img"), CommitMode::TwoPhase, commits);
    let (group, batches) = store_group_commits(&dir.join("store.img"), 64, commits.div_ceil(64).max(4));
    let sqlite_r = sqlite_reads(&dir.join("sqlite.db"));
    let store_r = store_reads(&dir.join("store.img"));
    fresh(&dir.join("sqlite.db"));
    fresh(&dir.join("store.img"));
    fresh(&dir.join("fdatasync.bin"));

    println!("## Store on the host: durable commits and random reads (issue 13)");
    println!();
    println!("| what | per second | vs. SQLite | vs. fdatasync |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| `fdatasync` of one 4 KiB write (the limit) | {sync:.0} | {:.2} | 1.00 |", sync / sqlite_c);
    println!("| SQLite WAL, `synchronous=FULL`: one-key commits | {sqlite_c:.0} | 1.00 | {:.2} |", sqlite_c / sync);
    for (what, r) in [
        ("skiff-store one flush, confirmed (default): one-key commits", one_flush),
        ("skiff-store two-phase: one-key commits", two_phase),
    ] {
        println!("| {what} | {r:.0} | {:.2} | {:.2} |", r / sqlite_c, r / sync);
    }
    println!(
        "| skiff-store, 64 concurrent writers ({batches} batches): commits | {group:.0} | {:.2} | {:.2} |",
        group / sqlite_c,
        group / sync
    );
    println!("| SQLite: random reads | {sqlite_r:.0} | 1.00 | |");
    println!("| skiff-store: random reads | {store_r:.0} | {:.2} | |", store_r / sqlite_r);
}
