//! Boot tests of examples/static-website on a TAP device in a network
//! namespace: curl and openssl fetch the site over HTTP and HTTPS (TLS 1.2
//! and 1.3 forced in turn), conditional and range requests and gzip
//! behave, and misbehaving raw-socket clients get the right answer while
//! other clients go on being served. And the other direction: a guest's
//! HTTP client fetches from servers the test runs (HTTP with a chunked
//! body, HTTPS from `openssl s_server` with certificate checks).
//!
//! Needs root, `/dev/kvm`, iproute2, curl and openssl (`scripts/setup`).

mod common;

use skiff_testnet::{Guard, NetNs, require_program, require_root, wait_for};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::workspace;

fn site() -> PathBuf {
    workspace().join("examples/static-website/site")
}

fn image() -> &'static Path {
    common::guest("examples/static-website")
}

const GUEST: &str = "10.0.0.2";

/// A CA and a leaf certificate for `localhost` and 10.0.0.2, made with the
/// openssl command line; shared by the tests.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    fn chain(&self) -> String {
        std::fs::read_to_string(self.dir.join("leaf.pem")).unwrap() + &std::fs::read_to_string(self.ca()).unwrap()
    }
    fn key(&self) -> String {
        std::fs::read_to_string(self.dir.join("leaf.key")).unwrap()
    }
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        require_program("openssl", "openssl");
        let dir = workspace().join(format!("target/website-tests/pki-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(&dir).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2";
        let args = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        let mut ca = args(&format!("req -x509 {ec} -keyout ca.key -out ca.pem -subj"));
        ca.push("/CN=Skiff Test CA".into());
        run(&ca.iter().map(String::as_str).collect::<Vec<_>>());
        let leaf = args(&format!("req {ec} -keyout leaf.key -out leaf.csr -subj /CN=localhost"));
        run(&leaf.iter().map(String::as_str).collect::<Vec<_>>());
        std::fs::write(dir.join("ext.cnf"), format!("subjectAltName=DNS:localhost,IP:{GUEST},IP:10.0.0.1\n")).unwrap();
        let sign = args("x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2");
        run(&[&sign.iter().map(String::as_str).collect::<Vec<_>>()[..], &["-extfile", "ext.cnf"]].concat());
        Pki { dir }
    })
}

/// The website running in its own namespace, reachable at 10.0.0.2.
struct Website {
    ns: NetNs,
    child: Guard,
    console: PathBuf,
}

