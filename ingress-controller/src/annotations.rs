//! `nginx.ingress.kubernetes.io/*` annotations parsed into typed values, for users coming
//! from ingress-nginx.
//!
//! Each value is parsed on its own: a bad one is reported and ignored (the Ingress keeps
//! its routes with that setting at its default), so one typo never takes routes down.
//! Nothing here is ever pasted into a configuration language: values become numbers,
//! durations, URIs and address ranges, and the data plane acts on those. Snippet
//! annotations (raw nginx configuration) and the annotations we do not implement are
//! reported by name and otherwise ignored.
//!
//! Supported: `rewrite-target`, `use-regex`, `ssl-redirect`, `force-ssl-redirect`,
//! `proxy-body-size`, `proxy-{connect,read,send}-timeout`, `backend-protocol`, `canary*`,
//! `permanent-redirect(-code)`, `app-root`, `load-balance`, `allowlist-source-range`,
//! `enable-cors` and `cors-*` ([`crate::cors`]), `limit-rps`, `limit-rpm`,
//! `limit-connections`, `limit-burst-multiplier`, `limit-whitelist`
//! ([`crate::ratelimit`]), `auth-type: basic`, `auth-secret(-type)`, `auth-realm`
//! ([`crate::auth`]; unusable auth settings fail closed instead of being ignored), and
//! `affinity: cookie` with `session-cookie-{name,max-age,path}` ([`crate::affinity`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// The annotation prefix of ingress-nginx.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// The protocol spoken to the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendProtocol {
    /// HTTP/1.1 (upgrades allowed).
    #[default]
    Http,
    /// HTTP/2 with prior knowledge, cleartext (`GRPC` and `H2C`).
    H2c,
}

/// A canary: a second backend for the same host and path, chosen per request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CanaryConfig {
    /// Share of requests sent to the canary, out of `weight_total`.
    pub weight: u32,
    /// `canary-weight-total` (default 100).
    pub weight_total: u32,
    /// Requests with this header set to `always` (or to `header_value`) go to the canary;
    /// `never` keeps them off it.
    pub header: Option<http::HeaderName>,
    /// `canary-by-header-value`.
    pub header_value: Option<String>,
    /// Requests with this cookie set to `always` go to the canary, `never` keep off it.
    pub cookie: Option<String>,
}

/// An IPv4 or IPv6 network (`10.0.0.0/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `::1/128` or a bare address.
    pub fn parse(s: &str) -> Option<Self> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Self { addr, prefix })
    }

    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The settings one Ingress's annotations give its routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `rewrite-target`: the path sent upstream instead of the request's.
    pub rewrite_target: Option<String>,
    /// `ssl-redirect` (default true): HTTP requests for TLS hosts get a 308 to HTTPS.
    pub ssl_redirect: bool,
    /// `force-ssl-redirect`: redirect to HTTPS even for hosts without TLS.
    pub force_ssl_redirect: bool,
    /// `proxy-body-size` in bytes; `Some(0)` is unlimited, `None` the controller default.
    pub body_size: Option<u64>,
    /// `proxy-connect-timeout`.
    pub connect_timeout: Option<Duration>,
    /// `proxy-read-timeout`: how long to wait for the backend's response headers.
    pub read_timeout: Option<Duration>,
    /// `proxy-send-timeout`: how long sending the request body may take.
    pub send_timeout: Option<Duration>,
    /// `backend-protocol`.
    pub backend_protocol: BackendProtocol,
    /// `canary: "true"` and its settings.
    pub canary: Option<CanaryConfig>,
    /// `permanent-redirect` target and `permanent-redirect-code` (default 301).
    pub permanent_redirect: Option<(http::Uri, http::StatusCode)>,
    /// `app-root`: requests for `/` are redirected (302) here.
    pub app_root: Option<String>,
    /// `load-balance`: how endpoints are chosen (the controller's `--load-balance` when
    /// unset).
    pub load_balance: Option<crate::balancer::Policy>,
    /// `allowlist-source-range` (or the older `whitelist-source-range`): clients outside
    /// get 403. Empty allows everyone.
    pub allow_source: Vec<Cidr>,
    /// `use-regex`: the paths of this Ingress's hosts are regular expressions (see
    /// [`crate::routing`] for how a whole host switches to regex matching).
    pub use_regex: bool,
    /// `enable-cors` and the `cors-*` settings.
    pub cors: Option<crate::cors::Cors>,
    /// `limit-rps`, `limit-rpm`, `limit-connections` and their settings.
    pub limits: crate::ratelimit::Limits,
    /// `auth-type` and its settings; `Some` as soon as any of them is set, so a broken
    /// setting fails closed.
    pub auth: Option<AuthConfig>,
    /// `affinity: cookie` and its settings.
    pub affinity: Option<crate::affinity::CookieAffinity>,
}

