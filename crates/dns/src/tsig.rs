//! TSIG (RFC 8945) with HMAC-SHA256: checking signed requests and signing
//! responses, including the messages after the first of a zone transfer.
//!
//! A request's TSIG record is the last of its additional section. The
//! request is checked in the RFC's order: the key (unknown key or
//! algorithm: BADKEY), the MAC (BADSIG), the time (BADTIME, outside the
//! fudge). BADKEY and BADSIG answers carry an unsigned TSIG record,
//! BADTIME answers a signed one with the server's time (section 5.2.3).

use alloc::vec::Vec;

use domain::base::iana::Rtype;
use domain::base::name::{Name, ParsedName, ToName};
use domain::dep::octseq::Parser;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The algorithm name `hmac-sha256.` in wire format.
const HMAC_SHA256: &[u8] = b"\x0bhmac-sha256\x00";
/// The length of an HMAC-SHA256 MAC.
const MAC_LEN: usize = 32;
/// The shortest truncated MAC accepted (RFC 8945 section 5.2.2.1: half
/// the hash, and at least 10 bytes).
const MIN_MAC_LEN: usize = 16;
/// The fudge put into signed responses.
const FUDGE: u16 = 300;
/// Class ANY, as TSIG records carry.
const CLASS_ANY: u16 = 255;

/// TSIG error codes (RFC 8945 section 3 and IANA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigError {
    /// 16: the MAC does not verify.
    BadSig,
    /// 17: the key or its algorithm is not known.
    BadKey,
    /// 18: the time signed is outside the fudge.
    BadTime,
    /// 22: the MAC is truncated below the allowed length.
    BadTrunc,
}

impl TsigError {
    /// The code in the TSIG record's Error field.
    pub fn code(self) -> u16 {
        match self {
            TsigError::BadSig => 16,
            TsigError::BadKey => 17,
            TsigError::BadTime => 18,
            TsigError::BadTrunc => 22,
        }
    }
}

/// A key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key's name is not a domain name.
    #[error("TSIG key name {0:?} is not a domain name")]
    Name(alloc::string::String),
    /// The secret is empty.
    #[error("TSIG key {0:?} has an empty secret")]
    EmptySecret(alloc::string::String),
}

/// A TSIG key: its name and HMAC-SHA256 secret.
#[derive(Clone)]
pub struct Key {
    name: Name<Vec<u8>>,
    secret: Vec<u8>,
}

impl core::fmt::Debug for Key {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the secret.
        f.debug_struct("Key").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Key {
    /// A key named `name` (`"xfr-key"` or `"xfr-key."`) with `secret`.
    pub fn new(name: &str, secret: Vec<u8>) -> Result<Key, KeyError> {
        let parsed = parse_name(name).ok_or_else(|| KeyError::Name(name.into()))?;
        if secret.is_empty() {
            return Err(KeyError::EmptySecret(name.into()));
        }
        Ok(Key { name: parsed, secret })
    }

    /// The key's name.
    pub fn name(&self) -> &Name<[u8]> {
        self.name.for_slice()
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.secret).expect("HMAC takes keys of any length")
    }
}

/// Parses a presentation-format name (relative names are taken as
/// absolute).
pub(crate) fn parse_name(text: &str) -> Option<Name<Vec<u8>>> {
    let text = text.strip_suffix('.').unwrap_or(text);
    if text.is_empty() {
        return Some(Name::root_vec());
    }
    let mut wire = Vec::with_capacity(text.len() + 2);
    for label in text.split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    Name::from_octets(wire).ok()
}

/// The TSIG record of a request, once found.
#[derive(Debug, Clone)]
pub struct RequestTsig {
    /// The key's index in the key list, when it is known.
    pub key: Option<usize>,
    /// The key name, as the request gave it.
    pub key_name: Name<Vec<u8>>,
    /// The request's MAC.
    pub mac: Vec<u8>,
    /// The time signed (seconds since the epoch).
    pub time: u64,
    /// The fudge.
    pub fudge: u16,
    /// The original message ID.
    pub original_id: u16,
    /// The length of the message without its TSIG record.
    pub stripped_len: usize,
}

