//! The retriever's trainable image tower: a SigLIP vision transformer, mean-pooled and
//! projected into the embedding space of a locked text encoder, trained contrastively
//! (MODEL_SPEC §2 and §5: the retriever is a CLIP-style dual encoder fine-tuned on image–text
//! pairs).
//!
//! The text side stays locked, as in LiT (Zhai et al., 2022, "LiT: Zero-Shot Transfer with
//! Locked-image text Tuning", with the roles of the towers swapped): the description database
//! is embedded once by the text encoder (all-MiniLM-L6-v2 by default), and only the image
//! tower learns to land next to the descriptions of what it sees. An index built before
//! training therefore stays valid after it.
//!
//! A trained tower is a directory: `retriever.json` ([`ImageTowerConfig`]),
//! `image_model.safetensors` and `preprocessor_config.json`, which
//! [`crate::encoders::ImageEncoder`] loads beside CLIP towers exported to ONNX.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module as _, Device, Kind, Tensor};

use crate::preprocess::ImageProcessor;
use crate::siglip::{SiglipVisionConfig, SiglipVisionModel};
use crate::weights::{self, LoadPolicy};
use crate::ModelError;

/// File names of a trained tower's directory.
pub const CONFIG_FILE: &str = "retriever.json";
/// The weights: `vision_model.*`, `visual_projection.weight`, `logit_scale`.
pub const WEIGHTS_FILE: &str = "image_model.safetensors";
/// The image processor, in Hugging Face's format.
pub const PROCESSOR_FILE: &str = "preprocessor_config.json";

/// What `retriever.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageTowerConfig {
    /// The vision transformer.
    pub vision: SiglipVisionConfig,
    /// Width of the shared embedding space: the text encoder's output width.
    pub embed_dim: i64,
    /// Per-channel normalisation of the pixels.
    pub image_mean: [f32; 3],
    /// Per-channel normalisation of the pixels.
    pub image_std: [f32; 3],
    /// The locked text encoder the tower was trained against (its folder name), whose
    /// embeddings an index must hold for this tower to query it.
    pub text_encoder: String,
}

/// Whether two text-encoder locations name the same encoder: the same folder name, so that a
/// tower trained on one machine matches the index built on another.
pub fn same_text_encoder(a: &str, b: &str) -> bool {
    let name = |path: &str| Path::new(path.trim_end_matches('/')).file_name().map(|n| n.to_owned());
    name(a) == name(b)
}

/// The tower: `[batch, 3, side, side]` normalised pixels → `[batch, embed_dim]` unit vectors.
#[derive(Debug)]
pub struct ImageTower {
    vs: nn::VarStore,
    vision: SiglipVisionModel,
    projection: nn::Linear,
    logit_scale: Tensor,
    config: ImageTowerConfig,
}

/// CLIP's initial temperature, `ln(1 / 0.07)`.
const INITIAL_LOGIT_SCALE: f64 = 2.659_260_036_932_778;
/// CLIP clamps the learnt scale at 100 (`ln 100`).
const MAX_LOGIT_SCALE: f64 = 4.605_170_185_988_092;

impl ImageTower {
    /// A tower on `device` with random weights (CLIP's initial temperature).
    pub fn new(config: ImageTowerConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let vision = SiglipVisionModel::new(&root, &config.vision);
        let projection = nn::linear(
            &root / "visual_projection",
            config.vision.hidden_size,
            config.embed_dim,
            nn::LinearConfig { bias: false, ..Default::default() },
        );
        let logit_scale = root.var("logit_scale", &[], nn::Init::Const(INITIAL_LOGIT_SCALE));
        Self { vs, vision, projection, logit_scale, config }
    }

    /// A tower whose vision transformer starts from the `vision_model.*` weights in `files`
    /// (a Strata model artifact, or a SigLIP checkpoint); the projection starts random.
    ///
    /// # Errors
    /// [`ModelError::Weights`] when a vision weight is missing or has another shape.
    pub fn from_vision_weights(config: ImageTowerConfig, files: &[std::path::PathBuf], device: Device) -> Result<Self, ModelError> {
        let tower = Self::new(config, device);
        weights::load(&tower.vs, files, LoadPolicy::Required(&["vision_model."]))?;
        Ok(tower)
    }

