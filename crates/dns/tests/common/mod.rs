//! What the host tests share: the test zones compiled, queries built and
//! answers taken apart with the `domain` crate.
#![allow(dead_code, reason = "not every test binary uses every helper")]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::base::iana::{Class, Rcode, Rtype};
use domain::base::message::Message;
use domain::base::message_builder::MessageBuilder;
use domain::base::name::Name;
use domain::base::{ParsedName, Record};
use domain::rdata::AllRecordData;
use skiff_dns::build::{ZoneFile, compile_files};
use skiff_dns::{Event, Peer, Server, Transport};

/// Any record of a parsed message.
pub type AnyRecord<'a> = Record<ParsedName<&'a [u8]>, AllRecordData<&'a [u8], ParsedName<&'a [u8]>>>;

/// The zones every test serves: (origin, file under tests/zones).
pub const ZONES: &[(&str, &str)] = &[
    ("example.com.", "example.com.zone"),
    ("example.net.", "example.net.zone"),
    ("signed.example.", "signed.example.signed.zone"),
    ("nsec3.example.", "nsec3.example.signed.zone"),
];

pub fn zones_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/zones")
}

/// The test zones compiled into one blob.
pub fn blob() -> Vec<u8> {
    let files: Vec<ZoneFile> = ZONES.iter().map(|(o, f)| ZoneFile::new(*o, zones_dir().join(f))).collect();
    compile_files(&files).expect("the test zones compile")
}

/// How a test query is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opts {
    /// EDNS(0) with this payload size.
    pub edns: Option<u16>,
    /// The DO bit (with EDNS).
    pub dnssec_ok: bool,
}

impl Opts {
    pub const PLAIN: Opts = Opts { edns: None, dnssec_ok: false };
    pub const EDNS: Opts = Opts { edns: Some(1232), dnssec_ok: false };
    pub const DO: Opts = Opts { edns: Some(1232), dnssec_ok: true };
}

/// A query message.
pub fn query(id: u16, name: &str, rtype: Rtype, opts: Opts) -> Vec<u8> {
    let mut b = MessageBuilder::new_vec();
    b.header_mut().set_id(id);
    b.header_mut().set_rd(false);
    let mut q = b.question();
    let name: Name<Vec<u8>> = name.parse().expect("test name");
    q.push((&name, rtype, Class::IN)).unwrap();
    let mut a = q.additional();
    if let Some(size) = opts.edns {
        a.opt(|o| {
            o.set_udp_payload_size(size);
            o.set_dnssec_ok(opts.dnssec_ok);
            Ok(())
        })
        .unwrap();
    }
    a.finish()
}

/// The query `q` sent over UDP to `to` (NSD, in the tests); its answer
/// taken apart, or none within `timeout`.
pub fn ask(to: SocketAddr, q: &[u8], timeout: Duration) -> Option<Answer> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(timeout)).unwrap();
    sock.send_to(q, to).unwrap();
    let mut buf = [0u8; 65535];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Some(parse(&buf[..n]))
}

/// One message of a DNS TCP stream (RFC 1035 section 4.2.2: a two-byte
/// length first); none at the end of the stream or on an error.
pub fn read_frame(stream: &mut impl Read) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).ok()?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg).ok()?;
    Some(msg)
}

/// Serves DNS over TCP with `server` on `listener`, from a thread of its
/// own and a thread per connection (several messages each, 5 s idle
/// timeout), the clock read from `unix_time`; what each message led to
/// goes to `events`.
pub fn serve_tcp(
    listener: TcpListener,
    server: Arc<Mutex<Server<'static>>>,
    events: Arc<Mutex<Vec<Event>>>,
    unix_time: impl Fn() -> u64 + Clone + Send + 'static,
) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let (s, e, unix_time) = (server.clone(), events.clone(), unix_time.clone());
            std::thread::spawn(move || {
                let peer = stream.peer_addr().unwrap();
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                while let Some(msg) = read_frame(&mut stream) {
                    let p = Peer { transport: Transport::Tcp, addr: peer.ip(), now_ms: 0, unix_time: unix_time() };
                    let reply = s.lock().unwrap().serve(&msg, &p);
                    e.lock().unwrap().extend(reply.event);
                    for m in reply.messages {
                        let _ = stream.write_all(&skiff_dns::tcp::frame(&m));
                    }
                }
            });
        }
    });
}

/// An answer taken apart: flags, rcode and each section's records as
/// lines of presentation format (owner lowercased), sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub id: u16,
    pub rcode: Rcode,
    pub aa: bool,
    pub tc: bool,
    pub qr: bool,
    pub question: Vec<String>,
    pub answer: Vec<String>,
    pub authority: Vec<String>,
    pub additional: Vec<String>,
    /// The OPT record's payload size and DO bit, if any.
    pub opt: Option<(u16, bool)>,
    pub size: usize,
}

pub fn parse(bytes: &[u8]) -> Answer {
    let msg = Message::from_octets(bytes).expect("a message");
    let h = msg.header();
    let mut sections: [Vec<String>; 3] = Default::default();
    let question = msg.question().map(|q| q.expect("question").to_string()).collect();
    let mut section = msg.answer().expect("answer section");
    for (i, out) in sections.iter_mut().enumerate() {
        for rec in &mut section {
            let rec = rec.expect("record");
            if rec.rtype() == Rtype::OPT {
                continue;
            }
            let rec: AnyRecord<'_> = rec.to_record().expect("rdata").expect("known");
            out.push(format!(
                "{} {} {} {}",
                rec.owner().to_string().to_ascii_lowercase(),
                rec.ttl().as_secs(),
                rec.rtype(),
                rec.data()
            ));
        }
        out.sort();
        if i < 2 {
            section = section.next_section().expect("next section").expect("present");
        }
    }
    let opt = msg.opt().map(|o| (o.udp_payload_size(), o.dnssec_ok()));
    let [answer, authority, additional] = sections;
    Answer {
        id: h.id(),
        rcode: h.rcode(),
        aa: h.aa(),
        tc: h.tc(),
        qr: h.qr(),
        question,
        answer,
        authority,
        additional,
        opt,
        size: bytes.len(),
    }
}

/// The names and types in the test zones, by zone, from the compiled blob.
pub fn names(blob: &[u8]) -> BTreeMap<String, Vec<(String, Rtype)>> {
    let catalog = skiff_dns::Catalog::new(blob).unwrap();
    let mut out = BTreeMap::new();
    for zone in catalog.zones() {
        let list: &mut Vec<_> = out.entry(zone.apex.to_string()).or_default();
        let hashed = zone.nsec3.iter().flat_map(|c| c.nodes.iter());
        for (name, node) in zone.nodes.iter().chain(hashed) {
            for set in &node.rrsets {
                list.push((name.to_string(), set.rtype));
            }
        }
    }
    out
}