/// What checking a request's TSIG found.
#[derive(Debug, Clone)]
pub enum Checked {
    /// The request is not signed.
    Unsigned,
    /// Signed with the key `keys[tsig.key]`, MAC and time good.
    Good(RequestTsig),
    /// Signed, but it fails: answer NOTAUTH with this error.
    Bad(RequestTsig, TsigError),
    /// The TSIG record is malformed or not last: FORMERR.
    Malformed,
}

/// Checks the TSIG record of `msg` (a whole request) against `keys` at
/// `now` (seconds since the epoch).
pub fn check(msg: &[u8], keys: &[Key], now: u64) -> Checked {
    let start = match find_tsig(msg) {
        Tsig::None => return Checked::Unsigned,
        Tsig::Misplaced => return Checked::Malformed,
        Tsig::At(start) => start,
    };
    let Some(raw) = parse_tsig(msg, start) else { return Checked::Malformed };
    let mut req = RequestTsig {
        key: None,
        key_name: raw.key_name.clone(),
        mac: raw.mac.to_vec(),
        time: raw.time,
        fudge: raw.fudge,
        original_id: raw.original_id,
        stripped_len: start,
    };
    if !raw.algorithm.eq_ignore_ascii_case(HMAC_SHA256) {
        return Checked::Bad(req, TsigError::BadKey);
    }
    let Some(index) = keys.iter().position(|k| k.name == raw.key_name) else {
        return Checked::Bad(req, TsigError::BadKey);
    };
    req.key = Some(index);
    let key = &keys[index];
    if raw.mac.len() > MAC_LEN {
        return Checked::Malformed;
    }
    let mut mac = key.mac();
    raw.digest_unsigned(&mut mac, msg, start);
    variables(&mut mac, &raw.key_name, raw.time, raw.fudge, raw.error, raw.other);
    if !raw.verify(mac) {
        return Checked::Bad(req, TsigError::BadSig);
    }
    if now.abs_diff(raw.time) > u64::from(raw.fudge) {
        return Checked::Bad(req, TsigError::BadTime);
    }
    Checked::Good(req)
}

/// Signs the responses to one request: the first with the request's MAC
/// in the digest, each later one (a zone transfer's) with the MAC before.
#[derive(Debug)]
pub struct Signer<'k> {
    key: &'k Key,
    prior: Vec<u8>,
    first: bool,
}

impl<'k> Signer<'k> {
    /// A signer for the answers to `request`, signed with `key`.
    pub fn new(key: &'k Key, request: &RequestTsig) -> Signer<'k> {
        Signer { key, prior: request.mac.clone(), first: true }
    }

    /// Appends a signed TSIG record to `msg` (a whole response) with
    /// `error` (0, or BADTIME's code) at `now`.
    pub fn sign(&mut self, msg: &mut Vec<u8>, now: u64, error: u16) {
        let other: Vec<u8> =
            if error == TsigError::BadTime.code() { now.to_be_bytes()[2..].to_vec() } else { Vec::new() };
        let mut mac = self.key.mac();
        mac.update(&(self.prior.len() as u16).to_be_bytes());
        mac.update(&self.prior);
        mac.update(msg);
        if self.first {
            variables(&mut mac, &self.key.name, now, FUDGE, error, &other);
        } else {
            mac.update(&now.to_be_bytes()[2..]);
            mac.update(&FUDGE.to_be_bytes());
        }
        let digest = mac.finalize().into_bytes().to_vec();
        let id = u16::from_be_bytes([msg[0], msg[1]]);
        append_tsig(msg, &self.key.name, now, &digest, id, error, &other);
        self.first = false;
        self.prior = digest;
    }
}

/// Signs a request (RFC 8945 section 4.3.1): appends a TSIG record with
/// `key`'s MAC over `msg` at `now` (seconds since the epoch). Returns the
/// request's MAC, which the answers are checked against ([`Verifier`]).
pub fn sign_request(msg: &mut Vec<u8>, key: &Key, now: u64) -> Vec<u8> {
    let mut mac = key.mac();
    mac.update(msg);
    variables(&mut mac, &key.name, now, FUDGE, 0, &[]);
    let digest = mac.finalize().into_bytes().to_vec();
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    append_tsig(msg, &key.name, now, &digest, id, 0, &[]);
    digest
}

/// Why an answer to a signed request fails its TSIG check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The answer is not signed where it must be: the first message, the
    /// last one, or after 99 unsigned ones (RFC 8945 section 5.3.1).
    #[error("the answer is not signed")]
    Unsigned,
    /// The TSIG record is malformed, not last, or not HMAC-SHA256.
    #[error("the answer's TSIG record is malformed")]
    Malformed,
    /// The answer is signed with another key than the request.
    #[error("the answer is signed with another key")]
    OtherKey,
    /// The MAC does not verify.
    #[error("the answer's TSIG signature is wrong")]
    BadSig,
    /// The time signed is outside the fudge.
    #[error("the answer's TSIG time is outside the fudge")]
    BadTime,
    /// The other side refused the request's signature (its TSIG error:
    /// 16 BADSIG, 17 BADKEY, 18 BADTIME).
    #[error("the other side refused the request's signature (TSIG error {0})")]
    Refused(u16),
}

