//! The retriever's text encoder through ONNX Runtime: a sentence encoder exported to ONNX
//! (inputs `input_ids`, `attention_mask`; output `sentence_embedding`, L2-normalised), with
//! its `tokenizer.json`. Batches are padded to their longest sentence; outputs come back
//! L2-normalised so cosine similarity is a dot product.

use std::path::{Path, PathBuf};

use ndarray::Array2;
use ort::session::Session;
use ort::value::TensorRef;
use tokenizers::Tokenizer;

use crate::ModelError;

const BATCH: usize = 64;

/// A text encoder session and its tokenizer.
#[derive(Debug)]
pub struct TextEncoder {
    session: Session,
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
    /// `max_tokens` are cut.
    ///
    /// # Errors
    /// [`ModelError::Artifact`] for missing files, [`ModelError::Onnx`] when the model does not
    /// load or lacks the expected inputs and output.
    pub fn load(dir: &Path, max_tokens: usize, threads: usize) -> Result<Self, ModelError> {
        let missing = |file: &str, e: &dyn std::fmt::Display| ModelError::Artifact {
            path: dir.join(file),
            reason: format!("{e}; run `scripts/setup.sh` for the default encoder"),
        };
        let bytes = std::fs::read(dir.join("model.onnx")).map_err(|e| missing("model.onnx", &e))?;
        let session = crate::onnx::load_session(&bytes, threads)?;
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        if !(inputs.contains(&"input_ids") && inputs.contains(&"attention_mask") && outputs.contains(&"sentence_embedding")) {
            return Err(ModelError::Artifact {
                path: dir.join("model.onnx"),
                reason: format!(
                    "expected inputs `input_ids`, `attention_mask` and output `sentence_embedding`; found inputs {inputs:?}, outputs {outputs:?}"
                ),
            });
        }
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| missing("tokenizer.json", &e))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| ModelError::Tokenizer { reason: e.to_string() })?;
        let mut encoder = Self { session, tokenizer, dim: 0, name: dir.display().to_string() };
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
            for row in embeddings.outer_iter() {
                let v: Vec<f32> = row.iter().copied().collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                out.push(v.into_iter().map(|x| x / norm).collect());
            }
        }
        Ok(out)
    }
}
