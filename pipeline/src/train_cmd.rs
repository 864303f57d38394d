//! `strata train align|instruct --config FILE`: the paper's two training stages
//! (MODEL_SPEC §5) as a job with checkpoints, resume, held-out evaluation, progress and a
//! metrics table.
//!
//! Data is LLaVA-style JSONL (`id`, `image`, `conversations` of `{from: human|gpt, value}`);
//! the first human/gpt pair of each record is one sample, `<image>` markers dropped. A resumed
//! run continues exactly as an uninterrupted one: the data order is a function of the seed and
//! the epoch, libtorch's generator is reseeded from the seed and the step before every step,
//! and a checkpoint holds the trainable weights, AdamW's moments and step counts.

use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use model::{
    artifact::{self, Artifact, Provenance},
    preprocess::RgbImage,
    train::{Precision, Stage, TrainConfig, Trainer, TrainerState},
    vlm::{StrataModel, VlmRequest},
};
use operators::retrieve::Retriever;
use rand::{seq::SliceRandom as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tch::Tensor;

use crate::cli::{TrainArgs, TrainCommand};

mod remote;
mod retriever;

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

/// One training sample.
#[derive(Debug, Clone)]
struct Sample {
    image: PathBuf,
    query: String,
    response: String,
    /// The file and line it came from, for errors found later (an unreadable image).
    origin: String,
}

/// A JSONL record: a LLaVA conversation, or (for the retriever) a plain image–text pair.
#[derive(Deserialize)]
struct Record {
    image: String,
    #[serde(default)]
    conversations: Option<Vec<Turn>>,
    #[serde(default)]
    text: Option<String>,
}

/// Which records a job takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Records {
    /// LLaVA conversations only (`train align`, `train instruct`).
    Conversations,
    /// Conversations (the first answer is the text) or `{"image", "text"}` pairs.
    Pairs,
}

#[derive(Deserialize)]
struct Turn {
    from: String,
    value: String,
}

/// Progress of a training loop: a bar on a terminal; without one (a log file, CI) the bar is
/// hidden and a plain line is printed every 5 % of the steps.
struct StepProgress {
    bar: ProgressBar,
    plain_every: Option<usize>,
    label: String,
    unit: &'static str,
    steps: usize,
    first_step: usize,
    started: Instant,
}

impl StepProgress {
    /// `label` prefixes the bar and the lines; `unit` names what a step's samples are.
    fn new(label: String, unit: &'static str, steps: usize, first_step: usize, hidden: bool) -> Self {
        let bar = ProgressBar::with_draw_target(
            Some(steps as u64),
            if hidden { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() },
        );
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:30.cyan/blue} {pos}/{len} steps, {msg}, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(label.clone());
        bar.set_position(first_step as u64);
        let plain_every = (!hidden && !std::io::stderr().is_terminal()).then(|| (steps / 20).max(1));
        Self { bar, plain_every, label, unit, steps, first_step, started: Instant::now() }
    }

    /// Records step `done` (1-based): its loss and samples per second.
    fn step(&self, done: usize, loss: f64, rate: f64) {
        self.bar.set_message(format!("loss {loss:.4}, {rate:.2} {}/s", self.unit));
        self.bar.inc(1);
        if self.plain_every.is_some_and(|every| done.is_multiple_of(every) || done == self.steps) {
            let per_step = self.started.elapsed().as_secs_f64() / (done - self.first_step) as f64;
            eprintln!(
                "{} step {done}/{}: loss {loss:.4}, {rate:.2} {}/s, eta {:.0} s",
                self.label,
                self.steps,
                self.unit,
                per_step * (self.steps - done) as f64
            );
        }
    }

    /// Seconds since the loop started.
    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Joins a path of a training file to the file's folder; object-store URLs stay as they are.
fn beside(base: &Path, path: &Path) -> PathBuf {
    if remote::is_remote(path) {
        path.to_owned()
    } else {
        base.join(path)
    }
}

