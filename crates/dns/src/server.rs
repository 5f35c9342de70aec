//! The server: one query message in, one answer message (or nothing) out.

use alloc::vec::Vec;
use core::net::IpAddr;

use domain::base::iana::{Class, Opcode, OptRcode, Rcode, Rtype};
use domain::base::message::Message;
use domain::base::message_builder::{MessageBuilder, PushError, StaticCompressor};
use domain::base::name::{Name, ParsedName, ToName};
use domain::base::rdata::ParseRecordData;
use domain::base::{Header, Ttl};
use domain::dep::octseq::Parser;
use domain::rdata::ZoneRecordData;

use crate::nsec3;
use crate::rrl::{RateLimit, RateLimiter, Verdict};
use crate::zone::{Catalog, Node, Rr, Rrset, Zone, wildcard_of};

/// The size of an OPT record without options.
const OPT_LEN: usize = 11;
/// The longest CNAME chain followed inside a zone.
const MAX_CNAME_CHAIN: usize = 12;

/// How the query arrived: it sets the answer's size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A UDP datagram: the answer fits 512 bytes, or the client's EDNS(0)
    /// payload size (at most [`Config::max_udp_payload`]), or is truncated
    /// with TC set.
    Udp,
    /// A TCP stream: up to 65,535 bytes.
    Tcp,
}

/// How the server answers.
#[derive(Debug, Clone)]
pub struct Config {
    /// The largest UDP answer, and the payload size announced in EDNS(0)
    /// answers. 1232 by default (DNS Flag Day 2020: no IP fragmentation).
    pub max_udp_payload: u16,
    /// Response-rate limiting of UDP answers; `None` (the default) answers
    /// every query.
    pub rate_limit: Option<RateLimit>,
    /// Leave out what a resolver does not need: the zone's NS RRset in
    /// positive answers and additional address records other than glue.
    /// Off by default, where answers carry what NSD's carry.
    pub minimal_responses: bool,
    /// TSIG keys (HMAC-SHA256) that requests may be signed with.
    pub keys: Vec<crate::tsig::Key>,
    /// Who may transfer zones (AXFR, IXFR); nobody when empty.
    pub allow_transfer: Vec<crate::xfr::AclRule>,
    /// Who may update zones (RFC 2136); nobody when empty.
    pub allow_update: Vec<crate::xfr::AclRule>,
    /// Changes kept per zone for IXFR.
    pub history: usize,
    /// Zones served as a secondary: NOTIFY is accepted for them from their
    /// primary (and refused for any other zone or sender).
    pub secondaries: Vec<crate::secondary::Secondary>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_udp_payload: 1232,
            rate_limit: None,
            minimal_responses: false,
            keys: Vec::new(),
            allow_transfer: Vec::new(),
            allow_update: Vec::new(),
            history: 32,
            secondaries: Vec::new(),
        }
    }
}

/// A server for the zones of one [`Catalog`].
#[derive(Debug)]
pub struct Server<'a> {
    pub(crate) catalog: Catalog<'a>,
    pub(crate) config: Config,
    limiter: Option<RateLimiter>,
    /// The changes of each zone, oldest first, for IXFR.
    pub(crate) history: alloc::collections::BTreeMap<Name<Vec<u8>>, Vec<crate::xfr::Diff>>,
}

/// A name in an answer: one of the zone's, or one made for the answer
/// (the query name for wildcard and chain answers).
#[derive(Debug, Clone)]
pub(crate) enum Owner<'z> {
    Zone(&'z Name<[u8]>),
    Made(Name<Vec<u8>>),
}

impl Owner<'_> {
    fn name(&self) -> &Name<[u8]> {
        match self {
            Owner::Zone(n) => n,
            Owner::Made(n) => n.for_slice(),
        }
    }
}

/// One RRset (or its signatures) placed in a section.
#[derive(Debug, Clone)]
pub(crate) struct Placed<'z> {
    owner: Owner<'z>,
    rtype: Rtype,
    rrs: &'z [Rr<'z>],
    /// Caps the TTL (the SOA of a negative answer, RFC 2308 section 5).
    ttl_cap: Option<u32>,
    /// Additional data that must fit, or the answer is truncated (glue of
    /// name servers inside the delegation, RFC 9471).
    required: bool,
    /// Authority data that is left out (with all additional data) when it
    /// does not fit: the zone's NS RRset in a positive answer.
    optional: bool,
}

