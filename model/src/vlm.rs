//! The whole vision-language model (MODEL_SPEC §1–4): SigLIP tower → levels and projected image
//! tokens; multi-level prompter over the query, the retrieved descriptions and the levels; the
//! Qwen2 LLM with semantic experts and LoRA over
//! `[chat prefix] [X_img] [T_1 … T_L] [query] [response]`, each token tagged with its role.
//!
//! Variable names: the tower under `vision_model.*` and the LLM under `model.*` / `lm_head.*`
//! (their Hugging Face names), new modules under `strata.*` (`strata.projector`,
//! `strata.prompter`, `strata.llm.layers.{i}` for experts and LoRA). The vision tower is in
//! optimiser group 1 (its own learning rate), everything else in group 0.

use std::path::Path;

use tch::{nn, nn::Module, Device, Kind, Tensor};

use crate::chat::{ChatTokenizer, EncodedRequest};
use crate::config::StrataConfig;
use crate::experts::TokenRole;
use crate::generate::{self, GenerationConfig, PromptBatch, SharedPrefixBatch};
use crate::layers::ParamInit;
use crate::preprocess::{ImageProcessor, RgbImage};
use crate::projector::Projector;
use crate::prompter::{MultiLevelPrompter, PrompterInput};
use crate::qwen2::{DecoderInput, Qwen2Extensions, Qwen2ForCausalLM};
use crate::siglip::SiglipVisionModel;
use crate::tasks::grammar::BoxVocabulary;
use crate::weights::{self, LoadPolicy};
use crate::ModelError;

/// Optimiser group of the vision tower's variables.
pub const VISION_GROUP: usize = 1;

/// One image and its text inputs.
#[derive(Debug)]
pub struct VlmRequest {
    /// Normalised pixels `[3, side, side]` (see [`StrataModel::preprocess_rgb`]).
    pub pixels: Tensor,
    /// The user query (task instruction or question).
    pub query: String,
    /// Retrieved descriptions, best first.
    pub descriptions: Vec<String>,
}

/// One generated answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Decoded text.
    pub text: String,
    /// Generated token ids.
    pub tokens: Vec<i64>,
    /// `exp(mean log p)` of the answer's tokens (see [`generate::Generation::score`]).
    pub score: f64,
    /// For each well-formed box of `text` ([`crate::tasks::parse_boxes`], in its order),
    /// `exp(mean log p)` of the tokens that spell it, in (0, 1]: the later, smaller boxes of a
    /// detection answer are often the unsure ones, and an analyst filters detections by this.
    /// Empty when the answer holds no box.
    pub box_scores: Vec<f64>,
    /// Whether the answer ended on a stop token (rather than the token limit).
    pub complete: bool,
    /// How many of the request's retrieved descriptions the prompter saw: the first
    /// `descriptions_used` (of at most `retrieval.top_k`), whole; the rest did not fit
    /// `retrieval.max_semantic_tokens`.
    pub descriptions_used: usize,
}

/// What the tower, the projector and the prompter made of a batch.
struct Seen {
    encoded: Vec<EncodedRequest>,
    /// `[U, N_img, d]`, one row per distinct image.
    image_tokens: Tensor,
    /// Per request, its image's row in `image_tokens`.
    image_of: Vec<usize>,
    /// Per level, `[B, N_a, d]`.
    semantic_tokens: Vec<Tensor>,
}

/// Groups requests by image: the first request of each distinct image, and each request's
/// image index. Two requests show the same image when their pixel tensors are views of the
/// same memory with the same shape, strides and kind (the tasks of one tile share one
/// preprocessed tensor); equal pixels in separate tensors are simply encoded twice.
fn distinct_images(requests: &[VlmRequest]) -> (Vec<usize>, Vec<usize>) {
    let same = |a: &Tensor, b: &Tensor| {
        a.data_ptr() == b.data_ptr() && a.size() == b.size() && a.stride() == b.stride() && a.kind() == b.kind() && a.device() == b.device()
    };
    let mut firsts: Vec<usize> = Vec::new();
    let image_of = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            firsts.iter().position(|&f| same(&requests[f].pixels, &r.pixels)).unwrap_or_else(|| {
                firsts.push(i);
                firsts.len() - 1
            })
        })
        .collect();
    (firsts, image_of)
}