/// Reads the training and held-out samples. Object-store locations (`s3://…`) are mirrored
/// locally first, with the images they name (see [`remote`]).
///
/// # Errors
/// As [`read_samples`] and [`remote::stage`]; a local JSONL with images in an object store.
fn read_data(
    data: &Path,
    held_out: Option<&Path>,
    image_root: Option<&Path>,
    records: Records,
) -> anyhow::Result<(Vec<Sample>, Option<Vec<Sample>>)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the I/O runtime")?;
    let read = |path: &Path| -> anyhow::Result<Vec<Sample>> {
        if remote::is_remote(path) {
            let (local, root) = remote::stage(&runtime, path, image_root)?;
            read_samples(&local, root.as_deref(), records)
        } else if let Some(root) = image_root.filter(|r| remote::is_remote(r)) {
            bail!(
                "`{}` is a local file but image_root `{}` is in an object store\nhint: put the JSONL in the store too, and name it by its URL",
                path.display(),
                root.display()
            )
        } else {
            read_samples(path, image_root, records)
        }
    };
    // Which setting named the file goes into the error: the same JSONL could be either.
    let samples = read(data).context("reading the training data (`data`)")?;
    let held_out = held_out.map(read).transpose().context("reading the held-out data (`held_out`)")?;
    Ok((samples, held_out))
}

/// Refuses optimiser settings that would train backwards (a negative rate is gradient ascent),
/// never stop (NaN or infinity) or do nothing: the learning rate and the clip must be finite
/// and positive, the vision tower's rate and the weight decay finite and ≥ 0 (a vision rate of
/// 0 keeps the tower as it is).
///
/// # Errors
/// The first setting out of range, named with the file.
fn check_optimiser(
    config: &Path,
    learning_rate: f64,
    vision_learning_rate: f64,
    max_grad_norm: f64,
    weight_decay: f64,
) -> anyhow::Result<()> {
    let settings = [
        ("learning_rate", learning_rate, false),
        ("vision_learning_rate", vision_learning_rate, true),
        ("max_grad_norm", max_grad_norm, false),
        ("weight_decay", weight_decay, true),
    ];
    for (name, value, zero_allowed) in settings {
        let ok = value.is_finite() && (value > 0.0 || (zero_allowed && value == 0.0));
        if !ok {
            let range = if zero_allowed { "a finite number ≥ 0" } else { "a finite number > 0" };
            bail!("`{}`: {name} is {value}; it must be {range}", config.display());
        }
    }
    Ok(())
}

/// Stops a run whose training loss is no longer finite: its weights are NaN or infinite from
/// here on, and an artifact written from them would load, verify and answer gibberish.
/// Checkpoints already written stay as they were. The loss is measured before each update, so
/// an update that ruins the weights shows one step later: a checkpoint taken on that step can
/// hold them, and an update on the very last step is not caught.
///
/// # Errors
/// When `loss` is NaN or infinite: the step, and what to change.
fn diverged(loss: f64, step: usize, out: &Path, metrics: &mut impl std::io::Write) -> anyhow::Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    metrics.flush()?;
    bail!(
        "the training loss is {loss} at step {step}: the run diverged, and no model is written to `{}`\n\
         hint: lower learning_rate or max_grad_norm, and start again with another `out`",
        out.display()
    )
}

/// Says so when a batch is larger than the training set: [`batch_indices`] then repeats samples
/// within a batch, which a user who meant a larger data set should hear before minutes of work.
fn warn_small_data(samples: usize, batch_size: usize, data: &Path) {
    if samples < batch_size {
        let what = if samples == 1 { "the one training sample".to_owned() } else { format!("the {samples} training samples") };
        eprintln!(
            "warning: batch_size {batch_size} is larger than {what} in `{}`; every batch repeats samples\nhint: lower batch_size, or check that `data` names the whole training set",
            data.display()
        );
    }
}

