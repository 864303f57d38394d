//! The process-wide ONNX Runtime environment.
//!
//! ort loads `libonnxruntime.so` at run time (`load-dynamic`): no binary is downloaded at build
//! time. The library path is baked in at build time from `ORT_DYLIB_PATH` (set by
//! `.cargo/config.toml` to the project venv) and can be overridden at run time by the same
//! variable, e.g. for a container that ships the library elsewhere.

use std::{
    path::PathBuf,
    sync::{Mutex, OnceLock, PoisonError},
};

use ort::{environment::Environment, session::Session};

use crate::device::DevicePreference;
use crate::ModelError;

/// Where ONNX Runtime will be loaded from.
pub fn library_path() -> Option<PathBuf> {
    std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).or_else(|| option_env!("ORT_DYLIB_PATH").map(PathBuf::from))
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
    result.as_ref().map_err(|(path, message)| ModelError::OnnxRuntimeLoad { path: path.clone(), message: message.clone() })
}

/// Where an ONNX session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrtTarget {
    /// ONNX Runtime's own CPU kernels.
    Cpu,
    /// The CUDA execution provider on this device.
    Cuda(usize),
}

impl std::fmt::Display for OrtTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(device) => write!(f, "cuda:{device}"),
        }
    }
}

/// Whether the loaded ONNX Runtime was built with the CUDA execution provider (the
/// `onnxruntime-gpu` build is; the CPU wheel that setup installs is not).
///
/// # Errors
/// When the runtime cannot be loaded.
pub fn cuda_provider_built() -> Result<bool, ModelError> {
    environment()?;
    Ok(<ort::ep::CUDA as ort::ep::ExecutionProvider>::is_available().unwrap_or(false))
}

/// Loads an ONNX model for CPU execution.
///
/// # Errors
/// When the runtime cannot be loaded or the model is invalid.
pub fn load_session(model_bytes: &[u8], intra_threads: usize) -> Result<Session, ModelError> {
    Ok(load_session_on(model_bytes, intra_threads, DevicePreference::Cpu)?.0)
}

/// Loads an ONNX model where `preference` says: `Auto` takes CUDA device 0 when the runtime
/// has the CUDA execution provider and it accepts the session, the CPU otherwise; `Cuda(n)`
/// insists on device `n`. Returns the session and where it runs.
///
/// # Errors
/// When the runtime cannot be loaded or the model is invalid; [`ModelError::CudaUnavailable`]
/// when CUDA was asked for and the runtime has no CUDA provider or the provider refused.
pub fn load_session_on(model_bytes: &[u8], intra_threads: usize, preference: DevicePreference) -> Result<(Session, OrtTarget), ModelError> {
    let device = match preference {
        DevicePreference::Cpu => return Ok((session_on(model_bytes, intra_threads, None)?, OrtTarget::Cpu)),
        DevicePreference::Auto => 0,
        DevicePreference::Cuda(device) => device,
    };
    let library = library_path().map_or_else(|| "libonnxruntime.so".to_owned(), |p| p.display().to_string());
    let refused = if cuda_provider_built()? {
        // The provider can refuse when it is added or only when the session is created (no
        // device, missing CUDA libraries): either way the reason is kept.
        match session_on(model_bytes, intra_threads, Some(device)) {
            Ok(session) => {
                if preference == DevicePreference::Auto {
                    record_auto_placement(None);
                }
                return Ok((session, OrtTarget::Cuda(device)));
            }
            Err(e) => format!("the CUDA execution provider of `{library}` failed on device {device}: {e}"),
        }
    } else {
        format!(
            "`{library}` has no CUDA execution provider (it is a CPU build); install onnxruntime-gpu and point ORT_DYLIB_PATH at its libonnxruntime.so"
        )
    };
    if let DevicePreference::Cuda(_) = preference {
        return Err(ModelError::CudaUnavailable { reason: refused });
    }
    // Warn once per reason: every encoder of a process falls back for the same one.
    if record_auto_placement(Some(refused.clone())) {
        tracing::warn!(reason = %refused, "ONNX models run on the CPU, not CUDA.");
    } else {
        tracing::debug!(reason = %refused, "ONNX models run on the CPU, not CUDA.");
    }
    Ok((session_on(model_bytes, intra_threads, None)?, OrtTarget::Cpu))
}

