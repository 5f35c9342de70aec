//! The other side of transfers, sans-IO: what a secondary sends to its
//! primary and reads back (an SOA query, an AXFR read message by message),
//! and NOTIFY (RFC 1996) as a primary sends it and as its acknowledgement
//! comes back. The front ends move the bytes; [`Server::serve`] answers
//! NOTIFY from a configured primary ([`Secondary`]).
//!
//! [`Server::serve`]: crate::Server::serve

use alloc::vec::Vec;
use core::net::{IpAddr, SocketAddr};

use domain::base::iana::{Class, Opcode, Rcode, Rtype};
use domain::base::message::Message;
use domain::base::message_builder::MessageBuilder;
use domain::base::name::{Name, ParsedName, ToName};
use domain::base::rdata::ComposeRecordData;
use domain::base::{Question, Ttl};
use domain::dep::octseq::Parser;
use domain::rdata::ZoneRecordData;

use crate::tsig::{self, Key, Verifier};
use crate::zone::{Record, Zone, soa_serial};

/// A zone served as a secondary: loaded from `primary` by AXFR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secondary {
    /// The zone's apex.
    pub zone: Name<Vec<u8>>,
    /// The primary's address and port: transfers come from there, and
    /// NOTIFY is accepted from its address (any port).
    pub primary: SocketAddr,
    /// The TSIG key (one of [`Config::keys`]) that signs the requests to
    /// the primary, whose signature its answers must carry, and that its
    /// NOTIFY must be signed with. `None`: all unsigned.
    ///
    /// [`Config::keys`]: crate::Config::keys
    pub key: Option<Name<Vec<u8>>>,
}

/// A transfer or SOA answer that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XfrError {
    /// The message does not parse.
    #[error("the answer does not parse")]
    Malformed,
    /// The answer is not for our request (ID, question, not a response).
    #[error("the answer is not for the request sent")]
    Mismatch,
    /// The primary answered with an error.
    #[error("the primary answered {0}")]
    Rcode(Rcode),
    /// The answer holds no SOA for the zone.
    #[error("no SOA for the zone in the answer")]
    NoSoa,
    /// The transfer does not start with the zone's SOA, or holds a record
    /// outside the zone.
    #[error("the transfer is not the zone's (first record not its SOA, or a record outside it)")]
    NotTheZone,
    /// The transfer holds more records than allowed.
    #[error("the transfer holds more than {0} records")]
    TooLarge(usize),
    /// The answer's TSIG signature does not check out.
    #[error("TSIG: {0}")]
    Tsig(crate::tsig::VerifyError),
}

/// The most records a transfer may bring (a bound on memory).
pub const MAX_TRANSFER_RECORDS: usize = 1_000_000;

/// A request to a primary or a secondary, signed or not.
#[derive(Debug)]
pub struct Request {
    /// The message to send.
    pub message: Vec<u8>,
    /// The TSIG check of its answers, when it is signed.
    pub verifier: Option<Verifier>,
}

impl Request {
    /// `message`, signed with `key` at `now` (seconds since the epoch)
    /// when there is one.
    pub fn signed(mut message: Vec<u8>, key: Option<&Key>, now: u64) -> Request {
        let verifier = key.map(|k| {
            let mac = tsig::sign_request(&mut message, k, now);
            Verifier::new(k, mac)
        });
        Request { message, verifier }
    }

    /// Checks the TSIG of the whole answer `answer` (one message) at `now`.
    pub fn check_answer(&self, answer: &[u8], now: u64) -> Result<(), XfrError> {
        let Some(verifier) = &self.verifier else { return Ok(()) };
        let mut v = verifier.clone();
        v.check(answer, now).and_then(|()| v.finish()).map_err(XfrError::Tsig)
    }
}

/// A query for `zone`'s `rtype` (SOA or AXFR) with `id`, as a secondary
/// sends it.
pub fn query(id: u16, zone: &Name<[u8]>, rtype: Rtype) -> Vec<u8> {
    let mut b = MessageBuilder::new_vec();
    b.header_mut().set_id(id);
    let mut q = b.question();
    // A name and a type always fit an empty message.
    let _ = q.push(Question::new(zone, rtype, Class::IN));
    q.finish()
}

