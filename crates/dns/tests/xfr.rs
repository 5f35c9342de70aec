//! Transfers, updates and TSIG through the sans-IO `Server::serve`, put
//! behind UDP and TCP sockets on 127.0.0.1 by the test and driven by real
//! clients: nsupdate (bind9-dnsutils) and kdig (knot-dnsutils).

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use skiff_dns::tsig::Key;
use skiff_dns::{AclRule, Catalog, Config, Event, Peer, Server, Transport};

/// The key both sides know (base64 of 32 bytes).
const SECRET: &str = "c2tpZmYtdGVzdC1rZXktMzItYnl0ZXMtbG9uZy0hISE=";
const WRONG: &str = "d3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmc9PT0=";

fn secret(b64: &str) -> Vec<u8> {
    // Tests decode with the tools' own format: a tiny base64 decoder.
    let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in b64.bytes().filter(|c| *c != b'=') {
        bits = (bits << 6) | table.iter().position(|t| *t == c).unwrap() as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

struct Host {
    addr: SocketAddr,
    events: Arc<Mutex<Vec<Event>>>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The test zones served on a fresh port with `config`.
fn start(config: Config) -> Host {
    start_skewed(config, 0)
}

/// As [`start`], with the server's clock `skew` seconds ahead.
fn start_skewed(config: Config, skew: u64) -> Host {
    let now = move || now() + skew;
    let blob: &'static [u8] = Box::leak(common::blob().into_boxed_slice());
    let server = Arc::new(Mutex::new(Server::new(Catalog::new(blob).unwrap(), config)));
    let events = Arc::new(Mutex::new(Vec::new()));
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let udp = UdpSocket::bind(addr).unwrap();
    let (s, e) = (server.clone(), events.clone());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, peer)) = udp.recv_from(&mut buf) {
            let p = Peer { transport: Transport::Udp, addr: peer.ip(), now_ms: 0, unix_time: now() };
            let reply = s.lock().unwrap().serve(&buf[..n], &p);
            e.lock().unwrap().extend(reply.event);
            for m in reply.messages {
                let _ = udp.send_to(&m, peer);
            }
        }
    });
    common::serve_tcp(tcp, server, events.clone(), now);
    Host { addr, events }
}

fn config() -> Config {
    Config {
        keys: vec![Key::new("upd-key", secret(SECRET)).unwrap(), Key::new("xfr-key.", secret(SECRET)).unwrap()],
        allow_update: vec![AclRule::parse("key:upd-key").unwrap()],
        allow_transfer: vec![AclRule::parse("key:xfr-key").unwrap()],
        ..Config::default()
    }
}

