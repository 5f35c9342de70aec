//! The zone journal (`skiff_dns::journal`) over an in-memory block device:
//! a changed zone is kept, survives closing and reopening the device, and
//! is put back in place of the built zone unless the built one is newer.

mod common;

use domain::base::iana::Rtype;
use domain::base::name::Name;
use skiff_dns::journal::{Journal, JournalError, Restored};
use skiff_dns::{Catalog, Config, Record, Server, soa_serial};
use skiff_store::{MemDevice, block_on};

fn server() -> Server<'static> {
    let blob: &'static [u8] = Box::leak(common::blob().into_boxed_slice());
    Server::new(Catalog::new(blob).unwrap(), Config::default())
}

fn apex() -> Name<Vec<u8>> {
    Name::from_chars("example.com.".chars()).unwrap()
}

/// example.com's records with the serial set to `serial` and one A record
/// added at `new.example.com`.
fn changed(server: &Server<'_>, serial: u32) -> Vec<Record> {
    let mut records = server.catalog().zone(apex().for_slice()).unwrap().records();
    let at = records[0].rdata.len() - 20;
    records[0].rdata[at..at + 4].copy_from_slice(&serial.to_be_bytes());
    records.push(Record {
        owner: Name::from_chars("new.example.com.".chars()).unwrap(),
        rtype: Rtype::A,
        ttl: 300,
        rdata: vec![192, 0, 2, 99],
    });
    records
}

fn serial(server: &Server<'_>) -> u32 {
    server.catalog().zone(apex().for_slice()).unwrap().serial()
}

#[test]
fn a_kept_zone_is_restored_after_reopening() {
    let built = server();
    let was = serial(&built);
    let (journal, created) = block_on(Journal::open(MemDevice::new(512, 1024))).unwrap();
    assert!(created, "a zeroed device is formatted");
    block_on(journal.keep(&changed(&built, was + 1))).unwrap();
    let dev = block_on(journal.close()).unwrap();

    let (journal, created) = block_on(Journal::open(dev)).unwrap();
    assert!(!created, "the store is opened, not made again");
    let mut restarted = server();
    let restored = block_on(journal.restore(&mut restarted, |_| false)).unwrap();
    assert_eq!(restored, vec![Restored::Loaded { zone: apex(), serial: was + 1, records: changed(&built, 0).len() }]);
    assert_eq!(serial(&restarted), was + 1);
    let zone = restarted.catalog().zone(apex().for_slice()).unwrap();
    let new = Name::<Vec<u8>>::from_chars("new.example.com.".chars()).unwrap();
    assert!(zone.node(new.for_slice()).is_some_and(|n| n.get(Rtype::A).is_some()), "the added record is served");
}

#[test]
fn an_older_write_never_replaces_a_newer_zone() {
    let built = server();
    let was = serial(&built);
    let (journal, _) = block_on(Journal::open(MemDevice::new(512, 1024))).unwrap();
    block_on(journal.keep(&changed(&built, was + 2))).unwrap();
    // A change that was overtaken (its write ran after the newer one's).
    block_on(journal.keep(&changed(&built, was + 1))).unwrap();
    let zones = block_on(journal.zones()).unwrap();
    assert_eq!(zones.len(), 1);
    let kept = zones[0].1.as_ref().unwrap();
    assert_eq!(soa_serial(&kept[0].rdata), Some(was + 2));
}

#[test]
fn a_newer_built_zone_wins_and_unknown_zones_are_left_out() {
    let built = server();
    let was = serial(&built);
    let (journal, _) = block_on(Journal::open(MemDevice::new(512, 1024))).unwrap();
    // Stored before the image was rebuilt with a higher serial.
    block_on(journal.keep(&changed(&built, was - 1))).unwrap();
    let mut other = changed(&built, 7);
    let stranger = Name::<Vec<u8>>::from_chars("gone.example.".chars()).unwrap();
    for r in &mut other {
        // The same records under another apex: a zone this image lacks.
        let rel = r.owner.to_string();
        let head = rel.strip_suffix("example.com").unwrap_or_default();
        r.owner = Name::from_chars(format!("{head}gone.example.").chars()).unwrap();
    }
    other.retain(|r| !matches!(r.rtype, Rtype::NS | Rtype::MX | Rtype::CNAME | Rtype::DNAME | Rtype::SRV));
    block_on(journal.keep(&other)).unwrap();
    let mut restarted = server();
    let restored = block_on(journal.restore(&mut restarted, |_| false)).unwrap();
    assert!(restored.contains(&Restored::Older { zone: apex(), stored: was - 1, built: was }), "{restored:?}");
    assert!(restored.contains(&Restored::Unknown { zone: stranger.clone() }), "{restored:?}");
    assert_eq!(serial(&restarted), was);
    assert!(restarted.catalog().zone(stranger.for_slice()).is_none());
    // A secondary accepts zones the image does not carry.
    let restored = block_on(journal.restore(&mut restarted, |z| z == stranger.for_slice())).unwrap();
    assert!(restored.iter().any(|r| matches!(r, Restored::Loaded { zone, .. } if *zone == stranger)), "{restored:?}");
    assert!(restarted.catalog().zone(stranger.for_slice()).is_some());
}

#[test]
fn a_disk_holding_something_else_is_not_formatted_over() {
    let mut bytes = vec![0u8; 512 * 1024];
    bytes[100] = 1;
    let err = block_on(Journal::open(MemDevice::from_bytes(512, bytes))).unwrap_err();
    assert_eq!(err, JournalError::Foreign);
    assert!(err.to_string().contains("not a Skiff store"), "{err}");
}
