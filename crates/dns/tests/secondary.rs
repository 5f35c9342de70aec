//! Transfers and NOTIFY between Skiff's sans-IO pieces and NSD (Debian
//! `nsd`, from scripts/setup) on loopback ports the test picks: Skiff as a
//! secondary of NSD (AXFR, NOTIFY in, the serial followed), and NSD as a
//! secondary of Skiff (AXFR out, NOTIFY out, the change served by NSD),
//! and TSIG on the secondary's side against NSD with a key.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Opts, ask, parse, query, read_frame, zones_dir};
use domain::base::iana::Rtype;
use domain::base::name::Name;
use skiff_dns::build::{ZoneFile, compile_files};
use skiff_dns::secondary::{self, AxfrReader, Request, Secondary, XfrError};
use skiff_dns::tsig::{Key, VerifyError};
use skiff_dns::{AclRule, Catalog, Config, Event, Peer, Record, Server, Transport};
use skiff_testnet::{free_port, wait_for};

/// An NSD on 127.0.0.1 with the `zones` part of its configuration.
struct Nsd(skiff_testnet::Nsd);

impl Nsd {
    fn start(dir: &Path, zones: &str) -> Nsd {
        let listen = ([127, 0, 0, 1], free_port()).into();
        let cmd = Command::new("nsd");
        Nsd(skiff_testnet::Nsd::start(cmd, dir, listen, "  verbosity: 2\n", zones).expect("start nsd"))
    }

    fn log(&self) -> String {
        self.0.log()
    }

    /// NSD's answer section for `name` `rtype`, over UDP.
    fn answer(&self, name: &str, rtype: Rtype) -> Option<Vec<String>> {
        ask(self.addr(), &query(7, name, rtype, Opts::PLAIN), Duration::from_millis(300)).map(|a| a.answer)
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr()
    }
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("skiff-dns-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn name(text: &str) -> Name<Vec<u8>> {
    Name::from_chars(text.chars()).unwrap()
}

/// One framed request to `to` over a new TCP connection; the messages read
/// until `done` says the answer is whole.
fn tcp_exchange(to: SocketAddr, request: &[u8], mut done: impl FnMut(&[u8]) -> bool) {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&skiff_dns::tcp::frame(request)).unwrap();
    loop {
        let msg = read_frame(&mut s).expect("an answer from the primary");
        if done(&msg) {
            return;
        }
    }
}

/// The primary's zone by AXFR, put in place in `server`.
fn transfer(server: &mut Server<'_>, primary: SocketAddr, zone: &Name<Vec<u8>>) -> u32 {
    let mut reader = AxfrReader::new(0x4242, zone.clone());
    tcp_exchange(primary, &secondary::query(0x4242, zone.for_slice(), Rtype::AXFR), |m| reader.push(m).unwrap());
    let records = reader.into_records().expect("a whole transfer");
    server.load_zone(&records).unwrap();
    server.catalog().zone(zone.for_slice()).unwrap().serial()
}

fn primary_serial(primary: SocketAddr, zone: &Name<Vec<u8>>) -> u32 {
    let mut serial = 0;
    tcp_exchange(primary, &secondary::query(0x1234, zone.for_slice(), Rtype::SOA), |m| {
        serial = secondary::soa_answer_serial(m, 0x1234, zone.for_slice()).unwrap();
        true
    });
    serial
}

/// A server with only example.net built in: example.com comes by transfer.
fn server_without_example_com(config: Config) -> Server<'static> {
    let file = ZoneFile::new("example.net.", zones_dir().join("example.net.zone"));
    let blob: &'static [u8] = Box::leak(compile_files(&[file]).unwrap().into_boxed_slice());
    Server::new(Catalog::new(blob).unwrap(), config)
}

