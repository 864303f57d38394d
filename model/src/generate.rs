//! Autoregressive generation over the Qwen2 decoder: a batch of left-padded prompts (any mix
//! of token and image/semantic embeddings) is prefilled once, then decoded token by token from
//! the KV cache, greedily or by nucleus sampling, until each row emits a stop token or reaches
//! `max_new_tokens`. Every answer carries its tokens' log-probabilities and a score.
//!
//! Left padding keeps each row's new token at the same column; RoPE positions count from each
//! row's first real token and padded keys are masked, so a row's output does not depend on
//! what it is batched with.

use tch::{Kind, Tensor};

use crate::experts::TokenRole;
use crate::qwen2::{DecoderInput, Qwen2ForCausalLM};
use crate::ModelError;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// Nucleus sampling: from the smallest set of tokens whose probability reaches `top_p`,
    /// after dividing logits by `temperature`.
    TopP {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Probability mass kept, in (0, 1].
        top_p: f64,
    },
}

/// Generation limits and sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Tokens generated at most per row (stop token excluded).
    pub max_new_tokens: i64,
    /// Greedy or sampled.
    pub sampling: Sampling,
    /// Tokens that end a row (not included in its output).
    pub stop_tokens: Vec<i64>,
    /// Seed for sampling, for reproducible runs (each call has its own generator, so other
    /// threads using libtorch's global one do not disturb it).
    pub seed: Option<u64>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self { max_new_tokens: 64, sampling: Sampling::Greedy, stop_tokens: Vec::new(), seed: None }
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It emitted a stop token.
    Stop,
    /// It reached `max_new_tokens`.
    Length,
}

/// One row's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Generated token ids, stop token excluded.
    pub tokens: Vec<i64>,
    /// Log-probability of each generated token under the model (temperature 1), and of the
    /// stop token last when the row stopped.
    pub logprobs: Vec<f64>,
    /// Why generation ended.
    pub finish: FinishReason,
}

impl Generation {
    /// Geometric-mean token probability, `exp(mean log p)`, in (0, 1]; 1 for an empty answer.
    pub fn score(&self) -> f64 {
        if self.logprobs.is_empty() {
            return 1.0;
        }
        (self.logprobs.iter().sum::<f64>() / self.logprobs.len() as f64).exp()
    }
}

/// Left-padded prompts ready for the decoder.
#[derive(Debug)]
pub struct PromptBatch {
    /// `[B, T, d]` (padding rows are zeros).
    pub embeds: Tensor,
    /// `[B, T]` role codes.
    pub roles: Tensor,
    /// `[B, T]`, 1 for real tokens.
    pub key_mask: Tensor,
    /// `[B, T]` RoPE positions, 0 at each row's first real token.
    pub positions: Tensor,
}

