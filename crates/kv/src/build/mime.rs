//! Content types from file extensions, and which types are worth
//! compressing.

/// The content type for files with no known extension.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Known extensions (compared without regard to ASCII case) and their
/// content types. Text types carry `charset=utf-8`.
const TYPES: &[(&str, &str)] = &[
    ("html", "text/html; charset=utf-8"),
    ("htm", "text/html; charset=utf-8"),
    ("css", "text/css; charset=utf-8"),
    ("js", "text/javascript; charset=utf-8"),
    ("mjs", "text/javascript; charset=utf-8"),
    ("txt", "text/plain; charset=utf-8"),
    ("json", "application/json"),
    ("map", "application/json"),
    ("xml", "application/xml"),
    ("svg", "image/svg+xml"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("gif", "image/gif"),
    ("webp", "image/webp"),
    ("ico", "image/x-icon"),
    ("woff", "font/woff"),
    ("woff2", "font/woff2"),
    ("wasm", "application/wasm"),
    ("pdf", "application/pdf"),
];

/// Content types that are not `text/*` but still compress well.
const COMPRESSIBLE: &[&str] =
    &["application/json", "application/xml", "image/svg+xml", "application/wasm", "image/x-icon"];

/// The content type for the file at `path` (only the last component's
/// extension counts), or [`DEFAULT_CONTENT_TYPE`].
pub fn content_type_for(path: &str) -> &'static str {
    let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
    let Some((_, extension)) = name.rsplit_once('.') else {
        return DEFAULT_CONTENT_TYPE;
    };
    TYPES.iter().find(|(known, _)| known.eq_ignore_ascii_case(extension)).map_or(DEFAULT_CONTENT_TYPE, |&(_, t)| t)
}

/// Whether bodies of `content_type` are worth trying to gzip: text and
/// text-like formats, not already compressed images, fonts or archives.
pub fn is_compressible(content_type: &str) -> bool {
    content_type.starts_with("text/") || COMPRESSIBLE.contains(&content_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions() {
        assert_eq!(content_type_for("/index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type_for("/INDEX.HTM"), "text/html; charset=utf-8");
        assert_eq!(content_type_for("/a.b/c.min.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type_for("/a.b/README"), DEFAULT_CONTENT_TYPE);
        assert_eq!(content_type_for("/x.tar.gz"), DEFAULT_CONTENT_TYPE);
        assert_eq!(content_type_for("/f.woff2"), "font/woff2");
        assert_eq!(content_type_for("/app.js.map"), "application/json");
    }

    #[test]
    fn compressible() {
        assert!(is_compressible(content_type_for("/a.css")));
        assert!(is_compressible(content_type_for("/a.svg")));
        assert!(!is_compressible(content_type_for("/a.png")));
        assert!(!is_compressible(content_type_for("/a.woff2")));
        assert!(!is_compressible(DEFAULT_CONTENT_TYPE));
    }
}
