//! Turns what a user types after `strata batch` or `strata submit` into scene requests: raster files, folders
//! and bucket prefixes (searched for rasters and STAC item files), object URLs and STAC item
//! JSON files. Inputs that cannot become a request (a STAC file that does not parse) are
//! returned as failures, to be dead-lettered like any other bad input.

use std::collections::{BTreeSet, HashMap};

use crate::OperatorError;
use futures::TryStreamExt as _;
use object_store::ObjectStoreExt as _;
use schemas::{stac::StacItem, SceneRequest, SceneSource, TaskSpec, TilingOptions};
use sha2::{Digest, Sha256};

/// File extensions taken as rasters when searching folders and prefixes.
const RASTER_EXTENSIONS: &[&str] = &["tif", "tiff", "jp2", "img", "vrt", "nc", "hdf", "h5", "ntf", "dt2", "dem"];

/// One discovered input.
#[derive(Debug)]
pub enum Discovered {
    /// A raster object.
    Raster {
        /// The object's URL.
        url: String,
    },
    /// A STAC item file.
    StacFile {
        /// The item file's URL.
        url: String,
    },
}

/// An input that could not become a request.
#[derive(Debug)]
pub struct InputFailure {
    /// A scene id derived from the input's name.
    pub scene_id: String,
    /// The input as given or found.
    pub input: String,
    /// What went wrong.
    pub error: OperatorError,
}

fn extension(name: &str) -> Option<String> {
    name.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase())
}

/// Expands inputs into objects, in a stable order. An input that names nothing (a missing
/// file or object, an empty prefix) becomes a failure to dead-letter; the others go on.
pub async fn discover(inputs: &[String]) -> (Vec<Discovered>, Vec<InputFailure>) {
    let mut found = Vec::new();
    let mut failures = Vec::new();
    for input in inputs {
        match discover_one(input).await {
            Ok(objects) => found.extend(objects),
            Err(error) => failures.push(InputFailure { scene_id: scene_id_from(input), input: input.clone(), error }),
        }
    }
    (found, failures)
}

async fn discover_one(input: &str) -> Result<Vec<Discovered>, OperatorError> {
    let location = storage::resolve(input)?;
    let is_local_dir = location.local_path().is_some_and(|p| p.is_dir());
    if !is_local_dir {
        match location.store().head(location.path()).await {
            Ok(_) => return Ok(vec![classify(location.url(), true).unwrap_or(Discovered::Raster { url: location.url() })]),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => return Err(OperatorError::Storage { uri: location.url(), source }),
        }
    }
    // A folder or a prefix: everything below it that looks like a raster or a STAC item.
    let mut objects: Vec<_> = location
        .store()
        .list(Some(location.path()))
        .try_collect()
        .await
        .map_err(|source| OperatorError::Storage { uri: location.url(), source })?;
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    let found: Vec<_> = objects.into_iter().filter_map(|meta| classify(location.with_path(meta.location).url(), false)).collect();
    if found.is_empty() {
        return Err(OperatorError::InvalidLocation {
            location: location.url(),
            reason: "no such file or object, and no rasters (.tif, .jp2, ...) or STAC items (.json) below it".to_owned(),
        });
    }
    Ok(found)
}

/// Classifies an object by name; `explicit` inputs are rasters unless they are JSON.
fn classify(url: String, explicit: bool) -> Option<Discovered> {
    match extension(&url).as_deref() {
        Some("json") => Some(Discovered::StacFile { url }),
        Some(ext) if RASTER_EXTENSIONS.contains(&ext) => Some(Discovered::Raster { url }),
        _ if explicit => Some(Discovered::Raster { url }),
        _ => None,
    }
}

/// A scene id from a name: its file stem with anything outside `[A-Za-z0-9._-]` replaced.
pub fn scene_id_from(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let stem = match base.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => base,
    };
    let mut id: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    id = id.trim_start_matches('.').to_owned();
    if id.is_empty() {
        id = "scene".to_owned();
    }
    id.truncate(180);
    id
}

/// A request id that is the same whenever the same inputs are run with the same options, so a
/// rerun replaces its rows: `batch-` and 12 hex digits of a hash of both.
pub fn default_request_id(found: &[Discovered], tiling: &TilingOptions, tasks: &[TaskSpec]) -> String {
    let mut hasher = Sha256::new();
    let urls: BTreeSet<&str> = found
        .iter()
        .map(|d| match d {
            Discovered::Raster { url } | Discovered::StacFile { url } => url.as_str(),
        })
        .collect();
    for url in urls {
        hasher.update(url.as_bytes());
        hasher.update([0]);
    }
    // Both serialise infallibly (plain structs of strings and numbers).
    hasher.update(serde_json::to_vec(tiling).unwrap_or_default());
    hasher.update(serde_json::to_vec(tasks).unwrap_or_default());
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("batch-{hex}")
}