/// Where the users of a basic-auth route come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthConfig {
    /// `auth-type: basic` with a usable `auth-secret`.
    Basic {
        /// The Secret's namespace (`None`: the Ingress's) and name.
        secret: (Option<String>, String),
        /// `auth-secret-type`.
        secret_type: crate::auth::SecretType,
        /// `auth-realm`.
        realm: String,
    },
    /// Authentication was asked for but its annotations are unusable (reported): the
    /// routes answer 503 rather than serve without it.
    Broken,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rewrite_target: None,
            ssl_redirect: true,
            force_ssl_redirect: false,
            body_size: None,
            connect_timeout: None,
            read_timeout: None,
            send_timeout: None,
            backend_protocol: BackendProtocol::Http,
            canary: None,
            permanent_redirect: None,
            app_root: None,
            load_balance: None,
            allow_source: Vec::new(),
            use_regex: false,
            cors: None,
            limits: crate::ratelimit::Limits::default(),
            auth: None,
            affinity: None,
        }
    }
}

/// Why an annotation was not applied.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Problem {
    /// A snippet of raw nginx configuration: never applied, by design.
    Snippet,
    /// An ingress-nginx annotation ferrokube does not implement.
    Unsupported,
    /// The value could not be parsed; the reason.
    Invalid(String),
    /// An authentication setting is unusable (the reason): the Ingress's routes answer
    /// 503 rather than serve without the authentication asked for.
    FailClosed(String),
}

/// An annotation that was not applied.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    /// The full annotation key.
    pub annotation: String,
    /// Why.
    pub problem: Problem,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.problem {
            Problem::Snippet => write!(
                f,
                "{}: snippet annotations are never applied",
                self.annotation
            ),
            Problem::Unsupported => write!(f, "{}: not supported, ignored", self.annotation),
            Problem::Invalid(why) => {
                write!(f, "{}: invalid value ({why}), ignored", self.annotation)
            }
            Problem::FailClosed(why) => write!(
                f,
                "{}: {why}; the Ingress's routes answer 503 until this is fixed",
                self.annotation
            ),
        }
    }
}

