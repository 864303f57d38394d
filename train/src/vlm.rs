//! `strata train align|instruct`: the paper's two training stages of the model (MODEL_SPEC §5)
//! as an [`Objective`] of the training loop: next-token loss on the answers through
//! `model::train::Trainer`, with retrieved descriptions when the file names an index, and
//! held-out loss and task metrics (`eval.csv`) at every evaluation.

use std::{
    collections::HashMap,
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;
use model::tch::Tensor;
use model::{
    artifact::{self, Artifact, Provenance},
    device::SelectedDevice,
    preprocess::RgbImage,
    train::{Precision, Stage, TrainConfig, Trainer, TrainerState},
    vlm::{StrataModel, VlmRequest},
};
use retrieval::{RetrievalOptions, Retriever};
use serde::{Deserialize, Serialize};

use crate::{
    check_counts,
    checkpoint::{Checkpoint, CheckpointState, RunIdentity},
    data::{beside, read_data, warn_small_data, Records, Sample},
    run_loop, LoopSettings, Objective, OptimiserSettings, Outcome, RunOptions, StepReport,
};

const fn default_batch_size() -> usize {
    8
}
const fn default_one() -> usize {
    1
}
const fn default_learning_rate() -> f64 {
    2e-4
}
const fn default_vision_learning_rate() -> f64 {
    2e-6
}
const fn default_max_grad_norm() -> f64 {
    1.0
}
const fn default_checkpoint_every() -> usize {
    50
}
const fn default_eval_every() -> usize {
    100
}
const fn default_eval_samples() -> usize {
    64
}

const fn default_eval_max_new_tokens() -> i64 {
    64
}

/// The training file (TOML). Paths are relative to the file's folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainFile {
    /// The model artifact training starts from (`strata model init`, or an earlier stage).
    pub model: PathBuf,
    /// Training samples, LLaVA-style JSONL.
    pub data: PathBuf,
    /// Held-out samples (same format), scored every `eval_every` steps.
    #[serde(default)]
    pub held_out: Option<PathBuf>,
    /// Folder of the images the JSONL names (default: the JSONL's folder, or its parent when
    /// the images are not there, as `strata data synth` lays them out).
    #[serde(default)]
    pub image_root: Option<PathBuf>,
    /// The run folder: checkpoints, `metrics.csv`, and the trained artifact in `model/`.
    pub out: PathBuf,
    /// Micro-batches to run.
    pub steps: usize,
    /// Samples per micro-batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    #[serde(default = "default_one")]
    pub grad_accumulation: usize,
    /// Peak learning rate of the new modules (projector, prompter, experts, LoRA).
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    /// Peak learning rate of the vision tower (instruct stage); 0 keeps the tower as it is.
    #[serde(default = "default_vision_learning_rate")]
    pub vision_learning_rate: f64,
    /// Optimiser steps of linear warm-up (default: 5 % of the optimiser steps).
    #[serde(default)]
    pub warmup_steps: Option<usize>,
    /// Global gradient-norm clip.
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    /// AdamW's decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Seed of the data order and of dropout.
    #[serde(default)]
    pub seed: u64,
    /// Steps between checkpoints.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Steps between held-out evaluations.
    #[serde(default = "default_eval_every")]
    pub eval_every: usize,
    /// Held-out samples scored each time (the first ones of the file): their loss, and the
    /// task metrics of their generated answers (`eval.csv`).
    #[serde(default = "default_eval_samples")]
    pub eval_samples: usize,
    /// Longest generated answer in those evaluations, tokens.
    #[serde(default = "default_eval_max_new_tokens")]
    pub eval_max_new_tokens: i64,
    /// Version of the trained artifact (default: `<start version>-<stage>`).
    #[serde(default)]
    pub model_version: Option<String>,
    /// Retrieve descriptions for every sample from this index (a directory, or the URL it was
    /// pushed to), as `strata batch --index` does at inference, so the prompter learns from the
    /// descriptions it will be given (MODEL_SPEC section 5: both stages see them). Default: none.
    #[serde(default)]
    pub index: Option<String>,
    /// Encoder that queries the index (as `--retrieval-encoder`; default all-MiniLM-L6-v2).
    #[serde(default)]
    pub retrieval_encoder: Option<PathBuf>,
    /// Descriptions per sample (default: the model's `top_k`).
    #[serde(default)]
    pub retrieve_k: Option<usize>,
    /// Numeric precision of the forward passes: `auto` (bf16 autocast on CUDA, f32 on CPU),
    /// `f32`, or `bf16` (autocast on any device). Weights and AdamW's moments are f32 in every
    /// case. Not part of the configuration digest: a run may resume on another device.
    #[serde(default = "default_precision")]
    pub precision: String,
    /// Also train the base LLM's own weights (`model.*`, `lm_head.*`), not only LoRA, at
    /// `learning_rate`. Off by default, as in the paper, whose base is pretrained; for a base
    /// trained from scratch (`strata model init --random`).
    #[serde(default)]
    pub train_base_llm: bool,
}

