//! Image references (`[registry[:port]/]path[:tag][@digest]`) parsed by hand, with the
//! grammar and normalisation of the distribution project that `docker` and upstream's
//! kubelet use: no registry means `docker.io`, a single path component there gets
//! `library/`, and no tag and no digest means `:latest`.
//!
//! oci-client parses references with one large Unicode regex; compiling it costs about
//! 12 MiB that stay resident for the life of the process, most of the idle kubelet's
//! memory. Building the [`Reference`] from its parts skips it.

use oci_client::Reference;

/// Docker Hub's registry, which short names refer to.
const DOCKER_HUB: &str = "docker.io";
/// The longest repository path the grammar allows.
const NAME_MAX: usize = 255;

/// Why a reference does not parse (the message says which part is wrong).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference format: {0}")]
pub struct ReferenceError(&'static str);

/// Parses and normalises `s`.
pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    // A tag is the part after the last ':' that follows the last '/', so a registry's
    // port is never taken for one.
    let after_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[after_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..after_slash + i],
            Some(&name_tag[after_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if name.is_empty() {
        return Err(ReferenceError(
            "repository name must have at least one component",
        ));
    }
    let (registry, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    };
    if registry != DOCKER_HUB && !valid_registry(registry) {
        return Err(ReferenceError("bad registry host"));
    }
    if !path.split('/').all(valid_path_component) {
        return Err(if path.chars().any(|c| c.is_ascii_uppercase()) {
            ReferenceError("repository name must be lowercase")
        } else {
            ReferenceError("bad repository name")
        });
    }
    let registry = canonical_registry(registry);
    let repository = if registry == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    if repository.len() > NAME_MAX {
        return Err(ReferenceError(
            "repository name is longer than 255 characters",
        ));
    }
    if let Some(t) = tag
        && !valid_tag(t)
    {
        return Err(ReferenceError("bad tag"));
    }
    if let Some(d) = digest {
        check_digest(d)?;
    }
    let (registry, tag, digest) = (
        registry.to_string(),
        tag.map(str::to_string),
        digest.map(str::to_string),
    );
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t, d),
        (None, Some(d)) => Reference::with_digest(registry, repository, d),
        (Some(t), None) => Reference::with_tag(registry, repository, t),
        (None, None) => Reference::with_tag(registry, repository, "latest".to_string()),
    })
}

/// `host[:port]`: dot-separated labels of letters, digits and inner dashes.
/// Docker Hub's one name: its legacy index address (`index.docker.io`, under which Docker
/// also keys its credentials) is `docker.io`, as the distribution project normalises it.
pub fn canonical_registry(host: &str) -> &str {
    if host == "index.docker.io" {
        DOCKER_HUB
    } else {
        host
    }
}

fn valid_registry(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
    };
    host.split('.').all(label_ok)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

/// `[a-z0-9]+` runs joined by one `.`, one `_`, `__`, or any number of `-`.
fn valid_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !b.first().is_some_and(alnum) || !b.last().is_some_and(alnum) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(s: &str) -> bool {
    let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    let b = s.as_bytes();
    b.len() <= 128
        && b.first().is_some_and(word)
        && b.iter().all(|c| word(c) || *c == b'.' || *c == b'-')
}

/// `algorithm:hex`, with the hex length the algorithm implies.
fn check_digest(d: &str) -> Result<(), ReferenceError> {
    let (algo, hex) = d
        .split_once(':')
        .ok_or(ReferenceError("digest has no algorithm"))?;
    let want = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(ReferenceError("unsupported digest algorithm")),
    };
    if hex.len() != want || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(ReferenceError("bad digest"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (
            r.registry().to_string(),
            r.repository().to_string(),
            r.tag().map(str::to_string),
            r.digest().map(str::to_string),
        )
    }

    #[test]
    fn normalises_like_distribution() {
        let own = |reg: &str, repo: &str, tag: Option<&str>, dig: Option<&str>| {
            (
                reg.to_string(),
                repo.to_string(),
                tag.map(str::to_string),
                dig.map(str::to_string),
            )
        };
        assert_eq!(
            parts("busybox"),
            own("docker.io", "library/busybox", Some("latest"), None)
        );
        assert_eq!(
            parts("nginx:1.27"),
            own("docker.io", "library/nginx", Some("1.27"), None)
        );
        assert_eq!(
            parts("bitnami/redis"),
            own("docker.io", "bitnami/redis", Some("latest"), None)
        );
        assert_eq!(
            parts("index.docker.io/busybox"),
            own("docker.io", "library/busybox", Some("latest"), None)
        );
        assert_eq!(
            parts("127.0.0.1:5000/web:1"),
            own("127.0.0.1:5000", "web", Some("1"), None)
        );
        assert_eq!(
            parts("localhost/a/b__c.d-e---f:v1.0_rc-1"),
            own("localhost", "a/b__c.d-e---f", Some("v1.0_rc-1"), None)
        );
        assert_eq!(
            parts(&format!("registry.k8s.io/pause@{D}")),
            own("registry.k8s.io", "pause", None, Some(D))
        );
        assert_eq!(
            parts(&format!("quay.io:443/x/y:3@{D}")),
            own("quay.io:443", "x/y", Some("3"), Some(D))
        );
    }

    #[test]
    fn agrees_with_oci_client_on_the_whole_reference() {
        for s in [
            "busybox",
            "127.0.0.1:5000/web:1",
            "registry.k8s.io/pause:3.10",
            "ghcr.io/o/r/s@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            let theirs: Reference = s.parse().unwrap();
            assert_eq!(parse(s).unwrap().whole(), theirs.whole(), "{s}");
        }
    }

    #[test]
    fn refuses_what_the_grammar_refuses() {
        for bad in [
            "",
            ":1",
            "Busybox",
            "docker.io/Library/busybox",
            "a//b",
            "a/b/",
            "a..b",
            "a_.b",
            "-a",
            "a:",
            "a:-x",
            "a:t@",
            "a@sha256:abc",
            "a@md5:0123456789abcdef0123456789abcdef",
            "a@sha256",
            "bad_host.io:x/a",
            "-h.io/a",
            "h.io:/a",
            "a b",
            "a/../b",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse(&format!("a:{}", "t".repeat(128))).is_ok());
        assert!(parse(&format!("a:{}", "t".repeat(129))).is_err());
        assert!(parse(&format!("h.io/{}", "a".repeat(256))).is_err());
    }
}
