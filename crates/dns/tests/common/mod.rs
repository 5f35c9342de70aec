//! What the host tests share: the test zones compiled, queries built and
//! answers taken apart with the `domain` crate.
#![allow(dead_code, reason = "not every test binary uses every helper")]

use std::collections::BTreeMap;
use std::path::PathBuf;

use domain::base::iana::{Class, Rcode, Rtype};
use domain::base::message::Message;
use domain::base::message_builder::MessageBuilder;
use domain::base::name::Name;
use domain::base::{ParsedName, Record};
use domain::rdata::AllRecordData;
use skiff_dns::build::{ZoneFile, compile_files};

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
