//! Who is calling the kubelet API and whether they may: client certificates (CN = user,
//! O = groups), bearer tokens through TokenReview, then SubjectAccessReview on the `nodes`
//! resource, as upstream's `pkg/kubelet/server/auth.go` does.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;
use sha2::{Digest, Sha256};

use crate::options::{ApiServing, AuthorizationMode};

/// Why a request did not get through.
#[derive(Debug, thiserror::Error)]
pub enum Denial {
    /// No acceptable credentials: 401.
    #[error("Unauthorized")]
    Unauthenticated,
    /// Authenticated but not allowed: 403 with upstream's message.
    #[error("{0}")]
    Forbidden(String),
    /// The apiserver could not be asked: 500 (TokenReview errors answer 401, as upstream).
    #[error("{0}")]
    Error(String),
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserInfo {
    /// The user name.
    pub name: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// Its UID, when the authenticator knows one.
    pub uid: Option<String>,
    /// Extra attributes (from TokenReview).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// `system:anonymous` in `system:unauthenticated`, as upstream's anonymous authenticator.
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            uid: None,
            extra: BTreeMap::new(),
        }
    }
}

/// The user a verified client certificate names: CN is the user, each O a group, and
/// `system:authenticated` is added as upstream's authenticator union does.
pub fn user_from_cert(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(ToString::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(UserInfo {
        name,
        groups,
        uid: None,
        extra: BTreeMap::new(),
    })
}

/// What a request asks for, in authorization terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    /// The API verb (`get`, `create`, ...).
    pub verb: &'static str,
    /// The `nodes` subresources tried in order; any one allowed is enough.
    pub subresources: Vec<&'static str>,
}

/// Whether `path` is `prefix` or below it (upstream's `isSubpath`).
fn is_subpath(path: &str, prefix: &str) -> bool {
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Upstream's mapping of a kubelet request to `nodes` attributes (with
/// KubeletFineGrainedAuthz, GA and locked on in 1.36): the verb comes from the method, the
/// subresource from the path, and a few paths may also pass as `proxy`.
pub fn attributes(method: &Method, path: &str) -> Attributes {
    let verb = match *method {
        Method::POST => "create",
        Method::GET => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    };
    let mut subresources = Vec::new();
    if is_subpath(path, "/pods") || is_subpath(path, "/runningpods") {
        subresources.push("pods");
    } else if is_subpath(path, "/healthz") {
        subresources.push("healthz");
    } else if is_subpath(path, "/configz") {
        subresources.push("configz");
    }
    subresources.push(if is_subpath(path, "/stats") {
        "stats"
    } else if is_subpath(path, "/metrics") {
        "metrics"
    } else if is_subpath(path, "/logs") {
        "log"
    } else if is_subpath(path, "/checkpoint") {
        "checkpoint"
    } else if is_subpath(path, "/statusz") {
        "statusz"
    } else if is_subpath(path, "/flagz") {
        "configz"
    } else {
        "proxy"
    });
    Attributes { verb, subresources }
}

/// Upstream's 403 body: `Forbidden (user=…, verb=…, resource=nodes, subresource(s)=[…])`.
pub fn forbidden_message(user: &UserInfo, attrs: &Attributes) -> String {
    format!(
        "Forbidden (user={}, verb={}, resource=nodes, subresource(s)=[{}])\n",
        user.name,
        attrs.verb,
        attrs.subresources.join(" ")
    )
}

/// A small time-limited cache; entries expire after the TTL given when stored.
#[derive(Default)]
struct TtlCache<V> {
    entries: Mutex<HashMap<String, (V, Instant)>>,
}

/// Beyond this many entries, expired ones are swept before inserting.
const CACHE_SWEEP_AT: usize = 4096;

impl<V: Clone> TtlCache<V> {
    fn get(&self, key: &str) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(v, _)| v.clone())
    }

    fn put(&self, key: String, value: V, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CACHE_SWEEP_AT {
            let now = Instant::now();
            entries.retain(|_, (_, until)| now < *until);
        }
        entries.insert(key, (value, Instant::now() + ttl));
    }
}

/// The kubelet API's authenticator and authorizer.
pub struct Auth {
    client: kube::Client,
    node_name: String,
    anonymous: bool,
    token_webhook: bool,
    token_ttl: Duration,
    mode: AuthorizationMode,
    authorized_ttl: Duration,
    unauthorized_ttl: Duration,
    tokens: TtlCache<Option<UserInfo>>,
    decisions: TtlCache<bool>,
}

impl Auth {
    /// Auth for node `node_name` with the configured modes, asking the apiserver via `client`.
    pub fn new(client: kube::Client, node_name: &str, api: &ApiServing) -> Self {
        Self {
            client,
            node_name: node_name.to_string(),
            anonymous: api.anonymous,
            token_webhook: api.token_webhook,
            token_ttl: api.token_cache_ttl,
            mode: api.authorization_mode,
            authorized_ttl: api.authorized_ttl,
            unauthorized_ttl: api.unauthorized_ttl,
            tokens: TtlCache::default(),
            decisions: TtlCache::default(),
        }
    }