/// The sections of an answer before they are encoded.
#[derive(Debug, Default)]
struct Sections<'z> {
    rcode: Option<Rcode>,
    /// The answer ends in data of the type asked for.
    positive: bool,
    aa: bool,
    answer: Vec<Placed<'z>>,
    authority: Vec<Placed<'z>>,
    additional: Vec<Placed<'z>>,
}

/// What a query asks, once checked.
struct Request<'q> {
    header: Header,
    qname: ParsedName<&'q [u8]>,
    qtype: Rtype,
    qclass: Class,
    edns: Option<Edns>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Edns {
    payload: u16,
    dnssec_ok: bool,
}

/// Why a query gets an error answer.
pub(crate) struct Refusal {
    pub(crate) rcode: OptRcode,
    /// Echo the question (it parsed).
    pub(crate) question: bool,
    /// Answer with an OPT record (the query had a valid one).
    pub(crate) edns: Option<Edns>,
}

impl<'a> Server<'a> {
    /// A server for `catalog`'s zones.
    pub fn new(catalog: Catalog<'a>, config: Config) -> Self {
        let limiter = config.rate_limit.clone().map(RateLimiter::new);
        Server { catalog, config, limiter, history: Default::default() }
    }

    /// The zones served.
    pub fn catalog(&self) -> &Catalog<'a> {
        &self.catalog
    }

    /// Answers `query` from `client` at `now_ms` (milliseconds on any
    /// monotonic clock), with response-rate limiting for UDP when it is
    /// configured. `None`: send nothing (not a query, too short to answer,
    /// or dropped by the rate limit).
    pub fn handle(&mut self, query: &[u8], transport: Transport, client: IpAddr, now_ms: u64) -> Option<Vec<u8>> {
        self.handle_reserving(query, transport, client, now_ms, 0)
    }

    /// [`Server::handle`], with UDP answers `reserve` bytes shorter than
    /// the client's payload size (room for a TSIG record added later).
    pub(crate) fn handle_reserving(
        &mut self,
        query: &[u8],
        transport: Transport,
        client: IpAddr,
        now_ms: u64,
        reserve: usize,
    ) -> Option<Vec<u8>> {
        let answer = self.respond_reserving(query, transport, reserve)?;
        let Some(limiter) = self.limiter.as_mut().filter(|_| transport == Transport::Udp) else {
            return Some(answer);
        };
        match limiter.check(client, now_ms) {
            Verdict::Send => Some(answer),
            Verdict::Drop => None,
            Verdict::Slip => Some(slip(&answer)),
        }
    }

    /// Answers `query` without rate limiting. `None`: the message is not a
    /// query (QR set) or too short to hold a header; nothing is sent.
    pub fn respond(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        self.respond_reserving(query, transport, 0)
    }

    fn respond_reserving(&self, query: &[u8], transport: Transport, reserve: usize) -> Option<Vec<u8>> {
        if query.len() < 12 {
            return None;
        }
        let msg = Message::from_octets(query).ok()?;
        if msg.header().qr() {
            return None;
        }
        let req = match parse_request(msg) {
            Ok(req) => req,
            Err(refusal) => return Some(error_answer(msg, &refusal, self.config.max_udp_payload)),
        };
        let limit = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => match req.edns {
                None => 512,
                Some(e) => usize::from(e.payload.clamp(512, self.config.max_udp_payload.max(512))),
            }
            // Never below a header, a full question and an OPT record.
            .saturating_sub(reserve)
            .max(12 + 259 + OPT_LEN),
        };
        let sections = self.resolve(&req);
        Some(self.encode(&req, &sections, limit))
    }

    fn resolve<'s>(&'s self, req: &Request<'_>) -> Sections<'s> {
        let refused = |rcode| Sections { rcode: Some(rcode), ..Sections::default() };
        if req.qclass != Class::IN {
            return refused(Rcode::REFUSED);
        }
        let qname: Name<Vec<u8>> = match req.qname.to_name::<Vec<u8>>() {
            n if n.len() <= 255 => n,
            _ => return refused(Rcode::FORMERR),
        };
        let Some(mut zone) = self.catalog.find(qname.for_slice()) else {
            return refused(Rcode::REFUSED);
        };
        // DS lives in the parent zone: answer it from there if we have it.
        if req.qtype == Rtype::DS
            && zone.apex == qname.for_slice()
            && let Some(parent) = qname.parent().and_then(|p| self.catalog.find(p.for_slice()))
        {
            zone = parent;
        }
        let dnssec = req.edns.is_some_and(|e| e.dnssec_ok);
        let mut s = Sections { aa: true, ..Sections::default() };
        let mut lookup = Lookup { catalog: &self.catalog, zone, dnssec, qtype: req.qtype };
        lookup.run(qname, &mut s);
        if self.config.minimal_responses {
            s.additional.retain(|p| p.required);
        } else if s.positive && !matches!(req.qtype, Rtype::DS | Rtype::DNSKEY) {
            lookup.apex_ns(&mut s);
        }
        s
    }

    fn encode(&self, req: &Request<'_>, s: &Sections<'_>, limit: usize) -> Vec<u8> {
        let mut cut = s.additional.len();
        let mut optional = true;
        loop {
            match self.try_encode(req, s, limit, cut, optional) {
                Ok(msg) => return msg,
                Err(Overflow::Additional(k)) if k < cut => cut = k,
                Err(Overflow::Optional) if optional => {
                    optional = false;
                    cut = 0;
                }
                Err(_) => return self.truncated(req, s, limit),
            }
        }
    }

    /// The answer with the first `cut` additional RRsets.
    /// Without `optional`, the optional authority RRsets are left out.
    fn try_encode(
        &self,
        req: &Request<'_>,
        s: &Sections<'_>,
        limit: usize,
        cut: usize,
        optional: bool,
    ) -> Result<Vec<u8>, Overflow> {
        let mut b = self.start(req, s, limit)?.answer();
        for p in &s.answer {
            push_set(p, |r| b.push(r)).map_err(|_| Overflow::Core)?;
        }
        let mut b = b.authority();
        for p in s.authority.iter().filter(|p| optional || !p.optional) {
            push_set(p, |r| b.push(r)).map_err(|_| if p.optional { Overflow::Optional } else { Overflow::Core })?;
        }
        let mut b = b.additional();
        for (i, p) in s.additional.iter().take(cut).enumerate() {
            if push_set(p, |r| b.push(r)).is_err() {
                return Err(if p.required { Overflow::Core } else { Overflow::Additional(i) });
            }
        }
        b.as_builder_mut().clear_push_limit();
        self.push_opt(req, &mut b);
        Ok(b.finish().into_target())
    }

    /// Header and question, with the push limit set, ready for sections.
    fn start(
        &self,
        req: &Request<'_>,
        s: &Sections<'_>,
        limit: usize,
    ) -> Result<domain::base::message_builder::QuestionBuilder<StaticCompressor<Vec<u8>>>, Overflow> {
        let mut b =
            MessageBuilder::from_target(StaticCompressor::new(Vec::with_capacity(512))).map_err(|_| Overflow::Core)?;
        let opt = if req.edns.is_some() { OPT_LEN } else { 0 };
        // The builder refuses a push that reaches its limit.
        b.set_push_limit(limit - opt + 1);
        let h = b.header_mut();
        h.set_id(req.header.id());
        h.set_qr(true);
        h.set_opcode(req.header.opcode());
        h.set_rd(req.header.rd());
        h.set_cd(req.header.cd());
        h.set_aa(s.aa && s.rcode.is_none_or(|r| r == Rcode::NXDOMAIN || r == Rcode::NOERROR));
        h.set_rcode(s.rcode.unwrap_or(Rcode::NOERROR));
        let mut q = b.question();
        q.push((&req.qname, req.qtype, req.qclass)).map_err(|_| Overflow::Core)?;
        Ok(q)
    }

    fn push_opt(
        &self,
        req: &Request<'_>,
        b: &mut domain::base::message_builder::AdditionalBuilder<StaticCompressor<Vec<u8>>>,
    ) {
        if let Some(e) = req.edns {
            // The limit leaves room for it, so this cannot fail.
            let _ = b.opt(|opt| {
                opt.set_udp_payload_size(self.config.max_udp_payload);
                opt.set_dnssec_ok(e.dnssec_ok);
                Ok(())
            });
        }
    }

    /// The answer that does not fit: header, question and OPT, TC set.
    fn truncated(&self, req: &Request<'_>, s: &Sections<'_>, limit: usize) -> Vec<u8> {
        let Ok(q) = self.start(req, s, limit) else {
            // Not even the question fits: the header alone.
            let mut b = MessageBuilder::new_vec();
            *b.header_mut() = req.header;
            b.header_mut().set_qr(true);
            b.header_mut().set_tc(true);
            return b.finish();
        };
        let mut b = q.additional();
        b.header_mut().set_tc(true);
        b.as_builder_mut().clear_push_limit();
        self.push_opt(req, &mut b);
        b.finish().into_target()
    }
}

