//! Writing kubeconfig files with embedded certificates, so one file is all a client needs.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::pki::CertPair;

/// Errors writing or loading a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Serializing or writing the file failed.
    #[error("writing kubeconfig {path}")]
    Write {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be turned into a client configuration.
    #[error("loading kubeconfig {path}")]
    Load {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Writes a kubeconfig with one cluster, one user (client certificate) and one context,
/// all named `name`, and makes that context current.
pub fn write(
    path: &Path,
    name: &str,
    server: &str,
    ca_pem: &str,
    user: &CertPair,
) -> Result<(), Error> {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": name,
            "cluster": {
                "server": server,
                "certificate-authority-data": STANDARD.encode(ca_pem),
            },
        }],
        "users": [{
            "name": name,
            "user": {
                "client-certificate-data": STANDARD.encode(&user.cert_pem),
                "client-key-data": STANDARD.encode(&user.key_pem),
            },
        }],
        "contexts": [{
            "name": name,
            "context": {"cluster": name, "user": name},
        }],
        "current-context": name,
        "preferences": {},
    });
    let io = |source| Error::Write {
        path: path.display().to_string(),
        source,
    };
    let yaml = serde_yaml::to_string(&doc).map_err(|e| io(std::io::Error::other(e)))?;
    std::fs::write(path, yaml).map_err(io)?;
    // The file holds a client key.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)
}

/// Builds a kube client from a kubeconfig file (its current context).
pub async fn client(path: &Path) -> Result<kube::Client, Error> {
    let load = |source: Box<dyn std::error::Error + Send + Sync>| Error::Load {
        path: path.display().to_string(),
        source,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| load(Box::new(e)))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| load(Box::new(e)))?;
    kube::Client::try_from(config).map_err(|e| load(Box::new(e)))
}
