//! SigLIP / SigLIP2 vision tower (ViT) under Hugging Face weight names
//! (`vision_model.embeddings.patch_embedding`, `vision_model.encoder.layers.{i}...`), returning
//! the hidden state after every layer, as the multi-level prompter needs (MODEL_SPEC §1).
//!
//! Reference: transformers `models/siglip/modeling_siglip.py` (v4.57.1); checked against it by
//! `model/tests/siglip_golden.rs` (`scripts/fixtures/make_siglip_golden.py`).

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

use crate::ModelError;

const fn default_channels() -> i64 {
    3
}
const fn default_layer_norm_eps() -> f64 {
    1e-6
}

/// The vision part of a SigLIP `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiglipVisionConfig {
    /// Hidden size `d_v`.
    pub hidden_size: i64,
    /// MLP inner size.
    pub intermediate_size: i64,
    /// Encoder layers.
    pub num_hidden_layers: i64,
    /// Attention heads.
    pub num_attention_heads: i64,
    /// Input channels.
    #[serde(default = "default_channels")]
    pub num_channels: i64,
    /// Input side in pixels.
    pub image_size: i64,
    /// Patch side in pixels.
    pub patch_size: i64,
    /// LayerNorm epsilon.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
}

impl SiglipVisionConfig {
    /// Parses a vision-model `config.json`, or the `vision_config` of a full SigLIP one.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the field at fault.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ModelError::Config { reason: e.to_string() })?;
        let vision = value.get("vision_config").cloned().unwrap_or(value);
        let config: Self = serde_json::from_value(vision).map_err(|e| ModelError::Config { reason: e.to_string() })?;
        if config.num_attention_heads <= 0 || config.hidden_size % config.num_attention_heads != 0 {
            return Err(ModelError::Config {
                reason: format!(
                    "hidden_size {} is not divisible by num_attention_heads {}",
                    config.hidden_size, config.num_attention_heads
                ),
            });
        }
        if config.patch_size <= 0 || config.image_size % config.patch_size != 0 {
            return Err(ModelError::Config {
                reason: format!("image_size {} is not a multiple of patch_size {}", config.image_size, config.patch_size),
            });
        }
        Ok(config)
    }

    /// Patches per image, `N_p`.
    pub fn num_patches(&self) -> i64 {
        (self.image_size / self.patch_size).pow(2)
    }
}

#[derive(Debug)]
struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(p: nn::Path<'_>, cfg: &SiglipVisionConfig) -> Self {
        let d = cfg.hidden_size;
        Self {
            q_proj: nn::linear(&p / "q_proj", d, d, Default::default()),
            k_proj: nn::linear(&p / "k_proj", d, d, Default::default()),
            v_proj: nn::linear(&p / "v_proj", d, d, Default::default()),
            out_proj: nn::linear(&p / "out_proj", d, d, Default::default()),
            heads: cfg.num_attention_heads,
            head_dim: d / cfg.num_attention_heads,
        }
    }
}

impl Module for Attention {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let (b, n, d) = (xs.size()[0], xs.size()[1], xs.size()[2]);
        let split = |t: Tensor| t.view([b, n, self.heads, self.head_dim]).transpose(1, 2);
        let q = split(self.q_proj.forward(xs));
        let k = split(self.k_proj.forward(xs));
        let v = split(self.v_proj.forward(xs));
        let scores = q.matmul(&k.transpose(-2, -1)) * (self.head_dim as f64).powf(-0.5);
        let probs = scores.softmax(-1, Kind::Float).to_kind(q.kind());
        self.out_proj.forward(&probs.matmul(&v).transpose(1, 2).contiguous().view([b, n, d]))
    }
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: nn::LayerNorm,
    self_attn: Attention,
    layer_norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl EncoderLayer {
    fn new(p: nn::Path<'_>, cfg: &SiglipVisionConfig) -> Self {
        let norm = nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() };
        let mlp = &p / "mlp";
        Self {
            layer_norm1: nn::layer_norm(&p / "layer_norm1", vec![cfg.hidden_size], norm),
            self_attn: Attention::new(&p / "self_attn", cfg),
            layer_norm2: nn::layer_norm(&p / "layer_norm2", vec![cfg.hidden_size], norm),
            fc1: nn::linear(&mlp / "fc1", cfg.hidden_size, cfg.intermediate_size, Default::default()),
            fc2: nn::linear(&mlp / "fc2", cfg.intermediate_size, cfg.hidden_size, Default::default()),
        }
    }
}

impl Module for EncoderLayer {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let xs = xs + self.self_attn.forward(&self.layer_norm1.forward(xs));
        let hidden = self.fc1.forward(&self.layer_norm2.forward(&xs)).gelu("tanh");
        &xs + self.fc2.forward(&hidden)
    }
}

/// The vision tower's outputs.
#[derive(Debug)]
pub struct VisionOutput {
    /// `L + 1` tensors `[batch, N_p, d_v]`: the patch embeddings, then the output of every
    /// encoder layer (as transformers' `hidden_states`).
    pub hidden_states: Vec<Tensor>,
    /// The last layer's output after the final LayerNorm.
    pub last_hidden_state: Tensor,
}

