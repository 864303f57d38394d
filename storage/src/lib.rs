//! Where Strata's data lives, for every crate that reads or writes it without tiling or
//! querying it: training, evaluation, indexes, inference and the CLI.
//!
//! - [`location`]: one way to name data anywhere, a URL (`s3://bucket/prefix`,
//!   `file:///abs/path`, `memory://name/path`) or a local path, resolved to an object store.
//! - [`artifacts`]: model artifacts pushed to and fetched from stores, mirrored once into the
//!   local cache (`~/.cache/strata/models/`).
//! - [`registry`]: the model registry, published versions with lineage and the serving one.
//!
//! GDAL, polars and Kafka stay out: this crate is what the training and evaluation jobs
//! share with the streaming stages (`operators`), and it builds in seconds.

pub mod artifacts;
pub mod location;
pub mod registry;

pub use location::{register_store, resolve, resolve_href, Location};

/// Whether retrying could help with a failure of this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Asking again gives the same answer (a missing object, a refused credential, a bad URL).
    Never,
    /// A service hiccup (timeouts, resets, throttling, 5xx answers): worth retrying with backoff.
    Backoff,
}

impl Retry {
    /// The retry hint of an object-store error: a missing object, a bad path, an unsupported
    /// call or refused credentials are never worth retrying; everything else (timeouts,
    /// connection resets, throttling, 5xx answers, which object_store reports as `Generic`
    /// after its own retries) is.
    pub fn of_store_error(error: &object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Self::Never,
            _ => Self::Backoff,
        }
    }
}

/// Errors of the storage layer. Each says what failed and where (the URL or path).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A URL or path that names no usable store, or a local file that cannot be read or
    /// written.
    #[error("invalid location `{location}`: {reason}")]
    InvalidLocation {
        /// The URL or path as given.
        location: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The object store failed.
    #[error("object `{uri}`: {source}")]
    Object {
        /// The object's URL.
        uri: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// The model registry refused an operation (a version published twice with other
    /// contents, a version it does not hold, nothing to roll back to).
    #[error("model registry `{registry}`: {reason}")]
    Registry {
        /// The registry's URL.
        registry: String,
        /// Why.
        reason: String,
    },
    /// An artifact does not verify or load.
    #[error("{action}: {source}")]
    Model {
        /// What was being done, e.g. "checking version `v2` from s3://models/versions/v2".
        action: String,
        /// The model crate's error.
        #[source]
        source: model::ModelError,
    },
    /// A bug in Strata itself: a report, not a user error.
    #[error("internal error: {reason}")]
    Internal {
        /// What went wrong.
        reason: String,
    },
}

impl StorageError {
    /// Whether retrying could help: only an object-store failure that is not a refusal.
    pub fn retry(&self) -> Retry {
        match self {
            Self::Object { source, .. } => Retry::of_store_error(source),
            Self::InvalidLocation { .. } | Self::Registry { .. } | Self::Model { .. } | Self::Internal { .. } => Retry::Never,
        }
    }
}

/// Runs blocking work (file hashing, opening an artifact) off the async threads; a panic in it
/// becomes an internal error instead of taking the process down.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| StorageError::Internal { reason: format!("a blocking task failed: {e}") })
}