#[test]
fn skiff_loads_a_zone_from_nsd_and_follows_its_serial_after_a_notify() {
    let dir = temp_dir("secondary");
    let text = std::fs::read_to_string(zones_dir().join("example.com.zone")).unwrap();
    std::fs::write(dir.join("example.com.zone"), &text).unwrap();
    let skiff = UdpSocket::bind("127.0.0.1:0").unwrap();
    let skiff_port = skiff.local_addr().unwrap().port();
    let nsd = Nsd::start(
        &dir,
        &format!(
            "zone:\n  name: \"example.com.\"\n  zonefile: \"example.com.zone\"\n  provide-xfr: 127.0.0.1 NOKEY\n  \
             notify: 127.0.0.1@{skiff_port} NOKEY\n"
        ),
    );
    wait_for(Duration::from_secs(10), || nsd.answer("example.com.", Rtype::SOA).filter(|a| !a.is_empty()))
        .unwrap_or_else(|| panic!("nsd did not start:\n{}", nsd.log()));
    let zone = name("example.com.");
    let mut server = server_without_example_com(Config {
        secondaries: vec![Secondary { zone: zone.clone(), primary: nsd.addr(), key: None }],
        ..Config::default()
    });
    assert!(server.catalog().zone(zone.for_slice()).is_none());
    assert_eq!(transfer(&mut server, nsd.addr(), &zone), 2024010101);
    let www = |s: &Server<'_>| {
        let answer = s.respond(&query(3, "fresh.example.com.", Rtype::A, Opts::PLAIN), Transport::Udp).unwrap();
        parse(&answer).answer
    };
    assert!(www(&server).is_empty());

    // The primary's zone changes; NSD reloads it (SIGHUP) and notifies.
    let changed = text.replace("2024010101", "2024010102") + "fresh.example.com. 3600 IN A 192.0.2.200\n";
    std::fs::write(dir.join("example.com.zone"), changed).unwrap();
    nsd.0.reload();
    skiff.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    // NSD notifies at its start too (the old serial): each NOTIFY is
    // acknowledged, until the one with the new serial.
    let (n, peer) = loop {
        let (n, from) =
            skiff.recv_from(&mut buf).unwrap_or_else(|e| panic!("no NOTIFY from NSD ({e}):\n{}", nsd.log()));
        let peer = Peer { transport: Transport::Udp, addr: from.ip(), now_ms: 0, unix_time: 0 };
        let reply = server.serve(&buf[..n], &peer);
        skiff.send_to(&reply.messages[0], from).unwrap();
        match reply.event {
            Some(Event::Notified { zone: z, client, serial: Some(2024010102) }) => {
                assert_eq!((z, client), (zone.clone(), from.ip()));
                break (n, peer);
            }
            Some(Event::Notified { serial: Some(2024010101), .. }) => continue,
            other => panic!("{other:?}"),
        }
    };
    // The refresh: the serial went up, so the zone is transferred again.
    assert_eq!(primary_serial(nsd.addr(), &zone), 2024010102);
    assert_eq!(transfer(&mut server, nsd.addr(), &zone), 2024010102);
    assert_eq!(www(&server), ["fresh.example.com 3600 A 192.0.2.200"]);

    // NOTIFY from anyone but the primary is refused; for a zone that is
    // not a secondary here, NOTAUTH.
    let stranger = Peer { addr: [192, 0, 2, 9].into(), ..peer };
    let reply = server.serve(&buf[..n], &stranger);
    assert!(matches!(reply.event, Some(Event::NotifyRefused { .. })), "{:?}", reply.event);
    assert_eq!(parse(&reply.messages[0]).rcode, domain::base::iana::Rcode::REFUSED);
    let mut other = buf[..n].to_vec();
    let at = other.windows(8).position(|w| w == b"\x07example").unwrap();
    other[at + 8..at + 12].copy_from_slice(b"\x03net");
    other.truncate(n);
    let reply = server.serve(&other, &peer);
    assert!(matches!(reply.event, Some(Event::NotifyRefused { .. })), "{:?}", reply.event);
    assert_eq!(parse(&reply.messages[0]).rcode, domain::base::iana::Rcode::NOTAUTH);
}

