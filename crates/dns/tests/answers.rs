//! The server's behaviour feature by feature, on the test zones.

mod common;

use common::{Opts, blob, parse, query};
use domain::base::iana::{Rcode, Rtype};
use domain::base::message::Message;
use skiff_dns::tcp::{Deframer, frame};
use skiff_dns::{Catalog, Config, RateLimit, Server, Transport};
use std::net::{IpAddr, Ipv4Addr};

fn server(blob: &[u8]) -> Server<'_> {
    Server::new(Catalog::new(blob).unwrap(), Config::default())
}

fn ask(server: &Server<'_>, name: &str, rtype: Rtype, opts: Opts) -> common::Answer {
    parse(&server.respond(&query(7, name, rtype, opts), Transport::Udp).expect("an answer"))
}

/// A query with its header bytes changed by `edit`.
fn edited(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut q = query(0x4242, "www.example.com.", Rtype::A, Opts::PLAIN);
    edit(&mut q);
    q
}

fn rcode_of(answer: &[u8]) -> Rcode {
    Message::from_octets(answer).unwrap().header().rcode()
}

#[test]
fn case_is_preserved_in_the_question_and_names_are_compressed() {
    let blob = blob();
    let s = server(&blob);
    let q = query(1, "WwW.ExAmPlE.CoM.", Rtype::A, Opts::PLAIN);
    let a = s.respond(&q, Transport::Udp).unwrap();
    // The question is the query's, byte for byte.
    assert_eq!(&a[12..q.len()], &q[12..]);
    let parsed = parse(&a);
    assert_eq!(parsed.answer.len(), 4, "{parsed:?}");
    // Four records and the NS RRset with addresses in far fewer bytes than
    // their names spelled out.
    assert!(a.len() < 250, "{} bytes: names not compressed", a.len());
}

#[test]
fn responses_and_short_garbage_get_no_answer() {
    let blob = blob();
    let s = server(&blob);
    let response = edited(|q| q[2] |= 0x80);
    assert_eq!(s.respond(&response, Transport::Udp), None);
    for len in 0..12 {
        assert_eq!(s.respond(&vec![0u8; len], Transport::Udp), None);
    }
}

#[test]
fn other_opcodes_are_not_implemented() {
    let blob = blob();
    let s = server(&blob);
    for opcode in [1u8, 2, 4, 5, 15] {
        let q = edited(|q| q[2] = (q[2] & 0x87) | (opcode << 3));
        let a = s.respond(&q, Transport::Udp).unwrap();
        assert_eq!(rcode_of(&a), Rcode::NOTIMP, "opcode {opcode}");
        assert_eq!(&a[..2], &[0x42, 0x42]);
    }
}

#[test]
fn malformed_queries_get_formerr() {
    let blob = blob();
    let s = server(&blob);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no question", edited(|q| q[5] = 0)),
        ("two questions", edited(|q| q[5] = 2)),
        ("an answer record", edited(|q| q[7] = 1)),
        ("question cut short", edited(|q| q.truncate(q.len() - 3))),
        ("label past the end", edited(|q| q[12] = 60)),
        ("compression loop", {
            let mut q = edited(|_| {});
            q.truncate(12);
            // A pointer to itself.
            q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            q
        }),
        ("additional count too large", edited(|q| q[11] = 3)),
    ];
    for (what, q) in cases {
        let a = s.respond(&q, Transport::Udp).unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(rcode_of(&a), Rcode::FORMERR, "{what}");
    }
    // Two OPT records.
    let mut q = query(3, "example.com.", Rtype::A, Opts::EDNS);
    let opt = q[q.len() - 11..].to_vec();
    q.extend_from_slice(&opt);
    q[11] = 2;
    assert_eq!(rcode_of(&s.respond(&q, Transport::Udp).unwrap()), Rcode::FORMERR);
}

#[test]
fn unknown_edns_version_gets_badvers() {
    let blob = blob();
    let s = server(&blob);
    let mut q = query(3, "example.com.", Rtype::A, Opts::EDNS);
    // The OPT TTL's second byte is the version.
    let at = q.len() - 11 + 6;
    q[at] = 1;
    let a = s.respond(&q, Transport::Udp).unwrap();
    let msg = Message::from_octets(&a[..]).unwrap();
    assert_eq!(msg.opt_rcode(), domain::base::iana::OptRcode::BADVERS);
}

#[test]
fn names_outside_the_zones_are_refused() {
    let blob = blob();
    let s = server(&blob);
    let a = ask(&s, "www.example.org.", Rtype::A, Opts::PLAIN);
    assert_eq!((a.rcode, a.aa), (Rcode::REFUSED, false));
    assert!(a.answer.is_empty());
}

#[test]
fn any_is_answered_with_one_rrset() {
    let blob = blob();
    let s = server(&blob);
    let a = ask(&s, "example.com.", Rtype::ANY, Opts::PLAIN);
    assert_eq!(a.rcode, Rcode::NOERROR);
    let types: std::collections::BTreeSet<&str> = a.answer.iter().map(|r| r.split(' ').nth(2).unwrap()).collect();
    assert_eq!(types.len(), 1, "{a:?}");
    // Signed: the RRset and its signature.
    let a = ask(&s, "signed.example.", Rtype::ANY, Opts::DO);
    let types: std::collections::BTreeSet<&str> = a.answer.iter().map(|r| r.split(' ').nth(2).unwrap()).collect();
    assert_eq!(types.len(), 2, "{a:?}");
    assert!(types.contains("RRSIG"));
}

