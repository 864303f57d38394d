//! Autoregressive generation over the Qwen2 decoder: a batch of left-padded prompts (any mix
//! of token and image/semantic embeddings) is prefilled, then decoded token by token from the
//! KV cache, greedily or by nucleus sampling, until each row emits a stop token or reaches
//! `max_new_tokens`. Every answer carries its tokens' log-probabilities and a score.
//!
//! Left padding keeps each row's new token at the same column; RoPE positions count from each
//! row's first real token and padded keys are masked, so a row's output does not depend on
//! what it is batched with. That is what lets the decoding batch be continuous
//! ([`GenerationConfig::slots`]): a row that finishes leaves at once, and waiting prompts are
//! prefilled and join the running rows between two decode steps.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use crate::experts::TokenRole;
use crate::qwen2::{DecoderInput, Qwen2ForCausalLM};
use crate::tasks::grammar::{BoxState, BoxVocabulary};
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
    /// Rows decoded at once at most (continuous batching: a finished row's slot goes to the
    /// next waiting prompt at the next step); `None`: every row at once.
    pub slots: Option<usize>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self { max_new_tokens: 64, sampling: Sampling::Greedy, stop_tokens: Vec::new(), seed: None, slots: None }
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
    /// As [`PromptBatch::left_padded`]; [`ModelError::Request`] for an id outside the LLM's
    /// vocabulary.
    pub fn from_token_ids(llm: &Qwen2ForCausalLM, prompts: &[Vec<i64>], device: tch::Device) -> Result<Self, ModelError> {
        let vocab = llm.vocab_size();
        if let Some(bad) = prompts.iter().flatten().find(|id| !(0..vocab).contains(*id)) {
            return Err(ModelError::Request { reason: format!("token id {bad} is outside the vocabulary (0..{vocab})") });
        }
        let rows: Vec<(Tensor, Tensor)> = prompts
            .iter()
            .map(|ids| {
                let ids = Tensor::from_slice(ids).to_device(device);
                (llm.embed(&ids), Tensor::full([ids.size()[0]], TokenRole::Text.code(), (Kind::Int64, device)))
            })
            .collect();
        Self::left_padded(&rows)
    }

    /// The rows `rows` (indices into this batch, in that order), without the leading
    /// columns that are padding in every one of them.
    ///
    /// # Errors
    /// [`ModelError::Request`] for an index outside the batch; [`ModelError::Torch`] when
    /// the key mask cannot be read.
    pub fn select(&self, rows: &[usize]) -> Result<Self, ModelError> {
        if let Some(bad) = rows.iter().find(|&&row| row >= self.len()) {
            return Err(ModelError::Request { reason: format!("row {bad} of a batch of {}", self.len()) });
        }
        let index = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>()).to_device(self.embeds.device());
        let key_mask = self.key_mask.index_select(0, &index);
        let leading = leading_padding(&key_mask)?;
        let keep = key_mask.size()[1] - leading;
        Ok(Self {
            embeds: self.embeds.index_select(0, &index).narrow(1, leading, keep),
            roles: self.roles.index_select(0, &index).narrow(1, leading, keep),
            positions: self.positions.index_select(0, &index).narrow(1, leading, keep),
            key_mask: key_mask.narrow(1, leading, keep),
        })
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

fn choose(logits: &Tensor, sampling: Sampling, rng: &mut SplitMix64) -> Result<Tensor, ModelError> {
    match sampling {
        Sampling::Greedy => Ok(logits.argmax(-1, false)),
        Sampling::TopP { temperature, top_p } => {
            let probs = (logits / temperature).softmax(-1, Kind::Float);
            let (sorted, order) = probs.sort(-1, true);
            // Drop a token when the mass before it already reaches top_p (the first always stays).
            let before = sorted.cumsum(-1, Kind::Float) - &sorted;
            let kept = sorted.masked_fill(&before.ge(top_p), 0.0).to_device(tch::Device::Cpu);
            let rows = kept.size()[0];
            let mut picked = Vec::with_capacity(usize::try_from(rows).unwrap_or(0));
            for row in 0..rows {
                let weights = read_back::<f32>(&kept.get(row), "the nucleus probabilities")?;
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
                picked.push(index as i64);
            }
            let picked = Tensor::from_slice(&picked).to_device(order.device()).unsqueeze(1);
            Ok(order.gather(-1, &picked, false).squeeze_dim(-1))
        }
    }
}

/// Copies a 1-D tensor into a `Vec`, naming `what` was read when libtorch refuses (wrong
/// rank, a kind it cannot convert, a device error) — an empty answer must never stand in
/// for a failed read.
///
/// # Errors
/// [`ModelError::Torch`] with the action "reading {what} back from the device".
pub(crate) fn read_back<T: tch::kind::Element + Copy>(tensor: &Tensor, what: &str) -> Result<Vec<T>, ModelError> {
    Vec::<T>::try_from(tensor).map_err(|source| ModelError::Torch { action: format!("reading {what} back from the device"), source })
}

