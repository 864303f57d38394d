//! The Strata model (MODEL_SPEC.md) and its runtime plumbing: tch for the vision-language
//! model, ONNX Runtime (through ort) for the retriever's encoders.
//!
//! This crate depends on no other crate of ours and knows nothing of Kafka or the CLI.
//!
//! ```no_run
//! let device = model::device::select(model::device::DevicePreference::Auto).unwrap();
//! println!("running on {} in {:?}", device.describe(), device.dtype());
//! ```

pub mod artifact;
pub mod bert;
pub mod chat;
pub mod config;
pub mod device;
pub mod encoders;
mod error;
pub mod experts;
pub mod generate;
pub mod layers;
pub mod lora;
pub mod onnx;
pub mod projector;
pub mod prompter;
pub mod qwen2;
pub mod siglip;
pub mod tasks;
pub mod train;
pub mod vlm;
pub mod weights;

pub use error::ModelError;
