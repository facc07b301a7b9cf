//! Images: pulled over OCI distribution (oci-client), layers unpacked once into a
//! content-addressed store, and container root file systems assembled by overlayfs.
//!
//! ```text
//!   <root>/images/refs/<sha256 of reference>.json   what a reference resolved to
//!   <root>/images/blobs/<hex>.partial               a layer while it downloads
//!   <root>/images/layers/<hex>/                     an unpacked layer (overlay format)
//! ```
//!
//! A layer is unpacked into a temporary directory and renamed into place, so a crash never
//! leaves a half-unpacked layer that looks complete. Whiteouts become overlayfs whiteouts
//! (0:0 character devices) and opaque directories get `trusted.overlay.opaque=y`. An entry
//! whose path leaves the layer (`..`, a parent that is a symlink, a hard link out of it) or
//! that is a device node is refused, and the whole layer with it.

pub mod reference;

use crate::io_error::io;
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Errors pulling or unpacking an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry refused or failed.
    #[error("pulling {reference}: {message}")]
    Registry {
        /// The image.
        reference: String,
        /// The registry's answer.
        message: String,
    },
    /// A blob did not match its digest.
    #[error("blob {expected} has digest {actual}")]
    Digest {
        /// What the manifest says.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// A layer was refused.
    #[error("layer {digest}: {source}")]
    Unpack {
        /// The layer.
        digest: String,
        /// Why.
        #[source]
        source: UnpackError,
    },
    /// The image is not present and the pull policy is Never.
    #[error("image {0} is not present and pull policy is Never")]
    NotPresent(String),
    /// A file in the store could not be read or written.
    #[error(transparent)]
    Io(#[from] crate::io_error::IoError),
}

/// Why a layer's tar stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry's path leaves the layer.
    #[error("entry {0:?} escapes the root file system")]
    Escape(String),
    /// An entry is a device node.
    #[error("entry {0:?} is a device node")]
    Device(String),
    /// The stream is not a valid (compressed) tar.
    #[error("reading the layer: {0}")]
    Io(#[from] std::io::Error),
}

/// The parts of an image's config that decide how its containers run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunConfig {
    /// ENTRYPOINT.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// CMD.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// ENV (`K=V`).
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// WORKDIR.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// USER.
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
}

/// A pulled image as recorded in the store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Image {
    /// The reference as the pod spelled it.
    pub reference: String,
    /// `repo@sha256:...` of the manifest (the container status' imageID).
    pub image_ref: String,
    /// The config's digest (the image ID).
    pub id: String,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
    /// How to run it.
    pub config: RunConfig,
}

/// Checks `sha256:<64 hex>` and returns the hex part (safe as a file name).
pub fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(hex)
}

/// Pulls images and owns the content store.
pub struct ImageStore {
    root: PathBuf,
    https: Client,
    http: Client,
    insecure: Vec<String>,
    /// One lock per reference, so concurrent pulls of one image happen once.
    pulling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ImageStore {
    /// A store under `<root_dir>/images`. Loopback registries and `insecure` ones use HTTP.
    pub fn new(root_dir: &Path, insecure: Vec<String>) -> Self {
        // reqwest (under oci-client) needs a process-wide rustls provider; ring is the
        // workspace's. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let make = |protocol| {
            Client::new(oci_client::client::ClientConfig {
                protocol,
                ..Default::default()
            })
        };
        Self {
            root: root_dir.join("images"),
            https: make(oci_client::client::ClientProtocol::Https),
            http: make(oci_client::client::ClientProtocol::Http),
            insecure,
            pulling: Mutex::new(HashMap::new()),
        }
    }

