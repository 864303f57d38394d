//! `strata train retriever`: contrastive training of the retriever's image tower against a
//! locked text encoder (`model::image_tower`), on LLaVA-style image–text pairs, with held-out
//! image → text recall@k (`eval::retrieval`) before training and at every evaluation, as an
//! [`Objective`] of the training loop (seeded data order, warm-up + cosine, clipping,
//! [`model::train::AdamW`] in two groups, checkpoints a run resumes from exactly, `metrics.csv`
//! and `eval.csv`).

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context as _};
use model::tch::{Kind, Tensor};
use model::{
    artifact::Artifact,
    device::SelectedDevice,
    encoders::TextEncoder,
    image_tower::{ImageTower, ImageTowerConfig},
    preprocess::RgbImage,
    train::{AdamW, Precision, Stage, TrainConfig},
};
use serde::{Deserialize, Serialize};

use crate::{
    check_counts,
    checkpoint::{Checkpoint, CheckpointState, RunIdentity},
    data::{beside, read_data, warn_small_data, Records, Sample},
    run_loop, LoopSettings, Objective, OptimiserSettings, Outcome, RunOptions, StepReport,
};

const fn default_batch_size() -> usize {
    32
}
const fn default_learning_rate() -> f64 {
    1e-3
}
const fn default_vision_learning_rate() -> f64 {
    1e-4
}
const fn default_max_grad_norm() -> f64 {
    1.0
}
const fn default_every() -> usize {
    100
}
fn default_precision() -> String {
    "auto".to_owned()
}

/// The retriever's training file (TOML). Paths are relative to the file's folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrieverFile {
    /// Where the image tower starts: a Strata model artifact (its SigLIP tower; the projection
    /// starts random), or a tower an earlier `strata train retriever` wrote.
    pub start: PathBuf,
    /// The locked text encoder, the one the index is built with (default: all-MiniLM-L6-v2
    /// from setup).
    #[serde(default)]
    pub text_encoder: Option<PathBuf>,
    /// Image–text pairs, LLaVA-style JSONL (`strata data synth` writes `align.jsonl`): the
    /// first answer of each record is the image's text.
    pub data: PathBuf,
    /// Held-out pairs, for recall@k.
    #[serde(default)]
    pub held_out: Option<PathBuf>,
    /// Folder of the images (default as for `train align`).
    #[serde(default)]
    pub image_root: Option<PathBuf>,
    /// The run folder: checkpoints, `metrics.csv`, `eval.csv`, and the tower in `retriever/`.
    pub out: PathBuf,
    /// Optimiser steps.
    pub steps: usize,
    /// Image–text pairs per step (the contrastive batch).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Peak learning rate of the projection and the temperature.
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    /// Peak learning rate of the vision transformer.
    #[serde(default = "default_vision_learning_rate")]
    pub vision_learning_rate: f64,
    /// Steps of linear warm-up (default: 5 % of the steps).
    #[serde(default)]
    pub warmup_steps: Option<usize>,
    /// Global gradient-norm clip.
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    /// AdamW's decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Seed of the data order.
    #[serde(default)]
    pub seed: u64,
    /// Steps between checkpoints.
    #[serde(default = "default_every")]
    pub checkpoint_every: usize,
    /// Steps between held-out evaluations.
    #[serde(default = "default_every")]
    pub eval_every: usize,
    /// `auto`, `f32` or `bf16`, as for `train align`.
    #[serde(default = "default_precision")]
    pub precision: String,
}

/// The recall@k reported, image → text.
const KS: [usize; 3] = [1, 5, 10];

/// Distinct texts and, for each image, the texts that describe it.
struct Pairs {
    images: Vec<PathBuf>,
    texts: Vec<String>,
    /// Per sample: (image, text) ids.
    samples: Vec<(usize, usize)>,
    /// Per image: its texts.
    relevant: Vec<Vec<usize>>,
}