/// Where the last `Auto` session went: `None` before any, `Some(None)` on CUDA,
/// `Some(Some(reason))` on the CPU.
static AUTO_PLACEMENT: Mutex<Option<Option<String>>> = Mutex::new(None);

/// Records where an `Auto` session went; true when that differs from the last one.
fn record_auto_placement(fallback: Option<String>) -> bool {
    let mut last = AUTO_PLACEMENT.lock().unwrap_or_else(PoisonError::into_inner);
    let changed = last.as_ref() != Some(&fallback);
    *last = Some(fallback);
    changed
}

/// Why ONNX sessions loaded with [`DevicePreference::Auto`] run on the CPU rather than CUDA
/// device 0 — the runtime is a CPU build, or the CUDA provider refused (no device, missing
/// CUDA libraries) — or `None` when they run on CUDA. Answers for the last `Auto` session of
/// this process; before any, probes with a one-node built-in model. For `strata info`.
///
/// # Errors
/// When the runtime cannot be loaded.
pub fn cuda_fallback_reason() -> Result<Option<String>, ModelError> {
    let last = AUTO_PLACEMENT.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if let Some(known) = last {
        return Ok(known);
    }
    // The load records where it went.
    load_session_on(&probe_model(), 1, DevicePreference::Auto)?;
    Ok(AUTO_PLACEMENT.lock().unwrap_or_else(PoisonError::into_inner).clone().flatten())
}

/// The smallest useful ONNX model, encoded here rather than shipped: `y = Identity(x)` on a
/// float `[1]` (IR version 7, opset 13).
fn probe_model() -> Vec<u8> {
    fn varint(mut value: u64, out: &mut Vec<u8>) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
    // A varint field and a length-delimited field (message or string).
    let int = |number: u64, value: u64| {
        let mut out = Vec::new();
        varint(number << 3, &mut out);
        varint(value, &mut out);
        out
    };
    let bytes = |number: u64, body: &[u8]| {
        let mut out = Vec::new();
        varint((number << 3) | 2, &mut out);
        varint(body.len() as u64, &mut out);
        out.extend_from_slice(body);
        out
    };
    let shape = bytes(1, &int(1, 1)); // TensorShapeProto { dim: [{ dim_value: 1 }] }
    let tensor_type = bytes(1, &[int(1, 1), bytes(2, &shape)].concat()); // TypeProto { tensor_type: { FLOAT, shape } }
    let value_info = |name: &str| [bytes(1, name.as_bytes()), bytes(2, &tensor_type)].concat();
    let node = [bytes(1, b"x"), bytes(2, b"y"), bytes(4, b"Identity")].concat();
    let graph = [bytes(1, &node), bytes(2, b"probe"), bytes(11, &value_info("x")), bytes(12, &value_info("y"))].concat();
    [int(1, 7), bytes(7, &graph), bytes(8, &int(2, 13))].concat()
}

/// One session, with the CUDA execution provider on `cuda_device` when given (an error if it
/// cannot be added).
fn session_on(model_bytes: &[u8], intra_threads: usize, cuda_device: Option<usize>) -> Result<Session, ModelError> {
    let env = environment()?;
    let onnx = |action: &str| {
        let action = action.to_owned();
        move |source: ort::Error| ModelError::Onnx { action: action.clone(), source }
    };
    let mut builder = Session::builder(env)
        .map_err(onnx("creating a session"))?
        .with_intra_threads(intra_threads)
        .map_err(|e| onnx("setting the thread count")(e.into()))?;
    if let Some(device) = cuda_device {
        let provider = ort::ep::CUDA::default().with_device_id(i32::try_from(device).unwrap_or(i32::MAX));
        ort::ep::ExecutionProvider::register(&provider, &mut builder).map_err(onnx("adding the CUDA execution provider"))?;
    }
    builder.commit_from_memory(model_bytes).map_err(onnx("loading the model"))
}
