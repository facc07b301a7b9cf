//! The routing table: an immutable snapshot of every route, built by the controller and
//! swapped in atomically, read by the data plane on every request without locks.
//!
//! Matching follows the Ingress spec and upstream's precedence:
//!
//! 1. host: an exact host rule wins over a single-label wildcard (`*.foo.com` matches
//!    `bar.foo.com`, not `foo.com` nor `baz.bar.foo.com`), which wins over rules without a
//!    host. Like nginx server blocks, the chosen host's paths are the only ones tried: a
//!    request for a known host never falls through to the host-less rules.
//! 2. path: `Exact` wins over `Prefix`; among prefixes the longest wins. `Prefix` matches
//!    element-wise (`/foo` matches `/foo` and `/foo/bar`, not `/foobar`); trailing slashes
//!    of the rule are ignored. `ImplementationSpecific` is treated as `Prefix`.
//! 3. nothing matched: the default backend (the oldest Ingress's `spec.defaultBackend`),
//!    else 404.
//!
//! A host on which any Ingress sets `use-regex: "true"` or a `rewrite-target` is matched
//! the way ingress-nginx matches it: every path of that host, whatever its Ingress and
//! `pathType`, becomes a case-insensitive regular expression anchored at the start
//! (nginx's `location ~* "^<path>"`), tried longest path first; the first match wins.

use std::sync::Arc;

use ferrokube_runtime::informer::ObjectKey;

use crate::FastMap;
use crate::annotations::Config;
use crate::balancer::Upstream;

/// An Ingress path's `pathType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathType {
    /// The whole path, case-sensitive.
    Exact,
    /// Element-wise prefix.
    Prefix,
    /// Left to the implementation: ours treats it as `Prefix` (as ingress-nginx does
    /// without `use-regex`).
    ImplementationSpecific,
}

impl PathType {
    /// Parses the API's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Exact" => Some(Self::Exact),
            "Prefix" => Some(Self::Prefix),
            "ImplementationSpecific" => Some(Self::ImplementationSpecific),
            _ => None,
        }
    }
}

/// Where a route sends a request.
#[derive(Debug)]
pub struct Target {
    /// The endpoints and their balancing state.
    pub upstream: Arc<Upstream>,
    /// The Ingress the target comes from (canaries come from another Ingress).
    pub ingress: ObjectKey,
    /// The annotations of that Ingress, parsed.
    pub config: Arc<Config>,
    /// Basic authentication, when the Ingress asks for it.
    pub auth: Option<Arc<crate::auth::Gate>>,
}

/// A canary target beside a route's primary one.
#[derive(Debug)]
pub struct Canary {
    /// The canary's backend.
    pub target: Target,
}

/// One compiled path rule.
#[derive(Debug)]
pub struct Route {
    /// The rule's host (`None` for host-less rules and the default backend).
    pub host: Option<String>,
    /// The rule's path as written.
    pub path: String,
    /// The rule's path type.
    pub path_type: PathType,
    /// The primary target.
    pub target: Target,
    /// Whether the host is listed in a TLS section of the Ingress (HTTP requests are then
    /// redirected to HTTPS unless `ssl-redirect: "false"`).
    pub tls: bool,
    /// A canary Ingress for the same host and path, if any.
    pub canary: Option<Canary>,
    /// The compiled path when the host matches by regular expression (set by
    /// [`TableBuilder::add`]); its captures feed `rewrite-target`'s `$1`, `$2`.
    pub pattern: Option<regex::Regex>,
}

impl Route {
    /// Whether a request on this route that came over plain HTTP (`tls` false) is answered
    /// with a redirect to HTTPS: the host is in a TLS section and `ssl-redirect` is on (the
    /// default), or `force-ssl-redirect` is set.
    pub fn redirects_to_https(&self, tls: bool) -> bool {
        let c = &self.target.config;
        !tls && ((self.tls && c.ssl_redirect) || c.force_ssl_redirect)
    }
}

/// The rules of one host.
#[derive(Debug, Default)]
struct HostRules {
    exact: FastMap<String, Arc<Route>>,
    /// Normalized prefix (no trailing slash; `""` for `/`) and route, longest first.
    prefixes: Vec<(String, Arc<Route>)>,
    /// Regex routes (every route of a regex host), longest path first; each has a
    /// `pattern`.
    regexes: Vec<Arc<Route>>,
}