#[test]
fn nsd_takes_the_zone_from_skiff_after_a_notify() {
    let zone = name("example.com.");
    let blob: &'static [u8] = Box::leak(common::blob().into_boxed_slice());
    let config = Config { allow_transfer: vec![AclRule::parse("127.0.0.1").unwrap()], ..Config::default() };
    let server = Arc::new(Mutex::new(Server::new(Catalog::new(blob).unwrap(), config)));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let skiff = listener.local_addr().unwrap();
    common::serve_tcp(listener, server.clone(), Arc::default(), || 0);
    let dir = temp_dir("primary");
    let nsd = Nsd::start(
        &dir,
        &format!(
            "zone:\n  name: \"example.com.\"\n  zonefile: \"example.com.zone\"\n  request-xfr: AXFR 127.0.0.1@{} NOKEY\n  \
             allow-notify: 127.0.0.1 NOKEY\n",
            skiff.port()
        ),
    );
    let soa = |nsd: &Nsd| nsd.answer("example.com.", Rtype::SOA).filter(|a| !a.is_empty());
    let first = wait_for(Duration::from_secs(15), || soa(&nsd))
        .unwrap_or_else(|| panic!("NSD did not transfer the zone from Skiff:\n{}", nsd.log()));
    assert!(first[0].contains("2024010101"), "{first:?}");

    // The zone changes at Skiff (as an UPDATE would change it), and Skiff
    // sends NOTIFY: NSD acknowledges, transfers and serves the change.
    let notify = {
        let mut s = server.lock().unwrap();
        let mut records: Vec<Record> = s.catalog().zone(zone.for_slice()).unwrap().records();
        let at = records[0].rdata.len() - 20;
        records[0].rdata[at..at + 4].copy_from_slice(&2024010102u32.to_be_bytes());
        records.push(Record {
            owner: name("fresh.example.com."),
            rtype: Rtype::A,
            ttl: 300,
            rdata: vec![192, 0, 2, 201],
        });
        s.load_zone(&records).unwrap();
        secondary::notify(0x5151, s.catalog().zone(zone.for_slice()).unwrap())
    };
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(&notify, nsd.addr()).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).unwrap_or_else(|e| panic!("no answer to the NOTIFY ({e}):\n{}", nsd.log()));
    assert_eq!(secondary::notify_acknowledged(&buf[..n], 0x5151), Ok(true));
    let fresh =
        wait_for(Duration::from_secs(15), || nsd.answer("fresh.example.com.", Rtype::A).filter(|a| !a.is_empty()))
            .unwrap_or_else(|| panic!("NSD does not serve the change:\n{}", nsd.log()));
    assert_eq!(fresh, ["fresh.example.com 300 A 192.0.2.201"]);
    assert!(soa(&nsd).unwrap()[0].contains("2024010102"));
}

