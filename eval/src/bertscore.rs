//! BERTScore (Zhang et al.) as `bert-score` 0.3.12 computes it, with the encoder run in tch:
//! each sentence is encoded alone (`[CLS] … [SEP]`, up to 512 tokens), token embeddings of
//! the chosen layer are L2-normalised, every candidate token is matched to its most similar
//! reference token (precision) and vice versa (recall), weighted by IDF or uniformly with
//! `[CLS]`/`[SEP]` at zero; F1 is their harmonic mean. With several references each of P, R
//! and F takes its best value separately, as `bert_score.score` does. No baseline rescaling.
//!
//! One quirk of the reference is reproduced on purpose: it scores (candidate, reference) pairs
//! in batches of 64 padded to the batch's longest sentence, and padded positions have
//! similarity 0, so a token whose best real match is negative scores 0 when its partner is
//! shorter than the longest sentence of its batch. Matching it keeps scores equal to what
//! users of `bert-score` (default batch size) report.
//!
//! The encoder is any BERT checkpoint directory (`config.json`, `tokenizer.json`,
//! `model.safetensors`); Strata's default is all-MiniLM-L6-v2, fetched by `scripts/setup.sh`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use model::bert::{BertConfig, BertModel};
use model::tch::{nn, Device, Kind, Tensor};
use model::weights::{self, LoadPolicy};
use tokenizers::Tokenizer;

use crate::rouge::Prf;
use crate::EvalError;

const BATCH: usize = 64;
/// `bert_score.score`'s default `batch_size`, which decides its padding (see the module docs).
const REFERENCE_BATCH: usize = 64;

/// The BERTScore encoder and tokenizer.
#[derive(Debug)]
pub struct BertScorer {
    model: BertModel,
    _vs: nn::VarStore,
    tokenizer: Tokenizer,
    num_layers: Option<usize>,
    special: [u32; 2],
    device: Device,
}

/// Inverse document frequencies of word pieces over a reference corpus.
#[derive(Debug, Clone)]
pub struct Idf {
    counts: HashMap<u32, usize>,
    documents: usize,
}

impl Idf {
    fn weight(&self, token: u32) -> f64 {
        (((self.documents + 1) as f64) / ((self.counts.get(&token).copied().unwrap_or(0) + 1) as f64)).ln()
    }
}

fn input_error(path: &Path, reason: impl std::fmt::Display) -> EvalError {
    EvalError::Input { path: path.to_owned(), reason: reason.to_string() }
}

impl BertScorer {
    /// The default encoder directory (all-MiniLM-L6-v2 under the asset cache).
    pub fn default_dir() -> PathBuf {
        crate::assets_dir().join("all-minilm-l6-v2")
    }