impl HostRules {
    fn lookup(&self, path: &str) -> Option<&Arc<Route>> {
        if let Some(r) = self.exact.get(path) {
            return Some(r);
        }
        if let Some(r) = self
            .regexes
            .iter()
            .find(|r| r.pattern.as_ref().is_some_and(|p| p.is_match(path)))
        {
            return Some(r);
        }
        self.prefixes
            .iter()
            .find(|(p, _)| prefix_matches(p, path))
            .map(|(_, r)| r)
    }

    fn len(&self) -> usize {
        self.exact.len() + self.prefixes.len() + self.regexes.len()
    }
}

/// Largest compiled size of one path regex: a path is a short expression, and the limit
/// keeps a hostile one from taking memory from every other route.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles an Ingress path as ingress-nginx's `location ~* "^<path>"`: case-insensitive,
/// anchored at the start only. The `regex` crate matches in time linear in the path
/// (finite automata, no backtracking), so no path can make matching catastrophically slow;
/// it accepts RE2 syntax, which is also what the Kubernetes docs ask regex paths to use.
pub fn compile_path_regex(path: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{path})"))
        .case_insensitive(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// Whether `path` is under the normalized prefix `prefix`, element by element.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || (path.starts_with(prefix)
            && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'))
}

/// A rule's prefix with trailing slashes removed, so `/foo/` and `/foo` are one rule.
pub fn normalize_prefix(path: &str) -> &str {
    path.trim_end_matches('/')
}

/// Two rules for the same host, path and type: the first one added (the older Ingress) wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The Ingress that keeps the route.
    pub winner: ObjectKey,
}

/// Why a route was not added.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AddError {
    /// Another Ingress already serves the same host and path.
    #[error("already served by Ingress {}", .0.winner)]
    Conflict(Conflict),
    /// The host matches by regex and the path does not compile.
    #[error("path is not a valid regular expression: {0}")]
    Regex(#[source] regex::Error),
}

impl From<Conflict> for AddError {
    fn from(c: Conflict) -> Self {
        Self::Conflict(c)
    }
}

/// The immutable routing table.
#[derive(Debug, Default)]
pub struct Table {
    exact: FastMap<String, HostRules>,
    /// Keyed by the suffix after `*.`.
    wildcard: FastMap<String, HostRules>,
    any_host: HostRules,
    default_backend: Option<Arc<Route>>,
}

impl Table {
    /// The route for a request to `host` (a Host header: port and case are ignored) and
    /// `path` (without query).
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let host = normalize_host(host);
        let rules = self
            .exact
            .get(host.as_ref())
            .or_else(|| {
                host.split_once('.')
                    .and_then(|(_, suffix)| self.wildcard.get(suffix))
            })
            .unwrap_or(&self.any_host);
        rules.lookup(path).or(self.default_backend.as_ref())
    }

    /// How many routes the table holds (the default backend included).
    pub fn len(&self) -> usize {
        self.exact.values().map(HostRules::len).sum::<usize>()
            + self.wildcard.values().map(HostRules::len).sum::<usize>()
            + self.any_host.len()
            + usize::from(self.default_backend.is_some())
    }

    /// Whether the table has no route.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `Host` header to a host name: lower case, without port or trailing dot.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal: `[::1]:80`.
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let h = without_port.trim_end_matches('.');
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

/// Builds a [`Table`]. Add routes oldest Ingress first: on conflicts the first one stays.
#[derive(Debug, Default)]
pub struct TableBuilder {
    table: Table,
    /// Hosts (lower case, `*.x` for wildcards, `""` for host-less rules) matched by regex.
    regex_hosts: std::collections::HashSet<String>,
}