/// The most unsigned messages in a row of a signed answer.
const MAX_UNSIGNED: usize = 99;

/// Checks the answers to a request signed by [`sign_request`]: one, or a
/// zone transfer's many (RFC 8945 section 5.3.1). The first and the last
/// message must be signed; the ones between may be unsigned (at most 99
/// in a row), and each signed message's MAC then covers them.
#[derive(Clone)]
pub struct Verifier {
    key: Key,
    prior: Vec<u8>,
    /// Unsigned messages since the last signed one.
    pending: Vec<u8>,
    unsigned: usize,
    first: bool,
}

impl core::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Verifier").field("key", &self.key).field("unsigned", &self.unsigned).finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for the answers to a request signed with `key` whose MAC
    /// was `request_mac`.
    pub fn new(key: &Key, request_mac: Vec<u8>) -> Verifier {
        Verifier { key: key.clone(), prior: request_mac, pending: Vec::new(), unsigned: 0, first: true }
    }

    /// Checks the next answer message at `now`.
    pub fn check(&mut self, msg: &[u8], now: u64) -> Result<(), VerifyError> {
        let start = match find_tsig(msg) {
            Tsig::At(start) => start,
            Tsig::Misplaced => return Err(VerifyError::Malformed),
            Tsig::None => {
                if self.first || self.unsigned >= MAX_UNSIGNED {
                    return Err(VerifyError::Unsigned);
                }
                self.unsigned += 1;
                self.pending.extend_from_slice(msg);
                return Ok(());
            }
        };
        let raw = parse_tsig(msg, start).ok_or(VerifyError::Malformed)?;
        if raw.error != 0 && raw.mac.is_empty() {
            return Err(VerifyError::Refused(raw.error));
        }
        if !raw.algorithm.eq_ignore_ascii_case(HMAC_SHA256) || raw.mac.len() > MAC_LEN {
            return Err(VerifyError::Malformed);
        }
        if raw.key_name != self.key.name {
            return Err(VerifyError::OtherKey);
        }
        let mut mac = self.key.mac();
        mac.update(&(self.prior.len() as u16).to_be_bytes());
        mac.update(&self.prior);
        mac.update(&self.pending);
        raw.digest_unsigned(&mut mac, msg, start);
        if self.first {
            variables(&mut mac, &raw.key_name, raw.time, raw.fudge, raw.error, raw.other);
        } else {
            mac.update(&raw.time.to_be_bytes()[2..]);
            mac.update(&raw.fudge.to_be_bytes());
        }
        if !raw.verify(mac) {
            return Err(VerifyError::BadSig);
        }
        if raw.error != 0 {
            return Err(VerifyError::Refused(raw.error));
        }
        if now.abs_diff(raw.time) > u64::from(raw.fudge) {
            return Err(VerifyError::BadTime);
        }
        self.prior = raw.mac.to_vec();
        self.pending.clear();
        self.unsigned = 0;
        self.first = false;
        Ok(())
    }

    /// Whether the answer may end here: its last message was signed.
    pub fn finish(&self) -> Result<(), VerifyError> {
        if self.first || self.unsigned > 0 { Err(VerifyError::Unsigned) } else { Ok(()) }
    }
}