/// Parses the annotations of one Ingress.
pub fn parse(annotations: &BTreeMap<String, String>) -> (Config, Vec<Warning>) {
    let mut config = Config::default();
    let mut warnings = Vec::new();
    let mut canary = CanaryConfig {
        weight_total: 100,
        ..CanaryConfig::default()
    };
    let mut is_canary = false;
    let mut redirect_code = http::StatusCode::MOVED_PERMANENTLY;
    let mut redirect: Option<http::Uri> = None;
    let mut cors = crate::cors::Cors::default();
    // `None` after parsing means unset; `Some(Err)` invalid (already reported).
    let mut auth_type: Option<Result<(), ()>> = None;
    let mut auth_secret: Option<Result<(Option<String>, String), ()>> = None;
    let mut auth_secret_type = crate::auth::SecretType::AuthFile;
    let mut auth_realm = String::new();
    let mut affinity = crate::affinity::CookieAffinity::default();
    let mut cookie_affinity = false;
    let mut enable_cors = false;
    for (key, value) in annotations {
        let Some(name) = key.strip_prefix(PREFIX) else {
            continue;
        };
        let value = value.trim();
        let result: Result<(), String> = match name {
            "rewrite-target" => path_value(value).map(|p| config.rewrite_target = Some(p)),
            "ssl-redirect" => boolean(value).map(|b| config.ssl_redirect = b),
            "force-ssl-redirect" => boolean(value).map(|b| config.force_ssl_redirect = b),
            "proxy-body-size" => size(value).map(|s| config.body_size = Some(s)),
            "proxy-connect-timeout" => seconds(value).map(|d| config.connect_timeout = Some(d)),
            "proxy-read-timeout" => seconds(value).map(|d| config.read_timeout = Some(d)),
            "proxy-send-timeout" => seconds(value).map(|d| config.send_timeout = Some(d)),
            "backend-protocol" => match value.to_ascii_uppercase().as_str() {
                "HTTP" => Ok(BackendProtocol::Http),
                "GRPC" | "H2C" => Ok(BackendProtocol::H2c),
                other => Err(format!("{other:?} is not one of HTTP, GRPC, H2C")),
            }
            .map(|p| config.backend_protocol = p),
            "canary" => boolean(value).map(|b| is_canary = b),
            "canary-weight" => number(value, 0, u32::MAX).map(|w| canary.weight = w),
            "canary-weight-total" => number(value, 1, u32::MAX).map(|w| canary.weight_total = w),
            "canary-by-header" => http::HeaderName::from_bytes(value.as_bytes())
                .map(|h| canary.header = Some(h))
                .map_err(|_| "not a valid header name".to_string()),
            "canary-by-header-value" => printable(value).map(|v| canary.header_value = Some(v)),
            "canary-by-cookie" => cookie_name(value).map(|c| canary.cookie = Some(c)),
            "permanent-redirect" => absolute_url(value).map(|u| redirect = Some(u)),
            "permanent-redirect-code" => number(value, 300, 308)
                .ok()
                .and_then(|c| u16::try_from(c).ok())
                .and_then(|c| http::StatusCode::from_u16(c).ok())
                .filter(|c| c.is_redirection())
                .map(|c| redirect_code = c)
                .ok_or_else(|| "want a redirect status code (300-308)".to_string()),
            "app-root" => path_value(value).map(|p| config.app_root = Some(p)),
            "load-balance" => crate::balancer::Policy::parse(value)
                .map(|p| config.load_balance = Some(p))
                .ok_or_else(|| "want round_robin, ewma or least_request".to_string()),
            "allowlist-source-range" | "whitelist-source-range" => {
                cidrs(value).map(|v| config.allow_source = v)
            }
            "use-regex" => boolean(value).map(|b| config.use_regex = b),
            "enable-cors" => boolean(value).map(|b| enable_cors = b),
            "cors-allow-origin" => crate::cors::parse_origins(value).map(|o| cors.origins = o),
            "cors-allow-methods" => crate::cors::parse_methods(value).map(|m| cors.methods = m),
            "cors-allow-headers" => crate::cors::parse_headers(value).map(|h| cors.headers = h),
            "cors-expose-headers" => crate::cors::parse_expose(value).map(|h| cors.expose = h),
            "cors-allow-credentials" => boolean(value).map(|b| cors.credentials = b),
            // 0 turns a limit off, as in ingress-nginx.
            "limit-rps" => {
                number(value, 0, u32::MAX).map(|n| config.limits.rps = (n > 0).then_some(n))
            }
            "limit-rpm" => {
                number(value, 0, u32::MAX).map(|n| config.limits.rpm = (n > 0).then_some(n))
            }
            "limit-connections" => {
                number(value, 0, u32::MAX).map(|n| config.limits.connections = (n > 0).then_some(n))
            }
            "limit-burst-multiplier" => {
                number(value, 1, 1000).map(|n| config.limits.burst_multiplier = n)
            }
            "limit-whitelist" => cidrs(value).map(|v| config.limits.whitelist = v),
            "affinity" => match value {
                "cookie" => {
                    cookie_affinity = true;
                    Ok(())
                }
                _ => Err("want cookie".into()),
            },
            "session-cookie-name" => cookie_name(value).map(|n| affinity.name = n),
            "session-cookie-max-age" => value
                .parse::<u64>()
                .map(|n| affinity.max_age = Some(n))
                .map_err(|_| "want whole seconds".into()),
            "session-cookie-path" => path_value(value)
                .and_then(|p| {
                    if p.contains(';') {
                        Err("must not contain ;".into())
                    } else {
                        Ok(p)
                    }
                })
                .map(|p| affinity.path = Some(p)),
            // Broken auth settings fail closed, so they are reported as such and not as
            // "ignored".
            "auth-type" => {
                let r: Result<(), String> = match value {
                    "basic" => Ok(()),
                    "digest" => Err("digest authentication is not supported".into()),
                    _ => Err("want basic".into()),
                };
                auth_type = Some(r.clone().map_err(|_| ()));
                if let Err(why) = r {
                    warnings.push(Warning {
                        annotation: key.clone(),
                        problem: Problem::FailClosed(why),
                    });
                }
                continue;
            }
            "auth-secret" => {
                let r = secret_ref(value);
                auth_secret = Some(r.clone().map_err(|_| ()));
                if let Err(why) = r {
                    warnings.push(Warning {
                        annotation: key.clone(),
                        problem: Problem::FailClosed(why),
                    });
                }
                continue;
            }
            "auth-secret-type" => match value {
                "auth-file" => Ok(crate::auth::SecretType::AuthFile),
                "auth-map" => Ok(crate::auth::SecretType::AuthMap),
                _ => Err("want auth-file or auth-map".into()),
            }
            .map(|t| auth_secret_type = t),
            "auth-realm" => realm(value).map(|r| auth_realm = r),
            "cors-max-age" => number(value, 0, u32::MAX).map(|n| cors.max_age = n),
            n if n.ends_with("-snippet") || n == "configuration-snippet" => {
                warnings.push(Warning {
                    annotation: key.clone(),
                    problem: Problem::Snippet,
                });
                continue;
            }
            _ => {
                warnings.push(Warning {
                    annotation: key.clone(),
                    problem: Problem::Unsupported,
                });
                continue;
            }
        };
        if let Err(why) = result {
            warnings.push(Warning {
                annotation: key.clone(),
                problem: Problem::Invalid(why),
            });
        }
    }
    if is_canary {
        config.canary = Some(canary);
    }
    if enable_cors {
        config.cors = Some(cors);
    }
    if cookie_affinity {
        config.affinity = Some(affinity);
    }
    config.auth = match (auth_type, auth_secret) {
        (None, None) => None,
        (Some(Ok(())), Some(Ok(secret))) => Some(AuthConfig::Basic {
            secret,
            secret_type: auth_secret_type,
            realm: auth_realm,
        }),
        (Some(Ok(())), None) => {
            warnings.push(Warning {
                annotation: format!("{PREFIX}auth-secret"),
                problem: Problem::FailClosed("auth-type basic needs auth-secret".into()),
            });
            Some(AuthConfig::Broken)
        }
        // ingress-nginx serves without authentication here; an auth-secret says the
        // author wanted it, so we fail closed instead.
        (None, Some(_)) => {
            warnings.push(Warning {
                annotation: format!("{PREFIX}auth-type"),
                problem: Problem::FailClosed("auth-secret is set but auth-type is not".into()),
            });
            Some(AuthConfig::Broken)
        }
        // Either one is invalid (reported above): never serve without the auth asked for.
        _ => Some(AuthConfig::Broken),
    };
    config.permanent_redirect = redirect.map(|u| (u, redirect_code));
    // Capture references only mean something when the paths are regexes: without
    // `use-regex`, report it rather than send `$1` upstream literally.
    if let Some(t) = &config.rewrite_target
        && t.contains('$')
        && !config.use_regex
    {
        config.rewrite_target = None;
        warnings.push(Warning {
            annotation: format!("{PREFIX}rewrite-target"),
            problem: Problem::Invalid("capture references ($1) need use-regex".into()),
        });
    }
    warnings.sort();
    (config, warnings)
}