fn default_precision() -> String {
    "auto".to_owned()
}

impl TrainFile {
    /// Reads a training file; its paths become relative to the file's folder (object-store
    /// URLs stay as they are).
    ///
    /// # Errors
    /// An unreadable file, unknown keys, or values of the wrong type.
    pub fn read(config: &Path) -> anyhow::Result<Self> {
        let (mut file, base): (Self, &Path) = crate::read_toml(config)?;
        for path in [&mut file.model, &mut file.out] {
            *path = base.join(&*path);
        }
        file.data = beside(base, &file.data);
        file.held_out = file.held_out.map(|p| beside(base, &p));
        file.image_root = file.image_root.map(|p| beside(base, &p));
        file.retrieval_encoder = file.retrieval_encoder.map(|p| base.join(p));
        // An index path is relative to the file too; a URL (s3://, file://) is taken as it is.
        file.index = file.index.map(|index| if index.contains("://") { index } else { base.join(index).to_string_lossy().into_owned() });
        Ok(file)
    }

    /// The optimiser settings of the file.
    pub fn optimiser(&self) -> OptimiserSettings {
        OptimiserSettings {
            learning_rate: self.learning_rate,
            vision_learning_rate: self.vision_learning_rate,
            warmup_steps: self.warmup_steps,
            max_grad_norm: self.max_grad_norm,
            weight_decay: self.weight_decay,
        }
    }
}

/// The model inputs of samples: each image read and preprocessed once, and, with an index,
/// each (image, query) pair's retrieved descriptions looked up once.
pub(crate) struct Inputs {
    pixels: HashMap<PathBuf, Tensor>,
    /// `[width, height]` of each image read, pixels (grounding references are in pixels).
    sizes: HashMap<PathBuf, [u32; 2]>,
    retriever: Option<Retriever>,
    /// Retrieved descriptions by (image, query); the image is empty for a retriever that
    /// searches by query text.
    descriptions: HashMap<(PathBuf, String), Vec<String>>,
}

