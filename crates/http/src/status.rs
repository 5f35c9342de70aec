//! Status codes.

use core::fmt;

/// An HTTP status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Status(pub u16);

impl Status {
    /// 100 Continue
    pub const CONTINUE: Status = Status(100);
    /// 200 OK
    pub const OK: Status = Status(200);
    /// 201 Created
    pub const CREATED: Status = Status(201);
    /// 204 No Content
    pub const NO_CONTENT: Status = Status(204);
    /// 206 Partial Content
    pub const PARTIAL_CONTENT: Status = Status(206);
    /// 301 Moved Permanently
    pub const MOVED_PERMANENTLY: Status = Status(301);
    /// 302 Found
    pub const FOUND: Status = Status(302);
    /// 304 Not Modified
    pub const NOT_MODIFIED: Status = Status(304);
    /// 308 Permanent Redirect
    pub const PERMANENT_REDIRECT: Status = Status(308);
    /// 400 Bad Request
    pub const BAD_REQUEST: Status = Status(400);
    /// 403 Forbidden
    pub const FORBIDDEN: Status = Status(403);
    /// 404 Not Found
    pub const NOT_FOUND: Status = Status(404);
    /// 405 Method Not Allowed
    pub const METHOD_NOT_ALLOWED: Status = Status(405);
    /// 408 Request Timeout
    pub const REQUEST_TIMEOUT: Status = Status(408);
    /// 411 Length Required
    pub const LENGTH_REQUIRED: Status = Status(411);
    /// 412 Precondition Failed
    pub const PRECONDITION_FAILED: Status = Status(412);
    /// 413 Content Too Large
    pub const PAYLOAD_TOO_LARGE: Status = Status(413);
    /// 414 URI Too Long
    pub const URI_TOO_LONG: Status = Status(414);
    /// 416 Range Not Satisfiable
    pub const RANGE_NOT_SATISFIABLE: Status = Status(416);
    /// 431 Request Header Fields Too Large
    pub const HEADERS_TOO_LARGE: Status = Status(431);
    /// 500 Internal Server Error
    pub const INTERNAL_SERVER_ERROR: Status = Status(500);
    /// 501 Not Implemented
    pub const NOT_IMPLEMENTED: Status = Status(501);
    /// 502 Bad Gateway
    pub const BAD_GATEWAY: Status = Status(502);
    /// 503 Service Unavailable
    pub const SERVICE_UNAVAILABLE: Status = Status(503);
    /// 505 HTTP Version Not Supported
    pub const VERSION_NOT_SUPPORTED: Status = Status(505);
    /// 507 Insufficient Storage
    pub const INSUFFICIENT_STORAGE: Status = Status(507);

    /// The standard reason phrase.
    pub fn reason(self) -> &'static str {
        match self.0 {
            100 => "Continue",
            101 => "Switching Protocols",
            200 => "OK",
            201 => "Created",
            202 => "Accepted",
            204 => "No Content",
            206 => "Partial Content",
            301 => "Moved Permanently",
            302 => "Found",
            303 => "See Other",
            304 => "Not Modified",
            307 => "Temporary Redirect",
            308 => "Permanent Redirect",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            406 => "Not Acceptable",
            408 => "Request Timeout",
            409 => "Conflict",
            410 => "Gone",
            411 => "Length Required",
            412 => "Precondition Failed",
            413 => "Content Too Large",
            414 => "URI Too Long",
            415 => "Unsupported Media Type",
            416 => "Range Not Satisfiable",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            505 => "HTTP Version Not Supported",
            507 => "Insufficient Storage",
            _ => "Unknown",
        }
    }

    /// Whether a response with this status never has a body (1xx, 204,
    /// 304).
    pub fn has_no_body(self) -> bool {
        self.0 < 200 || self.0 == 204 || self.0 == 304
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_bodies() {
        assert_eq!(alloc::format!("{}", Status::URI_TOO_LONG), "414 URI Too Long");
        assert_eq!(Status(799).reason(), "Unknown");
        for no_body in [100, 101, 199, 204, 304] {
            assert!(Status(no_body).has_no_body(), "{no_body}");
        }
        for body in [200, 206, 301, 404, 500] {
            assert!(!Status(body).has_no_body(), "{body}");
        }
    }
}
