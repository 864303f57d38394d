//! Qwen2 / Qwen2.5 decoder (RMSNorm, rotary position embeddings, grouped-query attention with
//! q/k/v biases, SwiGLU MLP) under Hugging Face weight names, so `model.safetensors` from a
//! Qwen2 checkpoint loads as is. The same decoder without the q/k/v biases is the Llama family's
//! (`model_type: "llama"`: Llama 2/3 without rope scaling, Vicuna, SmolLM2), which many
//! remote-sensing LVLMs start from.
//!
//! Reference: transformers `models/qwen2/modeling_qwen2.py` and `models/llama/modeling_llama.py`
//! (v4.57.1); checked against them by `model/tests/qwen2_golden.rs` on a small random
//! configuration (`scripts/fixtures/make_qwen2_golden.py`) and by `model/tests/smollm2.rs` on
//! real SmolLM2-135M-Instruct weights (`scripts/fixtures/make_smollm2_golden.py`).

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

use crate::experts::{ExpertsConfig, SemanticExperts};
use crate::layers::{self, ParamInit};
use crate::lora::{LoraConfig, LoraLinear};
use crate::ModelError;

const fn default_rope_theta() -> f64 {
    10_000.0
}
const fn default_rms_norm_eps() -> f64 {
    1e-6
}

/// The parts of a Qwen2 or Llama `config.json` the decoder needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qwen2Config {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size `d`.
    pub hidden_size: i64,
    /// MLP inner size.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: i64,
    /// RoPE base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Whether the output head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// `qwen2` (the default when absent) or `llama`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    /// Whether q/k/v projections have biases; when absent, what the model type implies (Qwen2:
    /// yes, Llama: no).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    /// Llama's MLP biases: only `false` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    /// Llama's rotary scaling (Llama 3.1 style): only none is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// Width of one attention head, when the checkpoint states it: must be
    /// `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<i64>,
    /// Activation of the MLP: only `silu` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
}

impl Qwen2Config {
    /// Parses `config.json` text.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the field at fault.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let config: Self = serde_json::from_str(text).map_err(|e| ModelError::Config { reason: e.to_string() })?;
        let unsupported = |reason: String| Err(ModelError::Config { reason });
        match config.model_type.as_deref() {
            None | Some("qwen2" | "llama") => {}
            Some(other) => return unsupported(format!("model_type `{other}` is not supported (qwen2 or llama)")),
        }
        if config.mlp_bias == Some(true) {
            return unsupported("mlp_bias = true is not supported".to_owned());
        }
        if config.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return unsupported("rope_scaling is not supported (plain RoPE only)".to_owned());
        }
        if let Some(head_dim) =
            config.head_dim.filter(|h| config.num_attention_heads > 0 && *h != config.hidden_size / config.num_attention_heads)
        {
            return unsupported(format!("head_dim {head_dim} differs from hidden_size / num_attention_heads"));
        }
        if let Some(act) = config.hidden_act.as_deref().filter(|a| *a != "silu") {
            return unsupported(format!("hidden_act `{act}` is not supported (silu only)"));
        }
        if config.num_attention_heads <= 0
            || config.num_key_value_heads <= 0
            || config.hidden_size % config.num_attention_heads != 0
            || config.num_attention_heads % config.num_key_value_heads != 0
        {
            return Err(ModelError::Config {
                reason: format!(
                    "hidden_size {} / num_attention_heads {} / num_key_value_heads {} do not divide evenly",
                    config.hidden_size, config.num_attention_heads, config.num_key_value_heads
                ),
            });
        }
        Ok(config)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// Whether the q/k/v projections have biases: as configured, else by model type.
    pub fn has_attention_bias(&self) -> bool {
        self.attention_bias.unwrap_or(self.model_type.as_deref() != Some("llama"))
    }
}

/// Root-mean-square layer norm, computed in f32 as the reference does.
#[derive(Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(p: nn::Path<'_>, size: i64, eps: f64, init: ParamInit) -> Self {
        Self { weight: layers::ones(&p, "weight", &[size], init), eps }
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let kind = xs.kind();
        let xs32 = xs.to_kind(Kind::Float);
        let variance = xs32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = xs32 * (variance + self.eps).rsqrt();
        &self.weight * normed.to_kind(kind)
    }
}

/// Rotary embeddings: `cos`/`sin` tables for positions, rotate-half layout.
#[derive(Debug)]
struct Rotary {
    inv_freq: Tensor,
}