/// The bytes a signed TSIG record (HMAC-SHA256, no other data) adds to a
/// response signed with `key`: what a UDP answer leaves room for.
pub fn signed_len(key: &Key) -> usize {
    // Owner, type, class, TTL, rdata length; then the rdata.
    key.name.as_slice().len() + 10 + HMAC_SHA256.len() + 6 + 2 + 2 + 32 + 2 + 2 + 2
}

/// Appends an unsigned TSIG record (no MAC) carrying `error`, for BADKEY
/// and BADSIG answers.
pub fn append_unsigned(msg: &mut Vec<u8>, request: &RequestTsig, error: TsigError) {
    append_tsig(msg, &request.key_name, request.time, &[], request.original_id, error.code(), &[]);
}

fn append_tsig(msg: &mut Vec<u8>, key: &Name<Vec<u8>>, time: u64, mac: &[u8], id: u16, error: u16, other: &[u8]) {
    let arcount = u16::from_be_bytes([msg[10], msg[11]]).wrapping_add(1);
    msg[10..12].copy_from_slice(&arcount.to_be_bytes());
    msg.extend_from_slice(key.as_slice());
    msg.extend_from_slice(&Rtype::TSIG.to_int().to_be_bytes());
    msg.extend_from_slice(&CLASS_ANY.to_be_bytes());
    msg.extend_from_slice(&0u32.to_be_bytes());
    let rdlen = HMAC_SHA256.len() + 6 + 2 + 2 + mac.len() + 2 + 2 + 2 + other.len();
    msg.extend_from_slice(&(rdlen as u16).to_be_bytes());
    msg.extend_from_slice(HMAC_SHA256);
    msg.extend_from_slice(&time.to_be_bytes()[2..]);
    msg.extend_from_slice(&FUDGE.to_be_bytes());
    msg.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    msg.extend_from_slice(mac);
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&error.to_be_bytes());
    msg.extend_from_slice(&(other.len() as u16).to_be_bytes());
    msg.extend_from_slice(other);
}

/// The TSIG variables of RFC 8945 section 4.3.3, in canonical form.
fn variables(mac: &mut HmacSha256, key: &Name<Vec<u8>>, time: u64, fudge: u16, error: u16, other: &[u8]) {
    let lower: Vec<u8> = key.as_slice().to_ascii_lowercase();
    mac.update(&lower);
    mac.update(&CLASS_ANY.to_be_bytes());
    mac.update(&0u32.to_be_bytes());
    mac.update(HMAC_SHA256);
    mac.update(&time.to_be_bytes()[2..]);
    mac.update(&fudge.to_be_bytes());
    mac.update(&error.to_be_bytes());
    mac.update(&(other.len() as u16).to_be_bytes());
    mac.update(other);
}

struct RawTsig<'m> {
    key_name: Name<Vec<u8>>,
    algorithm: Vec<u8>,
    time: u64,
    fudge: u16,
    mac: &'m [u8],
    original_id: u16,
    error: u16,
    other: &'m [u8],
}

impl RawTsig<'_> {
    /// Feeds `mac` the message `msg` as it was before this TSIG record (at
    /// `start`) was added: the original ID, one additional record fewer.
    fn digest_unsigned(&self, mac: &mut HmacSha256, msg: &[u8], start: usize) {
        let mut head = [0u8; 12];
        head.copy_from_slice(&msg[..12]);
        head[..2].copy_from_slice(&self.original_id.to_be_bytes());
        let arcount = u16::from_be_bytes([head[10], head[11]]) - 1;
        head[10..12].copy_from_slice(&arcount.to_be_bytes());
        mac.update(&head);
        mac.update(&msg[12..start]);
    }

    /// Whether this record's MAC is `mac`'s: whole, or truncated to at
    /// least [`MIN_MAC_LEN`] bytes.
    fn verify(&self, mac: HmacSha256) -> bool {
        if self.mac.len() == MAC_LEN {
            mac.verify_slice(self.mac).is_ok()
        } else {
            self.mac.len() >= MIN_MAC_LEN && mac.verify_truncated_left(self.mac).is_ok()
        }
    }
}