/// The messages of an answer from `to` to the AXFR `request` for
/// example.org, as sent: up to an error or the closing SOA.
fn tcp_messages(to: SocketAddr, request: &[u8]) -> Vec<Vec<u8>> {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&skiff_dns::tcp::frame(request)).unwrap();
    let mut end = AxfrReader::new(u16::from_be_bytes([request[0], request[1]]), name("example.org."));
    let mut messages = Vec::new();
    loop {
        let msg = read_frame(&mut s).expect("an answer from NSD");
        let done = msg[3] & 0x0f != 0 || end.push(&msg).unwrap_or(true);
        messages.push(msg);
        if done {
            return messages;
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

const XFR_SECRET: &[u8] = b"xfr-secret-for-the-secondary-tests";

#[test]
fn signed_transfers_from_nsd_are_checked_message_by_message() {
    let dir = temp_dir("tsig");
    let mut text = String::from(
        "$ORIGIN example.org.\n$TTL 3600\n@ SOA ns1 hostmaster 1 3600 600 86400 300\n@ NS ns1\nns1 A 192.0.2.53\n",
    );
    for i in 0..6000 {
        text += &format!("host{i} A 198.51.{}.{}\n", i / 250, i % 250 + 1);
    }
    std::fs::write(dir.join("example.org.zone"), &text).unwrap();
    let skiff = UdpSocket::bind("127.0.0.1:0").unwrap();
    let nsd = Nsd::start(
        &dir,
        &format!(
            "key:\n  name: \"xfr\"\n  algorithm: hmac-sha256\n  secret: \"{}\"\nzone:\n  name: \"example.org.\"\n  \
             zonefile: \"example.org.zone\"\n  provide-xfr: 127.0.0.1 xfr\n  notify: 127.0.0.1@{} xfr\n",
            base64_secret(XFR_SECRET),
            skiff.local_addr().unwrap().port()
        ),
    );
    wait_for(Duration::from_secs(10), || nsd.answer("example.org.", Rtype::SOA).filter(|a| !a.is_empty()))
        .unwrap_or_else(|| panic!("nsd did not start:\n{}", nsd.log()));
    let zone = name("example.org.");
    let key = Key::new("xfr", XFR_SECRET.to_vec()).unwrap();
    let axfr = |id: u16, key: Option<&Key>| {
        let t = now();
        let q = Request::signed(secondary::query(id, zone.for_slice(), Rtype::AXFR), key, t);
        let reader = AxfrReader::new(id, zone.clone());
        let reader = match q.verifier.clone() {
            Some(v) => reader.with_tsig(v, t),
            None => reader,
        };
        (reader, tcp_messages(nsd.addr(), &q.message))
    };

    // Signed: NSD sends ten messages and signs each (unsigned ones between
    // signed ones, as RFC 8945 allows, are covered by the unit tests).
    let (mut reader, messages) = axfr(0x1111, Some(&key));
    assert!(messages.len() >= 3, "{} messages", messages.len());
    let mut whole = false;
    for m in &messages {
        whole = reader.push(m).unwrap_or_else(|e| panic!("{e}\n{}", nsd.log()));
    }
    assert!(whole);
    assert_eq!(reader.into_records().unwrap().len(), 6003);

    // A record changed on the way: its message's signature fails.
    let (mut reader, mut messages) = axfr(0x2222, Some(&key));
    let middle = messages.len() / 2;
    // The last byte of an address in it (198.51.x.y).
    let at = messages[middle].windows(2).position(|w| w == [198, 51]).unwrap() + 3;
    messages[middle][at] ^= 1;
    let result: Result<Vec<bool>, XfrError> = messages.iter().map(|m| reader.push(m)).collect();
    assert_eq!(result.unwrap_err(), XfrError::Tsig(VerifyError::BadSig));
    // A message left out: the same.
    let (mut reader, mut messages) = axfr(0x3333, Some(&key));
    messages.remove(middle);
    let result: Result<Vec<bool>, XfrError> = messages.iter().map(|m| reader.push(m)).collect();
    assert_eq!(result.unwrap_err(), XfrError::Tsig(VerifyError::BadSig));

    // NSD refuses an unsigned request, and one signed with a wrong secret
    // (BADSIG, unsigned: the error is all the verifier can say).
    let (mut reader, messages) = axfr(0x4444, None);
    assert_eq!(reader.push(&messages[0]).unwrap_err(), XfrError::Rcode(domain::base::iana::Rcode::REFUSED));
    let wrong = Key::new("xfr", b"another secret".to_vec()).unwrap();
    let (mut reader, messages) = axfr(0x5555, Some(&wrong));
    assert_eq!(reader.push(&messages[0]).unwrap_err(), XfrError::Tsig(VerifyError::Refused(16)));

    // A signed SOA query: the answer's signature is checked.
    let q = Request::signed(secondary::query(0x6666, zone.for_slice(), Rtype::SOA), Some(&key), now());
    let mut answer = Vec::new();
    tcp_exchange(nsd.addr(), &q.message, |m| {
        answer = m.to_vec();
        true
    });
    q.check_answer(&answer, now()).unwrap();
    assert_eq!(secondary::soa_answer_serial(&answer, 0x6666, zone.for_slice()), Ok(1));
    let mut forged = answer.clone();
    forged[20] ^= 0x20;
    assert!(q.check_answer(&forged, now()).is_err());

    // NSD's NOTIFY (after a reload) is signed with the key: accepted when
    // the secondary expects that key, refused when it expects another.
    let text = text.replace(" 1 3600 600", " 2 3600 600");
    std::fs::write(dir.join("example.org.zone"), &text).unwrap();
    nsd.0.reload();
    skiff.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    let config = |expect: &str| Config {
        keys: vec![key.clone(), Key::new("other", b"x".to_vec()).unwrap()],
        secondaries: vec![Secondary { zone: zone.clone(), primary: nsd.addr(), key: Some(name(expect)) }],
        ..Config::default()
    };
    let mut server = server_without_example_com(config("xfr."));
    let mut strict = server_without_example_com(config("other."));
    loop {
        let (n, from) =
            skiff.recv_from(&mut buf).unwrap_or_else(|e| panic!("no NOTIFY from NSD ({e}):\n{}", nsd.log()));
        let peer = Peer { transport: Transport::Udp, addr: from.ip(), now_ms: 0, unix_time: now() };
        let refused = strict.serve(&buf[..n], &peer);
        assert!(
            matches!(&refused.event, Some(Event::NotifyRefused { why, .. }) if why.to_string().contains("key other")),
            "{:?}",
            refused.event
        );
        let reply = server.serve(&buf[..n], &peer);
        // The acknowledgement is signed: NSD takes it.
        skiff.send_to(&reply.messages[0], from).unwrap();
        match reply.event {
            Some(Event::Notified { serial: Some(2), .. }) => break,
            Some(Event::Notified { serial: Some(1), .. }) => continue,
            other => panic!("{other:?}"),
        }
    }
}

/// `bytes` in base64 (NSD's key files), without a crate for one line.
fn base64_secret(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
