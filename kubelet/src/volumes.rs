//! Pod volumes: emptyDir (disk and Memory), configMap, secret, projected (service account
//! token, ConfigMaps, Secrets, downward API) and hostPath.
//!
//! ConfigMap, Secret and projected contents are written as upstream's AtomicWriter does: a
//! fresh timestamped directory, a `..data` symlink swapped to it with one rename, and each
//! key a symlink through `..data`, so a container never sees a half-written update.

use crate::io_error::io;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Pod, Secret, ServiceAccount, Volume};
use kube::Api;

use crate::images::clean_path;

/// Why a volume could not be set up (reported as a FailedMount event).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A referenced object is missing or unreadable.
    #[error("{kind} {name:?} {reason}")]
    Source {
        /// ConfigMap, Secret, ServiceAccount token.
        kind: &'static str,
        /// Its name.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// A key's path is not allowed (absolute or `..`).
    #[error("invalid path {0:?} in volume")]
    Path(String),
    /// Files could not be written.
    #[error(transparent)]
    Io(#[from] crate::io_error::IoError),
}

/// The directory of volume `name` of plugin `plugin` in the pod dir (upstream's layout).
pub fn volume_dir(pod_dir: &Path, plugin: &str, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(plugin).join(name)
}

/// Sets up every volume of `pod`; returns each volume's host path by name.
pub async fn prepare(
    client: &kube::Client,
    pod: &Pod,
    pod_dir: &Path,
) -> Result<HashMap<String, PathBuf>, Error> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = HashMap::new();
    let volumes: &[Volume] = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or(&[]);
    for v in volumes {
        let path = if let Some(e) = &v.empty_dir {
            let dir = volume_dir(pod_dir, "kubernetes.io~empty-dir", &v.name);
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            if e.medium.as_deref() == Some("Memory") && !crate::images::is_mountpoint(&dir) {
                rustix::mount::mount(
                    "tmpfs",
                    &dir,
                    "tmpfs",
                    rustix::mount::MountFlags::empty(),
                    None,
                )
                .map_err(|e| io(format!("mounting tmpfs on {}", dir.display()))(e.into()))?;
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(io("setting emptyDir permissions"))?;
            dir
        } else if let Some(h) = &v.host_path {
            PathBuf::from(&h.path)
        } else if let Some(c) = &v.config_map {
            let dir = volume_dir(pod_dir, "kubernetes.io~configmap", &v.name);
            let files = match configmap_data(client, &ns, &c.name).await? {
                Some(data) => select(&data, c.items.as_deref())?,
                None if c.optional == Some(true) => BTreeMap::new(),
                None => return Err(not_found("ConfigMap", &c.name)),
            };
            write_atomic(&dir, &files, c.default_mode.unwrap_or(0o644))?;
            dir
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let dir = volume_dir(pod_dir, "kubernetes.io~secret", &v.name);
            let files = match secret_data(client, &ns, &name).await? {
                Some(data) => select(&data, s.items.as_deref())?,
                None if s.optional == Some(true) => BTreeMap::new(),
                None => return Err(not_found("Secret", &name)),
            };
            write_atomic(&dir, &files, s.default_mode.unwrap_or(0o644))?;
            dir
        } else if let Some(p) = &v.projected {
            let dir = volume_dir(pod_dir, "kubernetes.io~projected", &v.name);
            let mut files = BTreeMap::new();
            for src in p.sources.iter().flatten() {
                if let Some(c) = &src.config_map {
                    match configmap_data(client, &ns, &c.name).await? {
                        Some(data) => files.extend(select(&data, c.items.as_deref())?),
                        None if c.optional == Some(true) => {}
                        None => return Err(not_found("ConfigMap", &c.name)),
                    }
                }
                if let Some(s) = &src.secret {
                    match secret_data(client, &ns, &s.name).await? {
                        Some(data) => files.extend(select(&data, s.items.as_deref())?),
                        None if s.optional == Some(true) => {}
                        None => return Err(not_found("Secret", &s.name)),
                    }
                }
                if let Some(d) = &src.downward_api {
                    for item in d.items.iter().flatten() {
                        if let Some(f) = &item.field_ref {
                            let value = crate::pod_workers::field_value(pod, &f.field_path)
                                .unwrap_or_default();
                            files.insert(item.path.clone(), value.into_bytes());
                        }
                    }
                }
                if let Some(t) = &src.service_account_token {
                    let token = service_account_token(
                        client,
                        pod,
                        t.audience.clone(),
                        t.expiration_seconds,
                    )
                    .await?;
                    files.insert(t.path.clone(), token.into_bytes());
                }
            }
            write_atomic(&dir, &files, p.default_mode.unwrap_or(0o644))?;
            dir
        } else if let Some(d) = &v.downward_api {
            let dir = volume_dir(pod_dir, "kubernetes.io~downward-api", &v.name);
            let mut files = BTreeMap::new();
            for item in d.items.iter().flatten() {
                if let Some(f) = &item.field_ref {
                    let value =
                        crate::pod_workers::field_value(pod, &f.field_path).unwrap_or_default();
                    files.insert(item.path.clone(), value.into_bytes());
                }
            }
            write_atomic(&dir, &files, d.default_mode.unwrap_or(0o644))?;
            dir
        } else {
            // Unsupported volume types are left out; mounts naming them fail at start.
            continue;
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

fn not_found(kind: &'static str, name: &str) -> Error {
    Error::Source {
        kind,
        name: name.to_string(),
        reason: "not found".into(),
    }
}

/// A ConfigMap's data and binaryData, or `None` when it does not exist.
pub async fn configmap_data(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await {
        Ok(Some(cm)) => {
            let mut m: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            m.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            Ok(Some(m))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(Error::Source {
            kind: "ConfigMap",
            name: name.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// A Secret's data, or `None` when it does not exist. Values are never logged.
pub async fn secret_data(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await {
        Ok(Some(s)) => {
            let mut m: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            m.extend(
                s.string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            Ok(Some(m))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(Error::Source {
            kind: "Secret",
            name: name.to_string(),
            reason: e.to_string(),
        }),
    }
}

async fn service_account_token(
    client: &kube::Client,
    pod: &Pod,
    audience: Option<String>,
    expiration: Option<i64>,
) -> Result<String, Error> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(audience.into_iter().collect()),
            expiration_seconds: Some(expiration.unwrap_or(3600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..Default::default()
    };
    api.create_token_request(&sa, &Default::default(), &req)
        .await
        .ok()
        .and_then(|r| r.status.and_then(|s| s.token))
        .ok_or_else(|| Error::Source {
            kind: "ServiceAccount token for",
            name: sa,
            reason: "could not be requested".into(),
        })
}

/// The files a volume shows: every key, or only `items` (each at its own path).
pub fn select(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    match items {
        None => Ok(data.clone()),
        Some(items) => items
            .iter()
            .map(|i| match data.get(&i.key) {
                Some(v) => Ok((i.path.clone(), v.clone())),
                None => Err(Error::Source {
                    kind: "key",
                    name: i.key.clone(),
                    reason: "not found in the source".into(),
                }),
            })
            .collect(),
    }
}

/// Writes `files` under `dir` atomically (upstream's AtomicWriter layout).
pub fn write_atomic(dir: &Path, files: &BTreeMap<String, Vec<u8>>, mode: i32) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let data_link = dir.join("..data");
    // Unchanged contents: nothing to do (keeps inotify watchers in containers quiet).
    if let Ok(current) = std::fs::read_link(&data_link) {
        let cur = dir.join(current);
        let same = files
            .iter()
            .all(|(k, v)| std::fs::read(cur.join(k)).is_ok_and(|d| &d == v))
            && std::fs::read_dir(&cur).map(|rd| rd.count()).unwrap_or(0) == top_level(files).len();
        if same {
            return Ok(());
        }
    }
    let stamp = format!("..{}", chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S.%f"));
    let ts_dir = dir.join(&stamp);
    std::fs::create_dir(&ts_dir).map_err(io(format!("creating {}", ts_dir.display())))?;
    for (key, value) in files {
        let rel = clean_path(Path::new(key)).map_err(|_| Error::Path(key.clone()))?;
        if rel.as_os_str().is_empty() || key.starts_with('/') || key.starts_with("..") {
            return Err(Error::Path(key.clone()));
        }
        let path = ts_dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating volume dirs"))?;
        }
        std::fs::write(&path, value).map_err(io(format!("writing volume file {key}")))?;
        std::fs::set_permissions(
            &path,
            std::fs::Permissions::from_mode((mode & 0o777) as u32),
        )
        .map_err(io("setting volume file mode"))?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link).map_err(io("linking ..data_tmp"))?;
    let old = std::fs::read_link(&data_link).ok();
    std::fs::rename(&tmp_link, &data_link).map_err(io("swapping ..data"))?;
    let tops = top_level(files);
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link)
                .map_err(io("linking a volume key"))?;
        }
    }
    // Keys that went away lose their links; the old generation is removed.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !tops.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Some(old) = old
        && old != Path::new(&stamp)
    {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

fn top_level(files: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let mut v: Vec<String> = files
        .keys()
        .filter_map(|k| {
            k.split('/')
                .find(|s| !s.is_empty() && *s != ".")
                .map(str::to_string)
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Unmounts Memory emptyDirs of a pod before its directory is removed.
pub fn teardown(pod_dir: &Path) {
    let base = pod_dir.join("volumes/kubernetes.io~empty-dir");
    if let Ok(rd) = std::fs::read_dir(base) {
        for e in rd.filter_map(Result::ok) {
            crate::images::unmount(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_updates_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = BTreeMap::from([
            ("a".to_string(), b"1".to_vec()),
            ("sub/b".to_string(), b"2".to_vec()),
        ]);
        write_atomic(dir.path(), &files, 0o644).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(dir.path().join("sub/b")).unwrap(), b"2");
        files.insert("a".into(), b"changed".to_vec());
        files.remove("sub/b");
        write_atomic(dir.path(), &files, 0o644).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"changed");
        assert!(!dir.path().join("sub").exists());
        let bad = BTreeMap::from([("../x".to_string(), b"1".to_vec())]);
        assert!(write_atomic(dir.path(), &bad, 0o644).is_err());
    }
}