impl Inputs {
    pub(crate) fn request(&mut self, model: &StrataModel, sample: &Sample) -> anyhow::Result<VlmRequest> {
        // A text encoder retrieves by the query alone: one search per distinct query, not one
        // per image (the templated queries of a data set repeat over thousands of images).
        let by_image = self.retriever.as_ref().is_some_and(Retriever::by_image);
        let key = (if by_image { sample.image.clone() } else { PathBuf::new() }, sample.query.clone());
        let need_descriptions = self.retriever.is_some() && !self.descriptions.contains_key(&key);
        if need_descriptions || !self.pixels.contains_key(&sample.image) {
            let image = RgbImage::read_named(&sample.image, &format!("`{}` (named by {})", sample.image.display(), sample.origin))?;
            if !self.pixels.contains_key(&sample.image) {
                self.pixels.insert(sample.image.clone(), model.preprocess(&image)?);
                self.sizes.insert(sample.image.clone(), [u32::try_from(image.width)?, u32::try_from(image.height)?]);
            }
            if let Some(retriever) = self.retriever.as_mut().filter(|_| need_descriptions) {
                let found = retriever
                    .descriptions(&image, &sample.query)
                    .with_context(|| format!("retrieving descriptions for `{}`", sample.image.display()))?;
                self.descriptions.insert(key.clone(), found);
            }
        }
        let pixels = self.pixels[&sample.image].shallow_clone();
        let descriptions = self.descriptions.get(&key).cloned().unwrap_or_default();
        Ok(VlmRequest { pixels, query: sample.query.clone(), descriptions })
    }
}

/// The metrics printed with each held-out evaluation (all of them go to `eval.csv`).
const HEADLINE_METRICS: [&str; 5] = ["accuracy", "BLEU-4", "CIDEr-D", "overall accuracy", "Acc@0.5"];

/// The task a held-out query asks, from the prompt that made it (`model::tasks`): grounding
/// (`Locate: ...`), classification (the classify prompt), VQA (the short-answer suffix), or a
/// caption (anything else).
fn task_of(query: &str) -> eval::score::Task {
    use eval::score::Task;
    if model::tasks::expects_boxes(query) {
        Task::Ground
    } else if query.starts_with(model::tasks::CLASSIFY_PROMPT) {
        Task::Classify
    } else if query.trim_end().ends_with("Answer with a single word or phrase.") {
        Task::Vqa
    } else {
        Task::Caption
    }
}

/// Generates greedy answers for held-out `samples` and scores them per task with the `eval`
/// crate, as `strata eval` would: classification and VQA accuracy, BLEU/ROUGE-L/CIDEr-D for
/// captions (no BERTScore or METEOR: their assets are not needed to train), grounding
/// Acc@0.5 and mean IoU. Returns `(task, metric, value, samples)` rows.
///
/// # Errors
/// When an image cannot be read or generation fails.
fn held_out_scores(
    model: &mut StrataModel,
    inputs: &mut Inputs,
    samples: &[Sample],
    batch_size: usize,
    max_new_tokens: i64,
) -> anyhow::Result<Vec<(String, String, f64, usize)>> {
    use eval::{
        answers::{Prediction, Reference},
        score::{score, CaptionScorers, Task},
    };
    let generation = model::generate::GenerationConfig { max_new_tokens, ..Default::default() };
    let mut by_task: Vec<(Task, Vec<Prediction>, Vec<Reference>)> = Vec::new();
    for (chunk_index, chunk) in samples.chunks(batch_size.max(1)).enumerate() {
        let requests: Vec<VlmRequest> = chunk.iter().map(|s| inputs.request(model, s)).collect::<anyhow::Result<_>>()?;
        let answers = model.generate(&requests, &generation)?;
        for (i, (sample, answer)) in chunk.iter().zip(answers).enumerate() {
            let task = task_of(&sample.query);
            let id = format!("{}", chunk_index * batch_size.max(1) + i);
            let image_size = inputs.sizes.get(&sample.image).copied();
            let references = match task {
                // The response's first box, from the 0–1000 grid to pixels of the image.
                Task::Ground => {
                    let Some((b, [w, h])) = model::tasks::parse_boxes(&sample.response).boxes.first().copied().zip(image_size) else {
                        continue; // a grounding sample without a box answer cannot be scored
                    };
                    vec![serde_json::json!(b.to_pixels(w, h))]
                }
                _ => vec![serde_json::Value::String(sample.response.clone())],
            };
            let classes = (task == Task::Classify).then(|| {
                sample.query[model::tasks::CLASSIFY_PROMPT.len()..]
                    .trim()
                    .trim_end_matches('.')
                    .split(',')
                    .map(|c| c.trim().to_owned())
                    .filter(|c| !c.is_empty())
                    .collect()
            });
            let reference = Reference { id: id.clone(), references, kind: None, classes, image_size, image: None, query: None };
            let prediction = Prediction {
                id,
                answer: serde_json::Value::String(answer.text),
                score: Some(answer.score),
                box_scores: (!answer.box_scores.is_empty()).then_some(answer.box_scores),
            };
            match by_task.iter_mut().find(|(t, _, _)| *t == task) {
                Some((_, predictions, references)) => {
                    predictions.push(prediction);
                    references.push(reference);
                }
                None => by_task.push((task, vec![prediction], vec![reference])),
            }
        }
    }
    let mut rows = Vec::new();
    for (task, predictions, references) in by_task {
        let report = score(task, &predictions, &references, CaptionScorers::default())?;
        let name = format!("{task:?}").to_lowercase();
        rows.extend(report.metrics.into_iter().map(|m| (name.clone(), m.name, m.value, m.count)));
    }
    Ok(rows)
}

