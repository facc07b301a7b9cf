//! CORS as ingress-nginx does it (`enable-cors` and the `cors-*` annotations): the proxy
//! answers preflight `OPTIONS` requests itself with 204, and adds the CORS headers to the
//! responses of requests whose `Origin` is allowed.
//!
//! Values are parsed into origins, methods and header names; the response headers are
//! built from those, never from the annotation text.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// ingress-nginx's default `cors-allow-methods`.
pub const DEFAULT_METHODS: &str = "GET, PUT, POST, DELETE, PATCH, OPTIONS";
/// ingress-nginx's default `cors-allow-headers`.
pub const DEFAULT_HEADERS: &str = "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization";
/// ingress-nginx's default `cors-max-age` (20 days).
pub const DEFAULT_MAX_AGE: u32 = 1_728_000;

/// One allowed origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `*`: every origin. Alone in the list, the response says `*`; in a list with
    /// others, the request's origin is echoed (as ingress-nginx does).
    Any,
    /// `scheme://host[:port]`, compared case-insensitively.
    Exact(String),
    /// `scheme://*.suffix[:port]`: one or more labels before `suffix` (ingress-nginx
    /// turns `*.` into `[A-Za-z0-9\-]+\.`, which matches one label; we match one label
    /// too).
    Subdomain {
        /// `scheme://`.
        scheme: String,
        /// `.suffix[:port]`, lower case, with the leading dot.
        suffix: String,
    },
}

impl Origin {
    /// Parses one entry of `cors-allow-origin`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(Self::Any);
        }
        let lower = s.to_ascii_lowercase();
        let (scheme, rest) = lower
            .split_once("://")
            .filter(|(sch, _)| matches!(*sch, "http" | "https"))
            .ok_or_else(|| format!("{s:?}: want http(s)://host[:port] or *"))?;
        let (host, wildcard) = match rest.strip_prefix("*.") {
            Some(h) => (h, true),
            None => (rest, false),
        };
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        };
        let label_ok =
            |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if name.split('.').any(|l| !label_ok(l))
            || port.is_some_and(|p| p.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(format!("{s:?}: not a valid origin"));
        }
        Ok(if wildcard {
            Self::Subdomain {
                scheme: format!("{scheme}://"),
                suffix: format!(".{host}"),
            }
        } else {
            Self::Exact(lower)
        })
    }

    /// Whether the request's `Origin` header value is this origin.
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(o) => o.eq_ignore_ascii_case(origin),
            Self::Subdomain { scheme, suffix } => {
                let origin = origin.to_ascii_lowercase();
                let Some(rest) = origin.strip_prefix(scheme.as_str()) else {
                    return false;
                };
                let Some(label) = rest.strip_suffix(suffix.as_str()) else {
                    return false;
                };
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }
        }
    }
}

/// A route's CORS policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cors {
    /// `cors-allow-origin` (default `*`).
    pub origins: Vec<Origin>,
    /// `cors-allow-methods`.
    pub methods: Vec<Method>,
    /// `cors-allow-headers`.
    pub headers: Vec<HeaderName>,
    /// `cors-expose-headers` (`*` allowed); empty sends none.
    pub expose: Vec<String>,
    /// `cors-allow-credentials` (default true).
    pub credentials: bool,
    /// `cors-max-age` in seconds.
    pub max_age: u32,
}

impl Default for Cors {
    fn default() -> Self {
        Self {
            origins: vec![Origin::Any],
            methods: parse_methods(DEFAULT_METHODS).unwrap_or_default(),
            headers: parse_headers(DEFAULT_HEADERS).unwrap_or_default(),
            expose: Vec::new(),
            credentials: true,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

/// Parses `cors-allow-origin`: a comma-separated list.
pub fn parse_origins(v: &str) -> Result<Vec<Origin>, String> {
    let list: Vec<Origin> = v
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(Origin::parse)
        .collect::<Result<_, _>>()?;
    if list.is_empty() {
        return Err("empty list".into());
    }
    Ok(list)
}

/// Parses `cors-allow-methods`: comma-separated method names.
pub fn parse_methods(v: &str) -> Result<Vec<Method>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|m| {
            if m.bytes().all(|b| b.is_ascii_alphabetic()) {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("{m:?} is not a method"))
            } else {
                Err(format!("{m:?} is not a method"))
            }
        })
        .collect()
}

/// Parses `cors-allow-headers`: comma-separated header names.
pub fn parse_headers(v: &str) -> Result<Vec<HeaderName>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|h| {
            HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("{h:?} is not a header name"))
        })
        .collect()
}

/// Parses `cors-expose-headers`: header names or `*`, kept as written.
pub fn parse_expose(v: &str) -> Result<Vec<String>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|h| {
            if h == "*" || HeaderName::from_bytes(h.as_bytes()).is_ok() {
                Ok(h.to_string())
            } else {
                Err(format!("{h:?} is not a header name"))
            }
        })
        .collect()
}