struct Assembled {
    prompt: PromptBatch,
    /// `[B, T]` token ids where the loss applies, -100 elsewhere.
    labels: Option<Tensor>,
}

/// The model, owning its variables.
#[derive(Debug)]
pub struct StrataModel {
    config: StrataConfig,
    tokenizer: ChatTokenizer,
    vision: SiglipVisionModel,
    projector: Projector,
    prompter: MultiLevelPrompter,
    llm: Qwen2ForCausalLM,
    levels: Vec<i64>,
    vs: nn::VarStore,
    /// The tokens of box answers, found on the first detection request.
    box_vocabulary: std::sync::OnceLock<BoxVocabulary>,
}

impl StrataModel {
    /// Builds the model on `device` in `kind`. With [`ParamInit::Uninitialized`] the tower and
    /// LLM weights are left for a loader to fill; new modules are always initialised.
    ///
    /// # Errors
    /// [`ModelError::Config`] when the config does not validate or the tokenizer has ids past
    /// the LLM's vocabulary (a request using them could not be embedded).
    pub fn new(config: StrataConfig, tokenizer: ChatTokenizer, device: Device, kind: Kind, init: ParamInit) -> Result<Self, ModelError> {
        config.validate()?;
        if tokenizer.id_bound() > config.llm.vocab_size {
            return Err(ModelError::Config {
                reason: format!(
                    "the tokenizer has token ids up to {} but llm.vocab_size is {}: the tokenizer does not belong to this LLM",
                    tokenizer.id_bound() - 1,
                    config.llm.vocab_size
                ),
            });
        }
        let mut vs = nn::VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let strata = &root / "strata";
        let levels = config.levels();
        let (d, d_v) = (config.llm.hidden_size, config.vision.hidden_size);
        let vision = SiglipVisionModel::new(&root.set_group(VISION_GROUP), &config.vision);
        let extensions = Qwen2Extensions { lora: config.lora.clone(), experts: Some((config.experts.clone(), levels.len() as i64)), init };
        let llm = Qwen2ForCausalLM::build(&root, &(&strata / "llm"), &config.llm, &extensions);
        let projector = Projector::new(&(&strata / "projector"), d_v, d);
        let prompter =
            MultiLevelPrompter::new(&(&strata / "prompter"), &config.prompter, d, d_v, levels.len() as i64, config.llm.num_attention_heads);
        Ok(Self { config, tokenizer, vision, projector, prompter, llm, levels, vs, box_vocabulary: std::sync::OnceLock::new() })
    }

