//! The crate's one public error type.

use std::path::PathBuf;

/// Everything that can go wrong in the model crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A CUDA device was required but none can be used.
    #[error("CUDA was requested but is not usable: {reason}\nhint: --device cpu, or --device auto to fall back to the CPU when no GPU can be used")]
    CudaUnavailable {
        /// Why not (library missing, no device).
        reason: String,
    },
    /// The ONNX Runtime shared library could not be loaded.
    #[error("cannot load ONNX Runtime from `{}`: {message}", path.display())]
    OnnxRuntimeLoad {
        /// The library path tried.
        path: PathBuf,
        /// The loader's complaint.
        message: String,
    },
    /// A model configuration is invalid.
    #[error("invalid model configuration: {reason}")]
    Config {
        /// What is wrong, naming the field.
        reason: String,
    },
    /// ONNX Runtime refused a model or a run.
    #[error("ONNX Runtime failed while {action}: {source}")]
    Onnx {
        /// What was being done.
        action: String,
        /// The runtime's error.
        #[source]
        source: ort::Error,
    },
    /// libtorch refused an operation.
    #[error("libtorch failed while {action}: {source}")]
    Torch {
        /// What was being done.
        action: String,
        /// libtorch's error.
        #[source]
        source: tch::TchError,
    },
    /// A tokenizer could not be loaded or used.
    #[error("tokenizer error: {reason}")]
    Tokenizer {
        /// What went wrong.
        reason: String,
    },
    /// A model artifact is incomplete, tampered with or unreadable.
    #[error("model artifact `{}`: {reason}", path.display())]
    Artifact {
        /// The artifact directory or file at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Checkpoint weights do not fit the model built from the config.
    #[error("weights do not match the model: {reason}")]
    Weights {
        /// Which tensors are missing, unexpected or misshapen.
        reason: String,
    },
    /// A request cannot be run (empty batch, image of the wrong size...).
    #[error("invalid request: {reason}")]
    Request {
        /// What is wrong.
        reason: String,
    },
    /// An image file or object that cannot be decoded (not PNG, JPEG or TIFF, truncated,
    /// corrupt).
    #[error("{what} is not a readable image: {reason}")]
    Image {
        /// The file or object, as the caller names it.
        what: String,
        /// The decoder's complaint.
        reason: String,
    },
}