/// Everything that shapes the loss curve: a checkpoint of another one is refused.
fn config_digest(stage: Stage, file: &TrainFile, start_version: &str) -> RunIdentity {
    let mut identity = serde_json::json!({
        "stage": format!("{stage:?}"), "start": start_version, "data": file.data, "batch_size": file.batch_size,
        "grad_accumulation": file.grad_accumulation, "learning_rate": file.learning_rate, "vision_learning_rate": file.vision_learning_rate,
        "warmup_steps": file.warmup_steps, "steps": file.steps, "max_grad_norm": file.max_grad_norm, "weight_decay": file.weight_decay, "seed": file.seed,
        "index": file.index, "retrieval_encoder": file.retrieval_encoder, "retrieve_k": file.retrieve_k,
    });
    // Only when on, so that the digests of runs from before this key stay as they were.
    if file.train_base_llm {
        identity["train_base_llm"] = serde_json::Value::Bool(true);
    }
    RunIdentity::new(identity)
}

/// The alignment or instruction-tuning objective over a loaded model.
struct VlmObjective {
    stage: Stage,
    file: TrainFile,
    artifact: Artifact,
    model: StrataModel,
    trainer: Trainer,
    device: SelectedDevice,
    precision: Precision,
    samples: Vec<Sample>,
    held_out: Option<Vec<Sample>>,
    inputs: Inputs,
    /// The identity's digest, recorded in the trained artifact's provenance.
    digest: String,
}

impl Objective for VlmObjective {
    fn label(&self) -> String {
        format!("{:?}", self.stage)
    }