impl Pairs {
    fn new(samples: &[Sample]) -> Self {
        let (mut images, mut texts) = (Vec::new(), Vec::new());
        let (mut image_ids, mut text_ids) = (HashMap::new(), HashMap::new());
        let mut pairs = Vec::with_capacity(samples.len());
        let mut relevant: Vec<Vec<usize>> = Vec::new();
        for sample in samples {
            let image = *image_ids.entry(sample.image.clone()).or_insert_with(|| {
                images.push(sample.image.clone());
                relevant.push(Vec::new());
                images.len() - 1
            });
            let text = *text_ids.entry(sample.response.clone()).or_insert_with(|| {
                texts.push(sample.response.clone());
                texts.len() - 1
            });
            if !relevant[image].contains(&text) {
                relevant[image].push(text);
            }
            pairs.push((image, text));
        }
        Self { images, texts, samples: pairs, relevant }
    }
}

/// Normalised pixels of each image, read once.
struct PixelCache {
    pixels: HashMap<PathBuf, Tensor>,
    /// The JSONL line that first names each image, for errors.
    origins: HashMap<PathBuf, String>,
}

impl PixelCache {
    fn get(&mut self, tower: &ImageTower, image: &Path) -> anyhow::Result<Tensor> {
        if let Some(pixels) = self.pixels.get(image) {
            return Ok(pixels.shallow_clone());
        }
        let origin = self.origins.get(image).map_or("the data", String::as_str);
        let rgb = RgbImage::read_named(image, &format!("`{}` (named by {origin})", image.display()))?;
        let side = tower.config().vision.image_size;
        let pixels = Tensor::from_slice(&tower.processor().apply(&rgb)?).view([3, side, side]);
        self.pixels.insert(image.to_owned(), pixels.shallow_clone());
        Ok(pixels)
    }

    fn batch(&mut self, tower: &ImageTower, images: &[&Path]) -> anyhow::Result<Tensor> {
        let pixels: Vec<Tensor> = images.iter().map(|image| self.get(tower, image)).collect::<anyhow::Result<_>>()?;
        Ok(Tensor::stack(&pixels, 0).to_device(tower.device()))
    }
}

/// Unit text embeddings `[texts, D]` from the locked encoder, on `device`.
fn embed_texts(encoder: &mut TextEncoder, texts: &[String], device: model::tch::Device) -> anyhow::Result<Tensor> {
    let rows = encoder.encode(texts).context("embedding the texts with the locked text encoder")?;
    let dim = encoder.dim() as i64;
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    Ok(Tensor::from_slice(&flat).view([texts.len() as i64, dim]).to_device(device))
}

/// Image → text recall@k over the held-out pairs: every distinct text is in the gallery, and
/// an image's hits are its own texts.
fn held_out_recall(
    tower: &ImageTower,
    cache: &mut PixelCache,
    pairs: &Pairs,
    gallery: &Tensor,
    precision: Precision,
) -> anyhow::Result<Vec<f64>> {
    let mut embeddings = Vec::new();
    for chunk in pairs.images.chunks(64) {
        let images: Vec<&Path> = chunk.iter().map(PathBuf::as_path).collect();
        let pixels = cache.batch(tower, &images)?;
        let _autocast = precision.scope(tower.device());
        embeddings.push(tower.embed(&pixels));
    }
    let scores = Tensor::cat(&embeddings, 0).matmul(&gallery.tr()).to_device(model::tch::Device::Cpu).contiguous();
    let rows: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(&scores).context("reading the similarity matrix")?;
    eval::retrieval::recall_at_k(&rows, &pairs.relevant, &KS).map_err(anyhow::Error::msg)
}

