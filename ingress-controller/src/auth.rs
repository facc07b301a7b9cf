//! HTTP basic authentication from a Secret, as ingress-nginx's `auth-type: basic`,
//! `auth-secret`, `auth-secret-type` and `auth-realm` do it.
//!
//! The Secret is either an htpasswd file under the key `auth` (`auth-file`, the default)
//! or one key per user whose value is the hash (`auth-map`). Hashes may be bcrypt
//! (`$2y$`, `$2b$`, `$2a$`), `{SHA}` (base64 SHA-1) or Apache's `$apr1$` MD5, the formats
//! `htpasswd` writes. A route whose Secret is missing, unreadable or not yet read answers
//! 503: authentication fails closed, never open.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use http::HeaderValue;
use http::header::{AUTHORIZATION, HeaderMap};
use md5::{Digest as _, Md5};

/// How the Secret holds its users (`auth-secret-type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SecretType {
    /// An htpasswd file under the key `auth`.
    #[default]
    AuthFile,
    /// One key per user, the value being the hash.
    AuthMap,
}

/// Why a Secret's users could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `auth-file` Secret without the `auth` key.
    #[error("the secret has no \"auth\" key")]
    NoAuthKey,
    /// The file or a value is not UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    /// A line or entry could not be used; the user (never the hash).
    #[error("user {0:?}: unsupported or malformed password hash")]
    BadHash(String),
    /// A line without `user:hash`.
    #[error("line {0}: want user:hash")]
    BadLine(usize),
    /// No user at all: nobody could ever log in, which is surely a mistake.
    #[error("no users")]
    Empty,
}

/// A password hash in one of the formats htpasswd writes.
#[derive(Clone, PartialEq, Eq)]
enum Hash {
    /// `$2y$`, `$2b$`, `$2a$`: verified by the `bcrypt` crate.
    Bcrypt(String),
    /// `{SHA}` + base64 of the SHA-1 digest.
    Sha1([u8; 20]),
    /// `$apr1$<salt>$<digest>`.
    Apr1 { salt: String, digest: String },
}

// Hashes are secrets too: never printed.
impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bcrypt(_) => "Bcrypt(..)",
            Self::Sha1(_) => "Sha1(..)",
            Self::Apr1 { .. } => "Apr1(..)",
        })
    }
}

impl Hash {
    fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if ["$2y$", "$2b$", "$2a$"].iter().any(|p| s.starts_with(p)) {
            // `$2y$NN$` + 22 characters of salt + 31 of hash: a malformed one is reported
            // with the Secret instead of failing every login silently.
            return (s.len() == 60 && s.as_bytes()[6] == b'$').then(|| Self::Bcrypt(s.to_string()));
        }
        if let Some(b64) = s.strip_prefix("{SHA}") {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            return <[u8; 20]>::try_from(bytes.as_slice()).ok().map(Self::Sha1);
        }
        if let Some(rest) = s.strip_prefix("$apr1$") {
            let (salt, digest) = rest.split_once('$')?;
            if salt.is_empty() || salt.len() > 8 || digest.len() != 22 {
                return None;
            }
            return Some(Self::Apr1 {
                salt: salt.to_string(),
                digest: digest.to_string(),
            });
        }
        None
    }

    /// Whether `password` hashes to this. bcrypt is deliberately slow: call off the async
    /// threads.
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Self::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Self::Sha1(want) => {
                let got: [u8; 20] = sha1::Sha1::digest(password).into();
                constant_time_eq(&got, want)
            }
            Self::Apr1 { salt, digest } => constant_time_eq(
                apr1(password, salt.as_bytes()).as_bytes(),
                digest.as_bytes(),
            ),
        }
    }
}

