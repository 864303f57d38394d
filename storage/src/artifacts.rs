//! Model artifacts in object stores (MODEL_SPEC §7): `push` uploads an artifact directory with
//! `manifest.json` last, so a reader never sees a half-uploaded version; `fetch` mirrors one
//! into `~/.cache/strata/models/` once and reuses that copy while the remote manifest is
//! unchanged — the same download-once cache as indexes.
//!
//! Two processes fetching the same artifact at once are safe without a lock: each downloads
//! into its own temporary folder beside the cache entry and renames it into place; a rename
//! that loses the race finds a complete copy already there, checks it, and drops its own.
//! Every file is verified against the manifest's sha256 when the artifact is opened.

use std::path::{Path, PathBuf};

use futures::TryStreamExt as _;
use object_store::{ObjectStoreExt as _, WriteMultipart};
use tokio::io::AsyncReadExt as _;

/// Upload part size.
const PART_BYTES: usize = 16 << 20;
use sha2::{Digest as _, Sha256};

use crate::{Location, StorageError};

/// A short stable name for a URL: 16 hex digits of its sha256.
pub fn cache_key(url: &str) -> String {
    Sha256::digest(url.as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn store_err(uri: String) -> impl FnOnce(object_store::Error) -> StorageError {
    move |source| StorageError::Object { uri, source }
}

fn io_err(path: &Path, action: &str, e: std::io::Error) -> StorageError {
    StorageError::InvalidLocation { location: path.display().to_string(), reason: format!("{action}: {e}") }
}

/// Where a model given as `location` lives on this machine: the directory itself for local
/// paths, else the cached copy (downloaded when missing or stale).
///
/// # Errors
/// When the location is invalid, the manifest or a file cannot be read from the store, or the
/// cache cannot be written.
pub async fn fetch_model(location: &Location) -> Result<(PathBuf, bool), StorageError> {
    if let Some(dir) = location.local_path() {
        return Ok((dir, true));
    }
    let cache = model::cache_dir().join("models").join(cache_key(&location.url()));
    fetch_model_into(location, &cache).await.map(|reused| (cache, reused))
}

/// Mirrors the artifact at `location` into `cache`; `Ok(true)` when the existing copy was kept.
///
/// # Errors
/// As [`fetch_model`].
pub async fn fetch_model_into(location: &Location, cache: &Path) -> Result<bool, StorageError> {
    let manifest_at = location.join("manifest.json");
    let remote = manifest_at.store().get(manifest_at.path()).await.map_err(store_err(manifest_at.url()))?;
    let remote = remote.bytes().await.map_err(store_err(manifest_at.url()))?;
    let manifest: model::artifact::Manifest = serde_json::from_slice(&remote)
        .map_err(|e| StorageError::InvalidLocation { location: manifest_at.url(), reason: format!("not a Strata model manifest: {e}") })?;
    if std::fs::read(cache.join("manifest.json")).is_ok_and(|local| local == remote) {
        return Ok(true);
    }
    let parent = cache.parent().unwrap_or(cache);
    std::fs::create_dir_all(parent).map_err(|e| io_err(parent, "creating the model cache", e))?;
    // Unique per process and per call, so concurrent fetches never share a download folder.
    static FETCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let fetch = FETCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = cache.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    let staging = parent.join(format!(".{name}.partial-{}-{fetch}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| io_err(&staging, "creating a download folder", e))?;
    // Every file is checked against the manifest as it arrives: a damaged or replaced object
    // must never enter the cache, where later fetches (same manifest) would reuse it.
    if let Err(error) = download_files(location, &manifest, &manifest_at.url(), &staging).await {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(error);
    }
    std::fs::write(staging.join("manifest.json"), &remote).map_err(|e| io_err(&staging, "writing the manifest", e))?;
    // Replace a stale copy; if another process renamed a complete copy into place first, keep
    // whichever is there (the same manifest means the same files).
    if cache.exists() && std::fs::read(cache.join("manifest.json")).map_or(true, |local| local != remote) {
        let old = parent.join(format!(".{name}.old-{}-{fetch}", std::process::id()));
        if std::fs::rename(cache, &old).is_ok() {
            let _ = std::fs::remove_dir_all(&old);
        }
    }
    match std::fs::rename(&staging, cache) {
        Ok(()) => Ok(false),
        Err(_) if std::fs::read(cache.join("manifest.json")).is_ok_and(|local| local == remote) => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(true)
        }
        Err(e) => Err(io_err(cache, "moving the downloaded model into the cache", e)),
    }
}

/// Downloads every file the manifest lists into `staging`, checking each one's sha256.
async fn download_files(
    location: &Location,
    manifest: &model::artifact::Manifest,
    manifest_url: &str,
    staging: &Path,
) -> Result<(), StorageError> {
    for (name, expected) in &manifest.files {
        let relative = Path::new(name);
        if relative.is_absolute() || relative.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(StorageError::InvalidLocation {
                location: manifest_url.to_owned(),
                reason: format!("`{name}` is not a plain relative path"),
            });
        }
        let source = location.join(name);
        let target = staging.join(relative);
        if let Some(folder) = target.parent() {
            std::fs::create_dir_all(folder).map_err(|e| io_err(folder, "creating a folder", e))?;
        }
        let mut stream = source.store().get(source.path()).await.map_err(store_err(source.url()))?.into_stream();
        let mut file = std::fs::File::create(&target).map_err(|e| io_err(&target, "creating", e))?;
        let mut digest = Sha256::new();
        while let Some(chunk) = stream.try_next().await.map_err(store_err(source.url()))? {
            digest.update(&chunk);
            std::io::Write::write_all(&mut file, &chunk).map_err(|e| io_err(&target, "writing", e))?;
        }
        let actual: String = digest.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if &actual != expected {
            return Err(StorageError::InvalidLocation {
                location: source.url(),
                reason: format!(
                    "sha256 {}… does not match the manifest's {}…: the object is damaged or was replaced; nothing was cached",
                    &actual[..12],
                    &expected[..expected.len().min(12)]
                ),
            });
        }
    }
    Ok(())
}

/// Uploads the artifact directory `dir` to `location`, `manifest.json` last; returns the number
/// of files and bytes. The artifact is verified (every sha256) before anything is uploaded.
///
/// # Errors
/// When `dir` is not a valid artifact or an upload fails.
pub async fn push_model(dir: &Path, location: &Location) -> Result<(usize, u64), StorageError> {
    let owned = dir.to_owned();
    let artifact = crate::blocking(move || model::artifact::Artifact::open(&owned))
        .await?
        .map_err(|source| StorageError::Model { action: format!("checking `{}` before the upload", dir.display()), source })?;
    let mut names: Vec<&String> = artifact.manifest.files.keys().collect();
    let manifest = "manifest.json".to_owned();
    names.push(&manifest);
    let mut bytes = 0u64;
    for name in &names {
        let path = dir.join(name);
        let target = location.join(name);
        // Weights run to gigabytes: stream them up in parts instead of reading them whole.
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| io_err(&path, "reading", e))?;
        let upload = target.store().put_multipart(target.path()).await.map_err(store_err(target.url()))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buffer = vec![0u8; PART_BYTES];
        loop {
            let read = file.read(&mut buffer).await.map_err(|e| io_err(&path, "reading", e))?;
            if read == 0 {
                break;
            }
            writer.wait_for_capacity(4).await.map_err(store_err(target.url()))?;
            writer.write(&buffer[..read]);
            bytes += read as u64;
        }
        writer.finish().await.map_err(store_err(target.url()))?;
    }
    Ok((names.len(), bytes))
}
