//! The retriever's encoders through ONNX Runtime.
//!
//! - [`TextEncoder`]: `model.onnx` (inputs `input_ids`, `attention_mask`; output
//!   `sentence_embedding`) with its `tokenizer.json` — a sentence encoder such as
//!   all-MiniLM-L6-v2, or the text tower of a CLIP model.
//! - [`ImageEncoder`]: `image_model.onnx` (input `pixel_values [batch, 3, H, W]`; output
//!   `image_embeds`) with its `preprocessor_config.json` — the image tower of a CLIP model
//!   (`scripts/export/clip_to_onnx.py` writes both towers into one directory); or a tower
//!   trained by `strata train retriever` ([`crate::image_tower`], run through tch), which
//!   queries an index of its locked text encoder.
//!
//! Batches are padded to their longest sentence; outputs come back L2-normalised so cosine
//! similarity is a dot product. Both run on CUDA when the loaded ONNX Runtime has the CUDA
//! execution provider (the onnxruntime-gpu build) and a device takes the session, on the CPU
//! otherwise; `load_on` pins the choice.

use std::path::{Path, PathBuf};

use ndarray::Array2;
use ort::session::Session;
use ort::value::TensorRef;
use tokenizers::Tokenizer;

use tch::Tensor;

use crate::device::DevicePreference;
use crate::image_tower::ImageTower;
use crate::onnx::OrtTarget;
use crate::preprocess::{ImageProcessor, RgbImage};
use crate::ModelError;

const BATCH: usize = 64;
/// Images per encoder run.
const IMAGE_BATCH: usize = 16;

/// A text encoder session and its tokenizer.
#[derive(Debug)]
pub struct TextEncoder {
    session: Session,
    target: OrtTarget,
    tokenizer: Tokenizer,
    dim: usize,
    name: String,
}

fn onnx(action: &str) -> impl Fn(ort::Error) -> ModelError + '_ {
    move |source| ModelError::Onnx { action: action.to_owned(), source }
}

impl TextEncoder {
    /// The bundled default: all-MiniLM-L6-v2 exported by `scripts/setup.sh`.
    pub fn default_dir() -> PathBuf {
        crate::assets_dir().join("all-minilm-l6-v2")
    }

    /// Loads `model.onnx` and `tokenizer.json` from `dir`; sentences longer than
    /// `max_tokens` are cut. Runs on the GPU when ONNX Runtime can (see [`Self::load_on`]).
    ///
    /// # Errors
    /// [`ModelError::Artifact`] for missing files, [`ModelError::Onnx`] when the model does not
    /// load or lacks the expected inputs and output.
    pub fn load(dir: &Path, max_tokens: usize, threads: usize) -> Result<Self, ModelError> {
        Self::load_on(dir, max_tokens, threads, DevicePreference::Auto)
    }

