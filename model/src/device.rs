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

/// The numeric precision a job runs the model in (`--precision auto|f32|bf16`).
///
/// One choice, read two ways:
/// - **inference** ([`Precision::inference_kind`]) loads the weights in that type: bf16 halves
///   the bytes every decoding step reads, and on CPUs with AVX-512 BF16 libtorch runs bf16
///   matrix products through oneDNN's bf16 kernels (`benches/generation`: 1.75× f32's decode
///   tokens/s at batch 1 and 1.86× at 16 on a Qwen2.5-0.5B-shaped decoder, 2 CPU threads);
/// - **training** ([`Precision::autocasts`]) keeps f32 master weights and runs the forward
///   pass under bf16 autocast (`crate::autocast`), as `torch.autocast` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Inference: bf16 on CUDA, and on CPUs with AVX-512 BF16 (AMX CPUs have it) for language
    /// models at least [`CPU_BF16_MIN_HIDDEN`] wide; f32 elsewhere. Training: bf16 autocast on
    /// CUDA, f32 on CPU.
    #[default]
    Auto,
    /// f32 everywhere.
    F32,
    /// bf16 on any device: bf16 weights for inference, bf16 autocast over f32 master weights
    /// for training.
    Bf16,
}

impl Precision {
    /// Whether a training forward pass runs under bf16 autocast on `device`. `Auto` keeps
    /// training in f32 on CPUs, bf16-capable or not, so a CPU training run reaches the numbers
    /// it always has.
    pub fn autocasts(self, device: Device) -> bool {
        match self {
            Self::Auto => device.is_cuda(),
            Self::F32 => false,
            Self::Bf16 => true,
        }
    }

    /// Enters bf16 autocast when this precision asks for it on `device` (training).
    pub fn scope(self, device: Device) -> Option<crate::autocast::Autocast> {
        self.autocasts(device).then(|| crate::autocast::Autocast::bf16(device))
    }

    /// The type inference loads a model's weights in on `device`, for a language model
    /// `llm_hidden_size` wide. `Auto` is bf16 on CUDA, and on a CPU with bf16 instructions
    /// ([`cpu_bf16_instructions`]) for models at least [`CPU_BF16_MIN_HIDDEN`] wide; f32
    /// elsewhere.
    pub fn inference_kind(self, device: Device, llm_hidden_size: i64) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::Bf16 => Kind::BFloat16,
            Self::Auto if device.is_cuda() => Kind::BFloat16,
            Self::Auto if cpu_bf16_instructions().is_some() && llm_hidden_size >= CPU_BF16_MIN_HIDDEN => Kind::BFloat16,
            Self::Auto => Kind::Float,
        }
    }

    /// Parses `auto`, `f32` or `bf16`.
    ///
    /// # Errors
    /// A message naming the accepted values.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("unknown precision `{other}`: expected `auto`, `f32` or `bf16`")),
        }
    }

    /// The name [`Precision::parse`] reads.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of a weight type in logs and reports: `bf16`, `f32`, `f16`, else libtorch's own.
pub fn kind_name(kind: Kind) -> String {
    match kind {
        Kind::BFloat16 => "bf16".to_owned(),
        Kind::Float => "f32".to_owned(),
        Kind::Half => "f16".to_owned(),
        other => format!("{other:?}"),
    }
}

/// The narrowest language model (`llm.hidden_size`) `--precision auto` runs in bf16 on a CPU.
/// Below it the matrices fit the caches, the bf16 kernels' conversions cost more than the
/// bytes they save, and f32 is faster: measured on this project's CI CPU (2 Zen 4 cores,
/// libtorch 2.11) for one MLP block `[h → 4h → h]` at 16 rows, bf16/f32 speed is 0.67× at
/// h = 64 (the demo model: batches run 35 % slower in bf16), 1.7× at 256, 2.5× at 512 and
/// 3.5× at 896 (Qwen2.5-0.5B); at one row bf16 only wins once the weights leave the caches.
pub const CPU_BF16_MIN_HIDDEN: i64 = 512;

/// The CPU's bf16 dot-product instructions that libtorch's oneDNN kernels use, by their
/// `/proc/cpuinfo` name (`avx512_bf16`), or `None` where there are none and bf16 would be
/// emulated (slower than f32). Detected with CPUID and the OS's saved-state check
/// (`std::arch::is_x86_feature_detected!`). Every CPU with AMX (Sapphire Rapids and later)
/// has AVX-512 BF16 too, so it is found through that flag; Rust's AMX detection is unstable.
pub fn cpu_bf16_instructions() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            return Some("avx512_bf16");
        }
    }
    None
}

/// The device chosen, with the numeric type the model's weights take there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectedDevice {
    device: Device,
    precision: Precision,
}

impl SelectedDevice {
    /// The tch device.
    pub const fn device(&self) -> Device {
        self.device
    }

