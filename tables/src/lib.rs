//! Strata's result tables: rows become GeoParquet files written under names derived from what
//! they hold, and SQL reads them back. Column names and types come from [`schemas::tables`]
//! only. This crate is where polars enters the workspace (the retriever's description
//! database and the evaluation report are Parquet files written through [`parquet`] too);
//! geometries are WKB bytes here, read by the engine a caller hands in ([`GeometryReader`]:
//! GDAL, from `operators`), so the text users see is that engine's.
//!
//! Layout: every table is a Delta Lake table at `{root}/{table}/` ([`delta`]): its transaction
//! log in `_delta_log/`, its rows in GeoParquet files under `date={YYYY-MM-DD}/request={id}/`,
//! named by content. The date is the request's (carried in the message). A scene's rows in
//! every table are committed together per table, the `scenes` table last, and a rerun of a
//! scene replaces its earlier rows in the same transaction that adds the new ones; a failed
//! rerun adds its dead letter and keeps them. Readers see whole commits only.
//!
//! The layout before Delta (one file per scene and table, `_index/` files, no log) is refused
//! by readers with a hint to run `strata tables migrate` ([`migrate`]).

pub mod compact;
pub mod delta;
mod error;
pub mod frames;
mod geoparquet;
pub mod migrate;
pub mod parquet;
mod prune;
pub mod query;

use chrono::{DateTime, NaiveDate, Utc};

pub use delta::{Commit, DataFile};
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

/// Where the result tables live. Clones share the tables' open logs.
#[derive(Clone)]
pub struct Tables {
    root: Location,
    /// Tables opened before, brought up to date at each use: reading a table's log from its
    /// checkpoint for every commit would cost more than the commit as the table grows.
    opened: std::sync::Arc<futures::lock::Mutex<std::collections::HashMap<&'static str, deltalake_core::DeltaTable>>>,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables").field("root", &self.root).finish_non_exhaustive()
    }
}

impl Tables {
    /// Tables under `root`.
    pub fn new(root: Location) -> Self {
        Self { root, opened: std::sync::Arc::default() }
    }

    /// The root location.
    pub fn root(&self) -> &Location {
        &self.root
    }
}

/// The partition date of a timestamp (UTC).
pub fn partition_date(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
}

/// What the crate's tests share.
#[cfg(test)]
pub(crate) mod test_support {
    /// A geometry engine for tables without geometries (or tests that do not read them).
    pub(crate) struct NoGeometry;

    impl super::GeometryReader for NoGeometry {
        fn wkt(&self, _: &[u8]) -> Result<String, String> {
            Err("no geometry here".to_owned())
        }
        fn geojson(&self, _: &[u8]) -> Option<serde_json::Value> {
            None
        }
        fn exterior_rings(&self, _: &[u8]) -> (Option<&'static str>, Vec<Vec<[f64; 2]>>) {
            (None, Vec::new())
        }
    }
}
