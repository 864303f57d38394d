//! The model registry: every published version of a model artifact under one object-store
//! prefix, its lineage, and a pointer to the version that serves (MLflow's model registry and
//! its stage transitions, kept to files in a bucket).
//!
//! Layout under the registry root:
//!
//! ```text
//! versions/<version>/manifest.json, config.json, ...   the artifact (manifest last, artifacts::push_model)
//! versions/<version>/lineage.json                       written after the artifact: its presence publishes the version
//! serving.json                                          {"version", "history", "changed_at"}
//! ```
//!
//! A version is immutable: publishing it again with the same manifest is a no-op, with another
//! manifest an error. Lineage records the manifest's sha256, so an artifact replaced or
//! damaged in the store after publishing is refused when promoted and when loaded
//! ([`Registry::fetch`]), like one whose files do not match their manifest. `serving.json`
//! keeps the versions that served before, newest last, so a rollback returns to the previous
//! one. Changing it is a read-modify-write by one operator at a time (as any deploy tool).

use std::{collections::BTreeMap, path::Path};

use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use object_store::{ObjectStoreExt as _, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{artifacts, Location, StorageError};

/// Where a version came from and how it did: what `strata model list` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    /// The version (the artifact manifest's).
    pub version: String,
    /// The version it was trained from.
    #[serde(default)]
    pub parent_version: Option<String>,
    /// When it was published.
    pub published_at: DateTime<Utc>,
    /// sha256 of the artifact's `manifest.json` (which holds every file's sha256).
    pub manifest_sha256: String,
    /// The training job's configuration, as given (any JSON).
    #[serde(default)]
    pub training_config: Option<serde_json::Value>,
    /// A digest of the training data (e.g. the data set manifest's sha256).
    #[serde(default)]
    pub data_digest: Option<String>,
    /// Evaluation metrics by name (e.g. `accuracy`, `cider`), on held-out data.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

/// What serves, and what served before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serving {
    /// The serving version.
    pub version: String,
    /// Versions that served before, oldest first (a rollback returns to the last).
    pub history: Vec<String>,
    /// When the pointer last changed.
    pub changed_at: DateTime<Utc>,
}

/// What `publish` records beside the artifact.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishOptions {
    /// Overrides the manifest's `parent_version`.
    pub parent_version: Option<String>,
    /// The training configuration.
    pub training_config: Option<serde_json::Value>,
    /// A digest of the training data.
    pub data_digest: Option<String>,
    /// Evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
}

/// A registry rooted at an object-store location.
#[derive(Debug, Clone)]
pub struct Registry {
    root: Location,
}

impl Registry {
    /// The registry at `root` (nothing is read until an operation runs).
    pub fn new(root: Location) -> Self {
        Self { root }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        self.root.url()
    }

    /// Where a version's artifact lives.
    pub fn version_location(&self, version: &str) -> Location {
        self.root.join("versions").join(version)
    }

    fn refused(&self, reason: impl Into<String>) -> StorageError {
        StorageError::Registry { registry: self.url(), reason: reason.into() }
    }

