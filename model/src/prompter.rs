//! Multi-level visual prompter (MODEL_SPEC §3, paper eqs. 1–5): learnable aggregation tokens
//! read the user query (self-attention over `[A; Q]`), then the retrieved semantic tokens
//! (cross-attention), then each visual level through its own cross-attention; the `L` results
//! are concatenated into the semantic-augmented tokens `T ∈ R^{(L·N_a) × d}`.
//!
//! Blocks are pre-norm transformer blocks (LayerNorm → attention → residual, LayerNorm → GELU
//! MLP → residual). Variables live under `strata.prompter.*`.

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

use crate::layers;

const fn default_aggregation_tokens() -> i64 {
    144
}
const fn default_mlp_ratio() -> f64 {
    4.0
}

/// Prompter sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrompterConfig {
    /// Aggregation tokens `N_a` (the model gets `L · N_a` semantic-augmented tokens).
    #[serde(default = "default_aggregation_tokens")]
    pub num_aggregation_tokens: i64,
    /// Attention heads of every block; the LLM's head count when absent.
    #[serde(default)]
    pub num_heads: Option<i64>,
    /// MLP inner width as a multiple of `d`.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
}

impl Default for PrompterConfig {
    fn default() -> Self {
        Self { num_aggregation_tokens: default_aggregation_tokens(), num_heads: None, mlp_ratio: default_mlp_ratio() }
    }
}

/// Multi-head attention from `d`-wide queries to `kv_dim`-wide keys/values (projected to `d`).
#[derive(Debug)]
struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    heads: i64,
}

impl Attention {
    fn new(p: &nn::Path<'_>, d: i64, kv_dim: i64, heads: i64) -> Self {
        let cfg = nn::LinearConfig::default();
        Self {
            q_proj: nn::linear(p / "q_proj", d, d, cfg),
            k_proj: nn::linear(p / "k_proj", kv_dim, d, cfg),
            v_proj: nn::linear(p / "v_proj", kv_dim, d, cfg),
            out_proj: nn::linear(p / "out_proj", d, d, cfg),
            heads,
        }
    }

    /// `queries [B, Nq, d]`, `keys [B, Nk, kv_dim]`, `key_mask [B, Nk]` (1 real, 0 padding).
    fn forward(&self, queries: &Tensor, keys: &Tensor, key_mask: Option<&Tensor>) -> Tensor {
        let (b, nq, d) = (queries.size()[0], queries.size()[1], queries.size()[2]);
        let nk = keys.size()[1];
        let head_dim = d / self.heads;
        let split = |t: Tensor, n: i64| t.view([b, n, self.heads, head_dim]).transpose(1, 2);
        let q = split(self.q_proj.forward(queries), nq);
        let k = split(self.k_proj.forward(keys), nk);
        let v = split(self.v_proj.forward(keys), nk);
        let mask = key_mask.map(|m| {
            let kind = q.kind();
            Tensor::zeros([b, 1, 1, nk], (kind, q.device())).masked_fill(&m.eq(0).view([b, 1, 1, nk]), layers::mask_value(kind))
        });
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, mask.as_ref(), 0.0, false, None, false);
        let out = self.out_proj.forward(&out.transpose(1, 2).contiguous().view([b, nq, d]));
        match key_mask {
            // A row with no key at all (no retrieved description) gets no update.
            Some(m) => out * m.sum_dim_intlist(1, false, Kind::Float).gt(0.0).to_kind(queries.kind()).view([b, 1, 1]),
            None => out,
        }
    }
}

