//! Semantic-aware experts (MODEL_SPEC §4, paper eqs. 6–11): `L` low-rank experts beside the
//! FFN of every `every`-th decoder layer. Expert `l` sees image tokens, text tokens and the
//! level-`l` semantic tokens only; image and text tokens mix the experts through a softmax
//! gate, a level-`l` semantic token goes to expert `l` alone.
//!
//! Variables live under `strata.llm.layers.{i}`: `router.weight` (`W_g`, `[L, d]`) and
//! `experts.{l}.down.weight` (`W_d`, `[r, d]`) / `experts.{l}.up.weight` (`W_u`, `[d, r]`).

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// A token's role in the LLM input, which decides how the router treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRole {
    /// Chat template, query and response tokens (and padding).
    Text,
    /// Projected image patch tokens.
    Image,
    /// Semantic-augmented tokens of one level (0-based).
    Semantic(i64),
}

impl TokenRole {
    /// The integer code used in role tensors: text 0, image 1, level `l` → `2 + l`.
    pub const fn code(self) -> i64 {
        match self {
            Self::Text => 0,
            Self::Image => 1,
            Self::Semantic(level) => 2 + level,
        }
    }
}

const FIRST_SEMANTIC_CODE: i64 = TokenRole::Semantic(0).code();

const fn default_every() -> i64 {
    4
}
const fn default_rank() -> i64 {
    256
}

/// Where the experts sit and how large they are. The number of experts is the number of
/// semantic levels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertsConfig {
    /// Experts sit in every `every`-th layer: layers `every-1, 2·every-1, …` counting from 0.
    #[serde(default = "default_every")]
    pub every: i64,
    /// Low rank `r` of each expert.
    #[serde(default = "default_rank")]
    pub rank: i64,
}

impl Default for ExpertsConfig {
    fn default() -> Self {
        Self { every: default_every(), rank: default_rank() }
    }
}

impl ExpertsConfig {
    /// Whether decoder layer `layer` (0-based) carries experts.
    pub fn in_layer(&self, layer: i64) -> bool {
        self.every > 0 && (layer + 1) % self.every == 0
    }

    /// The layers with experts in a stack of `num_layers`.
    pub fn layers(&self, num_layers: i64) -> Vec<i64> {
        (0..num_layers).filter(|l| self.in_layer(*l)).collect()
    }
}

/// The experts and router of one decoder layer.
#[derive(Debug)]
pub struct SemanticExperts {
    router: Tensor,
    down: Vec<Tensor>,
    up: Vec<Tensor>,
}

impl SemanticExperts {
    /// `levels` experts of rank `config.rank` over width `hidden`, under `p`.
    pub fn new(p: &nn::Path<'_>, hidden: i64, levels: i64, config: &ExpertsConfig) -> Self {
        let bound = |fan_in: i64| 1.0 / (fan_in as f64).sqrt();
        let experts = p / "experts";
        let down =
            (0..levels).map(|l| (&experts / l / "down").uniform("weight", &[config.rank, hidden], -bound(hidden), bound(hidden))).collect();
        // The up-projection starts at zero, so adding experts to a pretrained LLM leaves its
        // outputs unchanged until training moves them (as LoRA's `B` does).
        let up = (0..levels).map(|l| (&experts / l / "up").zeros("weight", &[hidden, config.rank])).collect();
        Self { router: (p / "router").uniform("weight", &[levels, hidden], -bound(hidden), bound(hidden)), down, up }
    }

    /// Number of experts `L`.
    pub fn levels(&self) -> i64 {
        self.down.len() as i64
    }

    /// Gates `[N, L]` for flat tokens `[N, d]` with role codes `[N]`: softmax of `W_g x` for
    /// image and text tokens, `one_hot(l)` for a level-`l` semantic token.
    pub fn gates(&self, xs: &Tensor, roles: &Tensor) -> Tensor {
        let levels = self.levels();
        let soft = xs.matmul(&self.router.transpose(0, 1).to_kind(xs.kind())).softmax(-1, Kind::Float);
        let is_semantic = roles.ge(FIRST_SEMANTIC_CODE);
        let level = (roles - FIRST_SEMANTIC_CODE).clamp(0, levels - 1);
        let one_hot = level.one_hot(levels).to_kind(Kind::Float);
        one_hot.where_self(&is_semantic.unsqueeze(1), &soft).to_kind(xs.kind())
    }

    /// Flat indices of the tokens expert `level`'s router mask keeps: image, text, and the
    /// semantic tokens of its own level.
    fn kept(&self, roles: &Tensor, level: i64) -> Tensor {
        roles.lt(FIRST_SEMANTIC_CODE).logical_or(&roles.eq(FIRST_SEMANTIC_CODE + level)).nonzero().squeeze_dim(1)
    }

    fn expert(&self, level: usize, xs: &Tensor) -> Tensor {
        let kind = xs.kind();
        xs.matmul(&self.down[level].transpose(0, 1).to_kind(kind)).silu().matmul(&self.up[level].transpose(0, 1).to_kind(kind))
    }

    /// `M_l ⊙ E_l(x)` for every expert, each `[B, T, d]` and zero where the mask drops the
    /// token. Experts run only on the tokens they keep.
    pub fn contributions(&self, xs: &Tensor, roles: &Tensor) -> Vec<Tensor> {
        let (flat, roles) = (xs.flatten(0, 1), roles.flatten(0, 1));
        (0..self.down.len())
            .map(|l| {
                let kept = self.kept(&roles, l as i64);
                let out = self.expert(l, &flat.index_select(0, &kept));
                flat.zeros_like().index_add(0, &kept, &out).view_as(xs)
            })
            .collect()
    }

