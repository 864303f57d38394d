//! `strata train retriever`: contrastive training of the retriever's image tower against a
//! locked text encoder (`model::image_tower`), on LLaVA-style image–text pairs, with held-out
//! image → text recall@k (`eval::retrieval`) before training and at every evaluation.
//!
//! The loop shares the instruct stages' habits: a seeded data order, warm-up + cosine,
//! clipping, [`model::train::AdamW`] in two groups, checkpoints a run resumes from exactly,
//! `metrics.csv` and `eval.csv`.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use anyhow::{bail, Context as _};
use model::{
    artifact::Artifact,
    encoders::TextEncoder,
    image_tower::{ImageTower, ImageTowerConfig},
    preprocess::RgbImage,
    train::{AdamW, Precision, Stage, TrainConfig},
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{
    batch_indices, beside, check_optimiser, diverged, latest_checkpoint, read_data, restart_table, restore_checkpoint, warn_small_data,
    write_checkpoint, Records, RunIdentity, Sample, StepProgress,
};
use crate::cli::TrainArgs;

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
        let (rgb, width, height) =
            crate::images::read_rgb(image).with_context(|| format!("reading `{}` (named by {origin})", image.display()))?;
        let rgb = RgbImage::new(usize::try_from(width)?, usize::try_from(height)?, rgb)?;
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
fn embed_texts(encoder: &mut TextEncoder, texts: &[String], device: tch::Device) -> anyhow::Result<Tensor> {
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
    let scores = Tensor::cat(&embeddings, 0).matmul(&gallery.tr()).to_device(tch::Device::Cpu).contiguous();
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

fn save_checkpoint(out: &Path, step: usize, tower: &ImageTower, optimizer: &AdamW, identity: &RunIdentity) -> anyhow::Result<()> {
    let variables: Vec<(String, Tensor)> = tower.var_store().variables().into_iter().collect();
    // One optimiser step per micro-batch here: no accumulation.
    let state = identity.state(step, step, optimizer.steps());
    write_checkpoint(out, &state, &variables, &optimizer.moments())
}

/// The tower to start from, and an identity of it for the configuration digest.
fn start_tower(start: &Path, text_encoder: &TextEncoder, device: tch::Device) -> anyhow::Result<(ImageTower, String)> {
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

/// `strata train retriever --config FILE`.
///
/// # Errors
/// An unreadable or invalid training file or data, a start that is neither a tower nor a
/// model artifact, a tower of another embedding width, a checkpoint of another
/// configuration, model errors.
pub(super) fn train(args: &TrainArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading `{}`", args.config.display()))?;
    let mut file: RetrieverFile = toml::from_str(&text).with_context(|| format!("in `{}`", args.config.display()))?;
    let base = args.config.parent().unwrap_or(Path::new("."));
    for path in [&mut file.start, &mut file.out] {
        *path = base.join(&*path);
    }
    file.data = beside(base, &file.data);
    file.held_out = file.held_out.map(|p| beside(base, &p));
    file.image_root = file.image_root.map(|p| beside(base, &p));
    file.text_encoder = file.text_encoder.map(|p| base.join(p));
    if file.steps == 0 || file.batch_size < 2 || file.checkpoint_every == 0 || file.eval_every == 0 {
        bail!(
            "`{}`: steps, checkpoint_every and eval_every must be at least 1, and batch_size at least 2 (the other pairs of a batch are the negatives)",
            args.config.display()
        );
    }
    check_optimiser(&args.config, file.learning_rate, file.vision_learning_rate, file.max_grad_norm, file.weight_decay)?;
    let precision = Precision::parse(&file.precision).map_err(|e| anyhow::anyhow!("`{}`: precision: {e}", args.config.display()))?;
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

    let device = model::device::select(args.device)?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    // Absolute, as the tower records it: the path must mean the same from any folder.
    let text_dir = file.text_encoder.clone().unwrap_or_else(TextEncoder::default_dir);
    let text_dir = std::path::absolute(&text_dir).unwrap_or(text_dir);
    let mut text_encoder = TextEncoder::load_on(&text_dir, 256, threads, operators::retrieve::encoder_device(device.device()))
        .with_context(|| format!("loading the text encoder `{}`", text_dir.display()))?;
    // The projection starts random: from the seed, so a rerun or a resume starts alike.
    tch::manual_seed(file.seed as i64);
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
    std::fs::create_dir_all(&file.out).with_context(|| format!("creating `{}`", file.out.display()))?;

    // Every variable trains: the vision transformer in its own, lower-rate group.
    let mut variables: Vec<(String, Tensor)> = tower.var_store().variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let parameters = variables.into_iter().map(|(name, variable)| {
        let group = usize::from(name.starts_with("vision_model."));
        (name, variable.set_requires_grad(true), group)
    });
    let mut optimizer = AdamW::new(parameters);
    let schedule = TrainConfig {
        stage: Stage::Alignment,
        learning_rate: file.learning_rate,
        vision_learning_rate: file.vision_learning_rate,
        weight_decay: file.weight_decay,
        warmup_steps: file.warmup_steps.unwrap_or(file.steps / 20),
        total_steps: file.steps,
        grad_accumulation: 1,
        max_grad_norm: file.max_grad_norm,
        precision,
        train_base_llm: false,
    };

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
        let (state, moments) = restore_checkpoint(&checkpoint, &identity, &tower.var_store().variables())?;
        optimizer.restore(state.optimizer_steps, &moments)?;
        first_step = state.step;
        let out_tower = file.out.join("retriever");
        if first_step >= file.steps && ImageTower::is_dir(&out_tower) {
            println!(
                "`{}` finished all {} steps already: its tower is {} (nothing to do)",
                file.out.display(),
                file.steps,
                out_tower.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("resuming from {} (step {first_step})", checkpoint.display());
    }
    let (mut metrics, _) =
        restart_table(&file.out.join("metrics.csv"), "step,split,loss,learning_rate,samples_per_s,elapsed_s", first_step)?;
    let (mut eval_csv, kept_eval) = restart_table(&file.out.join("eval.csv"), "step,task,metric,value,samples", first_step)?;

    let text_embeddings = embed_texts(&mut text_encoder, &train_pairs.texts, device.device())?;
    let gallery = held_out_pairs.as_ref().map(|p| embed_texts(&mut text_encoder, &p.texts, device.device())).transpose()?;
    let mut origins = HashMap::new();
    for sample in samples.iter().chain(held_out.iter().flatten()) {
        origins.entry(sample.image.clone()).or_insert_with(|| sample.origin.clone());
    }
    let mut cache = PixelCache { pixels: HashMap::new(), origins };
    // Every image is decoded before the first step: an unreadable one stops the run now, not
    // hours in (the cache keeps them all anyway).
    for image in train_pairs.images.iter().chain(held_out_pairs.iter().flat_map(|p| p.images.iter())) {
        let _pixels = cache.get(&tower, image)?;
    }
    eprintln!(
        "training the retriever's image tower on {} ({}), {} steps of {} pairs; {} images, {} distinct texts, text encoder `{}` locked",
        device.describe(),
        if precision.autocasts(device.device()) { "bf16 autocast over f32 weights" } else { "f32" },
        file.steps,
        file.batch_size,
        train_pairs.images.len(),
        train_pairs.texts.len(),
        text_dir.display()
    );

    let describe = |recall: &[f64]| KS.iter().zip(recall).map(|(k, r)| format!("R@{k} {r:.3}")).collect::<Vec<_>>().join(", ");
    // The starting point, measured once: the number training is judged against.
    let starting = if first_step == 0 {
        record_recall(0, &tower, &mut cache, held_out_pairs.as_ref().zip(gallery.as_ref()), precision, &mut eval_csv)?
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
    if let Some(recall) = &starting {
        eprintln!("held-out image → text recall before training: {}", describe(recall));
    }

    let progress = StepProgress::new("retriever".to_owned(), "pairs", file.steps, first_step, args.no_progress);
    let bar = &progress.bar;
    let mut last = (f64::NAN, starting.clone());
    for step in first_step..file.steps {
        tch::manual_seed(file.seed.wrapping_mul(1_000_003).wrapping_add(step as u64) as i64);
        let indices = batch_indices(train_pairs.samples.len(), file.batch_size, file.seed, step);
        let images: Vec<&Path> = indices.iter().map(|&i| train_pairs.images[train_pairs.samples[i].0].as_path()).collect();
        // The batch's distinct texts, and each image's among them.
        let mut distinct: Vec<i64> = Vec::new();
        let targets: Vec<i64> = indices
            .iter()
            .map(|&i| {
                let text = train_pairs.samples[i].1 as i64;
                let at = distinct.iter().position(|&t| t == text).unwrap_or_else(|| {
                    distinct.push(text);
                    distinct.len() - 1
                });
                at as i64
            })
            .collect();
        let tick = Instant::now();
        let pixels = cache.batch(&tower, &images)?;
        let texts = text_embeddings.index_select(0, &Tensor::from_slice(&distinct).to_device(device.device()));
        let loss = {
            let _autocast = precision.scope(device.device());
            let embeddings = tower.forward(&pixels);
            tower.contrastive_loss(&embeddings, &texts, &targets).to_kind(Kind::Float)
        };
        loss.backward();
        let scale = schedule.schedule(optimizer.steps());
        let rates = [file.learning_rate * scale, file.vision_learning_rate * scale];
        let clip = (file.max_grad_norm / (optimizer.grad_norm() + 1e-6)).min(1.0);
        optimizer.step(&rates, file.weight_decay, clip);
        let loss = loss.double_value(&[]);
        let rate = file.batch_size as f64 / tick.elapsed().as_secs_f64();
        let done = step + 1;
        writeln!(metrics, "{done},train,{loss:.6},{:.3e},{rate:.3},{:.1}", rates[0], progress.elapsed())?;
        diverged(loss, done, &file.out, &mut metrics)?;
        progress.step(done, loss, rate);
        last.0 = loss;
        if done.is_multiple_of(file.eval_every) || done == file.steps {
            if let Some(recall) =
                record_recall(done, &tower, &mut cache, held_out_pairs.as_ref().zip(gallery.as_ref()), precision, &mut eval_csv)?
            {
                bar.println(format!("step {done}: held-out image → text {}", describe(&recall)));
                last.1 = Some(recall);
            }
        }
        let stopping = args.stop_after.is_some_and(|n| done - first_step >= n) && done < file.steps;
        if done.is_multiple_of(file.checkpoint_every) || done == file.steps || stopping {
            metrics.flush()?;
            save_checkpoint(&file.out, done, &tower, &optimizer, &identity)?;
        }
        if stopping {
            bar.finish_and_clear();
            println!("stopped after step {done} of {}, checkpointed; continue with --resume", file.steps);
            return Ok(ExitCode::SUCCESS);
        }
    }
    bar.finish_and_clear();
    metrics.flush()?;
    let out_tower = file.out.join("retriever");
    tower.save(&out_tower).with_context(|| format!("saving the tower to `{}`", out_tower.display()))?;
    println!(
        "trained the retriever's image tower for {} steps (last loss {:.4}) in {:.0} s: {}",
        file.steps,
        last.0,
        progress.elapsed(),
        out_tower.display()
    );
    if let (Some(before), Some(after)) = (&starting, &last.1) {
        println!("held-out image → text: before {}; after {}", describe(before), describe(after));
    }
    println!(
        "use it with an index built by `{}`: strata batch ... --index INDEX --retrieval-encoder {}",
        text_dir.display(),
        out_tower.display()
    );
    Ok(ExitCode::SUCCESS)
}
