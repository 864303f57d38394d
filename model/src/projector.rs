//! Vision-to-language glue (MODEL_SPEC §1): which encoder layers become the semantic levels,
//! and the LLaVA-1.5 projector `Linear(d_v, d) → GELU → Linear(d, d)` that turns the last
//! layer into image tokens.

use tch::{nn, nn::Module, Tensor};

/// The encoder layers (1-based, as indices into `hidden_states` where 0 is the embeddings)
/// used as semantic levels: by default the layers at 1/3, 2/3 and the end of the stack.
pub fn default_levels(num_layers: i64) -> Vec<i64> {
    let third = |k: i64| ((num_layers * k) as f64 / 3.0).round().max(1.0) as i64;
    let mut levels = vec![third(1), third(2), num_layers];
    levels.dedup();
    levels
}

/// LLaVA-1.5 projector, under `strata.projector.*` names.
#[derive(Debug)]
pub struct Projector {
    linear_1: nn::Linear,
    linear_2: nn::Linear,
}

impl Projector {
    /// Builds the projector from vision width `d_v` to LLM width `d`.
    pub fn new(p: &nn::Path<'_>, vision_hidden: i64, llm_hidden: i64) -> Self {
        Self {
            linear_1: nn::linear(p / "linear_1", vision_hidden, llm_hidden, Default::default()),
            linear_2: nn::linear(p / "linear_2", llm_hidden, llm_hidden, Default::default()),
        }
    }
}

impl Module for Projector {
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(xs).gelu("none"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_levels_split_the_stack_in_thirds() {
        assert_eq!(default_levels(27), vec![9, 18, 27]); // SigLIP-so400m
        assert_eq!(default_levels(12), vec![4, 8, 12]);
        assert_eq!(default_levels(3), vec![1, 2, 3]);
        assert_eq!(default_levels(1), vec![1]);
    }

    #[test]
    fn projector_maps_vision_width_to_llm_width_with_the_llava_parameter_count() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let projector = Projector::new(&(vs.root() / "strata" / "projector"), 48, 64);
        let out = projector.forward(&Tensor::randn([2, 16, 48], (tch::Kind::Float, tch::Device::Cpu)));
        assert_eq!(out.size(), vec![2, 16, 64]);
        let params: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
        assert_eq!(params, 48 * 64 + 64 + 64 * 64 + 64);
        assert!(vs.variables().contains_key("strata.projector.linear_1.weight"));
    }
}