/// Prompts whose rows begin with a shared part: the chat prefix and the image tokens, the
/// same for every task asked of one tile. Row `i` is `prefixes[prefix_of[i]]` followed by
/// `tails[i]`. Generation prefills each distinct prefix once and copies its KV-cache rows to
/// the rows that share it (prefix caching, as vLLM's automatic prefix caching does for
/// requests with a common start), so a tile with four tasks pays for its image tokens once.
/// The answers are those of the concatenated prompts: RoPE positions continue from each
/// prefix's length and padding (left in both parts) is masked out.
#[derive(Debug)]
pub struct SharedPrefixBatch {
    /// `U` left-padded prefixes.
    pub prefixes: PromptBatch,
    /// `B` left-padded tails, one per row.
    pub tails: PromptBatch,
    /// `[B]`, which prefix each row starts with (indices into `prefixes`).
    pub prefix_of: Vec<i64>,
}

impl SharedPrefixBatch {
    /// The rows `rows` (ascending indices into the tails) with the prefixes they continue,
    /// renumbered: the prompt a continuous batch admits when those rows' slots come.
    ///
    /// # Errors
    /// As [`PromptBatch::select`].
    pub fn select(&self, rows: &[usize]) -> Result<Self, ModelError> {
        let mut used: Vec<usize> = Vec::new();
        let mut prefix_of = Vec::with_capacity(rows.len());
        for &row in rows {
            let prefix = self.prefix_of.get(row).and_then(|p| usize::try_from(*p).ok()).ok_or_else(|| ModelError::Request {
                reason: format!("row {row} of a batch of {} names no prefix", self.prefix_of.len()),
            })?;
            let local = used.iter().position(|&u| u == prefix).unwrap_or_else(|| {
                used.push(prefix);
                used.len() - 1
            });
            prefix_of.push(local as i64);
        }
        Ok(Self { prefixes: self.prefixes.select(&used)?, tails: self.tails.select(rows)?, prefix_of })
    }

    /// Rows in the batch (tails).
    pub fn len(&self) -> usize {
        self.tails.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.tails.is_empty()
    }
}

/// What one [`generate_with_stats`] call computed, for telemetry and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerationStats {
    /// Rows in the shared-prefix forward ([`generate_shared_prefix`]; 0 without one).
    pub prefix_rows: usize,
    /// Rows in the prefill forward (the batch size).
    pub prefill_rows: usize,
    /// Decode forwards run (one new token for every row still generating).
    pub decode_steps: usize,
    /// Row-steps decoded: the rows of every decode forward, summed. A row leaves the batch as
    /// soon as it finishes, so this is `Σ (logprobs.len() − 1)` over the rows (each row's
    /// first token comes from the prefill), never `decode_steps × batch`.
    pub decode_row_steps: usize,
    /// Rows the decoding batch had room for: `config.slots`, or the batch size without a limit
    /// (`decode_row_steps / (decode_steps × slots)` is the slot occupancy).
    pub slots: usize,
    /// Prefill forwards run: 1 when every row starts at once, more when waiting rows were
    /// admitted as others finished.
    pub prefills: usize,
}

/// Generates a continuation for every prompt row (see [`generate_with_stats`]).
///
/// # Errors
/// As [`generate_with_stats`].
pub fn generate(llm: &mut Qwen2ForCausalLM, prompt: &PromptBatch, config: &GenerationConfig) -> Result<Vec<Generation>, ModelError> {
    generate_with_stats(llm, prompt, config).map(|(generations, _)| generations)
}

/// Generates a continuation for every prompt row: a prefill, then one decode forward per new
/// token over the rows still generating. A row that stops (stop token) leaves the batch — its
/// KV-cache rows, key mask and position go — so no decode step runs for a finished row; a
/// row's tokens do not depend on when the others finish. With `config.slots`, at most that
/// many rows decode at once and the others wait, in order, for a free slot (continuous
/// batching); without, every row is prefilled at once. The KV cache is empty again on return.
///
/// Sampling draws from one generator per call, seeded by `config.seed`: the same seed, prompt
/// and model give the same answers.
///
/// # Errors
/// [`ModelError::Request`] for an invalid configuration (0 slots, a bad temperature or
/// `top_p`); [`ModelError::Torch`] when a chosen token cannot be read back from the device.
pub fn generate_with_stats(
    llm: &mut Qwen2ForCausalLM,
    prompt: &PromptBatch,
    config: &GenerationConfig,
) -> Result<(Vec<Generation>, GenerationStats), ModelError> {
    let groups = (0..prompt.len()).map(|row| vec![row]).collect();
    run(llm, prompt.len(), config, None, groups, |llm, rows, stats| {
        let mut selected = None;
        let prompt = admitted(prompt, prompt.len(), rows, &mut selected, PromptBatch::select)?;
        stats.prefill_rows += prompt.len();
        let hidden = llm.forward_embeds(&DecoderInput {
            embeds: &prompt.embeds,
            positions: &prompt.positions,
            roles: Some(&prompt.roles),
            key_mask: Some(&prompt.key_mask),
            train: false,
        });
        Ok(Prefilled {
            logits: llm.logits(&hidden.select(1, -1)),
            key_mask: prompt.key_mask.shallow_clone(),
            next_positions: prompt.positions.select(1, -1) + 1,
        })
    })
}