#[test]
fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let blob = blob();
    let s = server(&blob);
    let plain = s.respond(&query(1, "long.example.com.", Rtype::TXT, Opts::PLAIN), Transport::Udp).unwrap();
    let a = parse(&plain);
    assert!(a.tc && plain.len() <= 512 && a.answer.is_empty(), "{a:?}");
    let small = Opts { edns: Some(512), dnssec_ok: false };
    let a = parse(&s.respond(&query(1, "long.example.com.", Rtype::TXT, small), Transport::Udp).unwrap());
    assert!(a.tc, "{a:?}");
    let big = Opts { edns: Some(4096), dnssec_ok: false };
    let a = parse(&s.respond(&query(1, "long.example.com.", Rtype::TXT, big), Transport::Udp).unwrap());
    assert!(!a.tc && a.answer.len() == 8, "{a:?}");
    let a = parse(&s.respond(&query(1, "long.example.com.", Rtype::TXT, Opts::PLAIN), Transport::Tcp).unwrap());
    assert!(!a.tc && a.answer.len() == 8, "{a:?}");
}

#[test]
fn the_payload_size_is_capped_by_the_config() {
    let blob = blob();
    let s = Server::new(Catalog::new(&blob).unwrap(), Config { max_udp_payload: 512, ..Config::default() });
    let big = Opts { edns: Some(4096), dnssec_ok: false };
    let a = parse(&s.respond(&query(1, "long.example.com.", Rtype::TXT, big), Transport::Udp).unwrap());
    assert!(a.tc, "{a:?}");
    assert_eq!(a.opt, Some((512, false)));
}

#[test]
fn dnssec_records_only_with_the_do_bit() {
    let blob = blob();
    let s = server(&blob);
    for (name, rtype) in
        [("www.signed.example.", Rtype::A), ("nope.signed.example.", Rtype::A), ("x.wild.nsec3.example.", Rtype::A)]
    {
        let without = ask(&s, name, rtype, Opts::EDNS);
        let all: Vec<&String> = without.answer.iter().chain(&without.authority).chain(&without.additional).collect();
        assert!(all.iter().all(|r| !r.contains(" RRSIG ") && !r.contains(" NSEC")), "{name}: {without:?}");
        let with = ask(&s, name, rtype, Opts::DO);
        let all: Vec<&String> = with.answer.iter().chain(&with.authority).collect();
        assert!(all.iter().any(|r| r.contains(" RRSIG ")), "{name}: {with:?}");
    }
    let nx = ask(&s, "nope.signed.example.", Rtype::A, Opts::DO);
    assert_eq!(nx.rcode, Rcode::NXDOMAIN);
    assert!(nx.authority.iter().any(|r| r.contains(" NSEC ")), "{nx:?}");
    let nx3 = ask(&s, "nope.nsec3.example.", Rtype::A, Opts::DO);
    // The closest encloser's NSEC3 and the ones covering the next closer
    // name and the wildcard (here one covers both).
    let nsec3 = nx3.authority.iter().filter(|r| r.split(' ').nth(2) == Some("NSEC3")).count();
    assert!((2..=3).contains(&nsec3), "{nx3:?}");
    let keys = ask(&s, "signed.example.", Rtype::DNSKEY, Opts::PLAIN);
    assert_eq!(keys.answer.len(), 2, "{keys:?}");
}

#[test]
fn rate_limiting_is_off_by_default_and_limits_when_on() {
    let blob = blob();
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    let q = query(9, "www.example.com.", Rtype::A, Opts::PLAIN);
    let mut open = server(&blob);
    assert!((0..100).all(|_| open.handle(&q, Transport::Udp, client, 0).is_some()));
    let limit = RateLimit { responses_per_second: 5, slip: 2, ..RateLimit::default() };
    let mut s = Server::new(Catalog::new(&blob).unwrap(), Config { rate_limit: Some(limit), ..Config::default() });
    let answers: Vec<_> = (0..20).filter_map(|_| s.handle(&q, Transport::Udp, client, 1000)).collect();
    let full = answers.iter().filter(|a| !parse(a).tc).count();
    let slipped = answers.iter().filter(|a| parse(a).tc).count();
    assert_eq!((full, slipped), (5, 7));
    // TCP is not limited; another prefix has its own bucket.
    assert!(s.handle(&q, Transport::Tcp, client, 1000).is_some_and(|a| !parse(&a).tc));
    let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    assert!(s.handle(&q, Transport::Udp, other, 1000).is_some_and(|a| !parse(&a).tc));
    // A second later the bucket is full again.
    assert!(s.handle(&q, Transport::Udp, client, 2000).is_some_and(|a| !parse(&a).tc));
}

#[test]
fn several_queries_over_one_tcp_stream() {
    let blob = blob();
    let s = server(&blob);
    let names = ["www.example.com.", "nope.example.com.", "long.example.com."];
    let stream: Vec<u8> = names.iter().flat_map(|n| frame(&query(5, n, Rtype::TXT, Opts::PLAIN))).collect();
    let mut d = Deframer::new();
    let mut out = Vec::new();
    for chunk in stream.chunks(7) {
        d.push(chunk);
        while let Some(m) = d.next_message().unwrap() {
            out.extend(frame(&s.respond(m, Transport::Tcp).unwrap()));
        }
    }
    let mut back = Deframer::new();
    back.push(&out);
    let mut got = Vec::new();
    while let Some(m) = back.next_message().unwrap() {
        got.push(parse(m));
    }
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].rcode, Rcode::NXDOMAIN);
    assert_eq!(got[2].answer.len(), 8);
}
