//! Docs that compile: every Rust block in README.md and docs/*.md, and
//! every guest example in the rustdoc of the crates a service uses, is
//! built for the guest here, and `skiff new`'s templates are the README's
//! samples.
//!
//! The convention (README.md states it too):
//!
//! - Markdown: a ```` ```rust ```` block is compiled; any attribute after
//!   `rust` (`ignore`, `no_run`, ...) fails the test. Other languages
//!   (`sh`, `text`, none) are not Rust.
//! - Rustdoc (`//!` and `///` in `crates/{skiff,macros,net,tls,http,kv}`):
//!   rustdoc builds its examples for the host, where a service cannot link,
//!   so guest examples are fenced ```` ```ignore ```` there, and each of
//!   those is compiled here.
//! - A block that contains `#[skiff::main` is a whole service (a
//!   `src/main.rs`). Any other block is a fragment: the body of
//!   `async fn fragment(env: skiff::Env, stack: skiff::net::Stack) ->
//!   Result<(), skiff::Error>` in a service that has `skiff::prelude::*`
//!   in scope and `CERT_PEM` / `KEY_PEM` (a self-signed certificate, as
//!   the `https` template's build script makes). A `site/` directory is
//!   baked into `site.kv` for `skiff::kv::include_store!("site.kv")`.
//!
//! All blocks go into one crate made by `skiff new --template https` (so
//! the `net`, `tls` and `http` features are on and `build.rs` makes the
//! certificate): one binary per service, and one more holding every
//! fragment in a module of its own. It is built in the shared guest target
//! directory with `examples/static-website`'s lock file, so the TLS
//! dependencies are the ones the boot tests already built.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// A code block found in the docs.
#[derive(Debug)]
struct Block {
    /// Where it is, for messages: `README.md:233`.
    place: String,
    /// A Rust identifier made from the place: `readme_md_233`.
    ident: String,
    /// The fence's info string (`rust`, `ignore`, `sh`, ...).
    info: String,
    code: String,
}

fn ident_for(file: &str, line: usize) -> String {
    let name: String =
        file.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    format!("{name}_{line}")
}

/// The fenced blocks of a Markdown text, with the line of their opening
/// fence. Fences may be indented (inside list items); the indentation is
/// removed from the block's lines.
fn fenced_blocks(file: &str, text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, usize, String, String)> = None; // line, indent, info, code
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((i + 1, indent, info.trim().to_string(), String::new()));
                }
            }
            Some((start, fence_indent, info, code)) => {
                if trimmed == "```" {
                    blocks.push(Block {
                        place: format!("{file}:{start}"),
                        ident: ident_for(file, *start),
                        info: std::mem::take(info),
                        code: std::mem::take(code),
                    });
                    open = None;
                } else {
                    let cut = line.len().min(*fence_indent).min(indent);
                    code.push_str(&line[cut..]);
                    code.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "{file}: a code block is never closed");
    blocks
}

