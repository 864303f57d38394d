//! Qwen2 / Qwen2.5 decoder (RMSNorm, rotary position embeddings, grouped-query attention with
//! q/k/v biases, SwiGLU MLP) under Hugging Face weight names, so `model.safetensors` from a
//! Qwen2 checkpoint loads as is.
//!
//! Reference: transformers `models/qwen2/modeling_qwen2.py` (v4.57.1); checked against it by
//! `model/tests/qwen2_golden.rs` on a small random configuration
//! (`scripts/fixtures/make_qwen2_golden.py`).

use serde::Deserialize;
use tch::{nn, nn::Module, Kind, Tensor};

use crate::ModelError;

const fn default_rope_theta() -> f64 {
    10_000.0
}
const fn default_rms_norm_eps() -> f64 {
    1e-6
}

/// The parts of a Qwen2 `config.json` the decoder needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
}

impl Qwen2Config {
    /// Parses `config.json` text.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the field at fault.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let config: Self = serde_json::from_str(text).map_err(|e| ModelError::Config { reason: e.to_string() })?;
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

    fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
}

/// Root-mean-square layer norm, computed in f32 as the reference does.
#[derive(Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(p: nn::Path<'_>, size: i64, eps: f64) -> Self {
        Self { weight: p.ones("weight", &[size]), eps }
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

    /// `(cos, sin)` of shape `[seq, head_dim]` for positions `offset..offset+seq`.
    fn tables(&self, offset: i64, seq: i64) -> (Tensor, Tensor) {
        let positions = Tensor::arange_start(offset, offset + seq, (Kind::Float, self.inv_freq.device()));
        let freqs = positions.unsqueeze(1) * self.inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
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

#[derive(Debug)]
struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    o_proj: nn::Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    cache: Option<(Tensor, Tensor)>,
}

impl Attention {
    fn new(p: nn::Path<'_>, cfg: &Qwen2Config) -> Self {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let with_bias = nn::LinearConfig { bias: true, ..Default::default() };
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        Self {
            q_proj: nn::linear(&p / "q_proj", d, cfg.num_attention_heads * hd, with_bias),
            k_proj: nn::linear(&p / "k_proj", d, cfg.num_key_value_heads * hd, with_bias),
            v_proj: nn::linear(&p / "v_proj", d, cfg.num_key_value_heads * hd, with_bias),
            o_proj: nn::linear(&p / "o_proj", cfg.num_attention_heads * hd, d, no_bias),
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: hd,
            cache: None,
        }
    }

    fn forward(&mut self, xs: &Tensor, cos: &Tensor, sin: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let (b, seq) = (xs.size()[0], xs.size()[1]);
        let shape = |t: Tensor, heads: i64| t.view([b, seq, heads, self.head_dim]).transpose(1, 2);
        let q = apply_rotary(&shape(self.q_proj.forward(xs), self.heads), cos, sin);
        let k = apply_rotary(&shape(self.k_proj.forward(xs), self.kv_heads), cos, sin);
        let v = shape(self.v_proj.forward(xs), self.kv_heads);
        let (k, v) = match self.cache.take() {
            Some((past_k, past_v)) => (Tensor::cat(&[&past_k, &k], 2), Tensor::cat(&[&past_v, &v], 2)),
            None => (k, v),
        };
        self.cache = Some((k.shallow_clone(), v.shallow_clone()));
        let groups = self.heads / self.kv_heads;
        let k = k.repeat_interleave_self_int(groups, Some(1), None);
        let v = v.repeat_interleave_self_int(groups, Some(1), None);
        let scores = q.matmul(&k.transpose(-2, -1)) / (self.head_dim as f64).sqrt();
        let scores = match mask {
            Some(mask) => scores + mask,
            None => scores,
        };
        let probs = scores.softmax(-1, Kind::Float).to_kind(q.kind());
        let out = probs.matmul(&v).transpose(1, 2).contiguous().view([b, seq, self.heads * self.head_dim]);
        self.o_proj.forward(&out)
    }
}

#[derive(Debug)]
struct Mlp {
    gate_proj: nn::Linear,
    up_proj: nn::Linear,
    down_proj: nn::Linear,
}