/// Reads LLaVA-style JSONL; errors name the file and line.
fn read_samples(path: &Path, image_root: Option<&Path>, records: Records) -> anyhow::Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))?;
    let folder = path.parent().unwrap_or(Path::new("."));
    let mut samples = Vec::new();
    let mut root: Option<PathBuf> = image_root.map(Path::to_owned);
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("`{}` line {}", path.display(), number + 1);
        let record: Record = serde_json::from_str(line).with_context(at)?;
        let (query, response) = match (&record.conversations, &record.text, records) {
            (Some(turns), _, _) => {
                let human = turns.iter().position(|t| t.from == "human").with_context(|| format!("{}: no human turn", at()))?;
                let gpt = turns
                    .get(human + 1)
                    .filter(|t| t.from == "gpt")
                    .with_context(|| format!("{}: no gpt turn after the human one", at()))?;
                (turns[human].value.replace("<image>\n", "").replace("<image>", "").trim().to_owned(), gpt.value.trim().to_owned())
            }
            (None, Some(text), Records::Pairs) => (String::new(), text.trim().to_owned()),
            (None, Some(_), Records::Conversations) => {
                bail!("{}: an image–text pair (`text`), which `strata train retriever` takes; this stage needs `conversations`", at())
            }
            (None, None, _) => bail!("{}: neither `conversations` nor `text`", at()),
        };
        let root = root.get_or_insert_with(|| {
            if folder.join(&record.image).exists() {
                folder.to_owned()
            } else {
                folder.parent().unwrap_or(folder).to_owned()
            }
        });
        let image = root.join(&record.image);
        if !image.exists() {
            bail!("{}: image `{}` does not exist\nhint: set image_root in the training file", at(), image.display());
        }
        samples.push(Sample { image, query, response, origin: at() });
    }
    if samples.is_empty() {
        bail!("`{}` holds no samples", path.display());
    }
    Ok(samples)
}

/// The model inputs of samples: each image read and preprocessed once, and, with an index,
/// each (image, query) pair's retrieved descriptions looked up once.
struct Inputs {
    pixels: HashMap<PathBuf, Tensor>,
    /// `[width, height]` of each image read, pixels (grounding references are in pixels).
    sizes: HashMap<PathBuf, [u32; 2]>,
    retriever: Option<Retriever>,
    /// Retrieved descriptions by (image, query); the image is empty for a retriever that
    /// searches by query text.
    descriptions: HashMap<(PathBuf, String), Vec<String>>,
}