fn check_answer<'m>(answer: &'m [u8], id: u16, zone: &Name<[u8]>, qtype: Rtype) -> Result<Message<&'m [u8]>, XfrError> {
    let msg = Message::from_octets(answer).map_err(|_| XfrError::Malformed)?;
    let h = msg.header();
    if !h.qr() || h.id() != id {
        return Err(XfrError::Mismatch);
    }
    if h.rcode() != Rcode::NOERROR {
        return Err(XfrError::Rcode(h.rcode()));
    }
    // The question may be left out of later transfer messages.
    if let Some(q) = msg.first_question()
        && (q.qtype() != qtype || !q.qname().name_eq(zone))
    {
        return Err(XfrError::Mismatch);
    }
    Ok(msg)
}

/// The serial in an answer to [`query`] for `zone`'s SOA.
pub fn soa_answer_serial(answer: &[u8], id: u16, zone: &Name<[u8]>) -> Result<u32, XfrError> {
    let msg = check_answer(answer, id, zone, Rtype::SOA)?;
    for rec in msg.answer().map_err(|_| XfrError::Malformed)? {
        let r = record(&rec.map_err(|_| XfrError::Malformed)?)?;
        if r.rtype == Rtype::SOA && r.owner.name_eq(zone) {
            return soa_serial(&r.rdata).ok_or(XfrError::Malformed);
        }
    }
    Err(XfrError::NoSoa)
}

fn record(rec: &domain::base::ParsedRecord<'_, &[u8]>) -> Result<Record, XfrError> {
    let mut rdata = Vec::new();
    if rec.rdlen() > 0 {
        let data = rec
            .to_record::<ZoneRecordData<&[u8], ParsedName<&[u8]>>>()
            .map_err(|_| XfrError::Malformed)?
            .ok_or(XfrError::Malformed)?;
        data.data().compose_rdata(&mut rdata).map_err(|_| XfrError::Malformed)?;
    }
    if rec.class() != Class::IN {
        return Err(XfrError::NotTheZone);
    }
    Ok(Record { owner: rec.owner().to_name::<Vec<u8>>(), rtype: rec.rtype(), ttl: rec.ttl().as_secs(), rdata })
}

/// An AXFR read message by message (RFC 5936): the zone's SOA first,
/// then its records, then the SOA again.
#[derive(Debug)]
pub struct AxfrReader {
    id: u16,
    zone: Name<Vec<u8>>,
    records: Vec<Record>,
    done: bool,
    /// The TSIG check of a signed request's answers, and the time.
    tsig: Option<(Verifier, u64)>,
}

impl AxfrReader {
    /// A reader for the answers to an AXFR [`query`] with `id`.
    pub fn new(id: u16, zone: Name<Vec<u8>>) -> AxfrReader {
        AxfrReader { id, zone, records: Vec::new(), done: false, tsig: None }
    }

    /// The reader for a signed request ([`Request::signed`]): every
    /// message is checked by `verifier` at `now` (seconds since the
    /// epoch), and the last must be signed.
    pub fn with_tsig(mut self, verifier: Verifier, now: u64) -> AxfrReader {
        self.tsig = Some((verifier, now));
        self
    }

    /// Takes the next message of the transfer; `true` once the closing
    /// SOA has arrived.
    pub fn push(&mut self, message: &[u8]) -> Result<bool, XfrError> {
        if self.done {
            return Ok(true);
        }
        if let Some((verifier, now)) = &mut self.tsig {
            verifier.check(message, *now).map_err(XfrError::Tsig)?;
        }
        let msg = check_answer(message, self.id, self.zone.for_slice(), Rtype::AXFR)?;
        for rec in msg.answer().map_err(|_| XfrError::Malformed)? {
            let r = record(&rec.map_err(|_| XfrError::Malformed)?)?;
            if !r.owner.ends_with(&self.zone) {
                return Err(XfrError::NotTheZone);
            }
            let soa = r.rtype == Rtype::SOA;
            if self.records.is_empty() {
                if !soa || !r.owner.name_eq(&self.zone) {
                    return Err(XfrError::NotTheZone);
                }
            } else if soa && r.owner.name_eq(&self.zone) {
                // The closing SOA: the transfer is whole, and signed at
                // its end when the request was.
                if let Some((verifier, _)) = &self.tsig {
                    verifier.finish().map_err(XfrError::Tsig)?;
                }
                self.done = true;
                return Ok(true);
            }
            if self.records.len() >= MAX_TRANSFER_RECORDS {
                return Err(XfrError::TooLarge(MAX_TRANSFER_RECORDS));
            }
            self.records.push(r);
        }
        Ok(false)
    }