/// Pre-norm attention block followed by a GELU MLP.
#[derive(Debug)]
struct Block {
    norm_query: nn::LayerNorm,
    norm_keys: Option<nn::LayerNorm>,
    attention: Attention,
    norm_mlp: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Block {
    /// A self-attention block when `kv_dim` is `None`, a cross-attention block otherwise.
    fn new(p: &nn::Path<'_>, d: i64, kv_dim: Option<i64>, heads: i64, mlp: i64) -> Self {
        let ln = nn::LayerNormConfig { eps: 1e-6, ..Default::default() };
        Self {
            norm_query: nn::layer_norm(p / "norm_query", vec![d], ln),
            norm_keys: kv_dim.map(|kv| nn::layer_norm(p / "norm_keys", vec![kv], ln)),
            attention: Attention::new(&(p / "attention"), d, kv_dim.unwrap_or(d), heads),
            norm_mlp: nn::layer_norm(p / "norm_mlp", vec![d], ln),
            fc1: nn::linear(p / "fc1", d, mlp, Default::default()),
            fc2: nn::linear(p / "fc2", mlp, d, Default::default()),
        }
    }

    fn mlp(&self, xs: &Tensor) -> Tensor {
        xs + self.fc2.forward(&self.fc1.forward(&self.norm_mlp.forward(xs)).gelu("none"))
    }

    /// Self-attention over `tokens`, returning only the first `keep` outputs: the block is
    /// per-token after attention, so computing just those rows is exact.
    fn self_attend_first(&self, tokens: &Tensor, key_mask: &Tensor, keep: i64) -> Tensor {
        let normed = self.norm_query.forward(tokens);
        let queries = normed.narrow(1, 0, keep);
        let attended = tokens.narrow(1, 0, keep) + self.attention.forward(&queries, &normed, Some(key_mask));
        self.mlp(&attended)
    }

    fn cross_attend(&self, queries: &Tensor, keys: &Tensor, key_mask: Option<&Tensor>) -> Tensor {
        let normed_keys = match &self.norm_keys {
            Some(norm) => norm.forward(keys),
            None => self.norm_query.forward(keys),
        };
        let attended = queries + self.attention.forward(&self.norm_query.forward(queries), &normed_keys, key_mask);
        self.mlp(&attended)
    }
}

/// What the prompter reads for a batch.
#[derive(Debug)]
pub struct PrompterInput<'a> {
    /// Query token embeddings `Q` `[B, N_q, d]`.
    pub query: &'a Tensor,
    /// `[B, N_q]`, 1 for real query tokens.
    pub query_mask: &'a Tensor,
    /// Semantic token embeddings `S` `[B, N_s, d]` (the retrieved descriptions).
    pub semantic: &'a Tensor,
    /// `[B, N_s]`, 1 for real semantic tokens; a row of zeros means nothing was retrieved.
    pub semantic_mask: &'a Tensor,
    /// Visual level features `V_l` `[B, N_p, d_v]`, one per level.
    pub levels: &'a [Tensor],
}

/// The prompter's modules.
#[derive(Debug)]
pub struct MultiLevelPrompter {
    aggregation_tokens: Tensor,
    query_block: Block,
    semantic_block: Block,
    level_blocks: Vec<Block>,
}

impl MultiLevelPrompter {
    /// Builds the prompter for LLM width `d`, vision width `d_v` and `levels` visual levels.
    pub fn new(p: &nn::Path<'_>, config: &PrompterConfig, d: i64, vision_hidden: i64, levels: i64, llm_heads: i64) -> Self {
        let heads = config.num_heads.unwrap_or(llm_heads);
        let mlp = ((d as f64) * config.mlp_ratio).round() as i64;
        Self {
            aggregation_tokens: p.randn("aggregation_tokens", &[config.num_aggregation_tokens, d], 0.0, 0.02),
            query_block: Block::new(&(p / "query_block"), d, None, heads, mlp),
            semantic_block: Block::new(&(p / "semantic_block"), d, Some(d), heads, mlp),
            level_blocks: (0..levels).map(|l| Block::new(&(p / "level_blocks" / l), d, Some(vision_hidden), heads, mlp)).collect(),
        }
    }

    /// Aggregation tokens per level.
    pub fn tokens_per_level(&self) -> i64 {
        self.aggregation_tokens.size()[0]
    }

    /// The per-level outputs `A3_l`, each `[B, N_a, d]`.
    pub fn forward_levels(&self, input: &PrompterInput<'_>) -> Vec<Tensor> {
        let batch = input.query.size()[0];
        let n_a = self.tokens_per_level();
        let kind = input.query.kind();
        let aggregation = self.aggregation_tokens.to_kind(kind).unsqueeze(0).expand([batch, n_a, -1], false);
        let tokens = Tensor::cat(&[&aggregation, input.query], 1);
        let mask =
            Tensor::cat(&[&Tensor::ones([batch, n_a], (Kind::Int64, input.query.device())), &input.query_mask.to_kind(Kind::Int64)], 1);
        let a1 = self.query_block.self_attend_first(&tokens, &mask, n_a);
        let a2 = self.semantic_block.cross_attend(&a1, input.semantic, Some(input.semantic_mask));
        self.level_blocks.iter().zip(input.levels).map(|(block, level)| block.cross_attend(&a2, &level.to_kind(kind), None)).collect()
    }