    fn unit(&self) -> &'static str {
        "samples"
    }

    fn samples(&self) -> usize {
        self.samples.len()
    }

    fn grad_accumulation(&self) -> usize {
        self.file.grad_accumulation
    }

    fn finished_output(&self, out: &Path) -> Option<(PathBuf, &'static str)> {
        let model = out.join("model");
        model.join("manifest.json").is_file().then_some((model, "model"))
    }

    fn variables(&self) -> HashMap<String, Tensor> {
        self.model.var_store().variables()
    }

    fn restore(&mut self, state: &CheckpointState, moments: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        self.trainer.restore(TrainerState { micro_steps: state.micro_steps, optimizer_steps: state.optimizer_steps }, moments)?;
        Ok(())
    }

    fn checkpoint(&self, step: usize, identity: &RunIdentity) -> Checkpoint {
        let trainable: Vec<(String, Tensor)> = self.model.var_store().variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
        let state = self.trainer.state();
        Checkpoint {
            state: identity.state(step, state.micro_steps, state.optimizer_steps),
            weights: trainable,
            moments: self.trainer.moments(),
        }
    }

    fn prepare(&mut self) -> anyhow::Result<()> {
        // The index may live in an object store: its reads run on this runtime, for the open.
        let Some(index) = &self.file.index else { return Ok(()) };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the I/O runtime")?;
        let options = RetrievalOptions {
            index: Some(index.clone()),
            encoder: self.file.retrieval_encoder.clone(),
            k: self.file.retrieve_k,
            ef: None,
        };
        self.inputs.retriever = runtime
            .block_on(Retriever::open(&options, self.model.config().retrieval.top_k, self.device.device()))
            .with_context(|| format!("opening the index `{index}`"))?;
        Ok(())
    }

    fn banner(&self) -> String {
        format!(
            "training {:?} on {} ({}), {} steps of {} samples",
            self.stage,
            self.device.describe(),
            if self.precision.autocasts(self.device.device()) { "bf16 autocast over f32 weights" } else { "f32" },
            self.file.steps,
            self.file.batch_size
        )
    }

    fn start(&mut self, _first_step: usize, _kept_eval: &[String], _eval_csv: &mut File) -> anyhow::Result<()> {
        Ok(())
    }

    fn step(&mut self, indices: &[usize]) -> anyhow::Result<StepReport> {
        let mut requests = Vec::with_capacity(indices.len());
        let mut responses = Vec::with_capacity(indices.len());
        for &i in indices {
            requests.push(self.inputs.request(&self.model, &self.samples[i])?);
            responses.push(self.samples[i].response.clone());
        }
        let tick = Instant::now();
        let outcome = self.trainer.step(&mut self.model, &requests, &responses)?;
        Ok(StepReport { loss: outcome.loss, learning_rate: outcome.learning_rate, seconds: tick.elapsed().as_secs_f64() })
    }

    fn has_held_out(&self) -> bool {
        self.held_out.is_some()
    }

    fn evaluate(&mut self, done: usize, elapsed: f64, metrics: &mut File, eval_csv: &mut File) -> anyhow::Result<Option<String>> {
        let Some(held_out) = self.held_out.as_ref() else { return Ok(None) };
        let take = held_out.len().min(self.file.eval_samples);
        let batch_size = self.file.batch_size;
        let mut total = 0.0;
        for chunk in held_out[..take].chunks(batch_size) {
            let requests: Vec<VlmRequest> = chunk.iter().map(|s| self.inputs.request(&self.model, s)).collect::<anyhow::Result<_>>()?;
            let responses: Vec<String> = chunk.iter().map(|s| s.response.clone()).collect();
            let _autocast = self.precision.scope(self.device.device());
            total += model::tch::no_grad(|| self.model.loss(&requests, &responses))?.to_kind(model::tch::Kind::Float).double_value(&[])
                * chunk.len() as f64;
        }
        let loss = total / take as f64;
        writeln!(metrics, "{done},held_out,{loss:.6},,,{elapsed:.1}")?;
        let scores = held_out_scores(&mut self.model, &mut self.inputs, &held_out[..take], batch_size, self.file.eval_max_new_tokens)?;
        for (task, metric, value, n) in &scores {
            writeln!(eval_csv, "{done},{task},{metric},{value:.6},{n}")?;
        }
        eval_csv.flush()?;
        let headline: Vec<String> = scores
            .iter()
            .filter(|(_, metric, _, _)| HEADLINE_METRICS.contains(&metric.as_str()))
            .map(|(task, metric, value, _)| format!("{task} {metric} {value:.3}"))
            .collect();
        Ok(Some(format!("step {done}: held-out loss {loss:.4} ({take} samples); {}", headline.join(", "))))
    }

    fn finish(self, out: &Path, last_loss: f64, seconds: f64) -> anyhow::Result<Outcome> {
        let start = &self.artifact.manifest.version;
        let version = self
            .file
            .model_version
            .clone()
            .unwrap_or_else(|| format!("{start}-{}", if self.stage == Stage::Alignment { "align" } else { "instruct" }));
        let provenance = Provenance {
            version: version.clone(),
            parent_version: Some(start.clone()),
            training_run: Some(format!("{} ({})", out.display(), self.digest)),
        };
        let output = out.join("model");
        artifact::save(&self.model, &self.artifact.dir.join("tokenizer.json"), &output, &provenance)?;
        let summary = vec![
            format!(
                "trained `{version}` for {} steps ({:?}, last loss {last_loss:.4}) in {seconds:.0} s: {}",
                self.file.steps,
                self.stage,
                output.display()
            ),
            format!("metrics: {}", out.join("metrics.csv").display()),
        ];
        Ok(Outcome::Trained { output, last_loss, summary })
    }
}

