//! A static website over HTTPS from one unikernel.
//!
//! The files under `site/` are baked into the image at build time (with
//! their content types, ETags and gzip variants), so the guest needs no
//! disk. HTTPS on port 443 serves them; HTTP on port 80 redirects to HTTPS
//! (or, with `--http serve`, serves the same files in the clear).
//! Redirects name only the configured host names (`--host`), never the
//! `Host` a client made up nor the guest's own address.
//!
//! ```text
//! skiff run examples/static-website --publish 8443:443 --publish 8080:80 -- --https-port 8443
//! skiff run examples/static-website --net service=tap0 -- --ipv4 10.0.0.2/24
//!     [--cert "$(cat chain.pem)" --key "$(cat key.pem)"]   default: a self-signed demo certificate
//!     [--https-port N]      the port redirects point to (default 443; the published one)
//!     [--host NAME[,NAME...]] the site's host names, canonical first (default localhost):
//!                           redirects keep a Host that is one of them, else use the first
//!     [--hsts SECONDS]      send Strict-Transport-Security: max-age=SECONDS over HTTPS (default off)
//!     [--http redirect|serve]
//!     [--tcp-buffer 4K,16K] per-connection TCP buffers (receive, send; one size for both);
//!                           default 4K receive, and a send buffer by memory: the largest
//!                           power of two from 16K to 64K of which 256 connections take at
//!                           most a third of the heap (16K at --mem 16M, 64K at 64M)
//!     [--header-timeout 10s] how long a request head may take (408 after)
//!     [--tls-resumption on|off] session cache and tickets (default on)
//!     [--heap-log 10s]      log the heap's use and peak now and at this interval (default off)
//! ```
#![no_std]
#![no_main]

use alloc::rc::Rc;
use skiff::http::{HttpsRedirect, Server, ServerConfig, StaticFiles};
use skiff::net::{ListenOptions, NetConfig, Stack, TcpListener};
use skiff::prelude::*;
use skiff::tls::{ServerOptions, TlsAcceptor};

extern crate alloc;

/// The demo certificate made by the build script.
const DEMO_CERT: &str = include_str!(concat!(env!("OUT_DIR"), "/demo-cert.pem"));
const DEMO_KEY: &str = include_str!(concat!(env!("OUT_DIR"), "/demo-key.pem"));
/// When the demo certificate expires (seconds since 1970).
const DEMO_CERT_NOT_AFTER: &str = env!("DEMO_CERT_NOT_AFTER");

#[skiff::main(net = "service")]
async fn main(env: skiff::Env) -> Result<(), skiff::Error> {
    let (config, rest) = NetConfig::from_args(env.args())?;
    let options = Options::parse(&rest)?;
    let stack = Stack::new(env.take_net("service")?, config, &env.spawner());
    let mut tcp = stack.tcp_defaults();
    tcp.rx_buffer = options.rx_buffer;
    tcp.tx_buffer = options.tx_buffer;
    stack.set_tcp_defaults(tcp);

    let store = skiff::kv::include_store!("site.kv")?;
    let bytes: usize = store.iter().map(|e| e.body.len()).sum();

    let (cert, key, which) = match (&options.cert, &options.key) {
        (Some(c), Some(k)) => (c.as_bytes(), k.as_bytes(), "from the command line"),
        (None, None) => {
            check_demo_certificate();
            (DEMO_CERT.as_bytes(), DEMO_KEY.as_bytes(), "self-signed demo certificate for localhost")
        }
        _ => return Err("--cert and --key go together".into()),
    };
    // ALPN: http/1.1, and http/1.0 for clients that offer only that.
    let tls = ServerOptions::default().alpn(skiff::http::ALPN).resumption(options.resumption).build(cert, key)?;
    let acceptor = TlsAcceptor::new(tls)?;

    let listen = ListenOptions::with_tcp(tcp);
    let https_listener = TcpListener::bind_with(&stack, 443, listen)?;
    // Port 80 mostly redirects: a shorter backlog of ready sockets.
    let http_listener = TcpListener::bind_with(&stack, 80, ListenOptions { backlog: 4, ..listen })?;
    let files = StaticFiles::new(store).cache_control("max-age=60");
    let config = ServerConfig { header_timeout: options.header_timeout, ..ServerConfig::default() };
    let https = Rc::new(Server::new(files, ServerConfig { hsts: options.hsts, ..config }));

    let addr = stack.wait_ipv4().await;
    info!(
        "static-website: {} files ({} KiB) on https://{addr}:443/ ({which}); http://{addr}:80/ {}",
        store.len(),
        bytes / 1024,
        if options.serve_http { "serves them too" } else { "redirects to HTTPS" }
    );

    if let Some(every) = options.heap_log {
        env.spawn(log_heap(every));
    }
    let spawner = env.spawner();
    if options.serve_http {
        let plain = Rc::new(Server::new(files, config));
        env.spawn(log_end("http", plain.serve_tcp(spawner.clone(), http_listener)));
    } else {
        let redirect = HttpsRedirect::new(&options.hosts, options.https_port)?;
        let plain = Rc::new(Server::new(redirect, config));
        env.spawn(log_end("http", plain.serve_tcp(spawner.clone(), http_listener)));
    }
    https.serve_tls(spawner, https_listener, acceptor).await?;
    Ok(())
}