    /// The zone's records, SOA first, once [`push`](Self::push) said the
    /// transfer is whole.
    pub fn into_records(self) -> Option<Vec<Record>> {
        self.done.then_some(self.records)
    }
}

/// The SOA timers of a zone, in seconds (RFC 1035 section 3.3.13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// How often a secondary checks the primary's serial.
    pub refresh: u32,
    /// How soon it tries again after a failed check.
    pub retry: u32,
    /// How long it serves the zone without reaching the primary.
    pub expire: u32,
}

impl Timers {
    /// The timers of an SOA's rdata.
    pub fn of_soa(rdata: &[u8]) -> Option<Timers> {
        let at = rdata.len().checked_sub(16)?;
        let word =
            |i: usize| u32::from_be_bytes([rdata[at + i], rdata[at + i + 1], rdata[at + i + 2], rdata[at + i + 3]]);
        Some(Timers { refresh: word(0), retry: word(4), expire: word(8) })
    }

    /// The timers of `zone`.
    pub fn of(zone: &Zone<'_>) -> Option<Timers> {
        Timers::of_soa(zone.soa())
    }
}

/// A NOTIFY (RFC 1996) for `zone` with `id`: the zone's SOA in the answer
/// section, as a hint of the new serial.
pub fn notify(id: u16, zone: &Zone<'_>) -> Vec<u8> {
    let mut b = MessageBuilder::new_vec();
    let h = b.header_mut();
    h.set_id(id);
    h.set_opcode(Opcode::NOTIFY);
    h.set_aa(true);
    let mut q = b.question();
    let _ = q.push(Question::new(zone.apex, Rtype::SOA, Class::IN));
    let mut a = q.answer();
    if let Some(rr) = zone.apex_node().get(Rtype::SOA).and_then(|s| s.rrs.first()) {
        let mut p = Parser::from_ref(rr.rdata);
        if let Ok(Some(data)) =
            <ZoneRecordData<_, _> as domain::base::rdata::ParseRecordData<_>>::parse_rdata(Rtype::SOA, &mut p)
        {
            let data: ZoneRecordData<&[u8], ParsedName<&[u8]>> = data;
            let _ = a.push((zone.apex, Class::IN, Ttl::from_secs(rr.ttl), data));
        }
    }
    a.finish()
}

/// Whether `answer` acknowledges the NOTIFY with `id` (a response, opcode
/// NOTIFY, NOERROR). `Err` carries the rcode of a refusal.
pub fn notify_acknowledged(answer: &[u8], id: u16) -> Result<bool, Rcode> {
    let Ok(msg) = Message::from_octets(answer) else { return Ok(false) };
    let h = msg.header();
    if !h.qr() || h.id() != id || h.opcode() != Opcode::NOTIFY {
        return Ok(false);
    }
    match h.rcode() {
        Rcode::NOERROR => Ok(true),
        r => Err(r),
    }
}

/// Whether `message` is a response to a NOTIFY (for a front end that
/// sends NOTIFY from its serving socket and must route the answers).
pub fn is_notify_response(message: &[u8]) -> bool {
    message.len() >= 12 && message[2] & 0x80 != 0 && Opcode::from_int((message[2] >> 3) & 0x0f) == Opcode::NOTIFY
}

/// Whether a NOTIFY from `addr` for `zone`, signed with `key`, comes from
/// the zone's primary: its address, and its key when one is configured.
pub(crate) fn from_primary(
    secondaries: &[Secondary],
    zone: &Name<[u8]>,
    addr: IpAddr,
    key: Option<&Name<Vec<u8>>>,
) -> Option<Result<(), crate::xfr::Why>> {
    let s = secondaries.iter().find(|s| s.zone.name_eq(zone))?;
    Some(if s.primary.ip() != addr {
        Err(crate::xfr::Why::NotAllowed)
    } else if let Some(want) = &s.key
        && key.is_none_or(|k| !k.name_eq(want))
    {
        Err(crate::xfr::Why::NotSignedWith(want.clone()))
    } else {
        Ok(())
    })
}
