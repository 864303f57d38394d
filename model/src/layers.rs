//! Parameter constructors shared by every module of the model.
//!
//! They exist for one reason: a 7B-parameter checkpoint must load without the model first
//! filling 30 GB of freshly initialised f32 weights. With [`ParamInit::Uninitialized`] every
//! parameter is an untouched `empty` tensor of the var store's kind; the safetensors loader
//! then fills it in place, so memory grows with the weights actually read.

use tch::{nn, Kind, Tensor};

/// How new parameters are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParamInit {
    /// Random initialisation (training from scratch, tests).
    #[default]
    Random,
    /// Allocated but not written: every parameter must be loaded afterwards.
    Uninitialized,
}

fn empty(p: &nn::Path<'_>, dims: &[i64]) -> Tensor {
    Tensor::empty(dims, (p.kind(), p.device()))
}

/// A weight `[out, in]` and an optional bias `[out]`, with `nn::linear`'s initialisation.
pub fn linear(p: &nn::Path<'_>, in_dim: i64, out_dim: i64, bias: bool, init: ParamInit) -> nn::Linear {
    match init {
        ParamInit::Random => nn::linear(p, in_dim, out_dim, nn::LinearConfig { bias, ..Default::default() }),
        ParamInit::Uninitialized => nn::Linear {
            ws: p.add("weight", empty(p, &[out_dim, in_dim]), true),
            bs: bias.then(|| p.add("bias", empty(p, &[out_dim]), true)),
        },
    }
}

/// A token embedding table `[vocab, dim]` (`weight`), normally initialised as `nn::embedding`
/// does; look rows up with `Tensor::embedding`.
pub fn embedding(p: &nn::Path<'_>, vocab: i64, dim: i64, init: ParamInit) -> Tensor {
    match init {
        ParamInit::Random => p.randn_standard("weight", &[vocab, dim]),
        ParamInit::Uninitialized => p.add("weight", empty(p, &[vocab, dim]), true),
    }
}

/// A norm scale initialised to ones.
pub fn ones(p: &nn::Path<'_>, name: &str, dims: &[i64], init: ParamInit) -> Tensor {
    match init {
        ParamInit::Random => p.ones(name, dims),
        ParamInit::Uninitialized => p.add(name, empty(p, dims), true),
    }
}

/// The most negative finite value of a floating kind: masked attention scores use it rather
/// than `-inf`, so a fully masked row (a padding query) gives finite garbage instead of NaN.
pub fn mask_value(kind: Kind) -> f64 {
    match kind {
        Kind::Half => -65504.0,
        // The largest finite bf16, (2 − 2⁻⁷)·2¹²⁷, exactly: a decimal literal rounds above it,
        // and libtorch refuses that scalar for a bf16 tensor.
        Kind::BFloat16 => -(2.0 - 2f64.powi(-7)) * 2f64.powi(127),
        Kind::Double => f64::MIN,
        _ => f64::from(f32::MIN),
    }
}