    fn plain_http(&self, registry: &str) -> bool {
        let host = registry.rsplit_once(':').map_or(registry, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                registry
            }
        });
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        loopback || self.insecure.iter().any(|r| r == registry)
    }

    /// The client for a pull. oci-client keeps the first credentials it saw per registry,
    /// so a pull with credentials gets a client of its own; anonymous pulls share one.
    fn client_for(&self, registry: &str, auth: &RegistryAuth) -> std::borrow::Cow<'_, Client> {
        let http = self.plain_http(registry);
        if matches!(auth, RegistryAuth::Anonymous) {
            return std::borrow::Cow::Borrowed(if http { &self.http } else { &self.https });
        }
        std::borrow::Cow::Owned(Client::new(oci_client::client::ClientConfig {
            protocol: if http {
                oci_client::client::ClientProtocol::Http
            } else {
                oci_client::client::ClientProtocol::Https
            },
            ..Default::default()
        }))
    }

    fn record_path(&self, reference: &str) -> PathBuf {
        let hash = format!("{:x}", Sha256::digest(reference.as_bytes()));
        self.root.join("refs").join(format!("{hash}.json"))
    }

    /// The directory an unpacked layer lives in.
    pub fn layer_dir(&self, digest: &str) -> Option<PathBuf> {
        digest_hex(digest).map(|h| self.root.join("layers").join(h))
    }

    /// The image `reference` resolved to when it was last pulled, if its layers are present.
    pub fn lookup(&self, reference: &str) -> Option<Image> {
        let text = std::fs::read_to_string(self.record_path(reference)).ok()?;
        let image: Image = serde_json::from_str(&text).ok()?;
        image
            .layers
            .iter()
            .all(|l| self.layer_dir(l).is_some_and(|d| d.is_dir()))
            .then_some(image)
    }

    /// Pulls `reference` (resolving manifest lists to this platform), verifying and
    /// unpacking each layer not in the store yet. Concurrent calls for one reference share
    /// one pull.
    ///
    /// `reference` is the name as the pod spells it (the store's key, and what messages
    /// quote); `parsed` is its normalised form, from [`reference::parse`].
    pub async fn pull(
        &self,
        reference: &str,
        parsed: &Reference,
        auth: &RegistryAuth,
    ) -> Result<Image, Error> {
        let lock = self
            .pulling
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(reference.to_string())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        let client = self.client_for(parsed.resolve_registry(), auth);
        let registry_err = |e: oci_client::errors::OciDistributionError| Error::Registry {
            reference: reference.to_string(),
            message: e.to_string(),
        };
        let (manifest, manifest_digest, config) = client
            .pull_manifest_and_config(parsed, auth)
            .await
            .map_err(registry_err)?;
        let run_config = serde_json::from_str::<ConfigFile>(&config)
            .ok()
            .and_then(|c| c.config)
            .unwrap_or_default();
        for dir in ["layers", "blobs", "refs"] {
            std::fs::create_dir_all(self.root.join(dir)).map_err(io("creating the image store"))?;
        }
        let mut layers = Vec::new();
        for layer in &manifest.layers {
            let hex = digest_hex(&layer.digest).ok_or_else(|| Error::Registry {
                reference: reference.to_string(),
                message: format!("unsupported layer digest {:?}", layer.digest),
            })?;
            let dir = self.root.join("layers").join(hex);
            if !dir.is_dir() {
                let blob = self.root.join("blobs").join(format!("{hex}.partial"));
                let file = tokio::fs::File::create(&blob)
                    .await
                    .map_err(io(format!("creating {}", blob.display())))?;
                client
                    .pull_blob(parsed, layer, file)
                    .await
                    .map_err(registry_err)?;
                let (blob2, dir2, digest) = (blob.clone(), dir.clone(), layer.digest.clone());
                let unpacked =
                    tokio::task::spawn_blocking(move || verify_and_unpack(&blob2, &dir2, &digest))
                        .await
                        .map_err(|e| io("unpacking")(std::io::Error::other(e.to_string())));
                let _ = std::fs::remove_file(&blob);
                unpacked??;
            }
            layers.push(layer.digest.clone());
        }
        let repo = format!("{}/{}", parsed.resolve_registry(), parsed.repository());
        let image = Image {
            reference: reference.to_string(),
            image_ref: format!("{repo}@{manifest_digest}"),
            id: manifest.config.digest.clone(),
            layers,
            config: run_config,
        };
        let path = self.record_path(reference);
        let tmp = path.with_extension("tmp");
        let text =
            serde_json::to_vec(&image).map_err(|e| io("encoding")(std::io::Error::other(e)))?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(io(format!("writing {}", path.display())))?;
        Ok(image)
    }

    /// Image garbage collection (upstream's `--image-gc-high-threshold` /
    /// `--image-gc-low-threshold`): when the file system holding the store is more than
    /// `high` percent used, forgets every image no pod on the node uses and removes the
    /// layers no remaining image needs. Returns how many layers were removed.
    pub fn gc(&self, in_use: &HashSet<String>, high: u8, low: u8) -> usize {
        let used_percent = |root: &Path| {
            rustix::fs::statvfs(root).ok().map_or(0, |s| {
                let total = s.f_blocks.max(1);
                ((total - s.f_bavail.min(total)) * 100 / total) as u8
            })
        };
        if used_percent(&self.root) <= high {
            return 0;
        }
        // A pull in progress may be writing a layer no record names yet.
        let busy = self
            .pulling
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|m| m.try_lock().is_err());
        if busy {
            return 0;
        }
        let mut keep: HashSet<String> = HashSet::new();
        if let Ok(rd) = std::fs::read_dir(self.root.join("refs")) {
            for e in rd.filter_map(Result::ok) {
                let Some(image) = std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|t| serde_json::from_str::<Image>(&t).ok())
                else {
                    continue;
                };
                if in_use.contains(&image.reference) {
                    keep.extend(
                        image
                            .layers
                            .iter()
                            .filter_map(|l| digest_hex(l).map(str::to_string)),
                    );
                } else {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let mut removed = 0;
        if let Ok(rd) = std::fs::read_dir(self.root.join("layers")) {
            for e in rd.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) && std::fs::remove_dir_all(e.path()).is_ok() {
                    removed += 1;
                    if used_percent(&self.root) < low {
                        break;
                    }
                }
            }
        }
        removed
    }

    /// Mounts `image`'s layers read-only under a fresh upper dir at `target`.
    pub fn mount_rootfs(&self, image: &Image, dir: &Path) -> Result<PathBuf, Error> {
        let lower: Vec<String> = image
            .layers
            .iter()
            .rev()
            .filter_map(|l| self.layer_dir(l))
            .map(|d| d.display().to_string())
            .collect();
        let (upper, work, target) = (dir.join("upper"), dir.join("work"), dir.join("rootfs"));
        for d in [&upper, &work, &target] {
            std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
        }
        if is_mountpoint(&target) {
            return Ok(target);
        }
        // Every path here is made by us from hex digests and the root dir, never from a pod.
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            upper.display(),
            work.display()
        );
        let data = CString::new(data).map_err(|e| io("mount options")(std::io::Error::other(e)))?;
        rustix::mount::mount(
            "overlay",
            &target,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(|e| io(format!("mounting overlay on {}", target.display()))(e.into()))?;
        Ok(target)
    }
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(m), Some(parent)) = (std::fs::metadata(path), path.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != m.dev() || p.ino() == m.ino())
}

