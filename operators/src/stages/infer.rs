//! The inference stage: tiles in, per-task answers out (MODEL_SPEC §2–6).
//!
//! Tiles are gathered into micro-batches (at most `max_batch_tiles`, waiting at most
//! `max_wait` for more; a scene marker does not cut one short). Per batch: read and decode the tile images, preprocess them as the
//! vision tower expects, retrieve the top-k descriptions (by image with a CLIP encoder, else
//! by each task's query text — once per distinct query), run every requested task of every
//! tile as one batched generation (rows that finish early leave the decoding batch; with
//! `decode_slots`, waiting rows take their slots: continuous batching), parse the
//! answers (class matching, VQA normalisation, the total box parser) and tag each with the
//! model version, the retrieved description ids and timings.
//!
//! A model failure (a libtorch error, out of memory, even a panic) fails exactly that batch's
//! tiles as internal errors — each becomes a dead-letter record that travels on to the sink —
//! and the stage keeps serving; a tile is never lost silently. Scene markers and upstream
//! failures wait in the micro-batch and pass through after the results of the tiles sent
//! before them, so order is kept.

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use model::tch::Tensor;
use model::{
    generate::{GenerationConfig, Sampling},
    preprocess::RgbImage,
    tasks,
    vlm::{Answer, StrataModel, VlmRequest},
};
use object_store::ObjectStoreExt as _;
use retrieval::{Retrieved, Retriever};
use schemas::{
    ResultMessage, RetrievedDescription, Stage as StageName, StageTimings, TaskAnswer, TaskOutput, TaskSpec, TileMessage, TileResult,
    TiledTile, SCHEMA_VERSION,
};
use tracing::Instrument as _;

use crate::{
    stage::{Collector, Envelope, Stage, StageError, StageErrorKind},
    OperatorError,
};

/// The model behind the stage: anything that turns prompts about images into answers. The
/// real one is [`LoadedModel`]; tests wrap it to inject failures.
pub trait TileModel: Send + 'static {
    /// The artifact version every output is tagged with.
    fn version(&self) -> &str;
    /// Descriptions per image the model takes (its top-k).
    fn top_k(&self) -> usize;
    /// Normalised pixels `[3, side, side]` for an RGB image.
    ///
    /// # Errors
    /// When the image buffer is malformed.
    fn preprocess(&self, image: &RgbImage) -> Result<Tensor, model::ModelError>;
    /// One answer per request, in order.
    ///
    /// # Errors
    /// Any model failure.
    fn answer(&mut self, requests: &[VlmRequest], config: &GenerationConfig) -> Result<Vec<Answer>, model::ModelError>;
    /// Whether a task's prompt text fits the model ([`StrataModel::check_query`]); a model
    /// without a budget accepts everything.
    ///
    /// # Errors
    /// Why it does not fit, in words a user can act on.
    fn check_query(&self, query: &str) -> Result<(), model::ModelError> {
        let _ = query;
        Ok(())
    }
}

/// A verified artifact loaded on a device.
#[derive(Debug)]
pub struct LoadedModel {
    model: StrataModel,
    version: String,
}

impl LoadedModel {
    /// Loads the artifact at `location` (a directory or an object-store URL, fetched once into
    /// the cache) on `device` after checking every file's sha256, with its weights in the type
    /// `precision` gives there (f32 or bf16; the artifact holds f32).
    ///
    /// # Errors
    /// When the artifact cannot be fetched, does not verify, or does not load.
    pub async fn load(
        location: &str,
        device: model::device::DevicePreference,
        precision: model::device::Precision,
    ) -> Result<Self, OperatorError> {
        let resolved = storage::resolve(location)?;
        let (dir, reused) = storage::artifacts::fetch_model(&resolved).await?;
        if resolved.local_path().is_none() {
            tracing::info!(model = %resolved.url(), cache = %dir.display(), reused, "Model artifact ready in the cache.");
        }
        let action = format!("loading the model `{location}`");
        crate::blocking(move || {
            let artifact = model::artifact::Artifact::open(&dir)?;
            let device = model::device::select(device)?.with_precision(precision);
            let model = artifact.load_for_inference(&device)?;
            Ok(Self { model, version: artifact.manifest.version })
        })
        .await?
        .map_err(|source| OperatorError::Model { action, source })
    }

    /// The device the weights are on.
    pub fn device(&self) -> model::tch::Device {
        self.model.device()
    }
}

impl TileModel for LoadedModel {
    fn version(&self) -> &str {
        &self.version
    }

