//! TLS: certificates from `kubernetes.io/tls` Secrets chosen by SNI, with a default
//! certificate for names no Ingress covers (a Secret named by `--default-ssl-certificate`,
//! else a self-signed one made at start, as ingress-nginx does).
//!
//! The certificate set is an immutable snapshot swapped atomically, like the routing table,
//! so handshakes never wait on the controller.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::routing::normalize_host;

/// A certificate or key that cannot be served.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The Secret lacks `tls.crt` or `tls.key`.
    #[error("secret has no {0}")]
    Missing(&'static str),
    /// `tls.crt` holds no PEM certificate.
    #[error("tls.crt holds no PEM certificate")]
    NoCertificate,
    /// `tls.key` holds no usable PEM private key.
    #[error("tls.key holds no usable private key: {0}")]
    Key(String),
    /// The key does not belong to the certificate.
    #[error("tls.key does not match tls.crt: {0}")]
    Mismatch(String),
    /// Making the self-signed default certificate failed.
    #[error("generating the default certificate: {0}")]
    Generate(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM certificate chain and private key into a servable key, checking that they
/// belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, Error> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(Error::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| Error::Key(e.to_string()))?;
    let ck = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => Error::Mismatch(e.to_string()),
        other => Error::Key(other.to_string()),
    })?;
    Ok(Arc::new(ck))
}

/// A self-signed certificate for when no default is configured.
pub fn self_signed() -> Result<Arc<CertifiedKey>, Error> {
    let fail = |e: rcgen::Error| Error::Generate(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params =
        rcgen::CertificateParams::new(vec!["ingress.local".to_string()]).map_err(fail)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "ferrokube Ingress Controller Fake Certificate",
    );
    let cert = params.self_signed(&key).map_err(fail)?;
    certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
}

/// Certificates by host name, and the default.
#[derive(Debug)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertStore {
    /// A store serving only `default`.
    pub fn new(default: Arc<CertifiedKey>) -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        }
    }

    /// Serves `key` for `host` (`*.foo.com` for one label under foo.com). The first
    /// certificate given for a host stays (the caller adds the oldest Ingress first).
    pub fn insert(&mut self, host: &str, key: Arc<CertifiedKey>) {
        let host = host.to_ascii_lowercase();
        match host.strip_prefix("*.") {
            Some(suffix) => self.wildcard.entry(suffix.to_string()).or_insert(key),
            None => self.exact.entry(host).or_insert(key),
        };
    }

    /// The certificate for SNI name `sni` (the default when none matches or no SNI).
    pub fn lookup(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        sni.map(normalize_host)
            .and_then(|h| {
                self.exact.get(h.as_ref()).or_else(|| {
                    h.split_once('.')
                        .and_then(|(_, suffix)| self.wildcard.get(suffix))
                })
            })
            .unwrap_or(&self.default)
            .clone()
    }

    /// Whether a certificate other than the default covers `host`.
    pub fn covers(&self, host: &str) -> bool {
        !Arc::ptr_eq(&self.lookup(Some(host)), &self.default)
    }
}

/// rustls' hook: picks from the current [`CertStore`].
#[derive(Debug)]
pub struct Resolver {
    store: Arc<ArcSwap<CertStore>>,
}

impl Resolver {
    /// A resolver over `store`.
    pub fn new(store: Arc<ArcSwap<CertStore>>) -> Self {
        Self { store }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.store.load().lookup(hello.server_name()))
    }
}

/// The server configuration: certificates by SNI, ALPN offering h2 and HTTP/1.1.
pub fn server_config(store: Arc<ArcSwap<CertStore>>) -> Result<rustls::ServerConfig, Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Generate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver::new(store)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn parses_and_checks_pairs() {
        let (c1, k1) = cert(&["a.com"]);
        let (_, k2) = cert(&["b.com"]);
        assert!(certified_key(c1.as_bytes(), k1.as_bytes()).is_ok());
        assert!(matches!(
            certified_key(c1.as_bytes(), k2.as_bytes()),
            Err(Error::Mismatch(_))
        ));
        assert_eq!(
            certified_key(b"junk", k1.as_bytes()).err(),
            Some(Error::NoCertificate)
        );
        assert!(matches!(
            certified_key(c1.as_bytes(), b"junk"),
            Err(Error::Key(_))
        ));
        assert!(self_signed().is_ok());
    }

    #[test]
    fn sni_lookup() {
        let default = self_signed().expect("default");
        let (c, k) = cert(&["a.com"]);
        let a = certified_key(c.as_bytes(), k.as_bytes()).expect("a");
        let (c, k) = cert(&["*.b.com"]);
        let b = certified_key(c.as_bytes(), k.as_bytes()).expect("b");
        let mut store = CertStore::new(default.clone());
        store.insert("A.com", a.clone());
        store.insert("*.b.com", b.clone());
        assert!(Arc::ptr_eq(&store.lookup(Some("a.com")), &a));
        assert!(Arc::ptr_eq(&store.lookup(Some("x.b.com")), &b));
        assert!(Arc::ptr_eq(&store.lookup(Some("y.x.b.com")), &default));
        assert!(Arc::ptr_eq(&store.lookup(None), &default));
        assert!(store.covers("a.com") && !store.covers("c.com"));
    }
}