impl Rotary {
    fn new(head_dim: i64, theta: f64, device: tch::Device) -> Self {
        let exponents = Tensor::arange_start_step(0, head_dim, 2, (Kind::Float, device)) / head_dim as f64;
        let inv_freq = (Tensor::from(theta).to_device(device).pow(&exponents)).reciprocal();
        Self { inv_freq }
    }

    /// `(cos, sin)` of shape `[batch, 1, seq, head_dim]` for positions `[batch, seq]`.
    fn tables(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos(), emb.sin())
    }
}

fn rotate_half(xs: &Tensor) -> Tensor {
    let half = xs.size()[xs.dim() - 1] / 2;
    let x1 = xs.narrow(-1, 0, half);
    let x2 = xs.narrow(-1, half, half);
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

fn apply_rotary(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let kind = xs.kind();
    (xs * cos.to_kind(kind)) + (rotate_half(xs) * sin.to_kind(kind))
}

/// Adds LoRA to a projection when the config targets it.
fn projection(
    p: &nn::Path<'_>,
    strata: &nn::Path<'_>,
    name: &str,
    (in_dim, out_dim, bias): (i64, i64, bool),
    extensions: &Qwen2Extensions,
) -> LoraLinear {
    let base = layers::linear(&(p / name), in_dim, out_dim, bias, extensions.init);
    match &extensions.lora {
        Some(lora) if lora.targets(name) => LoraLinear::adapted(base, &(strata / name), lora),
        _ => LoraLinear::plain(base),
    }
}

#[derive(Debug)]
struct Attention {
    q_proj: LoraLinear,
    k_proj: LoraLinear,
    v_proj: LoraLinear,
    o_proj: LoraLinear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    cache: Option<(Tensor, Tensor)>,
}

impl Attention {
    fn new(p: nn::Path<'_>, strata: nn::Path<'_>, cfg: &Qwen2Config, extensions: &Qwen2Extensions) -> Self {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let (q_dim, kv_dim) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
        let bias = cfg.has_attention_bias();
        Self {
            q_proj: projection(&p, &strata, "q_proj", (d, q_dim, bias), extensions),
            k_proj: projection(&p, &strata, "k_proj", (d, kv_dim, bias), extensions),
            v_proj: projection(&p, &strata, "v_proj", (d, kv_dim, bias), extensions),
            o_proj: projection(&p, &strata, "o_proj", (q_dim, d, false), extensions),
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: hd,
            cache: None,
        }
    }

    fn forward(&mut self, xs: &Tensor, rotary: &(Tensor, Tensor), mask: &AttentionMask, train: bool) -> Tensor {
        let (b, seq) = (xs.size()[0], xs.size()[1]);
        let (cos, sin) = rotary;
        let shape = |t: Tensor, heads: i64| t.view([b, seq, heads, self.head_dim]).transpose(1, 2);
        let q = apply_rotary(&shape(self.q_proj.forward_t(xs, train), self.heads), cos, sin);
        let k = apply_rotary(&shape(self.k_proj.forward_t(xs, train), self.kv_heads), cos, sin);
        let v = shape(self.v_proj.forward_t(xs, train), self.kv_heads);
        let (k, v) = match self.cache.take() {
            Some((past_k, past_v)) => (Tensor::cat(&[&past_k, &k], 2), Tensor::cat(&[&past_v, &v], 2)),
            None => (k, v),
        };
        self.cache = Some((k.shallow_clone(), v.shallow_clone()));
        // `enable_gqa` lets the kernel share each key/value head across its query group
        // instead of materialising repeated copies.
        let out = match mask {
            AttentionMask::Additive(mask) => Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None, true),
            // No padding and nothing cached: libtorch's fused causal kernel, no mask tensor.
            AttentionMask::Causal => Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, true, None, true),
            AttentionMask::None => Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, false, None, true),
        };
        let out = out.transpose(1, 2).contiguous().view([b, seq, self.heads * self.head_dim]);
        self.o_proj.forward_t(&out, train)
    }

    fn merge_lora(&mut self) -> Result<(), ModelError> {
        for proj in [&mut self.q_proj, &mut self.k_proj, &mut self.v_proj, &mut self.o_proj] {
            proj.merge()?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Mlp {
    gate_proj: LoraLinear,
    up_proj: LoraLinear,
    down_proj: LoraLinear,
}

impl Mlp {
    fn new(p: nn::Path<'_>, strata: nn::Path<'_>, cfg: &Qwen2Config, extensions: &Qwen2Extensions) -> Self {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Self {
            gate_proj: projection(&p, &strata, "gate_proj", (d, i, false), extensions),
            up_proj: projection(&p, &strata, "up_proj", (d, i, false), extensions),
            down_proj: projection(&p, &strata, "down_proj", (i, d, false), extensions),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let gated = self.gate_proj.forward_t(xs, train).silu() * self.up_proj.forward_t(xs, train);
        self.down_proj.forward_t(&gated, train)
    }
}

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
    experts: Option<SemanticExperts>,
}

impl DecoderLayer {
    fn new(p: nn::Path<'_>, strata: nn::Path<'_>, index: i64, cfg: &Qwen2Config, extensions: &Qwen2Extensions) -> Self {
        let (d, eps, init) = (cfg.hidden_size, cfg.rms_norm_eps, extensions.init);
        let experts = extensions
            .experts
            .as_ref()
            .filter(|(config, _)| config.in_layer(index))
            .map(|(config, levels)| SemanticExperts::new(&strata, d, *levels, config));
        Self {
            input_layernorm: RmsNorm::new(&p / "input_layernorm", d, eps, init),
            self_attn: Attention::new(&p / "self_attn", &strata / "self_attn", cfg, extensions),
            post_attention_layernorm: RmsNorm::new(&p / "post_attention_layernorm", d, eps, init),
            mlp: Mlp::new(&p / "mlp", &strata / "mlp", cfg, extensions),
            experts,
        }
    }

    fn forward(&mut self, xs: &Tensor, rotary: &(Tensor, Tensor), mask: &AttentionMask, roles: Option<&Tensor>, train: bool) -> Tensor {
        let attended = xs + self.self_attn.forward(&self.input_layernorm.forward(xs), rotary, mask, train);
        let normed = self.post_attention_layernorm.forward(&attended);
        let ffn = self.mlp.forward_t(&normed, train);
        match &self.experts {
            Some(experts) => {
                // Without roles every token is text: all experts, softmax-gated.
                let roles =
                    roles.map_or_else(|| Tensor::zeros(normed.size()[..2].to_vec(), (Kind::Int64, normed.device())), Tensor::shallow_clone);
                attended + ffn + experts.forward(&normed, &roles)
            }
            None => attended + ffn,
        }
    }
}

/// The attention pattern of one forward.
#[derive(Debug)]
enum AttentionMask {
    /// Everything visible (one new token, no padding).
    None,
    /// Plain causal over the new tokens (nothing cached, no padding).
    Causal,
    /// `[batch|1, 1, seq, cached + seq]` added to the scores; masked entries hold the kind's
    /// most negative finite value.
    Additive(Tensor),
}

/// New modules beside the Qwen2 weights: LoRA adapters and semantic experts, and how
/// parameters are initialised.
#[derive(Debug, Clone, Default)]
pub struct Qwen2Extensions {
    /// LoRA on the targeted projections of every layer.
    pub lora: Option<LoraConfig>,
    /// Semantic experts and their number of levels `L`.
    pub experts: Option<(ExpertsConfig, i64)>,
    /// Random, or allocated for loading (base weights only; new modules are always random).
    pub init: ParamInit,
}

/// One forward step of the decoder over input embeddings.
#[derive(Debug)]
pub struct DecoderInput<'a> {
    /// Input embeddings `[batch, seq, d]`.
    pub embeds: &'a Tensor,
    /// RoPE positions `[batch, seq]` (int64); with left padding they start at 0 on each row's
    /// first real token.
    pub positions: &'a Tensor,
    /// Token role codes `[batch, seq]` ([`crate::experts::TokenRole::code`]); `None` means all
    /// text.
    pub roles: Option<&'a Tensor>,
    /// Which keys may be attended, `[batch, cached + seq]` (1 real, 0 padding); `None` means
    /// no padding.
    pub key_mask: Option<&'a Tensor>,
    /// Training mode (LoRA dropout on).
    pub train: bool,
}

/// Cached keys and values taken out of a [`Qwen2ForCausalLM`]: per layer `(k, v)`, each
/// `[batch, kv_heads, len, head_dim]`.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: i64,
}