/// Measures [`held_out_recall`] when there are held-out pairs, and writes it to `eval.csv`.
fn record_recall(
    step: usize,
    tower: &ImageTower,
    cache: &mut PixelCache,
    held_out: Option<(&Pairs, &Tensor)>,
    precision: Precision,
    eval_csv: &mut std::fs::File,
) -> anyhow::Result<Option<Vec<f64>>> {
    let Some((pairs, gallery)) = held_out else { return Ok(None) };
    let recall = held_out_recall(tower, cache, pairs, gallery, precision)?;
    for (k, value) in KS.iter().zip(&recall) {
        writeln!(eval_csv, "{step},retrieval,recall@{k},{value:.6},{}", pairs.images.len())?;
    }
    eval_csv.flush()?;
    Ok(Some(recall))
}

/// Everything that shapes the loss curve: a checkpoint of another one is refused.
fn config_digest(file: &RetrieverFile, start: &str, text_encoder: &Path) -> RunIdentity {
    let identity = serde_json::json!({
        "stage": "retriever", "start": start, "text_encoder": text_encoder, "data": file.data, "batch_size": file.batch_size,
        "learning_rate": file.learning_rate, "vision_learning_rate": file.vision_learning_rate, "warmup_steps": file.warmup_steps,
        "steps": file.steps, "max_grad_norm": file.max_grad_norm, "weight_decay": file.weight_decay, "seed": file.seed,
    });
    RunIdentity::new(identity)
}

/// The tower to start from, and an identity of it for the configuration digest.
fn start_tower(start: &Path, text_encoder: &TextEncoder, device: model::tch::Device) -> anyhow::Result<(ImageTower, String)> {
    if ImageTower::is_dir(start) {
        let tower = ImageTower::load(start, device).with_context(|| format!("loading the tower `{}`", start.display()))?;
        if !model::image_tower::same_text_encoder(&tower.config().text_encoder, text_encoder.name()) {
            bail!(
                "the tower `{}` was trained against the text encoder `{}`, not `{}` (text_encoder)\nhint: keep the encoder a tower was trained against, or start from a model artifact",
                start.display(),
                tower.config().text_encoder,
                text_encoder.name()
            );
        }
        let id = model::artifact::sha256_file(&start.join(model::image_tower::WEIGHTS_FILE))?;
        return Ok((tower, id));
    }
    let artifact = Artifact::open(start)
        .with_context(|| format!("`{}` is neither a retriever tower (retriever.json) nor a Strata model artifact", start.display()))?;
    let to_f32 = |v: [f64; 3]| v.map(|x| x as f32);
    let config = ImageTowerConfig {
        vision: artifact.config.vision.clone(),
        embed_dim: text_encoder.dim() as i64,
        image_mean: to_f32(artifact.config.image.mean),
        image_std: to_f32(artifact.config.image.std),
        text_encoder: text_encoder.name().to_owned(),
    };
    let tower = ImageTower::from_vision_weights(config, &artifact.weight_files(), device)
        .with_context(|| format!("loading the vision tower of `{}`", start.display()))?;
    Ok((tower, artifact.manifest.version))
}