    /// Semantic-augmented tokens `T = [A3_1; …; A3_L]` `[B, L·N_a, d]`.
    pub fn forward(&self, input: &PrompterInput<'_>) -> Tensor {
        Tensor::cat(&self.forward_levels(input), 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn setup() -> (nn::VarStore, MultiLevelPrompter) {
        tch::manual_seed(9);
        let vs = nn::VarStore::new(Device::Cpu);
        let config = PrompterConfig { num_aggregation_tokens: 6, num_heads: Some(4), mlp_ratio: 2.0 };
        let prompter = MultiLevelPrompter::new(&(vs.root() / "strata" / "prompter"), &config, 32, 24, 3, 8);
        (vs, prompter)
    }

    fn randn(dims: &[i64]) -> Tensor {
        Tensor::randn(dims, (Kind::Float, Device::Cpu))
    }

    #[test]
    fn gives_l_times_n_a_tokens_and_each_level_reads_only_its_features() {
        let (_vs, prompter) = setup();
        let (query, semantic) = (randn(&[2, 5, 32]), randn(&[2, 7, 32]));
        let ones = |n| Tensor::ones([2, n], (Kind::Int64, Device::Cpu));
        let levels = vec![randn(&[2, 16, 24]), randn(&[2, 16, 24]), randn(&[2, 16, 24])];
        let input = PrompterInput { query: &query, query_mask: &ones(5), semantic: &semantic, semantic_mask: &ones(7), levels: &levels };
        let out = tch::no_grad(|| prompter.forward(&input));
        assert_eq!(out.size(), vec![2, 18, 32]);

        let mut changed: Vec<Tensor> = levels.iter().map(Tensor::shallow_clone).collect();
        // A deterministic change (other tests reseed the global generator concurrently).
        changed[1] = levels[1].pow_tensor_scalar(3);
        let input2 = PrompterInput { levels: &changed, ..input };
        let out2 = tch::no_grad(|| prompter.forward(&input2));
        let diff = |a: i64| (out.narrow(1, a * 6, 6) - out2.narrow(1, a * 6, 6)).abs().max().double_value(&[]);
        assert_eq!(diff(0), 0.0);
        assert!(diff(1) > 1e-4);
        assert_eq!(diff(2), 0.0);
    }

    #[test]
    fn padding_in_query_and_semantic_tokens_changes_nothing() {
        let (_vs, prompter) = setup();
        let levels = vec![randn(&[1, 16, 24]), randn(&[1, 16, 24]), randn(&[1, 16, 24])];
        let (query, semantic) = (randn(&[1, 5, 32]), randn(&[1, 7, 32]));
        let ones = |n| Tensor::ones([1, n], (Kind::Int64, Device::Cpu));
        let plain = PrompterInput { query: &query, query_mask: &ones(5), semantic: &semantic, semantic_mask: &ones(7), levels: &levels };
        let out = tch::no_grad(|| prompter.forward(&plain));

        let padded_query = Tensor::cat(&[&query, &randn(&[1, 3, 32])], 1);
        let padded_semantic = Tensor::cat(&[&semantic, &randn(&[1, 2, 32])], 1);
        let mask = |real: i64, pad: i64| Tensor::cat(&[ones(real), Tensor::zeros([1, pad], (Kind::Int64, Device::Cpu))], 1);
        let padded = PrompterInput {
            query: &padded_query,
            query_mask: &mask(5, 3),
            semantic: &padded_semantic,
            semantic_mask: &mask(7, 2),
            levels: &levels,
        };
        let out_padded = tch::no_grad(|| prompter.forward(&padded));
        assert!((out - out_padded).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn the_query_and_the_descriptions_steer_the_tokens() {
        let (_vs, prompter) = setup();
        let levels = vec![randn(&[1, 16, 24]), randn(&[1, 16, 24]), randn(&[1, 16, 24])];
        let ones = |n| Tensor::ones([1, n], (Kind::Int64, Device::Cpu));
        let (q1, q2, s1, s2) = (randn(&[1, 5, 32]), randn(&[1, 5, 32]), randn(&[1, 7, 32]), randn(&[1, 7, 32]));
        let run = |q: &Tensor, s: &Tensor, smask: &Tensor| {
            tch::no_grad(|| {
                prompter.forward(&PrompterInput { query: q, query_mask: &ones(5), semantic: s, semantic_mask: smask, levels: &levels })
            })
        };
        let base = run(&q1, &s1, &ones(7));
        assert!((&base - run(&q2, &s1, &ones(7))).abs().max().double_value(&[]) > 1e-4);
        assert!((&base - run(&q1, &s2, &ones(7))).abs().max().double_value(&[]) > 1e-4);
        // Nothing retrieved: the semantic block leaves the tokens to the MLP alone.
        let none = Tensor::zeros([1, 7], (Kind::Int64, Device::Cpu));
        let empty = run(&q1, &s1, &none);
        assert!(empty.isfinite().all().int64_value(&[]) == 1);
        assert!((&empty - run(&q1, &s2, &none)).abs().max().double_value(&[]) == 0.0);
    }
}