impl KvCache {
    /// Cached positions per row.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The decoder with its language-model head, holding a per-layer KV cache.
#[derive(Debug)]
pub struct Qwen2ForCausalLM {
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Option<nn::Linear>,
    rotary: Rotary,
    cached_len: i64,
}

impl Qwen2ForCausalLM {
    /// Builds the plain model's variables under `p` with Hugging Face names
    /// (`model.layers.0...`, `lm_head.weight`), randomly initialised; load weights afterwards.
    pub fn new(p: &nn::Path<'_>, cfg: &Qwen2Config) -> Self {
        Self::build(p, &(p / "strata" / "llm"), cfg, &Qwen2Extensions::default())
    }

    /// Builds the model with LoRA and experts under `strata` (`strata/layers/{i}/...`).
    pub fn build(p: &nn::Path<'_>, strata: &nn::Path<'_>, cfg: &Qwen2Config, extensions: &Qwen2Extensions) -> Self {
        let model = p / "model";
        let init = extensions.init;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(&model / "layers" / i, strata / "layers" / i, i, cfg, extensions))
            .collect();
        let lm_head = (!cfg.tie_word_embeddings).then(|| layers::linear(&(p / "lm_head"), cfg.hidden_size, cfg.vocab_size, false, init));
        Self {
            embed_tokens: layers::embedding(&(&model / "embed_tokens"), cfg.vocab_size, cfg.hidden_size, init),
            layers,
            norm: RmsNorm::new(&model / "norm", cfg.hidden_size, cfg.rms_norm_eps, init),
            lm_head,
            rotary: Rotary::new(cfg.head_dim(), cfg.rope_theta, p.device()),
            cached_len: 0,
        }
    }