/// Logs the heap's use and peak now and every `every` (a soak watches
/// them).
async fn log_heap(every: Duration) {
    loop {
        info!(
            "static-website: heap {} KiB in use, peak {} KiB, of {} KiB",
            skiff::heap::used() / 1024,
            skiff::heap::peak() / 1024,
            skiff::heap::size() / 1024
        );
        skiff::time::sleep(every).await;
    }
}

async fn log_end(what: &str, serving: impl Future<Output = Result<(), skiff::net::TcpError>>) {
    if let Err(e) = serving.await {
        error!("static-website: {what} listener failed: {e}");
    }
}

/// Warns when the demo certificate made at build time has expired (or the
/// guest's clock is far off): browsers and curl then refuse it.
fn check_demo_certificate() {
    let now = skiff::time::wall_clock_nanos() / 1_000_000_000;
    match DEMO_CERT_NOT_AFTER.parse::<u64>() {
        Ok(end) if now > end => warn!(
            "static-website: the demo certificate expired {} days ago; rebuild (cargo clean -p static-website) \
             for a new one, or pass --cert and --key",
            (now - end) / 86_400
        ),
        _ => {}
    }
}

struct Options {
    cert: Option<String>,
    key: Option<String>,
    https_port: u16,
    hosts: Vec<String>,
    hsts: Option<Duration>,
    serve_http: bool,
    rx_buffer: usize,
    tx_buffer: usize,
    header_timeout: Duration,
    resumption: bool,
    heap_log: Option<Duration>,
}

fn duration(v: &str) -> Result<Duration, String> {
    let bad = || format!("{v:?} is not a duration (e.g. 500ms, 10s)");
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse().map(Duration::from_millis).map_err(|_| bad());
    }
    v.strip_suffix('s').unwrap_or(v).parse().map(Duration::from_secs).map_err(|_| bad())
}

fn size(v: &str) -> Result<usize, String> {
    let (n, mult) = match v.strip_suffix(['K', 'k']) {
        Some(n) => (n, 1024),
        None => (v, 1),
    };
    let n: usize = n.parse().map_err(|_| format!("{v:?} is not a size"))?;
    Ok((n * mult).clamp(2048, 1 << 20))
}

/// The default send buffer for a heap of `heap` bytes: the largest power
/// of two from 16 KiB to 64 KiB of which 256 connections take at most a
/// third of the heap. A larger buffer lets a connection have more of a large
/// file in flight (in runs by hand, 64 KiB served 100 KiB files at 16
/// connections 1.7 times as fast as 16 KiB), while 256 HTTPS connections
/// still fit `--mem 16M`.
fn default_send_buffer(heap: usize) -> usize {
    let share = heap / 3 / 256;
    let mut size = 16 * 1024;
    while size * 2 <= share && size < 64 * 1024 {
        size *= 2;
    }
    size
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            cert: None,
            key: None,
            https_port: 443,
            hosts: alloc::vec!["localhost".into()],
            hsts: None,
            serve_http: false,
            rx_buffer: 4 * 1024,
            tx_buffer: default_send_buffer(skiff::heap::size()),
            header_timeout: ServerConfig::default().header_timeout,
            resumption: true,
            heap_log: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
            match a.as_str() {
                "--cert" => o.cert = Some(value()?.clone()),
                "--key" => o.key = Some(value()?.clone()),
                "--https-port" => {
                    let v = value()?;
                    o.https_port = v.parse().map_err(|_| format!("--https-port {v:?}: not a port"))?;
                }
                "--host" => {
                    let v = value()?;
                    o.hosts = v.split(',').map(|h| h.trim().into()).collect();
                    // Checked here, so a bad name stops the start-up with
                    // a clear message.
                    HttpsRedirect::new(&o.hosts, 443).map_err(|e| format!("--host {v:?}: {e}"))?;
                }
                "--hsts" => {
                    let v = value()?;
                    let secs: u64 = v.parse().map_err(|_| format!("--hsts {v:?}: seconds, e.g. 31536000"))?;
                    o.hsts = (secs > 0).then(|| Duration::from_secs(secs));
                }
                "--http" => match value()?.as_str() {
                    "redirect" => o.serve_http = false,
                    "serve" => o.serve_http = true,
                    other => return Err(format!("--http {other:?}: use redirect or serve")),
                },
                "--tls-resumption" => match value()?.as_str() {
                    "on" => o.resumption = true,
                    "off" => o.resumption = false,
                    other => return Err(format!("--tls-resumption {other:?}: use on or off")),
                },
                "--header-timeout" => o.header_timeout = duration(value()?)?,
                "--heap-log" => {
                    let every = duration(value()?)?;
                    o.heap_log = (!every.is_zero()).then_some(every);
                }
                "--tcp-buffer" => {
                    let v = value()?;
                    let (rx, tx) = match v.split_once(',') {
                        Some((rx, tx)) => (size(rx)?, size(tx)?),
                        None => (size(v)?, size(v)?),
                    };
                    o.rx_buffer = rx;
                    o.tx_buffer = tx;
                }
                other => {
                    return Err(format!(
                        "unknown argument {other:?} (static-website takes --cert, --key, --https-port, --host, \
                         --hsts, --http, --tcp-buffer, --header-timeout, --tls-resumption, --heap-log, and the network options)"
                    ));
                }
            }
        }
        Ok(o)
    }
}