    fn top_k(&self) -> usize {
        self.model.config().retrieval.top_k
    }

    fn preprocess(&self, image: &RgbImage) -> Result<Tensor, model::ModelError> {
        self.model.preprocess(image)
    }

    fn answer(&mut self, requests: &[VlmRequest], config: &GenerationConfig) -> Result<Vec<Answer>, model::ModelError> {
        self.model.generate(requests, config)
    }

    fn check_query(&self, query: &str) -> Result<(), model::ModelError> {
        self.model.check_query(query)
    }
}

/// Tiles per micro-batch unless set (`--batch-size`).
pub const fn default_max_batch_tiles() -> usize {
    8
}
const fn default_max_wait_ms() -> u64 {
    50
}
/// Longest answer unless set (`--max-new-tokens`), tokens.
pub const fn default_max_new_tokens() -> i64 {
    64
}

/// How the stage batches and generates.
#[derive(Debug, Clone, PartialEq)]
pub struct InferConfig {
    /// Tiles per micro-batch.
    pub max_batch_tiles: usize,
    /// How long a partial micro-batch waits for more tiles.
    pub max_wait: Duration,
    /// Longest answer, in tokens (detections with many boxes need more).
    pub max_new_tokens: i64,
    /// Answers decoded at once at most (`--decode-slots`): when one finishes, the next
    /// waiting task of the micro-batch takes its slot at the next step (continuous batching,
    /// [`GenerationConfig::slots`]); `None`: every task of the micro-batch at once.
    pub decode_slots: Option<usize>,
}

impl Default for InferConfig {
    fn default() -> Self {
        Self {
            max_batch_tiles: default_max_batch_tiles(),
            max_wait: Duration::from_millis(default_max_wait_ms()),
            max_new_tokens: default_max_new_tokens(),
            decode_slots: None,
        }
    }
}

/// The inference stage.
pub struct InferStage<M: TileModel> {
    engine: Arc<Mutex<Engine<M>>>,
    version: String,
    config: InferConfig,
    /// Tiles waiting for the next micro-batch, with the scene markers and failure records
    /// that arrived between them (they go out in arrival order, after the results before them).
    pending: Vec<Envelope<TileMessage>>,
    /// Tiles in `pending`.
    pending_tiles: usize,
    /// New model versions, loaded and verified elsewhere, switched to between batches.
    updates: Option<tokio::sync::mpsc::Receiver<M>>,
}

struct Engine<M> {
    model: M,
    retriever: Option<Retriever>,
}

impl<M: TileModel> InferStage<M> {
    /// A stage answering with `model`, retrieving with `retriever` when given.
    pub fn new(model: M, retriever: Option<Retriever>, config: InferConfig) -> Self {
        let version = model.version().to_owned();
        Self {
            engine: Arc::new(Mutex::new(Engine { model, retriever })),
            version,
            config,
            pending: Vec::new(),
            pending_tiles: 0,
            updates: None,
        }
    }

    /// Hot swap: models sent on `updates` (loaded and verified by the sender) replace the
    /// serving one before the next micro-batch. A batch already running finishes on the model
    /// it started with, so every result carries the version that produced it and no tile is
    /// dropped; the old model is freed when the new one takes over.
    #[must_use]
    pub fn with_updates(mut self, updates: tokio::sync::mpsc::Receiver<M>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// Switches to the newest model waiting on the updates channel, if any.
    fn take_update(&mut self) {
        let Some(updates) = self.updates.as_mut() else { return };
        let mut newest = None;
        while let Ok(model) = updates.try_recv() {
            newest = Some(model);
        }
        if let Some(model) = newest {
            let previous = std::mem::replace(&mut self.version, model.version().to_owned());
            let mut engine = self.engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            engine.model = model;
            tracing::info!(from = %previous, to = %self.version, "Now serving a new model version.");
        }
    }

    /// The version of the model answering (recorded on every result).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Checks that every task's text fits the model (what each tile would be checked for),
    /// so a batch can refuse a task before any scene is read.
    ///
    /// # Errors
    /// [`OperatorError::Model`] naming the first task that does not fit, and why.
    pub fn check_tasks(&self, tasks: &[TaskSpec]) -> Result<(), OperatorError> {
        let engine = self.engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (i, task) in tasks.iter().enumerate() {
            engine.model.check_query(&task_query(task)).map_err(|source| OperatorError::Model {
                action: format!("task {} ({}) does not fit the model `{}`", i + 1, task.kind().as_str(), self.version),
                source,
            })?;
        }
        Ok(())
    }

    /// Runs the pending micro-batch and emits its results (or its tiles' dead letters).
    async fn run_pending(&mut self, out: &mut Collector<ResultMessage>) -> Result<(), StageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.take_update();
        let batch = std::mem::take(&mut self.pending);
        let tiles = std::mem::take(&mut self.pending_tiles);
        let span = tracing::info_span!("infer_batch", tiles, model_version = %self.version);
        self.answer_and_emit(batch, out).instrument(span).await
    }

