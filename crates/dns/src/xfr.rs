//! Requests beyond queries, sans-IO: TSIG-signed messages, zone transfers
//! out (AXFR, and IXFR from the changes kept), dynamic updates (RFC
//! 2136), and the access rules for them.
//!
//! [`Server::serve`] is the front ends' entry point: a message and where
//! it came from in, the messages to send back (one, or a transfer's many)
//! and what happened ([`Event`], to log) out.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use core::net::IpAddr;

use domain::base::iana::{Class, Opcode, OptRcode, Rcode, Rtype};
use domain::base::message::Message;
use domain::base::message_builder::{MessageBuilder, StaticCompressor};
use domain::base::name::{Name, ToName};
use domain::base::rdata::ParseRecordData;
use domain::base::{Question, Ttl};
use domain::dep::octseq::Parser;
use domain::rdata::ZoneRecordData;

use crate::server::{Refusal, Server, Transport, error_answer};
use crate::tsig::{self, Checked, RequestTsig, Signer, TsigError};
use crate::update::{self, serial_gt};
use crate::zone::{OwnedZone, Record, soa_serial};

/// The most bytes of records put in one transfer message (a TCP message
/// holds 65,535; smaller ones go out sooner and leave room for TSIG).
const XFR_MESSAGE: usize = 16_000;

/// Who may do something: a client address range, a TSIG key, or both
/// (both must then match). A rule with neither matches everyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    /// The client's address must be in this network (address, prefix).
    pub network: Option<(IpAddr, u8)>,
    /// The request must be signed with this key.
    pub key: Option<Name<Vec<u8>>>,
}

/// An access rule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AclError {
    /// A part is neither `ADDR[/PREFIX]` nor `key:NAME`.
    #[error("{0:?} is not ADDR[/PREFIX], key:NAME or any")]
    Part(alloc::string::String),
}

impl AclRule {
    /// Parses `any`, `ADDR[/PREFIX]`, `key:NAME`, or an address and a key
    /// joined by `+` (`10.0.0.0/8+key:xfr`).
    pub fn parse(text: &str) -> Result<AclRule, AclError> {
        let mut rule = AclRule { network: None, key: None };
        if text == "any" {
            return Ok(rule);
        }
        let bad = || AclError::Part(text.into());
        for part in text.split('+') {
            if let Some(name) = part.strip_prefix("key:") {
                rule.key = Some(tsig::parse_name(name).ok_or_else(bad)?);
                continue;
            }
            let (addr, prefix) = match part.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (part, None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
                None => max,
            };
            rule.network = Some((addr, prefix));
        }
        Ok(rule)
    }

    fn allows(&self, client: IpAddr, key: Option<&Name<[u8]>>) -> bool {
        let net_ok = self.network.is_none_or(|(net, prefix)| in_network(client, net, prefix));
        let key_ok = self.key.as_ref().is_none_or(|k| key.is_some_and(|used| k.for_slice() == used));
        net_ok && key_ok
    }
}

fn in_network(client: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let (a, b, bits): (u128, u128, u32) = match (client, net) {
        (IpAddr::V4(c), IpAddr::V4(n)) => (u32::from(c).into(), u32::from(n).into(), 32),
        (IpAddr::V6(c), IpAddr::V6(n)) => (u128::from(c), u128::from(n), 128),
        (IpAddr::V6(c), IpAddr::V4(n)) => match c.to_ipv4_mapped() {
            Some(c) => (u32::from(c).into(), u32::from(n).into(), 32),
            None => return false,
        },
        _ => return false,
    };
    let shift = bits.saturating_sub(u32::from(prefix));
    shift >= bits || (a >> shift) == (b >> shift)
}

/// Where a message came from, and when.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// UDP or TCP.
    pub transport: Transport,
    /// The client's address.
    pub addr: IpAddr,
    /// Milliseconds on a monotonic clock (rate limiting).
    pub now_ms: u64,
    /// Seconds since the UNIX epoch (TSIG).
    pub unix_time: u64,
}

/// Why a transfer or update was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// No access rule allows the client (with its key, if it signed).
    NotAllowed,
    /// The TSIG record did not verify.
    Tsig(TsigError),
    /// The zone is not served here.
    NotAuthoritative,
    /// AXFR over UDP.
    OverUdp,
    /// The update is malformed or its prerequisites do not hold.
    Rcode(Rcode),
    /// A NOTIFY not signed with the key its zone's primary uses.
    NotSignedWith(Name<Vec<u8>>),
}