/// A 2-D sine–cosine position table as MAE initialises its ViT (He et al. 2021; reference:
/// `get_2d_sincos_pos_embed` in facebookresearch/mae `util/pos_embed.py`): `[grid², dim]` f32,
/// patches row-major; the first half of each vector encodes the patch's row, the second its
/// column, each as `dim / 4` sines then `dim / 4` cosines at frequencies
/// `1 / 10000^(i / (dim / 4))`.
///
/// `None` when `dim` is not a multiple of 4 (the halves would not split evenly).
pub fn sincos_positions(grid: i64, dim: i64) -> Option<Tensor> {
    if dim % 4 != 0 || grid <= 0 {
        return None;
    }
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter).map(|i| 1.0 / 10_000f64.powf(i as f64 / quarter as f64)).collect();
    let axis = |at: i64| -> Vec<f32> {
        let angles: Vec<f64> = omega.iter().map(|w| at as f64 * w).collect();
        angles.iter().map(|a| a.sin() as f32).chain(angles.iter().map(|a| a.cos() as f32)).collect()
    };
    let mut table = Vec::with_capacity((grid * grid * dim) as usize);
    for row in 0..grid {
        for column in 0..grid {
            table.extend(axis(row));
            table.extend(axis(column));
        }
    }
    Some(Tensor::from_slice(&table).view([grid * grid, dim]))
}

/// SigLIP vision transformer.
#[derive(Debug)]
pub struct SiglipVisionModel {
    patch_embedding: nn::Conv2D,
    position_embedding: nn::Embedding,
    layers: Vec<EncoderLayer>,
    post_layernorm: nn::LayerNorm,
    num_patches: i64,
}

impl SiglipVisionModel {
    /// Builds the tower's variables under `p / "vision_model"`.
    pub fn new(p: &nn::Path<'_>, cfg: &SiglipVisionConfig) -> Self {
        let root = p / "vision_model";
        let embeddings = &root / "embeddings";
        let conv = nn::ConvConfig { stride: cfg.patch_size, ..Default::default() };
        let mut position_embedding =
            nn::embedding(&embeddings / "position_embedding", cfg.num_patches(), cfg.hidden_size, Default::default());
        // A tower trained from scratch starts from 2-D sine–cosine positions rather than
        // independent random vectors: neighbouring patches then have neighbouring codes, and a
        // patch's row and column can be read off linearly, so what is learnt about an object at
        // one place can carry over to the next. (On the demo's grounding it made no measurable
        // difference; it is the standard start for a ViT trained from scratch.) Loading a checkpoint overwrites it. Drawing the random init first keeps the random
        // stream, and so every later variable, as it was.
        if let Some(table) = sincos_positions(cfg.image_size / cfg.patch_size, cfg.hidden_size) {
            tch::no_grad(|| {
                position_embedding.ws.copy_(&table.to_kind(position_embedding.ws.kind()).to_device(position_embedding.ws.device()))
            });
        }
        let mut patch_embedding = nn::conv2d(&embeddings / "patch_embedding", cfg.num_channels, cfg.hidden_size, cfg.patch_size, conv);
        // And, as MAE does, the patch projection starts Xavier-uniform as the linear map it is
        // (fan-in C·p², fan-out d_v) rather than with a convolution's default: about twice the
        // scale, so what a patch shows is not drowned by where it is.
        let fans = (cfg.num_channels * cfg.patch_size * cfg.patch_size + cfg.hidden_size) as f64;
        let bound = (6.0 / fans).sqrt();
        tch::no_grad(|| {
            let _ = patch_embedding.ws.uniform_(-bound, bound);
            if let Some(bias) = patch_embedding.bs.as_mut() {
                let _ = bias.zero_();
            }
        });
        Self {
            patch_embedding,
            position_embedding,
            layers: (0..cfg.num_hidden_layers).map(|i| EncoderLayer::new(&root / "encoder" / "layers" / i, cfg)).collect(),
            post_layernorm: nn::layer_norm(
                &root / "post_layernorm",
                vec![cfg.hidden_size],
                nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() },
            ),
            num_patches: cfg.num_patches(),
        }
    }

    /// Runs the tower on normalised `pixel_values` `[batch, channels, side, side]`.
    pub fn forward(&self, pixel_values: &Tensor) -> VisionOutput {
        let patches = self.patch_embedding.forward(pixel_values).flatten(2, -1).transpose(1, 2);
        let positions = Tensor::arange(self.num_patches, (Kind::Int64, pixel_values.device()));
        let mut xs = patches + self.position_embedding.forward(&positions).unsqueeze(0);
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        hidden_states.push(xs.shallow_clone());
        for layer in &self.layers {
            xs = layer.forward(&xs);
            hidden_states.push(xs.shallow_clone());
        }
        VisionOutput { last_hidden_state: self.post_layernorm.forward(&xs), hidden_states }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_from_scratch_tower_starts_from_positions_that_neighbouring_patches_share() {
        let cfg = SiglipVisionConfig {
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_channels: 3,
            image_size: 32,
            patch_size: 8,
            layer_norm_eps: 1e-6,
        };
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let tower = SiglipVisionModel::new(&vs.root(), &cfg);
        let table = tower.position_embedding.ws.shallow_clone();
        assert_eq!(table.size(), [16, 16]);
        let at = |row: i64, column: i64| table.get(row * 4 + column);
        let distance = |a: &Tensor, b: &Tensor| (a - b).norm().double_value(&[]);
        // Patches of one row share the row half; of one column, the column half.
        assert!(distance(&at(1, 0).narrow(0, 0, 8), &at(1, 3).narrow(0, 0, 8)) < 1e-6);
        assert!(distance(&at(0, 2).narrow(0, 8, 8), &at(3, 2).narrow(0, 8, 8)) < 1e-6);
        // A neighbour is nearer than a patch three steps away, along either axis.
        assert!(distance(&at(1, 1), &at(1, 2)) < distance(&at(1, 1), &at(1, 3)) - 0.1);
        assert!(distance(&at(0, 0), &at(1, 0)) < distance(&at(0, 0), &at(3, 0)) - 0.1);
        // A width the halves cannot split keeps the random init.
        assert!(sincos_positions(4, 18).is_none());
    }
}