impl TableBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `host` (`None` for host-less rules) match by regex; call before adding its
    /// routes.
    pub fn use_regex(&mut self, host: Option<&str>) {
        self.regex_hosts
            .insert(host.unwrap_or_default().to_ascii_lowercase());
    }

    /// Whether `host` matches by regex.
    pub fn is_regex(&self, host: Option<&str>) -> bool {
        // Checked on every route of every rebuild: no lower-casing when no host uses regex.
        !self.regex_hosts.is_empty()
            && self
                .regex_hosts
                .contains(&host.unwrap_or_default().to_ascii_lowercase())
    }

    /// Adds `route` under its host and path; an existing route for the same host, path and
    /// type is kept and reported. On a regex host the path must compile.
    pub fn add(&mut self, mut route: Route) -> Result<(), AddError> {
        let regex = self.is_regex(route.host.as_deref());
        let rules = match route.host.as_deref() {
            None | Some("") => &mut self.table.any_host,
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => self
                    .table
                    .wildcard
                    .entry(suffix.to_ascii_lowercase())
                    .or_default(),
                None => self.table.exact.entry(h.to_ascii_lowercase()).or_default(),
            },
        };
        if regex {
            // One location per path string, whatever the type: nginx would refuse two.
            if let Some(existing) = rules.regexes.iter().find(|r| r.path == route.path) {
                return Err(AddError::Conflict(Conflict {
                    winner: existing.target.ingress.clone(),
                }));
            }
            route.pattern = Some(compile_path_regex(&route.path).map_err(AddError::Regex)?);
            rules.regexes.push(Arc::new(route));
            return Ok(());
        }
        match route.path_type {
            PathType::Exact => match rules.exact.get(&route.path) {
                Some(existing) => Err(AddError::Conflict(Conflict {
                    winner: existing.target.ingress.clone(),
                })),
                None => {
                    rules.exact.insert(route.path.clone(), Arc::new(route));
                    Ok(())
                }
            },
            PathType::Prefix | PathType::ImplementationSpecific => {
                let key = normalize_prefix(&route.path).to_string();
                if let Some((_, existing)) = rules.prefixes.iter().find(|(p, _)| *p == key) {
                    return Err(AddError::Conflict(Conflict {
                        winner: existing.target.ingress.clone(),
                    }));
                }
                rules.prefixes.push((key, Arc::new(route)));
                Ok(())
            }
        }
    }

    /// The route for `host` + `path` + type if one was added, to attach a canary to.
    pub fn get_mut(
        &mut self,
        host: Option<&str>,
        path: &str,
        path_type: PathType,
    ) -> Option<&mut Route> {
        let regex = self.is_regex(host);
        let rules = match host {
            None | Some("") => Some(&mut self.table.any_host),
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => self.table.wildcard.get_mut(&suffix.to_ascii_lowercase()),
                None => self.table.exact.get_mut(&h.to_ascii_lowercase()),
            },
        }?;
        let arc = match path_type {
            _ if regex => rules.regexes.iter_mut().find(|r| r.path == path)?,
            PathType::Exact => rules.exact.get_mut(path)?,
            PathType::Prefix | PathType::ImplementationSpecific => {
                let key = normalize_prefix(path);
                &mut rules.prefixes.iter_mut().find(|(p, _)| p == key)?.1
            }
        };
        // Routes are only shared once the table is built, so this is always `Some` here.
        Arc::get_mut(arc)
    }

    /// Sets the default backend unless one is set (the oldest Ingress's wins).
    pub fn default_backend(&mut self, route: Route) -> Result<(), Conflict> {
        match &self.table.default_backend {
            Some(existing) => Err(Conflict {
                winner: existing.target.ingress.clone(),
            }),
            None => {
                self.table.default_backend = Some(Arc::new(route));
                Ok(())
            }
        }
    }

    /// The finished table, prefixes sorted longest first.
    pub fn build(mut self) -> Table {
        let sort = |rules: &mut HostRules| {
            // Stable: among equal lengths the older Ingress (added first) stays first.
            rules
                .prefixes
                .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            // ingress-nginx's location order: longest path first, equal lengths in
            // reverse lexical order; nginx then takes the first regex that matches.
            rules.regexes.sort_by(|a, b| {
                b.path
                    .len()
                    .cmp(&a.path.len())
                    .then_with(|| b.path.cmp(&a.path))
            });
        };
        self.table.exact.values_mut().for_each(sort);
        self.table.wildcard.values_mut().for_each(sort);
        sort(&mut self.table.any_host);
        self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(ingress: &str, host: Option<&str>, path: &str, t: PathType) -> Route {
        Route {
            host: host.map(str::to_string),
            path: path.to_string(),
            path_type: t,
            target: Target {
                upstream: Arc::new(Upstream::new(ingress.to_string(), Vec::new())),
                ingress: ObjectKey::new("ns", ingress),
                config: Arc::new(Config::default()),
                auth: None,
            },
            tls: false,
            canary: None,
            pattern: None,
        }
    }

    fn hit(t: &Table, host: &str, path: &str) -> Option<String> {
        t.lookup(host, path)
            .map(|r| format!("{}:{}", r.target.ingress.name, r.path))
    }

    #[test]
    fn prefix_is_element_wise() {
        assert!(prefix_matches("/foo", "/foo"));
        assert!(prefix_matches("/foo", "/foo/"));
        assert!(prefix_matches("/foo", "/foo/bar"));
        assert!(!prefix_matches("/foo", "/foobar"));
        assert!(!prefix_matches("/foo/bar", "/foo"));
        assert!(prefix_matches("", "/anything"));
        assert_eq!(normalize_prefix("/foo/"), "/foo");
        assert_eq!(normalize_prefix("/"), "");
    }

    /// The examples table of the Ingress spec (kubernetes.io/docs/concepts/services-networking/ingress/#examples).
    #[test]
    fn spec_examples() {
        let cases: &[(&str, PathType, &str, bool)] = &[
            ("/", PathType::Prefix, "/", true),
            ("/", PathType::Prefix, "/anything", true),
            ("/foo", PathType::Exact, "/foo", true),
            ("/foo", PathType::Exact, "/bar", false),
            ("/foo", PathType::Exact, "/foo/", false),
            ("/foo/", PathType::Exact, "/foo", false),
            ("/foo", PathType::Prefix, "/foo", true),
            ("/foo", PathType::Prefix, "/foo/", true),
            ("/foo/", PathType::Prefix, "/foo", true),
            ("/foo/", PathType::Prefix, "/foo/", true),
            ("/aaa/bb", PathType::Prefix, "/aaa/bbb", false),
            ("/aaa/bbb", PathType::Prefix, "/aaa/bbb", true),
            ("/aaa/bbb/", PathType::Prefix, "/aaa/bbb", true),
            ("/aaa/bbb", PathType::Prefix, "/aaa/bbb/", true),
            ("/aaa/bbb", PathType::Prefix, "/aaa/bbb/ccc", true),
            ("/aaa/bbb", PathType::Prefix, "/aaa/bbbxyz", false),
            ("/foo", PathType::ImplementationSpecific, "/foo/x", true),
        ];
        for (rule, t, req, want) in cases {
            let mut b = TableBuilder::new();
            b.add(route("i", None, rule, *t)).expect("add");
            let table = b.build();
            assert_eq!(
                table.lookup("h", req).is_some(),
                *want,
                "{t:?} {rule} vs {req}"
            );
        }
    }

    #[test]
    fn precedence() {
        let mut b = TableBuilder::new();
        b.add(route("any", None, "/", PathType::Prefix))
            .expect("add");
        b.add(route("wild", Some("*.foo.com"), "/", PathType::Prefix))
            .expect("add");
        b.add(route("short", Some("a.foo.com"), "/", PathType::Prefix))
            .expect("add");
        b.add(route(
            "long",
            Some("a.foo.com"),
            "/api/v1",
            PathType::Prefix,
        ))
        .expect("add");
        b.add(route("mid", Some("a.foo.com"), "/api", PathType::Prefix))
            .expect("add");
        b.add(route("exact", Some("a.foo.com"), "/api", PathType::Exact))
            .expect("add");
        let t = b.build();
        assert_eq!(hit(&t, "a.foo.com", "/api").as_deref(), Some("exact:/api"));
        assert_eq!(
            hit(&t, "A.Foo.Com:8080", "/api/x").as_deref(),
            Some("mid:/api")
        );
        assert_eq!(
            hit(&t, "a.foo.com", "/api/v1/x").as_deref(),
            Some("long:/api/v1")
        );
        assert_eq!(hit(&t, "a.foo.com", "/apix").as_deref(), Some("short:/"));
        assert_eq!(hit(&t, "b.foo.com", "/x").as_deref(), Some("wild:/"));
        // A wildcard covers exactly one label.
        assert_eq!(hit(&t, "c.b.foo.com", "/x").as_deref(), Some("any:/"));
        assert_eq!(hit(&t, "foo.com", "/x").as_deref(), Some("any:/"));
        assert_eq!(hit(&t, "other", "/").as_deref(), Some("any:/"));
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn host_match_does_not_fall_through_and_default_backend() {
        let mut b = TableBuilder::new();
        b.add(route("a", Some("a.com"), "/app", PathType::Prefix))
            .expect("add");
        b.add(route("any", None, "/other", PathType::Prefix))
            .expect("add");
        let t = b.build();
        assert_eq!(hit(&t, "a.com", "/other"), None);
        assert_eq!(hit(&t, "b.com", "/other").as_deref(), Some("any:/other"));
        assert_eq!(hit(&t, "b.com", "/app"), None);

        let mut b = TableBuilder::new();
        b.add(route("a", Some("a.com"), "/app", PathType::Prefix))
            .expect("add");
        b.default_backend(route("def", None, "/", PathType::Prefix))
            .expect("default");
        assert_eq!(
            b.default_backend(route("newer", None, "/", PathType::Prefix)),
            Err(Conflict {
                winner: ObjectKey::new("ns", "def")
            })
        );
        let t = b.build();
        assert_eq!(hit(&t, "a.com", "/nope").as_deref(), Some("def:/"));
        assert_eq!(hit(&t, "zzz", "/").as_deref(), Some("def:/"));
    }

    #[test]
    fn conflicts_keep_the_first() {
        let mut b = TableBuilder::new();
        b.add(route("old", Some("a.com"), "/x/", PathType::Prefix))
            .expect("add");
        assert_eq!(
            b.add(route(
                "new",
                Some("A.com"),
                "/x",
                PathType::ImplementationSpecific
            )),
            Err(AddError::Conflict(Conflict {
                winner: ObjectKey::new("ns", "old")
            }))
        );
        // Same path, other type: both kept.
        b.add(route("new", Some("a.com"), "/x", PathType::Exact))
            .expect("add");
        assert!(b.get_mut(Some("a.com"), "/x", PathType::Prefix).is_some());
        assert!(b.get_mut(Some("a.com"), "/y", PathType::Prefix).is_none());
        let t = b.build();
        assert_eq!(hit(&t, "a.com", "/x/y").as_deref(), Some("old:/x/"));
        assert_eq!(hit(&t, "a.com", "/x").as_deref(), Some("new:/x"));
    }

    #[test]
    fn regex_hosts_match_case_insensitively_anchored_longest_first() {
        let mut b = TableBuilder::new();
        b.use_regex(Some("r.com"));
        b.add(route("a", Some("r.com"), "/api/v[0-9]+", PathType::Prefix))
            .expect("add");
        b.add(route("b", Some("r.com"), "/api", PathType::Exact))
            .expect("add");
        b.add(route(
            "c",
            Some("r.com"),
            "/api/v1/special",
            PathType::ImplementationSpecific,
        ))
        .expect("add");
        b.add(route("d", Some("R.com"), "/", PathType::Prefix))
            .expect("add");
        // Same path string on a regex host: one location, the first one stays.
        assert!(matches!(
            b.add(route("e", Some("r.com"), "/api", PathType::Prefix)),
            Err(AddError::Conflict(_))
        ));
        // RE2 has no look-around: refused, nothing added.
        assert!(matches!(
            b.add(route("f", Some("r.com"), "/(?=x)", PathType::Prefix)),
            Err(AddError::Regex(_))
        ));
        assert!(matches!(
            b.add(route("f", Some("r.com"), "/(unclosed", PathType::Prefix)),
            Err(AddError::Regex(_))
        ));
        // Other hosts keep element-wise prefixes.
        b.add(route("p", Some("p.com"), "/api", PathType::Prefix))
            .expect("add");
        assert!(b.get_mut(Some("r.com"), "/api", PathType::Exact).is_some());
        let t = b.build();
        assert_eq!(
            hit(&t, "r.com", "/API/V2/x").as_deref(),
            Some("a:/api/v[0-9]+")
        );
        assert_eq!(
            hit(&t, "r.com", "/api/v1/special/x").as_deref(),
            Some("c:/api/v1/special")
        );
        // `Exact` is a regex too on a regex host (anchored at the start only).
        assert_eq!(hit(&t, "r.com", "/apix").as_deref(), Some("b:/api"));
        assert_eq!(hit(&t, "r.com", "/other").as_deref(), Some("d:/"));
        // Anchored at the start: `/x/api` is not under `/api`.
        assert_eq!(hit(&t, "r.com", "/x/api").as_deref(), Some("d:/"));
        assert_eq!(hit(&t, "p.com", "/apix"), None);
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn hosts_normalize() {
        assert_eq!(normalize_host("Foo.COM:443"), "foo.com");
        assert_eq!(normalize_host("foo.com."), "foo.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("10.0.0.1"), "10.0.0.1");
    }
}