    /// Whether `dir` holds a trained tower (its config file).
    pub fn is_dir(dir: &Path) -> bool {
        dir.join(CONFIG_FILE).is_file()
    }

    /// Loads a tower saved by [`ImageTower::save`].
    ///
    /// # Errors
    /// [`ModelError::Artifact`] for a missing or malformed config, [`ModelError::Weights`] when
    /// the weights do not cover the tower exactly.
    pub fn load(dir: &Path, device: Device) -> Result<Self, ModelError> {
        let path = dir.join(CONFIG_FILE);
        let artifact = |reason: String| ModelError::Artifact { path: path.clone(), reason };
        let text = std::fs::read_to_string(&path).map_err(|e| artifact(format!("cannot read: {e}")))?;
        let config: ImageTowerConfig = serde_json::from_str(&text).map_err(|e| artifact(format!("malformed: {e}")))?;
        let tower = Self::new(config, device);
        weights::load(&tower.vs, &[dir.join(WEIGHTS_FILE)], LoadPolicy::Complete)?;
        Ok(tower)
    }

    /// Writes the config, weights and image processor to `dir` (created if needed).
    ///
    /// # Errors
    /// [`ModelError::Artifact`] when a file cannot be written.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let artifact = |path: &Path, e: std::io::Error| ModelError::Artifact { path: path.to_owned(), reason: e.to_string() };
        std::fs::create_dir_all(dir).map_err(|e| artifact(dir, e))?;
        weights::save(&self.vs, &dir.join(WEIGHTS_FILE), |_| true)?;
        let processor = serde_json::json!({
            "image_processor_type": "SiglipImageProcessor",
            "do_resize": true,
            "size": {"height": self.config.vision.image_size, "width": self.config.vision.image_size},
            "resample": 3,
            "do_rescale": true,
            "rescale_factor": 1.0 / 255.0,
            "do_normalize": true,
            "image_mean": self.config.image_mean,
            "image_std": self.config.image_std,
        });
        for (name, value) in [(PROCESSOR_FILE, processor), (CONFIG_FILE, serde_json::to_value(&self.config).unwrap_or_default())] {
            let path = dir.join(name);
            let text = serde_json::to_string_pretty(&value).unwrap_or_default();
            std::fs::write(&path, text).map_err(|e| artifact(&path, e))?;
        }
        Ok(())
    }

    /// Its configuration.
    pub fn config(&self) -> &ImageTowerConfig {
        &self.config
    }

    /// The variables (all trainable).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Where it runs.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The image processor the tower expects: bicubic resize to its side, its mean and std.
    pub fn processor(&self) -> ImageProcessor {
        ImageProcessor::siglip(self.config.vision.image_size as usize, self.config.image_mean, self.config.image_std)
    }

    /// Unit-length embeddings `[batch, embed_dim]` (f32) of normalised pixels
    /// `[batch, 3, side, side]`: the mean of the last layer's patch states, projected.
    pub fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let pooled = self.vision.forward(pixel_values).last_hidden_state.mean_dim(1, false, Kind::Float);
        let projected = self.projection.forward(&pooled.to_kind(self.projection.ws.kind())).to_kind(Kind::Float);
        let norm = projected.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12);
        projected / norm
    }

    /// The contrastive loss of a batch against the locked text embeddings: cross-entropy of
    /// each image over the batch's distinct texts (image → text), and of each text over the
    /// images it describes (text → image, its probability mass shared by all of them), the
    /// mean of both, at CLIP's learnt temperature.
    ///
    /// `image_embeddings` `[B, D]` come from [`ImageTower::forward`]; `text_embeddings`
    /// `[T, D]` are unit vectors of the distinct texts; `targets[b]` is image `b`'s text.
    /// Templated captions repeat, so the texts are deduplicated by the caller: an identical
    /// caption of another image is not a negative.
    pub fn contrastive_loss(&self, image_embeddings: &Tensor, text_embeddings: &Tensor, targets: &[i64]) -> Tensor {
        let device = image_embeddings.device();
        let scale = self.logit_scale.clamp_max(MAX_LOGIT_SCALE).exp();
        let logits = image_embeddings.matmul(&text_embeddings.tr()) * &scale;
        let targets = Tensor::from_slice(targets).to_device(device);
        let image_to_text = logits.cross_entropy_for_logits(&targets);
        // Text → image over the images of the batch: each text's target spreads evenly over
        // the images it captions (none for texts of no image, which do not occur here).
        let texts = text_embeddings.size()[0];
        let one_hot = targets.one_hot(texts).to_kind(Kind::Float).tr(); // [T, B]
        let counts = one_hot.sum_dim_intlist(1, true, Kind::Float);
        let present = counts.gt(0.0).squeeze_dim(1);
        let soft = (&one_hot / counts.clamp_min(1.0)).index(&[Some(&present)]);
        let log_probs = logits.tr().log_softmax(-1, Kind::Float).index(&[Some(&present)]);
        let text_to_image = -(soft * log_probs).sum_dim_intlist(1, false, Kind::Float).mean(Kind::Float);
        (image_to_text + text_to_image) / 2.0
    }

    /// Runs without building a graph, for inference.
    pub fn embed(&self, pixel_values: &Tensor) -> Tensor {
        tch::no_grad(|| self.forward(pixel_values))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> ImageTowerConfig {
        ImageTowerConfig {
            vision: SiglipVisionConfig {
                hidden_size: 32,
                intermediate_size: 64,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_channels: 3,
                image_size: 16,
                patch_size: 8,
                layer_norm_eps: 1e-6,
            },
            embed_dim: 12,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            text_encoder: "test".into(),
        }
    }

    #[test]
    fn embeddings_are_unit_vectors_and_survive_a_save_and_load() {
        tch::manual_seed(3);
        let tower = ImageTower::new(config(), Device::Cpu);
        let pixels = Tensor::randn([3, 3, 16, 16], (Kind::Float, Device::Cpu));
        let embeddings = tower.embed(&pixels);
        assert_eq!(embeddings.size(), [3, 12]);
        let norms = embeddings.norm_scalaropt_dim(2, [-1], false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
        let dir = tempfile::tempdir().unwrap();
        tower.save(dir.path()).unwrap();
        assert!(ImageTower::is_dir(dir.path()));
        let loaded = ImageTower::load(dir.path(), Device::Cpu).unwrap();
        assert_eq!(loaded.config(), tower.config());
        assert!((loaded.embed(&pixels) - embeddings).abs().max().double_value(&[]) < 1e-6);
        let processor = ImageProcessor::from_file(&dir.path().join(PROCESSOR_FILE)).unwrap();
        assert_eq!(processor, tower.processor(), "the processor file says what the tower expects");
    }

    #[test]
    fn the_loss_is_low_when_each_image_is_nearest_its_text_and_shares_repeated_ones() {
        let tower = ImageTower::new(config(), Device::Cpu);
        let texts = Tensor::eye(12, (Kind::Float, Device::Cpu)).narrow(0, 0, 3);
        // Images 0 and 2 share text 0; image 1 has text 1; text 2 belongs to no image.
        let aligned = Tensor::stack(&[texts.get(0), texts.get(1), texts.get(0)], 0);
        let crossed = Tensor::stack(&[texts.get(1), texts.get(0), texts.get(2)], 0);
        let good = tower.contrastive_loss(&aligned, &texts, &[0, 1, 0]).double_value(&[]);
        let bad = tower.contrastive_loss(&crossed, &texts, &[0, 1, 0]).double_value(&[]);
        assert!(good.is_finite() && bad.is_finite());
        // The floor of `good` is text 0's share of ln 2 (two images, evenly): (0 + ln 2 / 2) / 2.
        assert!(good < 0.2 && bad > 2.0, "aligned {good}, crossed {bad}");
    }
}