enum Overflow {
    /// The answer or authority section (or required glue) does not fit.
    Core,
    /// An optional authority RRset does not fit.
    Optional,
    /// Additional RRset number `.0` does not fit.
    Additional(usize),
}

type Rdata<'a> = ZoneRecordData<&'a [u8], ParsedName<&'a [u8]>>;

pub(crate) fn push_set(
    p: &Placed<'_>,
    mut push: impl FnMut((&Name<[u8]>, Class, Ttl, Rdata<'_>)) -> Result<(), PushError>,
) -> Result<(), PushError> {
    for rr in p.rrs {
        let mut parser = Parser::from_ref(rr.rdata);
        // Checked when the zone was loaded.
        let Ok(Some(data)) = ZoneRecordData::parse_rdata(p.rtype, &mut parser) else { continue };
        let ttl = p.ttl_cap.map_or(rr.ttl, |cap| rr.ttl.min(cap));
        push((p.owner.name(), Class::IN, Ttl::from_secs(ttl), data))?;
    }
    Ok(())
}

/// Checks a query message (QR clear) and takes out what it asks.
fn parse_request(msg: Message<&[u8]>) -> Result<Request<'_>, Refusal> {
    let header = msg.header();
    let counts = msg.header_counts();
    let formerr = |question| Refusal { rcode: OptRcode::FORMERR, question, edns: None };
    if header.opcode() != Opcode::QUERY {
        return Err(Refusal { rcode: OptRcode::NOTIMP, question: false, edns: None });
    }
    if counts.qdcount() != 1 {
        return Err(formerr(false));
    }
    let question = match msg.sole_question() {
        Ok(q) => q,
        Err(_) => return Err(formerr(false)),
    };
    if counts.ancount() != 0 || counts.nscount() != 0 {
        return Err(formerr(true));
    }
    // The additional section: at most one OPT, owned by the root.
    let mut edns = None;
    let additional = msg.additional().map_err(|_| formerr(true))?;
    for rec in additional {
        let rec = rec.map_err(|_| formerr(true))?;
        if rec.rtype() != Rtype::OPT {
            continue;
        }
        if edns.is_some() || !rec.owner().is_root() {
            return Err(formerr(true));
        }
        // The OPT record's class is the payload size, its TTL the extended
        // rcode, version and flags.
        let ttl = rec.ttl().as_secs();
        let version = (ttl >> 16) as u8;
        let e = Edns { payload: rec.class().to_int(), dnssec_ok: ttl & 0x8000 != 0 };
        if version != 0 {
            return Err(Refusal { rcode: OptRcode::BADVERS, question: true, edns: Some(e) });
        }
        edns = Some(e);
    }
    let qtype = question.qtype();
    let bad = |rcode| Err(Refusal { rcode, question: true, edns });
    if qtype == Rtype::OPT || qtype == Rtype::TSIG || qtype == Rtype::TKEY {
        return bad(OptRcode::FORMERR);
    }
    // Zone transfers are not offered; MAILB and MAILA are obsolete.
    if qtype == Rtype::AXFR || qtype == Rtype::IXFR {
        return bad(OptRcode::REFUSED);
    }
    if qtype == Rtype::MAILA || qtype == Rtype::MAILB {
        return bad(OptRcode::NOTIMP);
    }
    Ok(Request { header, qname: question.into_qname(), qtype, qclass: question.qclass(), edns })
}

/// An error answer: header (and the question when it parsed, and OPT when
/// the query had a valid one) with `refusal`'s rcode.
pub(crate) fn error_answer(msg: Message<&[u8]>, refusal: &Refusal, max_udp_payload: u16) -> Vec<u8> {
    let mut b = MessageBuilder::new_vec();
    let h = b.header_mut();
    let qh = msg.header();
    h.set_id(qh.id());
    h.set_qr(true);
    h.set_opcode(qh.opcode());
    h.set_rd(qh.rd());
    h.set_cd(qh.cd());
    h.set_rcode(refusal.rcode.rcode());
    let mut q = b.question();
    if refusal.question
        && let Ok(question) = msg.sole_question()
    {
        let _ = q.push(question);
    }
    let mut b = q.additional();
    if let Some(e) = refusal.edns {
        let _ = b.opt(|opt| {
            opt.set_udp_payload_size(max_udp_payload);
            opt.set_dnssec_ok(e.dnssec_ok);
            opt.set_rcode(refusal.rcode);
            Ok(())
        });
    }
    b.finish()
}

/// What a rate-limited client gets instead of its answer (RFC "slip"):
/// the header and question of the answer with TC set, so a real client
/// retries over TCP.
fn slip(answer: &[u8]) -> Vec<u8> {
    let Ok(msg) = Message::from_octets(answer) else { return answer.to_vec() };
    let mut b = MessageBuilder::new_vec();
    *b.header_mut() = msg.header();
    b.header_mut().set_tc(true);
    let mut q = b.question();
    if let Ok(question) = msg.sole_question() {
        let _ = q.push(question);
    }
    q.finish()
}

/// One query's walk through a zone.
struct Lookup<'z, 's> {
    catalog: &'s Catalog<'s>,
    zone: &'s Zone<'z>,
    dnssec: bool,
    qtype: Rtype,
}

impl<'s> Lookup<'s, 's> {
    fn run(&mut self, qname: Name<Vec<u8>>, s: &mut Sections<'s>) {
        let mut seen: Vec<Name<Vec<u8>>> = Vec::new();
        let mut name = qname;
        for hop in 0..MAX_CNAME_CHAIN {
            match self.step(name.for_slice(), hop == 0, s) {
                // A name already visited would repeat the chain.
                Some(next) if next != name && !seen.contains(&next) => {
                    // Chains go on into the other zones served.
                    if !next.ends_with(self.zone.apex) {
                        match self.catalog.find(next.for_slice()) {
                            Some(zone) => self.zone = zone,
                            None => return,
                        }
                    }
                    seen.push(core::mem::replace(&mut name, next));
                }
                _ => return,
            }
        }
    }

    /// Answers for `name`; a CNAME's target to follow next.
    fn step(&self, name: &Name<[u8]>, first: bool, s: &mut Sections<'s>) -> Option<Name<Vec<u8>>> {
        let zone = self.zone;
        if let Some(cut) = self.cut_above(name) {
            let (cut_name, cut_node) = cut;
            if !(cut_name == name && self.qtype == Rtype::DS) {
                if first {
                    s.aa = false;
                }
                self.referral(cut_name, cut_node, s);
                return None;
            }
        }
        if let Some((owner, node)) = zone.nodes.get_key_value(name) {
            return self.answer_from(Owner::Zone(owner), node, None, s);
        }
        if zone.is_empty_non_terminal(name) {
            self.nodata(name, None, s);
            return None;
        }
        // The closest encloser: the longest existing ancestor.
        let extra = name.label_count() - zone.apex.label_count();
        let ce = (1..extra)
            .filter_map(|k| skip_labels(name, k))
            .find(|c| zone.nodes.contains_key(c.for_slice()) || zone.is_empty_non_terminal(c.for_slice()))
            .map_or_else(|| zone.apex.to_name::<Vec<u8>>(), |c| c.to_name::<Vec<u8>>());
        let ce = ce.for_slice();
        if let Some(wild) = wildcard_of(ce)
            && let Some((wild_owner, node)) = zone.nodes.get_key_value(wild.for_slice())
        {
            let proof = Wild { ce: ce.to_name::<Vec<u8>>(), wild: wild_owner };
            return self.answer_from(Owner::Made(name.to_name::<Vec<u8>>()), node, Some(proof), s);
        }
        s.rcode = Some(Rcode::NXDOMAIN);
        self.soa(s);
        if self.dnssec {
            if zone.nsec3.is_some() {
                self.nsec3_closest_encloser(name, ce, s);
                if let Some(w) = wildcard_of(ce) {
                    self.nsec3_cover(w.for_slice(), s);
                }
            } else {
                self.nsec_cover(name, s);
                if let Some(w) = wildcard_of(ce) {
                    self.nsec_cover(w.for_slice(), s);
                }
            }
        }
        None
    }

    /// Answers from `node`, the data at `owner` (the query name, or the
    /// wildcard that matched it).
    fn answer_from(
        &self,
        owner: Owner<'s>,
        node: &'s Node<'s>,
        wild: Option<Wild<'s>>,
        s: &mut Sections<'s>,
    ) -> Option<Name<Vec<u8>>> {
        let found = if self.qtype == Rtype::ANY {
            // RFC 8482: one RRset stands for all of them.
            node.rrsets.iter().find(|set| !set.rrs.is_empty() && set.rtype != Rtype::NSEC3)
        } else {
            node.get(self.qtype).filter(|set| !set.rrs.is_empty() || self.qtype == Rtype::RRSIG)
        };
        if self.qtype == Rtype::RRSIG {
            // Every signature at the name.
            let sigs: Vec<_> = node.rrsets.iter().filter(|set| !set.sigs.is_empty()).collect();
            if !sigs.is_empty() {
                for set in sigs {
                    s.answer.push(placed(owner.clone(), Rtype::RRSIG, &set.sigs));
                }
                return None;
            }
        }
        if let Some(set) = found {
            s.positive = true;
            self.add(owner.clone(), set, Section::Answer, s);
            self.wildcard_proof(owner.name(), wild, s);
            self.additional_for(set, s);
            return None;
        }
        if let Some(cname) = node.get(Rtype::CNAME).filter(|set| !set.rrs.is_empty()) {
            self.add(owner.clone(), cname, Section::Answer, s);
            self.wildcard_proof(owner.name(), wild, s);
            let target = cname
                .rrs
                .first()
                .and_then(|rr| ParsedName::parse(&mut Parser::from_ref(rr.rdata)).ok().map(|n| n.to_name::<Vec<u8>>()));
            return target;
        }
        self.nodata(owner.name(), wild, s);
        None
    }

    fn nodata(&self, name: &Name<[u8]>, wild: Option<Wild<'s>>, s: &mut Sections<'s>) {
        self.soa(s);
        if !self.dnssec {
            return;
        }
        if self.zone.nsec3.is_some() {
            match wild {
                Some(w) => {
                    // RFC 5155 section 7.2.5: closest encloser proof, and the
                    // NSEC3 that matches the wildcard.
                    self.nsec3_closest_encloser(name, w.ce.for_slice(), s);
                    self.nsec3_match(w.wild, s);
                }
                None => {
                    // The wildcard's own name: also the closest encloser's
                    // NSEC3, as for a wildcard match (as NSD does).
                    if name.first().is_wildcard()
                        && let Some(parent) = name.parent()
                    {
                        self.nsec3_match(parent.for_slice(), s);
                    }
                    if !self.nsec3_match(name, s) {
                        // An empty non-terminal under opt-out, or a name whose
                        // NSEC3 is missing: prove the closest encloser.
                        let parent = name.parent();
                        if let Some(p) = parent {
                            self.nsec3_closest_encloser(name, p.for_slice(), s);
                        }
                    }
                }
            }
            return;
        }
        match wild {
            Some(w) => {
                self.nsec_cover(name, s);
                self.nsec_cover(w.wild, s);
            }
            None => self.nsec_cover(name, s),
        }
    }

    /// The delegation that `name` is at or below, if any (the highest).
    fn cut_above(&self, name: &Name<[u8]>) -> Option<(&'s Name<[u8]>, &'s Node<'s>)> {
        let zone = self.zone;
        let extra = name.label_count() - zone.apex.label_count();
        if extra == 0 {
            return None;
        }
        // From just below the apex down to the name itself.
        for keep in (0..extra).rev() {
            let Some(anc) = skip_labels(name, keep) else { continue };
            if let Some((n, node)) = zone.nodes.get_key_value(anc.for_slice())
                && node.get(Rtype::NS).is_some_and(|s| !s.rrs.is_empty())
            {
                return Some((n, node));
            }
        }
        None
    }

    fn referral(&self, cut: &'s Name<[u8]>, node: &'s Node<'s>, s: &mut Sections<'s>) {
        let Some(ns) = node.get(Rtype::NS) else { return };
        s.authority.push(placed(Owner::Zone(cut), Rtype::NS, &ns.rrs));
        if self.dnssec {
            match node.get(Rtype::DS).filter(|d| !d.rrs.is_empty()) {
                Some(ds) => self.add(Owner::Zone(cut), ds, Section::Authority, s),
                None if self.zone.nsec3.is_some() => {
                    if !self.nsec3_match(cut, s)
                        && let Some(p) = cut.parent()
                    {
                        self.nsec3_closest_encloser(cut, p.for_slice(), s);
                    }
                }
                None => {
                    if let Some(nsec) = node.get(Rtype::NSEC) {
                        self.add(Owner::Zone(cut), nsec, Section::Authority, s);
                    }
                }
            }
        }
        self.glue(ns, Some(cut), s);
    }

    /// Address records for the names in `set` (NS, MX, SRV targets).
    fn additional_for(&self, set: &'s Rrset<'s>, s: &mut Sections<'s>) {
        if matches!(set.rtype, Rtype::NS | Rtype::MX | Rtype::SRV) {
            self.glue(set, None, s);
        }
    }

    fn glue(&self, set: &'s Rrset<'s>, cut: Option<&Name<[u8]>>, s: &mut Sections<'s>) {
        for rr in &set.rrs {
            let Some(target) = target_name(set.rtype, rr.rdata) else { continue };
            let Some((owner, node)) = self.zone.nodes.get_key_value(target.for_slice()) else { continue };
            let required = cut.is_some_and(|c| owner.ends_with(c));
            for rtype in [Rtype::A, Rtype::AAAA] {
                let Some(addr) = node.get(rtype).filter(|a| !a.rrs.is_empty()) else { continue };
                let placed_already =
                    |list: &[Placed<'_>]| list.iter().any(|p| p.rtype == rtype && p.owner.name() == *owner);
                if placed_already(&s.additional) || placed_already(&s.answer) {
                    continue;
                }
                let mut p = placed(Owner::Zone(owner), rtype, &addr.rrs);
                p.required = required;
                s.additional.push(p);
                if self.dnssec && !node.below_cut && !addr.sigs.is_empty() {
                    s.additional.push(placed(Owner::Zone(owner), Rtype::RRSIG, &addr.sigs));
                }
            }
        }
    }

    /// The zone's NS RRset in the authority section of a positive answer
    /// (as NSD gives it), with its addresses.
    fn apex_ns(&self, s: &mut Sections<'s>) {
        let Some(ns) = self.zone.apex_node().get(Rtype::NS) else { return };
        let is_apex_ns = |p: &Placed<'_>| p.rtype == Rtype::NS && p.owner.name() == self.zone.apex;
        if ns.rrs.is_empty() || s.answer.iter().any(is_apex_ns) || s.authority.iter().any(is_apex_ns) {
            return;
        }
        let before = s.authority.len();
        self.add(Owner::Zone(self.zone.apex), ns, Section::Authority, s);
        s.authority[before..].iter_mut().for_each(|p| p.optional = true);
        self.glue(ns, None, s);
    }

    fn soa(&self, s: &mut Sections<'s>) {
        let apex = self.zone.apex_node();
        let Some(soa) = apex.get(Rtype::SOA) else { return };
        // RFC 2308 section 5: the SOA's TTL, at most its MINIMUM field.
        let minimum = soa.rrs.first().and_then(|rr| soa_minimum(rr.rdata));
        let mut p = placed(Owner::Zone(self.zone.apex), Rtype::SOA, &soa.rrs);
        p.ttl_cap = minimum;
        s.authority.push(p);
        if self.dnssec && !soa.sigs.is_empty() {
            let mut p = placed(Owner::Zone(self.zone.apex), Rtype::RRSIG, &soa.sigs);
            p.ttl_cap = minimum;
            s.authority.push(p);
        }
    }

    fn add(&self, owner: Owner<'s>, set: &'s Rrset<'s>, section: Section, s: &mut Sections<'s>) {
        let list = match section {
            Section::Answer => &mut s.answer,
            Section::Authority => &mut s.authority,
        };
        if set.rrs.is_empty() {
            return;
        }
        list.push(placed(owner.clone(), set.rtype, &set.rrs));
        if self.dnssec && !set.sigs.is_empty() {
            list.push(placed(owner, Rtype::RRSIG, &set.sigs));
        }
    }

    /// A wildcard answer's proof that the query name itself does not
    /// exist (RFC 4035 section 3.1.3.3, RFC 5155 section 7.2.6).
    fn wildcard_proof(&self, name: &Name<[u8]>, wild: Option<Wild<'s>>, s: &mut Sections<'s>) {
        let Some(w) = wild else { return };
        if !self.dnssec {
            return;
        }
        if self.zone.nsec3.is_some() {
            if let Some(next) = next_closer(name, w.ce.for_slice()) {
                self.nsec3_cover(next.for_slice(), s);
            }
        } else {
            self.nsec_cover(name, s);
        }
    }

    /// The NSEC that matches or covers `name`, with its signatures, once.
    fn nsec_cover(&self, name: &Name<[u8]>, s: &mut Sections<'s>) {
        let Some((owner, set)) = self.zone.nsec_for(name) else { return };
        if s.authority.iter().any(|p| p.rtype == Rtype::NSEC && p.owner.name() == owner) {
            return;
        }
        self.add(Owner::Zone(owner), set, Section::Authority, s);
    }

    /// The NSEC3 whose hash matches `name`'s; false if there is none.
    fn nsec3_match(&self, name: &Name<[u8]>, s: &mut Sections<'s>) -> bool {
        let Some(chain) = &self.zone.nsec3 else { return false };
        if chain.iterations > nsec3::MAX_ITERATIONS {
            return false;
        }
        let h = nsec3::hash(name, chain.salt, chain.iterations);
        match chain.by_hash.get(&h) {
            Some(owner) => {
                self.add_nsec3(owner, s);
                true
            }
            None => false,
        }
    }

    /// The NSEC3 whose hash interval covers `name`'s hash.
    fn nsec3_cover(&self, name: &Name<[u8]>, s: &mut Sections<'s>) {
        let Some(chain) = &self.zone.nsec3 else { return };
        if chain.iterations > nsec3::MAX_ITERATIONS {
            return;
        }
        let h = nsec3::hash(name, chain.salt, chain.iterations);
        let owner = chain.by_hash.range(..h).next_back().or_else(|| chain.by_hash.iter().next_back()).map(|(_, o)| *o);
        if let Some(owner) = owner {
            self.add_nsec3(owner, s);
        }
    }

    /// RFC 5155 section 7.2.1: the NSEC3 matching the closest encloser and
    /// the one covering the next closer name.
    fn nsec3_closest_encloser(&self, name: &Name<[u8]>, ce: &Name<[u8]>, s: &mut Sections<'s>) {
        self.nsec3_match(ce, s);
        if let Some(next) = next_closer(name, ce) {
            self.nsec3_cover(next.for_slice(), s);
        }
    }

    fn add_nsec3(&self, owner: &'s Name<[u8]>, s: &mut Sections<'s>) {
        if s.authority.iter().any(|p| p.rtype == Rtype::NSEC3 && p.owner.name() == owner) {
            return;
        }
        let Some(chain) = &self.zone.nsec3 else { return };
        if let Some((o, node)) = chain.nodes.get_key_value(owner)
            && let Some(set) = node.get(Rtype::NSEC3)
        {
            self.add(Owner::Zone(o), set, Section::Authority, s);
        }
    }
}

#[derive(Debug, Clone)]
struct Wild<'s> {
    /// The closest encloser.
    ce: Name<Vec<u8>>,
    /// The wildcard's owner name.
    wild: &'s Name<[u8]>,
}