/// Builds requests (and failures) from discovered inputs. A scene id that several inputs
/// share gets a suffix from its input's URL (`{id}-{8 hex digits}`) on every one of them, so
/// which scene gets which id does not depend on the order of the arguments.
pub async fn requests(
    found: Vec<Discovered>,
    mut failures: Vec<InputFailure>,
    request_id: &str,
    tiling: &TilingOptions,
    tasks: &[TaskSpec],
) -> (Vec<SceneRequest>, Vec<InputFailure>) {
    let mut sources = Vec::new();
    for input in found {
        match input {
            Discovered::Raster { url } => sources.push((scene_id_from(&url), url.clone(), SceneSource::Uri { uri: url })),
            Discovered::StacFile { url } => match read_stac(&url).await {
                Ok(item) => {
                    let id = scene_id_from(&format!("{}.json", item.id));
                    sources.push((id, url.clone(), SceneSource::StacItem { item: Box::new(item), base_uri: Some(url) }));
                }
                Err(error) => failures.push(InputFailure { scene_id: scene_id_from(&url), input: url, error }),
            },
        }
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in sources.iter().map(|(id, _, _)| id).chain(failures.iter().map(|f| &f.scene_id)) {
        *counts.entry(id.clone()).or_default() += 1;
    }
    let unique = |id: String, url: &str| {
        if counts.get(&id).copied().unwrap_or(0) > 1 {
            let digest = Sha256::digest(url.as_bytes());
            let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
            format!("{id}-{hex}")
        } else {
            id
        }
    };
    for failure in &mut failures {
        failure.scene_id = unique(std::mem::take(&mut failure.scene_id), &failure.input);
    }
    let mut requests = Vec::new();
    for (id, url, source) in sources {
        let mut request = SceneRequest::new(request_id, unique(id, &url), source);
        request.tiling = tiling.clone();
        request.tasks = tasks.to_vec();
        requests.push(request);
    }
    (requests, failures)
}

async fn read_stac(url: &str) -> Result<StacItem, OperatorError> {
    let location = storage::resolve(url)?;
    let storage_err = |source| OperatorError::Storage { uri: url.to_owned(), source };
    let bytes = location.store().get(location.path()).await.map_err(storage_err)?.bytes().await.map_err(storage_err)?;
    let item: StacItem = serde_json::from_slice(&bytes)
        .map_err(|e| OperatorError::InvalidLocation { location: url.to_owned(), reason: format!("not a STAC item: {e}") })?;
    if item.item_type != "Feature" {
        return Err(OperatorError::InvalidLocation {
            location: url.to_owned(),
            reason: format!("not a STAC item: `type` is {:?}, expected \"Feature\"", item.item_type),
        });
    }
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scene_ids_are_safe_file_stems() {
        assert_eq!(scene_id_from("s3://b/x/L7_ETMs.tif"), "L7_ETMs");
        assert_eq!(scene_id_from("/data/my scene (1).TIF"), "my_scene__1_");
        assert_eq!(scene_id_from(".hidden"), "hidden");
        assert_eq!(scene_id_from("/a/"), "scene");
    }

    #[tokio::test]
    async fn shared_scene_ids_get_suffixes_that_do_not_depend_on_argument_order() {
        let a = || Discovered::Raster { url: "file:///data/a/scene.tif".into() };
        let b = || Discovered::Raster { url: "file:///data/b/scene.tif".into() };
        let c = || Discovered::Raster { url: "file:///data/other.tif".into() };
        let ids = |found: Vec<Discovered>| async move {
            let (requests, _) = requests(found, Vec::new(), "r", &TilingOptions::default(), &[]).await;
            let mut pairs: Vec<(String, String)> = requests
                .into_iter()
                .map(|r| match r.source {
                    SceneSource::Uri { uri } => (uri, r.scene_id),
                    SceneSource::StacItem { .. } => unreachable!(),
                })
                .collect();
            pairs.sort();
            pairs
        };
        let forward = ids(vec![a(), b(), c()]).await;
        let backward = ids(vec![c(), b(), a()]).await;
        assert_eq!(forward, backward, "the same input must get the same scene id whatever the order");
        let scene_ids: Vec<&str> = forward.iter().map(|(_, id)| id.as_str()).collect();
        assert_ne!(scene_ids[0], scene_ids[1]);
        assert!(scene_ids[0].starts_with("scene-") && scene_ids[1].starts_with("scene-"), "{scene_ids:?}");
        assert_eq!(scene_ids[2], "other", "ids that do not collide stay as they are");
    }

    #[test]
    fn request_ids_depend_on_inputs_and_options_not_order() {
        let a = vec![Discovered::Raster { url: "file:///a.tif".into() }, Discovered::Raster { url: "file:///b.tif".into() }];
        let b = vec![Discovered::Raster { url: "file:///b.tif".into() }, Discovered::Raster { url: "file:///a.tif".into() }];
        let opts = TilingOptions::default();
        assert_eq!(default_request_id(&a, &opts, &[]), default_request_id(&b, &opts, &[]));
        let other = TilingOptions { tile_size_px: 256, ..TilingOptions::default() };
        assert_ne!(default_request_id(&a, &opts, &[]), default_request_id(&a, &other, &[]));
        assert!(default_request_id(&a, &opts, &[]).starts_with("batch-"));
    }
}
