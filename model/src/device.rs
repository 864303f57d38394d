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
    let selected = select_device(preference)?;
    // The CPU runs libtorch's kernels even when the model is on a GPU (preprocessing, the
    // retriever's tower on CPU), so its threads are set either way, once.
    apply_cpu_threads();
    Ok(selected)
}

fn select_device(preference: DevicePreference) -> Result<SelectedDevice, ModelError> {
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

/// The intra-op threads asked for (`--threads` / `STRATA_THREADS`), before libtorch is used.
static REQUESTED_THREADS: OnceLock<usize> = OnceLock::new();

/// Asks for `threads` libtorch intra-op threads in this process. Call it before the first
/// [`select`], which applies it; later calls are ignored (libtorch's pool is sized once).
pub fn request_cpu_threads(threads: usize) {
    let _ = REQUESTED_THREADS.set(threads.max(1));
}

/// How many intra-op threads libtorch uses and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuThreads {
    /// Threads libtorch runs its CPU kernels on.
    pub threads: usize,
    /// The CPUs this process may use (affinity and cgroup quota included).
    pub available: usize,
    /// Other processes of this user with libtorch loaded, as `pid command`.
    pub other_libtorch_processes: Vec<String>,
}

impl CpuThreads {
    /// Whether this process and the other libtorch processes ask for more threads than there
    /// are CPUs (each other process counted as at least one busy thread).
    pub fn oversubscribed(&self) -> bool {
        !self.other_libtorch_processes.is_empty() && self.threads + self.other_libtorch_processes.len() > self.available
    }
}

/// Sets libtorch's intra-op threads once per process: the number asked for with
/// [`request_cpu_threads`], else `OMP_NUM_THREADS` when set (libtorch reads it itself), else
/// the CPUs this process may use. libtorch's own default counts the machine's cores and ignores
/// a container's CPU quota, so two jobs on one machine each take every core; a review saw a
/// training job run 20× slower that way. Warns when another libtorch process is running and the
/// threads together exceed the CPUs. Returns what was applied.
pub fn apply_cpu_threads() -> CpuThreads {
    static APPLIED: OnceLock<CpuThreads> = OnceLock::new();
    APPLIED
        .get_or_init(|| {
            let available = std::thread::available_parallelism().map_or(1, usize::from);
            let from_env = std::env::var("OMP_NUM_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok()).filter(|&n| n > 0);
            let threads = REQUESTED_THREADS.get().copied().or(from_env).unwrap_or(available);
            tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
            let applied = CpuThreads { threads, available, other_libtorch_processes: other_libtorch_processes() };
            if applied.oversubscribed() {
                tracing::warn!(
                    threads,
                    cpus = available,
                    others = %applied.other_libtorch_processes.join("; "),
                    "Other libtorch processes are running on this machine and with this one's {threads} thread(s) they ask for more \
                     than its {available} CPU(s); each slows the others down many times over. Give each job a share of the CPUs: \
                     --threads (batch, serve) or OMP_NUM_THREADS=N."
                );
            } else {
                tracing::debug!(threads, cpus = available, "libtorch intra-op threads set");
            }
            applied
        })
        .clone()
}

/// Other processes of this user that have libtorch mapped (`/proc/<pid>/maps`), as
/// `pid command`; empty where `/proc` is not readable.
fn other_libtorch_processes() -> Vec<String> {
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == own {
            continue;
        }
        // Processes of other users are not readable; they are skipped, not guessed at.
        let Ok(maps) = std::fs::read_to_string(entry.path().join("maps")) else { continue };
        if maps.contains("libtorch_cpu.so") {
            let command = std::fs::read(entry.path().join("cmdline"))
                .map(|c| {
                    c.split(|&b| b == 0)
                        .filter(|a| !a.is_empty())
                        .take(3)
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            found.push(format!("{pid} {command}"));
        }
    }
    found
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
    fn libtorch_threads_are_set_to_the_cpus_available_or_the_request() {
        let _ = select(DevicePreference::Cpu).unwrap();
        let applied = apply_cpu_threads();
        let expected = std::env::var("OMP_NUM_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(applied.available);
        assert_eq!(applied.threads, expected);
        assert_eq!(tch::get_num_threads(), i32::try_from(applied.threads).unwrap());
        assert!(applied.available >= 1);
        // Another libtorch job beside one that takes every CPU oversubscribes them.
        let busy = CpuThreads { threads: 2, available: 2, other_libtorch_processes: vec!["7 strata train".into()] };
        assert!(busy.oversubscribed());
        assert!(!CpuThreads { threads: 1, ..busy.clone() }.oversubscribed());
        assert!(!CpuThreads { other_libtorch_processes: Vec::new(), ..busy }.oversubscribed());
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
