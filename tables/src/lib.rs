//! Strata's result tables: rows become GeoParquet files written under names derived from what
//! they hold, and SQL reads them back. Column names and types come from [`schemas::tables`]
//! only. This crate is where polars enters the workspace (the retriever's description
//! database and the evaluation report are Parquet files written through [`parquet`] too);
//! geometries are WKB bytes here, read by the engine a caller hands in ([`GeometryReader`]:
//! GDAL, from `operators`), so the text users see is that engine's.
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

mod error;
pub mod frames;
mod geoparquet;
pub mod parquet;
pub mod query;

use chrono::{DateTime, NaiveDate, Utc};
use object_store::{ObjectStoreExt, PutPayload};
use schemas::tables::TableSchema;

pub use error::TableError;
pub use frames::{dead_letter_frame, frame, Cell};
/// The frames rows are built in and queries answer with (polars').
pub use polars::prelude::DataFrame;
use storage::Location;

/// What the tables need of a geometry engine: they hold geometries as WKB (ISO, 2D) and leave
/// reading them to one engine, so the WKT and GeoJSON users see are that engine's and the
/// GeoParquet metadata agrees with it.
pub trait GeometryReader: Send + Sync {
    /// The geometry as WKT, or why the bytes are not WKB.
    ///
    /// # Errors
    /// Bytes that are not WKB, in the engine's words.
    fn wkt(&self, wkb: &[u8]) -> Result<String, String>;
    /// The geometry as a GeoJSON geometry object (`None` for bytes that are not WKB).
    fn geojson(&self, wkb: &[u8]) -> Option<serde_json::Value>;
    /// The exterior rings of a polygon or multipolygon (one per part; empty for anything else
    /// or bytes that are not WKB), with the geometry's type name as GeoParquet spells it.
    fn exterior_rings(&self, wkb: &[u8]) -> (Option<&'static str>, Vec<Vec<[f64; 2]>>);
}

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

    /// Encodes `frame` for `table` as GeoParquet 1.1 (the first phase of a two-phase write:
    /// nothing is stored); `geometry` reads the WKB columns for the `geo` metadata's types and
    /// bounding boxes.
    ///
    /// # Errors
    /// When the frame does not match the table schema.
    pub fn encode(table: &TableSchema, frame: &mut DataFrame, geometry: &dyn GeometryReader) -> Result<Vec<u8>, TableError> {
        geoparquet::encode(table, frame, geometry)
    }

    /// Stores `bytes` at `relative` (below the root), replacing what was there.
    ///
    /// # Errors
    /// When the store refuses the write.
    pub async fn put(&self, relative: &str, bytes: Vec<u8>) -> Result<Location, TableError> {
        let target = self.root.join(relative);
        target
            .store()
            .put(target.path(), PutPayload::from(bytes))
            .await
            .map_err(|source| TableError::Storage { uri: target.url(), source })?;
        Ok(target)
    }

    /// Deletes `relative`; a missing file is not an error.
    ///
    /// # Errors
    /// When the store refuses the delete.
    pub async fn delete(&self, relative: &str) -> Result<(), TableError> {
        let target = self.root.join(relative);
        match target.store().delete(target.path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(TableError::Storage { uri: target.url(), source }),
        }
    }

    fn index_path(request_id: &str, scene_id: &str) -> String {
        format!("_index/request={request_id}/{scene_id}.json")
    }

    /// What a scene wrote last time (empty when it never did).
    ///
    /// # Errors
    /// When the store fails (a missing index is not an error) or the index is unreadable.
    pub async fn scene_index(&self, request_id: &str, scene_id: &str) -> Result<SceneIndex, TableError> {
        let at = self.root.join(&Self::index_path(request_id, scene_id));
        let store_err = |source| TableError::Storage { uri: at.url(), source };
        match at.store().get(at.path()).await {
            Ok(found) => {
                let bytes = found.bytes().await.map_err(store_err)?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| TableError::Internal { reason: format!("`{}` is not a scene index: {e}", at.url()) })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(SceneIndex::default()),
            Err(source) => Err(store_err(source)),
        }
    }

    /// Records what a scene has written (the commit point of its rows).
    ///
    /// # Errors
    /// When the store refuses the write.
    pub async fn set_scene_index(&self, request_id: &str, scene_id: &str, index: &SceneIndex) -> Result<(), TableError> {
        let bytes = serde_json::to_vec(index).map_err(|e| TableError::Internal { reason: e.to_string() })?;
        self.put(&Self::index_path(request_id, scene_id), bytes).await.map(drop)
    }
}

/// The partition date of a timestamp (UTC).
pub fn partition_date(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
}
