//! Strata's stages and the storage layer they share. Each stage is plain code over typed
//! inputs and outputs; no stage knows about Kafka or the command line.
//!
//! - [`storage`]: object-store URLs (`file://`, `memory://`, `s3://`) resolved to stores.
//! - [`vsi`]: a GDAL virtual file system backed by object_store range reads, so GDAL reads
//!   COGs from any store by ranges, never downloading them whole.
//! - [`tile`]: cuts a scene into georeferenced, model-ready tiles.
//! - [`tables`]: GeoParquet result tables — writing them atomically and querying them.

mod error;
pub mod storage;
pub mod tables;
pub mod tile;
pub mod vsi;

pub use error::{ErrorClass, OperatorError};
