//! Header fields: an ordered list, looked up case-insensitively.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;

/// Header fields in the order they came or will be sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    fields: Vec<(Cow<'static, str>, Cow<'static, [u8]>)>,
}

impl Headers {
    /// No fields.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Fields parsed from a message (copied).
    pub fn from_fields<'a>(fields: impl Iterator<Item = (&'a str, &'a [u8])>) -> Headers {
        Headers { fields: fields.map(|(n, v)| (Cow::Owned(String::from(n)), Cow::Owned(v.to_vec()))).collect() }
    }

    /// Adds a field (after any with the same name).
    pub fn append(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Cow<'static, [u8]>>) {
        self.fields.push((name.into(), value.into()));
    }

    /// Replaces every field named `name` with one.
    pub fn set(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Cow<'static, [u8]>>) {
        let name = name.into();
        self.remove(&name);
        self.fields.push((name, value.into()));
    }

    /// Removes every field named `name`.
    pub fn remove(&mut self, name: &str) {
        self.fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.get_all(name).next()
    }

    /// The first value of `name`, if it is UTF-8, trimmed.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| core::str::from_utf8(v).ok()).map(str::trim)
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.fields.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| &v[..])
    }

    /// Whether a field named `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// All fields.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|(n, v)| (&n[..], &v[..]))
    }

    /// How many fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Whether a comma-separated header value lists `token` (case-insensitive),
/// ignoring parameters after `;`.
pub fn lists_token(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_without_regard_to_case() {
        let mut h = Headers::new();
        h.append("Accept", &b"a"[..]);
        h.append("accept", &b"b"[..]);
        h.append("X-Pad", &b"  v  "[..]);
        assert_eq!(h.get("ACCEPT"), Some(&b"a"[..]));
        assert_eq!(h.get_all("accept").collect::<Vec<_>>(), [&b"a"[..], &b"b"[..]]);
        assert_eq!(h.get_str("x-pad"), Some("v"));
        h.set("ACCEPT", &b"c"[..]);
        assert_eq!(h.get_all("accept").collect::<Vec<_>>(), [&b"c"[..]]);
        h.remove("x-PAD");
        assert!(!h.contains("x-pad"));
        assert_eq!(h.len(), 1);
        h.append("bin", &b"\xff"[..]);
        assert_eq!(h.get_str("bin"), None);
    }

    #[test]
    fn token_lists() {
        assert!(lists_token("keep-alive, Close", "close"));
        assert!(lists_token("gzip;q=1", "gzip"));
        assert!(!lists_token("closed", "close"));
        assert!(!lists_token("", "close"));
    }
}