    /// `Σ_l g_l · M_l ⊙ E_l(x)` for hidden states `[B, T, d]` and role codes `[B, T]`.
    pub fn forward(&self, xs: &Tensor, roles: &Tensor) -> Tensor {
        let (flat, roles) = (xs.flatten(0, 1), roles.flatten(0, 1));
        let gates = self.gates(&flat, &roles);
        let mut sum = flat.zeros_like();
        for l in 0..self.down.len() {
            let kept = self.kept(&roles, l as i64);
            let out = self.expert(l, &flat.index_select(0, &kept)) * gates.index_select(0, &kept).narrow(1, l as i64, 1);
            sum = sum.index_add(0, &kept, &out);
        }
        sum.view_as(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn roles() -> Tensor {
        // text, image, image, level 0, level 0, level 1, level 2, level 2, text
        let codes = [0i64, 1, 1, 2, 2, 3, 4, 4, 0];
        Tensor::from_slice(&codes).view([1, 9])
    }

    fn experts() -> (nn::VarStore, SemanticExperts) {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let experts = SemanticExperts::new(&(vs.root() / "strata"), 32, 3, &ExpertsConfig { every: 4, rank: 8 });
        // Random up-projections, so every expert's output is non-zero.
        tch::no_grad(|| {
            for up in &experts.up {
                let _ = up.shallow_clone().normal_(0.0, 0.3);
            }
        });
        (vs, experts)
    }

    #[test]
    fn experts_sit_in_layers_3_7_11_by_default() {
        assert_eq!(ExpertsConfig::default().layers(28), vec![3, 7, 11, 15, 19, 23, 27]);
        assert_eq!(ExpertsConfig { every: 2, rank: 1 }.layers(5), vec![1, 3]);
        assert!(ExpertsConfig { every: 0, rank: 1 }.layers(5).is_empty());
    }

    #[test]
    fn each_expert_has_2_d_r_parameters_and_the_router_l_d() {
        let (vs, _) = experts();
        let vars = vs.variables();
        assert_eq!(vars["strata.experts.0.down.weight"].numel() + vars["strata.experts.0.up.weight"].numel(), 2 * 32 * 8);
        assert_eq!(vars["strata.router.weight"].size(), vec![3, 32]);
        let total: usize = vars.values().map(Tensor::numel).sum();
        assert_eq!(total, 3 * 2 * 32 * 8 + 3 * 32);
    }

    #[test]
    fn gates_are_one_hot_on_semantic_tokens_and_a_softmax_elsewhere() {
        let (_vs, experts) = experts();
        let xs = Tensor::randn([9, 32], (Kind::Float, Device::Cpu));
        let gates = tch::no_grad(|| experts.gates(&xs, &roles().view([9])));
        let rows: Vec<Vec<f32>> = (0..9).map(|i| Vec::<f32>::try_from(gates.get(i)).unwrap()).collect();
        assert_eq!(rows[3], vec![1.0, 0.0, 0.0]);
        assert_eq!(rows[5], vec![0.0, 1.0, 0.0]);
        assert_eq!(rows[7], vec![0.0, 0.0, 1.0]);
        for i in [0, 1, 2, 8] {
            assert!((rows[i].iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!(rows[i].iter().all(|g| *g > 0.0 && *g < 1.0), "row {i}: {:?}", rows[i]);
        }
    }

    #[test]
    fn expert_l_never_sees_other_levels_semantic_tokens() {
        let (_vs, experts) = experts();
        let xs = Tensor::randn([1, 9, 32], (Kind::Float, Device::Cpu));
        let before = tch::no_grad(|| experts.contributions(&xs, &roles()));
        // Perturb the level-1 and level-2 semantic tokens (positions 5..8).
        let perturbed = xs.copy();
        let _ = perturbed.narrow(1, 5, 3).f_add_(&Tensor::randn([1, 3, 32], (Kind::Float, Device::Cpu))).unwrap();
        let after = tch::no_grad(|| experts.contributions(&perturbed, &roles()));
        assert!((&before[0] - &after[0]).abs().max().double_value(&[]) == 0.0, "expert 0 saw another level");
        assert!((&before[1] - &after[1]).abs().max().double_value(&[]) > 1e-3, "expert 1 must see its own level");
        // Dropped positions are exactly zero: expert 0 produced nothing for levels 1 and 2.
        assert_eq!(before[0].narrow(1, 5, 3).abs().max().double_value(&[]), 0.0);
        assert!(before[0].narrow(1, 3, 2).abs().max().double_value(&[]) > 0.0);
    }

    #[test]
    fn forward_is_the_gated_sum_of_the_masked_experts() {
        let (_vs, experts) = experts();
        let xs = Tensor::randn([1, 9, 32], (Kind::Float, Device::Cpu));
        let out = tch::no_grad(|| experts.forward(&xs, &roles()));
        let gates = tch::no_grad(|| experts.gates(&xs.view([9, 32]), &roles().view([9])));
        let parts = tch::no_grad(|| experts.contributions(&xs, &roles()));
        let expected = (0..3).fold(xs.zeros_like(), |acc, l| acc + &parts[l as usize] * gates.narrow(1, l, 1).view([1, 9, 1]));
        assert!((out - expected).abs().max().double_value(&[]) < 1e-6);
    }
}
