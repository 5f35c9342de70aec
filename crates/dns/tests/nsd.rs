//! Skiff's answers compared with NSD's: NSD serves the same zone files on
//! a loopback port this test picks, every query of a corpus goes to both
//! (to NSD over UDP, to Skiff's sans-IO server in process), and the
//! header flags, rcode and sections must match record for record.
//!
//! Differences the RFCs allow are listed in `allowed` with the reason.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Answer, Opts, ZONES, ask, blob, names, parse, query, zones_dir};
use domain::base::iana::Rtype;
use skiff_dns::{Catalog, Config, Server, Transport};

/// An NSD serving the test zones on 127.0.0.1, ended when dropped.
struct Nsd(skiff_testnet::Nsd);

impl Nsd {
    fn start() -> Nsd {
        let dir = std::env::temp_dir().join(format!("skiff-dns-nsd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let listen = ([127, 0, 0, 1], skiff_testnet::free_port()).into();
        let server = "  verbosity: 1\n  refuse-any: no\n  ipv4-edns-size: 1232\n  tcp-count: 4\n";
        let zones: String = ZONES
            .iter()
            .map(|(origin, file)| {
                format!("zone:\n  name: \"{origin}\"\n  zonefile: \"{}\"\n", zones_dir().join(file).display())
            })
            .collect();
        let nsd = Nsd(skiff_testnet::Nsd::start(Command::new("nsd"), &dir, listen, server, &zones).expect("start nsd"));
        // Wait until it answers.
        skiff_testnet::wait_for(Duration::from_secs(10), || {
            nsd.ask(&query(1, "example.com.", Rtype::SOA, Opts::PLAIN)).filter(|a| !a.answer.is_empty())
        })
        .unwrap_or_else(|| panic!("nsd did not start: {}", nsd.0.log()));
        nsd
    }

    fn ask(&self, q: &[u8]) -> Option<Answer> {
        ask(self.0.addr(), q, Duration::from_millis(500))
    }
}

/// The query corpus: (name, type, options).
fn corpus(blob: &[u8]) -> Vec<(String, Rtype, Opts)> {
    const TYPES: &[Rtype] = &[
        Rtype::A,
        Rtype::AAAA,
        Rtype::MX,
        Rtype::TXT,
        Rtype::NS,
        Rtype::SOA,
        Rtype::CNAME,
        Rtype::DS,
        Rtype::DNSKEY,
        Rtype::SRV,
        Rtype::NSEC,
        Rtype::PTR,
    ];
    const EXTRA: &[&str] = &[
        "nope",
        "a.b.nope",
        "x.wild",
        "a.b.wild",
        "sub.wild",
        "x.sub.wild",
        "a.ent",
        "ent",
        "c.a.ent",
        "q.ent2",
        "y.ent2",
        "z.y.ent2",
        "foo.sub",
        "ns.sub",
        "deep.ns.sub",
        "x.cname",
        "a.b.cname",
        "WWW",
        "mixedcase",
        "foo.secure",
        "secure",
        "ns.secure",
        "insecure",
        "x.insecure",
        "dangling",
        "loop1",
        "alias",
    ];
    let opts = [
        Opts::PLAIN,
        Opts { edns: Some(512), dnssec_ok: false },
        Opts { edns: Some(4096), dnssec_ok: false },
        Opts::DO,
        Opts { edns: Some(4096), dnssec_ok: true },
    ];
    let mut out = Vec::new();
    for (zone, list) in names(blob) {
        let mut names: Vec<String> = list.iter().map(|(n, _)| n.clone()).collect();
        names.extend(EXTRA.iter().map(|e| format!("{e}.{zone}")));
        names.sort();
        names.dedup();
        for name in names {
            let own = list.iter().filter(|(n, _)| *n == name).map(|(_, t)| *t);
            let mut types: Vec<Rtype> = own.chain(TYPES.iter().copied()).collect();
            types.sort();
            types.dedup();
            for t in types {
                for o in opts {
                    out.push((name.clone(), t, o));
                }
            }
        }
    }
    // Outside every zone: REFUSED.
    for o in opts {
        out.push(("example.org.".into(), Rtype::A, o));
        out.push(("com.".into(), Rtype::NS, o));
    }
    out
}

/// Differences the RFCs allow, or none.
fn allowed(_name: &str, _rtype: Rtype, _skiff: &Answer, _nsd: &Answer) -> Option<&'static str> {
    None
}

fn same(skiff: &Answer, nsd: &Answer) -> bool {
    skiff.rcode == nsd.rcode
        && skiff.aa == nsd.aa
        && skiff.tc == nsd.tc
        && skiff.opt == nsd.opt
        && skiff.question == nsd.question
        // A truncated answer's records are whatever fitted.
        && (skiff.tc
            || (skiff.answer == nsd.answer && skiff.authority == nsd.authority && skiff.additional == nsd.additional))
}

#[test]
fn answers_match_nsd() {
    let blob = blob();
    let server = Server::new(Catalog::new(&blob).unwrap(), Config::default());
    let nsd = Nsd::start();
    let corpus = corpus(&blob);
    let (mut differ, mut excused) = (Vec::new(), 0);
    for (i, (name, rtype, opts)) in corpus.iter().enumerate() {
        let q = query(i as u16, name, *rtype, *opts);
        let skiff = parse(&server.respond(&q, Transport::Udp).expect("an answer"));
        let Some(theirs) = nsd.ask(&q) else { panic!("nsd did not answer {name} {rtype}") };
        if same(&skiff, &theirs) {
            continue;
        }
        if allowed(name, *rtype, &skiff, &theirs).is_some() {
            excused += 1;
            continue;
        }
        differ.push(format!("{name} {rtype} {opts:?}\n  skiff: {skiff:?}\n  nsd:   {theirs:?}"));
    }
    println!("{} queries, {} differences, {excused} allowed", corpus.len(), differ.len());
    // The first difference for each name and type.
    let mut shown = std::collections::BTreeSet::new();
    for d in &differ {
        let key: String = d.split(" Opts").next().unwrap_or_default().to_string();
        if shown.insert(key) && shown.len() <= 40 {
            println!("{d}\n");
        }
    }
    let keys: Vec<_> = shown.into_iter().collect();
    println!("differing (name, type): {}", keys.join(", "));
    assert!(corpus.len() >= 300, "the corpus is too small");
    assert!(differ.is_empty(), "{} of {} answers differ from NSD's", differ.len(), corpus.len());
}