impl core::fmt::Display for Why {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Why::NotAllowed => f.write_str("not allowed"),
            Why::Tsig(TsigError::BadKey) => f.write_str("TSIG key unknown (BADKEY)"),
            Why::Tsig(TsigError::BadSig) => f.write_str("TSIG signature wrong (BADSIG)"),
            Why::Tsig(TsigError::BadTime) => f.write_str("TSIG time outside the fudge (BADTIME)"),
            Why::Tsig(TsigError::BadTrunc) => f.write_str("TSIG MAC truncated too far (BADTRUNC)"),
            Why::NotAuthoritative => f.write_str("zone not served here"),
            Why::OverUdp => f.write_str("AXFR over UDP"),
            Why::Rcode(r) => write!(f, "{r}"),
            Why::NotSignedWith(k) => write!(f, "not signed with the primary's key {k}"),
        }
    }
}

/// What a message did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A zone transfer was sent.
    Transferred {
        /// The zone.
        zone: Name<Vec<u8>>,
        /// The client.
        client: IpAddr,
        /// AXFR or IXFR (IXFR answered with the whole zone counts as AXFR).
        kind: &'static str,
        /// The serial sent.
        serial: u32,
    },
    /// A zone transfer was refused.
    TransferRefused {
        /// The zone asked for.
        zone: Name<Vec<u8>>,
        /// The client.
        client: IpAddr,
        /// The key the request was signed with.
        key: Option<Name<Vec<u8>>>,
        /// Why.
        why: Why,
    },
    /// An update changed a zone.
    Updated {
        /// The zone.
        zone: Name<Vec<u8>>,
        /// The client.
        client: IpAddr,
        /// The new serial.
        serial: u32,
        /// Records added.
        added: usize,
        /// Records removed.
        removed: usize,
    },
    /// A NOTIFY came from a zone's primary: the zone should be refreshed.
    Notified {
        /// The zone.
        zone: Name<Vec<u8>>,
        /// The primary.
        client: IpAddr,
        /// The serial the NOTIFY carried, if any.
        serial: Option<u32>,
    },
    /// A NOTIFY was refused: not a secondary zone here, or not from its
    /// primary.
    NotifyRefused {
        /// The zone named.
        zone: Name<Vec<u8>>,
        /// The sender.
        client: IpAddr,
        /// Why.
        why: Why,
    },
    /// An update was refused (or failed its prerequisites).
    UpdateRefused {
        /// The zone named.
        zone: Name<Vec<u8>>,
        /// The client.
        client: IpAddr,
        /// The key the request was signed with.
        key: Option<Name<Vec<u8>>>,
        /// Why.
        why: Why,
    },
}

impl Event {
    /// Whether the event is a refusal (logged as a warning).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Event::TransferRefused { .. } | Event::UpdateRefused { .. } | Event::NotifyRefused { .. })
    }
}

struct KeyName<'a>(&'a Option<Name<Vec<u8>>>);

impl core::fmt::Display for KeyName<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(k) => write!(f, "key {k}"),
            None => f.write_str("unsigned"),
        }
    }
}

impl core::fmt::Display for Event {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Event::Transferred { zone, client, kind, serial } => {
                write!(f, "{kind} of {zone} serial {serial} to {client}")
            }
            Event::TransferRefused { zone, client, key, why } => {
                write!(f, "refused transfer of {zone} to {client} ({}): {why}", KeyName(key))
            }
            Event::Updated { zone, client, serial, added, removed } => {
                write!(f, "update of {zone} from {client}: serial {serial}, {added} records added, {removed} removed")
            }
            Event::Notified { zone, client, serial: Some(serial) } => {
                write!(f, "NOTIFY of {zone} serial {serial} from {client}")
            }
            Event::Notified { zone, client, serial: None } => write!(f, "NOTIFY of {zone} from {client}"),
            Event::NotifyRefused { zone, client, why } => write!(f, "refused NOTIFY of {zone} from {client}: {why}"),
            Event::UpdateRefused { zone, client, key, why } => {
                write!(f, "refused update of {zone} from {client} ({}): {why}", KeyName(key))
            }
        }
    }
}

/// The answer to one message.
#[derive(Debug, Default)]
pub struct Reply {
    /// The messages to send, in order: none, one, or a transfer's many.
    pub messages: Vec<Vec<u8>>,
    /// What happened, when it is worth a log line.
    pub event: Option<Event>,
}