    /// Loads a BERT checkpoint directory; `num_layers` picks the layer whose output is used
    /// (default: the last).
    ///
    /// # Errors
    /// [`EvalError::Input`] for missing or malformed files, [`EvalError::Model`] for weights
    /// that do not fit the config.
    pub fn load(dir: &Path, num_layers: Option<usize>, device: Device) -> Result<Self, EvalError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| input_error(&config_path, format!("cannot read ({e}); run `scripts/setup.sh` to fetch the default encoder")))?;
        let config = BertConfig::from_json(&text)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| input_error(&tokenizer_path, e))?;
        // bert-score encodes each sentence alone, unpadded, truncated at the model's 512.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: 512, ..Default::default() }))
            .map_err(|e| input_error(&tokenizer_path, e))?;
        let id = |t: &str| tokenizer.token_to_id(t).ok_or_else(|| input_error(&tokenizer_path, format!("no `{t}` token")));
        let special = [id("[CLS]")?, id("[SEP]")?];
        let vs = nn::VarStore::new(device);
        let model = BertModel::new(&vs.root(), &config);
        weights::load(&vs, &[dir.join("model.safetensors")], LoadPolicy::Required(&["embeddings.", "encoder."]))?;
        if num_layers.is_some_and(|n| n == 0 || n > model.num_layers()) {
            return Err(input_error(dir, format!("the encoder has {} layers", model.num_layers())));
        }
        Ok(Self { model, _vs: vs, tokenizer, num_layers, special, device })
    }

    fn encode(&self, sentence: &str) -> Result<Vec<u32>, EvalError> {
        let encoding = self.tokenizer.encode(sentence.trim(), true).map_err(|e| input_error(Path::new("tokenizer.json"), e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// IDF weights from reference sentences (document frequency of each word piece).
    ///
    /// # Errors
    /// [`EvalError::Input`] when tokenisation fails.
    pub fn idf(&self, references: &[String]) -> Result<Idf, EvalError> {
        let mut counts = HashMap::new();
        for sentence in references {
            for token in self.encode(sentence)?.into_iter().collect::<HashSet<_>>() {
                *counts.entry(token).or_insert(0) += 1;
            }
        }
        Ok(Idf { counts, documents: references.len() })
    }

    /// Normalised token embeddings `[n, d]` of each distinct sentence, batched.
    fn embed(&self, sentences: &[&str]) -> Result<HashMap<String, (Tensor, Vec<u32>)>, EvalError> {
        let mut unique: Vec<&str> = sentences.iter().copied().collect::<HashSet<_>>().into_iter().collect();
        unique.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = HashMap::with_capacity(unique.len());
        for batch in unique.chunks(BATCH) {
            let ids: Vec<Vec<u32>> = batch.iter().map(|s| self.encode(s)).collect::<Result<_, _>>()?;
            let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
            let mut flat = Vec::with_capacity(batch.len() * longest);
            let mut mask = Vec::with_capacity(batch.len() * longest);
            for row in &ids {
                flat.extend(row.iter().map(|i| i64::from(*i)).chain(std::iter::repeat_n(0, longest - row.len())));
                mask.extend(std::iter::repeat_n(1i64, row.len()).chain(std::iter::repeat_n(0, longest - row.len())));
            }
            let shape = [batch.len() as i64, longest as i64];
            let hidden = model::tch::no_grad(|| {
                let ids = Tensor::from_slice(&flat).view(shape).to_device(self.device);
                let mask = Tensor::from_slice(&mask).view(shape).to_device(self.device);
                let hidden = self.model.forward(&ids, &mask, self.num_layers).to_kind(Kind::Float);
                (&hidden / hidden.norm_scalaropt_dim(2.0, [-1], true)).to_device(Device::Cpu)
            });
            for (i, (sentence, row)) in batch.iter().zip(ids).enumerate() {
                out.insert((*sentence).to_owned(), (hidden.get(i as i64).narrow(0, 0, row.len() as i64), row));
            }
        }
        Ok(out)
    }

    fn weights(&self, ids: &[u32], idf: Option<&Idf>) -> Tensor {
        let weights: Vec<f64> = ids
            .iter()
            .map(|id| match idf {
                Some(idf) => idf.weight(*id),
                None if self.special.contains(id) => 0.0,
                None => 1.0,
            })
            .collect();
        let weights = Tensor::from_slice(&weights).to_kind(Kind::Float);
        &weights / weights.sum(Kind::Float)
    }

    /// Precision, recall and F1 of each candidate against its references.
    ///
    /// # Errors
    /// [`EvalError::Input`] when tokenisation fails.
    pub fn score(&self, candidates: &[String], references: &[Vec<String>], idf: Option<&Idf>) -> Result<Vec<Prf>, EvalError> {
        let sentences: Vec<&str> = candidates.iter().map(String::as_str).chain(references.iter().flatten().map(String::as_str)).collect();
        let embedded = self.embed(&sentences)?;
        // The reference's flattened (candidate, reference) pairs and, per batch of them, the
        // longest tokenised candidate and reference.
        let pairs: Vec<(&str, &str)> =
            candidates.iter().zip(references).flat_map(|(c, refs)| refs.iter().map(move |r| (c.as_str(), r.as_str()))).collect();
        let batch_longest: Vec<(usize, usize)> = pairs
            .chunks(REFERENCE_BATCH)
            .map(|batch| {
                let length = |sentence: &str| embedded[sentence].1.len();
                let longest_hyp = batch.iter().map(|(c, _)| length(c)).max().unwrap_or(0);
                let longest_ref = batch.iter().map(|(_, r)| length(r)).max().unwrap_or(0);
                (longest_hyp, longest_ref)
            })
            .collect();
        let mut scores = Vec::with_capacity(candidates.len());
        let mut pair_index = 0;
        for (candidate, refs) in candidates.iter().zip(references) {
            let (hyp, hyp_ids) = &embedded[candidate.as_str()];
            let hyp_weights = self.weights(hyp_ids, idf);
            let mut best = Prf { precision: f64::NEG_INFINITY, recall: f64::NEG_INFINITY, fmeasure: f64::NEG_INFINITY };
            for reference in refs {
                let (longest_hyp, longest_ref) = batch_longest[pair_index / REFERENCE_BATCH];
                pair_index += 1;
                let (reference_embedding, ref_ids) = &embedded[reference.as_str()];
                let similarity = hyp.matmul(&reference_embedding.transpose(0, 1));
                let mut best_for_hyp = similarity.amax([1], false);
                if ref_ids.len() < longest_ref {
                    best_for_hyp = best_for_hyp.clamp_min(0.0);
                }
                let mut best_for_ref = similarity.amax([0], false);
                if hyp_ids.len() < longest_hyp {
                    best_for_ref = best_for_ref.clamp_min(0.0);
                }
                let precision = (best_for_hyp * &hyp_weights).sum(Kind::Float).double_value(&[]);
                let recall = (best_for_ref * self.weights(ref_ids, idf)).sum(Kind::Float).double_value(&[]);
                // An empty sentence is only `[CLS] [SEP]`: its scores are 0.
                let empty = hyp_ids.len() <= 2 || ref_ids.len() <= 2;
                let (precision, recall) = if empty { (0.0, 0.0) } else { (precision, recall) };
                let f = 2.0 * precision * recall / (precision + recall);
                let f = if f.is_nan() { 0.0 } else { f };
                best.precision = best.precision.max(precision);
                best.recall = best.recall.max(recall);
                best.fmeasure = best.fmeasure.max(f);
            }
            scores.push(if refs.is_empty() { Prf::default() } else { best });
        }
        Ok(scores)
    }
}
