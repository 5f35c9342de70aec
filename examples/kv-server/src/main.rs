//! A key-value REST service over HTTPS that keeps its data on a disk.
//!
//! The data lives in a crash-safe store (`skiff::store`) on the disk the
//! image declares as `data`. A write is answered only once its commit is
//! durable (flushed by the tender with `fdatasync`); writes that arrive
//! together on different connections share one flush (group commit).
//!
//! ```text
//! skiff run examples/kv-server --disk data=kv.img,size=64M --publish 8443:443
//! skiff run examples/kv-server --disk data=kv.img --net service=tap0 -- --ipv4 10.0.0.2/24
//!     [--cert "$(cat chain.pem)" --key "$(cat key.pem)"]   default: a self-signed demo certificate
//!     [--max-key BYTES]     longest key (default and at most 1024)
//!     [--max-value BYTES]   largest value (default 1M, at most 16M)
//!     [--max-txn OPS]       most operations in one transaction (default 1000)
//!     [--cache-pages N]     the store's page cache, in 4 KiB pages (default 1024)
//!     [--idle-sync 100ms]   confirm the store this long after the last write
//! ```
//!
//! The API (keys are bytes, percent-encoded in URLs and bodies):
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /v1/keys/KEY` | 200 and the value, or 404 |
//! | `PUT /v1/keys/KEY` (body: the value) | 204 once durable |
//! | `DELETE /v1/keys/KEY` | 204 once durable, or 404 (nothing to delete) |
//! | `GET /v1/keys?prefix=P&after=K&limit=N` | 200, `{"keys":[...],"next":"K"}`: keys in order, at most N (default 100, at most 1000); `next` is there when more follow (pass it as `after`) |
//! | `POST /v1/txn` (body below) | 200, `{"generation":G,"puts":N,"deletes":M}` once durable; all or nothing |
//!
//! A transaction body is text, one operation per line, applied in order
//! and committed atomically: `put KEY VALUE` or `delete KEY` (KEY and VALUE
//! percent-encoded; an empty VALUE is an empty value). Empty lines are
//! skipped. A bad line is 400 naming the line, and nothing is applied.
//!
//! A key longer than `--max-key` is 400; a value larger than `--max-value`
//! is 413; a full disk is 507 (the store stays readable, deletes work).
#![no_std]
#![no_main]

use alloc::rc::Rc;
use core::cell::Cell;
use core::fmt::Write as _;
use core::pin::pin;
use core::task::Poll;
use skiff::block::Disk;
use skiff::http::{Body, Method, Request, Response, Router, Server, ServerConfig, Status};
use skiff::net::{NetConfig, Stack, TcpListener};
use skiff::prelude::*;
use skiff::store::{Store, StoreError};
use skiff::tls::{ServerOptions, TlsAcceptor};

extern crate alloc;

/// The demo certificate made by the build script.
const DEMO_CERT: &str = include_str!(concat!(env!("OUT_DIR"), "/demo-cert.pem"));
const DEMO_KEY: &str = include_str!(concat!(env!("OUT_DIR"), "/demo-key.pem"));

/// Longest key the store takes.
const STORE_MAX_KEY: usize = 1024;
/// Largest value the store takes.
const STORE_MAX_VALUE: usize = 16 << 20;
/// Most keys in one listing.
const MAX_PAGE: usize = 1000;
/// Keys in a listing when the client does not say.
const DEFAULT_PAGE: usize = 100;

#[skiff::main(net = "service", block = "data")]
async fn main(env: skiff::Env) -> Result<(), skiff::Error> {
    let (config, rest) = NetConfig::from_args(env.args())?;
    let options = Options::parse(&rest)?;
    let disk = Disk::take(&env, "data")?;
    let store = open_store(disk, options.cache_pages).await?;
    let info = store.info();
    info!(
        "kv-server: store of {} MiB: {} keys, generation {}, {} of {} pages free{}",
        (info.pages * 4096) >> 20,
        info.keys,
        info.generation,
        info.free_pages,
        info.pages,
        match info.discarded {
            Some(g) => format!(", the unfinished commit {g} set aside"),
            None => String::new(),
        }
    );

    let stack = Stack::new(env.take_net("service")?, config, &env.spawner());
    let (cert, key, which) = match (&options.cert, &options.key) {
        (Some(c), Some(k)) => (c.as_bytes(), k.as_bytes(), "from the command line"),
        (None, None) => (DEMO_CERT.as_bytes(), DEMO_KEY.as_bytes(), "self-signed demo certificate for localhost"),
        _ => return Err("--cert and --key go together".into()),
    };
    let tls = ServerOptions::default().alpn(skiff::http::ALPN).build(cert, key)?;
    let acceptor = TlsAcceptor::new(tls)?;
    let listener = TcpListener::bind(&stack, 443)?;

    let kv = Rc::new(Kv { store, options, dirty: Cell::new(false), last_write: Cell::new(Instant::now()) });
    let mut server_config = ServerConfig::default();
    // The largest body: a value, or a transaction of values (escaped).
    server_config.limits.body = kv.options.max_value.max(kv.options.max_txn_body()) + 64 * 1024;
    let server = Rc::new(Server::new(router(&kv), server_config));

    let addr = stack.wait_ipv4().await;
    info!("kv-server: serving https://{addr}:443/v1/keys ({which})");
    env.spawn(sync_when_idle(kv.clone()));
    env.spawn(verify_in_background(kv.clone()));

    let mut serve = pin!(server.serve_tls(env.spawner(), listener, acceptor));
    let mut stop = pin!(env.stopping());
    let ended = core::future::poll_fn(|cx| {
        if let Poll::Ready(r) = serve.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        stop.as_mut().poll(cx).map(|()| None)
    })
    .await;
    // Commits already acknowledged are durable; this confirms the newest
    // one, so that nothing later can take it for a torn commit.
    let synced = kv.store.sync().await;
    let generation = kv.store.info().generation;
    match (&ended, synced) {
        (None, Ok(())) => info!("kv-server: stopping; the store is synced at generation {generation}"),
        (_, Err(e)) => error!("kv-server: syncing the store at the end failed: {e}"),
        (Some(_), Ok(())) => {}
    }
    match ended {
        Some(Err(e)) => Err(format!("kv-server: the HTTPS listener failed: {e}").into()),
        _ => Ok(()),
    }
}

/// Opens the store on `disk`; a disk that is all zeros where the
/// superblocks go (a new disk file) gets an empty store, anything else
/// that is not a store is refused, never formatted.
async fn open_store(disk: Disk, cache_pages: usize) -> Result<Store<Disk>, String> {
    let opts = skiff::store::Options { cache_pages, ..Default::default() };
    let mut head = vec![0u8; 2 * 4096];
    let blank = disk.read(0, &mut head).await.is_ok() && head.iter().all(|&b| b == 0);
    if blank {
        info!("kv-server: the disk is blank: creating an empty store");
        return Store::create(disk, opts)
            .await
            .map_err(|e| format!("kv-server: cannot create a store on the disk: {e}"));
    }
    Store::open(disk, opts).await.map_err(|e| match e {
        StoreError::NotAStore(why) => {
            format!("kv-server: the disk holds data that is not a store ({why}); refusing to format it")
        }
        e => format!("kv-server: cannot open the store on the disk: {e}"),
    })
}

/// Confirms the store ([`Store::sync`]) once writes have stopped for
/// `--idle-sync`.
/// A store that was closed cleanly opens without walking its tree; the
/// walk (every tree page verified, free space rebuilt) runs here while
/// reads are served, so the first write does not wait for it (about a
/// second per GiB).
async fn verify_in_background(kv: Rc<Kv>) {
    match kv.store.finish_open().await {
        Ok(()) => info!("kv-server: store verified ({} pages free)", kv.store.info().free_pages),
        Err(e) => error!("kv-server: the store is damaged, writes are refused: {e}"),
    }
}

async fn sync_when_idle(kv: Rc<Kv>) {
    let idle = kv.options.idle_sync;
    loop {
        skiff::time::sleep(idle).await;
        if kv.dirty.get() && kv.last_write.get().elapsed() >= idle {
            kv.dirty.set(false);
            if let Err(e) = kv.store.sync().await {
                error!("kv-server: syncing the idle store failed: {e}");
            }
        }
    }
}

/// The service's state.
struct Kv {
    store: Store<Disk>,
    options: Options,
    /// Written since the last sync.
    dirty: Cell<bool>,
    last_write: Cell<Instant>,
}

fn router(kv: &Rc<Kv>) -> Router {
    fn with(kv: &Rc<Kv>) -> Rc<Kv> {
        kv.clone()
    }
    let (list, get, put, delete, txn) = (with(kv), with(kv), with(kv), with(kv), with(kv));
    Router::new()
        .route(Method::Get, "/v1/keys", move |req: Request| {
            let kv = list.clone();
            async move { kv.list(&req).await }
        })
        .route(Method::Get, "/v1/keys/*", move |req: Request| {
            let kv = get.clone();
            async move { kv.get(&req).await }
        })
        .route(Method::Put, "/v1/keys/*", move |req: Request| {
            let kv = put.clone();
            async move { kv.put(req).await }
        })
        .route(Method::Delete, "/v1/keys/*", move |req: Request| {
            let kv = delete.clone();
            async move { kv.delete(&req).await }
        })
        .route(Method::Post, "/v1/txn", move |req: Request| {
            let kv = txn.clone();
            async move { kv.txn(&req).await }
        })
}

/// A response for a refused request: its status and a one-line reason.
struct Refused(Status, String);

impl From<Refused> for Response {
    fn from(r: Refused) -> Response {
        Response::text(r.0, r.1 + "\n")
    }
}

fn store_failed(e: StoreError) -> Refused {
    match e {
        StoreError::Full { .. } => Refused(Status::INSUFFICIENT_STORAGE, format!("{e}")),
        StoreError::ReadOnly => Refused(Status::SERVICE_UNAVAILABLE, "the disk is read-only".into()),
        StoreError::Damaged(_) | StoreError::Failed(_) => Refused(Status::SERVICE_UNAVAILABLE, format!("{e}")),
        e => {
            error!("kv-server: store: {e}");
            Refused(Status::INTERNAL_SERVER_ERROR, format!("{e}"))
        }
    }
}

impl Kv {
    /// The key named by the path `/v1/keys/KEY`.
    fn key_of(&self, req: &Request) -> Result<Vec<u8>, Refused> {
        let raw = req.path().strip_prefix("/v1/keys/").unwrap_or("");
        let key = percent_decode(raw).map_err(|e| Refused(Status::BAD_REQUEST, format!("the key: {e}")))?;
        self.check_key(&key)?;
        Ok(key)
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Refused> {
        if key.is_empty() {
            return Err(Refused(Status::BAD_REQUEST, "the key is empty".into()));
        }
        if key.len() > self.options.max_key {
            return Err(Refused(
                Status::BAD_REQUEST,
                format!("a key of {} bytes is too long (at most {})", key.len(), self.options.max_key),
            ));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Refused> {
        if value.len() > self.options.max_value {
            return Err(Refused(
                Status::PAYLOAD_TOO_LARGE,
                format!("a value of {} bytes is too large (at most {})", value.len(), self.options.max_value),
            ));
        }
        Ok(())
    }

    fn wrote(&self) {
        self.dirty.set(true);
        self.last_write.set(Instant::now());
    }

    async fn get(&self, req: &Request) -> Response {
        let key = match self.key_of(req) {
            Ok(k) => k,
            Err(r) => return r.into(),
        };
        match self.store.get(&key).await {
            Ok(Some(value)) => Response::new(Status::OK)
                .header("content-type", &b"application/octet-stream"[..])
                .body(Body::Bytes(value)),
            Ok(None) => Refused(Status::NOT_FOUND, "no such key".into()).into(),
            Err(e) => store_failed(e).into(),
        }
    }

    async fn put(&self, req: Request) -> Response {
        let key = match self.key_of(&req).and_then(|k| self.check_value(&req.body).map(|()| k)) {
            Ok(k) => k,
            Err(r) => return r.into(),
        };
        self.wrote();
        match self.store.put(&key, &req.body).await {
            Ok(()) => Response::new(Status::NO_CONTENT),
            Err(e) => store_failed(e).into(),
        }
    }

    async fn delete(&self, req: &Request) -> Response {
        let key = match self.key_of(req) {
            Ok(k) => k,
            Err(r) => return r.into(),
        };
        self.wrote();
        match self.store.delete(&key).await {
            Ok(true) => Response::new(Status::NO_CONTENT),
            Ok(false) => Refused(Status::NOT_FOUND, "no such key".into()).into(),
            Err(e) => store_failed(e).into(),
        }
    }

    async fn list(&self, req: &Request) -> Response {
        match self.try_list(req).await {
            Ok(r) => r,
            Err(r) => r.into(),
        }
    }

    async fn try_list(&self, req: &Request) -> Result<Response, Refused> {
        let (mut prefix, mut after, mut limit) = (Vec::new(), None, DEFAULT_PAGE);
        for pair in req.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |e: String| Refused(Status::BAD_REQUEST, format!("{name}: {e}"));
            match name {
                "prefix" => prefix = percent_decode(value).map_err(bad)?,
                "after" => after = Some(percent_decode(value).map_err(bad)?),
                "limit" => {
                    limit = match value.parse::<usize>() {
                        Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                        _ => return Err(bad(format!("{value:?} is not a number from 1 to {MAX_PAGE}"))),
                    }
                }
                _ => {
                    return Err(Refused(
                        Status::BAD_REQUEST,
                        format!("unknown parameter {name:?} (prefix, after, limit)"),
                    ));
                }
            }
        }
        let snapshot = self.store.snapshot();
        // Start at the prefix, or after `after` when that comes later.
        let (mut from, mut strictly) = (prefix.clone(), false);
        if let Some(a) = after
            && a >= prefix
        {
            (from, strictly) = (a, true);
        }
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut more = false;
        loop {
            let found = snapshot.seek(&from, strictly).await.map_err(store_failed)?;
            match found {
                Some((k, _)) if k.starts_with(&prefix) => {
                    if keys.len() == limit {
                        more = true;
                        break;
                    }
                    from = k.clone();
                    strictly = true;
                    keys.push(k);
                }
                _ => break,
            }
        }
        let mut body = String::from("{\"keys\":[");
        for (i, k) in keys.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push('"');
            percent_encode(k, &mut body);
            body.push('"');
        }
        body.push(']');
        if more && let Some(last) = keys.last() {
            body.push_str(",\"next\":\"");
            percent_encode(last, &mut body);
            body.push('"');
        }
        body.push_str("}\n");
        Ok(Response::new(Status::OK)
            .header("content-type", &b"application/json"[..])
            .body(Body::Bytes(body.into_bytes())))
    }

    async fn txn(&self, req: &Request) -> Response {
        match self.try_txn(req).await {
            Ok(r) => r,
            Err(r) => r.into(),
        }
    }

    async fn try_txn(&self, req: &Request) -> Result<Response, Refused> {
        let ops = parse_txn(&req.body, self)?;
        self.wrote();
        let mut tx = self.store.write().await.map_err(store_failed)?;
        let (mut puts, mut deletes) = (0, 0);
        for op in &ops {
            match op {
                Op::Put(k, v) => {
                    tx.put(k, v).await.map_err(store_failed)?;
                    puts += 1;
                }
                Op::Delete(k) => {
                    tx.delete(k).await.map_err(store_failed)?;
                    deletes += 1;
                }
            }
        }
        let generation = tx.commit().await.map_err(store_failed)?;
        let body = format!("{{\"generation\":{generation},\"puts\":{puts},\"deletes\":{deletes}}}\n");
        Ok(Response::new(Status::OK)
            .header("content-type", &b"application/json"[..])
            .body(Body::Bytes(body.into_bytes())))
    }
}

/// One operation of a transaction.
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Parses a transaction body (see the crate's documentation).
fn parse_txn(body: &[u8], kv: &Kv) -> Result<Vec<Op>, Refused> {
    let text = core::str::from_utf8(body).map_err(|_| {
        Refused(Status::BAD_REQUEST, "the transaction is not text (percent-encode keys and values)".into())
    })?;
    let mut ops = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let at = |status: Status, e: String| Refused(status, format!("line {line_no}: {e}"));
        let mut words = line.split(' ');
        let verb = words.next().unwrap_or("");
        let key = words.next().ok_or_else(|| at(Status::BAD_REQUEST, "a key is missing".into()))?;
        let key = percent_decode(key).map_err(|e| at(Status::BAD_REQUEST, format!("the key: {e}")))?;
        kv.check_key(&key).map_err(|Refused(s, e)| at(s, e))?;
        let op = match verb {
            "put" => {
                let value = words.next().ok_or_else(|| at(Status::BAD_REQUEST, "put needs a value".into()))?;
                let value = percent_decode(value).map_err(|e| at(Status::BAD_REQUEST, format!("the value: {e}")))?;
                kv.check_value(&value).map_err(|Refused(s, e)| at(s, e))?;
                Op::Put(key, value)
            }
            "delete" => Op::Delete(key),
            other => return Err(at(Status::BAD_REQUEST, format!("unknown operation {other:?} (put or delete)"))),
        };
        if words.next().is_some() {
            return Err(at(Status::BAD_REQUEST, "too many words (escape spaces as %20)".into()));
        }
        ops.push(op);
        if ops.len() > kv.options.max_txn {
            return Err(Refused(
                Status::PAYLOAD_TOO_LARGE,
                format!("more than {} operations in one transaction", kv.options.max_txn),
            ));
        }
    }
    if ops.is_empty() {
        return Err(Refused(Status::BAD_REQUEST, "the transaction has no operations".into()));
    }
    Ok(ops)
}

/// Decodes `%XX` escapes; every other byte stands for itself.
fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(format!("a bad escape at byte {i} (use %XX)")),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Appends `bytes` percent-encoded: letters, digits and `-._~/` as they
/// are, every other byte as `%XX` (so the result is safe in URLs and JSON
/// strings).
fn percent_encode(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

struct Options {
    cert: Option<String>,
    key: Option<String>,
    max_key: usize,
    max_value: usize,
    max_txn: usize,
    cache_pages: usize,
    idle_sync: Duration,
}

impl Options {
    /// The largest transaction body: every operation a put of the largest
    /// value, escaped, bounded by 16 MiB.
    fn max_txn_body(&self) -> usize {
        (self.max_txn * (3 * (self.max_key + self.max_value) + 8)).min(16 << 20)
    }

    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            cert: None,
            key: None,
            max_key: STORE_MAX_KEY,
            max_value: 1 << 20,
            max_txn: 1000,
            cache_pages: 1024,
            idle_sync: Duration::from_millis(100),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
            match a.as_str() {
                "--cert" => o.cert = Some(value()?.clone()),
                "--key" => o.key = Some(value()?.clone()),
                "--max-key" => o.max_key = number(a, value()?, 1, STORE_MAX_KEY)?,
                "--max-value" => o.max_value = number(a, value()?, 0, STORE_MAX_VALUE)?,
                "--max-txn" => o.max_txn = number(a, value()?, 1, 100_000)?,
                "--cache-pages" => o.cache_pages = number(a, value()?, 16, 1 << 24)?,
                "--idle-sync" => o.idle_sync = duration(value()?)?.max(Duration::from_millis(1)),
                other => {
                    return Err(format!(
                        "unknown argument {other:?} (kv-server takes --cert, --key, --max-key, --max-value, \
                         --max-txn, --cache-pages, --idle-sync, and the network options)"
                    ));
                }
            }
        }
        Ok(o)
    }
}

/// A number from `min` to `max`, with an optional K or M suffix.
fn number(option: &str, v: &str, min: usize, max: usize) -> Result<usize, String> {
    let (n, mult) = match v.strip_suffix(['K', 'k']) {
        Some(n) => (n, 1024),
        None => match v.strip_suffix(['M', 'm']) {
            Some(n) => (n, 1 << 20),
            None => (v, 1),
        },
    };
    match n.parse::<usize>().ok().and_then(|n| n.checked_mul(mult)) {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("{option} {v:?}: a number from {min} to {max}")),
    }
}

fn duration(v: &str) -> Result<Duration, String> {
    let bad = || format!("{v:?} is not a duration (e.g. 500ms, 10s)");
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse().map(Duration::from_millis).map_err(|_| bad());
    }
    v.strip_suffix('s').unwrap_or(v).parse().map(Duration::from_secs).map_err(|_| bad())
}