impl Reply {
    fn one(message: Vec<u8>, event: Option<Event>) -> Reply {
        Reply { messages: alloc::vec![message], event }
    }
}

/// One change of a zone: IXFR sends these.
#[derive(Debug, Clone)]
pub struct Diff {
    old_soa: Record,
    new_soa: Record,
    removed: Vec<Record>,
    added: Vec<Record>,
}

type SortKey<'r> = (Vec<u8>, u16, &'r [u8], u32);

fn sort_key(r: &Record) -> SortKey<'_> {
    (r.owner.as_slice().to_ascii_lowercase(), r.rtype.to_int(), &r.rdata, r.ttl)
}

impl Diff {
    fn between(old: &[Record], new: &[Record]) -> Diff {
        let old_set: BTreeSet<SortKey<'_>> = old[1..].iter().map(sort_key).collect();
        let new_set: BTreeSet<SortKey<'_>> = new[1..].iter().map(sort_key).collect();
        Diff {
            old_soa: old[0].clone(),
            new_soa: new[0].clone(),
            removed: old[1..].iter().filter(|r| !new_set.contains(&sort_key(r))).cloned().collect(),
            added: new[1..].iter().filter(|r| !old_set.contains(&sort_key(r))).cloned().collect(),
        }
    }
}

/// `query` without its last `len..` bytes (the TSIG record), one
/// additional record fewer.
fn strip(query: &[u8], len: usize) -> Vec<u8> {
    let mut v = query[..len].to_vec();
    let ar = u16::from_be_bytes([v[10], v[11]]).saturating_sub(1);
    v[10..12].copy_from_slice(&ar.to_be_bytes());
    v
}

fn refusal(rcode: Rcode) -> Refusal {
    Refusal { rcode: OptRcode::from_rcode(rcode), question: true, edns: None }
}