    async fn answer_and_emit(&mut self, batch: Vec<Envelope<TileMessage>>, out: &mut Collector<ResultMessage>) -> Result<(), StageError> {
        // Images first (async object-store reads); a tile whose image cannot be read fails alone.
        let mut jobs = Vec::with_capacity(batch.len());
        let mut load_errors: HashMap<usize, OperatorError> = HashMap::new();
        for (i, envelope) in batch.iter().enumerate() {
            let TileMessage::Tile(tile) = &envelope.payload else { continue };
            let started = Instant::now();
            // A store that is briefly away is waited for; a missing or corrupt image fails now.
            let load = || load_tile_image(tile);
            let loaded = backon::Retryable::retry(load, crate::stage::retry_policy(4))
                .when(|e: &OperatorError| e.class() == crate::ErrorClass::Retryable)
                .await;
            match loaded {
                Ok(image) => jobs.push((i, tile.clone(), image, started.elapsed().as_secs_f64() * 1e3)),
                Err(error) => {
                    load_errors.insert(i, error);
                }
            }
        }
        // A task whose text is over the model's budget fails its own tile, as the input's
        // fault, before the batch runs: one over-long target must not fail the other tiles
        // (maybe other users' scenes) that share its micro-batch.
        let mut rejected: HashMap<usize, String> = HashMap::new();
        {
            let engine = self.engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            jobs.retain(|(i, tile, _, _)| match tile.task.tasks.iter().find_map(|t| engine.model.check_query(&task_query(t)).err()) {
                Some(error) => {
                    rejected.insert(*i, error.to_string());
                    false
                }
                None => true,
            });
        }
        let engine = Arc::clone(&self.engine);
        let config = self.config.clone();
        let version = self.version.clone();
        let batch_started = Instant::now();
        // The model runs on a blocking thread; a panic there is caught by the runtime and
        // becomes an internal error of this batch, and the engine stays usable (its lock is
        // taken back from the poison: generation starts from a clean KV cache every call).
        let answered = tokio::task::spawn_blocking(move || {
            let mut engine = engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            std::panic::catch_unwind(AssertUnwindSafe(|| answer_batch(&mut engine, jobs, &config, &version)))
                .unwrap_or_else(|panic| Err(format!("the model panicked: {}", panic_message(&panic))))
        })
        .await
        .unwrap_or_else(|e| Err(format!("the inference worker failed: {e}")));
        let tiles = batch.iter().filter(|e| matches!(e.payload, TileMessage::Tile(_))).count();
        let metrics = batch_metrics();
        metrics.tiles.observe(tiles as f64);
        metrics.seconds.observe(batch_started.elapsed().as_secs_f64());
        let mut results: HashMap<usize, TileResult> = HashMap::new();
        let batch_error = match answered {
            Ok(done) => {
                results.extend(done);
                None
            }
            Err(reason) => {
                tracing::error!(error = %reason, tiles, "Inference failed for a batch; dead-lettering its tiles.");
                Some(reason)
            }
        };
        for (i, envelope) in batch.into_iter().enumerate() {
            if let Some(passed) = passed_through(&envelope.payload) {
                out.collect(envelope.derive(passed)).await.map_err(|e| StageError::new(StageName::Infer, StageErrorKind::Internal, e))?;
                continue;
            }
            let payload = envelope.payload.clone();
            let message = match (results.remove(&i), load_errors.remove(&i)) {
                (Some(result), _) => ResultMessage::Result(result),
                (None, None) if rejected.contains_key(&i) => {
                    let reason = rejected.remove(&i).unwrap_or_default();
                    let error = StageError::new(StageName::Infer, StageErrorKind::Permanent, reason);
                    ResultMessage::Failed(error.dead_letter(&payload, &envelope.position, 1))
                }
                (None, Some(error)) => {
                    let error = StageError::from_operator(StageName::Infer, error);
                    ResultMessage::Failed(error.dead_letter(&payload, &envelope.position, 1))
                }
                (None, None) => {
                    let reason = batch_error.clone().unwrap_or_else(|| "the model returned no answer for the tile".to_owned());
                    let error = StageError::new(StageName::Infer, StageErrorKind::Internal, reason);
                    ResultMessage::Failed(error.dead_letter(&payload, &envelope.position, 1))
                }
            };
            out.collect(envelope.derive(message)).await.map_err(|e| StageError::new(StageName::Infer, StageErrorKind::Internal, e))?;
        }
        Ok(())
    }
}

