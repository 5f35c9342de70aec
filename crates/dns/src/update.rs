//! RFC 2136 dynamic updates, sans-IO: an UPDATE message checked against
//! a zone's records gives the zone's new records (or nothing changed, or
//! the rcode that refuses it). All or nothing: the records are only
//! replaced when every prerequisite holds and every update applies.

use alloc::vec::Vec;

use domain::base::iana::{Class, Rcode, Rtype};
use domain::base::message::Message;
use domain::base::name::{Name, ParsedName, ToName};
use domain::base::rdata::{ComposeRecordData, ParseRecordData};
use domain::dep::octseq::Parser;
use domain::rdata::ZoneRecordData;

use crate::zone::{Record, Zone, soa_serial};

/// One record of an UPDATE message, with its rdata uncompressed.
struct Entry {
    owner: Name<Vec<u8>>,
    rtype: Rtype,
    class: Class,
    ttl: u32,
    rdata: Vec<u8>,
}

/// The records of one section of `msg`: answer (prerequisites) or
/// authority (updates).
fn entries(msg: &Message<&[u8]>, prerequisites: bool) -> Result<Vec<Entry>, Rcode> {
    let section = if prerequisites { msg.answer() } else { msg.authority() };
    let section = section.map_err(|_| Rcode::FORMERR)?;
    let mut out = Vec::new();
    for rec in section {
        let rec = rec.map_err(|_| Rcode::FORMERR)?;
        let mut rdata = Vec::new();
        if rec.rdlen() > 0 {
            let data = rec
                .to_record::<ZoneRecordData<&[u8], ParsedName<&[u8]>>>()
                .map_err(|_| Rcode::FORMERR)?
                .ok_or(Rcode::FORMERR)?;
            data.data().compose_rdata(&mut rdata).map_err(|_| Rcode::SERVFAIL)?;
        }
        let owner = rec.owner().to_name::<Vec<u8>>();
        out.push(Entry { owner, rtype: rec.rtype(), class: rec.class(), ttl: rec.ttl().as_secs(), rdata });
    }
    Ok(out)
}