impl Server<'_> {
    /// Answers any message from `peer`: queries (with rate limiting, as
    /// [`Server::handle`]), zone transfers, updates, and any of them signed
    /// with TSIG, whose answers are signed in turn.
    pub fn serve(&mut self, query: &[u8], peer: &Peer) -> Reply {
        if query.len() < 12 || query[2] & 0x80 != 0 {
            return Reply::default();
        }
        let opcode = Opcode::from_int((query[2] >> 3) & 0x0f);
        // Unsigned (nearly every query): the message as it came, no copy.
        let (body, signed) = match tsig::check(query, &self.config.keys, peer.unix_time) {
            Checked::Unsigned => (alloc::borrow::Cow::Borrowed(query), None),
            Checked::Malformed => {
                let Ok(msg) = Message::from_octets(query) else { return Reply::default() };
                let answer = error_answer(msg, &refusal(Rcode::FORMERR), self.config.max_udp_payload);
                return Reply::one(answer, None);
            }
            Checked::Bad(req, error) => return self.tsig_refusal(query, &req, error, opcode, peer),
            Checked::Good(req) => (alloc::borrow::Cow::Owned(strip(query, req.stripped_len)), Some(req)),
        };
        let key = signed.as_ref().map(|r| r.key_name.clone());
        let mut reply = if opcode == Opcode::UPDATE {
            self.update(&body, peer, key)
        } else if opcode == Opcode::QUERY && is_transfer(&body) {
            self.transfer(&body, peer, key)
        } else if opcode == Opcode::NOTIFY {
            self.notified(&body, peer, key.as_ref())
        } else {
            // A signed answer over UDP leaves room for its TSIG record
            // within the client's payload size (truncated if need be).
            let reserve = match (&signed, peer.transport) {
                (Some(req), Transport::Udp) => {
                    req.key.and_then(|i| self.config.keys.get(i)).map_or(0, tsig::signed_len)
                }
                _ => 0,
            };
            let answer = self.handle_reserving(&body, peer.transport, peer.addr, peer.now_ms, reserve);
            Reply { messages: answer.into_iter().collect(), event: None }
        };
        if let Some(req) = signed
            && let Some(key) = req.key.and_then(|i| self.config.keys.get(i))
        {
            let mut signer = Signer::new(key, &req);
            for m in &mut reply.messages {
                signer.sign(m, peer.unix_time, 0);
            }
        }
        reply
    }

    /// The NOTAUTH answer to a request whose TSIG fails.
    fn tsig_refusal(&self, query: &[u8], req: &RequestTsig, error: TsigError, opcode: Opcode, peer: &Peer) -> Reply {
        let body = strip(query, req.stripped_len);
        let Ok(msg) = Message::from_octets(body.as_slice()) else { return Reply::default() };
        let mut answer = error_answer(msg, &refusal(Rcode::NOTAUTH), self.config.max_udp_payload);
        match (error, req.key.and_then(|i| self.config.keys.get(i))) {
            (TsigError::BadTime, Some(key)) => Signer::new(key, req).sign(&mut answer, peer.unix_time, error.code()),
            _ => tsig::append_unsigned(&mut answer, req, error),
        }
        let zone = msg.sole_question().map(|q| q.qname().to_name::<Vec<u8>>()).unwrap_or_else(|_| Name::root_vec());
        let key = Some(req.key_name.clone());
        let event = if opcode == Opcode::UPDATE {
            Some(Event::UpdateRefused { zone, client: peer.addr, key, why: Why::Tsig(error) })
        } else if opcode == Opcode::QUERY && is_transfer(&body) {
            Some(Event::TransferRefused { zone, client: peer.addr, key, why: Why::Tsig(error) })
        } else if opcode == Opcode::NOTIFY {
            Some(Event::NotifyRefused { zone, client: peer.addr, why: Why::Tsig(error) })
        } else {
            None
        };
        Reply::one(answer, event)
    }

    fn allowed(rules: &[AclRule], peer: &Peer, key: Option<&Name<Vec<u8>>>) -> bool {
        rules.iter().any(|r| r.allows(peer.addr, key.map(|k| k.for_slice())))
    }

    fn transfer(&self, body: &[u8], peer: &Peer, key: Option<Name<Vec<u8>>>) -> Reply {
        let Ok(msg) = Message::from_octets(body) else { return Reply::default() };
        let Ok(question) = msg.sole_question() else {
            return Reply::one(error_answer(msg, &refusal(Rcode::FORMERR), self.config.max_udp_payload), None);
        };
        let qname = question.qname().to_name::<Vec<u8>>();
        let ixfr = question.qtype() == Rtype::IXFR;
        let refuse = |rcode, why| {
            let event = Event::TransferRefused { zone: qname.clone(), client: peer.addr, key: key.clone(), why };
            Reply::one(error_answer(msg, &refusal(rcode), self.config.max_udp_payload), Some(event))
        };
        let Some(zone) = self.catalog.zone(qname.for_slice()) else {
            return refuse(Rcode::NOTAUTH, Why::NotAuthoritative);
        };
        if !Self::allowed(&self.config.allow_transfer, peer, key.as_ref()) {
            return refuse(Rcode::REFUSED, Why::NotAllowed);
        }
        let records = zone.records();
        let soa = records[0].clone();
        let serial = zone.serial();
        if peer.transport == Transport::Udp && !ixfr {
            return refuse(Rcode::REFUSED, Why::OverUdp);
        }
        let event = |kind| Some(Event::Transferred { zone: qname.clone(), client: peer.addr, kind, serial });
        let mut sequence: Vec<Record>;
        let mut kind = "AXFR";
        if ixfr {
            let client = client_serial(&msg);
            if client.is_some_and(|c| !serial_gt(serial, c)) || peer.transport == Transport::Udp {
                // Up to date (or over UDP: the SOA tells the client to
                // come back over TCP, RFC 1995 section 2).
                return Reply { messages: xfr_messages(&msg, &question, core::slice::from_ref(&soa)), event: None };
            }
            let diffs = self.history.get(&qname).map(|h| h.as_slice()).unwrap_or(&[]);
            let start = client.and_then(|c| diffs.iter().position(|d| soa_serial(&d.old_soa.rdata) == Some(c)));
            if let Some(start) = start {
                kind = "IXFR";
                sequence = alloc::vec![soa.clone()];
                for d in &diffs[start..] {
                    sequence.push(d.old_soa.clone());
                    sequence.extend(d.removed.iter().cloned());
                    sequence.push(d.new_soa.clone());
                    sequence.extend(d.added.iter().cloned());
                }
                sequence.push(soa);
                return Reply { messages: xfr_messages(&msg, &question, &sequence), event: event(kind) };
            }
        }
        // AXFR, and IXFR without the history it needs (RFC 1995 section 4).
        sequence = records;
        sequence.push(soa);
        Reply { messages: xfr_messages(&msg, &question, &sequence), event: event(kind) }
    }

    fn update(&mut self, body: &[u8], peer: &Peer, key: Option<Name<Vec<u8>>>) -> Reply {
        let Ok(msg) = Message::from_octets(body) else { return Reply::default() };
        let max = self.config.max_udp_payload;
        let answer = |rcode| update_answer(msg, rcode, max);
        // The zone section: one zone, type SOA.
        let Ok(question) = msg.sole_question() else { return Reply::one(answer(Rcode::FORMERR), None) };
        let zname = question.qname().to_name::<Vec<u8>>();
        let refuse = |rcode, why| {
            let event = Event::UpdateRefused { zone: zname.clone(), client: peer.addr, key: key.clone(), why };
            Reply::one(answer(rcode), Some(event))
        };
        if question.qtype() != Rtype::SOA || question.qclass() != Class::IN {
            return refuse(Rcode::FORMERR, Why::Rcode(Rcode::FORMERR));
        }
        let Some(zone) = self.catalog.zone(zname.for_slice()) else {
            return refuse(Rcode::NOTAUTH, Why::NotAuthoritative);
        };
        if !Self::allowed(&self.config.allow_update, peer, key.as_ref()) {
            return refuse(Rcode::REFUSED, Why::NotAllowed);
        }
        let new = match update::apply(zone, &msg) {
            Ok(Some(records)) => records,
            Ok(None) => return Reply::one(answer(Rcode::NOERROR), None),
            Err(rcode) => return refuse(rcode, Why::Rcode(rcode)),
        };
        let old = zone.records();
        let owned = match OwnedZone::from_records(&new) {
            Ok(z) => z,
            // The records do not make a zone we can serve: nothing changes.
            Err(_) => return refuse(Rcode::SERVFAIL, Why::Rcode(Rcode::SERVFAIL)),
        };
        let diff = Diff::between(&old, &new);
        let (added, removed) = (diff.added.len(), diff.removed.len());
        let serial = owned.zone().serial();
        self.catalog.replace(owned);
        let keep = self.config.history;
        let history = self.history.entry(zname.clone()).or_default();
        history.push(diff);
        if history.len() > keep {
            let drop = history.len() - keep;
            history.drain(..drop);
        }
        let event = Event::Updated { zone: zname, client: peer.addr, serial, added, removed };
        Reply::one(answer(Rcode::NOERROR), Some(event))
    }

    /// A NOTIFY (RFC 1996): accepted from a secondary zone's primary,
    /// refused otherwise.
    fn notified(&self, body: &[u8], peer: &Peer, key: Option<&Name<Vec<u8>>>) -> Reply {
        let Ok(msg) = Message::from_octets(body) else { return Reply::default() };
        let max = self.config.max_udp_payload;
        let Ok(question) = msg.sole_question() else {
            return Reply::one(error_answer(msg, &refusal(Rcode::FORMERR), max), None);
        };
        let zone = question.qname().to_name::<Vec<u8>>();
        let refuse = |rcode, why| {
            let event = Event::NotifyRefused { zone: zone.clone(), client: peer.addr, why };
            Reply::one(error_answer(msg, &refusal(rcode), max), Some(event))
        };
        match crate::secondary::from_primary(&self.config.secondaries, zone.for_slice(), peer.addr, key) {
            None => refuse(Rcode::NOTAUTH, Why::NotAuthoritative),
            Some(Err(why)) => refuse(Rcode::REFUSED, why),
            Some(Ok(())) => {
                let serial = msg
                    .answer()
                    .ok()
                    .and_then(|mut a| a.next())
                    .and_then(|r| r.ok())
                    .filter(|r| r.rtype() == Rtype::SOA)
                    .and_then(|r| r.to_record::<domain::rdata::Soa<domain::base::ParsedName<&[u8]>>>().ok().flatten())
                    .map(|r| r.data().serial().into_int());
                let mut answer = error_answer(msg, &refusal(Rcode::NOERROR), max);
                // An authoritative answer (RFC 1996 section 4.7).
                answer[2] |= 0x04;
                Reply::one(answer, Some(Event::Notified { zone, client: peer.addr, serial }))
            }
        }
    }

    /// The configured TSIG key named `name` ([`Config::keys`]).
    ///
    /// [`Config::keys`]: crate::Config::keys
    pub fn key(&self, name: &Name<[u8]>) -> Option<&tsig::Key> {
        self.config.keys.iter().find(|k| k.name().name_eq(name))
    }

    /// Removes the zone at `apex` (a secondary zone that expired); whether
    /// it was served.
    pub fn remove_zone(&mut self, apex: &Name<[u8]>) -> bool {
        self.history.remove(apex);
        self.catalog.remove(apex)
    }

    /// The records of the zone an UPDATE `message` names (its zone
    /// section), when it is one the server serves: what a front end keeps
    /// to undo the update if it cannot be made durable.
    pub fn update_zone_records(&self, message: &[u8]) -> Option<Vec<Record>> {
        if message.len() < 12 || Opcode::from_int((message[2] >> 3) & 0x0f) != Opcode::UPDATE {
            return None;
        }
        let msg = Message::from_octets(message).ok()?;
        let zone = msg.sole_question().ok()?.qname().to_name::<Vec<u8>>();
        self.catalog.zone(zone.for_slice()).map(|z| z.records())
    }

    /// A SERVFAIL answer (unsigned) to `message`: for a front end that
    /// could not finish what [`Server::serve`] did (an update it could not
    /// make durable).
    pub fn servfail(&self, message: &[u8]) -> Option<Vec<u8>> {
        let msg = Message::from_octets(message).ok()?;
        Some(error_answer(msg, &refusal(Rcode::SERVFAIL), self.config.max_udp_payload))
    }

    /// Puts `records` (SOA first) in place of the zone with their apex, as
    /// a transfer from a primary or a journal read at boot gives them.
    pub fn load_zone(&mut self, records: &[Record]) -> Result<(), crate::LoadError> {
        let owned = OwnedZone::from_records(records)?;
        let apex = owned.zone().apex.to_name::<Vec<u8>>();
        self.catalog.replace(owned);
        self.history.remove(&apex);
        Ok(())
    }
}