impl Website {
    fn start(guest_args: &[&str]) -> Website {
        require_root();
        common::require_sandbox();
        require_program("curl", "curl");
        let image = image();
        let ns = NetNs::new().expect("create a network namespace");
        ns.add_tap("tap0", &["10.0.0.1/24"]).expect("create the TAP device");
        let dir = workspace().join("target/website-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let console = dir.join(format!("{}.out", ns.name()));
        let file = std::fs::File::create(&console).unwrap();
        let child = ns
            .command(common::tender())
            .args(common::sandbox_args())
            .args(["--net", "service=tap0", "--timeout", "300s", "--mem", "64M"])
            .arg(image)
            .arg("--")
            .args(["--ipv4", "10.0.0.2/24", "--gateway", "10.0.0.1"])
            .args(guest_args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start the tender");
        let mut w = Website { ns, child: Guard(child), console };
        w.wait_line("static-website:", Duration::from_secs(30));
        w
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let found = wait_for(limit, || self.output().lines().find(|l| l.contains(needle)).map(str::to_string));
        match found {
            Some(line) => line,
            None => {
                let status = self.child.0.try_wait().ok().flatten();
                panic!("no {needle:?} within {limit:?} (tender: {status:?}):\n{}", self.output())
            }
        }
    }

    /// Runs curl in the namespace; returns stdout, panics on failure.
    fn curl(&self, args: &[&str]) -> Vec<u8> {
        let out = self.ns.command("curl").args(["-sS", "--max-time", "20"]).args(args).output().expect("run curl");
        assert!(
            out.status.success(),
            "curl {args:?} failed: {}\nguest:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.output()
        );
        out.stdout
    }

    fn https(&self, path: &str) -> String {
        format!("https://localhost{path}")
    }

    /// curl options that reach the guest as `localhost` and trust the
    /// test CA.
    fn tls_args(&self) -> Vec<String> {
        vec!["--resolve".into(), format!("localhost:443:{GUEST}"), "--cacert".into(), pki().ca().display().to_string()]
    }

    fn raw(&self, f: impl FnOnce(TcpStream) -> String + Send + 'static) -> String {
        self.ns.run(move || {
            let s = TcpStream::connect_timeout(&format!("{GUEST}:80").parse().unwrap(), Duration::from_secs(5))
                .expect("connect to port 80");
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            f(s)
        })
    }
}

fn cert_args() -> Vec<String> {
    vec!["--cert".into(), pki().chain(), "--key".into(), pki().key()]
}

fn start_with_test_cert(extra: &[&str]) -> Website {
    let mut args: Vec<String> = cert_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Website::start(&refs)
}

/// Fetches every file in one curl run (one keep-alive connection) and
/// compares the bytes.
fn fetch_all(w: &Website, base: &str, extra: &[String]) {
    let files = common::site_files();
    let dir = workspace().join(format!("target/website-tests/{}-{}", w.ns.name(), extra.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut args: Vec<String> = extra.to_vec();
    args.extend(["-w".into(), "%{http_code} %{http_version} %{num_connects}\n".into()]);
    for (i, (path, _)) in files.iter().enumerate() {
        args.push("-o".into());
        args.push(dir.join(i.to_string()).display().to_string());
        args.push(format!("{base}{path}"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = String::from_utf8(w.curl(&refs)).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), files.len(), "{report}");
    for (i, (path, bytes)) in files.iter().enumerate() {
        let status = lines[i].split(' ').next().unwrap();
        assert_eq!(status, "200", "{path}: {}", lines[i]);
        let got = std::fs::read(dir.join(i.to_string())).unwrap();
        assert!(got == *bytes, "{path}: {} bytes fetched, {} in the site", got.len(), bytes.len());
    }
    // One connection carried them all (keep-alive).
    let connects: u32 = lines.iter().map(|l| l.rsplit(' ').next().unwrap().parse::<u32>().unwrap()).sum();
    assert_eq!(connects, 1, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn curl_fetches_every_file_over_https_with_tls13_and_tls12_and_over_http() {
    let w = start_with_test_cert(&["--http", "serve"]);
    let tls = w.tls_args();
    for (force, wanted) in [(&["--tlsv1.3"][..], "TLSv1.3"), (&["--tlsv1.2", "--tls-max", "1.2"][..], "TLSv1.2")] {
        let mut args = tls.clone();
        args.extend(force.iter().map(|s| s.to_string()));
        fetch_all(&w, "https://localhost", &args);
        // The version really was the one forced: curl says so in -v.
        let out = w.ns.command("curl").args(&args).args(["-v", "-o", "/dev/null", &w.https("/")]).output().unwrap();
        let verbose = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && verbose.contains(wanted), "{verbose}");
    }
    fetch_all(&w, &format!("http://{GUEST}"), &[]);
}

#[test]
fn openssl_completes_handshakes_and_shows_the_chain() {
    require_program("openssl", "openssl");
    let w = start_with_test_cert(&[]);
    for (flag, protocol) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let out =
            w.ns.command("openssl")
                .args(["s_client", "-connect", &format!("{GUEST}:443"), "-servername", "localhost", "-showcerts"])
                .args(["-CAfile", &pki().ca().display().to_string(), flag, "-alpn", "http/1.1"])
                .stdin(Stdio::null())
                .output()
                .expect("run openssl s_client");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("Verify return code: 0 (ok)"), "{flag}:\n{text}");
        assert!(text.contains("0 s:CN = localhost") || text.contains("0 s:CN=localhost"), "{flag}:\n{text}");
        assert!(text.contains("1 s:CN = Skiff Test CA") || text.contains("1 s:CN=Skiff Test CA"), "{flag}:\n{text}");
        assert!(text.contains(protocol), "{flag}:\n{text}");
        assert!(text.contains("ALPN protocol: http/1.1"), "{flag}:\n{text}");
    }
}

#[test]
fn the_demo_certificate_is_used_without_one_and_http_redirects() {
    require_program("openssl", "openssl");
    let w = Website::start(&[]);
    let out =
        w.ns.command("openssl")
            .args(["s_client", "-connect", &format!("{GUEST}:443"), "-servername", "localhost"])
            .stdin(Stdio::null())
            .output()
            .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("Skiff static-website demo"), "{text}");
    // Self-signed: openssl cannot verify it without being told to trust it.
    assert!(text.contains("Verify return code: 18") || text.contains("self-signed"), "{text}");
    // Valid now, for about a year, from about the build: not for ages.
    let begin = text.find("-----BEGIN CERTIFICATE-----").expect("the certificate in PEM");
    let end = text.find("-----END CERTIFICATE-----").expect("the end of the certificate") + 25;
    let cert = workspace().join(format!("target/website-tests/{}-demo.pem", w.ns.name()));
    std::fs::write(&cert, &text[begin..end]).unwrap();
    let x509 = |args: &[&str]| {
        Command::new("openssl").args(["x509", "-noout", "-in"]).arg(&cert).args(args).output().expect("run openssl")
    };
    assert!(x509(&["-checkend", "0"]).status.success(), "the demo certificate has expired");
    let days_400 = (400 * 24 * 3600).to_string();
    assert!(!x509(&["-checkend", &days_400]).status.success(), "the demo certificate is valid for over 400 days");
    let dates = String::from_utf8_lossy(&x509(&["-startdate"]).stdout).to_string();
    let year: u32 = dates.split_whitespace().rev().nth(1).and_then(|y| y.parse().ok()).expect("a start year");
    assert!(year >= 2025, "the demo certificate is valid from {dates}");

    // Redirects name the configured host (localhost by default), never the
    // guest's address, whatever Host says.
    let head =
        String::from_utf8(w.curl(&["-D", "-", "-o", "/dev/null", &format!("http://{GUEST}/docs/?x=1")])).unwrap();
    assert!(head.starts_with("HTTP/1.1 301"), "{head}");
    assert_eq!(header(&head, "location"), Some("https://localhost/docs/?x=1"), "{head}");
    let head = String::from_utf8(w.curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Host: example.org",
        &format!("http://{GUEST}/a"),
    ]))
    .unwrap();
    assert_eq!(header(&head, "location"), Some("https://localhost/a"), "{head}");
    let head = raw_answer(&w, b"GET / HTTP/1.0\r\n\r\n".to_vec());
    assert!(head.starts_with("HTTP/1.1 301"), "{head}");
    assert_eq!(header(&head, "location"), Some("https://localhost/"), "{head}");
    assert_eq!(header(&head, "strict-transport-security"), None, "HSTS over plain HTTP: {head}");
    // curl follows the redirect to HTTPS and gets the page.
    let page = w.curl(&["-k", "-L", "--resolve", &format!("localhost:443:{GUEST}"), &format!("http://{GUEST}/docs/")]);
    assert!(page == std::fs::read(site().join("docs/index.html")).unwrap());
    // HSTS is off unless asked for.
    let head = String::from_utf8(w.curl(&["-k", "-D", "-", "-o", "/dev/null", &format!("https://{GUEST}/")])).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header(&head, "strict-transport-security"), None, "{head}");
}