impl PromptBatch {
    /// Left-pads rows of `(embeddings [len, d], role codes [len])`.
    ///
    /// # Errors
    /// [`ModelError::Request`] for an empty batch or an empty row.
    pub fn left_padded(rows: &[(Tensor, Tensor)]) -> Result<Self, ModelError> {
        let longest = rows.iter().map(|(e, _)| e.size()[0]).max().ok_or_else(|| ModelError::Request { reason: "empty batch".into() })?;
        if rows.iter().any(|(e, _)| e.size()[0] == 0) {
            return Err(ModelError::Request { reason: "a prompt has no tokens".into() });
        }
        let (mut embeds, mut roles, mut masks) = (Vec::new(), Vec::new(), Vec::new());
        for (e, r) in rows {
            let (len, d) = (e.size()[0], e.size()[1]);
            let pad = longest - len;
            let opts = (Kind::Int64, e.device());
            embeds.push(Tensor::cat(&[&Tensor::zeros([pad, d], (e.kind(), e.device())), e], 0));
            roles.push(Tensor::cat(&[&Tensor::full([pad], TokenRole::Text.code(), opts), r], 0));
            masks.push(Tensor::cat(&[Tensor::zeros([pad], opts), Tensor::ones([len], opts)], 0));
        }
        let key_mask = Tensor::stack(&masks, 0);
        let positions = (key_mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
        Ok(Self { embeds: Tensor::stack(&embeds, 0), roles: Tensor::stack(&roles, 0), key_mask, positions })
    }

    /// Text-only prompts from token ids.
    ///
    /// # Errors
    /// As [`PromptBatch::left_padded`].
    pub fn from_token_ids(llm: &Qwen2ForCausalLM, prompts: &[Vec<i64>], device: tch::Device) -> Result<Self, ModelError> {
        let rows: Vec<(Tensor, Tensor)> = prompts
            .iter()
            .map(|ids| {
                let ids = Tensor::from_slice(ids).to_device(device);
                (llm.embed(&ids), Tensor::full([ids.size()[0]], TokenRole::Text.code(), (Kind::Int64, device)))
            })
            .collect();
        Self::left_padded(&rows)
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.embeds.size()[0] as usize
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// SplitMix64: a tiny, well-distributed generator, owned by one `generate` call.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn choose(logits: &Tensor, sampling: Sampling, rng: &mut SplitMix64) -> Tensor {
    match sampling {
        Sampling::Greedy => logits.argmax(-1, false),
        Sampling::TopP { temperature, top_p } => {
            let probs = (logits / temperature).softmax(-1, Kind::Float);
            let (sorted, order) = probs.sort(-1, true);
            // Drop a token when the mass before it already reaches top_p (the first always stays).
            let before = sorted.cumsum(-1, Kind::Float) - &sorted;
            let kept = sorted.masked_fill(&before.ge(top_p), 0.0).to_device(tch::Device::Cpu);
            let rows = kept.size()[0];
            let picked: Vec<i64> = (0..rows)
                .map(|row| {
                    let weights = Vec::<f32>::try_from(kept.get(row)).unwrap_or_default();
                    let mut target = rng.next_f64() * weights.iter().map(|w| f64::from(*w)).sum::<f64>();
                    let mut index = 0;
                    for (i, w) in weights.iter().enumerate() {
                        if *w > 0.0 {
                            index = i;
                            target -= f64::from(*w);
                            if target <= 0.0 {
                                break;
                            }
                        }
                    }
                    index as i64
                })
                .collect();
            let picked = Tensor::from_slice(&picked).to_device(order.device()).unsqueeze(1);
            order.gather(-1, &picked, false).squeeze_dim(-1)
        }
    }
}

/// Generates a continuation for every prompt row.
///
/// # Errors
/// [`ModelError::Request`] for an invalid configuration.
pub fn generate(llm: &mut Qwen2ForCausalLM, prompt: &PromptBatch, config: &GenerationConfig) -> Result<Vec<Generation>, ModelError> {
    if let Sampling::TopP { temperature, top_p } = config.sampling {
        if temperature <= 0.0 || !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ModelError::Request { reason: format!("temperature {temperature} must be > 0 and top_p {top_p} in (0, 1]") });
        }
    }
    let seed = config
        .seed
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    let mut rng = SplitMix64(seed);
    let batch = prompt.len();
    let device = prompt.embeds.device();
    let mut outputs: Vec<Generation> =
        (0..batch).map(|_| Generation { tokens: Vec::new(), logprobs: Vec::new(), finish: FinishReason::Length }).collect();
    let mut active = vec![true; batch];
    if config.max_new_tokens <= 0 {
        return Ok(outputs);
    }
    tch::no_grad(|| {
        llm.clear_kv_cache();
        let hidden = llm.forward_embeds(&DecoderInput {
            embeds: &prompt.embeds,
            positions: &prompt.positions,
            roles: Some(&prompt.roles),
            key_mask: Some(&prompt.key_mask),
            train: false,
        });
        let mut logits = llm.logits(&hidden.select(1, -1));
        let mut key_mask = prompt.key_mask.shallow_clone();
        let mut positions = prompt.positions.select(1, -1) + 1;
        for step in 0..config.max_new_tokens {
            let logits32 = logits.to_kind(Kind::Float);
            let next = choose(&logits32, config.sampling, &mut rng);
            let chosen = logits32.log_softmax(-1, Kind::Float).gather(1, &next.unsqueeze(1), false).squeeze_dim(1);
            let next_ids = Vec::<i64>::try_from(&next.to_device(tch::Device::Cpu)).unwrap_or_default();
            let chosen = Vec::<f64>::try_from(&chosen.to_kind(Kind::Double).to_device(tch::Device::Cpu)).unwrap_or_default();
            for (row, (token, logprob)) in next_ids.iter().zip(&chosen).enumerate() {
                if !active[row] {
                    continue;
                }
                outputs[row].logprobs.push(*logprob);
                if config.stop_tokens.contains(token) {
                    outputs[row].finish = FinishReason::Stop;
                    active[row] = false;
                } else {
                    outputs[row].tokens.push(*token);
                }
            }
            if !active.iter().any(|a| *a) || step + 1 == config.max_new_tokens {
                break;
            }
            let embeds = llm.embed(&next.unsqueeze(1));
            key_mask = Tensor::cat(&[&key_mask, &Tensor::ones([batch as i64, 1], (Kind::Int64, device))], 1);
            let hidden = llm.forward_embeds(&DecoderInput {
                embeds: &embeds,
                positions: &positions.unsqueeze(1),
                roles: None,
                key_mask: Some(&key_mask),
                train: false,
            });
            logits = llm.logits(&hidden.select(1, 0));
            positions += 1;
        }
        llm.clear_kv_cache();
    });
    Ok(outputs)
}