/// `namespace/name` or `name` of a Secret.
fn secret_ref(v: &str) -> Result<(Option<String>, String), String> {
    let dns = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    match v.split_once('/') {
        Some((ns, name)) if dns(ns) && dns(name) => Ok((Some(ns.into()), name.into())),
        None if dns(v) => Ok((None, v.into())),
        _ => Err("want a Secret name or namespace/name".into()),
    }
}

/// A realm goes into a quoted header parameter: printable ASCII without quotes or
/// backslashes.
fn realm(v: &str) -> Result<String, String> {
    if v.bytes()
        .all(|b| (b.is_ascii_graphic() || b == b' ') && b != b'"' && b != b'\\')
    {
        Ok(v.to_string())
    } else {
        Err("must be printable ASCII without quotes or backslashes".into())
    }
}

fn cidrs(v: &str) -> Result<Vec<Cidr>, String> {
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| Cidr::parse(s).ok_or_else(|| format!("{:?} is not a CIDR", s.trim())))
        .collect()
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("want \"true\" or \"false\"".into()),
    }
}

fn number(v: &str, min: u32, max: u32) -> Result<u32, String> {
    v.parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("want a whole number from {min} to {max}"))
}

/// nginx's size syntax: `1024`, `8k`, `1m`, `1g` (case-insensitive); 0 means unlimited.
fn size(v: &str) -> Result<u64, String> {
    let lower = v.to_ascii_lowercase();
    let (digits, unit) = match lower.as_bytes().last() {
        Some(b'k') => (&lower[..lower.len() - 1], 1u64 << 10),
        Some(b'm') => (&lower[..lower.len() - 1], 1 << 20),
        Some(b'g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower.as_str(), 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| "want a size like 1024, 8k, 10m or 1g".into())
}

/// nginx timeouts in annotations are seconds, optionally written with an `s`.
fn seconds(v: &str) -> Result<Duration, String> {
    v.strip_suffix('s')
        .unwrap_or(v)
        .parse::<u64>()
        .ok()
        .filter(|s| *s > 0 && *s <= 24 * 3600)
        .map(Duration::from_secs)
        .ok_or_else(|| "want whole seconds from 1 to 86400".into())
}

/// `rewrite-target` with nginx's capture references (`$1` to `$9`, also `${1}`) replaced by
/// the groups of `caps`; a group that did not take part in the match is empty, as in
/// nginx. Any other `$` stays as written.
pub fn expand_rewrite(target: &str, caps: &regex::Captures<'_>) -> String {
    let mut out = String::with_capacity(target.len());
    let mut rest = target;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (digits, consumed) = match after.strip_prefix('{') {
            Some(inner) => match inner.find('}') {
                Some(end) if end > 0 && inner[..end].bytes().all(|b| b.is_ascii_digit()) => {
                    (&inner[..end], end + 2)
                }
                _ => ("", 0),
            },
            None => {
                let n = after.bytes().take_while(u8::is_ascii_digit).count().min(1);
                (&after[..n], n)
            }
        };
        match digits.parse::<usize>() {
            Ok(group) => {
                out.push_str(caps.get(group).map_or("", |m| m.as_str()));
                rest = &after[consumed..];
            }
            Err(_) => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// An absolute path without control characters, spaces or a query (it becomes part of a
/// request line or a Location header).
fn path_value(v: &str) -> Result<String, String> {
    if !v.starts_with('/') {
        return Err("must start with /".into());
    }
    if v.bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'#')
    {
        return Err("must not contain spaces, control characters or #".into());
    }
    v.parse::<http::uri::PathAndQuery>()
        .map(|_| v.to_string())
        .map_err(|_| "not a valid URL path".into())
}

fn printable(v: &str) -> Result<String, String> {
    if v.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        Ok(v.to_string())
    } else {
        Err("must be printable ASCII".into())
    }
}

fn cookie_name(v: &str) -> Result<String, String> {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        Ok(v.to_string())
    } else {
        Err("not a valid cookie name".into())
    }
}

fn absolute_url(v: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = v.parse().map_err(|_| "not a valid URL".to_string())?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err("want an absolute http:// or https:// URL".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_the_supported_subset() {
        let (c, w) = parse(&ann(&[
            ("rewrite-target", "/"),
            ("ssl-redirect", "false"),
            ("force-ssl-redirect", "true"),
            ("proxy-body-size", "8m"),
            ("proxy-connect-timeout", "3"),
            ("proxy-read-timeout", "120s"),
            ("proxy-send-timeout", "30"),
            ("backend-protocol", "grpc"),
            ("permanent-redirect", "https://example.com/new"),
            ("permanent-redirect-code", "308"),
            ("app-root", "/app"),
            ("allowlist-source-range", "10.0.0.0/8, 192.168.1.1"),
        ]));
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.rewrite_target.as_deref(), Some("/"));
        assert!(!c.ssl_redirect && c.force_ssl_redirect);
        assert_eq!(c.body_size, Some(8 << 20));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(3)));
        assert_eq!(c.read_timeout, Some(Duration::from_secs(120)));
        assert_eq!(c.send_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.backend_protocol, BackendProtocol::H2c);
        let (uri, code) = c.permanent_redirect.expect("redirect");
        assert_eq!(uri.to_string(), "https://example.com/new");
        assert_eq!(code, http::StatusCode::PERMANENT_REDIRECT);
        assert_eq!(c.app_root.as_deref(), Some("/app"));
        assert!(c.allow_source[0].contains("10.2.3.4".parse().expect("ip")));
        assert!(c.allow_source[1].contains("::ffff:192.168.1.1".parse().expect("ip")));
        assert!(!c.allow_source[1].contains("192.168.1.2".parse().expect("ip")));
        assert_eq!(c.canary, None);
    }

    #[test]
    fn canary() {
        let (c, w) = parse(&ann(&[
            ("canary", "true"),
            ("canary-weight", "30"),
            ("canary-by-header", "X-Canary"),
            ("canary-by-header-value", "yes"),
            ("canary-by-cookie", "canary"),
        ]));
        assert!(w.is_empty(), "{w:?}");
        let c = c.canary.expect("canary");
        assert_eq!((c.weight, c.weight_total), (30, 100));
        assert_eq!(c.header.as_ref().map(|h| h.as_str()), Some("x-canary"));
        assert_eq!(c.header_value.as_deref(), Some("yes"));
        assert_eq!(c.cookie.as_deref(), Some("canary"));
    }

    #[test]
    fn bad_values_and_unknown_annotations_are_reported_not_applied() {
        let mut a = ann(&[
            ("proxy-body-size", "lots"),
            ("ssl-redirect", "yes please"),
            ("proxy-read-timeout", "-1"),
            ("rewrite-target", "/$2"),
            ("permanent-redirect", "/relative"),
            ("app-root", "/a\r\nSet-Cookie: x=1"),
            ("allowlist-source-range", "10.0.0.0/40"),
            ("configuration-snippet", "more_set_headers \"X: y\";"),
            ("server-snippet", "location / {}"),
            ("limit-rps", "lots"),
            ("auth-url", "http://auth"),
            ("canary-weight", "10"),
        ]);
        a.insert("kubernetes.io/ingress.class".into(), "ferrokube".into());
        let (c, w) = parse(&a);
        assert_eq!(c, Config::default());
        let summary: Vec<(String, Problem)> = w
            .iter()
            .map(|w| {
                let p = match &w.problem {
                    Problem::Invalid(_) => Problem::Invalid(String::new()),
                    p => p.clone(),
                };
                (w.annotation.trim_start_matches(PREFIX).to_string(), p)
            })
            .collect();
        let inv = || Problem::Invalid(String::new());
        assert_eq!(
            summary,
            vec![
                ("allowlist-source-range".into(), inv()),
                ("app-root".into(), inv()),
                ("auth-url".into(), Problem::Unsupported),
                ("configuration-snippet".into(), Problem::Snippet),
                ("limit-rps".into(), inv()),
                ("permanent-redirect".into(), inv()),
                ("proxy-body-size".into(), inv()),
                ("proxy-read-timeout".into(), inv()),
                ("rewrite-target".into(), inv()),
                ("server-snippet".into(), Problem::Snippet),
                ("ssl-redirect".into(), inv()),
            ]
        );
        assert!(w[3].to_string().contains("never applied"));
    }

    #[test]
    fn use_regex_allows_capture_references() {
        let (c, w) = parse(&ann(&[("use-regex", "true"), ("rewrite-target", "/$2")]));
        assert!(w.is_empty(), "{w:?}");
        assert!(c.use_regex);
        assert_eq!(c.rewrite_target.as_deref(), Some("/$2"));
        let (_, w) = parse(&ann(&[("use-regex", "maybe")]));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn rewrite_expansion() {
        let re = crate::routing::compile_path_regex("/something(/|$)(.*)").expect("regex");
        let caps = re.captures("/something/new/x").expect("match");
        assert_eq!(expand_rewrite("/$2", &caps), "/new/x");
        assert_eq!(expand_rewrite("/a${1}b$3$", &caps), "/a/b$");
        let caps = re.captures("/something").expect("match");
        assert_eq!(expand_rewrite("/$2", &caps), "/");
        // Only one digit: `$12` is group 1 then a literal 2, as nginx reads it for $1-$9.
        let caps = re.captures("/SOMETHING/z").expect("match");
        assert_eq!(expand_rewrite("$12", &caps), "/2");
        assert_eq!(expand_rewrite("/$x", &caps), "/$x");
    }

    #[test]
    fn auth_settings_fail_closed() {
        let (c, w) = parse(&ann(&[
            ("auth-type", "basic"),
            ("auth-secret", "other/users"),
            ("auth-secret-type", "auth-map"),
            ("auth-realm", "Staff only"),
        ]));
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            c.auth,
            Some(AuthConfig::Basic {
                secret: (Some("other".into()), "users".into()),
                secret_type: crate::auth::SecretType::AuthMap,
                realm: "Staff only".into(),
            })
        );
        for bad in [
            &[("auth-type", "basic")][..],
            &[("auth-type", "digest"), ("auth-secret", "s")],
            &[("auth-type", "basic"), ("auth-secret", "Bad Name")],
        ] {
            let (c, w) = parse(&ann(bad));
            assert_eq!(c.auth, Some(AuthConfig::Broken), "{bad:?}");
            assert!(!w.is_empty(), "{bad:?}");
        }
        let (c, w) = parse(&ann(&[("auth-secret", "s")]));
        assert_eq!(c.auth, Some(AuthConfig::Broken));
        assert!(matches!(
            &w[..],
            [Warning {
                problem: Problem::FailClosed(_),
                ..
            }]
        ));
        assert!(w[0].to_string().contains("answer 503"), "{}", w[0]);
        // A bad realm is reported; authentication stays on with the default realm.
        let (c, w) = parse(&ann(&[
            ("auth-type", "basic"),
            ("auth-secret", "s"),
            ("auth-realm", "a\"b"),
        ]));
        assert!(matches!(c.auth, Some(AuthConfig::Basic { ref realm, .. }) if realm.is_empty()));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn cookie_affinity() {
        let (c, w) = parse(&ann(&[
            ("affinity", "cookie"),
            ("session-cookie-name", "route"),
            ("session-cookie-max-age", "172800"),
            ("session-cookie-path", "/app"),
        ]));
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            c.affinity,
            Some(crate::affinity::CookieAffinity {
                name: "route".into(),
                max_age: Some(172_800),
                path: Some("/app".into()),
            })
        );
        let (c, w) = parse(&ann(&[
            ("affinity", "cookie"),
            ("session-cookie-path", "/a;b"),
        ]));
        assert_eq!(c.affinity, Some(crate::affinity::CookieAffinity::default()));
        assert_eq!(w.len(), 1);
        let (c, w) = parse(&ann(&[("affinity", "ip")]));
        assert_eq!((c.affinity, w.len()), (None, 1));
    }

    #[test]
    fn sizes_and_cidrs() {
        assert_eq!(size("0"), Ok(0));
        assert_eq!(size("1024"), Ok(1024));
        assert_eq!(size("8K"), Ok(8192));
        assert_eq!(size("1g"), Ok(1 << 30));
        assert!(size("99999999999999999999g").is_err());
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("cidr")
                .contains("1.2.3.4".parse().expect("ip"))
        );
        assert!(
            Cidr::parse("::/0")
                .expect("cidr")
                .contains("::1".parse().expect("ip"))
        );
        assert!(
            !Cidr::parse("::1/128")
                .expect("cidr")
                .contains("127.0.0.1".parse().expect("ip"))
        );
        assert!(Cidr::parse("1.2.3.4/33").is_none());
    }
}
