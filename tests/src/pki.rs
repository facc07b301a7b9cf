//! The control plane's certificates and keys, generated in-process (no openssl).
//!
//! Mirrors what kubeadm lays out: a cluster CA that signs the apiserver's serving cert and
//! every client cert (admin, kubelet client, components), a separate front-proxy CA for the
//! aggregation layer, and a service-account key pair for token signing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Errors creating or writing the PKI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Key or certificate generation failed.
    #[error("generating {what}")]
    Generate {
        /// Which certificate or key.
        what: String,
        /// The underlying rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// Writing a file failed.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// An IP SAN did not parse.
    #[error("invalid IP address {0:?} for a certificate")]
    BadIp(String),
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct CertPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate file on disk.
    pub cert_path: PathBuf,
    /// The key file on disk.
    pub key_path: PathBuf,
}

/// A certificate authority able to issue more certificates later (kubelet serving certs,
/// component identities).
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's own certificate and key.
    pub pair: CertPair,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("pair", &self.pair.cert_path)
            .finish()
    }
}

/// The whole PKI of one control plane, written under one directory.
#[derive(Debug)]
pub struct Pki {
    /// The directory holding every file.
    pub dir: PathBuf,
    /// The cluster CA: signs serving and client certs; `--client-ca-file`.
    pub ca: Authority,
    /// The apiserver's serving certificate.
    pub apiserver: CertPair,
    /// The admin client certificate (`O=system:masters`).
    pub admin: CertPair,
    /// The apiserver's client certificate towards kubelets.
    pub apiserver_kubelet_client: CertPair,
    /// The front-proxy CA (aggregation layer request headers).
    pub front_proxy_ca: Authority,
    /// The apiserver's front-proxy client certificate.
    pub front_proxy_client: CertPair,
    /// Service-account signing key (PKCS#8 PEM) file.
    pub sa_key_path: PathBuf,
    /// Service-account public key (PEM) file.
    pub sa_pub_path: PathBuf,
}

/// The user name of the admin client certificate.
pub const ADMIN_USER: &str = "ferrokube-admin";

impl Pki {
    /// Generates a fresh PKI in `dir`. `apiserver_ips` become IP SANs of the serving cert
    /// (loopback and the first Service IP, so in-cluster clients can verify it).
    pub fn generate(dir: &Path, apiserver_ips: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let ca = Authority::new(dir, "ca", "ferrokube-ca")?;
        let mut sans: Vec<SanType> = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .iter()
        .map(|d| dns(d))
        .collect::<Result<_>>()?;
        for ip in apiserver_ips {
            let parsed: IpAddr = ip.parse().map_err(|_| Error::BadIp((*ip).to_string()))?;
            sans.push(SanType::IpAddress(parsed));
        }
        let apiserver = ca.issue(dir, "apiserver", "kube-apiserver", &[], sans, Usage::Server)?;
        let admin = ca.issue_client(dir, "admin", ADMIN_USER, &["system:masters"])?;
        let apiserver_kubelet_client = ca.issue_client(
            dir,
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &["system:masters"],
        )?;
        let front_proxy_ca = Authority::new(dir, "front-proxy-ca", "front-proxy-ca")?;
        let front_proxy_client =
            front_proxy_ca.issue_client(dir, "front-proxy-client", "front-proxy-client", &[])?;

        let sa = KeyPair::generate().map_err(|source| Error::Generate {
            what: "service-account key".into(),
            source,
        })?;
        let sa_key_path = dir.join("sa.key");
        let sa_pub_path = dir.join("sa.pub");
        write(&sa_key_path, &sa.serialize_pem())?;
        write(&sa_pub_path, &sa.public_key_pem())?;

        Ok(Self {
            dir: dir.to_path_buf(),
            ca,
            apiserver,
            admin,
            apiserver_kubelet_client,
            front_proxy_ca,
            front_proxy_client,
            sa_key_path,
            sa_pub_path,
        })
    }
}

/// What a leaf certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// TLS server authentication.
    Server,
    /// TLS client authentication.
    Client,
}

// === impl Authority ===

impl Authority {
    /// Creates a self-signed CA and writes `<stem>.crt` / `<stem>.key` in `dir`.
    pub fn new(dir: &Path, stem: &str, common_name: &str) -> Result<Self> {
        let what = || format!("{stem} CA");
        let key = KeyPair::generate().map_err(|source| Error::Generate {
            what: what(),
            source,
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(|source| Error::Generate {
            what: what(),
            source,
        })?;
        let pair = write_pair(dir, stem, cert.pem(), key.serialize_pem())?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            pair,
        })
    }

    /// Issues a client certificate for `user` in `groups` and writes it as `<stem>.crt/.key`.
    pub fn issue_client(
        &self,
        dir: &Path,
        stem: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<CertPair> {
        self.issue(dir, stem, user, groups, Vec::new(), Usage::Client)
    }

    /// Issues a leaf certificate signed by this CA and writes it as `<stem>.crt/.key`.
    pub fn issue(
        &self,
        dir: &Path,
        stem: &str,
        common_name: &str,
        organizations: &[&str],
        sans: Vec<SanType>,
        usage: Usage,
    ) -> Result<CertPair> {
        let what = || format!("{stem} certificate");
        let key = KeyPair::generate().map_err(|source| Error::Generate {
            what: what(),
            source,
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, organizations);
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| Error::Generate {
                what: what(),
                source,
            })?;
        write_pair(dir, stem, cert.pem(), key.serialize_pem())
    }
}

/// A DNS subject alternative name.
pub fn dns(name: &str) -> Result<SanType> {
    name.to_string()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|source| Error::Generate {
            what: format!("DNS name {name}"),
            source,
        })
}

fn name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    for o in organizations {
        dn.push(DnType::OrganizationName, *o);
    }
    dn
}

fn write_pair(dir: &Path, stem: &str, cert_pem: String, key_pem: String) -> Result<CertPair> {
    let cert_path = dir.join(format!("{stem}.crt"));
    let key_path = dir.join(format!("{stem}.key"));
    write(&cert_path, &cert_pem)?;
    write(&key_path, &key_pem)?;
    Ok(CertPair {
        cert_pem,
        key_pem,
        cert_path,
        key_path,
    })
}

fn write(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Keys are private: 0600 from the start, not chmod-ed after the fact.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })
}