    /// Publishes the artifact in `dir` as its manifest's version: checks every file's sha256,
    /// uploads it, then writes its lineage. Returns the lineage and whether it is new:
    /// publishing the same artifact again returns the existing lineage, unchanged.
    ///
    /// # Errors
    /// [`StorageError::Model`] when the artifact does not verify (a flipped byte);
    /// [`StorageError::Registry`] when the version exists with another manifest, or with
    /// other lineage than `options` gives (lineage is immutable too), or has a name unfit for
    /// a path; storage errors.
    pub async fn publish(&self, dir: &Path, options: PublishOptions) -> Result<(Lineage, bool), StorageError> {
        let owned = dir.to_owned();
        let artifact = crate::blocking(move || model::artifact::Artifact::open(&owned))
            .await?
            .map_err(|source| StorageError::Model { action: format!("checking `{}` before publishing", dir.display()), source })?;
        let version = artifact.manifest.version.clone();
        if version.is_empty() || version.contains(['/', '\\']) || version.starts_with('.') {
            return Err(self.refused(format!("version `{version}` cannot name a folder (no slashes, not starting with a dot)")));
        }
        let manifest_bytes = std::fs::read(dir.join("manifest.json")).map_err(|e| StorageError::InvalidLocation {
            location: dir.display().to_string(),
            reason: format!("reading manifest.json: {e}"),
        })?;
        let manifest_sha256 = hex_sha256(&manifest_bytes);
        if let Some(existing) = self.lineage(&version).await? {
            if existing.manifest_sha256 == manifest_sha256 {
                let differs = options.parent_version.as_ref().is_some_and(|p| existing.parent_version.as_ref() != Some(p))
                    || options.training_config.as_ref().is_some_and(|c| existing.training_config.as_ref() != Some(c))
                    || options.data_digest.as_ref().is_some_and(|d| existing.data_digest.as_ref() != Some(d))
                    || (!options.metrics.is_empty() && options.metrics != existing.metrics);
                if differs {
                    return Err(self.refused(format!(
                        "version `{version}` is already published with other lineage (parent, training config, data digest or \
                         metrics); lineage is immutable: publish the artifact under a new version"
                    )));
                }
                return Ok((existing, false));
            }
            return Err(self.refused(format!(
                "version `{version}` is already published with other contents (manifest sha256 {} here, {} there); give the new \
                 artifact a new version",
                &manifest_sha256[..12],
                &existing.manifest_sha256[..existing.manifest_sha256.len().min(12)]
            )));
        }
        let location = self.version_location(&version);
        artifacts::push_model(dir, &location).await?;
        let lineage = Lineage {
            parent_version: options.parent_version.or_else(|| artifact.manifest.parent_version.clone()),
            version,
            published_at: Utc::now(),
            manifest_sha256,
            training_config: options.training_config,
            data_digest: options.data_digest,
            metrics: options.metrics,
        };
        self.put_json(&location.join("lineage.json"), &lineage).await?;
        Ok((lineage, true))
    }

    /// A version's lineage, or `None` when it is not published.
    ///
    /// # Errors
    /// Storage errors other than a missing object; a lineage file that does not parse.
    pub async fn lineage(&self, version: &str) -> Result<Option<Lineage>, StorageError> {
        self.get_json(&self.version_location(version).join("lineage.json")).await
    }

    /// Every published version, oldest first.
    ///
    /// # Errors
    /// Storage errors; a lineage file that does not parse.
    pub async fn list(&self) -> Result<Vec<Lineage>, StorageError> {
        let versions = self.root.join("versions");
        let objects: Vec<object_store::ObjectMeta> = versions
            .store()
            .list(Some(versions.path()))
            .try_collect()
            .await
            .map_err(|source| StorageError::Object { uri: versions.url(), source })?;
        let mut lineages = Vec::new();
        for object in objects.iter().filter(|o| o.location.filename() == Some("lineage.json")) {
            if let Some(lineage) = self.get_json::<Lineage>(&self.root.with_path(object.location.clone())).await? {
                lineages.push(lineage);
            }
        }
        lineages.sort_by(|a, b| (a.published_at, &a.version).cmp(&(b.published_at, &b.version)));
        Ok(lineages)
    }

    /// The serving pointer, or `None` before the first promotion.
    ///
    /// # Errors
    /// Storage errors; a pointer that does not parse.
    pub async fn serving(&self) -> Result<Option<Serving>, StorageError> {
        self.get_json(&self.root.join("serving.json")).await
    }

