//! Bakes real directory trees and reads them back; corrupts blobs and
//! checks the reader refuses them without panicking.
#![cfg(feature = "build")]

use flate2::read::GzDecoder;
use skiff_kv::build::{self, BakeOptions, BuildError};
use skiff_kv::{Entry, KvError, Lookup, Store};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("skiff-kv-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch directory");
    dir
}

/// Writes `body` to `root/relative`, creating directories on the way.
fn put(root: &Path, relative: &str, body: &[u8]) {
    let path = root.join(relative);
    fs::create_dir_all(path.parent().expect("has a parent")).expect("create directories");
    fs::write(path, body).expect("write file");
}

/// `len` bytes that do not compress (xorshift).
fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A large, very compressible text.
fn big_text() -> Vec<u8> {
    (0..5000)
        .map(|i| format!("line {i}: the quick brown fox jumps over the lazy dog\n"))
        .collect::<String>()
        .into_bytes()
}

/// A site with nested directories, an index, CSS, a PNG-like file, an
/// empty file, a large text, an unknown type and hidden files.
fn site(root: &Path) {
    put(root, "index.html", b"<!doctype html><title>Skiff</title><h1>Hello</h1>");
    put(root, "css/site.css", "body { margin: 0; padding: 0; }\n".repeat(40).as_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(noise(4000, 0x9e37_79b9_7f4a_7c15));
    put(root, "img/logo.png", &png);
    put(root, "empty.txt", b"");
    put(root, "docs/index.html", b"<h1>Docs</h1>");
    put(root, "docs/big.txt", &big_text());
    put(root, "docs/deep/nested/data.json", br#"{"a": [1, 2, 3]}"#);
    put(root, "download.bin", &noise(100, 7));
    put(root, ".hidden", b"secret");
    put(root, ".git/config", b"[core]");
    put(root, "css/.DS_Store", b"junk");
}

/// Gunzips `bytes`.
fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).expect("valid gzip");
    out
}

/// The entry at `path`, which must exist.
fn entry<'a>(store: &Store<'a>, path: &str) -> Entry<'a> {
    store.get(path).unwrap_or_else(|| panic!("{path} is in the store"))
}

#[test]
fn round_trip() {
    let root = scratch("round-trip");
    site(&root);
    let mtime = UNIX_EPOCH + Duration::from_secs(1_234_567_890);
    fs::File::options()
        .write(true)
        .open(root.join("index.html"))
        .and_then(|f| f.set_modified(mtime))
        .expect("set mtime");

    let blob = build::bake(&root).expect("bake");
    let store = Store::new(&blob).expect("valid store");

    let expected = [
        "/css/site.css",
        "/docs/big.txt",
        "/docs/deep/nested/data.json",
        "/docs/index.html",
        "/download.bin",
        "/empty.txt",
        "/img/logo.png",
        "/index.html",
    ];
    let paths: Vec<&str> = store.iter().map(|e| e.path).collect();
    assert_eq!(paths, expected);
    assert_eq!(store.len(), expected.len());
    assert!(store.get("/.hidden").is_none() && store.get("/.git/config").is_none());

    for e in &store {
        let on_disk = fs::read(root.join(&e.path[1..])).expect("read source");
        assert_eq!(e.body, &on_disk[..], "{}", e.path);
        assert_eq!(store.get(e.path), Some(e));
        let etag = e.etag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).expect("quoted ETag");
        assert_eq!(etag.len(), 16, "{}", e.etag);
        assert!(etag.bytes().all(|b| b.is_ascii_hexdigit()));
        match (e.gzip, e.gzip_etag) {
            (Some(gz), Some(gz_etag)) => {
                assert_eq!(gunzip(gz), e.body, "{}", e.path);
                assert!(gz.len() * 10 <= e.body.len() * 9, "{} gzip is not worth it", e.path);
                assert_eq!(gz_etag, format!("\"{etag}-gz\""));
                assert_ne!(gz_etag, e.etag);
            }
            (None, None) => {}
            _ => panic!("{}: gzip and its ETag disagree", e.path),
        }
    }

    let ty = |path| entry(&store, path).content_type;
    assert_eq!(ty("/index.html"), "text/html; charset=utf-8");
    assert_eq!(ty("/css/site.css"), "text/css; charset=utf-8");
    assert_eq!(ty("/docs/big.txt"), "text/plain; charset=utf-8");
    assert_eq!(ty("/docs/deep/nested/data.json"), "application/json");
    assert_eq!(ty("/img/logo.png"), "image/png");
    assert_eq!(ty("/download.bin"), "application/octet-stream");

    assert!(entry(&store, "/docs/big.txt").gzip.is_some_and(|gz| gz.len() * 20 < big_text().len()));
    assert!(entry(&store, "/css/site.css").gzip.is_some());
    assert!(entry(&store, "/img/logo.png").gzip.is_none());
    assert!(entry(&store, "/download.bin").gzip.is_none());
    let empty = entry(&store, "/empty.txt");
    assert!(empty.body.is_empty() && empty.gzip.is_none());
    assert_eq!(empty.etag, "\"cbf29ce484222325\"");

    assert_eq!(entry(&store, "/index.html").modified, 1_234_567_890);
    assert!(entry(&store, "/docs/big.txt").modified > 1_600_000_000);

    let _ = fs::remove_dir_all(&root);
}

