//! The crate's public error. Every variant says what failed and where (scene, object, table),
//! and [`OperatorError::class`] says whether retrying could help — the runtimes decide between
//! a retry and a dead-letter record from that alone.

/// Whose fault a failure is and whether retrying could help: the one classification of
/// Strata's errors (arroyo's user / external / internal domains with a retry hint). A stage
/// error takes it as it is ([`crate::stage::StageError::from_operator`]), so a dead letter
/// says `permanent` only when the input is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The input is bad; retrying gives the same answer. Dead-letter it.
    Permanent,
    /// A service hiccup; retry with backoff.
    Retryable,
    /// Strata or its model failed (a bug, a libtorch error, an index that cannot answer): the
    /// input may be fine. Dead-letter it as internal, to be replayed once the cause is fixed.
    Internal,
}

impl ErrorClass {
    /// The class of an object-store error: a missing object, a bad path, an unsupported call
    /// or refused credentials are permanent; everything else (timeouts, connection resets,
    /// throttling, 5xx answers — object_store reports those as `Generic`) is worth retrying.
    pub fn of_store_error(error: &object_store::Error) -> Self {
        match storage::Retry::of_store_error(error) {
            storage::Retry::Never => Self::Permanent,
            storage::Retry::Backoff => Self::Retryable,
        }
    }
}

/// Errors raised by stages and the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// A URL or path that names no usable store.
    #[error("invalid location `{location}`: {reason}")]
    InvalidLocation {
        /// The URL or path as given.
        location: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The object store failed.
    #[error("object `{uri}`: {source}")]
    Storage {
        /// The object's URL.
        uri: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// The scene cannot be tiled: not a raster, no CRS, absurd size, unreadable bands.
    #[error("scene `{scene}`: {reason}")]
    BadScene {
        /// Scene id.
        scene: String,
        /// What is wrong, in words an operator can act on.
        reason: String,
    },
    /// GDAL failed on a scene that opened fine (a truncated or corrupt block, usually).
    #[error("scene `{scene}`: GDAL failed while {action} (the file may be truncated or corrupt): {detail}")]
    Gdal {
        /// Scene id.
        scene: String,
        /// What was being done.
        action: String,
        /// GDAL's message, with internal paths replaced by the object's URL.
        detail: String,
    },
    /// A box cannot be placed on the scene or the map: a degenerate box, one lying wholly in
    /// the tile's padding, a tile whose georeference is inconsistent, a CRS that cannot reach
    /// lon/lat, a box around a pole.
    #[error("scene `{scene}`, tile `{tile}`: cannot georeference: {reason}")]
    Georeference {
        /// Scene id.
        scene: String,
        /// Tile id.
        tile: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing, reading or querying a result table failed.
    #[error(transparent)]
    Table(#[from] tables::TableError),
    /// A bug in Strata itself (rows that do not fit their table schema, ...): a report, not a
    /// user error.
    #[error("internal error: {reason}")]
    Internal {
        /// What went wrong.
        reason: String,
    },
    /// Settings that cannot work together (two model sources, retrieval without a model).
    #[error("{reason}")]
    Settings {
        /// What is wrong, with what to do.
        reason: String,
    },
    /// A query could not run.
    #[error("query failed: {reason}")]
    Query {
        /// Why.
        reason: String,
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
    /// The model or its artifact failed.
    #[error("{action}: {source}")]
    Model {
        /// What was being done, e.g. "loading the model `s3://models/rs-2`".
        action: String,
        /// The model crate's error.
        #[source]
        source: model::ModelError,
    },
    /// The semantic index failed.
    #[error("{action}: {source}")]
    Retrieval {
        /// What was being done.
        action: String,
        /// The retrieval crate's error.
        #[source]
        source: retrieval::RetrievalError,
    },
}

impl OperatorError {
    /// Whether retrying could help.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Storage { source, .. } => ErrorClass::of_store_error(source),
            // An index that cannot be fetched is a store failure like any other.
            Self::Retrieval { source: retrieval::RetrievalError::Storage(store), .. } => match store.retry() {
                storage::Retry::Backoff => ErrorClass::Retryable,
                storage::Retry::Never => ErrorClass::Internal,
            },
            Self::Model { .. } | Self::Retrieval { .. } | Self::Internal { .. } => ErrorClass::Internal,
            Self::Georeference { .. } | Self::Registry { .. } => ErrorClass::Permanent,
            Self::InvalidLocation { .. } | Self::BadScene { .. } | Self::Gdal { .. } | Self::Query { .. } | Self::Settings { .. } => {
                ErrorClass::Permanent
            }
            Self::Table(error) => match error {
                tables::TableError::Storage { source, .. } => ErrorClass::of_store_error(source),
                tables::TableError::Query { .. } | tables::TableError::Migration { .. } => ErrorClass::Permanent,
                tables::TableError::Internal { .. } => ErrorClass::Internal,
                tables::TableError::Delta { source, .. } => match source.as_ref() {
                    tables::delta::DeltaTableError::ObjectStore { source } => ErrorClass::of_store_error(source),
                    // A commit that lost a race with another writer (or a log read that did)
                    // succeeds when redone on the new version: commits are idempotent.
                    _ => ErrorClass::Retryable,
                },
                // polars failing to encode rows that fit their schema, or a local file that
                // cannot be written: nothing about the input, so worth another try.
                _ => ErrorClass::Retryable,
            },
        }
    }
}

/// The storage layer's errors keep their variant: a store failure stays retryable or not by
/// the same rule, a registry refusal stays a refusal.
impl From<storage::StorageError> for OperatorError {
    fn from(error: storage::StorageError) -> Self {
        use storage::StorageError as S;
        match error {
            S::InvalidLocation { location, reason } => Self::InvalidLocation { location, reason },
            S::Object { uri, source } => Self::Storage { uri, source },
            S::Registry { registry, reason } => Self::Registry { registry, reason },
            S::Model { action, source } => Self::Model { action, source },
            S::Internal { reason } => Self::Internal { reason },
            // StorageError is non-exhaustive: a variant added later is kept in words.
            other => Self::Internal { reason: format!("an unclassified storage error: {other}") },
        }
    }
}
