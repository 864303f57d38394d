//! Training data in an object store (`s3://…`, or any URL `operators::storage` resolves): the
//! JSONL and the images it names are fetched through `object_store` into a local mirror under
//! `~/.cache/strata/training-data/`, once; later runs and resumes fetch only what changed
//! (another size). Training then reads the mirror, so every epoch does not go back to the
//! store, and the relative image paths of the JSONL resolve as they do on disk.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::ObjectStoreExt as _;
use storage::Location;

/// Images fetched at once.
const CONCURRENCY: usize = 16;

/// Whether a training-file location names an object store rather than a local path.
pub(crate) fn is_remote(location: &Path) -> bool {
    location.to_str().is_some_and(|l| l.contains("://") && !l.starts_with("file://"))
}

/// Where `location` is mirrored: `<cache>/training-data/<hash of the store's root>/<key>`.
fn mirror_path(location: &Location) -> PathBuf {
    let url = location.url();
    let root = url.strip_suffix(location.path().as_ref()).unwrap_or(&url).trim_end_matches('/');
    let mut path = model::cache_dir().join("training-data").join(storage::artifacts::cache_key(root));
    for part in location.path().parts() {
        path.push(part.as_ref());
    }
    path
}

#[derive(serde::Deserialize)]
struct ImageField {
    image: String,
}

/// Copies `location` to its mirror unless a file of the same size is there already.
/// Returns the bytes fetched (0 when reused).
async fn fetch(location: &Location, named_by: &str) -> anyhow::Result<u64> {
    let target = mirror_path(location);
    let meta = location.store().head(location.path()).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => anyhow::anyhow!("`{}` (named by {named_by}) does not exist", location.url()),
        other => anyhow::Error::new(other).context(format!("reading `{}`", location.url())),
    })?;
    if std::fs::metadata(&target).is_ok_and(|m| m.len() == meta.size) {
        return Ok(0);
    }
    let bytes = location
        .store()
        .get(location.path())
        .await
        .with_context(|| format!("fetching `{}`", location.url()))?
        .bytes()
        .await
        .with_context(|| format!("fetching `{}`", location.url()))?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating `{}`", parent.display()))?;
    }
    // Written aside and renamed, so a kill mid-write never leaves a short file of the right name.
    let partial = target.with_extension("partial");
    std::fs::write(&partial, &bytes).with_context(|| format!("writing `{}`", partial.display()))?;
    std::fs::rename(&partial, &target).with_context(|| format!("writing `{}`", target.display()))?;
    Ok(bytes.len() as u64)
}

/// Mirrors the JSONL at `data` and every image it names; returns the local JSONL and the
/// local image root. Images are found as on disk: under `image_root` when given, else beside
/// the JSONL, or one folder up (the layout `strata data synth` writes).
///
/// # Errors
/// An unresolvable URL, a missing JSONL or image (named with the line that names it), a
/// malformed line, or a failed transfer.
pub(crate) fn stage(
    runtime: &tokio::runtime::Runtime,
    data: &Path,
    image_root: Option<&Path>,
) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    let url = data.to_string_lossy();
    let jsonl = storage::resolve(&url)?;
    runtime.block_on(async {
        fetch(&jsonl, "the training file").await?;
        let local = mirror_path(&jsonl);
        let text = std::fs::read_to_string(&local).with_context(|| format!("reading `{}`", local.display()))?;
        // Each image once, with the first line that names it.
        let mut images = BTreeMap::new();
        for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let record: ImageField =
                serde_json::from_str(line).with_context(|| format!("`{url}` line {}: no `image` field", number + 1))?;
            images.entry(record.image).or_insert(number + 1);
        }
        let Some((first, _)) = images.first_key_value() else { bail!("`{url}` holds no samples") };
        let folder = jsonl.path().parts().collect::<Vec<_>>();
        let folder = folder.get(..folder.len().saturating_sub(1)).unwrap_or_default().iter().map(|p| p.as_ref()).collect::<Vec<_>>();
        let root = match image_root {
            Some(root) => storage::resolve(&root.to_string_lossy())?,
            None => {
                let beside = jsonl.with_path(folder.join("/").as_str().into());
                if beside.store().head(beside.join(first).path()).await.is_ok() {
                    beside
                } else {
                    jsonl.with_path(folder.get(..folder.len().saturating_sub(1)).unwrap_or_default().join("/").as_str().into())
                }
            }
        };
        let started = std::time::Instant::now();
        let fetched: Vec<u64> = futures::stream::iter(images.iter().map(|(image, line)| {
            let location = root.join(image);
            let named_by = format!("`{url}` line {line}");
            async move { fetch(&location, &named_by).await }
        }))
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
        let (count, bytes) = (fetched.iter().filter(|&&b| b > 0).count(), fetched.iter().sum::<u64>());
        eprintln!(
            "{url}: {} images, {count} fetched ({:.1} MB in {:.1} s), {} already mirrored in {}",
            images.len(),
            bytes as f64 / 1e6,
            started.elapsed().as_secs_f64(),
            images.len() - count,
            mirror_path(&root).display()
        );
        Ok((local, Some(mirror_path(&root))))
    })
}