/// The stage's Prometheus metrics, in the default registry (a runtime that exports metrics
/// gathers them with its own).
struct BatchMetrics {
    /// `strata_infer_batch_tiles`: tiles per micro-batch.
    tiles: prometheus::Histogram,
    /// `strata_infer_batch_seconds`: retrieval, generation and parsing of one micro-batch.
    seconds: prometheus::Histogram,
}

#[allow(clippy::expect_used)] // fixed names and buckets, registered once: cannot fail
fn batch_metrics() -> &'static BatchMetrics {
    static METRICS: std::sync::OnceLock<BatchMetrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| BatchMetrics {
        tiles: prometheus::register_histogram!(
            "strata_infer_batch_tiles",
            "Tiles per inference micro-batch.",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
        )
        .expect("register"),
        seconds: prometheus::register_histogram!(
            "strata_infer_batch_seconds",
            "Seconds to answer one micro-batch (retrieval, generation, parsing).",
            prometheus::exponential_buckets(0.05, 2.0, 14).expect("buckets")
        )
        .expect("register"),
    })
}

/// What the stage forwards unchanged: a scene marker or an upstream failure record (`None`
/// for a tile, which is answered).
fn passed_through(message: &TileMessage) -> Option<ResultMessage> {
    match message {
        TileMessage::Tile(_) => None,
        TileMessage::SceneTiled(marker) => Some(ResultMessage::SceneTiled(marker.clone())),
        TileMessage::Failed(record) => Some(ResultMessage::Failed(record.clone())),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned())).unwrap_or_default()
}

/// Reads a tile image from its object store and decodes it with the decoder training and
/// evaluation use ([`RgbImage::decode`]).
async fn load_tile_image(tile: &TiledTile) -> Result<RgbImage, OperatorError> {
    let uri = &tile.task.tile.uri;
    let location = storage::resolve(uri)?;
    let storage_err = |source| OperatorError::Storage { uri: uri.clone(), source };
    let bytes = location.store().get(location.path()).await.map_err(storage_err)?.bytes().await.map_err(storage_err)?;
    RgbImage::decode(&bytes, &format!("tile `{uri}`"))
        .map_err(|e| OperatorError::BadScene { scene: tile.task.scene_id.clone(), reason: e.to_string() })
}

/// The query text of a task (MODEL_SPEC §6).
pub fn task_query(task: &TaskSpec) -> String {
    match task {
        TaskSpec::Caption { prompt } => prompt.clone().unwrap_or_else(|| tasks::CAPTION_PROMPT.to_owned()),
        TaskSpec::Classify { classes, prompt } => tasks::classify_prompt(prompt.as_deref(), classes),
        TaskSpec::Vqa { question } => tasks::vqa_prompt(question),
        TaskSpec::Detect { target } => tasks::detect_prompt(target),
    }
}

/// Turns a generated answer into a task output.
pub fn parse_answer(task: &TaskSpec, answer: &Answer) -> TaskOutput {
    let score = answer.score as f32;
    match task {
        TaskSpec::Caption { .. } => TaskOutput::Caption { text: answer.text.clone(), score },
        TaskSpec::Classify { classes, .. } => TaskOutput::Classify {
            label: tasks::match_class(&answer.text, classes).map(|i| classes[i].clone()),
            raw_answer: answer.text.clone(),
            score,
        },
        TaskSpec::Vqa { question } => TaskOutput::Vqa { question: question.clone(), answer: tasks::normalize_answer(&answer.text), score },
        TaskSpec::Detect { target } => {
            let parsed = tasks::parse_boxes(&answer.text);
            TaskOutput::Detect {
                target: target.clone(),
                boxes: parsed.boxes.iter().map(|b| schemas::GridBox { x1: b.x1, y1: b.y1, x2: b.x2, y2: b.y2 }).collect(),
                parse_errors: parsed.errors,
                raw_answer: answer.text.clone(),
                score,
                // The model scores each well-formed box by the same parse rule; a count that
                // differs (a producer that scored none) leaves every box the answer's score.
                box_scores: if answer.box_scores.len() == parsed.boxes.len() {
                    answer.box_scores.iter().map(|s| *s as f32).collect()
                } else {
                    Vec::new()
                },
            }
        }
    }
}