#[test]
fn etags_follow_content() {
    let root = scratch("etags");
    site(&root);
    let first = build::bake(&root).expect("bake");
    let second = build::bake(&root).expect("bake");
    assert_eq!(first, second, "the same tree bakes to the same bytes");

    let mut text = big_text();
    text[1234] ^= 0x20;
    put(&root, "docs/big.txt", &text);
    let third = build::bake(&root).expect("bake");

    let (before, after) = (Store::new(&first).expect("valid"), Store::new(&third).expect("valid"));
    for e in &before {
        let changed = entry(&after, e.path);
        if e.path == "/docs/big.txt" {
            assert_ne!(e.etag, changed.etag);
            assert_ne!(e.gzip_etag, changed.gzip_etag);
            assert_eq!(changed.body, &text[..]);
        } else {
            assert_eq!(e.etag, changed.etag, "{}", e.path);
            assert_eq!(e.gzip_etag, changed.gzip_etag, "{}", e.path);
        }
    }
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn mtime_clamp_makes_blobs_reproducible() {
    let root = scratch("clamp");
    site(&root);
    let options = BakeOptions::with_mtime_clamp(1_000_000_000);
    let (blob, summary) = build::bake_with(&root, &options).expect("bake");
    let store = Store::new(&blob).expect("valid");
    assert!(store.iter().all(|e| e.modified == 1_000_000_000));
    assert_eq!(summary.files, 8);
    assert_eq!(summary.blob_len, blob.len());
    assert_eq!(summary.bytes, store.iter().map(|e| e.body.len() as u64).sum::<u64>());
    let saved: u64 = store.iter().filter_map(|e| e.gzip.map(|gz| (e.body.len() - gz.len()) as u64)).sum();
    assert_eq!(summary.gzip_saved, saved);
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn resolve() {
    let root = scratch("resolve");
    site(&root);
    let blob = build::bake(&root).expect("bake");
    let store = Store::new(&blob).expect("valid");
    let found = |url: &str| match store.resolve(url) {
        Lookup::Found(e) => Some(e.path),
        _ => None,
    };

    assert_eq!(found("/"), Some("/index.html"));
    assert_eq!(found("/index.html"), Some("/index.html"));
    assert_eq!(found("/docs/"), Some("/docs/index.html"));
    assert_eq!(store.resolve("/docs"), Lookup::RedirectToDir);
    assert_eq!(found("/docs/big.txt"), Some("/docs/big.txt"));
    assert_eq!(store.resolve("/missing"), Lookup::NotFound);
    assert_eq!(store.resolve("/missing/"), Lookup::NotFound);
    assert_eq!(store.resolve("/css"), Lookup::NotFound, "a directory without an index");
    assert_eq!(store.resolve("/css/"), Lookup::NotFound);
    assert_eq!(store.resolve("/../etc/passwd"), Lookup::NotFound);
    assert_eq!(store.resolve("/docs/../index.html"), Lookup::NotFound);
    assert_eq!(store.resolve("/docs/.."), Lookup::NotFound);
    assert_eq!(store.resolve("/css\\site.css"), Lookup::NotFound);
    assert_eq!(store.resolve("/index.html\0"), Lookup::NotFound);
    assert_eq!(store.resolve(""), Lookup::NotFound);
    assert_eq!(store.resolve("index.html"), Lookup::NotFound);
    assert_eq!(store.resolve("/.hidden"), Lookup::NotFound);
    let _ = fs::remove_dir_all(&root);
}

/// Every way of reading the store, to show a store that `Store::new`
/// accepted never panics.
fn exercise(store: &Store<'_>) {
    for e in store {
        assert!(store.get(e.path).is_some());
        let _ = store.resolve(e.path);
    }
    for url in ["/", "/docs", "/docs/", "/index.html", "/missing"] {
        let _ = store.resolve(url);
    }
}

/// A small baked blob for the corruption tests.
fn small_blob(name: &str) -> Vec<u8> {
    let root = scratch(name);
    put(&root, "index.html", b"<h1>Hi</h1>");
    put(&root, "docs/index.html", "<p>docs</p>\n".repeat(30).as_bytes());
    put(&root, "a.png", &noise(64, 3));
    put(&root, "empty.txt", b"");
    let blob = build::bake(&root).expect("bake");
    let _ = fs::remove_dir_all(&root);
    blob
}

#[test]
fn truncated_blobs_are_errors() {
    let blob = small_blob("truncated");
    assert!(Store::new(&blob).is_ok());
    for len in 0..blob.len() {
        let result = Store::new(&blob[..len]);
        assert!(result.is_err(), "a blob cut to {len} of {} bytes was accepted", blob.len());
    }
    // Also when the header is patched to the cut length.
    for len in 20..blob.len() {
        let mut cut = blob[..len].to_vec();
        cut[16..20].copy_from_slice(&(len as u32).to_le_bytes());
        if let Ok(store) = Store::new(&cut) {
            panic!("a blob cut to {len} bytes with a patched length was accepted: {store:?}");
        }
    }
}

#[test]
fn wrong_magic_and_version_are_errors() {
    let blob = small_blob("magic");
    for i in 0..8 {
        let mut bad = blob.clone();
        bad[i] ^= 0x40;
        assert_eq!(Store::new(&bad).unwrap_err(), KvError::BadMagic);
    }
    let mut bad = blob.clone();
    bad[8..12].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(Store::new(&bad).unwrap_err(), KvError::UnsupportedVersion(2));
    assert!(Store::new(b"").is_err());
    assert!(Store::new(b"SKIFF-KV").is_err());
    assert!(Store::new(&[0; 64]).is_err());
}

#[test]
fn flipped_length_and_count_fields_are_errors() {
    let blob = small_blob("lengths");
    let count = u32::from_le_bytes(blob[12..16].try_into().expect("4 bytes")) as usize;
    assert_eq!(count, 4);

    for field in [12, 16] {
        for mask in [0x01u32, 0x80, 0x8000_0000, u32::MAX] {
            let mut bad = blob.clone();
            let value = u32::from_le_bytes(bad[field..field + 4].try_into().expect("4 bytes")) ^ mask;
            bad[field..field + 4].copy_from_slice(&value.to_le_bytes());
            assert!(Store::new(&bad).is_err(), "header field at {field} ^ {mask:#x} was accepted");
        }
    }
    for record in 0..count {
        for pair in 0..6 {
            let at = 20 + record * 56 + pair * 8 + 4;
            for value in [u32::MAX, 0x8000_0000, blob.len() as u32 + 1] {
                let mut bad = blob.clone();
                bad[at..at + 4].copy_from_slice(&value.to_le_bytes());
                assert!(Store::new(&bad).is_err(), "record {record} length {pair} = {value:#x} was accepted");
            }
            let offset = at - 4;
            let absent = blob[offset..offset + 8] == [0; 8];
            for value in [u32::MAX, 19, 0] {
                if value == 0 && absent {
                    continue;
                }
                let mut bad = blob.clone();
                bad[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
                assert!(Store::new(&bad).is_err(), "record {record} offset {pair} = {value:#x} was accepted");
            }
        }
    }
}

#[test]
fn no_corruption_panics() {
    let blob = small_blob("fuzz");
    let table_end = 20 + 4 * 56;
    // Every single-byte change of the header and table.
    for at in 0..table_end {
        for mask in [0x01, 0x02, 0x10, 0x80, 0xff] {
            let mut bad = blob.clone();
            bad[at] ^= mask;
            if let Ok(store) = Store::new(&bad) {
                exercise(&store);
            }
        }
    }
    // Random multi-byte damage anywhere, and random cuts.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut bad = blob.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % bad.len() as u64) as usize;
            bad[at] = next() as u8;
        }
        if next() % 4 == 0 {
            bad.truncate((next() % bad.len() as u64) as usize);
        }
        if let Ok(store) = Store::new(&bad) {
            exercise(&store);
        }
    }
}

#[test]
fn empty_directory_bakes_to_an_empty_store() {
    let root = scratch("empty");
    let blob = build::bake(&root).expect("bake");
    let store = Store::new(&blob).expect("valid");
    assert!(store.is_empty());
    assert_eq!(store.resolve("/"), Lookup::NotFound);
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn bake_to_writes_the_blob() {
    let root = scratch("bake-to");
    site(&root);
    let out = root.with_extension("kv");
    let summary = build::bake_to(&root, &out).expect("bake");
    let blob = fs::read(&out).expect("read blob");
    assert_eq!(summary.blob_len, blob.len());
    assert_eq!(Store::new(&blob).expect("valid").len(), summary.files);
    let _ = fs::remove_dir_all(&root);
    let _ = fs::remove_file(&out);
}

#[test]
fn bad_directories_are_errors() {
    let root = scratch("bad-dirs");
    assert!(matches!(build::bake(root.join("missing")), Err(BuildError::Io { .. })));
    put(&root, "file", b"x");
    assert!(matches!(build::bake(root.join("file")), Err(BuildError::NotADirectory(_))));
    put(&root, "site/a\\b.txt", b"x");
    assert!(matches!(build::bake(root.join("site")), Err(BuildError::UnservableName(_))));
    let _ = fs::remove_dir_all(&root);
}

#[cfg(unix)]
#[test]
fn symbolic_links() {
    use std::os::unix::fs::symlink;

    let root = scratch("symlinks");
    let site_dir = root.join("site");
    put(&site_dir, "index.html", b"<h1>Hi</h1>");
    put(&site_dir, "assets/app.js", b"console.log(1)");
    put(&root, "outside.txt", b"secret");

    // Links that stay inside are followed.
    symlink("index.html", site_dir.join("home.html")).expect("symlink");
    symlink("assets", site_dir.join("static")).expect("symlink");
    let blob = build::bake(&site_dir).expect("bake");
    let store = Store::new(&blob).expect("valid");
    assert_eq!(entry(&store, "/home.html").body, b"<h1>Hi</h1>");
    assert_eq!(entry(&store, "/static/app.js").body, b"console.log(1)");

    // A link to a directory that contains it would loop.
    symlink("..", site_dir.join("assets/up")).expect("symlink");
    assert!(matches!(build::bake(&site_dir), Err(BuildError::SymlinkCycle(_))));
    fs::remove_file(site_dir.join("assets/up")).expect("remove");

    // Links that leave are refused, however they are spelled.
    symlink("../outside.txt", site_dir.join("leak.txt")).expect("symlink");
    assert!(matches!(build::bake(&site_dir), Err(BuildError::SymlinkEscapes { .. })));
    fs::remove_file(site_dir.join("leak.txt")).expect("remove");
    symlink(&root, site_dir.join("assets/parent")).expect("symlink");
    assert!(matches!(build::bake(&site_dir), Err(BuildError::SymlinkEscapes { .. })));
    fs::remove_file(site_dir.join("assets/parent")).expect("remove");

    // A hidden link is skipped before it is looked at.
    symlink("/etc/passwd", site_dir.join(".passwd")).expect("symlink");
    assert_eq!(Store::new(&build::bake(&site_dir).expect("bake")).expect("valid").len(), 4);

    // A dangling link is an I/O error.
    symlink("nowhere", site_dir.join("dangling")).expect("symlink");
    assert!(matches!(build::bake(&site_dir), Err(BuildError::Io { .. })));
    let _ = fs::remove_dir_all(&root);
}

#[cfg(target_os = "linux")]
#[test]
fn non_utf8_names_are_errors() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let root = scratch("non-utf8");
    fs::write(root.join(OsStr::from_bytes(b"caf\xe9.html")), b"x").expect("write");
    assert!(matches!(build::bake(&root), Err(BuildError::NonUtf8Name(_))));
    let _ = fs::remove_dir_all(&root);
}

/// Set by `build_script_output` for the copy of this binary it runs as a
/// build script; the value says what the copy checks.
const CHILD_ENV: &str = "SKIFF_KV_TEST_BUILD_SCRIPT_CHILD";

/// The build script's side of `build_script_output`, in a copy of this
/// binary started with the environment cargo gives build scripts.
fn build_script_child(role: &str) {
    let result = build::bake_for_build_script("site", "site.kv");
    match role {
        "bake" => {
            let summary = result.expect("bake");
            assert_eq!(summary.files, 2);
            println!("child: baked {} files", summary.files);
        }
        "no-out-dir" => {
            assert!(matches!(result, Err(BuildError::MissingEnv("OUT_DIR"))), "{result:?}");
            println!("child: refused without OUT_DIR");
        }
        "bad-epoch" => {
            assert!(matches!(&result, Err(BuildError::BadSourceDateEpoch(v)) if v == "yesterday"), "{result:?}");
            println!("child: refused SOURCE_DATE_EPOCH=yesterday");
        }
        other => panic!("unknown child role {other:?}"),
    }
}

/// `bake_for_build_script` as cargo runs it: the environment variables
/// are the process's, so the build script's side runs in a copy of this
/// test binary (this same test, with `CHILD_ENV` set), and this side
/// checks what it printed and wrote.
#[test]
fn build_script_output() {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        build_script_child(&role);
        return;
    }
    // Names that are not one plain file name are refused before anything
    // is read or written.
    for name in ["../x", "", ".", "..", "a/b", "a\\b", "a\0b", "a\nb"] {
        let result = build::bake_for_build_script("site", name);
        assert!(matches!(&result, Err(BuildError::BadOutputName(n)) if n == name), "{name:?}: {result:?}");
    }

    let manifest_dir = scratch("build-script");
    put(&manifest_dir, "site/index.html", b"<h1>Hi</h1>");
    put(&manifest_dir, "site/css/a.css", b"p{}");
    let out_dir = manifest_dir.join("out");
    fs::create_dir_all(&out_dir).expect("create out dir");

    // Runs the child in `role`; its `cargo:` lines and the line saying
    // what it checked (proof that it ran this test and not nothing).
    let child = |role: &str, env: &[(&str, Option<&str>)]| -> (Vec<String>, String) {
        let mut command = Command::new(std::env::current_exe().expect("test binary"));
        command
            .args(["build_script_output", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, role)
            .env("CARGO_MANIFEST_DIR", &manifest_dir)
            .env("OUT_DIR", &out_dir)
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("SKIFF_KV_VERBOSE");
        for (name, value) in env {
            match value {
                Some(v) => command.env(name, v),
                None => command.env_remove(name),
            };
        }
        let output = command.output().expect("run child");
        let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
        assert!(output.status.success(), "{role}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
        // The first line printed follows the harness's "test NAME ... ".
        let from = |marker: &'static str| move |l: &str| l.find(marker).map(|i| l[i..].to_string());
        let said = stdout.lines().find_map(from("child: ")).unwrap_or_else(|| panic!("{role}: {stdout}"));
        (stdout.lines().filter_map(from("cargo:")).collect(), said)
    };
    let run = |verbose: bool| {
        let (lines, said) = child("bake", if verbose { &[("SKIFF_KV_VERBOSE", Some("1"))] } else { &[] });
        assert_eq!(said, "child: baked 2 files");
        lines
    };

    // Without OUT_DIR, or with a SOURCE_DATE_EPOCH that is no number, the
    // build script fails with the reason and writes nothing.
    let (_, said) = child("no-out-dir", &[("OUT_DIR", None)]);
    assert_eq!(said, "child: refused without OUT_DIR");
    let (_, said) = child("bad-epoch", &[("SOURCE_DATE_EPOCH", Some("yesterday"))]);
    assert_eq!(said, "child: refused SOURCE_DATE_EPOCH=yesterday");
    assert!(!out_dir.join("site.kv").exists());

    let quiet = run(false);
    let site = manifest_dir.join("site");
    for path in [site.clone(), site.join("index.html"), site.join("css/a.css")] {
        assert!(quiet.contains(&format!("cargo:rerun-if-changed={}", path.display())), "{quiet:?}");
    }
    assert!(quiet.contains(&"cargo:rerun-if-env-changed=SKIFF_KV_VERBOSE".to_string()));
    assert!(quiet.contains(&"cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH".to_string()), "{quiet:?}");
    assert!(!quiet.iter().any(|l| l.starts_with("cargo:warning")), "{quiet:?}");
    let blob = fs::read(out_dir.join("site.kv")).expect("blob written");
    assert_eq!(Store::new(&blob).expect("valid").len(), 2);

    let verbose = run(true);
    let warnings: Vec<_> = verbose.iter().filter(|l| l.starts_with("cargo:warning=")).collect();
    assert_eq!(warnings.len(), 1, "{verbose:?}");
    assert!(warnings[0].contains("2 files"), "{}", warnings[0]);
    let _ = fs::remove_dir_all(&manifest_dir);
}