/// The rustdoc text of a Rust source file: its `//!` and `///` lines, with
/// the source line numbers kept (other lines become empty).
fn doc_text(source: &str) -> String {
    let mut text = String::new();
    for line in source.lines() {
        let t = line.trim_start();
        let doc = t.strip_prefix("//!").or_else(|| t.strip_prefix("///"));
        if let Some(doc) = doc {
            text.push_str(doc.strip_prefix(' ').unwrap_or(doc));
        }
        text.push('\n');
    }
    text
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every block the test compiles.
fn guest_blocks() -> Vec<Block> {
    let root = workspace();
    let mut markdown = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    markdown.extend(docs);

    let mut blocks = Vec::new();
    for path in markdown {
        let name = path.strip_prefix(&root).unwrap().display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        for b in fenced_blocks(&name, &text) {
            let lang = b.info.split([',', ' ']).next().unwrap_or("");
            if lang == "rust" {
                assert_eq!(b.info, "rust", "{}: a Rust block in the docs must compile: no `{}`", b.place, b.info);
                blocks.push(b);
            }
        }
    }
    for krate in ["skiff", "macros", "net", "tls", "http", "kv"] {
        let mut sources = Vec::new();
        rust_sources(&root.join("crates").join(krate).join("src"), &mut sources);
        for path in sources {
            let name = path.strip_prefix(&root).unwrap().display().to_string();
            let text = doc_text(&std::fs::read_to_string(&path).unwrap());
            blocks.extend(fenced_blocks(&name, &text).into_iter().filter(|b| b.info == "ignore"));
        }
    }
    blocks
}

fn is_service(b: &Block) -> bool {
    b.code.contains("#[skiff::main")
}

/// The binary that holds every fragment, each in a module of its own.
fn fragments_bin(fragments: &[&Block]) -> String {
    let mut s = String::from(
        "//! The fragments of the docs, each in the function body the docs test wraps it in.\n\
         #![no_std]\n#![no_main]\n#![allow(unused, unreachable_code, dead_code)]\n\n\
         use skiff::prelude::*;\n\n\
         const CERT_PEM: &str = include_str!(concat!(env!(\"OUT_DIR\"), \"/cert.pem\"));\n\
         const KEY_PEM: &str = include_str!(concat!(env!(\"OUT_DIR\"), \"/key.pem\"));\n\n\
         #[skiff::main(net = \"service\")]\n\
         async fn main(env: skiff::Env) -> Result<(), skiff::Error> {\n    Ok(())\n}\n",
    );
    for b in fragments {
        s.push_str(&format!(
            "\n// {}\nmod {} {{\n    use super::*;\n\n    \
             pub async fn fragment(env: skiff::Env, stack: skiff::net::Stack) -> Result<(), skiff::Error> {{\n",
            b.place, b.ident
        ));
        s.push_str(&b.code);
        s.push_str("        Ok(())\n    }\n}\n");
    }
    s
}

fn write_if_changed(path: &Path, contents: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(contents) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}

/// The docs crate: made by `skiff new --template https`, kept between runs
/// so cargo rebuilds only what changed.
fn docs_crate() -> PathBuf {
    let root = workspace();
    let dir = root.join("target/docs-tests/docs-examples");
    let fresh = root.join("target/docs-tests/fresh");
    let _ = std::fs::remove_dir_all(&fresh);
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["new", "docs-examples", "--template", "https", "--path", fresh.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "skiff new failed: {}", String::from_utf8_lossy(&out.stderr));
    // The kv examples serve a baked `site/`: the build script bakes one too.
    let manifest = std::fs::read_to_string(fresh.join("Cargo.toml")).unwrap();
    let kv = root.join("crates/kv").display().to_string();
    let manifest = manifest.replacen(
        "[build-dependencies]\n",
        &format!("[build-dependencies]\nskiff-kv = {{ path = {kv:?}, features = [\"build\"] }}\n"),
        1,
    );
    assert!(manifest.contains("skiff-kv"), "the https template has no [build-dependencies]:\n{manifest}");
    let build = std::fs::read_to_string(fresh.join("build.rs")).unwrap();
    let bake =
        "fn main() {\n    skiff_kv::build::bake_for_build_script(\"site\", \"site.kv\").expect(\"bake site/\");\n";
    let build = build.replacen("fn main() {\n", bake, 1);
    assert!(build.contains("bake_for_build_script"), "the https template's build.rs has no main:\n{build}");
    write_if_changed(&dir.join("Cargo.toml"), &manifest);
    write_if_changed(&dir.join("build.rs"), &build);
    write_if_changed(&dir.join("site/index.html"), "<!doctype html><title>Skiff</title><p>hello</p>\n");
    // Every run: a lock file cargo rewrote without Skiff's getrandom patch
    // (a `cargo clean` by hand) must not stay.
    std::fs::copy(root.join("examples/static-website/Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let _ = std::fs::remove_dir_all(&fresh);
    dir
}

#[test]
fn every_rust_block_in_the_docs_builds_for_the_guest() {
    let blocks = guest_blocks();
    assert!(blocks.len() >= 2, "the README's samples are missing: {blocks:?}");
    let dir = docs_crate();
    let _ = std::fs::remove_file(dir.join("src/main.rs"));

    let mut bins: Vec<(String, String, String)> = Vec::new(); // name, places, source
    let fragments: Vec<&Block> = blocks.iter().filter(|b| !is_service(b)).collect();
    for b in blocks.iter().filter(|b| is_service(b)) {
        bins.push((b.ident.clone(), b.place.clone(), b.code.clone()));
    }
    if !fragments.is_empty() {
        let places: Vec<&str> = fragments.iter().map(|b| b.place.as_str()).collect();
        bins.push(("fragments".into(), places.join(", "), fragments_bin(&fragments)));
    }
    // Binaries of blocks that are gone go too.
    let bin_dir = dir.join("src/bin");
    if let Ok(entries) = std::fs::read_dir(&bin_dir) {
        for e in entries {
            let path = e.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            if !bins.iter().any(|(name, _, _)| *name == stem) {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
    for (name, _, source) in &bins {
        write_if_changed(&bin_dir.join(format!("{name}.rs")), source);
    }

    let mut failed = Vec::new();
    for (name, places, _) in &bins {
        let mut opts = skiff_build::BuildOptions::new(&dir);
        opts.target_dir = Some(workspace().join("target/guest"));
        opts.bin = Some(name.clone());
        opts.quiet = true;
        if let Err(e) = skiff_build::build(&opts) {
            // Again, with cargo's whole output, to show rustc's messages.
            opts.quiet = false;
            let _ = skiff_build::build(&opts);
            failed.push(format!("{places} (src/bin/{name}.rs in {}): {e}", dir.display()));
        }
    }
    assert!(failed.is_empty(), "doc examples that do not build:\n{}", failed.join("\n"));
}

#[test]
fn the_templates_are_the_readme_samples() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let blocks: Vec<Block> = fenced_blocks("README.md", &readme).into_iter().filter(|b| b.info == "rust").collect();
    let template = |name: &str| {
        std::fs::read_to_string(workspace().join("crates/cli/templates").join(name).join("main.rs")).unwrap()
    };
    assert_eq!(blocks.first().map(|b| b.code.as_str()), Some(template("default").as_str()), "the first sample");
    let https = template("https");
    assert!(blocks.iter().any(|b| b.code == https), "the README does not show the https template:\n{https}");

    // They are outside the workspace's `cargo fmt`: formatted as the rest.
    let templates = workspace().join("crates/cli/templates");
    let out = Command::new("rustfmt")
        .args(["--check", "--edition", "2024", "--config-path"])
        .arg(workspace().join("rustfmt.toml"))
        .args(["default/main.rs", "https/main.rs", "https/build.rs"].map(|f| templates.join(f)))
        .output()
        .expect("run rustfmt");
    assert!(out.status.success(), "the templates are not formatted:\n{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn blocks_are_found_with_their_lines_and_indentation() {
    let text = "intro\n\n```rust\nfn a() {}\n```\n\n- item\n\n  ```sh\n  echo hi\n    more\n  ```\n";
    let blocks = fenced_blocks("x.md", text);
    assert_eq!(blocks.len(), 2);
    assert_eq!((blocks[0].place.as_str(), blocks[0].info.as_str()), ("x.md:3", "rust"));
    assert_eq!(blocks[0].code, "fn a() {}\n");
    assert_eq!(blocks[1].code, "echo hi\n  more\n");
    assert_eq!(blocks[1].ident, "x_md_9");
    let doc = doc_text("//! top\n/// ```ignore\n///     let x = 1;\n/// ```\nfn f() {}\n");
    let blocks = fenced_blocks("f.rs", &doc);
    assert_eq!(
        (blocks[0].place.as_str(), blocks[0].info.as_str(), blocks[0].code.as_str()),
        ("f.rs:2", "ignore", "    let x = 1;\n")
    );
}
