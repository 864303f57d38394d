//! The crate's one public error type.

use std::path::PathBuf;

/// Everything that can go wrong in the model crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A CUDA device was required but none can be used.
    #[error("CUDA was requested but is not usable: {reason}")]
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
}