impl RetrieverFile {
    /// Reads a retriever training file; its paths become relative to the file's folder
    /// (object-store URLs stay as they are).
    ///
    /// # Errors
    /// An unreadable file, unknown keys, or values of the wrong type.
    pub fn read(config: &Path) -> anyhow::Result<Self> {
        let (mut file, base): (Self, &Path) = crate::read_toml(config)?;
        for path in [&mut file.start, &mut file.out] {
            *path = base.join(&*path);
        }
        file.data = beside(base, &file.data);
        file.held_out = file.held_out.map(|p| beside(base, &p));
        file.image_root = file.image_root.map(|p| beside(base, &p));
        file.text_encoder = file.text_encoder.map(|p| base.join(p));
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

/// The contrastive objective over the image tower.
struct RetrieverObjective {
    file: RetrieverFile,
    tower: ImageTower,
    text_encoder: TextEncoder,
    /// The text encoder's folder, absolute, as the tower records it.
    text_dir: PathBuf,
    optimizer: AdamW,
    schedule: TrainConfig,
    device: SelectedDevice,
    precision: Precision,
    samples: Vec<Sample>,
    held_out: Option<Vec<Sample>>,
    train_pairs: Pairs,
    held_out_pairs: Option<Pairs>,
    cache: PixelCache,
    /// Unit embeddings of the training texts and of the held-out gallery (after `prepare`).
    text_embeddings: Option<Tensor>,
    gallery: Option<Tensor>,
    /// Held-out recall before training and at the last evaluation.
    starting: Option<Vec<f64>>,
    last: Option<Vec<f64>>,
}

fn describe(recall: &[f64]) -> String {
    KS.iter().zip(recall).map(|(k, r)| format!("R@{k} {r:.3}")).collect::<Vec<_>>().join(", ")
}

impl Objective for RetrieverObjective {
    fn label(&self) -> String {
        "retriever".to_owned()
    }

    fn unit(&self) -> &'static str {
        "pairs"
    }

    fn samples(&self) -> usize {
        self.train_pairs.samples.len()
    }

    fn finished_output(&self, out: &Path) -> Option<(PathBuf, &'static str)> {
        let tower = out.join("retriever");
        ImageTower::is_dir(&tower).then_some((tower, "tower"))
    }

    fn variables(&self) -> HashMap<String, Tensor> {
        self.tower.var_store().variables()
    }

    fn restore(&mut self, state: &CheckpointState, moments: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        self.optimizer.restore(state.optimizer_steps, moments)?;
        Ok(())
    }

    fn checkpoint(&self, step: usize, identity: &RunIdentity) -> Checkpoint {
        let variables: Vec<(String, Tensor)> = self.tower.var_store().variables().into_iter().collect();
        // One optimiser step per micro-batch here: no accumulation.
        Checkpoint { state: identity.state(step, step, self.optimizer.steps()), weights: variables, moments: self.optimizer.moments() }
    }

    fn prepare(&mut self) -> anyhow::Result<()> {
        let device = self.device.device();
        self.text_embeddings = Some(embed_texts(&mut self.text_encoder, &self.train_pairs.texts, device)?);
        self.gallery = self.held_out_pairs.as_ref().map(|p| embed_texts(&mut self.text_encoder, &p.texts, device)).transpose()?;
        let mut origins = HashMap::new();
        for sample in self.samples.iter().chain(self.held_out.iter().flatten()) {
            origins.entry(sample.image.clone()).or_insert_with(|| sample.origin.clone());
        }
        self.cache.origins = origins;
        // Every image is decoded before the first step: an unreadable one stops the run now, not
        // hours in (the cache keeps them all anyway).
        for image in self.train_pairs.images.iter().chain(self.held_out_pairs.iter().flat_map(|p| p.images.iter())) {
            let _pixels = self.cache.get(&self.tower, image)?;
        }
        Ok(())
    }

    fn banner(&self) -> String {
        format!(
            "training the retriever's image tower on {} ({}), {} steps of {} pairs; {} images, {} distinct texts, text encoder `{}` locked",
            self.device.describe(),
            if self.precision.autocasts(self.device.device()) { "bf16 autocast over f32 weights" } else { "f32" },
            self.file.steps,
            self.file.batch_size,
            self.train_pairs.images.len(),
            self.train_pairs.texts.len(),
            self.text_dir.display()
        )
    }

    fn start(&mut self, first_step: usize, kept_eval: &[String], eval_csv: &mut File) -> anyhow::Result<()> {
        // The starting point, measured once: the number training is judged against.
        self.starting = if first_step == 0 {
            record_recall(
                0,
                &self.tower,
                &mut self.cache,
                self.held_out_pairs.as_ref().zip(self.gallery.as_ref()),
                self.precision,
                eval_csv,
            )?
        } else {
            let at_zero: BTreeMap<String, f64> = kept_eval
                .iter()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    (f.first() == Some(&"0")).then(|| Some((f.get(2)?.to_string(), f.get(3)?.parse().ok()?))).flatten()
                })
                .collect();
            KS.iter().map(|k| at_zero.get(&format!("recall@{k}")).copied()).collect::<Option<Vec<f64>>>()
        };
        if let Some(recall) = &self.starting {
            eprintln!("held-out image → text recall before training: {}", describe(recall));
        }
        self.last.clone_from(&self.starting);
        Ok(())
    }

    fn step(&mut self, indices: &[usize]) -> anyhow::Result<StepReport> {
        let device = self.device.device();
        let pairs = &self.train_pairs;
        let images: Vec<&Path> = indices.iter().map(|&i| pairs.images[pairs.samples[i].0].as_path()).collect();
        // The batch's distinct texts, and each image's among them.
        let mut distinct: Vec<i64> = Vec::new();
        let targets: Vec<i64> = indices
            .iter()
            .map(|&i| {
                let text = pairs.samples[i].1 as i64;
                let at = distinct.iter().position(|&t| t == text).unwrap_or_else(|| {
                    distinct.push(text);
                    distinct.len() - 1
                });
                at as i64
            })
            .collect();
        let tick = Instant::now();
        let pixels = self.cache.batch(&self.tower, &images)?;
        let all_texts = self.text_embeddings.as_ref().context("the texts are embedded before the first step")?;
        let texts = all_texts.index_select(0, &Tensor::from_slice(&distinct).to_device(device));
        let loss = {
            let _autocast = self.precision.scope(device);
            let embeddings = self.tower.forward(&pixels);
            self.tower.contrastive_loss(&embeddings, &texts, &targets).to_kind(Kind::Float)
        };
        loss.backward();
        let scale = self.schedule.schedule(self.optimizer.steps());
        let rates = [self.file.learning_rate * scale, self.file.vision_learning_rate * scale];
        let clip = (self.file.max_grad_norm / (self.optimizer.grad_norm() + 1e-6)).min(1.0);
        self.optimizer.step(&rates, self.file.weight_decay, clip);
        Ok(StepReport { loss: loss.double_value(&[]), learning_rate: rates[0], seconds: tick.elapsed().as_secs_f64() })
    }

    fn has_held_out(&self) -> bool {
        self.held_out_pairs.is_some()
    }

    fn evaluate(&mut self, done: usize, _elapsed: f64, _metrics: &mut File, eval_csv: &mut File) -> anyhow::Result<Option<String>> {
        let held_out = self.held_out_pairs.as_ref().zip(self.gallery.as_ref());
        let Some(recall) = record_recall(done, &self.tower, &mut self.cache, held_out, self.precision, eval_csv)? else {
            return Ok(None);
        };
        let line = format!("step {done}: held-out image → text {}", describe(&recall));
        self.last = Some(recall);
        Ok(Some(line))
    }

    fn finish(self, out: &Path, last_loss: f64, seconds: f64) -> anyhow::Result<Outcome> {
        let output = out.join("retriever");
        self.tower.save(&output).with_context(|| format!("saving the tower to `{}`", output.display()))?;
        let mut summary = vec![format!(
            "trained the retriever's image tower for {} steps (last loss {last_loss:.4}) in {seconds:.0} s: {}",
            self.file.steps,
            output.display()
        )];
        if let (Some(before), Some(after)) = (&self.starting, &self.last) {
            summary.push(format!("held-out image → text: before {}; after {}", describe(before), describe(after)));
        }
        summary.push(format!(
            "use it with an index built by `{}`: strata batch ... --index INDEX --retrieval-encoder {}",
            self.text_dir.display(),
            output.display()
        ));
        Ok(Outcome::Trained { output, last_loss, summary })
    }
}

