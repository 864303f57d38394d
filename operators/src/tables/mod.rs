//! GeoParquet result tables: written under names derived from what a file holds, read back
//! for queries. Column names and types come from [`schemas::tables`] only.
//!
//! Layout: `{root}/{table}/date={YYYY-MM-DD}/request={request_id}/{scene_id}.parquet` for the
//! tables a scene fills (ids are `[A-Za-z0-9._-]` and cannot contain `/`, so distinct ids
//! always give distinct paths), and for dead letters
//! `{root}/dead_letter/date=…/request=…/{scene_id}/{stage}.parquet` (a scene's failure) or
//! `…/{scene_id}/tiles.parquet` (its failed tiles), or
//! `dead_letter/date=…/unidentified/{hash}.parquet` for inputs too broken to name. The date is
//! the request's (carried in the message), so a rerun of the same request writes the same
//! paths and replaces its rows. What a scene wrote is recorded in
//! `{root}/_index/request={request_id}/{scene_id}.json`, so a rerun that lands on other paths
//! (another day) removes the old files by name: no write lists a table. Each put is atomic
//! (object stores publish whole objects; the local store writes a temporary file and renames
//! it), so readers never see half a file.

pub mod frames;
mod geoparquet;
pub mod query;
mod rows;

use chrono::{DateTime, NaiveDate, Utc};
use object_store::{ObjectStoreExt, PutPayload};
use polars::prelude::DataFrame;
use schemas::tables::TableSchema;

pub use frames::{dead_letter_frame, frame, polygon_points, polygon_wkb, Cell};
pub use rows::{scene_date, scene_frames};

use crate::OperatorError;
use storage::Location;

/// Where the result tables live.
#[derive(Debug, Clone)]
pub struct Tables {
    root: Location,
}

impl Tables {
    /// Tables under `root`.
    pub fn new(root: Location) -> Self {
        Self { root }
    }

    /// The root location.
    pub fn root(&self) -> &Location {
        &self.root
    }
}

/// What one scene has written: the files of its rows and of its dead letters, relative to the
/// tables root.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SceneIndex {
    /// Files holding the scene's result rows.
    #[serde(default)]
    pub files: Vec<String>,
    /// Files holding its dead-letter rows.
    #[serde(default)]
    pub dead_letters: Vec<String>,
}

impl Tables {
    /// The path of a scene's file in `table`.
    pub fn scene_file(table: &TableSchema, date: NaiveDate, request_id: &str, scene_id: &str) -> String {
        format!("{}/date={}/request={request_id}/{scene_id}.parquet", table.name, date.format("%Y-%m-%d"))
    }

    /// Encodes `frame` for `table` (the first phase of a two-phase write: nothing is stored).
    ///
    /// # Errors
    /// When the frame does not match the table schema.
    pub fn encode(table: &TableSchema, frame: &mut DataFrame) -> Result<Vec<u8>, OperatorError> {
        geoparquet::encode(table, frame)
    }

    /// Stores `bytes` at `relative` (below the root), replacing what was there.
    ///
    /// # Errors
    /// When the store refuses the write.
    pub async fn put(&self, relative: &str, bytes: Vec<u8>) -> Result<Location, OperatorError> {
        let target = self.root.join(relative);
        target
            .store()
            .put(target.path(), PutPayload::from(bytes))
            .await
            .map_err(|source| OperatorError::Storage { uri: target.url(), source })?;
        Ok(target)
    }

    /// Deletes `relative`; a missing file is not an error.
    ///
    /// # Errors
    /// When the store refuses the delete.
    pub async fn delete(&self, relative: &str) -> Result<(), OperatorError> {
        let target = self.root.join(relative);
        match target.store().delete(target.path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(OperatorError::Storage { uri: target.url(), source }),
        }
    }

    fn index_path(request_id: &str, scene_id: &str) -> String {
        format!("_index/request={request_id}/{scene_id}.json")
    }

    /// What a scene wrote last time (empty when it never did).
    ///
    /// # Errors
    /// When the store fails (a missing index is not an error) or the index is unreadable.
    pub async fn scene_index(&self, request_id: &str, scene_id: &str) -> Result<SceneIndex, OperatorError> {
        let at = self.root.join(&Self::index_path(request_id, scene_id));
        let store_err = |source| OperatorError::Storage { uri: at.url(), source };
        match at.store().get(at.path()).await {
            Ok(found) => {
                let bytes = found.bytes().await.map_err(store_err)?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| OperatorError::Internal { reason: format!("`{}` is not a scene index: {e}", at.url()) })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(SceneIndex::default()),
            Err(source) => Err(store_err(source)),
        }
    }

    /// Records what a scene has written (the commit point of its rows).
    ///
    /// # Errors
    /// When the store refuses the write.
    pub async fn set_scene_index(&self, request_id: &str, scene_id: &str, index: &SceneIndex) -> Result<(), OperatorError> {
        let bytes = serde_json::to_vec(index).map_err(|e| OperatorError::Internal { reason: e.to_string() })?;
        self.put(&Self::index_path(request_id, scene_id), bytes).await.map(drop)
    }
}

/// The partition date of a timestamp (UTC).
pub fn partition_date(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
}
