//! Picks where the model runs: CUDA when present, CPU otherwise.
//!
//! rustc links with `--as-needed`, so `libtorch_cuda.so` is dropped from our binaries even
//! though libtorch ships it; without it `tch::Cuda::is_available()` is always false. We load it
//! explicitly at start-up when a GPU is wanted, which also keeps CPU-only machines free of
//! CUDA library requirements beyond what libtorch_cpu needs.

use std::{ffi::CString, path::PathBuf, sync::OnceLock};

use tch::{Device, Kind, Tensor};

use crate::ModelError;

/// Where the user wants the model to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePreference {
    /// CUDA device 0 when usable, CPU otherwise.
    #[default]
    Auto,
    /// CPU, even when a GPU is present.
    Cpu,
    /// This CUDA device; an error when CUDA is not usable.
    Cuda(usize),
}

impl std::str::FromStr for DevicePreference {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device `{other}`; use auto, cpu, cuda or cuda:N")),
        }
    }
}

/// The device chosen, with the numeric type the model uses there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectedDevice {
    device: Device,
}

impl SelectedDevice {
    /// The tch device.
    pub const fn device(&self) -> Device {
        self.device
    }

    /// bf16 on CUDA (halves memory, tensor cores), f32 on CPU (bf16 matmuls are slow there).
    pub const fn dtype(&self) -> Kind {
        match self.device {
            Device::Cuda(_) => Kind::BFloat16,
            _ => Kind::Float,
        }
    }

    /// Sums a two-element tensor of ones made on the device in its dtype: `2.0` when libtorch
    /// works there (`strata info`'s self-check).
    ///
    /// # Errors
    /// [`ModelError::Torch`] when libtorch cannot allocate or compute on the device.
    pub fn probe(&self) -> Result<f64, ModelError> {
        let torch = |source| ModelError::Torch { action: format!("probing {}", self.describe()), source };
        let ones = Tensor::f_ones([2], (self.dtype(), self.device)).map_err(torch)?;
        ones.f_sum(Kind::Float).map_err(torch)?.f_double_value(&[]).map_err(torch)
    }

    /// A short human description, e.g. `cpu` or `cuda:0`.
    pub fn describe(&self) -> String {
        match self.device {
            Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".to_owned(),
        }
    }
}

/// Resolves a preference to a device.
///
/// # Errors
/// [`ModelError::CudaUnavailable`] when CUDA was asked for explicitly and cannot be used.
pub fn select(preference: DevicePreference) -> Result<SelectedDevice, ModelError> {
    match preference {
        DevicePreference::Cpu => Ok(SelectedDevice { device: Device::Cpu }),
        DevicePreference::Auto => match cuda_status() {
            Ok(count) if count > 0 => Ok(SelectedDevice { device: Device::Cuda(0) }),
            _ => Ok(SelectedDevice { device: Device::Cpu }),
        },
        DevicePreference::Cuda(index) => match cuda_status() {
            Ok(count) if index < count => Ok(SelectedDevice { device: Device::Cuda(index) }),
            Ok(count) => {
                Err(ModelError::CudaUnavailable { reason: format!("device cuda:{index} asked for, {count} CUDA device(s) visible") })
            }
            Err(reason) => Err(ModelError::CudaUnavailable { reason }),
        },
    }
}

/// Loads libtorch's CUDA half once and returns the number of CUDA devices, or why none.
fn cuda_status() -> Result<usize, String> {
    static STATUS: OnceLock<Result<usize, String>> = OnceLock::new();
    STATUS
        .get_or_init(|| {
            load_libtorch_cuda()?;
            let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
            if count == 0 {
                Err("libtorch_cuda loaded but no CUDA device is visible".to_owned())
            } else {
                Ok(count)
            }
        })
        .clone()
}

fn libtorch_cuda_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("STRATA_LIBTORCH_LIB") {
        candidates.push(PathBuf::from(dir).join("libtorch_cuda.so"));
    }
    if let Some(dir) = option_env!("STRATA_LIBTORCH_LIB") {
        candidates.push(PathBuf::from(dir).join("libtorch_cuda.so"));
    }
    // Last resort: the dynamic loader's own search path (LD_LIBRARY_PATH, ld.so.cache).
    candidates.push(PathBuf::from("libtorch_cuda.so"));
    candidates
}

fn load_libtorch_cuda() -> Result<(), String> {
    let mut failures = Vec::new();
    for candidate in libtorch_cuda_candidates() {
        if candidate.is_absolute() && !candidate.exists() {
            failures.push(format!("{}: not found", candidate.display()));
            continue;
        }
        let Ok(path) = CString::new(candidate.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: dlopen with a valid NUL-terminated path; the handle is deliberately leaked so
        // the library stays loaded for the life of the process, as libtorch expects.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !handle.is_null() {
            tracing::debug!(library = %candidate.display(), "Loaded libtorch CUDA support.");
            return Ok(());
        }
        // SAFETY: dlerror returns a thread-local message valid until the next dl* call.
        let message = unsafe {
            let err = libc::dlerror();
            if err.is_null() {
                "unknown error".to_owned()
            } else {
                std::ffi::CStr::from_ptr(err).to_string_lossy().into_owned()
            }
        };
        failures.push(format!("{}: {message}", candidate.display()));
    }
    Err(format!("cannot load libtorch_cuda.so ({})", failures.join("; ")))
}

/// Seeds libtorch's global generator, which draws every initial weight and dropout mask: a
/// seeded `strata model init` writes the same artifact every time. A seed past `i64::MAX`
/// wraps; it is only a seed.
pub fn manual_seed(seed: u64) {
    tch::manual_seed(seed as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferences_parse_and_reject_unknown_names() {
        assert_eq!("auto".parse(), Ok(DevicePreference::Auto));
        assert_eq!("cuda:1".parse(), Ok(DevicePreference::Cuda(1)));
        assert!("tpu".parse::<DevicePreference>().unwrap_err().contains("auto, cpu, cuda"));
    }

    #[test]
    fn cpu_uses_f32_and_auto_falls_back_to_a_working_device() {
        let cpu = select(DevicePreference::Cpu).unwrap();
        assert_eq!(cpu.dtype(), Kind::Float);
        let auto = select(DevicePreference::Auto).unwrap();
        // Whatever was picked must actually run a tensor op.
        let x = tch::Tensor::ones([2, 2], (auto.dtype(), auto.device()));
        assert_eq!(x.sum(Kind::Float).double_value(&[]), 4.0);
    }
}