/// Where a message's TSIG record is.
enum Tsig {
    /// It has none (or does not walk: the query parser judges it).
    None,
    /// A TSIG record that is not the last one, or more than one.
    Misplaced,
    /// The last record, starting at this offset.
    At(usize),
}

fn find_tsig(msg: &[u8]) -> Tsig {
    walk_records(msg).unwrap_or(Tsig::None)
}

fn walk_records(msg: &[u8]) -> Option<Tsig> {
    if msg.len() < 12 {
        return None;
    }
    let count = |i: usize| usize::from(u16::from_be_bytes([msg[i], msg[i + 1]]));
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    let mut p = Parser::from_ref(msg);
    p.advance(12).ok()?;
    let walk = |p: &mut Parser<'_, [u8]>| -> Option<(usize, Rtype)> {
        let start = p.pos();
        ParsedName::skip(p).ok()?;
        let rtype = Rtype::from_int(p.parse_u16_be().ok()?);
        p.advance(6).ok()?;
        let len = usize::from(p.parse_u16_be().ok()?);
        p.advance(len).ok()?;
        Some((start, rtype))
    };
    for _ in 0..qd {
        if ParsedName::skip(&mut p).is_err() || p.advance(4).is_err() {
            return None;
        }
    }
    let mut last = None;
    let mut tsig_seen = 0;
    for i in 0..an + ns + ar {
        let (start, rtype) = walk(&mut p)?;
        if rtype == Rtype::TSIG {
            tsig_seen += 1;
            if i != an + ns + ar - 1 || i < an + ns {
                return Some(Tsig::Misplaced);
            }
        }
        last = Some((start, rtype));
    }
    Some(match last {
        Some((start, Rtype::TSIG)) if tsig_seen == 1 => Tsig::At(start),
        _ => Tsig::None,
    })
}