    /// Builds the model from Hugging Face base checkpoints: a SigLIP (vision or full) and a
    /// Qwen2/Qwen2.5 `*.safetensors` set. New modules start from their initialisation; every
    /// tower and LLM weight must be found.
    ///
    /// # Errors
    /// [`ModelError::Weights`] naming missing or misshapen tensors.
    pub fn from_base_checkpoints(
        config: StrataConfig,
        tokenizer: ChatTokenizer,
        checkpoint_files: &[std::path::PathBuf],
        device: Device,
        kind: Kind,
    ) -> Result<Self, ModelError> {
        let model = Self::new(config, tokenizer, device, kind, ParamInit::Uninitialized)?;
        weights::load(&model.vs, checkpoint_files, LoadPolicy::Required(&["vision_model.", "model.", "lm_head."]))?;
        Ok(model)
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &StrataConfig {
        &self.config
    }

    /// Its tokenizer.
    pub fn tokenizer(&self) -> &ChatTokenizer {
        &self.tokenizer
    }

    /// Parameters of every variable, trainable or not (what `strata model init` reports).
    pub fn parameter_count(&self) -> usize {
        self.vs.variables().values().map(Tensor::numel).sum()
    }

    /// The variables (for loading, saving and optimisers).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Mutable variables (loading).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// The LLM (text-only generation, benchmarks).
    pub fn llm_mut(&mut self) -> &mut Qwen2ForCausalLM {
        &mut self.llm
    }

    /// Device of the weights.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Compute kind of the weights.
    pub fn kind(&self) -> Kind {
        self.llm.kind()
    }

    /// Turns interleaved RGB bytes `[height, width, 3]` into normalised pixels
    /// `[3, side, side]` exactly as SigLIP's image processor does: bicubic resize to the
    /// tower's input side with Pillow's arithmetic, scale to [0, 1], then `(x - mean) / std`
    /// per channel.
    ///
    /// # Errors
    /// [`ModelError::Request`] when the buffer does not hold `width × height × 3` bytes.
    pub fn preprocess_rgb(&self, rgb: &[u8], width: i64, height: i64) -> Result<Tensor, ModelError> {
        let (w, h) = (usize::try_from(width).unwrap_or(0), usize::try_from(height).unwrap_or(0));
        self.preprocess(&RgbImage::new(w, h, rgb.to_vec())?)
    }

    /// Normalised pixels `[3, side, side]` of a decoded image ([`RgbImage::decode`]) through
    /// [`StrataModel::image_processor`]: the one way inference, training, evaluation and
    /// `strata model ask` turn an image into the tower's input.
    ///
    /// # Errors
    /// When the image is empty.
    pub fn preprocess(&self, image: &RgbImage) -> Result<Tensor, ModelError> {
        let side = self.config.vision.image_size;
        let pixels = self.image_processor().apply(image)?;
        Ok(Tensor::from_slice(&pixels).view([3, side, side]))
    }

    /// Checks that a task's prompt text fits this model's `max_query_tokens`, as a request
    /// carrying it would be checked when it is answered.
    ///
    /// # Errors
    /// [`ModelError::Request`] naming the length and the budget; [`ModelError::Tokenizer`].
    pub fn check_query(&self, query: &str) -> Result<(), ModelError> {
        self.tokenizer.check_query(query, self.config.max_query_tokens)
    }

    /// The SigLIP image processor of this model: bicubic resize to the tower's resolution
    /// (Pillow's arithmetic), rescale, the configured mean/std.
    pub fn image_processor(&self) -> ImageProcessor {
        let to_f32 = |v: [f64; 3]| v.map(|x| x as f32);
        ImageProcessor::siglip(self.config.vision.image_size as usize, to_f32(self.config.image.mean), to_f32(self.config.image.std))
    }

    fn encode(&self, requests: &[VlmRequest], responses: Option<&[String]>) -> Result<Vec<EncodedRequest>, ModelError> {
        let budgets = (self.config.max_query_tokens, self.config.retrieval.max_semantic_tokens);
        requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let top_k = self.config.retrieval.top_k.min(r.descriptions.len());
                let response = responses.map(|all| all[i].as_str());
                self.tokenizer.encode_request(&r.query, &r.descriptions[..top_k], response, budgets)
            })
            .collect()
    }

    /// Embeds id lists padded to one length on the right: `([B, N, d], mask [B, N])`. Empty
    /// lists get one masked slot so the tensors are never empty.
    fn embed_padded(&self, lists: &[&[i64]]) -> (Tensor, Tensor) {
        let device = self.device();
        let longest = lists.iter().map(|l| l.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(lists.len() * longest);
        let mut mask = Vec::with_capacity(lists.len() * longest);
        for list in lists {
            ids.extend_from_slice(list);
            ids.extend(std::iter::repeat_n(self.tokenizer.pad_token(), longest - list.len()));
            mask.extend(std::iter::repeat_n(1i64, list.len()));
            mask.extend(std::iter::repeat_n(0i64, longest - list.len()));
        }
        let shape = [lists.len() as i64, longest as i64];
        let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
        (self.llm.embed(&ids), Tensor::from_slice(&mask).view(shape).to_device(device))
    }

    /// Runs the tower once per distinct image of the batch (the tasks of one tile share their
    /// pixels), the projector, and the prompter once per request.
    fn see(&self, requests: &[VlmRequest], responses: Option<&[String]>) -> Result<Seen, ModelError> {
        if requests.is_empty() {
            return Err(ModelError::Request { reason: "empty batch".into() });
        }
        let side = self.config.vision.image_size;
        if let Some(bad) = requests.iter().position(|r| r.pixels.size() != [3, side, side]) {
            return Err(ModelError::Request {
                reason: format!("request {bad}: pixels {:?} are not [3, {side}, {side}]", requests[bad].pixels.size()),
            });
        }
        let encoded = self.encode(requests, responses)?;
        let (device, kind) = (self.device(), self.kind());
        let (firsts, image_of) = distinct_images(requests);
        let pixels = Tensor::stack(&firsts.iter().map(|&r| requests[r].pixels.shallow_clone()).collect::<Vec<_>>(), 0)
            .to_device(device)
            .to_kind(kind);
        let vision = self.vision.forward(&pixels);
        let of = Tensor::from_slice(&image_of.iter().map(|&u| u as i64).collect::<Vec<_>>()).to_device(device);
        let levels: Vec<Tensor> = self.levels.iter().map(|l| vision.hidden_states[*l as usize].index_select(0, &of)).collect();
        let image_tokens = self.projector.forward(&vision.hidden_states[self.config.vision.num_hidden_layers as usize]);
        let queries: Vec<&[i64]> = encoded.iter().map(|e| e.query.as_slice()).collect();
        let semantics: Vec<&[i64]> = encoded.iter().map(|e| e.semantic.as_slice()).collect();
        let (query, query_mask) = self.embed_padded(&queries);
        let (semantic, semantic_mask) = self.embed_padded(&semantics);
        let semantic_tokens = self.prompter.forward_levels(&PrompterInput {
            query: &query,
            query_mask: &query_mask,
            semantic: &semantic,
            semantic_mask: &semantic_mask,
            levels: &levels,
        });
        Ok(Seen { encoded, image_tokens, image_of, semantic_tokens })
    }

    fn role(&self, code: TokenRole, n: i64) -> Tensor {
        Tensor::full([n], code.code(), (Kind::Int64, self.device()))
    }

    fn embed_ids(&self, list: &[i64]) -> Tensor {
        self.llm.embed(&Tensor::from_slice(list).to_device(self.device()))
    }

    /// `[chat prefix] [X_img]` of request `b`: embeddings `[len, d]` and role codes `[len]`.
    fn prefix_row(&self, seen: &Seen, b: usize) -> (Tensor, Tensor) {
        let prefix = &seen.encoded[b].prefix;
        let image = seen.image_tokens.get(seen.image_of[b] as i64);
        let roles = [self.role(TokenRole::Text, prefix.len() as i64), self.role(TokenRole::Image, image.size()[0])];
        (Tensor::cat(&[self.embed_ids(prefix), image], 0), Tensor::cat(&roles, 0))
    }

    /// `[T_1 … T_L] [query] [response]` of request `b`.
    fn tail_row(&self, seen: &Seen, b: usize) -> (Tensor, Tensor) {
        let e = &seen.encoded[b];
        let (mut embeds, mut roles) = (Vec::new(), Vec::new());
        for (l, level_tokens) in seen.semantic_tokens.iter().enumerate() {
            embeds.push(level_tokens.get(b as i64));
            roles.push(self.role(TokenRole::Semantic(l as i64), level_tokens.size()[1]));
        }
        let mut text_tail = e.suffix.clone();
        if let Some(response) = &e.response {
            text_tail.extend_from_slice(response);
        }
        embeds.push(self.embed_ids(&text_tail));
        roles.push(self.role(TokenRole::Text, text_tail.len() as i64));
        (Tensor::cat(&embeds, 0), Tensor::cat(&roles, 0))
    }

    /// Whole prompts, one row per request, with loss labels on the responses (training).
    fn assemble(&self, requests: &[VlmRequest], responses: Option<&[String]>) -> Result<Assembled, ModelError> {
        let seen = self.see(requests, responses)?;
        let mut rows = Vec::with_capacity(requests.len());
        let mut label_rows = Vec::with_capacity(requests.len());
        for (b, e) in seen.encoded.iter().enumerate() {
            let (prefix, prefix_roles) = self.prefix_row(&seen, b);
            let (tail, tail_roles) = self.tail_row(&seen, b);
            if let Some(response) = &e.response {
                let prompt_len = (prefix.size()[0] + tail.size()[0]) as usize - response.len();
                let mut labels = vec![-100i64; prompt_len];
                labels.extend_from_slice(response);
                label_rows.push(labels);
            }
            rows.push((Tensor::cat(&[prefix, tail], 0), Tensor::cat(&[prefix_roles, tail_roles], 0)));
        }
        let prompt = PromptBatch::left_padded(&rows)?;
        let labels = responses.is_some().then(|| {
            let total = prompt.embeds.size()[1] as usize;
            let padded: Vec<i64> =
                label_rows.iter().flat_map(|l| std::iter::repeat_n(-100, total - l.len()).chain(l.iter().copied())).collect();
            Tensor::from_slice(&padded).view([label_rows.len() as i64, total as i64]).to_device(self.device())
        });
        Ok(Assembled { prompt, labels })
    }

    /// Prompts for generation, split where the requests of one image stop sharing tokens:
    /// `[chat prefix] [X_img]` once per distinct image, the rest once per request.
    fn assemble_shared(&self, requests: &[VlmRequest]) -> Result<(SharedPrefixBatch, Vec<usize>), ModelError> {
        let seen = self.see(requests, None)?;
        // Rows share a prefix when they show the same image after the same chat prefix.
        let mut keys: Vec<(usize, &[i64])> = Vec::new();
        let mut prefixes = Vec::new();
        let mut prefix_of = Vec::with_capacity(requests.len());
        let mut tails = Vec::with_capacity(requests.len());
        for (b, e) in seen.encoded.iter().enumerate() {
            let key = (seen.image_of[b], e.prefix.as_slice());
            let shared = match keys.iter().position(|k| *k == key) {
                Some(shared) => shared,
                None => {
                    keys.push(key);
                    prefixes.push(self.prefix_row(&seen, b));
                    keys.len() - 1
                }
            };
            prefix_of.push(shared as i64);
            tails.push(self.tail_row(&seen, b));
        }
        let batch =
            SharedPrefixBatch { prefixes: PromptBatch::left_padded(&prefixes)?, tails: PromptBatch::left_padded(&tails)?, prefix_of };
        Ok((batch, seen.encoded.iter().map(|e| e.descriptions_used).collect()))
    }

    /// Mean next-token cross-entropy over the response tokens (training mode: LoRA dropout on).
    ///
    /// # Errors
    /// [`ModelError::Request`] for an empty batch, mismatched lengths, bad pixels or a query
    /// over `max_query_tokens`; [`ModelError::Torch`] when libtorch fails (out of memory...).
    pub fn loss(&mut self, requests: &[VlmRequest], responses: &[String]) -> Result<Tensor, ModelError> {
        if requests.len() != responses.len() {
            return Err(ModelError::Request { reason: format!("{} requests but {} responses", requests.len(), responses.len()) });
        }
        let result = guarded("computing the training loss", || self.loss_unguarded(requests, responses));
        if result.is_err() {
            self.llm.clear_kv_cache();
        }
        result
    }

    fn loss_unguarded(&mut self, requests: &[VlmRequest], responses: &[String]) -> Result<Tensor, ModelError> {
        let assembled = self.assemble(requests, Some(responses))?;
        let labels = assembled.labels.ok_or_else(|| ModelError::Request { reason: "no labels".into() })?;
        let prompt = &assembled.prompt;
        self.llm.clear_kv_cache();
        let hidden = self.llm.forward_embeds(&DecoderInput {
            embeds: &prompt.embeds,
            positions: &prompt.positions,
            roles: Some(&prompt.roles),
            key_mask: Some(&prompt.key_mask),
            train: true,
        });
        self.llm.clear_kv_cache();
        let seq = hidden.size()[1];
        let logits = self.llm.logits(&hidden.narrow(1, 0, seq - 1)).to_kind(Kind::Float);
        let targets = labels.narrow(1, 1, seq - 1);
        Ok(logits.flatten(0, 1).cross_entropy_loss::<Tensor>(&targets.flatten(0, 1), None, tch::Reduction::Mean, -100, 0.0))
    }

    /// Answers a batch of requests. Each answer says how many of its request's descriptions
    /// fitted the semantic budget ([`Answer::descriptions_used`]).
    ///
    /// A failure inside libtorch (out of memory, a kernel refusing its input) is returned as
    /// an error, never a panic that ends the process; the model stays usable.
    ///
    /// # Errors
    /// [`ModelError::Request`] for an empty batch, bad pixels, a query over
    /// `max_query_tokens` or an invalid generation config; [`ModelError::Tokenizer`] when
    /// encoding or decoding fails; [`ModelError::Torch`] when libtorch fails.
    pub fn generate(&mut self, requests: &[VlmRequest], config: &GenerationConfig) -> Result<Vec<Answer>, ModelError> {
        self.generate_with_stats(requests, config).map(|(answers, _)| answers)
    }

    /// As [`StrataModel::generate`], with what the decoder computed: prefill rows, decode
    /// steps and row-steps ([`generate::GenerationStats`]), from which a caller measures how
    /// full its decoding batches ran (`benches/inference`'s slot occupancy).
    ///
    /// # Errors
    /// As [`StrataModel::generate`].
    pub fn generate_with_stats(
        &mut self,
        requests: &[VlmRequest],
        config: &GenerationConfig,
    ) -> Result<(Vec<Answer>, generate::GenerationStats), ModelError> {
        let result = guarded("generating answers", || self.generate_unguarded(requests, config));
        if result.is_err() {
            self.llm.clear_kv_cache();
        }
        result
    }

    fn generate_unguarded(
        &mut self,
        requests: &[VlmRequest],
        config: &GenerationConfig,
    ) -> Result<(Vec<Answer>, generate::GenerationStats), ModelError> {
        let (prompt, descriptions_used) = tch::no_grad(|| self.assemble_shared(requests))?;
        let mut config = config.clone();
        if config.stop_tokens.is_empty() {
            config.stop_tokens = self.tokenizer.stop_tokens();
        }
        // Detection and grounding queries are answered under the box grammar.
        let boxed: Vec<bool> = requests.iter().map(|r| crate::tasks::expects_boxes(&r.query)).collect();
        let constraint = if boxed.contains(&true) {
            let tokenizer = &self.tokenizer;
            let vocabulary = self
                .box_vocabulary
                .get_or_init(|| BoxVocabulary::new((0..tokenizer.id_bound()).filter_map(|id| Some((id, tokenizer.decode(&[id]).ok()?)))));
            Some(generate::BoxConstraint { vocabulary, rows: &boxed })
        } else {
            None
        };
        let (generations, stats) = generate::generate_shared_prefix_constrained(&mut self.llm, &prompt, &config, constraint)?;
        let answers = generations
            .into_iter()
            .zip(descriptions_used)
            .map(|(g, descriptions_used)| {
                let text = self.tokenizer.decode(&g.tokens)?;
                let box_scores = box_scores(&self.tokenizer, &text, &g.tokens, &g.logprobs)?;
                Ok(Answer {
                    text: text.trim().to_owned(),
                    score: g.score(),
                    box_scores,
                    complete: g.finish == generate::FinishReason::Stop,
                    tokens: g.tokens,
                    descriptions_used,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok((answers, stats))
    }

    /// Folds LoRA into the LLM weights for serving.
    ///
    /// # Errors
    /// As [`Qwen2ForCausalLM::merge_lora`]: an adapter that cannot be folded in stays
    /// unmerged and applied, so answers do not change.
    pub fn merge_lora(&mut self) -> Result<(), ModelError> {
        self.llm.merge_lora()
    }

    /// Loads the tokenizer named in `dir` (`tokenizer.json`) with this config's system prompt.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when it cannot be read.
    pub fn tokenizer_from_dir(dir: &Path, config: &StrataConfig) -> Result<ChatTokenizer, ModelError> {
        ChatTokenizer::from_file(&dir.join("tokenizer.json"), &config.system_prompt)
    }
}

/// Runs `f`, turning a panic inside it (tch's infallible methods panic when libtorch throws:
/// out of memory, a kernel refusing its input) into [`ModelError::Torch`], so one bad batch
/// cannot end a worker.
fn guarded<T>(action: &str, f: impl FnOnce() -> Result<T, ModelError>) -> Result<T, ModelError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        tracing::error!(action, error = message, "The model failed; the request is refused and the model stays usable.");
        Err(ModelError::Torch { action: action.to_owned(), source: tch::TchError::Torch(message.to_owned()) })
    })
}

/// Per-box scores of a generated answer ([`Answer::box_scores`]): `text` is the decoded
/// `tokens` (untrimmed), `logprobs` their log-probabilities (a stop token's, when present, is
/// last and spells nothing). A token belongs to a box when the text it adds overlaps the box's
/// `<box>…</box>`; where a token is, is read from the decoded length of the answer up to it.
///
/// # Errors
/// When the tokenizer cannot decode a prefix of `tokens`.
fn box_scores(tokenizer: &ChatTokenizer, text: &str, tokens: &[i64], logprobs: &[f64]) -> Result<Vec<f64>, ModelError> {
    let spans = crate::tasks::parse_boxes(text).spans;
    if spans.is_empty() {
        return Ok(Vec::new());
    }
    // Where each token's text ends; a byte-level token that splits a character decodes to a
    // replacement character, so the lengths are kept non-decreasing. Tokens after the last box
    // are not needed (each prefix is decoded whole: this runs per answer, on ≤ max_new_tokens).
    let last_box_end = spans.last().map_or(0, |s| s.end);
    let mut ends = Vec::with_capacity(tokens.len());
    let mut last = 0;
    for i in 1..=tokens.len() {
        last = tokenizer.decode(&tokens[..i])?.len().max(last);
        ends.push(last);
        if last >= last_box_end {
            break;
        }
    }
    Ok(spans
        .iter()
        .map(|span| {
            let mut start = 0;
            let (mut sum, mut count) = (0.0, 0usize);
            for (end, logprob) in ends.iter().zip(logprobs) {
                if *end > span.start && start < span.end {
                    sum += logprob;
                    count += 1;
                }
                start = *end;
            }
            if count == 0 {
                1.0
            } else {
                (sum / count as f64).exp()
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_box_is_scored_by_the_tokens_that_spell_it() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let tokenizer = ChatTokenizer::from_file(&dir.join("tokenizer/tokenizer.json"), "").unwrap();
        let (first, second) = ("<box>[10, 20, 300, 400]</box>", "<box>[500, 600, 700, 800]</box>");
        let text = format!(" {first} {second}");
        let tokens = tokenizer.encode(&text).unwrap();
        let decoded = tokenizer.decode(&tokens).unwrap();
        assert_eq!(decoded, text, "the fixture tokenizer round-trips the answer");
        // The tokens of the first box are sure (p 0.9), those touching the second not (p 0.2);
        // the spaces around them (p e^-9) and a stop token last count for neither.
        let (first_at, second_at) = (decoded.find(first).unwrap(), decoded.find(second).unwrap());
        let mut logprobs = Vec::new();
        for i in 0..tokens.len() {
            let (start, end) = (tokenizer.decode(&tokens[..i]).unwrap().len(), tokenizer.decode(&tokens[..=i]).unwrap().len());
            logprobs.push(if end > second_at {
                0.2_f64.ln()
            } else if end > first_at && start < first_at + first.len() {
                0.9_f64.ln()
            } else {
                -9.0
            });
        }
        logprobs.push(0.0);
        let scores = box_scores(&tokenizer, &decoded, &tokens, &logprobs).unwrap();
        assert_eq!(scores.len(), 2, "{scores:?}");
        assert!((scores[0] - 0.9).abs() < 1e-9 && (scores[1] - 0.2).abs() < 1e-9, "{scores:?}");
        assert!(box_scores(&tokenizer, "a forest", &tokenizer.encode("a forest").unwrap(), &[0.0; 3]).unwrap().is_empty());
    }

    fn tiny_model() -> StrataModel {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let config = StrataConfig::from_json(&std::fs::read_to_string(dir.join("tiny-model/config.json")).unwrap()).unwrap();
        let tokenizer = ChatTokenizer::from_file(&dir.join("tokenizer/tokenizer.json"), &config.system_prompt).unwrap();
        tch::manual_seed(31);
        let model = StrataModel::new(config, tokenizer, Device::Cpu, Kind::Float, ParamInit::Random).unwrap();
        // LoRA `B` and the experts' up-projections start at zero; give them values so the
        // semantic experts (which read each token's role) take part.
        tch::no_grad(|| {
            for (name, var) in model.var_store().variables() {
                if name.ends_with("lora_b") || name.ends_with("up.weight") {
                    let _ = var.shallow_clone().normal_(0.0, 0.2);
                }
            }
        });
        model
    }

    #[test]
    fn tasks_sharing_an_image_answer_as_their_whole_prompts_do() {
        let mut model = tiny_model();
        let side = model.config().vision.image_size;
        let image = |seed: i64| {
            tch::manual_seed(seed);
            Tensor::randn([3, side, side], (Kind::Float, Device::Cpu))
        };
        let (a, b) = (image(1), image(2));
        let request = |pixels: &Tensor, query: &str, descriptions: &[&str]| VlmRequest {
            pixels: pixels.shallow_clone(),
            query: query.into(),
            descriptions: descriptions.iter().map(|d| (*d).to_owned()).collect(),
        };
        // Two tiles with tasks of different lengths, and a third image asked once; one
        // request repeats a tile's pixels in a separate tensor (encoded again, same answer).
        let requests = vec![
            request(&a, "Describe the image.", &["a harbour with ships"]),
            request(&b, "What is the land use? Answer with one class.", &["farmland", "forest near a river"]),
            request(&a, "Is there a river in the image?", &[]),
            request(&b, "Describe the image.", &["farmland"]),
            request(&a.copy(), "Where is the ship? Answer with boxes.", &["ships at a pier"]),
        ];
        let config = GenerationConfig { max_new_tokens: 6, stop_tokens: model.tokenizer().stop_tokens(), ..GenerationConfig::default() };
        let (shared, _) = model.assemble_shared(&requests).unwrap();
        assert_eq!(shared.prefixes.len(), 3, "one prefix per distinct image tensor");
        assert_eq!(shared.prefix_of, vec![0, 1, 0, 1, 2]);
        let (by_prefix, stats) = generate::generate_shared_prefix(&mut model.llm, &shared, &config).unwrap();
        assert_eq!((stats.prefix_rows, stats.prefill_rows), (3, 5));
        let whole = model.assemble(&requests, None).unwrap();
        let by_row = generate::generate(&mut model.llm, &whole.prompt, &config).unwrap();
        for (row, (s, w)) in by_prefix.iter().zip(&by_row).enumerate() {
            assert_eq!(s.tokens, w.tokens, "row {row}");
            for (x, y) in s.logprobs.iter().zip(&w.logprobs) {
                assert!((x - y).abs() < 1e-4, "row {row}: logprob {x} with a shared prefix vs {y} whole");
            }
        }
        // The public entry point is the shared path.
        let answers = model.generate(&requests, &config).unwrap();
        let tokens: Vec<&Vec<i64>> = answers.iter().map(|a| &a.tokens).collect();
        assert_eq!(tokens, by_prefix.iter().map(|g| &g.tokens).collect::<Vec<_>>());
    }

    #[test]
    fn a_panic_inside_the_model_becomes_an_error_naming_the_action() {
        let err = guarded::<()>("generating answers", || {
            // What tch does when libtorch throws: an infallible method panics.
            let _ = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)).matmul(&Tensor::zeros([4, 5], (Kind::Float, Device::Cpu)));
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(err, ModelError::Torch { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("generating answers") && message.contains("cannot be multiplied"), "{message}");
        assert_eq!(guarded("x", || Ok(3)).unwrap(), 3);
    }
}