    /// The caller: the verified client certificate's user, else the bearer token's
    /// (TokenReview), else anonymous when enabled.
    pub async fn authenticate(
        &self,
        cert_user: Option<&UserInfo>,
        headers: &HeaderMap,
    ) -> Result<UserInfo, Denial> {
        if let Some(u) = cert_user {
            return Ok(u.clone());
        }
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| rest.trim().to_string())
            })
            .filter(|t| !t.is_empty());
        if let (Some(token), true) = (token, self.token_webhook) {
            return self
                .review_token(&token)
                .await?
                .ok_or(Denial::Unauthenticated);
        }
        if self.anonymous {
            return Ok(UserInfo::anonymous());
        }
        Err(Denial::Unauthenticated)
    }

    async fn review_token(&self, token: &str) -> Result<Option<UserInfo>, Denial> {
        // The cache is keyed by a digest so tokens are not kept in memory longer than needed.
        let key = format!("{:x}", Sha256::digest(token.as_bytes()));
        if let Some(hit) = self.tokens.get(&key) {
            return Ok(hit);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: None,
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                // Upstream answers 401 when the webhook fails, so the caller retries.
                tracing::warn!(error = %e, "TokenReview failed");
                Denial::Unauthenticated
            })?;
        let status = answer.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(u)) => Some(UserInfo {
                name: u.username.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
                uid: u.uid,
                extra: u.extra.unwrap_or_default(),
            }),
            _ => None,
        };
        self.tokens.put(key, user.clone(), self.token_ttl);
        Ok(user)
    }

    /// Whether `user` may make a request with `attrs`; denial carries upstream's message.
    pub async fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), Denial> {
        if self.mode == AuthorizationMode::AlwaysAllow {
            return Ok(());
        }
        for sub in &attrs.subresources {
            let spec = SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                uid: user.uid.clone(),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(attrs.verb.to_string()),
                    version: Some("v1".into()),
                    group: Some(String::new()),
                    resource: Some("nodes".into()),
                    subresource: Some((*sub).to_string()),
                    name: Some(self.node_name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            if self.allowed(spec).await? {
                return Ok(());
            }
        }
        Err(Denial::Forbidden(forbidden_message(user, attrs)))
    }

    async fn allowed(&self, spec: SubjectAccessReviewSpec) -> Result<bool, Denial> {
        let key = serde_json::to_string(&spec).map_err(|e| Denial::Error(e.to_string()))?;
        if let Some(hit) = self.decisions.get(&key) {
            return Ok(hit);
        }
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let review = SubjectAccessReview {
            spec,
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                Denial::Error(format!(
                    "Authorization error (SubjectAccessReview failed: {e})"
                ))
            })?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        let ttl = if allowed {
            self.authorized_ttl
        } else {
            self.unauthorized_ttl
        };
        self.decisions.put(key, allowed, ttl);
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_upstream_attributes() {
        let a = |m: Method, p: &str| attributes(&m, p);
        assert_eq!(
            a(Method::GET, "/containerLogs/ns/pod/c"),
            Attributes {
                verb: "get",
                subresources: vec!["proxy"]
            }
        );
        assert_eq!(
            a(Method::POST, "/exec/ns/pod/c"),
            Attributes {
                verb: "create",
                subresources: vec!["proxy"]
            }
        );
        assert_eq!(
            a(Method::GET, "/healthz").subresources,
            ["healthz", "proxy"]
        );
        assert_eq!(
            a(Method::GET, "/healthz/ping").subresources,
            ["healthz", "proxy"]
        );
        assert_eq!(a(Method::GET, "/healthzz").subresources, ["proxy"]);
        assert_eq!(a(Method::GET, "/pods").subresources, ["pods", "proxy"]);
        assert_eq!(
            a(Method::GET, "/runningpods/").subresources,
            ["pods", "proxy"]
        );
        assert_eq!(
            a(Method::GET, "/configz").subresources,
            ["configz", "proxy"]
        );
        assert_eq!(a(Method::GET, "/stats/summary").subresources, ["stats"]);
        assert_eq!(
            a(Method::GET, "/metrics/cadvisor").subresources,
            ["metrics"]
        );
        assert_eq!(a(Method::GET, "/logs/syslog").subresources, ["log"]);
        assert_eq!(a(Method::GET, "/flagz").subresources, ["configz"]);
        assert_eq!(a(Method::DELETE, "/x").verb, "delete");
        assert_eq!(a(Method::PUT, "/x").verb, "update");
        assert_eq!(a(Method::PATCH, "/x").verb, "patch");
    }

    #[test]
    fn forbidden_message_matches_upstream() {
        let u = UserInfo {
            name: "alice".into(),
            groups: vec![],
            uid: None,
            extra: BTreeMap::new(),
        };
        assert_eq!(
            forbidden_message(&u, &attributes(&Method::GET, "/healthz")),
            "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[healthz proxy])\n"
        );
    }

    #[test]
    fn client_cert_names_user_and_groups() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bob");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "devs");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let u = user_from_cert(cert.der()).unwrap();
        assert_eq!(u.name, "bob");
        assert_eq!(u.groups, ["devs", "system:authenticated"]);
    }

    #[test]
    fn cache_entries_expire() {
        let c: TtlCache<bool> = TtlCache::default();
        c.put("a".into(), true, Duration::from_secs(60));
        c.put("b".into(), false, Duration::ZERO);
        assert_eq!(c.get("a"), Some(true));
        assert_eq!(c.get("b"), None);
    }
}