/// Compares without stopping at the first difference, so timing does not tell how much of
/// a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Apache's MD5-crypt (`$apr1$`): the FreeBSD md5crypt algorithm with another magic
/// string; returns the 22-character digest part.
fn apr1(password: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();

    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(MAGIC);
    ctx.update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut sum: [u8; 16] = ctx.finalize().into();

    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(sum);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(sum);
        } else {
            c.update(password);
        }
        sum = c.finalize().into();
    }

    const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    let mut push = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(char::from(ITOA64[(v & 0x3f) as usize]));
            v >>= 6;
        }
    };
    let b = |i: usize| u32::from(sum[i]);
    for (x, y, z) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        push((b(x) << 16) | (b(y) << 8) | b(z), 4);
    }
    push(b(11), 2);
    out
}

/// The users of one Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users(HashMap<String, Hash>);

impl Users {
    /// Reads a Secret's data as `kind` says.
    pub fn from_secret(data: &BTreeMap<String, Vec<u8>>, kind: SecretType) -> Result<Self, Error> {
        let mut users = HashMap::new();
        match kind {
            SecretType::AuthFile => {
                let file = data.get("auth").ok_or(Error::NoAuthKey)?;
                let file = std::str::from_utf8(file).map_err(|_| Error::NotUtf8)?;
                for (n, line) in file.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let (user, hash) = line.split_once(':').ok_or(Error::BadLine(n + 1))?;
                    let hash = Hash::parse(hash).ok_or_else(|| Error::BadHash(user.into()))?;
                    users.insert(user.to_string(), hash);
                }
            }
            SecretType::AuthMap => {
                for (user, hash) in data {
                    let hash = std::str::from_utf8(hash).map_err(|_| Error::NotUtf8)?;
                    let hash = Hash::parse(hash).ok_or_else(|| Error::BadHash(user.clone()))?;
                    users.insert(user.clone(), hash);
                }
            }
        }
        if users.is_empty() {
            return Err(Error::Empty);
        }
        Ok(Self(users))
    }

    /// Whether `user` exists and `password` is theirs.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        self.0.get(user).is_some_and(|h| h.verify(password))
    }
}

/// What guards a route.
#[derive(Debug)]
pub enum Gate {
    /// Basic authentication against these users.
    Basic {
        /// `auth-realm`.
        realm: String,
        /// The users.
        users: Users,
    },
    /// Authentication is configured but cannot be checked (Secret missing, invalid or not
    /// read yet, or an invalid annotation): every request gets 503.
    Unavailable,
}

/// What a [`Gate`] says about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// 401 with this `WWW-Authenticate` value.
    Challenge(HeaderValue),
    /// 503.
    Unavailable,
}

/// `user` and `password` from an `Authorization: Basic` header.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, Vec<u8>)> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let colon = raw.iter().position(|b| *b == b':')?;
    let user = String::from_utf8(raw[..colon].to_vec()).ok()?;
    Some((user, raw[colon + 1..].to_vec()))
}