/// Unmounts `path` if something is mounted there (lazily, so a busy mount still goes).
pub fn unmount(path: &Path) {
    if is_mountpoint(path) {
        let _ = rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH);
    }
}

fn verify_and_unpack(blob: &Path, dir: &Path, digest: &str) -> Result<(), Error> {
    let mut f = File::open(blob).map_err(io(format!("opening {}", blob.display())))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(io("hashing the layer"))?;
    let actual = format!("sha256:{:x}", hasher.finalize());
    if actual != digest {
        return Err(Error::Digest {
            expected: digest.to_string(),
            actual,
        });
    }
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    let f = File::open(blob).map_err(io(format!("opening {}", blob.display())))?;
    if let Err(source) = unpack_layer(BufReader::new(f), &tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::Unpack {
            digest: digest.to_string(),
            source,
        });
    }
    std::fs::rename(&tmp, dir).map_err(io(format!("renaming into {}", dir.display())))?;
    Ok(())
}

/// Unpacks a (gzip, zstd or plain) tar layer into `dest` in overlayfs format.
pub fn unpack_layer<R: Read>(mut reader: R, dest: &Path) -> Result<(), UnpackError> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        let got = reader.read(&mut magic[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let head = std::io::Cursor::new(magic[..n].to_vec()).chain(reader);
    if magic[..n].starts_with(&[0x1f, 0x8b]) {
        unpack_tar(flate2::read::GzDecoder::new(head), dest)
    } else if magic[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
        unpack_tar(zstd::stream::read::Decoder::new(head)?, dest)
    } else {
        unpack_tar(head, dest)
    }
}

/// The entry path made relative and normal; `..` anywhere is refused.
pub fn clean_path(p: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(UnpackError::Escape(p.display().to_string()));
            }
        }
    }
    Ok(out)
}

/// Makes `rel`'s parent directories under `dest`, refusing to pass through a symlink (which
/// could point anywhere on the host).
fn safe_parent(dest: &Path, rel: &Path) -> Result<(), UnpackError> {
    let mut cur = dest.to_path_buf();
    let parents: Vec<_> = rel
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    for c in parents {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UnpackError::Escape(rel.display().to_string()));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                std::fs::remove_file(&cur)?;
                std::fs::create_dir(&cur)?;
            }
            Err(_) => std::fs::create_dir(&cur)?,
        }
    }
    Ok(())
}

fn remove_existing(path: &Path, keep_dir: bool) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && keep_dir => Ok(()),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

