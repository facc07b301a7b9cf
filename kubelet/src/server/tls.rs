//! The kubelet API's TLS: its serving certificate (given, or self-signed under the cert
//! dir as upstream does) and client-certificate verification against `--client-ca-file`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::options::ApiServing;

/// Why the kubelet API's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate or key file could not be read or written.
    #[error("{what} {path}: {source}")]
    File {
        /// Reading or writing.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("parsing {path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Generating the self-signed certificate failed.
    #[error("generating the kubelet's serving certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("configuring TLS: {0}")]
    Rustls(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::File {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, data: &str) -> Result<(), Error> {
    std::fs::write(path, data).map_err(|source| Error::File {
        what: "writing",
        path: path.to_path_buf(),
        source,
    })
}

/// The certificate chain and key in `cert` and `key` (PEM).
fn load_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(Error::Pem {
            path: cert.to_path_buf(),
            reason: "no certificate".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| Error::Pem {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok((chain, key_der))
}

/// The serving certificate files: the configured ones, or `<cert dir>/kubelet.{crt,key}`,
/// generated (self-signed, for the node's name and IPs) when they do not exist yet. As
/// upstream, an existing generated pair is reused across restarts.
pub fn serving_files(
    api: &ApiServing,
    node_name: &str,
    hostname: &str,
    ips: &[IpAddr],
) -> Result<(PathBuf, PathBuf), Error> {
    if let Some((c, k)) = &api.tls_files {
        return Ok((c.clone(), k.clone()));
    }
    let cert = api.cert_dir.join("kubelet.crt");
    let key = api.cert_dir.join("kubelet.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&api.cert_dir).map_err(|source| Error::File {
        what: "creating",
        path: api.cert_dir.clone(),
        source,
    })?;
    let (cert_pem, key_pem) = self_signed(node_name, hostname, ips)?;
    write(&key, &key_pem)?;
    write(&cert, &cert_pem)?;
    Ok((cert, key))
}

/// A self-signed serving certificate for `node_name` (CN `<host>@<unix time>`, as
/// upstream), valid for the node name, the host name, `localhost` and `ips`.
pub fn self_signed(
    node_name: &str,
    hostname: &str,
    ips: &[IpAddr],
) -> Result<(String, String), Error> {
    let mut names: Vec<String> = vec![node_name.to_string()];
    for n in [hostname, "localhost"] {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    }
    let mut params = rcgen::CertificateParams::new(names)?;
    for ip in ips {
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(*ip));
    }
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{node_name}@{}", chrono::Utc::now().timestamp()),
    );
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The rustls server configuration: the serving pair, client certificates verified against
/// `client_ca` when given but optional (tokens and anonymous requests still reach the
/// authenticator, which answers 401 itself), HTTP/1.1 only: exec upgrades need it, and the
/// apiserver talks HTTP/1.1 to kubelets.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, Error> {
    let (chain, key_der) = load_pair(cert, key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Rustls(e.to_string()))?;
    let builder = match client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read(path)?) {
                let c = c.map_err(|e| Error::Pem {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
                roots.add(c).map_err(|e| Error::Pem {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| Error::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn generated_pair_names_the_node_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let api = crate::options::Config::resolve(&crate::options::Flags::parse_from([
            "kubelet",
            &format!("--root-dir={}", dir.path().display()),
        ]))
        .unwrap()
        .api;
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let (cert, key) = serving_files(&api, "node-a", "host-a", &[ip]).unwrap();
        assert_eq!(cert, dir.path().join("pki/kubelet.crt"));
        let pem = std::fs::read(&cert).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = parsed.subject_alternative_name().unwrap().unwrap().value;
        let names: Vec<String> = san.general_names.iter().map(|n| n.to_string()).collect();
        assert!(names.iter().any(|n| n.contains("node-a")), "{names:?}");
        assert!(names.iter().any(|n| n.contains("host-a")), "{names:?}");
        assert!(
            names.iter().any(|n| n == "IPAddress(0a:01:02:03)"),
            "{names:?}"
        );
        // A restart keeps the same certificate rather than minting a new one.
        serving_files(&api, "node-a", "host-a", &[ip]).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), pem);
        assert!(server_config(&cert, &key, None).is_ok());
        assert!(server_config(&cert, &key, Some(&cert)).is_ok());
    }
}