/// What CORS makes of one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not a CORS request we allow: proxied untouched.
    Pass,
    /// Answer 204 with these headers without asking the backend.
    Preflight(HeaderMap),
    /// Proxy it and add these headers to the response.
    Decorate(HeaderMap),
}

impl Cors {
    /// The decision for a request with `method` and `origin` (the `Origin` header). As in
    /// ingress-nginx, any `OPTIONS` request from an allowed origin is a preflight, and
    /// with `*` every request is decorated, with or without an `Origin`.
    pub fn decide(&self, method: &Method, origin: Option<&HeaderValue>) -> Decision {
        let origin = origin.and_then(|o| o.to_str().ok());
        let any = self.origins == [Origin::Any];
        let allow_origin = if any {
            HeaderValue::from_static("*")
        } else {
            match origin {
                Some(o) if self.origins.iter().any(|x| x.matches(o)) => {
                    match HeaderValue::from_str(o) {
                        Ok(v) => v,
                        Err(_) => return Decision::Pass,
                    }
                }
                _ => return Decision::Pass,
            }
        };
        let mut h = HeaderMap::new();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        let join = |items: Vec<&str>| HeaderValue::from_str(&items.join(", ")).ok();
        if let Some(v) = join(self.methods.iter().map(Method::as_str).collect()) {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        if let Some(v) = join(self.headers.iter().map(HeaderName::as_str).collect()) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if !self.expose.is_empty()
            && let Some(v) = join(self.expose.iter().map(String::as_str).collect())
        {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(self.max_age),
        );
        if method == Method::OPTIONS {
            // nginx also sends `Content-Length: 0`; a 204 must not carry one (RFC 9110
            // 8.6), and hyper leaves it out on its own.
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain charset=UTF-8"),
            );
            Decision::Preflight(h)
        } else {
            Decision::Decorate(h)
        }
    }
}

/// The status of a preflight answer.
pub const PREFLIGHT_STATUS: StatusCode = StatusCode::NO_CONTENT;

#[cfg(test)]
mod tests {
    use super::*;

    fn o(s: &str) -> Origin {
        Origin::parse(s).expect("origin")
    }

    #[test]
    fn origins_match_exactly_or_one_subdomain_label() {
        assert!(o("https://example.com").matches("https://EXAMPLE.com"));
        assert!(!o("https://example.com").matches("http://example.com"));
        assert!(!o("https://example.com").matches("https://example.com.evil.io"));
        assert!(!o("https://example.com").matches("https://evil.io/https://example.com"));
        let w = o("https://*.example.com");
        assert!(w.matches("https://app.example.com"));
        assert!(!w.matches("https://example.com"));
        assert!(!w.matches("https://a.b.example.com"));
        assert!(!w.matches("https://evilexample.com"));
        assert!(!w.matches("http://app.example.com"));
        let p = o("http://*.local.test:8080");
        assert!(p.matches("http://x.local.test:8080"));
        assert!(!p.matches("http://x.local.test"));
        assert!(o("*").matches("anything"));
        for bad in [
            "example.com",
            "ftp://x.com",
            "https://",
            "https://a b",
            "https://x:99999",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decisions() {
        let any = Cors::default();
        let Decision::Preflight(h) = any.decide(&Method::OPTIONS, None) else {
            panic!("preflight");
        };
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], DEFAULT_METHODS);
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "dnt, keep-alive, user-agent, x-requested-with, if-modified-since, cache-control, content-type, range, authorization"
        );
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "1728000");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(!h.contains_key(header::ACCESS_CONTROL_EXPOSE_HEADERS));

        let listed = Cors {
            origins: parse_origins("https://a.com, https://*.b.com").expect("origins"),
            credentials: false,
            expose: parse_expose("X-Total, X-Page").expect("expose"),
            ..Cors::default()
        };
        let origin = HeaderValue::from_static("https://x.b.com");
        let Decision::Decorate(h) = listed.decide(&Method::GET, Some(&origin)) else {
            panic!("decorate");
        };
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://x.b.com");
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "X-Total, X-Page");
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        let evil = HeaderValue::from_static("https://evil.com");
        assert_eq!(listed.decide(&Method::OPTIONS, Some(&evil)), Decision::Pass);
        assert_eq!(listed.decide(&Method::GET, None), Decision::Pass);
        // `*` in a longer list admits every origin but echoes it.
        let mixed = Cors {
            origins: parse_origins("https://a.com, *").expect("origins"),
            ..Cors::default()
        };
        let Decision::Decorate(h) = mixed.decide(&Method::GET, Some(&evil)) else {
            panic!("decorate");
        };
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://evil.com");
    }

    #[test]
    fn parsing() {
        assert_eq!(
            parse_methods("get, POST").expect("methods"),
            vec![Method::GET, Method::POST]
        );
        assert!(parse_methods("GET; rm -rf").is_err());
        assert!(parse_headers("X-A, bad header").is_err());
        assert!(parse_origins(" , ").is_err());
    }
}