fn is_transfer(body: &[u8]) -> bool {
    Message::from_octets(body)
        .ok()
        .and_then(|m| m.first_question())
        .is_some_and(|q| matches!(q.qtype(), Rtype::AXFR | Rtype::IXFR))
}

/// The serial of the SOA in an IXFR request's authority section.
fn client_serial(msg: &Message<&[u8]>) -> Option<u32> {
    let rec = msg.authority().ok()?.next()?.ok()?;
    if rec.rtype() != Rtype::SOA {
        return None;
    }
    let soa = rec.to_record::<domain::rdata::Soa<domain::base::ParsedName<&[u8]>>>().ok()??;
    Some(soa.data().serial().into_int())
}

/// The answer to an UPDATE: its header and zone section, `rcode`.
fn update_answer(msg: Message<&[u8]>, rcode: Rcode, max: u16) -> Vec<u8> {
    error_answer(msg, &refusal(rcode), max)
}

/// A transfer's records in as many messages as they need.
fn xfr_messages(
    msg: &Message<&[u8]>,
    question: &Question<domain::base::ParsedName<&[u8]>>,
    records: &[Record],
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < records.len() || out.is_empty() {
        let Ok(mut b) = MessageBuilder::from_target(StaticCompressor::new(Vec::with_capacity(XFR_MESSAGE)));
        b.set_push_limit(XFR_MESSAGE);
        let h = b.header_mut();
        h.set_id(msg.header().id());
        h.set_qr(true);
        h.set_aa(true);
        h.set_opcode(Opcode::QUERY);
        let mut q = b.question();
        let _ = q.push(question);
        let mut a = q.answer();
        let start = i;
        while let Some(r) = records.get(i) {
            if push_record(&mut a, r).is_err() {
                break;
            }
            i += 1;
        }
        if i == start
            && let Some(r) = records.get(i)
        {
            // A record bigger than the usual message goes out alone.
            a.as_builder_mut().clear_push_limit();
            let _ = push_record(&mut a, r);
            i += 1;
        }
        out.push(a.finish().into_target());
    }
    out
}

fn push_record(
    a: &mut domain::base::message_builder::AnswerBuilder<StaticCompressor<Vec<u8>>>,
    r: &Record,
) -> Result<(), domain::base::message_builder::PushError> {
    let mut p = Parser::from_ref(r.rdata.as_slice());
    match ZoneRecordData::parse_rdata(r.rtype, &mut p) {
        Ok(Some(data)) => a.push((&r.owner, Class::IN, Ttl::from_secs(r.ttl), data)),
        // Checked when the zone was loaded.
        _ => Ok(()),
    }
}