impl Mlp {
    fn new(p: nn::Path<'_>, cfg: &Qwen2Config) -> Self {
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Self {
            gate_proj: nn::linear(&p / "gate_proj", d, i, no_bias),
            up_proj: nn::linear(&p / "up_proj", d, i, no_bias),
            down_proj: nn::linear(&p / "down_proj", i, d, no_bias),
        }
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.down_proj.forward(&(self.gate_proj.forward(xs).silu() * self.up_proj.forward(xs)))
    }
}

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(p: nn::Path<'_>, cfg: &Qwen2Config) -> Self {
        Self {
            input_layernorm: RmsNorm::new(&p / "input_layernorm", cfg.hidden_size, cfg.rms_norm_eps),
            self_attn: Attention::new(&p / "self_attn", cfg),
            post_attention_layernorm: RmsNorm::new(&p / "post_attention_layernorm", cfg.hidden_size, cfg.rms_norm_eps),
            mlp: Mlp::new(&p / "mlp", cfg),
        }
    }

    fn forward(&mut self, xs: &Tensor, cos: &Tensor, sin: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let attended = xs + self.self_attn.forward(&self.input_layernorm.forward(xs), cos, sin, mask);
        &attended + self.mlp.forward(&self.post_attention_layernorm.forward(&attended))
    }
}

/// The decoder with its language-model head, holding a per-layer KV cache.
#[derive(Debug)]
pub struct Qwen2ForCausalLM {
    embed_tokens: nn::Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Option<nn::Linear>,
    rotary: Rotary,
    seqlen_offset: i64,
}

impl Qwen2ForCausalLM {
    /// Builds the model's variables under `p` with Hugging Face names (`model.layers.0...`,
    /// `lm_head.weight`); load weights into the var store afterwards.
    pub fn new(p: &nn::Path<'_>, cfg: &Qwen2Config) -> Self {
        let model = p / "model";
        let layers = (0..cfg.num_hidden_layers).map(|i| DecoderLayer::new(&model / "layers" / i, cfg)).collect();
        let lm_head = (!cfg.tie_word_embeddings)
            .then(|| nn::linear(p / "lm_head", cfg.hidden_size, cfg.vocab_size, nn::LinearConfig { bias: false, ..Default::default() }));
        Self {
            embed_tokens: nn::embedding(&model / "embed_tokens", cfg.vocab_size, cfg.hidden_size, Default::default()),
            layers,
            norm: RmsNorm::new(&model / "norm", cfg.hidden_size, cfg.rms_norm_eps),
            lm_head,
            rotary: Rotary::new(cfg.head_dim(), cfg.rope_theta, p.device()),
            seqlen_offset: 0,
        }
    }

    /// Forgets the cached keys and values (start of a new sequence).
    pub fn clear_kv_cache(&mut self) {
        self.seqlen_offset = 0;
        for layer in &mut self.layers {
            layer.self_attn.cache = None;
        }
    }

    /// Logits `[batch, seq, vocab]` for `input_ids` `[batch, seq]`, continuing after the
    /// tokens already in the cache.
    pub fn forward(&mut self, input_ids: &Tensor) -> Tensor {
        let seq = input_ids.size()[1];
        let (cos, sin) = self.rotary.tables(self.seqlen_offset, seq);
        // Causal mask over [cached + new] keys; a single new token may see everything.
        let mask = (seq > 1).then(|| {
            let total = self.seqlen_offset + seq;
            let device = input_ids.device();
            let rows = Tensor::arange_start(self.seqlen_offset, total, (Kind::Int64, device)).unsqueeze(1);
            let cols = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0);
            let blocked = cols.gt_tensor(&rows);
            Tensor::zeros([seq, total], (Kind::Float, device)).masked_fill(&blocked, f64::NEG_INFINITY)
        });
        let mut xs = self.embed_tokens.forward(input_ids);
        for layer in &mut self.layers {
            xs = layer.forward(&xs, &cos, &sin, mask.as_ref());
        }
        self.seqlen_offset += seq;
        let xs = self.norm.forward(&xs);
        match &self.lm_head {
            Some(head) => head.forward(&xs),
            None => xs.matmul(&self.embed_tokens.ws.transpose(0, 1)),
        }
    }
}