impl Host {
    fn kdig(&self, args: &[&str]) -> String {
        let out = Command::new("kdig")
            .arg(format!("@{}", self.addr.ip()))
            .args(["-p", &self.addr.port().to_string(), "+timeout=3", "+retry=0"])
            .args(args)
            .output()
            .expect("run kdig");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// nsupdate with `key` ("hmac-sha256:NAME:SECRET", or none); its
    /// success and output.
    fn nsupdate(&self, key: Option<&str>, script: &str) -> (bool, String) {
        skiff_testnet::nsupdate(self.addr, key, script)
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().iter().map(|e| e.to_string()).collect()
    }
}

fn require(program: &str) {
    assert!(
        Command::new(program).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok(),
        "{program} is missing: run scripts/setup"
    );
}

impl Host {
    /// The serial of example.com's SOA, as answered.
    fn serial(&self) -> u32 {
        let out = self.kdig(&["example.com.", "SOA"]);
        let line = out.lines().find(|l| l.contains("\tSOA\t") && !l.starts_with(';')).expect("an SOA");
        line.split_whitespace().nth(6).unwrap().parse().unwrap()
    }
}

/// The update key (`upd-key`) as nsupdate and kdig take it.
fn upd_key() -> String {
    format!("hmac-sha256:upd-key:{SECRET}")
}

/// The transfer key (`xfr-key`) as kdig takes it.
fn xfr_key() -> String {
    format!("hmac-sha256:xfr-key:{SECRET}")
}

#[test]
fn nsupdate_with_the_key_adds_and_deletes_records_and_a_wrong_key_is_refused() {
    require("nsupdate");
    require("kdig");
    let host = start(config());
    let key = upd_key();
    let xfr = xfr_key();
    let before = host.serial();

    let (ok, out) = host.nsupdate(
        Some(&key),
        "zone example.com.\nupdate add new.example.com. 300 A 192.0.2.99\nupdate add new.example.com. 300 TXT \"hello\"",
    );
    assert!(ok, "the signed update failed:\n{out}");
    let a = host.kdig(&["new.example.com.", "A"]);
    assert!(a.contains("192.0.2.99") && a.contains("NOERROR"), "the new record is not answered:\n{a}");
    let after = host.serial();
    assert_eq!(after, before + 1, "the serial goes up by one");
    let axfr = host.kdig(&["-y", &xfr, "example.com.", "AXFR"]);
    assert!(axfr.contains("new.example.com.") && axfr.contains("192.0.2.99"), "not in the AXFR:\n{axfr}");
    assert!(!axfr.contains("; Error") && !axfr.contains("failed"), "the AXFR failed:\n{axfr}");

    // A prerequisite that does not hold changes nothing.
    let (ok, out) = host
        .nsupdate(Some(&key), "zone example.com.\nprereq nxdomain new.example.com.\nupdate delete new.example.com. A");
    assert!(!ok && out.contains("YXDOMAIN"), "a failed prerequisite must refuse the update:\n{out}");
    // Each kind of name or RRset prerequisite, not holding, with its rcode.
    for (prereq, rcode) in [
        ("yxdomain gone.example.com.", "NXDOMAIN"),
        ("yxrrset new.example.com. MX", "NXRRSET"),
        ("nxrrset new.example.com. A", "YXRRSET"),
    ] {
        let script = format!("zone example.com.\nprereq {prereq}\nupdate delete new.example.com. A");
        let (ok, out) = host.nsupdate(Some(&key), &script);
        assert!(!ok && out.contains(rcode), "prereq {prereq} must refuse the update with {rcode}:\n{out}");
    }
    assert!(host.kdig(&["new.example.com.", "A"]).contains("192.0.2.99"));

    // Delete one RRset, then the rest of the name.
    let (ok, out) = host.nsupdate(Some(&key), "zone example.com.\nupdate delete new.example.com. A");
    assert!(ok, "{out}");
    let a = host.kdig(&["new.example.com.", "A"]);
    assert!(!a.contains("192.0.2.99") && a.contains("NOERROR"), "the A RRset is still there:\n{a}");
    let (ok, out) = host.nsupdate(Some(&key), "zone example.com.\nupdate delete new.example.com.");
    assert!(ok, "{out}");
    assert!(host.kdig(&["new.example.com.", "TXT"]).contains("NXDOMAIN"));
    assert_eq!(host.serial(), before + 3);

    // The wrong secret: BADSIG; an unknown key: BADKEY; no key: REFUSED.
    let (ok, out) = host.nsupdate(
        Some(&format!("hmac-sha256:upd-key:{WRONG}")),
        "zone example.com.\nupdate add bad.example.com. 300 A 192.0.2.66",
    );
    assert!(!ok, "an update with the wrong secret succeeded:\n{out}");
    let (ok, out) = host.nsupdate(
        Some(&format!("hmac-sha256:other-key:{SECRET}")),
        "zone example.com.\nupdate add bad.example.com. 300 A 192.0.2.66",
    );
    assert!(!ok, "an update with an unknown key succeeded:\n{out}");
    let (ok, out) = host.nsupdate(None, "zone example.com.\nupdate add bad.example.com. 300 A 192.0.2.66");
    assert!(!ok && out.contains("REFUSED"), "an unsigned update was not refused:\n{out}");
    // The transfer key may transfer but not update.
    let (ok, out) = host.nsupdate(Some(&xfr), "zone example.com.\nupdate add bad.example.com. 300 A 192.0.2.66");
    assert!(!ok && out.contains("REFUSED"), "an update with the transfer key was not refused:\n{out}");
    assert!(host.kdig(&["bad.example.com.", "A"]).contains("NXDOMAIN"));

    let events = host.events();
    let refused: Vec<_> = events.iter().filter(|e| e.starts_with("refused update")).collect();
    assert_eq!(refused.len(), 8, "one line per refused update:\n{events:#?}");
    assert!(refused.iter().any(|e| e.contains("BADSIG")), "{events:#?}");
    assert!(refused.iter().any(|e| e.contains("BADKEY")), "{events:#?}");
    assert!(refused.iter().any(|e| e.contains("unsigned") && e.contains("not allowed")), "{events:#?}");
    assert!(refused.iter().any(|e| e.contains("YXDOMAIN")), "{events:#?}");
}

#[test]
fn transfers_are_allowed_by_key_or_address_and_refused_otherwise() {
    require("kdig");
    let mut cfg = config();
    cfg.allow_transfer.push(AclRule::parse("192.0.2.0/24").unwrap());
    let host = start(cfg);
    let xfr = xfr_key();

    // Signed with the transfer key: the whole zone, SOA first and last,
    // every response signed (kdig checks each MAC).
    let axfr = host.kdig(&["-y", &xfr, "example.com.", "AXFR"]);
    let soas = axfr.lines().filter(|l| l.contains("\tSOA\t") && !l.starts_with(';')).count();
    assert_eq!(soas, 2, "an AXFR starts and ends with the SOA:\n{axfr}");
    assert!(axfr.contains("loop2.example.com.") && axfr.contains("ns1.example.com."), "{axfr}");
    assert!(!axfr.contains("failed") && !axfr.contains("; Error"), "{axfr}");
    // A large signed zone needs several messages, each signed.
    let nsec3 = host.kdig(&["-y", &xfr, "nsec3.example.", "AXFR"]);
    assert!(!nsec3.contains("failed") && nsec3.contains("NSEC3PARAM"), "{nsec3}");

    // Unsigned from 127.0.0.1 (not in 192.0.2.0/24): REFUSED.
    let refused = host.kdig(&["example.com.", "AXFR"]);
    assert!(refused.contains("REFUSED") && !refused.contains("loop2"), "{refused}");
    // The wrong secret: NOTAUTH (BADSIG), nothing transferred.
    let bad = host.kdig(&["-y", &format!("hmac-sha256:xfr-key:{WRONG}"), "example.com.", "AXFR"]);
    assert!(!bad.contains("loop2.example.com."), "{bad}");
    // AXFR over UDP is refused; a zone not served is NOTAUTH.
    let udp = host.kdig(&["-y", &xfr, "+notcp", "example.com.", "AXFR"]);
    assert!(!udp.contains("loop2.example.com."), "{udp}");
    let other = host.kdig(&["-y", &xfr, "example.org.", "AXFR"]);
    assert!(other.contains("NOTAUTH"), "{other}");

    // IXFR from the current serial: the SOA alone; from an unknown one:
    // the whole zone (AXFR fallback, RFC 1995 section 4).
    let current = host.serial();
    let same = host.kdig(&["-y", &xfr, "example.com.", &format!("IXFR={current}")]);
    assert_eq!(same.lines().filter(|l| l.contains("\tSOA\t") && !l.starts_with(';')).count(), 1, "{same}");
    let old = host.kdig(&["-y", &xfr, "example.com.", "IXFR=1"]);
    assert!(old.contains("loop2.example.com."), "{old}");

    let events = host.events();
    let refused: Vec<_> = events.iter().filter(|e| e.starts_with("refused transfer")).collect();
    assert!(refused.len() >= 4, "one line per refused transfer:\n{events:#?}");
    assert!(refused.iter().any(|e| e.contains("BADSIG")), "{events:#?}");
    assert!(refused.iter().any(|e| e.contains("not allowed")), "{events:#?}");
}

#[test]
fn ixfr_sends_the_changes_an_update_made() {
    require("nsupdate");
    require("kdig");
    let host = start(config());
    let key = upd_key();
    let xfr = xfr_key();
    let before = host.serial();
    let (ok, out) = host.nsupdate(
        Some(&key),
        "zone example.com.\nupdate delete mail.example.com. A\nupdate add mail.example.com. 600 A 192.0.2.26",
    );
    assert!(ok, "{out}");
    let ixfr = host.kdig(&["-y", &xfr, "example.com.", &format!("IXFR={before}")]);
    assert!(!ixfr.contains("failed"), "{ixfr}");
    let records: Vec<&str> =
        ixfr.lines().filter(|l| !l.starts_with(';') && !l.trim().is_empty() && !l.contains("TSIG")).collect();
    // New SOA, old SOA, the removed A, new SOA, the added A, new SOA.
    assert_eq!(records.len(), 6, "an incremental transfer of one change:\n{ixfr}");
    assert!(records[2].contains("192.0.2.25") && records[4].contains("192.0.2.26"), "{ixfr}");
    assert!(!ixfr.contains("loop2"), "the whole zone was sent:\n{ixfr}");
}

#[test]
fn a_request_signed_outside_the_fudge_gets_badtime() {
    require("nsupdate");
    // The server's clock is an hour ahead of the client's.
    let host = start_skewed(config(), 3600);
    let key = upd_key();
    let (ok, out) = host.nsupdate(Some(&key), "zone example.com.\nupdate add late.example.com. 300 A 192.0.2.9");
    assert!(!ok, "an update signed an hour ago was applied:\n{out}");
    let events = host.events();
    assert!(events.iter().any(|e| e.contains("BADTIME")), "{events:#?}");
    assert!(host.kdig(&["late.example.com.", "A"]).contains("NXDOMAIN"));
}

/// An UPDATE for example.com.: a prerequisite and an add and a delete,
/// with a TSIG record of `upd-key` (its MAC made up) when `tsig`.
fn update_seed(tsig: bool) -> Vec<u8> {
    use domain::base::iana::{Class, Opcode, Rtype};
    use domain::base::message_builder::MessageBuilder;
    use domain::base::{Name, Ttl};
    use domain::rdata::{A, Cname};
    let zone: Name<Vec<u8>> = "example.com.".parse().unwrap();
    let name: Name<Vec<u8>> = "x.example.com.".parse().unwrap();
    let mut b = MessageBuilder::new_vec();
    b.header_mut().set_id(0x4242);
    b.header_mut().set_opcode(Opcode::UPDATE);
    let mut q = b.question();
    q.push((&zone, Rtype::SOA, Class::IN)).unwrap();
    let mut a = q.answer();
    a.push((
        &name,
        Class::NONE,
        Ttl::from_secs(0),
        domain::base::rdata::UnknownRecordData::from_octets(Rtype::ANY, Vec::new()).unwrap(),
    ))
    .unwrap();
    let mut ns = a.authority();
    ns.push((&name, Class::IN, Ttl::from_secs(300), A::from_octets(192, 0, 2, 1))).unwrap();
    ns.push((&name, Class::IN, Ttl::from_secs(300), Cname::new(zone.clone()))).unwrap();
    ns.push((
        &zone,
        Class::ANY,
        Ttl::from_secs(0),
        domain::base::rdata::UnknownRecordData::from_octets(Rtype::MX, Vec::new()).unwrap(),
    ))
    .unwrap();
    let mut m = ns.finish();
    if tsig {
        m[10..12].copy_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(b"\x07upd-key\x00\x00\xfa\x00\xff\x00\x00\x00\x00");
        let mut rdata = b"\x0bhmac-sha256\x00".to_vec();
        rdata.extend_from_slice(&now().to_be_bytes()[2..]);
        rdata.extend_from_slice(&300u16.to_be_bytes());
        rdata.extend_from_slice(&32u16.to_be_bytes());
        rdata.extend_from_slice(&[7; 32]);
        rdata.extend_from_slice(&[0x42, 0x42, 0, 0, 0, 0]);
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
    }
    m
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 1500, ..Default::default() })]
    /// Mutated updates, transfers and signed messages never panic the
    /// server, and what it sends is a response with the message's ID.
    #[test]
    fn mutated_updates_and_signed_messages_never_panic(
        tsig in proptest::prelude::any::<bool>(),
        flips in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..6),
        cut in 0usize..400,
        tcp in proptest::prelude::any::<bool>(),
    ) {
        static SERVER: std::sync::OnceLock<Mutex<Server<'static>>> = std::sync::OnceLock::new();
        let server = SERVER.get_or_init(|| {
            let blob: &'static [u8] = Box::leak(common::blob().into_boxed_slice());
            let mut cfg = config();
            cfg.allow_update.push(AclRule::parse("any").unwrap());
            cfg.allow_transfer.push(AclRule::parse("::/0").unwrap());
            Mutex::new(Server::new(Catalog::new(blob).unwrap(), cfg))
        });
        let mut m = update_seed(tsig);
        for (at, byte) in flips {
            let len = m.len();
            m[at % len] = byte;
        }
        if cut < m.len() && cut >= 12 {
            m.truncate(cut);
        }
        let transport = if tcp { Transport::Tcp } else { Transport::Udp };
        let peer = Peer { transport, addr: "::1".parse().unwrap(), now_ms: 0, unix_time: now() };
        let reply = server.lock().unwrap().serve(&m, &peer);
        for a in &reply.messages {
            proptest::prop_assert!(a.len() >= 12);
            proptest::prop_assert_eq!(&a[..2], &m[..2]);
            proptest::prop_assert!(a[2] & 0x80 != 0);
        }
    }
}

