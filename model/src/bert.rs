//! BERT encoder under Hugging Face names (`embeddings.*`, `encoder.layer.{i}.*`), for
//! BERTScore and sentence embeddings (e.g. all-MiniLM-L6-v2).
//!
//! Reference: transformers `models/bert/modeling_bert.py` (v4.57.1): post-norm layers, exact
//! (erf) GELU, absolute positions, token type 0.

use serde::Deserialize;
use tch::{nn, nn::Module, Kind, Tensor};

use crate::ModelError;

const fn default_layer_norm_eps() -> f64 {
    1e-12
}

/// The parts of a BERT `config.json` the encoder needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size.
    pub hidden_size: i64,
    /// Layers.
    pub num_hidden_layers: i64,
    /// Attention heads.
    pub num_attention_heads: i64,
    /// MLP inner size.
    pub intermediate_size: i64,
    /// Longest input.
    pub max_position_embeddings: i64,
    /// Token types.
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// Parses `config.json` text.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the problem.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let config: Self = serde_json::from_str(text).map_err(|e| ModelError::Config { reason: e.to_string() })?;
        if config.num_attention_heads <= 0 || config.hidden_size % config.num_attention_heads != 0 {
            return Err(ModelError::Config {
                reason: format!(
                    "hidden_size {} is not divisible by num_attention_heads {}",
                    config.hidden_size, config.num_attention_heads
                ),
            });
        }
        Ok(config)
    }
}

#[derive(Debug)]
struct Layer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attention_output: nn::Linear,
    attention_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    output_norm: nn::LayerNorm,
    heads: i64,
}

impl Layer {
    fn new(p: &nn::Path<'_>, cfg: &BertConfig) -> Self {
        let (d, norm) = (cfg.hidden_size, nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() });
        let attention = p / "attention";
        let this = &attention / "self";
        Self {
            query: nn::linear(&this / "query", d, d, Default::default()),
            key: nn::linear(&this / "key", d, d, Default::default()),
            value: nn::linear(&this / "value", d, d, Default::default()),
            attention_output: nn::linear(&attention / "output" / "dense", d, d, Default::default()),
            attention_norm: nn::layer_norm(&attention / "output" / "LayerNorm", vec![d], norm),
            intermediate: nn::linear(p / "intermediate" / "dense", d, cfg.intermediate_size, Default::default()),
            output: nn::linear(p / "output" / "dense", cfg.intermediate_size, d, Default::default()),
            output_norm: nn::layer_norm(p / "output" / "LayerNorm", vec![d], norm),
            heads: cfg.num_attention_heads,
        }
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Tensor {
        let (b, n, d) = (xs.size()[0], xs.size()[1], xs.size()[2]);
        let split = |t: Tensor| t.view([b, n, self.heads, d / self.heads]).transpose(1, 2);
        let (q, k, v) = (split(self.query.forward(xs)), split(self.key.forward(xs)), split(self.value.forward(xs)));
        let context = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None, false);
        let context = context.transpose(1, 2).contiguous().view([b, n, d]);
        let attended = self.attention_norm.forward(&(self.attention_output.forward(&context) + xs));
        let hidden = self.intermediate.forward(&attended).gelu("none");
        self.output_norm.forward(&(self.output.forward(&hidden) + attended))
    }
}

/// The encoder (no pooler).
#[derive(Debug)]
pub struct BertModel {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    token_type_embeddings: nn::Embedding,
    embeddings_norm: nn::LayerNorm,
    layers: Vec<Layer>,
}

impl BertModel {
    /// Builds the encoder under `p` (`p/embeddings`, `p/encoder/layer/{i}`).
    pub fn new(p: &nn::Path<'_>, cfg: &BertConfig) -> Self {
        let embeddings = p / "embeddings";
        let d = cfg.hidden_size;
        Self {
            word_embeddings: nn::embedding(&embeddings / "word_embeddings", cfg.vocab_size, d, Default::default()),
            position_embeddings: nn::embedding(&embeddings / "position_embeddings", cfg.max_position_embeddings, d, Default::default()),
            token_type_embeddings: nn::embedding(&embeddings / "token_type_embeddings", cfg.type_vocab_size, d, Default::default()),
            embeddings_norm: nn::layer_norm(
                &embeddings / "LayerNorm",
                vec![d],
                nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() },
            ),
            layers: (0..cfg.num_hidden_layers).map(|i| Layer::new(&(p / "encoder" / "layer" / i), cfg)).collect(),
        }
    }

    /// Hidden states `[B, T, d]` after the first `num_layers` layers (all when `None`), for
    /// `input_ids` and `attention_mask` `[B, T]` (1 real, 0 padding).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, num_layers: Option<usize>) -> Tensor {
        let (b, n) = (input_ids.size()[0], input_ids.size()[1]);
        let positions = Tensor::arange(n, (Kind::Int64, input_ids.device())).unsqueeze(0);
        let types = Tensor::zeros([b, n], (Kind::Int64, input_ids.device()));
        let mut xs = self.embeddings_norm.forward(
            &(self.word_embeddings.forward(input_ids)
                + self.position_embeddings.forward(&positions)
                + self.token_type_embeddings.forward(&types)),
        );
        let kind = xs.kind();
        let mask = Tensor::zeros([b, 1, 1, n], (kind, xs.device()))
            .masked_fill(&attention_mask.eq(0).view([b, 1, 1, n]), crate::layers::mask_value(kind));
        for layer in self.layers.iter().take(num_layers.unwrap_or(self.layers.len())) {
            xs = layer.forward(&xs, &mask);
        }
        xs
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}