#[derive(Debug, Clone, Copy)]
enum Section {
    Answer,
    Authority,
}

pub(crate) fn placed<'z>(owner: Owner<'z>, rtype: Rtype, rrs: &'z [Rr<'z>]) -> Placed<'z> {
    Placed { owner, rtype, rrs, ttl_cap: None, required: false, optional: false }
}

/// `name` without its first `n` labels.
pub(crate) fn skip_labels(name: &Name<[u8]>, n: usize) -> Option<Name<&[u8]>> {
    let mut pos = 0;
    let bytes = name.as_slice();
    for _ in 0..n {
        pos += usize::from(*bytes.get(pos)?) + 1;
    }
    Name::from_octets(bytes.get(pos..)?).ok()
}

/// The next closer name: `name` cut to one label more than `ce`.
fn next_closer(name: &Name<[u8]>, ce: &Name<[u8]>) -> Option<Name<Vec<u8>>> {
    let extra = name.label_count().checked_sub(ce.label_count() + 1)?;
    skip_labels(name, extra).map(|n| n.to_name::<Vec<u8>>())
}

/// The name an NS, MX or SRV record points to.
fn target_name(rtype: Rtype, rdata: &[u8]) -> Option<Name<Vec<u8>>> {
    let skip = match rtype {
        Rtype::NS => 0,
        Rtype::MX => 2,
        Rtype::SRV => 6,
        _ => return None,
    };
    let mut p = Parser::from_ref(rdata.get(skip..)?);
    ParsedName::parse(&mut p).ok().map(|n| n.to_name::<Vec<u8>>())
}

/// The MINIMUM field of an SOA's rdata (its last four bytes).
fn soa_minimum(rdata: &[u8]) -> Option<u32> {
    let tail = rdata.len().checked_sub(4)?;
    Some(u32::from_be_bytes(rdata[tail..].try_into().ok()?))
}
