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