impl Gate {
    /// Checks a request's credentials. bcrypt costs tens of milliseconds of CPU, so the
    /// check runs on the blocking pool, never on the threads serving connections.
    pub async fn check(self: std::sync::Arc<Self>, headers: &HeaderMap) -> Verdict {
        let realm = match &*self {
            Self::Unavailable => return Verdict::Unavailable,
            Self::Basic { realm, .. } => realm.clone(),
        };
        let challenge = || {
            // The realm was checked to be printable ASCII without quotes when parsed.
            HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
                .map_or(Verdict::Unavailable, Verdict::Challenge)
        };
        let Some((user, password)) = basic_credentials(headers) else {
            return challenge();
        };
        let gate = self.clone();
        let ok = tokio::task::spawn_blocking(move || match &*gate {
            Self::Basic { users, .. } => users.verify(&user, &password),
            Self::Unavailable => false,
        })
        .await
        .unwrap_or(false);
        if ok { Verdict::Allow } else { challenge() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> BTreeMap<String, Vec<u8>> {
        [("auth".to_string(), text.as_bytes().to_vec())].into()
    }

    #[test]
    fn apr1_matches_openssl() {
        // `openssl passwd -apr1 -salt saltsalt 'p@ss word'` and `-salt x secret`.
        assert_eq!(apr1(b"p@ss word", b"saltsalt"), "11QAx5Oiaores.cTy1Ple.");
        assert_eq!(apr1(b"secret", b"x"), "12YdXEY0/hH4rDNkmZupO0");
    }

    #[test]
    fn htpasswd_formats() {
        let bcrypt = bcrypt::hash("hunter2", 4).expect("bcrypt");
        // htpasswd writes `$2y$`; the same hash under each prefix must verify.
        let y = bcrypt.replacen("$2b$", "$2y$", 1);
        let a = bcrypt.replacen("$2b$", "$2a$", 1);
        let text = format!(
            "# users\nb:{bcrypt}\ny:{y}\na:{a}\nsha:{{SHA}}t6h1/B6iKLkGEEG3zsS9PFKrPOM=\napr:$apr1$x$12YdXEY0/hH4rDNkmZupO0\n"
        );
        let users = Users::from_secret(&file(&text), SecretType::AuthFile).expect("users");
        for u in ["b", "y", "a"] {
            assert!(users.verify(u, b"hunter2"), "{u}");
            assert!(!users.verify(u, b"hunter3"), "{u}");
        }
        assert!(users.verify("sha", b"letmein"));
        assert!(!users.verify("sha", b"letmeout"));
        assert!(users.verify("apr", b"secret"));
        assert!(!users.verify("apr", b"Secret"));
        assert!(!users.verify("nobody", b"secret"));
    }

    #[test]
    fn auth_map_and_bad_secrets() {
        let map: BTreeMap<String, Vec<u8>> = [(
            "sha".to_string(),
            b"{SHA}t6h1/B6iKLkGEEG3zsS9PFKrPOM=".to_vec(),
        )]
        .into();
        let users = Users::from_secret(&map, SecretType::AuthMap).expect("users");
        assert!(users.verify("sha", b"letmein"));
        assert_eq!(
            Users::from_secret(&map, SecretType::AuthFile),
            Err(Error::NoAuthKey)
        );
        assert_eq!(
            Users::from_secret(&file("u:plaintext"), SecretType::AuthFile),
            Err(Error::BadHash("u".into()))
        );
        assert_eq!(
            Users::from_secret(&file("u:$2y$10$short"), SecretType::AuthFile),
            Err(Error::BadHash("u".into()))
        );
        assert_eq!(
            Users::from_secret(&file("no colon"), SecretType::AuthFile),
            Err(Error::BadLine(1))
        );
        assert_eq!(
            Users::from_secret(&file("\n# only comments\n"), SecretType::AuthFile),
            Err(Error::Empty)
        );
        // The hash never shows in debug output.
        assert!(!format!("{users:?}").contains("t6h1"));
    }

    #[tokio::test]
    async fn gate_verdicts() {
        let users = Users::from_secret(
            &file("sha:{SHA}t6h1/B6iKLkGEEG3zsS9PFKrPOM="),
            SecretType::AuthFile,
        )
        .expect("users");
        let gate = std::sync::Arc::new(Gate::Basic {
            realm: "Staff only".into(),
            users,
        });
        let mut h = HeaderMap::new();
        let challenge = Verdict::Challenge(HeaderValue::from_static("Basic realm=\"Staff only\""));
        assert_eq!(gate.clone().check(&h).await, challenge);
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {}", b64("sha:letmein"))).expect("header"),
        );
        assert_eq!(gate.clone().check(&h).await, Verdict::Allow);
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("basic {}", b64("sha:wrong"))).expect("header"),
        );
        assert_eq!(gate.clone().check(&h).await, challenge);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(gate.check(&h).await, challenge);
        assert_eq!(
            std::sync::Arc::new(Gate::Unavailable)
                .check(&HeaderMap::new())
                .await,
            Verdict::Unavailable
        );
    }
}
