//! Reading and writing weights in safetensors without a second copy in memory.
//!
//! Reading memory-maps each file and copies tensor by tensor straight from the mapping into
//! the (already allocated) model variables, converting dtype or moving to the GPU on the way;
//! the pages of a tensor are handed back to the kernel (`MADV_DONTNEED`) as soon as it is
//! copied. Peak memory is the model plus one tensor, not the model plus the file.
//! Writing streams borrowed views of the variables into the file.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{tensor::TensorView, Dtype, SafeTensors, View};
use tch::{nn, Device, Kind, Tensor};

use crate::ModelError;

/// Which variables a load must cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadPolicy {
    /// Every variable must be in the files, and every tensor in the files must be a variable
    /// (a complete model artifact).
    Complete,
    /// Variables whose names start with one of these prefixes must be loaded; tensors that
    /// are not variables are ignored (a base checkpoint: a full SigLIP also holds its text
    /// tower).
    Required(&'static [&'static str]),
}

/// What a load did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Variables filled.
    pub loaded: usize,
    /// Tensors in the files that are not variables (ignored under `Required`).
    pub ignored: Vec<String>,
    /// Variables no file provided (allowed under `Required` outside its prefixes).
    pub not_loaded: Vec<String>,
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

fn weights_error(file: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Weights { reason: format!("`{}`: {reason}", file.display()) }
}

/// Copies one tensor view from the mapping into `var`.
fn copy_into(var: &Tensor, name: &str, view: &TensorView<'_>, file: &Path) -> Result<(), ModelError> {
    let kind = kind_of(view.dtype()).ok_or_else(|| weights_error(file, format!("`{name}` has unsupported dtype {:?}", view.dtype())))?;
    let shape: Vec<i64> = view.shape().iter().map(|d| *d as i64).collect();
    if shape != var.size() {
        return Err(weights_error(file, format!("`{name}` has shape {shape:?}, the model expects {:?}", var.size())));
    }
    let data = view.data();
    let element = kind.elt_size_in_bytes();
    let source = if (data.as_ptr() as usize).is_multiple_of(element) {
        let strides = contiguous_strides(&shape);
        // SAFETY: `data` is a live, suitably aligned slice of the mapping holding exactly
        // `numel × element` bytes (checked by safetensors); the view is only read by the copy
        // below, before the mapping is advised away or dropped.
        unsafe { Tensor::from_blob(data.as_ptr(), &shape, &strides, kind, Device::Cpu) }
    } else {
        Tensor::from_data_size(data, &shape, kind)
    };
    tch::no_grad(|| var.shallow_clone().f_copy_(&source)).map_err(|e| weights_error(file, format!("copying `{name}`: {e}")))?;
    Ok(())
}

fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// Fills the variables of `vs` from safetensors files.
///
/// # Errors
/// [`ModelError::Weights`] naming the file and tensor: unreadable or corrupt file, wrong
/// shape, missing or unexpected tensors (as the policy says).
pub fn load(vs: &nn::VarStore, files: &[PathBuf], policy: LoadPolicy) -> Result<LoadReport, ModelError> {
    let variables = vs.variables();
    let mut loaded: BTreeSet<String> = BTreeSet::new();
    let mut report = LoadReport::default();
    for file in files {
        let handle = std::fs::File::open(file).map_err(|e| weights_error(file, e))?;
        // SAFETY: the mapping is private and read-only; a concurrent truncation of the file
        // by another process would fault, as it would for any reader of model files.
        let mmap = unsafe { Mmap::map(&handle) }.map_err(|e| weights_error(file, e))?;
        let tensors = SafeTensors::deserialize(&mmap).map_err(|e| weights_error(file, format!("not a valid safetensors file: {e}")))?;
        let base = mmap.as_ptr() as usize;
        let mut names = tensors.names();
        names.sort();
        for name in names {
            let view = tensors.tensor(name).map_err(|e| weights_error(file, e))?;
            let Some(var) = variables.get(name) else {
                report.ignored.push(name.to_owned());
                continue;
            };
            if !loaded.insert(name.to_owned()) {
                return Err(weights_error(file, format!("`{name}` is also in an earlier file")));
            }
            copy_into(var, name, &view, file)?;
            let (offset, len) = (view.data().as_ptr() as usize - base, view.data().len());
            // SAFETY: nothing borrows these pages any more (the copy is done); dropping them
            // only means a later read would fault them in again from the file.
            let _ = unsafe { mmap.unchecked_advise_range(UncheckedAdvice::DontNeed, offset, len) };
        }
    }
    report.loaded = loaded.len();
    report.not_loaded = variables.keys().filter(|n| !loaded.contains(n.as_str())).cloned().collect();
    report.not_loaded.sort();
    let missing: Vec<&String> = match policy {
        LoadPolicy::Complete => report.not_loaded.iter().collect(),
        LoadPolicy::Required(prefixes) => report.not_loaded.iter().filter(|n| prefixes.iter().any(|p| n.starts_with(p))).collect(),
    };
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(|s| s.as_str()).collect();
        return Err(ModelError::Weights { reason: format!("{} tensors are missing, e.g. {}", missing.len(), shown.join(", ")) });
    }
    if policy == LoadPolicy::Complete && !report.ignored.is_empty() {
        let shown: Vec<&str> = report.ignored.iter().take(5).map(|s| s.as_str()).collect();
        return Err(ModelError::Weights {
            reason: format!("{} tensors in the files are not part of this model, e.g. {}", report.ignored.len(), shown.join(", ")),
        });
    }
    Ok(report)
}

/// A borrowed, contiguous CPU tensor as a safetensors view.
struct Borrowed {
    tensor: Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl View for &Borrowed {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        // SAFETY: the tensor is contiguous, on the CPU and alive for as long as `self`.
        Cow::Borrowed(unsafe { std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, self.data_len()) })
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()
    }
}

/// Writes every variable of `vs` (or those `keep` selects) to one safetensors file, under
/// the variables' names, sorted.
///
/// # Errors
/// [`ModelError::Weights`] when a kind has no safetensors dtype or the file cannot be written.
pub fn save(vs: &nn::VarStore, path: &Path, keep: impl Fn(&str) -> bool) -> Result<usize, ModelError> {
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().filter(|(name, _)| keep(name)).collect();
    let mut views = Vec::with_capacity(variables.len());
    for (name, tensor) in &variables {
        let dtype = dtype_of(tensor.kind()).ok_or_else(|| weights_error(path, format!("`{name}` has kind {:?}", tensor.kind())))?;
        let cpu = tensor.to_device(Device::Cpu).contiguous();
        let shape = cpu.size().iter().map(|d| *d as usize).collect();
        views.push((name.clone(), Borrowed { tensor: cpu, dtype, shape }));
    }
    let refs: Vec<(&str, &Borrowed)> = views.iter().map(|(n, v)| (n.as_str(), v)).collect();
    safetensors::serialize_to_file(refs, None, path).map_err(|e| weights_error(path, e))?;
    Ok(views.len())
}
