//! Answers for the test zones, checked feature by feature.

mod common;

use common::{Opts, blob, parse, query};
use domain::base::iana::{Rcode, Rtype};
use skiff_dns::{Catalog, Config, Server, Transport};

fn ask(server: &Server<'_>, name: &str, rtype: Rtype, opts: Opts) -> common::Answer {
    let bytes = server.respond(&query(7, name, rtype, opts), Transport::Udp).expect("an answer");
    parse(&bytes)
}

#[test]
fn smoke() {
    let blob = blob();
    let server = Server::new(Catalog::new(&blob).unwrap(), Config::default());
    for (name, t) in [("www.example.com.", Rtype::A), ("nope.example.com.", Rtype::A), ("x.wild.example.com.", Rtype::TXT), ("b.sub.example.com.", Rtype::A), ("a.ent.example.com.", Rtype::A), ("signed.example.", Rtype::MX)] {
        for o in [Opts::PLAIN, Opts::DO] {
            println!("{name} {t} {o:?}: {:#?}", ask(&server, name, t, o));
        }
    }
}