    /// As [`Self::load`], on the device `preference` names (see [`crate::onnx::load_session_on`]).
    ///
    /// # Errors
    /// As [`Self::load`]; [`ModelError::CudaUnavailable`] when CUDA is required and ONNX
    /// Runtime cannot use it.
    pub fn load_on(dir: &Path, max_tokens: usize, threads: usize, preference: DevicePreference) -> Result<Self, ModelError> {
        let missing = |file: &str, e: &dyn std::fmt::Display| ModelError::Artifact {
            path: dir.join(file),
            reason: format!("{e}; run `scripts/setup.sh` for the default encoder"),
        };
        let bytes = std::fs::read(dir.join("model.onnx")).map_err(|e| missing("model.onnx", &e))?;
        let (session, target) = crate::onnx::load_session_on(&bytes, threads, preference)?;
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let rank = |name: &str| session.inputs().iter().find(|i| i.name() == name).and_then(|i| i.dtype().tensor_shape()).map(|s| s.len());
        if !(inputs.contains(&"input_ids") && inputs.contains(&"attention_mask") && outputs.contains(&"sentence_embedding"))
            || rank("input_ids") != Some(2)
            || rank("attention_mask") != Some(2)
        {
            return Err(ModelError::Artifact {
                path: dir.join("model.onnx"),
                reason: format!(
                    "expected inputs `input_ids` and `attention_mask` of shape [batch, tokens] and output `sentence_embedding`; found inputs {inputs:?} (ranks {:?}, {:?}), outputs {outputs:?}",
                    rank("input_ids"),
                    rank("attention_mask")
                ),
            });
        }
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| missing("tokenizer.json", &e))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| ModelError::Tokenizer { reason: e.to_string() })?;
        let mut encoder = Self { session, target, tokenizer, dim: 0, name: dir.display().to_string() };
        encoder.dim = encoder.encode(&["probe".to_owned()])?.first().map_or(0, Vec::len);
        Ok(encoder)
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Where it was loaded from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it runs.
    pub fn target(&self) -> OrtTarget {
        self.target
    }

    /// Token ids of `text` (special tokens included), as the encoder sees them.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when encoding fails.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self.tokenizer.encode(text, true).map_err(|e| ModelError::Tokenizer { reason: e.to_string() })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// L2-normalised embeddings of `texts`, in order.
    ///
    /// # Errors
    /// [`ModelError::Request`] for an empty text, [`ModelError::Onnx`] when a run fails.
    pub fn encode(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(ModelError::Request { reason: format!("text {i} is empty") });
        }
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(BATCH) {
            let ids: Vec<Vec<u32>> = batch.iter().map(|t| self.token_ids(t)).collect::<Result<_, _>>()?;
            let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
            let mut input = Array2::<i64>::zeros((batch.len(), longest));
            let mut mask = Array2::<i64>::zeros((batch.len(), longest));
            for (row, tokens) in ids.iter().enumerate() {
                for (col, id) in tokens.iter().enumerate() {
                    input[[row, col]] = i64::from(*id);
                    mask[[row, col]] = 1;
                }
            }
            let outputs = self
                .session
                .run(ort::inputs![
                    "input_ids" => TensorRef::from_array_view(&input).map_err(onnx("preparing input_ids"))?,
                    "attention_mask" => TensorRef::from_array_view(&mask).map_err(onnx("preparing attention_mask"))?
                ])
                .map_err(onnx("running the text encoder"))?;
            let embeddings = outputs["sentence_embedding"].try_extract_array::<f32>().map_err(onnx("reading sentence_embedding"))?;
            push_normalised_rows(&embeddings, &mut out);
        }
        Ok(out)
    }
}

/// Appends each row of `[batch, d]` embeddings, L2-normalised, to `out`.
fn push_normalised_rows(embeddings: &ndarray::ArrayViewD<'_, f32>, out: &mut Vec<Vec<f32>>) {
    for row in embeddings.outer_iter() {
        let v: Vec<f32> = row.iter().copied().collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        out.push(v.into_iter().map(|x| x / norm).collect());
    }
}

/// What runs an image encoder.
#[derive(Debug)]
enum ImageBackend {
    /// A CLIP image tower exported to ONNX.
    Onnx(Session),
    /// A tower trained by `strata train retriever`.
    Torch(Box<ImageTower>),
}

/// An image encoder and the preprocessing its training used.
#[derive(Debug)]
pub struct ImageEncoder {
    backend: ImageBackend,
    target: OrtTarget,
    processor: ImageProcessor,
    dim: usize,
    name: String,
}

impl ImageEncoder {
    /// Loads `image_model.onnx` and `preprocessor_config.json` from `dir`, or the tower
    /// `strata train retriever` wrote there (`retriever.json`, see [`crate::image_tower`]).
    ///
    /// # Errors
    /// [`ModelError::Artifact`] for missing files or a model whose input is not
    /// `pixel_values [batch, 3, H, W]` at the size the processor produces;
    /// [`ModelError::Config`] for a processor this crate cannot reproduce;
    /// [`ModelError::Onnx`] when the model does not load or run.
    pub fn load(dir: &Path, threads: usize) -> Result<Self, ModelError> {
        Self::load_on(dir, threads, DevicePreference::Auto)
    }

