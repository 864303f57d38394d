//! The Strata model (MODEL_SPEC.md) and its runtime plumbing: tch for the vision-language
//! model, ONNX Runtime (through ort) for the retriever's encoders.
//!
//! This crate depends on no other crate of ours and knows nothing of Kafka or the CLI.
//!
//! ```no_run
//! let device = model::device::select(model::device::DevicePreference::Auto).unwrap();
//! println!("running on {}, precision {}", device.describe(), device.describe_precision());
//! ```

pub mod artifact;
pub mod autocast;
pub mod bert;
pub mod chat;
pub mod config;
pub mod device;
pub mod encoders;
mod error;
pub mod experts;
pub mod generate;
pub mod image_tower;
pub mod layers;
pub mod lora;
pub mod onnx;
pub mod preprocess;
pub mod projector;
pub mod prompter;
pub mod qwen2;
pub mod siglip;
pub mod tasks;
pub mod train;
pub mod vlm;
pub mod weights;

pub use error::ModelError;
/// tch (libtorch), as this crate links it: the crates that handle tensors (retrieval,
/// training, evaluation, the inference stage) name `model::tch`, so libtorch's version, link
/// settings and rpath are decided here alone.
pub use tch;

/// Where downloaded assets (WordNet, the sentence encoder, the OSM presets) live:
/// `$STRATA_ASSETS`, else `$STRATA_CACHE/assets`, else `~/.cache/strata/assets` — where
/// `scripts/setup.sh` puts them.
pub fn assets_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("STRATA_ASSETS") {
        return std::path::PathBuf::from(dir);
    }
    cache_dir().join("assets")
}

/// Strata's cache folder: `$STRATA_CACHE`, else `~/.cache/strata`.
pub fn cache_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    std::env::var_os("STRATA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache/strata"))
}