/// Runs `strata train align` ([`Stage::Alignment`]) or `strata train instruct`
/// ([`Stage::InstructionTuning`]) from the training file `config` (TOML, [`TrainFile`]).
///
/// # Errors
/// An unreadable or invalid training file or data, a checkpoint of another configuration,
/// a diverged run, model errors.
pub fn run(stage: Stage, config: &Path, options: &RunOptions) -> anyhow::Result<Outcome> {
    let file = TrainFile::read(config)?;
    check_counts(
        config,
        &[
            ("steps", file.steps),
            ("batch_size", file.batch_size),
            ("grad_accumulation", file.grad_accumulation),
            ("checkpoint_every", file.checkpoint_every),
            ("eval_every", file.eval_every),
        ],
    )?;
    if !file.checkpoint_every.is_multiple_of(file.grad_accumulation) {
        anyhow::bail!(
            "`{}`: checkpoint_every ({}) must be a multiple of grad_accumulation ({}): checkpoints are taken on optimiser steps",
            config.display(),
            file.checkpoint_every,
            file.grad_accumulation
        );
    }
    let optimizer_steps = file.steps.div_ceil(file.grad_accumulation);
    let optimiser = file.optimiser();
    optimiser.check(config, optimizer_steps)?;
    let precision = Precision::parse(&file.precision).map_err(|e| anyhow::anyhow!("`{}`: precision: {e}", config.display()))?;
    let (samples, held_out) = read_data(&file.data, file.held_out.as_deref(), file.image_root.as_deref(), Records::Conversations)?;
    warn_small_data(samples.len(), file.batch_size, &file.data);

    let artifact = Artifact::open(&file.model)?;
    let device = model::device::select(options.device)?;
    // Weights and AdamW's moments in f32 on every device (no pure-bf16 optimiser); on CUDA the
    // forward passes run under bf16 autocast unless the file says `precision = "f32"`.
    let model = artifact.load(device.device(), model::tch::Kind::Float).with_context(|| format!("loading `{}`", file.model.display()))?;
    let train_config = TrainConfig {
        stage,
        learning_rate: optimiser.learning_rate,
        vision_learning_rate: optimiser.vision_learning_rate,
        weight_decay: optimiser.weight_decay,
        warmup_steps: optimiser.warmup(optimizer_steps),
        total_steps: optimizer_steps,
        grad_accumulation: file.grad_accumulation,
        max_grad_norm: optimiser.max_grad_norm,
        precision,
        train_base_llm: file.train_base_llm,
    };
    let trainer = Trainer::new(&model, train_config)?;
    let identity = config_digest(stage, &file, &artifact.manifest.version);
    let out = file.out.clone();
    let settings = LoopSettings {
        out: &out,
        steps: file.steps,
        batch_size: file.batch_size,
        seed: file.seed,
        checkpoint_every: file.checkpoint_every,
        eval_every: file.eval_every,
        identity: identity.clone(),
    };
    let inputs = Inputs { pixels: HashMap::new(), sizes: HashMap::new(), retriever: None, descriptions: HashMap::new() };
    let objective =
        VlmObjective { stage, file, artifact, model, trainer, device, precision, samples, held_out, inputs, digest: identity.digest };
    run_loop(objective, settings, options)
}