    /// Forgets the cached keys and values (start of a new sequence).
    pub fn clear_kv_cache(&mut self) {
        self.cached_len = 0;
        for layer in &mut self.layers {
            layer.self_attn.cache = None;
        }
    }

    /// Tokens already in the KV cache.
    pub fn cached_len(&self) -> i64 {
        self.cached_len
    }

    /// Rebuilds the cache's batch from the rows listed in `rows` (int64 indices `[B']`, in
    /// order, repeats allowed): dropping finished sequences so they stop costing compute, or
    /// copying a shared prefix to every sequence that continues it.
    pub fn select_rows(&mut self, rows: &Tensor) {
        for layer in &mut self.layers {
            if let Some((k, v)) = layer.self_attn.cache.take() {
                layer.self_attn.cache = Some((k.index_select(0, rows), v.index_select(0, rows)));
            }
        }
    }

    /// Takes the KV cache out of the model, leaving it empty: the running sequences of a
    /// continuous batch are set aside while newcomers are prefilled, then merged back with
    /// [`Qwen2ForCausalLM::prepend_kv_cache`]. `None` when nothing is cached.
    pub fn take_kv_cache(&mut self) -> Option<KvCache> {
        let len = std::mem::take(&mut self.cached_len);
        let layers: Option<Vec<(Tensor, Tensor)>> = self.layers.iter_mut().map(|l| l.self_attn.cache.take()).collect();
        layers.map(|layers| KvCache { layers, len })
    }

    /// Adds the sequences of `earlier` (a cache taken with [`Qwen2ForCausalLM::take_kv_cache`])
    /// to the cache's batch, before the rows cached now: `[earlier rows; current rows]`. Both
    /// are left-padded with zero keys and values to the longer length — the caller extends the
    /// key masks the same way so padded keys stay masked (continuous batching: running
    /// sequences and newly prefilled ones decode as one batch, each at its own position).
    ///
    /// # Errors
    /// [`ModelError::Request`] when `earlier` was taken from a model with another layer count.
    pub fn prepend_kv_cache(&mut self, earlier: KvCache) -> Result<(), ModelError> {
        if earlier.layers.len() != self.layers.len() {
            return Err(ModelError::Request {
                reason: format!("a KV cache of {} layers cannot join a model of {}", earlier.layers.len(), self.layers.len()),
            });
        }
        let len = self.cached_len.max(earlier.len);
        let current_len = self.cached_len;
        for (layer, (past_k, past_v)) in self.layers.iter_mut().zip(earlier.layers) {
            let merged = match layer.self_attn.cache.take() {
                Some((k, v)) => {
                    let pad = |t: &Tensor, from: i64| t.constant_pad_nd([0, 0, len - from, 0]);
                    (
                        Tensor::cat(&[pad(&past_k, earlier.len), pad(&k, current_len)], 0),
                        Tensor::cat(&[pad(&past_v, earlier.len), pad(&v, current_len)], 0),
                    )
                }
                None => (past_k, past_v),
            };
            layer.self_attn.cache = Some(merged);
        }
        self.cached_len = len;
        Ok(())
    }

