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
//! Indexes travel through object stores with [`store::push_index`] and [`store::fetch_index`].

pub mod build;
pub mod database;
pub mod index;
pub mod store;
mod walk;

use std::path::PathBuf;

pub use build::{build_index, BuildOptions};
pub use database::Description;
pub use index::{Hit, SearchMode, SemanticIndex};

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
}