/// Runs one micro-batch on the blocking thread: preprocess, retrieve, generate, parse.
fn answer_batch<M: TileModel>(
    engine: &mut Engine<M>,
    jobs: Vec<(usize, TiledTile, RgbImage, f64)>,
    config: &InferConfig,
    version: &str,
) -> Result<Vec<(usize, TileResult)>, String> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let model_err = |e: model::ModelError| e.to_string();
    let mut pixels = Vec::with_capacity(jobs.len());
    for (_, _, image, _) in &jobs {
        pixels.push(engine.model.preprocess(image).map_err(model_err)?);
    }

    // Retrieval: one search per tile by image, or one per distinct task query by text.
    let started = Instant::now();
    let top_k = engine.model.top_k();
    let mut by_query: HashMap<String, Vec<Retrieved>> = HashMap::new();
    let mut by_tile: Vec<Vec<Retrieved>> = vec![Vec::new(); jobs.len()];
    if let Some(retriever) = engine.retriever.as_mut() {
        if retriever.by_image() {
            let images: Vec<RgbImage> = jobs.iter().map(|(_, _, image, _)| image.clone()).collect();
            by_tile = retriever.retrieve(&images, &[]).map_err(|e| e.to_string())?;
        } else {
            let mut queries: Vec<String> = jobs.iter().flat_map(|(_, tile, _, _)| tile.task.tasks.iter().map(task_query)).collect();
            queries.sort();
            queries.dedup();
            let found = retriever.retrieve(&[], &queries).map_err(|e| e.to_string())?;
            by_query.extend(queries.into_iter().zip(found));
        }
    }
    let retrieve_ms = started.elapsed().as_secs_f64() * 1e3;

    // Every task of every tile is one row of one batched generation.
    let mut requests = Vec::new();
    let mut owners: Vec<(usize, usize, Vec<Retrieved>)> = Vec::new();
    for (j, (_, tile, _, _)) in jobs.iter().enumerate() {
        for (t, task) in tile.task.tasks.iter().enumerate() {
            let query = task_query(task);
            let mut retrieved = match by_query.get(&query) {
                Some(found) => found.clone(),
                None => by_tile[j].clone(),
            };
            retrieved.truncate(top_k.max(1));
            let descriptions = retrieved.iter().map(|r| r.text.clone()).collect();
            requests.push(VlmRequest { pixels: pixels[j].shallow_clone(), query, descriptions });
            owners.push((j, t, retrieved));
        }
    }
    let started = Instant::now();
    let generation = GenerationConfig {
        max_new_tokens: config.max_new_tokens,
        sampling: Sampling::Greedy,
        stop_tokens: Vec::new(),
        seed: None,
        slots: config.decode_slots,
    };
    let answers = if requests.is_empty() { Vec::new() } else { engine.model.answer(&requests, &generation).map_err(model_err)? };
    if answers.len() != requests.len() {
        return Err(format!("the model returned {} answers for {} prompts", answers.len(), requests.len()));
    }
    let infer_ms = started.elapsed().as_secs_f64() * 1e3;

    let mut outputs: Vec<Vec<TaskAnswer>> = jobs.iter().map(|(_, tile, _, _)| Vec::with_capacity(tile.task.tasks.len())).collect();
    for ((j, t, retrieved), answer) in owners.into_iter().zip(&answers) {
        let task = &jobs[j].1.task.tasks[t];
        outputs[j].push(TaskAnswer {
            output: parse_answer(task, answer),
            retrieved: retrieved.iter().map(|r| RetrievedDescription { id: r.id.clone(), score: r.score }).collect(),
            descriptions_used: u32::try_from(answer.descriptions_used).unwrap_or(u32::MAX),
            complete: answer.complete,
        });
    }
    let share = jobs.len() as f64;
    Ok(jobs
        .into_iter()
        .zip(outputs)
        .map(|((i, tile, _, load_ms), outputs)| {
            let result = TileResult {
                schema_version: SCHEMA_VERSION,
                tile: tile.task,
                valid_fraction: tile.valid_fraction,
                model_version: version.to_owned(),
                outputs,
                timings: StageTimings { load_ms, retrieve_ms: retrieve_ms / share, infer_ms: infer_ms / share },
                produced_at: Utc::now(),
            };
            (i, result)
        })
        .collect())
}

