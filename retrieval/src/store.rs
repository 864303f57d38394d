//! Indexes in an object store (S3 or any `object_store` backend), so workers load the same
//! index at start-up wherever they run.
//!
//! [`push_index`] uploads an index directory under a prefix, `index.json` last, so a reader
//! never sees a half-uploaded index. [`fetch_index`] mirrors one into a local directory and
//! reuses that copy while the remote `index.json` and file sizes are unchanged: a worker
//! downloads an index once, then memory-maps it like a local one. Integrity is checked when
//! the copy is opened ([`crate::SemanticIndex::open`]: sizes, row counts, the graph's sha256).

use std::io::{Read as _, Write as _};
use std::path::Path;

use futures::StreamExt as _;
use object_store::{path::Path as StorePath, ObjectStore, ObjectStoreExt as _, WriteMultipart};

use crate::index::{read_manifest, GRAPH_FILE};
use crate::RetrievalError;

/// Upload part size.
const PART_BYTES: usize = 16 << 20;

fn store_error(location: &StorePath, action: &str, e: impl std::fmt::Display) -> RetrievalError {
    RetrievalError::Store { location: location.to_string(), reason: format!("{action}: {e}") }
}

/// The files of the index in `dir`, `index.json` last.
fn index_files(dir: &Path) -> Result<Vec<&'static str>, RetrievalError> {
    let manifest = read_manifest(dir)?;
    let mut files = vec!["descriptions.parquet", "embeddings.f32"];
    if manifest.hnsw.is_some() {
        files.push(GRAPH_FILE);
    }
    files.push("index.json");
    Ok(files)
}

/// What a transfer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Files copied.
    pub files: usize,
    /// Bytes copied.
    pub bytes: u64,
    /// Whether an existing local copy was reused instead (fetch only).
    pub reused: bool,
}

/// Uploads the index in `dir` to `prefix` in `store`.
///
/// # Errors
/// [`RetrievalError::Index`] when `dir` is not an index, [`RetrievalError::Store`] when an
/// upload fails.
pub async fn push_index(dir: &Path, store: &dyn ObjectStore, prefix: &StorePath) -> Result<Transfer, RetrievalError> {
    let files = index_files(dir)?;
    let mut bytes = 0u64;
    for name in &files {
        let target = prefix.clone().join(*name);
        let local = dir.join(name);
        let mut file = std::fs::File::open(&local).map_err(|e| RetrievalError::Index { path: local.clone(), reason: e.to_string() })?;
        let upload = store.put_multipart(&target).await.map_err(|e| store_error(&target, "starting the upload", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buffer = vec![0u8; PART_BYTES];
        loop {
            let read = file.read(&mut buffer).map_err(|e| RetrievalError::Index { path: local.clone(), reason: e.to_string() })?;
            if read == 0 {
                break;
            }
            writer.wait_for_capacity(4).await.map_err(|e| store_error(&target, "uploading", e))?;
            writer.write(&buffer[..read]);
            bytes += read as u64;
        }
        writer.finish().await.map_err(|e| store_error(&target, "finishing the upload", e))?;
        tracing::info!(file = %target, "uploaded");
    }
    Ok(Transfer { files: files.len(), bytes, reused: false })
}

/// Makes `cache` a copy of the index at `prefix` in `store`, downloading only when the local
/// copy is missing or differs.
///
/// # Errors
/// [`RetrievalError::Store`] when the remote index is missing or a download fails,
/// [`RetrievalError::Index`] when it is malformed or the cache cannot be written.
pub async fn fetch_index(store: &dyn ObjectStore, prefix: &StorePath, cache: &Path) -> Result<Transfer, RetrievalError> {
    let manifest_path = prefix.clone().join("index.json");
    let manifest_bytes = store
        .get(&manifest_path)
        .await
        .map_err(|e| store_error(&manifest_path, "reading the index manifest (is this an index pushed by `strata index push`?)", e))?
        .bytes()
        .await
        .map_err(|e| store_error(&manifest_path, "reading the index manifest", e))?;
    let local_error = |path: &Path, e: &dyn std::fmt::Display| RetrievalError::Index { path: path.to_owned(), reason: e.to_string() };
    std::fs::create_dir_all(cache).map_err(|e| local_error(cache, &e))?;
    // The remote manifest, checked, in a scratch folder: it names the other files.
    let staging = tempfile::tempdir_in(cache).map_err(|e| local_error(cache, &e))?;
    std::fs::write(staging.path().join("index.json"), &manifest_bytes).map_err(|e| local_error(staging.path(), &e))?;
    let files = index_files(staging.path())?;
    let mut sizes = Vec::with_capacity(files.len());
    for name in &files[..files.len() - 1] {
        let remote = prefix.clone().join(*name);
        let meta = store.head(&remote).await.map_err(|e| store_error(&remote, "the index names this file but", e))?;
        sizes.push(meta.size);
    }

    let local_manifest = cache.join("index.json");
    let unchanged = std::fs::read(&local_manifest).is_ok_and(|b| b == manifest_bytes)
        && files.iter().zip(&sizes).all(|(name, size)| std::fs::metadata(cache.join(name)).is_ok_and(|m| m.len() == *size));
    if unchanged {
        return Ok(Transfer { files: 0, bytes: 0, reused: true });
    }
    // Without its manifest the copy is never opened half-written.
    let _ = std::fs::remove_file(&local_manifest);
    let mut bytes = 0u64;
    for name in &files[..files.len() - 1] {
        let remote = prefix.clone().join(*name);
        let partial = cache.join(format!("{name}.part"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&partial).map_err(|e| local_error(&partial, &e))?);
        let mut stream = store.get(&remote).await.map_err(|e| store_error(&remote, "downloading", e))?.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| store_error(&remote, "downloading", e))?;
            out.write_all(&chunk).map_err(|e| local_error(&partial, &e))?;
            bytes += chunk.len() as u64;
        }
        out.flush().map_err(|e| local_error(&partial, &e))?;
        drop(out);
        std::fs::rename(&partial, cache.join(name)).map_err(|e| local_error(&partial, &e))?;
        tracing::info!(file = %remote, "downloaded");
    }
    std::fs::rename(staging.path().join("index.json"), &local_manifest).map_err(|e| local_error(&local_manifest, &e))?;
    Ok(Transfer { files: files.len(), bytes: bytes + manifest_bytes.len() as u64, reused: false })
}