/// Generates a continuation for every row of a [`SharedPrefixBatch`]: one forward over the
/// distinct prefixes, their KV-cache rows copied to the rows sharing them, one forward over
/// the tails, then decoding as [`generate_with_stats`] does. The answers equal those of
/// [`generate_with_stats`] on the concatenated prompts (up to floating-point summation order).
/// Under `config.slots` the rows that share a prefix (a tile's tasks) are admitted together,
/// so each prefix is still computed once.
///
/// # Errors
/// [`ModelError::Request`] for an invalid configuration or a `prefix_of` that does not fit
/// the batch; [`ModelError::Torch`] as [`generate_with_stats`].
pub fn generate_shared_prefix(
    llm: &mut Qwen2ForCausalLM,
    prompt: &SharedPrefixBatch,
    config: &GenerationConfig,
) -> Result<(Vec<Generation>, GenerationStats), ModelError> {
    generate_shared_prefix_constrained(llm, prompt, config, None)
}

/// Rows whose answers must follow the box grammar ([`crate::tasks::grammar`]).
#[derive(Debug, Clone, Copy)]
pub struct BoxConstraint<'a> {
    /// The tokens that can write a box answer.
    pub vocabulary: &'a BoxVocabulary,
    /// One flag per prompt row: constrained or free text.
    pub rows: &'a [bool],
}

/// As [`generate_shared_prefix`], with the rows `constraint` flags generated under the box
/// grammar: at every step their tokens that would leave the grammar are masked out before
/// the choice, and stopping is allowed only between boxes. The log-probabilities recorded are
/// the model's own (unmasked), so an answer's score still says how sure the model was.
///
/// # Errors
/// As [`generate_shared_prefix`], and [`ModelError::Request`] when `constraint.rows` does
/// not have one flag per row.
pub fn generate_shared_prefix_constrained(
    llm: &mut Qwen2ForCausalLM,
    prompt: &SharedPrefixBatch,
    config: &GenerationConfig,
    constraint: Option<BoxConstraint<'_>>,
) -> Result<(Vec<Generation>, GenerationStats), ModelError> {
    if let Some(constraint) = constraint.filter(|c| c.rows.len() != prompt.len()) {
        return Err(ModelError::Request {
            reason: format!("{} constraint flags for {} rows: give one per row", constraint.rows.len(), prompt.len()),
        });
    }
    let prefixes = prompt.prefixes.len() as i64;
    if prompt.prefix_of.len() != prompt.tails.len() || prompt.prefix_of.iter().any(|p| !(0..prefixes).contains(p)) {
        return Err(ModelError::Request {
            reason: format!(
                "{} tails name prefixes {:?} of {prefixes}: every row must name one of the batch's prefixes",
                prompt.tails.len(),
                prompt.prefix_of
            ),
        });
    }
    // A tile's tasks are admitted together: they share the prefix's forward.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of_prefix: HashMap<i64, usize> = HashMap::new();
    for (row, prefix) in prompt.prefix_of.iter().enumerate() {
        let group = *group_of_prefix.entry(*prefix).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(row);
    }
    run(llm, prompt.len(), config, constraint, groups, |llm, rows, stats| {
        let mut selected = None;
        let prompt = admitted(prompt, prompt.len(), rows, &mut selected, SharedPrefixBatch::select)?;
        let (prefixes, tails) = (&prompt.prefixes, &prompt.tails);
        let device = tails.embeds.device();
        stats.prefix_rows += prefixes.len();
        stats.prefill_rows += tails.len();
        // Equal-length prefixes (the usual case: one system prompt, one image size) have no
        // padding, and libtorch's fused causal kernel needs no mask tensor.
        let padded = prefixes
            .key_mask
            .min()
            .f_int64_value(&[])
            .map_err(|source| ModelError::Torch { action: "reading the prefixes' key mask".into(), source })?
            == 0;
        // Only the cache matters here: no row's next token comes from a prefix.
        let _ = llm.forward_embeds(&DecoderInput {
            embeds: &prefixes.embeds,
            positions: &prefixes.positions,
            roles: Some(&prefixes.roles),
            key_mask: padded.then_some(&prefixes.key_mask),
            train: false,
        });
        let index = Tensor::from_slice(&prompt.prefix_of).to_device(device);
        llm.select_rows(&index);
        let prefix_mask = prefixes.key_mask.index_select(0, &index);
        let key_mask = Tensor::cat(&[&prefix_mask, &tails.key_mask], 1);
        // A tail's positions continue from its prefix's real length.
        let positions = &tails.positions + prefix_mask.sum_dim_intlist(1, true, Kind::Int64);
        let hidden = llm.forward_embeds(&DecoderInput {
            embeds: &tails.embeds,
            positions: &positions,
            roles: Some(&tails.roles),
            key_mask: Some(&key_mask),
            train: false,
        });
        Ok(Prefilled { logits: llm.logits(&hidden.select(1, -1)), key_mask, next_positions: positions.select(1, -1) + 1 })
    })
}

