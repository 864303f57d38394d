//! Strata's stages. Each stage is plain code over typed inputs and outputs; no stage knows
//! about Kafka or the command line. Where data lives (object-store URLs, artifacts, the model
//! registry) is the `storage` crate's.
//!
//! - [`vsi`]: a GDAL virtual file system backed by object_store range reads, so GDAL reads
//!   COGs from any store by ranges, never downloading them whole.
//! - [`tile`]: cuts a scene into georeferenced, model-ready tiles.
//! - [`rows`]: a finished scene as the rows of each result table (the `tables` crate writes
//!   and queries them); [`geometry`]: GDAL as the engine that reads their WKB.
//! - [`chain`]: the chain builder both runtimes take their stages from; [`inputs`]: scenes
//!   found from what a user names (files, folders, prefixes, STAC items) as requests.
//! - [`stage`]: the stage contract (envelopes, acknowledgements, collectors, classified
//!   errors) and its conformance suite; [`stages`]: tile, infer, merge and sink;
//!   [`runtime`]: the embedded runtime chaining them over bounded channels.
//! - [`georef`] and [`merge`]: boxes onto the globe, and cross-tile NMS.

pub mod chain;
mod error;
pub mod geometry;
pub mod georef;
pub mod inputs;
pub mod merge;
pub mod rows;
pub mod runtime;
pub mod stage;
pub mod stages;
pub mod tile;
pub mod vsi;

pub use error::{ErrorClass, OperatorError};
/// GDAL, as this crate links it: tests and tools that read or write rasters use it from here,
/// so GDAL enters the workspace through this crate alone.
pub use gdal;

/// Runs blocking work (GDAL, libtorch, file hashing) off the async threads; a panic in it
/// becomes an internal error instead of taking the process down.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, OperatorError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| OperatorError::Internal { reason: format!("a blocking task failed: {e}") })
}
