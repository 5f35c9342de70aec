//! A small router: method and path to an async handler.
//!
//! ```ignore
//! use skiff::http::{Body, Method, Request, Response, Router, StaticFiles, Status};
//!
//! let files = StaticFiles::new(skiff::kv::include_store!("site.kv")?);
//! let router = Router::new()
//!     .route(Method::Get, "/hello", |_req: Request| async { Response::text(Status::OK, "hello\n") })
//!     .route(Method::Post, "/echo", |req: Request| async move {
//!         Response::new(Status::OK).body(Body::Bytes(req.body))
//!     })
//!     .route(Method::Get, "/static/*", files) // a prefix
//!     .fallback(|_req: Request| async { Response::error(Status::NOT_FOUND) });
//! ```
//!
//! A path that some route matches with another method gets 405 with an
//! `Allow` header; HEAD is answered by a GET route (the server drops the
//! body); a path no route matches goes to the fallback, or gets 404.

use crate::request::{Method, Request};
use crate::response::Response;
use crate::server::{BoxFuture, Handler};
use crate::status::Status;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::future::Future;

type Boxed = Box<dyn Fn(Request) -> BoxFuture>;

fn boxed<H: Handler + 'static>(handler: H) -> Boxed {
    let handler = alloc::rc::Rc::new(handler);
    Box::new(move |req| {
        let h = handler.clone();
        Box::pin(async move { h.handle(req).await })
    })
}

/// A path pattern: exact, or a prefix ending in `/*`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(p: &str) -> Pattern {
        match p.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.into()),
            None => Pattern::Exact(p.into()),
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Pattern::Exact(p) => p == path,
            Pattern::Prefix(p) => path.starts_with(p.as_str()) || path == p.trim_end_matches('/'),
        }
    }
}

/// Routes requests to handlers by method and path.
pub struct Router {
    routes: Vec<(Method, Pattern, Boxed)>,
    fallback: Option<Boxed>,
}

impl Default for Router {
    fn default() -> Self {
        Router::new()
    }
}

impl Router {
    /// No routes: everything is 404.
    pub fn new() -> Router {
        Router { routes: Vec::new(), fallback: None }
    }

    /// Adds a route; earlier routes win. `path` is exact, or a prefix when
    /// it ends in `*` (`/static/*`).
    pub fn route<H: Handler + 'static>(mut self, method: Method, path: &str, handler: H) -> Router {
        self.routes.push((method, Pattern::parse(path), boxed(handler)));
        self
    }

    /// What answers paths no route matches (default: 404).
    pub fn fallback<H: Handler + 'static>(mut self, handler: H) -> Router {
        self.fallback = Some(boxed(handler));
        self
    }

    fn dispatch(&self, req: Request) -> BoxFuture {
        let path = req.path();
        let method = req.method();
        let wanted = if method == Method::Head { Method::Get } else { method };
        let mut allowed: Vec<Method> = Vec::new();
        for (m, pattern, handler) in &self.routes {
            if !pattern.matches(path) {
                continue;
            }
            if *m == method || *m == wanted {
                return handler(req);
            }
            if !allowed.contains(m) {
                allowed.push(*m);
            }
        }
        if !allowed.is_empty() {
            if allowed.contains(&Method::Get) && !allowed.contains(&Method::Head) {
                allowed.push(Method::Head);
            }
            let allow: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
            let response = Response::error(Status::METHOD_NOT_ALLOWED).header("allow", allow.join(", ").into_bytes());
            return Box::pin(async move { response });
        }
        match &self.fallback {
            Some(f) => f(req),
            None => Box::pin(async { Response::error(Status::NOT_FOUND) }),
        }
    }
}

impl Handler for Router {
    fn handle(&self, request: Request) -> impl Future<Output = Response> {
        self.dispatch(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let exact = Pattern::parse("/a/b");
        assert!(exact.matches("/a/b"));
        assert!(!exact.matches("/a/b/") && !exact.matches("/a") && !exact.matches("/a/bc"));
        let prefix = Pattern::parse("/static/*");
        assert_eq!(prefix, Pattern::Prefix("/static/".into()));
        assert!(prefix.matches("/static/") && prefix.matches("/static/a/b") && prefix.matches("/static"));
        assert!(!prefix.matches("/staticx") && !prefix.matches("/"));
        let all = Pattern::parse("/*");
        assert!(all.matches("/") && all.matches("/anything"));
    }
}
