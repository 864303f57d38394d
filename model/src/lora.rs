//! LoRA adapters on the LLM's projections (MODEL_SPEC §4): `W x + (α/r) · B A dropout(x)`, with
//! `A ∈ R^{r × in}` and `B ∈ R^{out × r}` under `strata.llm.layers.{i}.<module>.lora_{a,b}`, so
//! base weights keep their Hugging Face names and adapters travel as new modules.
//!
//! `B` starts at zero (the adapted model equals the base model before training); `A` gets the
//! kaiming-uniform initialisation PEFT uses. [`LoraLinear::merge`] folds `(α/r)·B A` into `W`
//! for serving, after which the adapter is skipped.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::ModelError;

const fn default_rank() -> i64 {
    64
}
const fn default_alpha() -> f64 {
    128.0
}
const fn default_dropout() -> f64 {
    0.05
}
fn default_targets() -> Vec<String> {
    LoraConfig::ALL_TARGETS.iter().map(|t| (*t).to_owned()).collect()
}

/// Which projections get adapters and how large they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Adapter rank `r`.
    #[serde(default = "default_rank")]
    pub rank: i64,
    /// Scaling numerator `α` (the update is scaled by `α / r`).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter input while training.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Projection names that get an adapter (`q_proj`, `k_proj`, `v_proj`, `o_proj`,
    /// `gate_proj`, `up_proj`, `down_proj`).
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { rank: default_rank(), alpha: default_alpha(), dropout: default_dropout(), targets: default_targets() }
    }
}

impl LoraConfig {
    /// Every attention and FFN projection of a Qwen2 layer.
    pub const ALL_TARGETS: [&'static str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// Whether projection `name` is adapted.
    pub fn targets(&self, name: &str) -> bool {
        self.targets.iter().any(|t| t == name)
    }

    /// `α / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

#[derive(Debug)]
struct Adapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
    dropout: f64,
}

/// A linear layer with an optional low-rank adapter beside it.
#[derive(Debug)]
pub struct LoraLinear {
    base: nn::Linear,
    adapter: Option<Adapter>,
    merged: bool,
}

impl LoraLinear {
    /// A plain linear layer (no adapter).
    pub fn plain(base: nn::Linear) -> Self {
        Self { base, adapter: None, merged: false }
    }

    /// `base` with an adapter whose variables live under `p` (`lora_a`, `lora_b`).
    pub fn adapted(base: nn::Linear, p: &nn::Path<'_>, config: &LoraConfig) -> Self {
        let (out_dim, in_dim) = (base.ws.size()[0], base.ws.size()[1]);
        let bound = 1.0 / (in_dim as f64).sqrt();
        let adapter = Adapter {
            a: p.uniform("lora_a", &[config.rank, in_dim], -bound, bound),
            b: p.zeros("lora_b", &[out_dim, config.rank]),
            scale: config.scale(),
            dropout: config.dropout,
        };
        Self { base, adapter: Some(adapter), merged: false }
    }

    /// The base layer's weight.
    pub fn weight(&self) -> &Tensor {
        &self.base.ws
    }

    /// `W x + b`, plus the adapter's update unless it has been merged.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        // `linear` (one fused addmm) rather than `nn::Linear`'s matmul-then-add.
        let out = xs.linear(&self.base.ws, self.base.bs.as_ref());
        match (&self.adapter, self.merged) {
            (Some(adapter), false) => {
                let input = xs.dropout(adapter.dropout, train);
                let update = input.matmul(&adapter.a.transpose(0, 1)).matmul(&adapter.b.transpose(0, 1));
                out + update * adapter.scale
            }
            _ => out,
        }
    }

    /// Whether the adapter has been folded into the base weight.
    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// Folds the adapter into the base weight (`W += (α/r)·B A`); later forwards skip it.
    /// Merging twice is a no-op, and so is merging a plain layer.
    ///
    /// # Errors
    /// [`ModelError::Torch`] when libtorch refuses the update (a delta whose shape does not
    /// match the weight, a weight that cannot be written in place); the layer then stays
    /// unmerged and its forward still applies the adapter.
    pub fn merge(&mut self) -> Result<(), ModelError> {
        if let (Some(adapter), false) = (&self.adapter, self.merged) {
            let weight = &mut self.base.ws;
            tch::no_grad(|| {
                let delta = adapter.b.f_matmul(&adapter.a)?.f_mul_scalar(adapter.scale)?.f_to_kind(weight.kind())?;
                weight.f_add_(&delta).map(drop)
            })
            .map_err(|source| ModelError::Torch { action: "merging a LoRA adapter into its base weight".into(), source })?;
            self.merged = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::Module, Device, Kind};

    #[test]
    fn merged_equals_unmerged_and_zero_b_equals_base() {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let base = nn::linear(vs.root() / "proj", 24, 16, Default::default());
        let config = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.5, targets: default_targets() };
        let mut layer = LoraLinear::adapted(base, &(vs.root() / "strata" / "proj"), &config);
        let xs = Tensor::randn([3, 5, 24], (Kind::Float, Device::Cpu));
        let base_out = tch::no_grad(|| layer.base.forward(&xs));
        // B = 0 at the start: the adapter changes nothing.
        let fresh = tch::no_grad(|| layer.forward_t(&xs, false));
        assert!((fresh - &base_out).abs().max().double_value(&[]) < 1e-7);

        tch::no_grad(|| {
            let b = &layer.adapter.as_ref().unwrap().b;
            let _ = b.shallow_clone().normal_(0.0, 0.5);
        });
        let unmerged = tch::no_grad(|| layer.forward_t(&xs, false));
        assert!((&unmerged - &base_out).abs().max().double_value(&[]) > 1e-2, "the adapter must matter");
        layer.merge().unwrap();
        layer.merge().unwrap();
        assert!(layer.is_merged());
        let merged = tch::no_grad(|| layer.forward_t(&xs, false));
        let relative = (&merged - &unmerged).abs().max().double_value(&[]) / unmerged.abs().max().double_value(&[]);
        assert!(relative < 1e-5, "merged differs from unmerged by {relative}");
    }

    #[test]
    fn a_merge_that_fails_leaves_the_adapter_applied() {
        tch::manual_seed(12);
        let vs = nn::VarStore::new(Device::Cpu);
        // A base weight that cannot be written in place: every row is a view of one row
        // (as a weight shared through `expand` would be). Forwards work, `add_` is refused.
        let shared_row = Tensor::randn([1, 24], (Kind::Float, Device::Cpu));
        let base = nn::Linear { ws: shared_row.expand([16, 24], false), bs: None };
        let config = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: default_targets() };
        let mut layer = LoraLinear::adapted(base, &(vs.root() / "strata" / "proj"), &config);
        tch::no_grad(|| {
            let _ = layer.adapter.as_ref().unwrap().b.shallow_clone().normal_(0.0, 0.5);
        });
        let xs = Tensor::randn([3, 24], (Kind::Float, Device::Cpu));
        let base_out = tch::no_grad(|| xs.linear::<Tensor>(&layer.base.ws, None));
        let adapted = tch::no_grad(|| layer.forward_t(&xs, false));
        assert!((&adapted - &base_out).abs().max().double_value(&[]) > 1e-2, "the adapter must matter");

        let err = layer.merge().unwrap_err();
        assert!(matches!(err, ModelError::Torch { .. }) && err.to_string().contains("merging a LoRA adapter"), "{err}");
        assert!(!layer.is_merged());
        let after = tch::no_grad(|| layer.forward_t(&xs, false));
        assert!((&after - &adapted).abs().max().double_value(&[]) < 1e-6, "the adapter must still apply");
    }
}
