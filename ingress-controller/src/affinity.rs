//! Cookie session affinity as ingress-nginx's `affinity: cookie` does it: the first
//! response sets a cookie naming the endpoint (by a hash, so no address leaks to the
//! client), and later requests carrying it go to that endpoint for as long as it is among
//! the ready endpoints. When it is gone, a new endpoint is picked and the cookie replaced.

use std::net::SocketAddr;

use http::HeaderValue;
use http::header::{COOKIE, HeaderMap};
use sha1::{Digest as _, Sha1};

/// ingress-nginx's default `session-cookie-name`.
pub const DEFAULT_COOKIE: &str = "INGRESSCOOKIE";

/// `affinity: cookie` and its `session-cookie-*` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieAffinity {
    /// `session-cookie-name`.
    pub name: String,
    /// `session-cookie-max-age` in seconds; `None` makes a session cookie.
    pub max_age: Option<u64>,
    /// `session-cookie-path`; `None` uses the route's path.
    pub path: Option<String>,
}

impl Default for CookieAffinity {
    fn default() -> Self {
        Self {
            name: DEFAULT_COOKIE.to_string(),
            max_age: None,
            path: None,
        }
    }
}

/// The cookie value naming `ep`: a hash, stable across controller restarts and replicas.
pub fn token(ep: SocketAddr) -> String {
    let digest: [u8; 20] = Sha1::digest(ep.to_string().as_bytes()).into();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl CookieAffinity {
    /// The value of our cookie in the request, if any.
    pub fn requested<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == self.name)
            .map(|(_, v)| v)
    }

    /// The ready endpoint the request is stuck to, if it still is one.
    pub fn sticky(&self, headers: &HeaderMap, endpoints: &[SocketAddr]) -> Option<SocketAddr> {
        let want = self.requested(headers)?;
        endpoints.iter().copied().find(|ep| token(*ep) == want)
    }

    /// The `Set-Cookie` value sticking the client to `ep`; `route_path` is the default
    /// path.
    pub fn set_cookie(&self, ep: SocketAddr, route_path: &str) -> Option<HeaderValue> {
        let path = self.path.as_deref().unwrap_or(route_path);
        let mut v = format!("{}={}; Path={path}", self.name, token(ep));
        if let Some(age) = self.max_age {
            v.push_str(&format!("; Max-Age={age}"));
        }
        v.push_str("; HttpOnly");
        HeaderValue::from_str(&v).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn sticks_while_the_endpoint_is_ready() {
        let a = CookieAffinity {
            name: "route".into(),
            max_age: Some(3600),
            path: None,
        };
        let eps = [ep("10.0.0.1:80"), ep("10.0.0.2:80")];
        let mut h = HeaderMap::new();
        assert_eq!(a.sticky(&h, &eps), None);
        let set = a.set_cookie(eps[1], "/app").expect("cookie");
        let set = set.to_str().expect("ascii");
        assert!(set.starts_with("route="), "{set}");
        assert!(
            set.ends_with("; Path=/app; Max-Age=3600; HttpOnly"),
            "{set}"
        );
        assert!(!set.contains("10.0.0.2"), "{set}");
        let value = set
            .split(';')
            .next()
            .and_then(|kv| kv.split_once('='))
            .map(|(_, v)| v.to_string())
            .expect("value");
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("other=1; route={value}")).expect("header"),
        );
        assert_eq!(a.sticky(&h, &eps), Some(eps[1]));
        // Gone from the ready endpoints: no longer sticky.
        assert_eq!(a.sticky(&h, &eps[..1]), None);
        // Another cookie name does not count.
        let b = CookieAffinity::default();
        assert_eq!(b.sticky(&h, &eps), None);
        assert_eq!(
            b.set_cookie(eps[0], "/")
                .expect("cookie")
                .to_str()
                .expect("ascii")
                .split_once('=')
                .map(|(k, _)| k),
            Some("INGRESSCOOKIE")
        );
    }
}