    /// Drops the first `columns` cached positions of every row (keys no row attends any
    /// more: the left padding that remains after the longest sequences have left a continuous
    /// batch), so later steps stop paying for them.
    pub fn drop_leading_kv(&mut self, columns: i64) {
        let columns = columns.clamp(0, self.cached_len);
        if columns == 0 {
            return;
        }
        let keep = self.cached_len - columns;
        for layer in &mut self.layers {
            if let Some((k, v)) = layer.self_attn.cache.take() {
                layer.self_attn.cache = Some((k.narrow(2, columns, keep), v.narrow(2, columns, keep)));
            }
        }
        self.cached_len = keep;
    }

    /// The layers that carry semantic experts.
    pub fn expert_layers(&self) -> Vec<i64> {
        self.layers.iter().enumerate().filter(|(_, l)| l.experts.is_some()).map(|(i, _)| i as i64).collect()
    }

    /// Token embeddings `[batch, seq, d]` for `ids` `[batch, seq]`.
    pub fn embed(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed_tokens, ids, -1, false, false)
    }

    /// Rows of the embedding table: token ids must lie in `0..vocab_size()`.
    pub fn vocab_size(&self) -> i64 {
        self.embed_tokens.size()[0]
    }

    /// The embedding table's kind (the model's compute dtype).
    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// Final-norm hidden states `[batch, seq, d]`, continuing after the cached tokens.
    pub fn forward_embeds(&mut self, input: &DecoderInput<'_>) -> Tensor {
        let seq = input.embeds.size()[1];
        let rotary = self.rotary.tables(input.positions);
        let mask = self.attention_mask(input, seq);
        let mut xs = input.embeds.shallow_clone();
        for layer in &mut self.layers {
            xs = layer.forward(&xs, &rotary, &mask, input.roles, input.train);
        }
        self.cached_len += seq;
        self.norm.forward(&xs)
    }

    /// How the new tokens may attend: causal over cached and new keys, padding keys hidden.
    fn attention_mask(&self, input: &DecoderInput<'_>, seq: i64) -> AttentionMask {
        match (input.key_mask, seq, self.cached_len) {
            (None, 1, _) => return AttentionMask::None,
            (None, _, 0) => return AttentionMask::Causal,
            _ => {}
        }
        let device = input.embeds.device();
        let total = self.cached_len + seq;
        let rows = Tensor::arange_start(self.cached_len, total, (Kind::Int64, device)).unsqueeze(1);
        let cols = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0);
        let mut blocked = cols.gt_tensor(&rows).view([1, 1, seq, total]);
        if let Some(keys) = input.key_mask {
            blocked = blocked.logical_or(&keys.eq(0).view([keys.size()[0], 1, 1, total]));
        }
        let kind = input.embeds.kind();
        AttentionMask::Additive(Tensor::zeros(blocked.size(), (kind, device)).masked_fill(&blocked, layers::mask_value(kind)))
    }

    /// Logits `[batch, seq, vocab]` from final hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        match &self.lm_head {
            Some(head) => hidden.linear(&head.ws, head.bs.as_ref()),
            None => hidden.matmul(&self.embed_tokens.transpose(0, 1)),
        }
    }

    /// Logits `[batch, seq, vocab]` for `input_ids` `[batch, seq]` (no padding), continuing
    /// after the tokens already in the cache.
    pub fn forward(&mut self, input_ids: &Tensor) -> Tensor {
        let (batch, seq) = (input_ids.size()[0], input_ids.size()[1]);
        let positions = Tensor::arange_start(self.cached_len, self.cached_len + seq, (Kind::Int64, input_ids.device()))
            .unsqueeze(0)
            .expand([batch, seq], false);
        let embeds = self.embed(input_ids);
        let hidden =
            self.forward_embeds(&DecoderInput { embeds: &embeds, positions: &positions, roles: None, key_mask: None, train: false });
        self.logits(&hidden)
    }

    /// Folds every LoRA adapter into its base weight (serving).
    ///
    /// # Errors
    /// [`ModelError::Torch`] when an adapter cannot be folded in. Merging stops there: the
    /// projections merged so far skip their adapters, the others still apply theirs, so the
    /// model computes the same function either way; calling again retries the rest.
    pub fn merge_lora(&mut self) -> Result<(), ModelError> {
        for layer in &mut self.layers {
            layer.self_attn.merge_lora()?;
            for proj in [&mut layer.mlp.gate_proj, &mut layer.mlp.up_proj, &mut layer.mlp.down_proj] {
                proj.merge()?;
            }
        }
        Ok(())
    }
}