/// The prompt of the admitted `rows`: the whole batch when they are all of it (no copy: the
/// path without slots), else `select(whole, rows)`, kept in `selected`.
fn admitted<'p, P>(
    whole: &'p P,
    len: usize,
    rows: &[usize],
    selected: &'p mut Option<P>,
    select: impl FnOnce(&P, &[usize]) -> Result<P, ModelError>,
) -> Result<&'p P, ModelError> {
    if rows.len() == len {
        return Ok(whole);
    }
    Ok(selected.insert(select(whole, rows)?))
}

/// What a prefill leaves for decoding, for the rows it admitted (in the order given).
struct Prefilled {
    /// `[n, vocab]`, the next-token logits of every row.
    logits: Tensor,
    /// `[n, cached]`, which cached keys are real.
    key_mask: Tensor,
    /// `[n]`, the RoPE position of each row's next token.
    next_positions: Tensor,
}

/// The rows decoding together: batch position `i` is prompt row `rows[i]`; the KV cache
/// (held by the model) has the same rows in the same order.
struct Running {
    rows: Vec<usize>,
    logits: Tensor,
    key_mask: Tensor,
    positions: Tensor,
}

impl Running {
    /// Adds newly prefilled rows after the running ones, left-padding the shorter key mask
    /// with masked columns as [`Qwen2ForCausalLM::prepend_kv_cache`] pads the cache.
    fn join(self, fresh: Prefilled, rows: Vec<usize>) -> Self {
        let len = self.key_mask.size()[1].max(fresh.key_mask.size()[1]);
        let pad = |mask: &Tensor| mask.constant_pad_nd([len - mask.size()[1], 0]);
        let mut all = self.rows;
        all.extend(rows);
        Self {
            rows: all,
            logits: Tensor::cat(&[&self.logits, &fresh.logits], 0),
            key_mask: Tensor::cat(&[pad(&self.key_mask), pad(&fresh.key_mask)], 0),
            positions: Tensor::cat(&[&self.positions, &fresh.next_positions], 0),
        }
    }
}

/// Validates the configuration, runs the scheduler without gradients, and clears the KV
/// cache whatever happens. `groups` lists the prompt rows that must be admitted together
/// (the tasks of one tile share a prefix), in admission order; `prefill` computes the first
/// logits of the rows it is given (ascending) and leaves their KV cache in the model.
fn run(
    llm: &mut Qwen2ForCausalLM,
    batch: usize,
    config: &GenerationConfig,
    constraint: Option<BoxConstraint<'_>>,
    groups: Vec<Vec<usize>>,
    prefill: impl FnMut(&mut Qwen2ForCausalLM, &[usize], &mut GenerationStats) -> Result<Prefilled, ModelError>,
) -> Result<(Vec<Generation>, GenerationStats), ModelError> {
    if let Sampling::TopP { temperature, top_p } = config.sampling {
        if temperature <= 0.0 || !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ModelError::Request { reason: format!("temperature {temperature} must be > 0 and top_p {top_p} in (0, 1]") });
        }
    }
    if config.slots == Some(0) {
        return Err(ModelError::Request { reason: "0 decoding slots: give at least 1, or none for every row at once".into() });
    }
    let seed = config
        .seed
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    let mut rng = SplitMix64(seed);
    let mut outputs: Vec<Generation> =
        (0..batch).map(|_| Generation { tokens: Vec::new(), logprobs: Vec::new(), finish: FinishReason::Length }).collect();
    let mut stats = GenerationStats { slots: config.slots.unwrap_or(batch).min(batch), ..GenerationStats::default() };
    if config.max_new_tokens <= 0 || batch == 0 {
        return Ok((outputs, stats));
    }
    let result = tch::no_grad(|| {
        llm.clear_kv_cache();
        let mut scheduler = Scheduler { config, constraint, rng: &mut rng, outputs: &mut outputs, stats: &mut stats };
        scheduler.run(llm, groups, prefill)
    });
    // Also after a failure: the next call must not continue a half-built cache.
    llm.clear_kv_cache();
    result?;
    Ok((outputs, stats))
}

