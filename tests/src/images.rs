//! Building OCI images from local files and pushing them to a registry: the test images of
//! the kubelet's end-to-end tests, with Debian's busybox-static as the base.
//!
//! An image is one gzip layer (plus any raw layers a test adds, e.g. a malicious one) and an
//! OCI config with ENTRYPOINT/CMD/ENV/WORKDIR. Nothing is pulled from the Internet.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

/// Debian's statically linked busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// One entry of the image's single file layer.
#[derive(Clone, Debug)]
enum Entry {
    File { data: Vec<u8>, mode: u32 },
    Dir,
    Symlink(String),
}

/// An image being put together.
#[derive(Clone, Debug, Default)]
pub struct ImageBuilder {
    entries: BTreeMap<String, Entry>,
    raw_layers: Vec<Vec<u8>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Vec<String>,
    workdir: Option<String>,
}

impl ImageBuilder {
    /// An empty image (no files at all).
    pub fn scratch() -> Self {
        Self::default().env("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    }

    /// busybox-static as `/bin/busybox` with a symlink per applet in `/bin`, plus `/tmp`,
    /// `/etc` and a `root` user; CMD `sh`.
    pub fn busybox() -> Result<Self> {
        let data = std::fs::read(BUSYBOX)
            .with_context(|| format!("reading {BUSYBOX} (apt-get install busybox-static)"))?;
        let list = std::process::Command::new(BUSYBOX)
            .arg("--list")
            .output()
            .context("busybox --list")?;
        let mut b = Self::scratch()
            .file("bin/busybox", data, 0o755)
            .dir("tmp")
            .dir("etc")
            .dir("root")
            .file(
                "etc/passwd",
                b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
                    .to_vec(),
                0o644,
            )
            .file(
                "etc/group",
                b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
                0o644,
            )
            .cmd(&["sh"]);
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            if applet != "busybox" {
                b = b.symlink(&format!("bin/{applet}"), "/bin/busybox");
            }
        }
        Ok(b)
    }

    /// Adds a file.
    pub fn file(mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.entries.insert(
            path.trim_start_matches('/').to_string(),
            Entry::File {
                data: data.into(),
                mode,
            },
        );
        self
    }

    /// Adds a file copied from the local file system.
    pub fn copy(self, path: &str, from: &Path, mode: u32) -> Result<Self> {
        let data = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        Ok(self.file(path, data, mode))
    }

    /// Adds a directory.
    pub fn dir(mut self, path: &str) -> Self {
        self.entries
            .insert(path.trim_start_matches('/').to_string(), Entry::Dir);
        self
    }

    /// Adds a symlink.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.entries.insert(
            path.trim_start_matches('/').to_string(),
            Entry::Symlink(target.to_string()),
        );
        self
    }

    /// Adds an uncompressed tar, as is, as a further layer (for hostile-layer tests).
    pub fn raw_layer(mut self, tar: Vec<u8>) -> Self {
        self.raw_layers.push(tar);
        self
    }

    /// Sets ENTRYPOINT.
    pub fn entrypoint(mut self, argv: &[&str]) -> Self {
        self.entrypoint = Some(argv.iter().map(ToString::to_string).collect());
        self
    }

    /// Sets CMD.
    pub fn cmd(mut self, argv: &[&str]) -> Self {
        self.cmd = Some(argv.iter().map(ToString::to_string).collect());
        self
    }

    /// Adds `K=V` to ENV.
    pub fn env(mut self, kv: &str) -> Self {
        self.env.push(kv.to_string());
        self
    }

    /// Sets WORKDIR.
    pub fn workdir(mut self, dir: &str) -> Self {
        self.workdir = Some(dir.to_string());
        self
    }

    /// The files as an uncompressed tar (parents before children, deterministic).
    pub fn layer_tar(&self) -> Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dirs: Vec<String> = Vec::new();
        for path in self.entries.keys() {
            let mut acc = String::new();
            let parts: Vec<&str> = path.split('/').collect();
            for part in &parts[..parts.len().saturating_sub(1)] {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(part);
                if !dirs.contains(&acc) {
                    dirs.push(acc.clone());
                }
            }
        }
        for (path, e) in &self.entries {
            if matches!(e, Entry::Dir) && !dirs.contains(path) {
                dirs.push(path.clone());
            }
        }
        dirs.sort();
        let header = |kind: tar::EntryType, mode: u32, size: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h
        };
        for d in &dirs {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            b.append_data(&mut h, format!("{d}/"), std::io::empty())?;
        }
        for (path, e) in &self.entries {
            match e {
                Entry::Dir => {}
                Entry::File { data, mode } => {
                    let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                    b.append_data(&mut h, path, &data[..])?;
                }
                Entry::Symlink(target) => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                    b.append_link(&mut h, path, target)?;
                }
            }
        }
        Ok(b.into_inner()?)
    }

    /// Pushes the image as `<registry>/<repository>:<tag>`; returns the manifest URL.
    pub async fn push(&self, registry: &str, repository: &str, tag: &str) -> Result<String> {
        self.push_with_auth(registry, repository, tag, &RegistryAuth::Anonymous)
            .await
    }

    /// [`push`](Self::push) with credentials.
    pub async fn push_with_auth(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        auth: &RegistryAuth,
    ) -> Result<String> {
        let mut tars = vec![self.layer_tar()?];
        tars.extend(self.raw_layers.iter().cloned());
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for tar in tars {
            diff_ids.push(format!("sha256:{:x}", Sha256::digest(&tar)));
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, &tar)?;
            layers.push(ImageLayer::oci_v1_gzip(gz.finish()?, None));
        }
        let mut config = serde_json::json!({
            "architecture": go_arch(),
            "os": "linux",
            "config": {"Env": self.env},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(e) = &self.entrypoint {
            config["config"]["Entrypoint"] = serde_json::json!(e);
        }
        if let Some(c) = &self.cmd {
            config["config"]["Cmd"] = serde_json::json!(c);
        }
        if let Some(w) = &self.workdir {
            config["config"]["WorkingDir"] = serde_json::json!(w);
        }
        let config = Config::oci_v1(serde_json::to_vec(&config)?, None);
        let reference: Reference = format!("{registry}/{repository}:{tag}").parse()?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        });
        let pushed = client
            .push(&reference, &layers, config, auth, None)
            .await
            .with_context(|| format!("pushing {reference}"))?;
        Ok(pushed.manifest_url)
    }
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