/// Runs `openssl s_client` against the guest's HTTPS port with `args`,
/// stdin closed; stdout and stderr together.
fn s_client(w: &Website, args: &[&str]) -> String {
    let out =
        w.ns.command("openssl")
            .args(["s_client", "-connect", &format!("{GUEST}:443"), "-servername", "localhost"])
            .args(["-CAfile", &pki().ca().display().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl s_client");
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn tls_edge_cases_alerts_alpn_cipher_order_slow_heads_hsts_and_bounded_logs() {
    require_program("openssl", "openssl");
    let w = start_with_test_cert(&["--header-timeout", "2s", "--hsts", "31536000", "--host", "localhost,www.test"]);

    // A failed handshake (no common ALPN protocol) reaches the client as
    // the alert that says so, in TLS 1.3 as in 1.2.
    for version in ["-tls1_3", "-tls1_2"] {
        let text = s_client(&w, &[version, "-alpn", "h2"]);
        assert!(text.contains("no application protocol"), "{version}:\n{text}");
    }

    // A client that offers only http/1.0 (curl -0) is served.
    let mut args = w.tls_args();
    args.extend(["--http1.0".into(), "-v".into(), "-o".into(), "/dev/null".into(), w.https("/")]);
    let out = w.ns.command("curl").args(&args).output().unwrap();
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{verbose}");
    assert!(
        verbose.contains("ALPN: server accepted http/1.0") || verbose.contains("ALPN, server accepted to use http/1.0"),
        "{verbose}"
    );
    assert!(verbose.contains("< HTTP/1.1 200"), "{verbose}");

    // The server's cipher order wins over a client that prefers ChaCha20.
    let text = s_client(&w, &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"]);
    assert!(text.contains("Cipher is TLS_AES_256_GCM_SHA384"), "{text}");
    let text = s_client(&w, &["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384"]);
    assert!(text.contains("Cipher is ECDHE-ECDSA-AES256-GCM-SHA384"), "{text}");
    // OpenSSL's own order (AES-256-GCM first, as wrk and curl offer it):
    // the server's first choice, AES-128-GCM with SHA-256, wins.
    let text = s_client(&w, &["-tls1_3"]);
    assert!(text.contains("Cipher is TLS_AES_128_GCM_SHA256"), "{text}");
    let text = s_client(&w, &["-tls1_2"]);
    assert!(text.contains("Cipher is ECDHE-ECDSA-AES128-GCM-SHA256"), "{text}");

    // HSTS over HTTPS when configured, on pages and refusals.
    let mut args = w.tls_args();
    args.extend(["-D".into(), "-".into(), "-o".into(), "/dev/null".into(), w.https("/"), w.https("/nope")]);
    let heads = String::from_utf8(w.curl(&args.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
    assert_eq!(heads.matches("strict-transport-security: max-age=31536000").count(), 2, "{heads}");

    // Redirects keep a configured Host, and only that.
    for (host, location) in
        [("www.test", "https://www.test/x"), ("WWW.TEST:80", "https://www.test/x"), ("evil.org", "https://localhost/x")]
    {
        let head = raw_answer(&w, format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes());
        assert_eq!(header(&head, "location"), Some(location), "Host {host}: {head}");
    }

    // A slow request head over HTTPS gets 408 after the header timeout, as
    // over plain HTTP.
    let started = Instant::now();
    let mut client =
        w.ns.command("openssl")
            .args(["s_client", "-quiet", "-connect", &format!("{GUEST}:443"), "-servername", "localhost"])
            .args(["-CAfile", &pki().ca().display().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_client");
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").unwrap();
    stdin.flush().unwrap();
    let mut stdout = client.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut answer = Vec::new();
        let _ = stdout.read_to_end(&mut answer);
        answer
    });
    let done = wait_for(Duration::from_secs(15), || reader.is_finished().then_some(()));
    let _ = client.kill();
    let _ = client.wait();
    drop(stdin);
    assert!(done.is_some(), "no answer to a slow head over HTTPS within 15 s");
    let answer = String::from_utf8_lossy(&reader.join().unwrap()).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "slow head over HTTPS: {answer:?}");
    assert!(header(&answer, "strict-transport-security").is_some(), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

    // Peers that fail their handshakes cannot fill the log: 40 of them get
    // at most 10 lines in a minute (two were logged above), the last
    // saying the rest are counted.
    let handshake_lines = |output: &str| output.lines().filter(|l| l.contains("TLS handshake with")).count();
    let before = handshake_lines(&w.output());
    assert_eq!(before, 2, "{}", w.output());
    for _ in 0..40 {
        w.ns.run(|| {
            let mut s = TcpStream::connect(format!("{GUEST}:443")).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00").unwrap();
            let _ = s.read_to_end(&mut Vec::new());
        });
    }
    std::thread::sleep(Duration::from_millis(200));
    let output = w.output();
    let lines = handshake_lines(&output);
    assert_eq!(lines, 10, "{lines} lines about failed handshakes:\n{output}");
    assert!(output.contains("are counted, not logged"), "{output}");
    // And the site still serves.
    let mut args = w.tls_args();
    args.push(w.https("/robots.txt"));
    w.curl(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn etags_ranges_and_gzip_behave() {
    let w = start_with_test_cert(&[]);
    let tls = w.tls_args();
    let curl = |extra: &[&str]| -> (String, Vec<u8>) {
        let dir = workspace().join("target/website-tests");
        let body_file = dir.join(format!("{}-body", w.ns.name()));
        // curl writes no file for an empty body: start without one.
        let _ = std::fs::remove_file(&body_file);
        let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
        args.extend_from_slice(&["-D", "-", "-o"]);
        let body_path = body_file.display().to_string();
        args.push(&body_path);
        args.extend_from_slice(extra);
        let head = String::from_utf8(w.curl(&args)).unwrap();
        let body = std::fs::read(&body_file).unwrap_or_default();
        (head, body)
    };
    let css = std::fs::read(site().join("css/site.css")).unwrap();
    let url = w.https("/css/site.css");

    // ETag, then If-None-Match: 304 with no body.
    let (head, body) = curl(&[&url]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, css);
    let etag = header(&head, "etag").expect("an ETag").to_string();
    let (head, body) = curl(&["-H", &format!("If-None-Match: {etag}"), &url]);
    assert!(head.starts_with("HTTP/1.1 304"), "{head}");
    assert!(body.is_empty());
    assert_eq!(header(&head, "etag"), Some(etag.as_str()));
    let (head, _) = curl(&["-H", "If-None-Match: \"something-else\"", &url]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Range: the bytes asked for, 206; past the end, 416.
    let (head, body) = curl(&["-r", "100-299", &url]);
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert_eq!(header(&head, "content-range"), Some(format!("bytes 100-299/{}", css.len()).as_str()));
    assert_eq!(body, css[100..300]);
    let (head, body) = curl(&["-r", "-50", &url]);
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert_eq!(body, css[css.len() - 50..]);
    let (head, _) = curl(&["-r", &format!("{}-", css.len() + 10), &url]);
    assert!(head.starts_with("HTTP/1.1 416"), "{head}");

    // gzip: the precompressed variant, decoded by curl to the same bytes.
    let (head, body) = curl(&["--compressed", &url]);
    assert_eq!(header(&head, "content-encoding"), Some("gzip"), "{head}");
    assert_eq!(header(&head, "vary"), Some("accept-encoding"), "{head}");
    assert_eq!(body, css);
    let gz_len: usize = header(&head, "content-length").unwrap().parse().unwrap();
    assert!(gz_len < css.len() / 2, "gzip {gz_len} of {}", css.len());
    let gz_etag = header(&head, "etag").unwrap().to_string();
    assert_ne!(gz_etag, etag, "the gzip variant has its own ETag");
    // Without Accept-Encoding: identity.
    let (head, _) = curl(&[&url]);
    assert_eq!(header(&head, "content-encoding"), None, "{head}");
    // A PNG is not compressed.
    let (head, body) = curl(&["--compressed", &w.https("/img/hero.png")]);
    assert_eq!(header(&head, "content-encoding"), None, "{head}");
    assert_eq!(body, std::fs::read(site().join("img/hero.png")).unwrap());
    // A missing page: 404 with the site's page.
    let (head, body) = curl(&[&w.https("/no/such/page")]);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(body, std::fs::read(site().join("404.html")).unwrap());
}

/// Sends `request` on a fresh connection to port 80 and returns the whole
/// answer (empty if there was none).
fn raw_answer(w: &Website, request: Vec<u8>) -> String {
    w.raw(move |mut s| {
        let _ = s.write_all(&request);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).to_string()
    })
}

/// Sends `request` on a fresh connection to port 80 and returns the
/// status line of the answer (or what happened instead).
fn raw_status(w: &Website, request: Vec<u8>) -> String {
    w.raw(move |mut s| {
        let _ = s.write_all(&request);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).lines().next().unwrap_or("(connection closed without an answer)").to_string()
    })
}

#[test]
fn misbehaving_clients_get_their_status_while_others_are_served() {
    let w = Arc::new(start_with_test_cert(&["--http", "serve", "--header-timeout", "2s"]));

    // A curl loop over HTTPS alongside everything below.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU32::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let looper = {
        let (w, stop, ok, failures) = (w.clone(), stop.clone(), ok.clone(), failures.clone());
        let index = std::fs::read(site().join("index.html")).unwrap();
        std::thread::spawn(move || {
            let mut args = w.tls_args();
            args.extend(["-sS".into(), "--max-time".into(), "10".into(), w.https("/index.html")]);
            while !stop.load(Ordering::Relaxed) {
                let out = w.ns.command("curl").args(&args).output().expect("run curl");
                if out.status.success() && out.stdout == index {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.lock().unwrap().push(String::from_utf8_lossy(&out.stderr).to_string());
                }
            }
        })
    };

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"\x16\x03\x01\x02\x00hello there\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        ("no version", b"GET /\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(), "HTTP/1.1 505"),
        ("unknown method", b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "HTTP/1.1 501"),
        (
            "POST to a file",
            b"POST /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
            "HTTP/1.1 405",
        ),
        ("POST without a length", b"POST / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "HTTP/1.1 411"),
        ("huge body", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n".to_vec(), "HTTP/1.1 413"),
        ("long URI", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(20_000)).into_bytes(), "HTTP/1.1 414"),
        (
            "oversized headers",
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
                "X-Filler: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n".repeat(1000)
            )
            .into_bytes(),
            "HTTP/1.1 431",
        ),
        (
            "gzip transfer coding",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            "HTTP/1.1 501",
        ),
        ("missing Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), "HTTP/1.1 400"),
    ];
    for (what, request, expected) in cases {
        let status = raw_status(&w, request);
        assert!(status.starts_with(expected), "{what}: got {status:?}, wanted {expected}");
    }

    // A slow drip of a head: 408 once the header timeout passes, however
    // steadily the bytes come.
    let started = Instant::now();
    let status = w.raw(|mut s| {
        for b in b"GET /index.html HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().chain([b'z'; 64].iter()) {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_string()
    });
    assert!(status.starts_with("HTTP/1.1 408"), "slow drip: {status:?}");
    assert!(started.elapsed() < Duration::from_secs(12), "took {:?}", started.elapsed());

    // A TLS client that sends garbage gets an alert and the server logs it.
    let garbage_tls = w.ns.run(|| {
        let mut s = TcpStream::connect(format!("{GUEST}:443")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00").unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        answer
    });
    assert_eq!(garbage_tls.first(), Some(&0x15), "a TLS alert record: {garbage_tls:?}");

    // Pipelined requests on one connection: answered in order.
    let answers = w.raw(|mut s| {
        s.write_all(
            b"GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\nHEAD /index.html HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).to_string()
    });
    let statuses: Vec<&str> = answers.lines().filter(|l| l.starts_with("HTTP/1.1 ")).collect();
    assert_eq!(statuses, ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found"], "{answers}");

    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    looper.join().unwrap();
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "curl failed {} times: {:?}", failures.len(), &failures[..failures.len().min(3)]);
    assert!(ok.load(Ordering::Relaxed) >= 5, "only {} fetches succeeded", ok.load(Ordering::Relaxed));
    assert!(w.output().contains("TLS handshake with 10.0.0.1"), "{}", w.output());
}

fn client_image() -> &'static Path {
    common::guest("tests/guests/httpclient")
}

/// Runs the client guest at 10.0.0.2 in `ns` to the end; its status and
/// output.
fn run_client(ns: &NetNs, args: &[&str]) -> (i32, String) {
    let out = ns
        .command(common::tender())
        .args(common::sandbox_args())
        .args(["--net", "service=tap0", "--timeout", "60s"])
        .arg(client_image())
        .arg("--")
        .args(["--ipv4", "10.0.0.2/24", "--gateway", "10.0.0.1"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the tender");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn fnv(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    format!("{h:016x}")
}

#[test]
fn the_guest_http_client_fetches_over_http_and_https() {
    require_root();
    common::require_sandbox();
    require_program("openssl", "openssl");
    let ns = NetNs::new().expect("create a network namespace");
    ns.add_tap("tap0", &["10.0.0.1/24"]).expect("create the TAP device");

    // HTTP: a server that answers with a chunked body and reports the
    // request it got.
    let body: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let expected = fnv(&body);
    let listener = ns.run(|| std::net::TcpListener::bind("10.0.0.1:8080").expect("bind 8080"));
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("the guest connects");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "the request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        let mut response =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for chunk in body.chunks(7000) {
            response.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            response.extend_from_slice(chunk);
            response.extend_from_slice(b"\r\n");
        }
        response.extend_from_slice(b"0\r\n\r\n");
        s.write_all(&response).unwrap();
        String::from_utf8_lossy(&request).to_string()
    });
    let (status, out) = run_client(&ns, &["http://10.0.0.1:8080/data?x=1"]);
    let request = server.join().unwrap();
    assert_eq!(status, 0, "{out}");
    assert!(request.starts_with("GET /data?x=1 HTTP/1.1\r\n"), "{request}");
    assert!(request.to_lowercase().contains("host: 10.0.0.1:8080\r\n"), "{request}");
    assert!(out.contains(&format!("httpclient: 200 OK, 50000 bytes, fnv {expected}")), "{out}");

    // HTTPS from openssl's test server, trusting the test CA.
    let pki = pki();
    // s_server serves one connection at a time: wait for its ACCEPT line
    // rather than probing the port (a probe would hold its only slot).
    let s_log = workspace().join(format!("target/website-tests/s_server-{}.log", std::process::id()));
    let log_file = std::fs::File::create(&s_log).unwrap();
    let mut s_server = Guard(
        ns.command("openssl")
            .args(["s_server", "-accept", "10.0.0.1:8443", "-www"])
            .arg("-cert")
            .arg(pki.dir.join("leaf.pem"))
            .arg("-key")
            .arg(pki.dir.join("leaf.key"))
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start openssl s_server"),
    );
    let up = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&s_log).ok().filter(|t| t.contains("ACCEPT")).map(|_| ())
    });
    assert!(up.is_some(), "openssl s_server did not start: {}", std::fs::read_to_string(&s_log).unwrap_or_default());
    let ca = std::fs::read_to_string(pki.ca()).unwrap();
    let (status, out) = run_client(&ns, &["https://10.0.0.1:8443/", "--ca", &ca]);
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("httpclient: 200 ok") || out.contains("httpclient: 200 OK"), "{out}");
    assert!(out.contains("content-type \"text/html\""), "{out}");

    // A CA that did not sign the server's certificate: refused, clearly.
    let stranger = workspace().join(format!("target/website-tests/stranger-{}.pem", std::process::id()));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=Stranger CA", "-keyout", "/dev/null", "-out"])
        .arg(&stranger)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    let other = std::fs::read_to_string(&stranger).unwrap();
    let (status, out) = run_client(&ns, &["https://10.0.0.1:8443/", "--ca", &other]);
    assert_eq!(status, 1, "{out}");
    assert!(out.contains("invalid peer certificate"), "{out}");
    let _ = s_server.0.kill();
}

/// testssl.sh against the site (protocols, ciphers, forward secrecy, every
/// vulnerability check, headers; the test CA trusted): no vulnerability,
/// no finding of medium severity or worse, and the guest's log stays
/// small although testssl fails a hundred handshakes on purpose. Fails,
/// saying so, where testssl is not installed (scripts/setup installs it).
#[test]
fn testssl_finds_nothing_and_the_log_stays_bounded() {
    let Some(testssl) = ["testssl", "testssl.sh"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok())
    else {
        panic!("this test needs testssl.sh; install the Debian package testssl.sh (scripts/setup does)");
    };
    let w = start_with_test_cert(&["--hsts", "31536000"]);
    let dir = workspace().join("target/website-tests");
    let json = dir.join(format!("{}-testssl.json", w.ns.name()));
    let _ = std::fs::remove_file(&json);
    let started = Instant::now();
    let mut run = Guard(
        w.ns.command(testssl)
            .args(["--quiet", "--color", "0", "--warnings", "off", "--nodns", "none", "--sneaky"])
            .args(["--connect-timeout", "10", "--openssl-timeout", "10", "--severity", "LOW"])
            .args(std::env::var("TESTSSL_CHECKS").unwrap_or("-p -s -f -U -h".into()).split(' '))
            // Protocols, cipher categories, forward secrecy, every
            // vulnerability check and the HTTP headers: about half a minute.
            // The whole standard run (cipher by cipher, client simulations,
            // the certificate) takes twice that: scripts/testssl.
            .args(["-p", "-s", "-f", "-U", "-h"])
            .args(["--ip", GUEST, "--add-ca"])
            .arg(pki().ca())
            .arg("--jsonfile")
            .arg(&json)
            .arg("https://localhost/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run testssl"),
    );
    let status = wait_for(Duration::from_secs(300), || run.0.try_wait().ok().flatten());
    let elapsed = started.elapsed();
    let status = status.unwrap_or_else(|| panic!("testssl did not finish within {elapsed:?}"));
    eprintln!("testssl took {elapsed:?} ({status})");
    let findings = std::fs::read_to_string(&json).expect("testssl's JSON report");
    // A flat array of objects, one per finding, on lines of their own:
    // `"id" : "...", ... "severity" : "..."`.
    let field = |item: &str, name: &str| -> String {
        let key = format!("\"{name}\"");
        item.split(&key).nth(1).and_then(|rest| rest.split('"').nth(1)).unwrap_or_default().to_string()
    };
    let items: Vec<&str> = findings.split('{').skip(1).collect();
    assert!(!items.is_empty(), "testssl reported nothing: {findings}");
    // BREACH needs a secret in a compressed response that also reflects
    // what an attacker sends; the site's files are static and public, so
    // testssl's "potentially vulnerable, gzip detected" does not apply.
    let excused = ["BREACH"];
    let bad: Vec<String> = items
        .iter()
        .filter(|i| !excused.contains(&field(i, "id").as_str()))
        .filter(|i| matches!(field(i, "severity").as_str(), "MEDIUM" | "HIGH" | "CRITICAL"))
        .map(|i| format!("{} {}: {}", field(i, "severity"), field(i, "id"), field(i, "finding")))
        .collect();
    assert!(bad.is_empty(), "testssl flags:\n{}", bad.join("\n"));
    let vulnerable: Vec<String> = items
        .iter()
        .filter(|i| !excused.contains(&field(i, "id").as_str()))
        .filter(|i| {
            field(i, "finding").to_lowercase().contains("vulnerable")
                && !field(i, "finding").to_lowercase().contains("not vulnerable")
        })
        .map(|i| format!("{}: {}", field(i, "id"), field(i, "finding")))
        .collect();
    assert!(vulnerable.is_empty(), "testssl flags:\n{}", vulnerable.join("\n"));
    let output = w.output();
    // At most 10 failed handshakes a minute are logged one by one, plus
    // a count for the rest; the run may straddle two minutes.
    let warns = output.lines().filter(|l| l.contains(" WARN ")).count();
    assert!((1..=22).contains(&warns), "{warns} WARN lines in the guest's log:\n{output}");
    assert!(output.contains("are counted, not logged"), "testssl failed fewer handshakes than expected:\n{output}");
    // The site still serves.
    let mut args = w.tls_args();
    args.push(w.https("/robots.txt"));
    w.curl(&args.iter().map(String::as_str).collect::<Vec<_>>());
}