/// The size kdig reports for the answer it received.
fn received(kdig_out: &str) -> usize {
    let line = kdig_out.lines().find(|l| l.starts_with(";; Received")).unwrap_or_else(|| panic!("{kdig_out}"));
    line.split_whitespace().nth(2).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn signed_udp_answers_leave_room_for_the_tsig_record() {
    require("kdig");
    let host = start(config());
    let key = upd_key();
    // The unsigned answer's size, given exactly as the payload size: it
    // fits, and the signed answer must fit too, TSIG record included.
    let plain = host.kdig(&["+bufsize=1232", "+ignore", "long.example.com.", "TXT"]);
    let size = received(&plain);
    assert!(size > 600 && !plain.contains(" tc"), "{plain}");
    let bufsize = format!("+bufsize={size}");
    let signed = host.kdig(&["-y", &key, &bufsize, "+ignore", "long.example.com.", "TXT"]);
    assert!(received(&signed) <= size, "the signed answer is larger than the payload size {size}:\n{signed}");
    assert!(!signed.contains("failed") && !signed.contains("; Error"), "the signature checks:\n{signed}");
    // Over TCP the whole answer comes, signed.
    let tcp = host.kdig(&["-y", &key, "+tcp", "long.example.com.", "TXT"]);
    assert_eq!(tcp.lines().filter(|l| l.contains("\tTXT\t") && !l.starts_with(';')).count(), 8, "{tcp}");
}
