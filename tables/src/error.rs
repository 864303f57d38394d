//! The crate's error: what failed and where (table, object, query).

/// Errors of writing, reading and querying the result tables.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// The object store failed.
    #[error("object `{uri}`: {source}")]
    Storage {
        /// The object's URL.
        uri: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A local file could not be read or written.
    #[error("`{}`: {action}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What was being done.
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// polars failed to build, encode or read a table's rows.
    #[error("table `{table}`: {action}: {source}")]
    Frame {
        /// Table name (`result` for a query's answer).
        table: String,
        /// What was being done.
        action: String,
        /// polars' error.
        #[source]
        source: polars::error::PolarsError,
    },
    /// A Delta Lake operation on a table failed (its log could not be read, a commit conflicted
    /// with a concurrent one).
    #[error("table `{table}`: {action}: {source}")]
    Delta {
        /// Table name.
        table: String,
        /// What was being done.
        action: String,
        /// delta-rs' error.
        #[source]
        source: Box<deltalake_core::DeltaTableError>,
    },
    /// Tables in the layout before Delta cannot be migrated as they are.
    #[error("cannot migrate: {reason}")]
    Migration {
        /// Why, and what to do.
        reason: String,
    },
    /// A query could not run (unknown table or column, SQL syntax) or cannot be shown in the
    /// format asked for.
    #[error("query failed: {reason}")]
    Query {
        /// Why.
        reason: String,
    },
    /// A bug in Strata itself (rows that do not fit their table schema, ...): a report, not a
    /// user error.
    #[error("internal error: {reason}")]
    Internal {
        /// What went wrong.
        reason: String,
    },
}