/// Whether two rdatas of `rtype` are the same record (names compared
/// without case, as RFC 2136 section 1.1.1 asks).
fn same_rdata(rtype: Rtype, a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    let parse = |d| ZoneRecordData::parse_rdata(rtype, &mut Parser::from_ref(d)).ok().flatten();
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

fn is_meta(rtype: Rtype) -> bool {
    matches!(rtype, Rtype::ANY | Rtype::AXFR | Rtype::IXFR | Rtype::MAILA | Rtype::MAILB | Rtype::OPT | Rtype::TSIG)
}

/// Applies the UPDATE `msg` to `zone`. `Ok(None)`: every prerequisite
/// holds but nothing changed; `Ok(Some(records))`: the zone's new records,
/// SOA first with its serial bumped; `Err(rcode)`: refused as a whole.
pub(crate) fn apply(zone: &Zone<'_>, msg: &Message<&[u8]>) -> Result<Option<Vec<Record>>, Rcode> {
    let apex = zone.apex;
    let mut records = zone.records();
    let in_zone = |n: &Name<Vec<u8>>| n.ends_with(apex);

    // Prerequisites (section 3.2).
    let prereqs = entries(msg, true)?;
    let mut wanted: Vec<&Entry> = Vec::new();
    for p in &prereqs {
        if p.ttl != 0 {
            return Err(Rcode::FORMERR);
        }
        if !in_zone(&p.owner) {
            return Err(Rcode::NOTZONE);
        }
        match p.class {
            // ANY: the name (type ANY) or the RRset must exist; NONE: it
            // must not.
            Class::ANY | Class::NONE => {
                if !p.rdata.is_empty() {
                    return Err(Rcode::FORMERR);
                }
                let exists =
                    records.iter().any(|r| r.owner == p.owner && (p.rtype == Rtype::ANY || r.rtype == p.rtype));
                let must_exist = p.class == Class::ANY;
                if exists != must_exist {
                    return Err(match (must_exist, p.rtype == Rtype::ANY) {
                        (true, true) => Rcode::NXDOMAIN,
                        (true, false) => Rcode::NXRRSET,
                        (false, true) => Rcode::YXDOMAIN,
                        (false, false) => Rcode::YXRRSET,
                    });
                }
            }
            Class::IN => wanted.push(p),
            _ => return Err(Rcode::FORMERR),
        }
    }
    // Value-dependent prerequisites: each RRset named must be exactly the
    // records given.
    for p in &wanted {
        let given: Vec<&&Entry> = wanted.iter().filter(|q| q.owner == p.owner && q.rtype == p.rtype).collect();
        let have: Vec<&Record> = records.iter().filter(|r| r.owner == p.owner && r.rtype == p.rtype).collect();
        let all_given_there = given.iter().all(|g| have.iter().any(|h| same_rdata(p.rtype, &h.rdata, &g.rdata)));
        let all_there_given = have.iter().all(|h| given.iter().any(|g| same_rdata(p.rtype, &h.rdata, &g.rdata)));
        if !all_given_there || !all_there_given {
            return Err(Rcode::NXRRSET);
        }
    }

    // Prescan of the updates (section 3.4.1).
    let updates = entries(msg, false)?;
    for u in &updates {
        if !in_zone(&u.owner) {
            return Err(Rcode::NOTZONE);
        }
        match u.class {
            Class::IN if is_meta(u.rtype) => return Err(Rcode::FORMERR),
            Class::IN => {}
            Class::ANY if u.ttl != 0 || !u.rdata.is_empty() => return Err(Rcode::FORMERR),
            Class::ANY if is_meta(u.rtype) && u.rtype != Rtype::ANY => return Err(Rcode::FORMERR),
            Class::ANY => {}
            Class::NONE if u.ttl != 0 || is_meta(u.rtype) => return Err(Rcode::FORMERR),
            Class::NONE => {}
            _ => return Err(Rcode::FORMERR),
        }
    }

    // The updates (section 3.4.2), on a copy.
    let before = records.clone();
    let mut soa_set = false;
    for u in &updates {
        let at_apex = u.owner == apex.to_name::<Vec<u8>>();
        match u.class {
            Class::IN => {
                if u.rtype == Rtype::SOA {
                    // Only a newer serial replaces the SOA.
                    let (Some(new), Some(old)) = (soa_serial(&u.rdata), soa_serial(&records[0].rdata)) else {
                        continue;
                    };
                    if at_apex && serial_gt(new, old) {
                        records[0].rdata = u.rdata.clone();
                        records[0].ttl = u.ttl;
                        soa_set = true;
                    }
                    continue;
                }
                let here = |r: &Record| r.owner == u.owner;
                let has_cname = records.iter().any(|r| here(r) && r.rtype == Rtype::CNAME);
                let has_other = records.iter().any(|r| here(r) && r.rtype != Rtype::CNAME && !is_dnssec(r.rtype));
                if (u.rtype == Rtype::CNAME && has_other) || (u.rtype != Rtype::CNAME && has_cname) {
                    continue;
                }
                if u.rtype == Rtype::CNAME {
                    // A CNAME replaces the one there.
                    records.retain(|r| !(here(r) && r.rtype == Rtype::CNAME));
                }
                // One TTL per RRset: the newest.
                for r in records.iter_mut().filter(|r| r.owner == u.owner && r.rtype == u.rtype) {
                    r.ttl = u.ttl;
                }
                if !records.iter().any(|r| here(r) && r.rtype == u.rtype && same_rdata(u.rtype, &r.rdata, &u.rdata)) {
                    records.push(Record { owner: u.owner.clone(), rtype: u.rtype, ttl: u.ttl, rdata: u.rdata.clone() });
                }
            }
            Class::ANY => {
                records.retain(|r| {
                    r.owner != u.owner
                        || (u.rtype != Rtype::ANY && r.rtype != u.rtype)
                        || (at_apex && matches!(r.rtype, Rtype::SOA | Rtype::NS))
                });
            }
            Class::NONE => {
                if at_apex && u.rtype == Rtype::SOA {
                    continue;
                }
                if at_apex && u.rtype == Rtype::NS {
                    let left = records.iter().filter(|r| r.owner == u.owner && r.rtype == Rtype::NS).count();
                    if left <= 1 {
                        continue;
                    }
                }
                records
                    .retain(|r| !(r.owner == u.owner && r.rtype == u.rtype && same_rdata(u.rtype, &r.rdata, &u.rdata)));
            }
            _ => {}
        }
    }
    if records == before {
        return Ok(None);
    }
    if !soa_set {
        // The serial goes up by one (RFC 1982 arithmetic wraps).
        let soa = &mut records[0].rdata;
        let at = soa.len() - 20;
        let serial = u32::from_be_bytes([soa[at], soa[at + 1], soa[at + 2], soa[at + 3]]).wrapping_add(1);
        soa[at..at + 4].copy_from_slice(&serial.to_be_bytes());
    }
    Ok(Some(records))
}

fn is_dnssec(rtype: Rtype) -> bool {
    matches!(rtype, Rtype::RRSIG | Rtype::NSEC | Rtype::NSEC3)
}

/// `a` is after `b` in serial number arithmetic (RFC 1982).
pub(crate) fn serial_gt(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000_0000
}