impl<M: TileModel> Stage for InferStage<M> {
    type In = TileMessage;
    type Out = ResultMessage;

    fn name(&self) -> StageName {
        StageName::Infer
    }

    async fn process(&mut self, input: Envelope<TileMessage>, out: &mut Collector<ResultMessage>) -> Result<(), StageError> {
        let closed = |e| StageError::new(StageName::Infer, StageErrorKind::Internal, e);
        if self.pending.is_empty() {
            // Nothing to keep in order with: a marker or failure record goes on now.
            if let Some(passed) = passed_through(&input.payload) {
                return out.collect(input.derive(passed)).await.map_err(closed);
            }
        }
        // A scene marker or failure record waits behind the tiles before it (their results
        // go out first) without cutting the micro-batch short: the next scene's tiles may
        // join it, so small scenes still fill the decoding batch.
        if matches!(input.payload, TileMessage::Tile(_)) {
            self.pending_tiles += 1;
        }
        self.pending.push(input);
        if self.pending_tiles >= self.config.max_batch_tiles.max(1) {
            self.run_pending(out).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, out: &mut Collector<ResultMessage>) -> Result<(), StageError> {
        self.run_pending(out).await
    }

    fn max_wait(&self) -> Option<Duration> {
        Some(self.config.max_wait)
    }
}

/// The stand-in for inference when no model is given (`strata batch` without `--model`):
/// each tile becomes a result with no answers, so the tables still get the tiles and the scene
/// summary. A tile that asks for tasks is refused (permanent): they need a model.
#[derive(Debug, Default, Clone, Copy)]
pub struct TilesOnly;

/// The model version recorded on results that ran no model.
pub const NO_MODEL: &str = "none";

impl Stage for TilesOnly {
    type In = TileMessage;
    type Out = ResultMessage;

    fn name(&self) -> StageName {
        StageName::Infer
    }

    async fn process(&mut self, input: Envelope<TileMessage>, out: &mut Collector<ResultMessage>) -> Result<(), StageError> {
        let message = match &input.payload {
            TileMessage::Tile(tile) if !tile.task.tasks.is_empty() => {
                return Err(StageError::new(
                    StageName::Infer,
                    StageErrorKind::Permanent,
                    format!("tile `{}` asks for {} task(s) but no model is loaded", tile.task.tile_id, tile.task.tasks.len()),
                ));
            }
            TileMessage::Tile(tile) => ResultMessage::Result(TileResult {
                schema_version: SCHEMA_VERSION,
                tile: tile.task.clone(),
                valid_fraction: tile.valid_fraction,
                model_version: NO_MODEL.to_owned(),
                outputs: Vec::new(),
                timings: StageTimings::default(),
                produced_at: Utc::now(),
            }),
            TileMessage::SceneTiled(marker) => ResultMessage::SceneTiled(marker.clone()),
            TileMessage::Failed(record) => ResultMessage::Failed(record.clone()),
        };
        out.collect(input.derive(message)).await.map_err(|e| StageError::new(StageName::Infer, StageErrorKind::Internal, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &str) -> Answer {
        Answer { text: text.to_owned(), tokens: Vec::new(), score: 0.5, box_scores: Vec::new(), complete: true, descriptions_used: 0 }
    }

    /// The stage labels tiles with the rule `strata eval score` scores by (`model::tasks`):
    /// the longest class named as whole words, and VQA answers in their normalised form.
    #[test]
    fn answers_are_parsed_with_the_rule_eval_scores_by() {
        let classes: Vec<String> = ["park", "parking", "port", "airport", "stadium"].iter().map(|c| (*c).to_owned()).collect();
        let task = TaskSpec::Classify { classes, prompt: None };
        for (text, label) in [("An airport with several planes.", "airport"), ("parking lot", "parking"), ("a sports stadium", "stadium")] {
            match parse_answer(&task, &answer(text)) {
                TaskOutput::Classify { label: got, raw_answer, .. } => {
                    assert_eq!(got.as_deref(), Some(label), "{text}");
                    assert_eq!(raw_answer, text);
                }
                other => panic!("{other:?}"),
            }
        }
        let task = TaskSpec::Vqa { question: "How many ships?".into() };
        match parse_answer(&task, &answer("Twelve.")) {
            TaskOutput::Vqa { answer, .. } => assert_eq!(answer, "12"),
            other => panic!("{other:?}"),
        }
    }
}