/// Runs `strata train retriever` from the training file `config` (TOML, [`RetrieverFile`]).
///
/// # Errors
/// An unreadable or invalid training file or data, a start that is neither a tower nor a
/// model artifact, a tower of another embedding width, a checkpoint of another
/// configuration, a diverged run, model errors.
pub fn run(config: &Path, options: &RunOptions) -> anyhow::Result<Outcome> {
    let file = RetrieverFile::read(config)?;
    check_counts(config, &[("steps", file.steps), ("checkpoint_every", file.checkpoint_every), ("eval_every", file.eval_every)])?;
    if file.batch_size < 2 {
        bail!(
            "`{}`: batch_size is {}; contrastive training needs batch_size at least 2 (the other pairs of a batch are the negatives)",
            config.display(),
            file.batch_size
        );
    }
    let optimiser = file.optimiser();
    optimiser.check(config, file.steps)?;
    let precision = Precision::parse(&file.precision).map_err(|e| anyhow::anyhow!("`{}`: precision: {e}", config.display()))?;
    let (samples, held_out) = read_data(&file.data, file.held_out.as_deref(), file.image_root.as_deref(), Records::Pairs)?;
    // One pair has no negatives: every batch would contrast it with itself.
    if samples.len() < 2 {
        bail!(
            "`{}` holds one image–text pair; contrastive training needs at least 2 (the other pairs of a batch are the negatives)",
            file.data.display()
        );
    }
    warn_small_data(samples.len(), file.batch_size, &file.data);
    let (train_pairs, held_out_pairs) = (Pairs::new(&samples), held_out.as_deref().map(Pairs::new));

    let device = model::device::select(options.device)?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    // Absolute, as the tower records it: the path must mean the same from any folder.
    let text_dir = file.text_encoder.clone().unwrap_or_else(TextEncoder::default_dir);
    let text_dir = std::path::absolute(&text_dir).unwrap_or(text_dir);
    let text_encoder = TextEncoder::load_on(&text_dir, 256, threads, retrieval::retriever::encoder_device(device.device()))
        .with_context(|| format!("loading the text encoder `{}`", text_dir.display()))?;
    // The projection starts random: from the seed, so a rerun or a resume starts alike.
    model::tch::manual_seed(file.seed as i64);
    let (tower, start_id) = start_tower(&file.start, &text_encoder, device.device())?;
    if tower.config().embed_dim != text_encoder.dim() as i64 {
        bail!(
            "the tower `{}` embeds into {} dimensions, the text encoder `{}` into {}\nhint: start from a model artifact, or use the text encoder the tower was trained against ({})",
            file.start.display(),
            tower.config().embed_dim,
            text_dir.display(),
            text_encoder.dim(),
            tower.config().text_encoder
        );
    }
    let identity = config_digest(&file, &start_id, &text_dir);

    // Every variable trains: the vision transformer in its own, lower-rate group.
    let mut variables: Vec<(String, Tensor)> = tower.var_store().variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let parameters = variables.into_iter().map(|(name, variable)| {
        let group = usize::from(name.starts_with("vision_model."));
        (name, variable.set_requires_grad(true), group)
    });
    let optimizer = AdamW::new(parameters);
    let schedule = TrainConfig {
        stage: Stage::Alignment,
        learning_rate: optimiser.learning_rate,
        vision_learning_rate: optimiser.vision_learning_rate,
        weight_decay: optimiser.weight_decay,
        warmup_steps: optimiser.warmup(file.steps),
        total_steps: file.steps,
        grad_accumulation: 1,
        max_grad_norm: optimiser.max_grad_norm,
        precision,
        train_base_llm: false,
    };
    let out = file.out.clone();
    let settings = LoopSettings {
        out: &out,
        steps: file.steps,
        batch_size: file.batch_size,
        seed: file.seed,
        checkpoint_every: file.checkpoint_every,
        eval_every: file.eval_every,
        identity,
    };
    let objective = RetrieverObjective {
        file,
        tower,
        text_encoder,
        text_dir,
        optimizer,
        schedule,
        device,
        precision,
        samples,
        held_out,
        train_pairs,
        held_out_pairs,
        cache: PixelCache { pixels: HashMap::new(), origins: HashMap::new() },
        text_embeddings: None,
        gallery: None,
        starting: None,
        last: None,
    };
    run_loop(objective, settings, options)
}