impl Inputs {
    fn request(&mut self, model: &StrataModel, sample: &Sample) -> anyhow::Result<VlmRequest> {
        // A text encoder retrieves by the query alone: one search per distinct query, not one
        // per image (the templated queries of a data set repeat over thousands of images).
        let by_image = self.retriever.as_ref().is_some_and(Retriever::by_image);
        let key = (if by_image { sample.image.clone() } else { PathBuf::new() }, sample.query.clone());
        let need_descriptions = self.retriever.is_some() && !self.descriptions.contains_key(&key);
        if need_descriptions || !self.pixels.contains_key(&sample.image) {
            let (rgb, width, height) = crate::images::read_rgb(&sample.image)
                .with_context(|| format!("reading `{}` (named by {})", sample.image.display(), sample.origin))?;
            if !self.pixels.contains_key(&sample.image) {
                self.pixels.insert(sample.image.clone(), model.preprocess_rgb(&rgb, width, height)?);
                self.sizes.insert(sample.image.clone(), [u32::try_from(width)?, u32::try_from(height)?]);
            }
            if let Some(retriever) = self.retriever.as_mut().filter(|_| need_descriptions) {
                let image = RgbImage::new(usize::try_from(width)?, usize::try_from(height)?, rgb)?;
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

/// Rewrites the per-step CSV table at `path` with `header` and the rows of steps up to
/// `first_step` (those before the checkpoint a run resumes from; none for a fresh run), and
/// returns it open for the next rows, with the rows kept.
///
/// # Errors
/// When the file cannot be written.
fn restart_table(path: &Path, header: &str, first_step: usize) -> anyhow::Result<(std::fs::File, Vec<String>)> {
    let kept: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| l.split(',').next().and_then(|s| s.parse::<usize>().ok()).is_some_and(|s| s <= first_step))
        .map(str::to_owned)
        .collect();
    let mut file = std::fs::File::create(path).with_context(|| format!("writing `{}`", path.display()))?;
    writeln!(file, "{header}")?;
    for line in &kept {
        writeln!(file, "{line}")?;
    }
    Ok((file, kept))
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
            let prediction = Prediction { id, answer: serde_json::Value::String(answer.text), score: Some(answer.score) };
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

/// Sample indices of micro-batch `step`: epochs are seeded permutations, one after another.
fn batch_indices(samples: usize, batch: usize, seed: u64, step: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(batch);
    let mut permutation: Option<(usize, Vec<usize>)> = None;
    for slot in step * batch..(step + 1) * batch {
        let (epoch, position) = (slot / samples, slot % samples);
        if permutation.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..samples).collect();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(epoch as u64);
            order.shuffle(&mut rng);
            permutation = Some((epoch, order));
        }
        out.push(permutation.as_ref().map_or(position, |(_, order)| order[position]));
    }
    out
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    micro_steps: usize,
    optimizer_steps: usize,
    config_digest: String,
    /// The settings the digest covers, to name the ones that differ (absent in checkpoints
    /// written before they were kept).
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// What a run is: the settings that shape its loss curve, and their digest.
struct RunIdentity {
    digest: String,
    config: serde_json::Value,
}

impl RunIdentity {
    fn new(config: serde_json::Value) -> Self {
        let digest = format!("{:x}", sha2::Sha256::digest(config.to_string().as_bytes()))[..16].to_owned();
        Self { digest, config }
    }

    /// The state a checkpoint of this run holds.
    fn state(&self, step: usize, micro_steps: usize, optimizer_steps: usize) -> CheckpointState {
        CheckpointState { step, micro_steps, optimizer_steps, config_digest: self.digest.clone(), config: Some(self.config.clone()) }
    }

    /// `key (saved → now)` for each setting that differs from `saved`.
    fn differences(&self, saved: &serde_json::Value) -> Vec<String> {
        let (Some(now), Some(then)) = (self.config.as_object(), saved.as_object()) else { return Vec::new() };
        let mut keys: Vec<&String> = now.keys().chain(then.keys()).collect();
        keys.sort();
        keys.dedup();
        let shown = |v: Option<&serde_json::Value>| v.map_or_else(|| "unset".to_owned(), ToString::to_string);
        keys.into_iter()
            .filter(|k| now.get(*k) != then.get(*k))
            .map(|k| format!("{k} ({} → {})", shown(then.get(k)), shown(now.get(k))))
            .collect()
    }
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

fn save_checkpoint(out: &Path, step: usize, model: &StrataModel, trainer: &Trainer, identity: &RunIdentity) -> anyhow::Result<()> {
    let trainable: Vec<(String, Tensor)> = model.var_store().variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
    let state = trainer.state();
    let state = identity.state(step, state.micro_steps, state.optimizer_steps);
    write_checkpoint(out, &state, &trainable, &trainer.moments())
}

/// Writes `checkpoints/step-N/` (weights, optimiser moments, state) through a `.partial`
/// folder renamed at the end, so a kill mid-write leaves the previous checkpoint the latest.
fn write_checkpoint(out: &Path, state: &CheckpointState, weights: &[(String, Tensor)], moments: &[(String, Tensor)]) -> anyhow::Result<()> {
    let dir = out.join("checkpoints").join(format!("step-{:06}", state.step));
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).with_context(|| format!("creating `{}`", partial.display()))?;
    Tensor::write_safetensors(weights, partial.join("weights.safetensors")).context("writing the checkpoint's weights")?;
    Tensor::write_safetensors(moments, partial.join("optimizer.safetensors")).context("writing the checkpoint's optimiser state")?;
    std::fs::write(partial.join("state.json"), serde_json::to_string_pretty(state)?)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir).with_context(|| format!("finishing `{}`", dir.display()))?;
    Ok(())
}

/// Reads a checkpoint of the run `identity` into `variables` and returns its state and the
/// optimiser's moments.
///
/// # Errors
/// A checkpoint of another configuration, one holding a variable that is not in
/// `variables`, or unreadable files.
fn restore_checkpoint(
    checkpoint: &Path,
    identity: &RunIdentity,
    variables: &HashMap<String, Tensor>,
) -> anyhow::Result<(CheckpointState, HashMap<String, Tensor>)> {
    let state: CheckpointState = serde_json::from_str(&std::fs::read_to_string(checkpoint.join("state.json"))?)?;
    if state.config_digest != identity.digest {
        let differences = state.config.as_ref().map(|saved| identity.differences(saved)).unwrap_or_default();
        let what = if differences.is_empty() {
            "start, data, stage, schedule, batch or seed differ".to_owned()
        } else {
            format!("it differs in {}", differences.join(", "))
        };
        bail!(
            "`{}` was written by another training configuration (digest {} ≠ {}): {what}\nhint: resume with the configuration that made it, or give another `out`",
            checkpoint.display(),
            state.config_digest,
            identity.digest
        );
    }
    let weights: HashMap<String, Tensor> = Tensor::read_safetensors(checkpoint.join("weights.safetensors"))?.into_iter().collect();
    tch::no_grad(|| -> anyhow::Result<()> {
        for (name, saved) in &weights {
            let mut variable =
                variables.get(name).with_context(|| format!("the checkpoint holds `{name}`, which is not trained here"))?.shallow_clone();
            variable.f_copy_(saved).with_context(|| format!("the checkpoint's `{name}` does not fit the variable of that name"))?;
        }
        Ok(())
    })?;
    let moments: HashMap<String, Tensor> = Tensor::read_safetensors(checkpoint.join("optimizer.safetensors"))?.into_iter().collect();
    Ok((state, moments))
}

fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(out.join("checkpoints"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.extension().is_none() && p.join("state.json").exists())
        .collect();
    found.sort();
    found.pop()
}

/// `strata train ...`.
///
/// # Errors
/// An unreadable or invalid training file or data, a checkpoint of another configuration,
/// model errors.
pub fn run(command: TrainCommand) -> anyhow::Result<ExitCode> {
    let (stage, args) = match command {
        TrainCommand::Align(args) => (Stage::Alignment, args),
        TrainCommand::Instruct(args) => (Stage::InstructionTuning, args),
        TrainCommand::Retriever(args) => return retriever::train(&args),
    };
    train(stage, &args)
}

fn train(stage: Stage, args: &TrainArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading `{}`", args.config.display()))?;
    let mut file: TrainFile = toml::from_str(&text).with_context(|| format!("in `{}`", args.config.display()))?;
    let base = args.config.parent().unwrap_or(Path::new("."));
    for path in [&mut file.model, &mut file.out] {
        *path = base.join(&*path);
    }
    file.data = beside(base, &file.data);
    file.held_out = file.held_out.map(|p| beside(base, &p));
    file.image_root = file.image_root.map(|p| beside(base, &p));
    file.retrieval_encoder = file.retrieval_encoder.map(|p| base.join(p));
    // An index path is relative to the file too; a URL (s3://, file://) is taken as it is.
    file.index = file.index.map(|index| if index.contains("://") { index } else { base.join(index).to_string_lossy().into_owned() });
    let counts = [
        ("steps", file.steps),
        ("batch_size", file.batch_size),
        ("grad_accumulation", file.grad_accumulation),
        ("checkpoint_every", file.checkpoint_every),
        ("eval_every", file.eval_every),
    ];
    if let Some((name, _)) = counts.iter().find(|(_, value)| *value == 0) {
        bail!("`{}`: {name} is 0; it must be at least 1", args.config.display());
    }
    if !file.checkpoint_every.is_multiple_of(file.grad_accumulation) {
        bail!(
            "`{}`: checkpoint_every ({}) must be a multiple of grad_accumulation ({}): checkpoints are taken on optimiser steps",
            args.config.display(),
            file.checkpoint_every,
            file.grad_accumulation
        );
    }
    check_optimiser(&args.config, file.learning_rate, file.vision_learning_rate, file.max_grad_norm, file.weight_decay)?;
    let precision = Precision::parse(&file.precision).map_err(|e| anyhow::anyhow!("`{}`: precision: {e}", args.config.display()))?;
    let (samples, held_out) = read_data(&file.data, file.held_out.as_deref(), file.image_root.as_deref(), Records::Conversations)?;
    warn_small_data(samples.len(), file.batch_size, &file.data);

    let artifact = Artifact::open(&file.model)?;
    let device = model::device::select(args.device)?;
    // Weights and AdamW's moments in f32 on every device (no pure-bf16 optimiser); on CUDA the
    // forward passes run under bf16 autocast unless the file says `precision = "f32"`.
    let mut model = artifact.load(device.device(), tch::Kind::Float).with_context(|| format!("loading `{}`", file.model.display()))?;
    let optimizer_steps = file.steps.div_ceil(file.grad_accumulation);
    let config = TrainConfig {
        stage,
        learning_rate: file.learning_rate,
        vision_learning_rate: file.vision_learning_rate,
        weight_decay: file.weight_decay,
        warmup_steps: file.warmup_steps.unwrap_or(optimizer_steps / 20),
        total_steps: optimizer_steps,
        grad_accumulation: file.grad_accumulation,
        max_grad_norm: file.max_grad_norm,
        precision,
        train_base_llm: file.train_base_llm,
    };
    let mut trainer = Trainer::new(&model, config)?;
    let identity = config_digest(stage, &file, &artifact.manifest.version);
    std::fs::create_dir_all(&file.out).with_context(|| format!("creating `{}`", file.out.display()))?;

    // Resume: the latest checkpoint of this very configuration.
    let mut first_step = 0;
    let checkpoint = latest_checkpoint(&file.out);
    if checkpoint.is_none() && args.resume {
        // Said rather than refused: a script may pass --resume on every start.
        eprintln!("note: `{}` holds no checkpoint yet; --resume starts the run from step 0", file.out.display());
    }
    if let Some(checkpoint) = checkpoint {
        if !args.resume {
            bail!("`{}` already holds checkpoints of a run\nhint: add --resume to continue it, or give another `out`", file.out.display());
        }
        let (state, moments) = restore_checkpoint(&checkpoint, &identity, &model.var_store().variables())?;
        trainer.restore(TrainerState { micro_steps: state.micro_steps, optimizer_steps: state.optimizer_steps }, &moments)?;
        first_step = state.step;
        let out_model = file.out.join("model");
        if first_step >= file.steps && out_model.join("manifest.json").is_file() {
            println!(
                "`{}` finished all {} steps already: its model is {} (nothing to do)",
                file.out.display(),
                file.steps,
                out_model.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("resuming from {} (step {first_step})", checkpoint.display());
    }

    // metrics.csv keeps the rows up to the checkpoint resumed from.
    let metrics_path = file.out.join("metrics.csv");
    let (mut metrics, kept) = restart_table(&metrics_path, "step,split,loss,learning_rate,samples_per_s,elapsed_s", first_step)?;
    // The loss reported at the end, should no step remain (a run stopped after its last checkpoint).
    let resumed_loss = kept
        .iter()
        .rev()
        .find_map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            (fields.get(1) == Some(&"train")).then(|| fields.get(2).and_then(|v| v.parse::<f64>().ok())).flatten()
        })
        .unwrap_or(f64::NAN);

    // The index may live in an object store: its reads run on this runtime, kept for the run.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the I/O runtime")?;
    let retriever = match &file.index {
        Some(index) => {
            let retrieval = crate::cli::RetrievalArgs {
                index: Some(index.clone()),
                retrieval_encoder: file.retrieval_encoder.clone(),
                retrieve_k: file.retrieve_k,
                ef: None,
            };
            crate::retriever::open(&retrieval, model.config().retrieval.top_k, device.device(), &runtime)
                .with_context(|| format!("opening the index `{index}`"))?
        }
        None => None,
    };
    // eval.csv: the task metrics of the held-out answers, kept up to the checkpoint as well.
    let (mut eval_csv, _) = restart_table(&file.out.join("eval.csv"), "step,task,metric,value,samples", first_step)?;

    let mut pixels = Inputs { pixels: HashMap::new(), sizes: HashMap::new(), retriever, descriptions: HashMap::new() };
    eprintln!(
        "training {stage:?} on {} ({}), {} steps of {} samples",
        device.describe(),
        if precision.autocasts(device.device()) { "bf16 autocast over f32 weights" } else { "f32" },
        file.steps,
        file.batch_size
    );
    let progress = StepProgress::new(format!("{stage:?}"), "samples", file.steps, first_step, args.no_progress);
    let bar = &progress.bar;
    let mut last_loss = resumed_loss;
    for step in first_step..file.steps {
        // Dropout draws from libtorch's generator: reseeded per step, a resumed run draws alike.
        tch::manual_seed(file.seed.wrapping_mul(1_000_003).wrapping_add(step as u64) as i64);
        let indices = batch_indices(samples.len(), file.batch_size, file.seed, step);
        let mut requests = Vec::with_capacity(indices.len());
        let mut responses = Vec::with_capacity(indices.len());
        for i in indices {
            requests.push(pixels.request(&model, &samples[i])?);
            responses.push(samples[i].response.clone());
        }
        let tick = Instant::now();
        let outcome = trainer.step(&mut model, &requests, &responses)?;
        let rate = file.batch_size as f64 / tick.elapsed().as_secs_f64();
        last_loss = outcome.loss;
        writeln!(metrics, "{},train,{:.6},{:.3e},{rate:.3},{:.1}", step + 1, outcome.loss, outcome.learning_rate, progress.elapsed())?;
        diverged(outcome.loss, step + 1, &file.out, &mut metrics)?;
        let done = step + 1;
        progress.step(done, outcome.loss, rate);
        if let Some(held_out) = held_out.as_ref().filter(|_| done.is_multiple_of(file.eval_every) || done == file.steps) {
            let take = held_out.len().min(file.eval_samples);
            let mut total = 0.0;
            for chunk in held_out[..take].chunks(file.batch_size) {
                let requests: Vec<VlmRequest> = chunk.iter().map(|s| pixels.request(&model, s)).collect::<anyhow::Result<_>>()?;
                let responses: Vec<String> = chunk.iter().map(|s| s.response.clone()).collect();
                let _autocast = precision.scope(device.device());
                total +=
                    tch::no_grad(|| model.loss(&requests, &responses))?.to_kind(tch::Kind::Float).double_value(&[]) * chunk.len() as f64;
            }
            let loss = total / take as f64;
            writeln!(metrics, "{done},held_out,{loss:.6},,,{:.1}", progress.elapsed())?;
            let scores = held_out_scores(&mut model, &mut pixels, &held_out[..take], file.batch_size, file.eval_max_new_tokens)?;
            for (task, metric, value, n) in &scores {
                writeln!(eval_csv, "{done},{task},{metric},{value:.6},{n}")?;
            }
            eval_csv.flush()?;
            let headline: Vec<String> = scores
                .iter()
                .filter(|(_, metric, _, _)| HEADLINE_METRICS.contains(&metric.as_str()))
                .map(|(task, metric, value, _)| format!("{task} {metric} {value:.3}"))
                .collect();
            bar.println(format!("step {done}: held-out loss {loss:.4} ({take} samples); {}", headline.join(", ")));
        }
        // Checkpoints fall on optimiser steps: gradients half-accumulated are not saved.
        let boundary = done.is_multiple_of(file.grad_accumulation);
        let stopping = args.stop_after.is_some_and(|n| done - first_step >= n) && done < file.steps && boundary;
        if done.is_multiple_of(file.checkpoint_every) || done == file.steps || stopping {
            metrics.flush()?;
            save_checkpoint(&file.out, done, &model, &trainer, &identity)?;
        }
        if stopping {
            bar.finish_and_clear();
            println!("stopped after step {done} of {}, checkpointed; continue with --resume", file.steps);
            return Ok(ExitCode::SUCCESS);
        }
    }
    bar.finish_and_clear();
    metrics.flush()?;

    let version = file
        .model_version
        .clone()
        .unwrap_or_else(|| format!("{}-{}", artifact.manifest.version, if stage == Stage::Alignment { "align" } else { "instruct" }));
    let provenance = Provenance {
        version: version.clone(),
        parent_version: Some(artifact.manifest.version.clone()),
        training_run: Some(format!("{} ({})", file.out.display(), identity.digest)),
    };
    let out_model = file.out.join("model");
    artifact::save(&model, &artifact.dir.join("tokenizer.json"), &out_model, &provenance)?;
    println!(
        "trained `{version}` for {} steps ({stage:?}, last loss {last_loss:.4}) in {:.0} s: {}\nmetrics: {}",
        file.steps,
        progress.elapsed(),
        out_model.display(),
        metrics_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::batch_indices;

    #[test]
    fn batches_walk_seeded_epochs_without_repeats_within_one() {
        let first_epoch: Vec<usize> = (0..5).flat_map(|step| batch_indices(10, 2, 7, step)).collect();
        let mut sorted = first_epoch.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>(), "an epoch visits every sample once");
        assert_ne!(first_epoch, (0..10).collect::<Vec<_>>(), "shuffled");
        assert_eq!(batch_indices(10, 3, 7, 4), batch_indices(10, 3, 7, 4), "a function of (seed, step)");
        assert_ne!(batch_indices(10, 2, 7, 5), batch_indices(10, 2, 7, 0), "the next epoch is another permutation");
        assert_eq!(batch_indices(10, 3, 7, 3).len(), 3, "a batch may straddle two epochs");
    }
}