/// Continuous batching: at most `config.slots` rows decode at once; whenever rows finish,
/// the next waiting groups that fit are prefilled and join the running batch before the next
/// step, so the batch stays full until the queue runs dry (the scheduling of vLLM and
/// SGLang, at the granularity of a tile's tasks). A row's tokens do not depend on when it
/// joined or who it decoded beside: each keeps its own RoPE positions, and padding keys —
/// on the left of the shorter rows when batches merge — are masked.
struct Scheduler<'a, 'c> {
    config: &'a GenerationConfig,
    constraint: Option<BoxConstraint<'c>>,
    rng: &'a mut SplitMix64,
    outputs: &'a mut [Generation],
    stats: &'a mut GenerationStats,
}

impl Scheduler<'_, '_> {
    fn run(
        &mut self,
        llm: &mut Qwen2ForCausalLM,
        groups: Vec<Vec<usize>>,
        mut prefill: impl FnMut(&mut Qwen2ForCausalLM, &[usize], &mut GenerationStats) -> Result<Prefilled, ModelError>,
    ) -> Result<(), ModelError> {
        let (config, constraint) = (self.config, self.constraint);
        let slots = config.slots.unwrap_or(usize::MAX);
        let mut waiting: std::collections::VecDeque<Vec<usize>> = groups.into();
        // The grammar state of each constrained prompt row.
        let mut grammar: Vec<Option<BoxState>> = (0..self.outputs.len())
            .map(|row| constraint.filter(|c| c.rows[row] && !c.vocabulary.is_empty()).map(|_| BoxState::START))
            .collect();
        let mut running: Option<Running> = None;
        loop {
            // Admission: whole groups, oldest first, while they fit the free slots; a group
            // larger than every slot runs alone rather than never.
            let in_flight = running.as_ref().map_or(0, |r| r.rows.len());
            let mut admitted: Vec<usize> = Vec::new();
            while let Some(group) = waiting.front() {
                let fits = in_flight + admitted.len() + group.len() <= slots;
                if !fits && (in_flight > 0 || !admitted.is_empty()) {
                    break;
                }
                admitted.extend(waiting.pop_front().unwrap_or_default());
            }
            if !admitted.is_empty() {
                admitted.sort_unstable();
                let earlier = llm.take_kv_cache();
                let fresh = prefill(llm, &admitted, self.stats)?;
                self.stats.prefills += 1;
                running = Some(match (running.take(), earlier) {
                    (Some(old), Some(cache)) => {
                        llm.prepend_kv_cache(cache)?;
                        old.join(fresh, admitted)
                    }
                    _ => Running { rows: admitted, logits: fresh.logits, key_mask: fresh.key_mask, positions: fresh.next_positions },
                });
            }
            let Some(state) = running.take() else { return Ok(()) };
            running = self.step(llm, state, &mut grammar)?;
        }
    }

    /// Chooses every running row's next token, lets finished rows go (their cache rows too),
    /// and runs one decode forward for the others. `None` when no row goes on.
    fn step(
        &mut self,
        llm: &mut Qwen2ForCausalLM,
        state: Running,
        grammar: &mut [Option<BoxState>],
    ) -> Result<Option<Running>, ModelError> {
        let (config, constraint) = (self.config, self.constraint);
        let Running { mut rows, logits, mut key_mask, mut positions } = state;
        let device = logits.device();
        let logits32 = logits.to_kind(Kind::Float);
        let masked = match constraint {
            Some(constraint) if rows.iter().any(|&row| grammar[row].is_some()) => {
                &logits32 + grammar_mask(constraint.vocabulary, &rows, grammar, &config.stop_tokens, &logits32)?
            }
            _ => logits32.shallow_clone(),
        };
        let mut next = choose(&masked, config.sampling, self.rng)?;
        let chosen = logits32.log_softmax(-1, Kind::Float).gather(1, &next.unsqueeze(1), false).squeeze_dim(1);
        let next_ids = read_back::<i64>(&next.to_device(tch::Device::Cpu), "the chosen token ids")?;
        let chosen = read_back::<f64>(&chosen.to_kind(Kind::Double).to_device(tch::Device::Cpu), "the chosen tokens' log-probabilities")?;
        // Batch positions of the rows that go on.
        let mut keep: Vec<i64> = Vec::with_capacity(rows.len());
        for (i, (&row, (token, logprob))) in rows.iter().zip(next_ids.iter().zip(&chosen)).enumerate() {
            let output = &mut self.outputs[row];
            output.logprobs.push(*logprob);
            if config.stop_tokens.contains(token) {
                output.finish = FinishReason::Stop;
                continue;
            }
            output.tokens.push(*token);
            if let (Some(state), Some(constraint)) = (grammar[row], constraint) {
                // Off the grammar only when the mask was lifted (no token could continue).
                grammar[row] = constraint.vocabulary.text(*token).and_then(|text| state.advance_str(text));
            }
            if (output.tokens.len() as i64) < config.max_new_tokens {
                keep.push(i as i64);
            }
        }
        if keep.is_empty() {
            llm.clear_kv_cache();
            return Ok(None);
        }
        if keep.len() < rows.len() {
            let index = Tensor::from_slice(&keep).to_device(device);
            llm.select_rows(&index);
            key_mask = key_mask.index_select(0, &index);
            positions = positions.index_select(0, &index);
            next = next.index_select(0, &index);
            rows = keep.iter().map(|&i| rows[i as usize]).collect();
            // Columns that are padding for every remaining row (the departed rows were the
            // longest) cost attention in every later step: drop them.
            let leading = leading_padding(&key_mask)?;
            if leading > 0 {
                llm.drop_leading_kv(leading);
                key_mask = key_mask.narrow(1, leading, key_mask.size()[1] - leading);
            }
        }
        let embeds = llm.embed(&next.unsqueeze(1));
        key_mask = Tensor::cat(&[&key_mask, &Tensor::ones([rows.len() as i64, 1], (Kind::Int64, device))], 1);
        let hidden = llm.forward_embeds(&DecoderInput {
            embeds: &embeds,
            positions: &positions.unsqueeze(1),
            roles: None,
            key_mask: Some(&key_mask),
            train: false,
        });
        self.stats.decode_steps += 1;
        self.stats.decode_row_steps += rows.len();
        let logits = llm.logits(&hidden.select(1, 0));
        Ok(Some(Running { rows, logits, key_mask, positions: positions + 1 }))
    }
}

