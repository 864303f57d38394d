//! The retriever (MODEL_SPEC §2): a database of remote-sensing descriptions, their embeddings
//! from a text encoder run through ONNX Runtime, and vector search over them — exact (blocked
//! matrix products through libtorch, on the GPU when there is one) or approximate (HNSW, with
//! `ef` as the recall/speed knob). An index is a directory:
//!
//! - `descriptions.parquet`: id, text, level, category, source;
//! - `embeddings.f32`: the L2-normalised vectors, row-major little-endian f32, memory-mapped
//!   on load (a million 384-d rows open instantly and page in as searched);
//! - `hnsw.usearch`: the HNSW graph, built by USearch, memory-mapped on load and searched
//!   by this crate's prefetching search (`walk.rs`; optional);
//! - `index.json`: dimensions, count, encoder, HNSW settings and the graph's sha256 —
//!   written last, so a half-built index is never opened, and a damaged graph is refused
//!   before the native library reads it.
//!
//! Indexes travel through object stores with [`store::push_index`] and [`store::fetch_index`];
//! [`retriever::Retriever`] opens one from a directory or a URL with the encoder that queries
//! it, for inference, training and evaluation alike.

pub mod build;
pub mod database;
pub mod index;
pub mod retriever;
pub mod store;
mod walk;

use std::path::PathBuf;

pub use build::{build_index, BuildOptions};
pub use database::Description;
pub use index::{Hit, SearchMode, SemanticIndex};
pub use retriever::{RetrievalOptions, Retrieved, Retriever};

/// Errors of the retriever.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetrievalError {
    /// An input file is missing or malformed.
    #[error("`{}`: {reason}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong (with the line where there is one).
        reason: String,
    },
    /// An index directory is incomplete or corrupt.
    #[error("index `{}`: {reason}", path.display())]
    Index {
        /// The file or directory at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A query does not fit the index.
    #[error("invalid query: {reason}")]
    Query {
        /// What is wrong.
        reason: String,
    },
    /// An object-store transfer failed.
    #[error("object store `{location}`: {reason}")]
    Store {
        /// The object.
        location: String,
        /// What went wrong.
        reason: String,
    },
    /// The encoder failed.
    #[error(transparent)]
    Model(#[from] model::ModelError),
    /// A query encoder could not be loaded or failed on its input.
    #[error("{action}: {source}")]
    Encoder {
        /// What was being done, e.g. "loading the text encoder `/models/minilm`".
        action: String,
        /// The model crate's error (boxed, as [`RetrievalError::Storage`]).
        #[source]
        source: Box<model::ModelError>,
    },
    /// The index's location cannot be resolved or read (boxed: object_store's errors are
    /// large, and this one travels inside every stage error).
    #[error(transparent)]
    Storage(Box<storage::StorageError>),
    /// A bug in Strata itself: a report, not a user error.
    #[error("internal error: {reason}")]
    Internal {
        /// What went wrong.
        reason: String,
    },
}

impl From<storage::StorageError> for RetrievalError {
    fn from(error: storage::StorageError) -> Self {
        Self::Storage(Box::new(error))
    }
}
