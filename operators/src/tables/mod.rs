//! GeoParquet result tables: written atomically under deterministic names, read back for
//! queries. Column names and types come from [`schemas::tables`] only.
//!
//! Layout: `{root}/{table}/date={YYYY-MM-DD}/{file_stem}.parquet`. The file stem names what
//! the file holds (e.g. request and scene), so writing the same content again replaces the
//! file instead of adding a second one — and a rerun on another day removes the copy in the
//! old date partition. Each put is atomic (object stores publish whole objects; the local
//! store writes a temporary file and renames it), so readers never see half a file.

mod frames;
mod geoparquet;
pub mod query;

use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt as _;
use object_store::{ObjectStoreExt, PutPayload};
use polars::prelude::DataFrame;
use schemas::tables::TableSchema;

pub use frames::{dead_letter_frame, frame, polygon_wkb, scenes_frame, tiles_frame, Cell, SceneRow};

use crate::{storage::Location, OperatorError};

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

    /// Writes `frame` as the file `file_stem` of `table`, in the partition of `date`,
    /// replacing any earlier file of the same stem in any partition.
    ///
    /// # Errors
    /// When the frame does not match the table schema or the store refuses the write.
    pub async fn write(
        &self,
        table: &TableSchema,
        file_stem: &str,
        date: NaiveDate,
        frame: &mut DataFrame,
    ) -> Result<Location, OperatorError> {
        let bytes = geoparquet::encode(table, frame)?;
        let file_name = format!("{file_stem}.parquet");
        let target = self.root.join(&format!("{}/date={}/{file_name}", table.name, date.format("%Y-%m-%d")));
        let store_err = |uri: String| move |source| OperatorError::Storage { uri, source };
        target.store().put(target.path(), PutPayload::from(bytes)).await.map_err(store_err(target.url()))?;
        // Remove copies of the same content in other date partitions (a rerun on a later day).
        let table_root = self.root.join(table.name);
        let stale: Vec<_> = table_root
            .store()
            .list(Some(table_root.path()))
            .try_filter(|meta| {
                let same_name = meta.location.filename() == Some(file_name.as_str());
                std::future::ready(same_name && meta.location != *target.path())
            })
            .try_collect()
            .await
            .map_err(store_err(table_root.url()))?;
        for meta in stale {
            let old = self.root.with_path(meta.location);
            tracing::info!(file = %old.url(), "Removing a replaced result file from an older partition.");
            old.store().delete(old.path()).await.map_err(store_err(old.url()))?;
        }
        Ok(target)
    }
}

impl Tables {
    /// Removes the file `file_stem` of `table` from every partition (e.g. a dead-letter file
    /// of a scene that has now succeeded). Missing files are not an error.
    ///
    /// # Errors
    /// When the store cannot list or delete.
    pub async fn remove(&self, table: &TableSchema, file_stem: &str) -> Result<usize, OperatorError> {
        let file_name = format!("{file_stem}.parquet");
        let table_root = self.root.join(table.name);
        let store_err = |uri: String| move |source| OperatorError::Storage { uri, source };
        let matches: Vec<_> = table_root
            .store()
            .list(Some(table_root.path()))
            .try_filter(|meta| std::future::ready(meta.location.filename() == Some(file_name.as_str())))
            .try_collect()
            .await
            .map_err(store_err(table_root.url()))?;
        for meta in &matches {
            let old = self.root.with_path(meta.location.clone());
            old.store().delete(old.path()).await.map_err(store_err(old.url()))?;
        }
        Ok(matches.len())
    }
}

/// The partition date of a timestamp (UTC).
pub fn partition_date(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
}