/// Columns at the start of `key_mask` `[B, T]` that no row attends (0 everywhere).
fn leading_padding(key_mask: &Tensor) -> Result<i64, ModelError> {
    let columns = key_mask.size()[1];
    let used = key_mask.sum_dim_intlist(0, false, Kind::Int64).gt(0).to_kind(Kind::Int64);
    // argmax returns the first maximal column: the first one in use (0 when none is).
    let first = used
        .argmax(0, false)
        .f_int64_value(&[])
        .map_err(|source| ModelError::Torch { action: "reading the key mask's leading padding".into(), source })?;
    Ok(first.clamp(0, columns))
}

/// `[rows, vocab]`: 0 where a row may choose the token, −∞ where the grammar forbids it (rows
/// without a grammar: 0 everywhere). A constrained row for which no token could continue is
/// left free rather than forced onto a forbidden one.
fn grammar_mask(
    vocabulary: &BoxVocabulary,
    rows: &[usize],
    grammar: &[Option<BoxState>],
    stop_tokens: &[i64],
    logits: &Tensor,
) -> Result<Tensor, ModelError> {
    let vocab = usize::try_from(logits.size().last().copied().unwrap_or(0)).unwrap_or(0);
    let mut mask = vec![0f32; rows.len() * vocab];
    for (i, &row) in rows.iter().enumerate() {
        let Some(state) = grammar[row] else { continue };
        let (mut allowed, may_stop) = vocabulary.allowed(state);
        if may_stop {
            allowed.extend_from_slice(stop_tokens);
        }
        allowed.retain(|&id| usize::try_from(id).is_ok_and(|id| id < vocab));
        if allowed.is_empty() {
            continue;
        }
        let line = &mut mask[i * vocab..(i + 1) * vocab];
        line.fill(f32::NEG_INFINITY);
        for id in allowed {
            line[id as usize] = 0.0;
        }
    }
    Tensor::f_from_slice(&mask)
        .and_then(|t| t.f_view([rows.len() as i64, vocab as i64]))
        .and_then(|t| t.f_to_device(logits.device()))
        .map_err(|source| ModelError::Torch { action: "building the box grammar's token mask".into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qwen2::Qwen2Config;
    use tch::{nn, Device};

    fn tiny_llm(seed: i64) -> (nn::VarStore, Qwen2ForCausalLM) {
        tch::manual_seed(seed);
        let config = Qwen2Config::from_json(
            r#"{"vocab_size": 61, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": false}"#,
        )
        .unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let llm = Qwen2ForCausalLM::new(&vs.root(), &config);
        (vs, llm)
    }

    fn prompts() -> Vec<Vec<i64>> {
        vec![vec![5, 17, 3], vec![41, 2, 9, 33, 12, 7, 50], vec![8], vec![19, 19, 44, 1, 30]]
    }

    fn greedy(max_new_tokens: i64, stop_tokens: Vec<i64>) -> GenerationConfig {
        GenerationConfig { max_new_tokens, sampling: Sampling::Greedy, stop_tokens, seed: None, slots: None }
    }

    fn alone(llm: &mut Qwen2ForCausalLM, prompt: &[i64], config: &GenerationConfig) -> Generation {
        let batch = PromptBatch::from_token_ids(llm, &[prompt.to_vec()], Device::Cpu).unwrap();
        generate(llm, &batch, config).unwrap().remove(0)
    }

    /// A stop token that ends the rows' greedy answers after very different numbers of tokens:
    /// the one maximising the spread between the shortest and the longest answer.
    fn spreading_stop_token(llm: &mut Qwen2ForCausalLM, max_new_tokens: i64) -> (i64, usize) {
        let free: Vec<Vec<i64>> = prompts().iter().map(|p| alone(llm, p, &greedy(max_new_tokens, vec![])).tokens).collect();
        let length = |answer: &[i64], stop: i64| answer.iter().position(|t| *t == stop).unwrap_or(answer.len());
        free.iter()
            .flatten()
            .map(|&stop| {
                let lengths: Vec<usize> = free.iter().map(|answer| length(answer, stop)).collect();
                (stop, lengths.iter().max().unwrap() - lengths.iter().min().unwrap())
            })
            .max_by_key(|(stop, spread)| (*spread, -stop))
            .unwrap()
    }

    #[test]
    fn rows_that_stop_early_leave_the_batch_and_answers_do_not_change() {
        let (_vs, mut llm) = tiny_llm(21);
        let max_new_tokens = 12;
        let (stop, spread) = spreading_stop_token(&mut llm, max_new_tokens);
        assert!(spread >= 4, "the rows' answer lengths should differ widely (spread {spread})");
        let config = greedy(max_new_tokens, vec![stop]);
        let batch = PromptBatch::from_token_ids(&llm, &prompts(), Device::Cpu).unwrap();
        let (batched, stats) = generate_with_stats(&mut llm, &batch, &config).unwrap();
        assert_eq!(llm.cached_len(), 0, "the cache is cleared on return");
        for (row, prompt) in prompts().iter().enumerate() {
            let single = alone(&mut llm, prompt, &config);
            assert_eq!(batched[row].tokens, single.tokens, "row {row}");
            assert_eq!(batched[row].finish, single.finish, "row {row}");
            assert_eq!(batched[row].logprobs.len(), single.logprobs.len(), "row {row}");
            for (b, s) in batched[row].logprobs.iter().zip(&single.logprobs) {
                assert!((b - s).abs() < 1e-5, "row {row}: logprob {b} batched vs {s} alone");
            }
        }
        assert!(batched.iter().any(|g| g.finish == FinishReason::Stop) && batched.iter().any(|g| g.tokens.len() >= 4));
        // No decode step ran for a finished row: each row cost one row-step per token after
        // its first (which the prefill gave).
        let generated: usize = batched.iter().map(|g| g.logprobs.len() - 1).sum();
        assert_eq!(stats.decode_row_steps, generated, "{stats:?} for {batched:?}");
        assert_eq!(stats.prefill_rows, 4);
        assert!(stats.decode_row_steps < stats.decode_steps * 4, "{stats:?}");
    }

    #[test]
    fn seeded_sampling_is_reproducible_while_rows_leave_the_batch() {
        let (_vs, mut llm) = tiny_llm(22);
        let (stop, _) = spreading_stop_token(&mut llm, 10);
        let config = GenerationConfig {
            max_new_tokens: 10,
            sampling: Sampling::TopP { temperature: 1.3, top_p: 0.95 },
            stop_tokens: vec![stop],
            seed: Some(7),
            slots: None,
        };
        let batch = PromptBatch::from_token_ids(&llm, &prompts(), Device::Cpu).unwrap();
        let first = generate_with_stats(&mut llm, &batch, &config).unwrap();
        let second = generate_with_stats(&mut llm, &batch, &config).unwrap();
        assert_eq!(first, second);
        let other_seed = generate(&mut llm, &batch, &GenerationConfig { seed: Some(8), ..config }).unwrap();
        assert_ne!(first.0, other_seed, "the seed must matter");
    }

    #[test]
    fn prompts_with_ids_outside_the_vocabulary_are_refused() {
        let (_vs, llm) = tiny_llm(23);
        for bad in [61, -1] {
            let err = PromptBatch::from_token_ids(&llm, &[vec![1, 2], vec![3, bad]], Device::Cpu).unwrap_err();
            assert!(err.to_string().contains(&format!("token id {bad} is outside the vocabulary (0..61)")), "{err}");
        }
        assert!(PromptBatch::from_token_ids(&llm, &[vec![]], Device::Cpu).unwrap_err().to_string().contains("no tokens"));
    }

    fn more_prompts() -> Vec<Vec<i64>> {
        let mut all = prompts();
        all.extend([vec![3, 3, 3, 3], vec![60, 12], vec![27, 5, 44, 9, 9, 1], vec![13], vec![2, 58, 31]]);
        all
    }

    fn assert_same_answers(a: &[Generation], b: &[Generation], what: &str) {
        assert_eq!(a.len(), b.len());
        for (row, (a, b)) in a.iter().zip(b).enumerate() {
            assert_eq!(a.tokens, b.tokens, "{what}: row {row}");
            assert_eq!(a.finish, b.finish, "{what}: row {row}");
            assert_eq!(a.logprobs.len(), b.logprobs.len(), "{what}: row {row}");
            for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                assert!((x - y).abs() < 1e-5, "{what}: row {row}: logprob {x} vs {y}");
            }
        }
    }

    #[test]
    fn continuous_batching_refills_slots_and_keeps_every_answer() {
        let (_vs, mut llm) = tiny_llm(24);
        let max_new_tokens = 12;
        let (stop, spread) = spreading_stop_token(&mut llm, max_new_tokens);
        assert!(spread >= 4, "answers of mixed lengths are what continuous batching is for (spread {spread})");
        let batch = PromptBatch::from_token_ids(&llm, &more_prompts(), Device::Cpu).unwrap();
        let all_at_once = greedy(max_new_tokens, vec![stop]);
        let (reference, static_stats) = generate_with_stats(&mut llm, &batch, &all_at_once).unwrap();
        assert_eq!((static_stats.prefills, static_stats.slots), (1, 9));
        for slots in [1, 3, 5] {
            let config = GenerationConfig { slots: Some(slots), ..all_at_once.clone() };
            let (answers, stats) = generate_with_stats(&mut llm, &batch, &config).unwrap();
            assert_eq!(llm.cached_len(), 0, "the cache is cleared on return");
            assert_same_answers(&answers, &reference, &format!("{slots} slots"));
            assert_eq!(stats.slots, slots);
            assert_eq!(stats.prefill_rows, 9, "every row is prefilled once: {stats:?}");
            assert!(stats.prefills > 1, "waiting rows were admitted as others finished: {stats:?}");
            let generated: usize = answers.iter().map(|g| g.logprobs.len() - 1).sum();
            assert_eq!(stats.decode_row_steps, generated, "{stats:?}");
            // Never more rows than slots, and no slot idles while a row waits: a step with a
            // free slot comes only once the queue is empty, so at most the longest answer's
            // steps are added to a perfectly full schedule.
            assert!(stats.decode_row_steps <= stats.decode_steps * slots, "{stats:?}");
            let longest = answers.iter().map(|g| g.logprobs.len() - 1).max().unwrap();
            assert!(stats.decode_steps <= generated.div_ceil(slots) + longest, "{stats:?}: {generated} row-steps, longest {longest}");
        }
        let zero = GenerationConfig { slots: Some(0), ..all_at_once };
        assert!(generate(&mut llm, &batch, &zero).unwrap_err().to_string().contains("0 decoding slots"));
    }

    #[test]
    fn continuous_batching_admits_a_prefix_with_all_its_rows() {
        let (_vs, mut llm) = tiny_llm(25);
        let (stop, _) = spreading_stop_token(&mut llm, 10);
        let prefixes = vec![vec![7, 7, 30], vec![11, 4], vec![52, 6, 6, 19, 2]];
        let tails = vec![vec![5, 17], vec![41, 2, 9], vec![8], vec![19, 44, 1], vec![30], vec![12, 12], vec![3, 50, 7, 7]];
        let prefix_of = vec![0, 0, 1, 1, 1, 2, 0];
        let prompt = SharedPrefixBatch {
            prefixes: PromptBatch::from_token_ids(&llm, &prefixes, Device::Cpu).unwrap(),
            tails: PromptBatch::from_token_ids(&llm, &tails, Device::Cpu).unwrap(),
            prefix_of: prefix_of.clone(),
        };
        let config = greedy(10, vec![stop]);
        let (reference, _) = generate_shared_prefix(&mut llm, &prompt, &config).unwrap();
        // Each row equals its concatenated prompt generated alone.
        for (row, tail) in tails.iter().enumerate() {
            let whole: Vec<i64> = prefixes[prefix_of[row] as usize].iter().chain(tail).copied().collect();
            assert_eq!(reference[row].tokens, alone(&mut llm, &whole, &config).tokens, "row {row}");
        }
        let (answers, stats) = generate_shared_prefix(&mut llm, &prompt, &GenerationConfig { slots: Some(4), ..config }).unwrap();
        assert_same_answers(&answers, &reference, "4 slots");
        // Three tiles' worth of rows (3, 3 and 1) through 4 slots: the second group waits for
        // the first to finish, and each prefix is still computed once.
        assert!(stats.prefills >= 2, "{stats:?}");
        assert_eq!((stats.prefix_rows, stats.prefill_rows), (3, 7), "{stats:?}");
    }

    #[test]
    fn a_failed_read_back_is_an_error_naming_what_was_read() {
        let two_dimensional = Tensor::zeros([2, 3], (Kind::Int64, Device::Cpu));
        let err = read_back::<i64>(&two_dimensional, "the chosen token ids").unwrap_err();
        assert!(matches!(err, ModelError::Torch { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("reading the chosen token ids back from the device"), "{message}");
        assert_eq!(read_back::<i64>(&Tensor::from_slice(&[4i64, 2]), "ids").unwrap(), vec![4, 2]);
    }
}