    /// As [`Self::load`], on the device `preference` names (see [`crate::onnx::load_session_on`]).
    ///
    /// # Errors
    /// As [`Self::load`]; [`ModelError::CudaUnavailable`] when CUDA is required and ONNX
    /// Runtime cannot use it.
    pub fn load_on(dir: &Path, threads: usize, preference: DevicePreference) -> Result<Self, ModelError> {
        if ImageTower::is_dir(dir) {
            let device = crate::device::select(preference)?.device();
            let tower = ImageTower::load(dir, device)?;
            let target = match device {
                tch::Device::Cuda(index) => OrtTarget::Cuda(index),
                _ => OrtTarget::Cpu,
            };
            let processor = tower.processor();
            let dim = tower.config().embed_dim as usize;
            return Ok(Self { backend: ImageBackend::Torch(Box::new(tower)), target, processor, dim, name: dir.display().to_string() });
        }
        let model_path = dir.join("image_model.onnx");
        let bytes = std::fs::read(&model_path).map_err(|e| ModelError::Artifact {
            path: model_path.clone(),
            reason: format!("{e}; export a CLIP model with scripts/export/clip_to_onnx.py"),
        })?;
        let processor = ImageProcessor::from_file(&dir.join("preprocessor_config.json"))?;
        let (session, target) = crate::onnx::load_session_on(&bytes, threads, preference)?;
        let wrong = |reason: String| ModelError::Artifact { path: model_path.clone(), reason };
        let input = session.inputs().iter().find(|i| i.name() == "pixel_values").ok_or_else(|| {
            wrong(format!("no input `pixel_values`; inputs are {:?}", session.inputs().iter().map(|i| i.name()).collect::<Vec<_>>()))
        })?;
        let shape: Vec<i64> = input.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
        // Any image comes out of a cropping or square-resizing processor at one size; check
        // the model takes it (dynamic dimensions, -1, take anything).
        let (height, width) = processor.output_size(1000, 1000);
        let fits = |dim: i64, want: usize| dim < 0 || dim == want as i64;
        if shape.len() != 4 || !fits(shape[1], 3) || !fits(shape[2], height) || !fits(shape[3], width) {
            return Err(wrong(format!(
                "`pixel_values` has shape {shape:?}; the processor in preprocessor_config.json makes [batch, 3, {height}, {width}]"
            )));
        }
        if !session.outputs().iter().any(|o| o.name() == "image_embeds") {
            return Err(wrong(format!(
                "no output `image_embeds`; outputs are {:?}",
                session.outputs().iter().map(|o| o.name()).collect::<Vec<_>>()
            )));
        }
        let mut encoder = Self { backend: ImageBackend::Onnx(session), target, processor, dim: 0, name: dir.display().to_string() };
        let probe = RgbImage::new(width, height, vec![127; width * height * 3])?;
        encoder.dim = encoder.encode(&[probe])?.first().map_or(0, Vec::len);
        Ok(encoder)
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Where it was loaded from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// For a tower from `strata train retriever`, the locked text encoder it was trained
    /// against (the index it queries must hold that encoder's embeddings); `None` for a CLIP
    /// tower, whose own text tower goes with it.
    pub fn paired_text_encoder(&self) -> Option<&str> {
        match &self.backend {
            ImageBackend::Torch(tower) => Some(&tower.config().text_encoder),
            ImageBackend::Onnx(_) => None,
        }
    }

    /// Where it runs.
    pub fn target(&self) -> OrtTarget {
        self.target
    }

    /// The preprocessing applied to every image.
    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    /// L2-normalised embeddings of `images`, in order.
    ///
    /// # Errors
    /// [`ModelError::Request`] for an image that cannot be preprocessed, [`ModelError::Onnx`]
    /// when a run fails.
    pub fn encode(&mut self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut out = Vec::with_capacity(images.len());
        for batch in images.chunks(IMAGE_BATCH) {
            let (height, width) = self.processor.output_size(batch[0].width, batch[0].height);
            let mut pixels = Vec::with_capacity(batch.len() * 3 * height * width);
            for (i, image) in batch.iter().enumerate() {
                if self.processor.output_size(image.width, image.height) != (height, width) {
                    return Err(ModelError::Request {
                        reason: format!("image {i} preprocesses to a different size than image 0; this processor does not crop"),
                    });
                }
                pixels.extend(self.processor.apply(image)?);
            }
            let session = match &mut self.backend {
                ImageBackend::Onnx(session) => session,
                ImageBackend::Torch(tower) => {
                    let shape = [batch.len() as i64, 3, height as i64, width as i64];
                    let input = Tensor::from_slice(&pixels).view(shape).to_device(tower.device());
                    let embeddings = tower.embed(&input).to_device(tch::Device::Cpu).contiguous();
                    let flat = Vec::<f32>::try_from(embeddings.view([-1]))
                        .map_err(|e| ModelError::Request { reason: format!("reading the image embeddings: {e}") })?;
                    out.extend(flat.chunks(self.dim.max(1)).map(<[f32]>::to_vec));
                    continue;
                }
            };
            let input = ndarray::Array4::from_shape_vec((batch.len(), 3, height, width), pixels)
                .map_err(|e| ModelError::Request { reason: e.to_string() })?;
            let outputs = session
                .run(ort::inputs!["pixel_values" => TensorRef::from_array_view(&input).map_err(onnx("preparing pixel_values"))?])
                .map_err(onnx("running the image encoder"))?;
            let embeddings = outputs["image_embeds"].try_extract_array::<f32>().map_err(onnx("reading image_embeds"))?;
            push_normalised_rows(&embeddings, &mut out);
        }
        Ok(out)
    }
}