    /// This device with inference in `precision` instead of [`Precision::Auto`].
    #[must_use]
    pub const fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }

    /// The precision asked for.
    pub const fn precision(&self) -> Precision {
        self.precision
    }

    /// The type inference loads the weights of a language model `llm_hidden_size` wide in
    /// ([`Precision::inference_kind`]).
    pub fn dtype_for(&self, llm_hidden_size: i64) -> Kind {
        self.precision.inference_kind(self.device, llm_hidden_size)
    }

    /// What the precision resolves to here, for `strata info`, e.g. `auto: bf16 for language
    /// models at least 512 wide (the CPU has avx512_bf16), f32 for narrower ones`.
    pub fn describe_precision(&self) -> String {
        match (self.precision, self.device.is_cuda(), cpu_bf16_instructions()) {
            (Precision::Auto, true, _) => "auto: bf16 (CUDA)".to_owned(),
            (Precision::Auto, false, Some(instructions)) => format!(
                "auto: bf16 for language models at least {CPU_BF16_MIN_HIDDEN} wide (the CPU has {instructions}), f32 for narrower ones"
            ),
            (Precision::Auto, false, None) => "auto: f32 (the CPU has no bf16 instructions)".to_owned(),
            (precision, _, _) => format!("{precision} (asked for)"),
        }
    }

    /// Sums a two-element tensor of ones made on the device in its dtype: `2.0` when libtorch
    /// works there (`strata info`'s self-check).
    ///
    /// # Errors
    /// [`ModelError::Torch`] when libtorch cannot allocate or compute on the device.
    pub fn probe(&self) -> Result<f64, ModelError> {
        let torch = |source| ModelError::Torch { action: format!("probing {}", self.describe()), source };
        // The type a large model would run in here: the one that must work.
        let ones = Tensor::f_ones([2], (self.dtype_for(i64::MAX), self.device)).map_err(torch)?;
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
        DevicePreference::Cpu => Ok(SelectedDevice { device: Device::Cpu, precision: Precision::Auto }),
        DevicePreference::Auto => match cuda_status() {
            Ok(count) if count > 0 => Ok(SelectedDevice { device: Device::Cuda(0), precision: Precision::Auto }),
            _ => Ok(SelectedDevice { device: Device::Cpu, precision: Precision::Auto }),
        },
        DevicePreference::Cuda(index) => match cuda_status() {
            Ok(count) if index < count => Ok(SelectedDevice { device: Device::Cuda(index), precision: Precision::Auto }),
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
    fn precision_names_parse_and_auto_autocasts_training_on_cuda_only() {
        assert_eq!(Precision::parse("bf16").unwrap(), Precision::Bf16);
        assert_eq!("f32".parse::<Precision>().unwrap().to_string(), "f32");
        assert!(Precision::parse("fp16").unwrap_err().contains("expected `auto`"));
        assert!(!Precision::Auto.autocasts(Device::Cpu));
        assert!(Precision::Auto.autocasts(Device::Cuda(0)));
        assert!(Precision::Bf16.autocasts(Device::Cpu));
    }

    #[test]
    fn inference_is_bf16_on_cuda_and_on_cpus_with_bf16_instructions() {
        assert_eq!(Precision::Auto.inference_kind(Device::Cuda(0), 64), Kind::BFloat16);
        assert_eq!(Precision::F32.inference_kind(Device::Cuda(0), 896), Kind::Float);
        assert_eq!(Precision::Bf16.inference_kind(Device::Cpu, 64), Kind::BFloat16);
        // The CPU's own flags decide `auto` there, as /proc/cpuinfo lists them, and only for
        // models wide enough to gain from it.
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let listed = flags.split_whitespace().any(|f| f == "avx512_bf16");
        let expected = if listed { Kind::BFloat16 } else { Kind::Float };
        assert_eq!(Precision::Auto.inference_kind(Device::Cpu, 896), expected, "cpu flags list bf16: {listed}");
        assert_eq!(Precision::Auto.inference_kind(Device::Cpu, 64), Kind::Float, "a demo-sized model is faster in f32");
        let cpu = select(DevicePreference::Cpu).unwrap();
        assert_eq!(cpu.with_precision(Precision::F32).dtype_for(896), Kind::Float);
        assert!(cpu.describe_precision().starts_with("auto: "), "{}", cpu.describe_precision());
        assert_eq!(cpu.with_precision(Precision::Bf16).describe_precision(), "bf16 (asked for)");
    }

    #[test]
    fn cpu_f32_and_auto_fall_back_to_a_working_device() {
        let cpu = select(DevicePreference::Cpu).unwrap().with_precision(Precision::F32);
        assert_eq!(cpu.dtype_for(896), Kind::Float);
        let auto = select(DevicePreference::Auto).unwrap();
        // Whatever was picked must actually run a tensor op.
        let x = tch::Tensor::ones([2, 2], (auto.dtype_for(896), auto.device()));
        assert_eq!(x.sum(Kind::Float).double_value(&[]), 4.0);
    }
}
