//! The zone compiler: master file syntax, and errors that name the file
//! and line.

use skiff_dns::Catalog;
use skiff_dns::build::{CompileError, ZoneFile, compile};

fn compile_one(text: &str) -> Result<Vec<u8>, CompileError> {
    compile(&[(&ZoneFile::new("example.", "zones/example.zone"), text)])
}

const SOA: &str = "@ 3600 IN SOA ns hostmaster 1 7200 3600 1209600 300\n";

#[test]
fn master_file_syntax() {
    let text = "; comment\n$TTL 300\n$ORIGIN example.\n@ IN SOA ns.example. hostmaster ( 1 ; serial\n  7200 3600\n  1209600 300 )\n\
                @ NS ns\nns A 192.0.2.1\n  AAAA 2001:db8::1 ; same owner\nesc\\.aped TXT \"a;b\" \"c\\\"d\" \\065\n\
                $ORIGIN sub.example.\nwww 60 A 192.0.2.2\n";
    let blob = compile_one(text).unwrap();
    let catalog = Catalog::new(&blob).unwrap();
    let zone = catalog.zones().next().unwrap();
    let names: Vec<String> = zone.nodes.keys().map(|n| n.to_string()).collect();
    assert_eq!(names, ["example", "esc\\.aped.example", "ns.example", "www.sub.example"]);
    let ns = &zone.nodes.iter().find(|(n, _)| n.to_string() == "ns.example").unwrap().1;
    assert_eq!(ns.rrsets.len(), 2);
    assert_eq!(ns.rrsets[0].rrs[0].ttl, 300);
}

fn error(text: &str) -> String {
    compile_one(text).expect_err("the zone must not compile").to_string()
}

#[test]
fn errors_name_the_file_and_line() {
    let e = error(&format!("{SOA}www A 192.0.2.1\n\n$INCLUDE other.zone\n"));
    assert_eq!(e, "zones/example.zone:4: $INCLUDE is not supported: put the zone in one file");
    let e = error(&format!("{SOA}www A 192.0.2.1\n; comment\n\nwww.example.org. A 192.0.2.2\n"));
    assert_eq!(e, "zones/example.zone:5: www.example.org is outside the zone example");
    let e = error(&format!("{SOA}www CNAME host\nwww A 192.0.2.1\n"));
    assert_eq!(e, "zones/example.zone:3: www.example has a CNAME and other data");
    let e = error(&format!("{SOA}www A 192.0.2.300\n"));
    assert!(e.starts_with("zones/example.zone:2:"), "{e}");
    let e = error(&format!("{SOA}sub SOA ns hostmaster 1 2 3 4 5\n"));
    assert_eq!(e, "zones/example.zone:2: an SOA record below the apex");
    let e = error("www A 192.0.2.1\n");
    assert_eq!(e, "zones/example.zone: the zone example has no SOA record at its apex");
    // Lines are counted through parentheses, quotes and comments.
    let e = error("@ SOA ns hm (\n 1 2 ; (\n 3 4 5 )\ntxt TXT \"(\" ; )\n\nbad A 192.0.2.300\n");
    assert_eq!(e, "zones/example.zone:6: expected IPv4 address");
    let e = error(&format!("{SOA}www CH A 192.0.2.1\n"));
    assert!(e.starts_with("zones/example.zone:2:"), "{e}");
}

#[test]
fn a_corrupt_blob_is_an_error_not_a_panic() {
    let blob = compile_one(&format!("{SOA}www A 192.0.2.1\nmx MX 10 www\n")).unwrap();
    assert!(Catalog::new(&blob).is_ok());
    for cut in 0..blob.len() {
        assert!(Catalog::new(&blob[..cut]).is_err(), "cut at {cut}");
    }
    for i in 0..blob.len() {
        for bit in 0..8 {
            let mut b = blob.clone();
            b[i] ^= 1 << bit;
            let _ = Catalog::new(&b);
        }
    }
}

#[test]
fn a_loaded_name_with_one_record_holds_room_for_one() {
    // A zone of 100,000 names paid for four RRsets and four records per
    // name (Vec's first growth): about 250 bytes of heap each for nothing.
    let mut text = String::from(SOA);
    text += "@ NS ns\n";
    for i in 0..100 {
        text += &format!("h{i} A 192.0.2.{}\n", i % 250);
    }
    text += "two A 192.0.2.1\ntwo A 192.0.2.2\n";
    let blob = compile_one(&text).unwrap();
    let catalog = Catalog::new(&blob).unwrap();
    let zone = catalog.zones().next().unwrap();
    let h7 = zone.nodes.iter().find(|(n, _)| n.to_string() == "h7.example").unwrap().1;
    assert_eq!((h7.rrsets.capacity(), h7.rrsets[0].rrs.capacity()), (1, 1));
    let two = zone.nodes.iter().find(|(n, _)| n.to_string() == "two.example").unwrap().1;
    assert_eq!(two.rrsets[0].rrs.len(), 2);
}
