//! Thousands of random and mutated queries: the server never panics, and
//! answers either nothing or a well-formed message with the query's ID,
//! QR set, every section parsing, within the size limit of its transport.

mod common;

use common::{Opts, blob, query};
use domain::base::iana::Rtype;
use domain::base::message::Message;
use proptest::prelude::*;
use skiff_dns::{Catalog, Config, Server, Transport};

/// Checks one answer to `q` (or its absence).
fn check(server: &Server<'_>, q: &[u8]) {
    for transport in [Transport::Udp, Transport::Tcp] {
        let Some(a) = server.respond(q, transport) else {
            // Nothing only for a response or a message shorter than a header.
            assert!(q.len() < 12 || q[2] & 0x80 != 0, "no answer to a query: {q:02x?}");
            continue;
        };
        assert!(a.len() >= 12);
        assert_eq!(&a[..2], &q[..2], "the answer carries the query's ID");
        let msg = Message::from_octets(&a[..]).expect("a message");
        assert!(msg.header().qr());
        let mut section = msg.question();
        for question in &mut section {
            question.expect("question parses");
        }
        let mut records = section.answer().expect("answer section");
        loop {
            for rec in &mut records {
                let rec = rec.expect("record parses");
                let _: Option<common::AnyRecord<'_>> = rec.to_record().expect("rdata parses");
            }
            match records.next_section().expect("next section") {
                Some(next) => records = next,
                None => break,
            }
        }
        if transport == Transport::Udp {
            // 512 without EDNS, at most the configured 1232 with it.
            let limit = if msg.opt().is_some() { 1232 } else { 512 };
            assert!(a.len() <= limit, "{} bytes over UDP", a.len());
        }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let names = [
        "www.example.com.",
        "long.example.com.",
        "x.wild.example.com.",
        "b.sub.example.com.",
        "nope.nsec3.example.",
        "a.b.wild.signed.example.",
        "example.net.",
    ];
    for (i, name) in names.iter().enumerate() {
        for (t, opts) in [(Rtype::A, Opts::PLAIN), (Rtype::TXT, Opts::DO), (Rtype::ANY, Opts::EDNS)] {
            out.push(query(i as u16, name, t, opts));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check(server(), &bytes);
    }

    #[test]
    fn mutated_queries(
        seed in 0usize..21,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
    ) {
        let mut q = seeds()[seed].clone();
        for (at, byte, kind) in edits {
            if q.is_empty() {
                break;
            }
            let i = at.index(q.len());
            match kind {
                0 => q[i] = byte,
                1 => q[i] ^= 1 << (byte % 8),
                2 => q.insert(i, byte),
                _ => q.truncate(i),
            }
        }
        check(server(), &q);
    }
}

fn server() -> &'static Server<'static> {
    static BLOB: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    static SERVER: std::sync::OnceLock<Server<'static>> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| Server::new(Catalog::new(BLOB.get_or_init(blob)).unwrap(), Config::default()))
}

#[test]
fn seeds_are_answered() {
    for q in seeds() {
        check(server(), &q);
    }
}