    /// Downloads a published version into the local model cache (once) and checks it: every
    /// file against the manifest, and the manifest against the lineage. Returns the local
    /// directory.
    ///
    /// # Errors
    /// [`StorageError::Registry`] for a version not published or whose manifest is not the
    /// one published; [`StorageError::Model`] when a file does not match the manifest.
    pub async fn fetch(&self, version: &str) -> Result<std::path::PathBuf, StorageError> {
        let lineage = self.lineage(version).await?.ok_or_else(|| self.refused(format!("version `{version}` is not published")))?;
        let location = self.version_location(version);
        let (dir, _) = artifacts::fetch_model(&location).await?;
        let manifest = std::fs::read(dir.join("manifest.json")).map_err(|e| StorageError::InvalidLocation {
            location: dir.display().to_string(),
            reason: format!("reading manifest.json: {e}"),
        })?;
        if hex_sha256(&manifest) != lineage.manifest_sha256 {
            return Err(self.refused(format!(
                "version `{version}`: its manifest is not the one published (sha256 {} instead of {}): the artifact was replaced after \
                 publishing",
                &hex_sha256(&manifest)[..12],
                &lineage.manifest_sha256[..lineage.manifest_sha256.len().min(12)]
            )));
        }
        let checked = dir.clone();
        crate::blocking(move || model::artifact::Artifact::open(&checked))
            .await?
            .map_err(|source| StorageError::Model { action: format!("checking version `{version}` from {}", location.url()), source })?;
        Ok(dir)
    }

    /// Makes `version` the serving one, after fetching and checking it; the previous serving
    /// version goes on the history. Promoting the serving version changes nothing.
    ///
    /// # Errors
    /// As [`Registry::fetch`]: an unpublished, replaced or corrupt version is refused and the
    /// pointer stays.
    pub async fn promote(&self, version: &str) -> Result<Serving, StorageError> {
        self.fetch(version).await?;
        let current = self.serving().await?;
        let serving = match current {
            Some(current) if current.version == version => return Ok(current),
            Some(mut current) => {
                current.history.push(std::mem::replace(&mut current.version, version.to_owned()));
                current.changed_at = Utc::now();
                current
            }
            None => Serving { version: version.to_owned(), history: Vec::new(), changed_at: Utc::now() },
        };
        self.put_json(&self.root.join("serving.json"), &serving).await?;
        Ok(serving)
    }

    /// Returns to the version that served before the current one.
    ///
    /// # Errors
    /// [`StorageError::Registry`] when nothing was promoted before; as [`Registry::fetch`]
    /// when the previous version no longer verifies (the pointer stays).
    pub async fn rollback(&self) -> Result<Serving, StorageError> {
        let mut serving = self.serving().await?.ok_or_else(|| self.refused("no version serves yet: nothing to roll back"))?;
        let previous = serving
            .history
            .pop()
            .ok_or_else(|| self.refused(format!("`{}` is the only version that has served: nothing to roll back to", serving.version)))?;
        self.fetch(&previous).await?;
        serving.version = previous;
        serving.changed_at = Utc::now();
        self.put_json(&self.root.join("serving.json"), &serving).await?;
        Ok(serving)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, at: &Location) -> Result<Option<T>, StorageError> {
        let bytes = match at.store().get(at.path()).await {
            Ok(found) => found.bytes().await.map_err(|source| StorageError::Object { uri: at.url(), source })?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(StorageError::Object { uri: at.url(), source }),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| self.refused(format!("{} does not parse: {e}", at.url())))
    }

    async fn put_json<T: Serialize>(&self, at: &Location, value: &T) -> Result<(), StorageError> {
        let bytes =
            serde_json::to_vec_pretty(value).map_err(|e| StorageError::Internal { reason: format!("serialising {}: {e}", at.url()) })?;
        at.store().put(at.path(), PutPayload::from(bytes)).await.map_err(|source| StorageError::Object { uri: at.url(), source })?;
        Ok(())
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_round_trips_through_json() {
        let lineage = Lineage {
            version: "rs-3".into(),
            parent_version: Some("rs-2".into()),
            published_at: Utc::now(),
            manifest_sha256: "ab".repeat(32),
            training_config: Some(serde_json::json!({"stage": "instruct", "lr": 2e-4})),
            data_digest: Some("cd".repeat(32)),
            metrics: BTreeMap::from([("accuracy".to_owned(), 0.93), ("cider".to_owned(), 1.21)]),
        };
        let back: Lineage = serde_json::from_str(&serde_json::to_string(&lineage).unwrap()).unwrap();
        assert_eq!(back, lineage);
    }
}
