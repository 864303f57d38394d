//! The process-wide ONNX Runtime environment.
//!
//! ort loads `libonnxruntime.so` at run time (`load-dynamic`): no binary is downloaded at build
//! time. The library path is baked in at build time from `ORT_DYLIB_PATH` (set by
//! `.cargo/config.toml` to the project venv) and can be overridden at run time by the same
//! variable, e.g. for a container that ships the library elsewhere.

use std::{path::PathBuf, sync::OnceLock};

use ort::{environment::Environment, session::Session};

use crate::ModelError;

/// Where ONNX Runtime will be loaded from.
pub fn library_path() -> Option<PathBuf> {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .or_else(|| option_env!("ORT_DYLIB_PATH").map(PathBuf::from))
}

/// The shared ONNX Runtime environment, created on first use.
///
/// # Errors
/// [`ModelError::OnnxRuntimeLoad`] when the library is missing or cannot be loaded.
pub fn environment() -> Result<&'static Environment, ModelError> {
    static ENV: OnceLock<Result<Environment, (PathBuf, String)>> = OnceLock::new();
    let result = ENV.get_or_init(|| {
        let Some(path) = library_path() else {
            return Err((
                PathBuf::from("libonnxruntime.so"),
                "ORT_DYLIB_PATH is not set; run scripts/setup.sh or point it at libonnxruntime.so".to_owned(),
            ));
        };
        if !path.exists() {
            return Err((path, "no such file; run scripts/setup.sh".to_owned()));
        }
        let builder = ort::init_from(&path).map_err(|e| (path.clone(), e.to_string()))?;
        builder.with_name("strata").build().map_err(|e| (path.clone(), e.to_string()))
    });
    result.as_ref().map_err(|(path, message)| ModelError::OnnxRuntimeLoad {
        path: path.clone(),
        message: message.clone(),
    })
}

/// Loads an ONNX model for CPU execution.
///
/// # Errors
/// When the runtime cannot be loaded or the model is invalid.
pub fn load_session(model_bytes: &[u8], intra_threads: usize) -> Result<Session, ModelError> {
    let env = environment()?;
    let onnx = |action: &str| {
        let action = action.to_owned();
        move |source: ort::Error| ModelError::Onnx { action: action.clone(), source }
    };
    Session::builder(env)
        .map_err(onnx("creating a session"))?
        .with_intra_threads(intra_threads)
        .map_err(|e| onnx("setting the thread count")(e.into()))?
        .commit_from_memory(model_bytes)
        .map_err(onnx("loading the model"))
}