fn unpack_tar<R: Read>(reader: R, dest: &Path) -> Result<(), UnpackError> {
    use tar::EntryType;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let rel = clean_path(&raw)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        safe_parent(dest, &rel)?;
        let full = dest.join(&rel);
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == ".wh..wh..opq" {
            let dir = full.parent().unwrap_or(dest);
            rustix::fs::setxattr(
                dir,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(std::io::Error::from)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let target = full.with_file_name(hidden);
            remove_existing(&target, false)?;
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &target,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(std::io::Error::from)?;
            continue;
        }
        match entry.header().entry_type() {
            EntryType::Char | EntryType::Block => {
                return Err(UnpackError::Device(rel.display().to_string()));
            }
            EntryType::Link => {
                let link = entry
                    .link_name()?
                    .ok_or_else(|| UnpackError::Escape(rel.display().to_string()))?
                    .into_owned();
                let target_rel = clean_path(&link)?;
                safe_parent(dest, &target_rel)?;
                let target = dest.join(&target_rel);
                if std::fs::symlink_metadata(&target)
                    .is_ok_and(|m| m.file_type().is_symlink() || m.is_dir())
                {
                    // A hard link to a symlink or directory could alias something outside.
                    return Err(UnpackError::Escape(link.display().to_string()));
                }
                remove_existing(&full, false)?;
                std::fs::hard_link(&target, &full)?;
            }
            EntryType::Directory => {
                remove_existing(&full, true)?;
                entry.unpack(&full)?;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::Symlink | EntryType::Fifo => {
                remove_existing(&full, false)?;
                entry.unpack(&full)?;
            }
            // Metadata entries (pax, GNU long names) are consumed by the iterator; anything
            // else has no meaning in a layer.
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the raw name as a hostile archive would.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(kind);
        b.append_link(&mut h, path, target).unwrap();
    }

    #[test]
    fn regular_layer_with_whiteouts_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let data = tar_with(|b| {
            file(b, "./etc/hello", b"hi");
            link(b, tar::EntryType::Symlink, "bin/sh", "/bin/busybox");
            link(b, tar::EntryType::Link, "etc/hello2", "etc/hello");
            file(b, "etc/.wh.gone", b"");
        });
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &data).unwrap();
        unpack_layer(&gz.finish().unwrap()[..], dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("etc/hello2")).unwrap(), b"hi");
        assert_eq!(
            std::fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        use std::os::unix::fs::FileTypeExt;
        let wh = std::fs::symlink_metadata(dir.path().join("etc/gone")).unwrap();
        assert!(wh.file_type().is_char_device());
    }

    #[test]
    fn malicious_layers_are_refused_and_write_nothing_outside() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("rootfs");
        std::fs::create_dir(&root).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("dotdot", tar_with(|b| file(b, "../escaped", b"x"))),
            (
                "nested dotdot",
                tar_with(|b| file(b, "a/../../escaped", b"x")),
            ),
            (
                "through symlink",
                tar_with(|b| {
                    link(
                        b,
                        tar::EntryType::Symlink,
                        "evil",
                        outer.path().to_str().unwrap(),
                    );
                    file(b, "evil/escaped", b"x");
                }),
            ),
            (
                "hardlink out",
                tar_with(|b| link(b, tar::EntryType::Link, "h", "../escaped")),
            ),
            (
                "device",
                tar_with(|b| {
                    let mut h = tar::Header::new_gnu();
                    h.set_path("dev/sda").unwrap();
                    h.set_entry_type(tar::EntryType::Block);
                    h.set_size(0);
                    h.set_cksum();
                    b.append(&h, &[][..]).unwrap();
                }),
            ),
        ];
        for (what, data) in cases {
            assert!(
                unpack_layer(&data[..], &root).is_err(),
                "{what} must be refused"
            );
            assert!(
                !outer.path().join("escaped").exists(),
                "{what} wrote outside"
            );
        }
        assert!(clean_path(Path::new("/abs/../x")).is_err());
        assert_eq!(
            clean_path(Path::new("/abs/./x")).unwrap(),
            Path::new("abs/x")
        );
    }

    #[test]
    fn gc_keeps_what_pods_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path(), Vec::new());
        let layer = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        for (reference, layers) in [
            ("used:1", vec![layer('a'), layer('b')]),
            ("unused:1", vec![layer('b'), layer('c')]),
        ] {
            for l in &layers {
                std::fs::create_dir_all(store.layer_dir(l).unwrap()).unwrap();
            }
            let image = Image {
                reference: reference.into(),
                image_ref: String::new(),
                id: String::new(),
                layers,
                config: RunConfig::default(),
            };
            let path = store.record_path(reference);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, serde_json::to_vec(&image).unwrap()).unwrap();
        }
        let in_use = HashSet::from(["used:1".to_string()]);
        // Thresholds of 0 %/0 %: always over, never under, so everything unused goes.
        assert_eq!(store.gc(&in_use, 0, 0), 1);
        assert!(store.lookup("used:1").is_some());
        assert!(store.lookup("unused:1").is_none());
        assert!(!store.layer_dir(&layer('c')).unwrap().exists());
        assert!(store.layer_dir(&layer('b')).unwrap().exists());
        // Below the high threshold nothing happens.
        assert_eq!(store.gc(&HashSet::new(), 100, 0), 0);
        assert!(store.lookup("used:1").is_some());
    }

    #[test]
    fn digests_are_checked_before_use_as_names() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(digest_hex(&good).is_some());
        assert!(digest_hex("sha256:../../etc").is_none());
        assert!(digest_hex(&format!("sha512:{}", "a".repeat(64))).is_none());
    }
}