fn parse_tsig(msg: &[u8], start: usize) -> Option<RawTsig<'_>> {
    let mut p = Parser::from_ref(msg);
    p.seek(start).ok()?;
    let key_name = ParsedName::parse(&mut p).ok()?.to_name::<Vec<u8>>();
    p.advance(8).ok()?; // type, class, TTL
    let rdlen = usize::from(p.parse_u16_be().ok()?);
    let rdata_end = p.pos() + rdlen;
    if rdata_end != msg.len() {
        return None;
    }
    let algorithm = ParsedName::parse(&mut p).ok()?.to_name::<Vec<u8>>();
    let hi = u64::from(p.parse_u16_be().ok()?);
    let lo = u64::from(p.parse_u32_be().ok()?);
    let fudge = p.parse_u16_be().ok()?;
    let mac_len = usize::from(p.parse_u16_be().ok()?);
    let mac_at = p.pos();
    p.advance(mac_len).ok()?;
    let original_id = p.parse_u16_be().ok()?;
    let error = p.parse_u16_be().ok()?;
    let other_len = usize::from(p.parse_u16_be().ok()?);
    let other_at = p.pos();
    p.advance(other_len).ok()?;
    if p.pos() != rdata_end {
        return None;
    }
    Some(RawTsig {
        key_name,
        algorithm: algorithm.as_slice().to_vec(),
        time: (hi << 32) | lo,
        fudge,
        mac: &msg[mac_at..mac_at + mac_len],
        original_id,
        error,
        other: &msg[other_at..other_at + other_len],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &[u8]) -> Key {
        Key::new("xfr", secret.to_vec()).unwrap()
    }

    /// A response with `id` and one question, a name of one label that
    /// differs with `n`.
    fn message(id: u16, n: usize) -> Vec<u8> {
        let mut m = alloc::vec![0u8; 12];
        m[..2].copy_from_slice(&id.to_be_bytes());
        m[2] = 0x80;
        m[5] = 1;
        let len = n % 60 + 1;
        m.push(len as u8);
        m.extend((0..len).map(|i| b'a' + (i % 26) as u8));
        m.extend_from_slice(&[0, 0, 6, 0, 1]);
        m
    }

    #[test]
    fn a_signed_request_checks_and_its_signed_answers_verify() {
        let k = key(b"secret");
        let mut request = message(7, 20);
        request[2] = 0;
        let mac = sign_request(&mut request, &k, 1_000);
        let Checked::Good(req) = check(&request, core::slice::from_ref(&k), 1_010) else { panic!("not good") };
        assert_eq!(req.mac, mac);
        // Three answers, each signed: all verify, and the stream is whole.
        let mut signer = Signer::new(&k, &req);
        let mut v = Verifier::new(&k, mac.clone());
        for i in 0..3 {
            let mut answer = message(7, 100 + i);
            signer.sign(&mut answer, 1_020, 0);
            v.check(&answer, 1_030).unwrap();
        }
        v.finish().unwrap();
        // Another key's answer, a changed byte, a stale time: refused.
        let mut answer = message(7, 50);
        Signer::new(&key(b"other"), &req).sign(&mut answer, 1_020, 0);
        assert_eq!(Verifier::new(&k, mac.clone()).check(&answer, 1_020), Err(VerifyError::BadSig));
        let mut answer = message(7, 50);
        Signer::new(&k, &req).sign(&mut answer, 1_020, 0);
        let mut flipped = answer.clone();
        flipped[14] ^= 1;
        assert_eq!(Verifier::new(&k, mac.clone()).check(&flipped, 1_020), Err(VerifyError::BadSig));
        assert_eq!(Verifier::new(&k, mac.clone()).check(&answer, 5_000), Err(VerifyError::BadTime));
        // An unsigned first answer, or an answer ending unsigned.
        assert_eq!(Verifier::new(&k, mac.clone()).check(&message(7, 50), 1_020), Err(VerifyError::Unsigned));
        let mut v = Verifier::new(&k, mac.clone());
        v.check(&answer, 1_020).unwrap();
        v.check(&message(7, 60), 1_020).unwrap();
        assert_eq!(v.finish(), Err(VerifyError::Unsigned));
        // A refusal of the request's signature carries its error, unsigned.
        let mut refusal = message(7, 10);
        append_unsigned(&mut refusal, &req, TsigError::BadKey);
        assert_eq!(Verifier::new(&k, mac).check(&refusal, 1_020), Err(VerifyError::Refused(17)));
    }

    #[test]
    fn unsigned_messages_between_signed_ones_are_covered_by_the_next_mac() {
        let k = key(b"secret");
        let mut request = message(9, 20);
        request[2] = 0;
        let request_mac = sign_request(&mut request, &k, 1_000);
        let Checked::Good(req) = check(&request, core::slice::from_ref(&k), 1_000) else { panic!("not good") };
        let mut first = message(9, 30);
        let mut signer = Signer::new(&k, &req);
        signer.sign(&mut first, 1_000, 0);
        // Two unsigned messages, then one signed over them (section 5.3.1).
        let (second, third) = (message(9, 40), message(9, 41));
        let mut last = message(9, 42);
        let mut mac = k.mac();
        mac.update(&(MAC_LEN as u16).to_be_bytes());
        mac.update(&signer.prior);
        mac.update(&second);
        mac.update(&third);
        mac.update(&last);
        mac.update(&1_000u64.to_be_bytes()[2..]);
        mac.update(&FUDGE.to_be_bytes());
        let digest = mac.finalize().into_bytes().to_vec();
        append_tsig(&mut last, &k.name, 1_000, &digest, 9, 0, &[]);
        let mut v = Verifier::new(&k, request_mac.clone());
        for m in [&first, &second, &third, &last] {
            v.check(m, 1_000).unwrap();
        }
        v.finish().unwrap();
        // Leave one unsigned message out: the last MAC no longer verifies.
        let mut v = Verifier::new(&k, request_mac);
        for m in [&first, &second] {
            v.check(m, 1_000).unwrap();
        }
        assert_eq!(v.check(&last, 1_000), Err(VerifyError::BadSig));
    }

    #[test]
    fn names_parse() {
        assert_eq!(parse_name("xfr-key").unwrap().as_slice(), b"\x07xfr-key\x00");
        assert_eq!(parse_name("a.b.").unwrap().as_slice(), b"\x01a\x01b\x00");
        assert!(parse_name("a..b").is_none());
    }
}
