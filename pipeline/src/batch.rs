//! `strata batch`: runs every scene of a folder, prefix, list of files or STAC items through
//! the embedded runtime (tile → infer → merge → sink) with no broker, and prints a summary.

use std::{
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use anyhow::{bail, Context as _};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use operators::{
    runtime::{self, Chain, EmbeddedConfig},
    stages::{
        infer::{InferConfig, InferStage, LoadedModel, TilesOnly},
        merge::{MergeConfig, MergeStage},
        sink::{SinkOutcome, SinkStage},
        tile::TileStage,
    },
    storage,
    tables::Tables,
    tile::{TileEvent, TilerConfig},
};
use schemas::{DeadLetterRecord, Stage, TaskSpec};

use crate::{
    cli::{BatchArgs, TaskArgs},
    inputs,
};

/// The tasks the flags ask for, in flag order, then those of `--tasks`.
pub(crate) fn tasks(args: &TaskArgs) -> anyhow::Result<Vec<TaskSpec>> {
    let mut tasks = Vec::new();
    if args.caption {
        tasks.push(TaskSpec::Caption { prompt: None });
    }
    let classes = match (&args.classify, &args.classes) {
        (Some(list), _) => Some(list.clone()),
        (None, Some(file)) => Some(std::fs::read_to_string(file).with_context(|| format!("reading --classes `{}`", file.display()))?),
        (None, None) => None,
    };
    if let Some(text) = classes {
        let classes: Vec<String> =
            text.split([',', '\n']).map(str::trim).filter(|c| !c.is_empty() && !c.starts_with('#')).map(str::to_owned).collect();
        tasks.push(TaskSpec::Classify { classes, prompt: None });
    }
    tasks.extend(args.vqa.iter().map(|question| TaskSpec::Vqa { question: question.clone() }));
    tasks.extend(args.detect.iter().map(|target| TaskSpec::Detect { target: target.clone() }));
    if let Some(file) = &args.tasks {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading --tasks `{}`", file.display()))?;
        let mut de = serde_json::Deserializer::from_str(&text);
        let more: Vec<TaskSpec> =
            serde_path_to_error::deserialize(&mut de).with_context(|| format!("`{}` is not a JSON list of tasks", file.display()))?;
        tasks.extend(more);
    }
    // The same checks a scene request gets, with the flag named.
    let mut probe = schemas::SceneRequest::new("probe", "probe", schemas::SceneSource::Uri { uri: "probe".to_owned() });
    probe.tasks = tasks.clone();
    schemas::Message::validate(&probe).context("checking the tasks")?;
    Ok(tasks)
}

/// The inference stage over the model at `location` and the index `--index` names.
///
/// # Errors
/// When the model or the index cannot be loaded.
pub(crate) async fn infer_stage(
    location: &str,
    retrieval: &crate::cli::RetrievalArgs,
    device: model::device::DevicePreference,
    batch_size: usize,
    max_new_tokens: i64,
) -> anyhow::Result<InferStage<LoadedModel>> {
    let model = LoadedModel::load(location, device).await.with_context(|| format!("loading --model `{location}`"))?;
    infer_stage_with(model, retrieval, batch_size, max_new_tokens).await
}

/// The inference stage around a loaded model, with the index the retrieval flags name.
///
/// # Errors
/// When the index cannot be opened.
pub(crate) async fn infer_stage_with(
    model: LoadedModel,
    retrieval: &crate::cli::RetrievalArgs,
    batch_size: usize,
    max_new_tokens: i64,
) -> anyhow::Result<InferStage<LoadedModel>> {
    let top_k = operators::stages::infer::TileModel::top_k(&model);
    let options = crate::retriever::options(retrieval);
    let retriever = operators::retrieve::Retriever::open(&options, top_k, model.device()).await.context("opening --index")?;
    let config = InferConfig { max_batch_tiles: batch_size.max(1), max_new_tokens, ..InferConfig::default() };
    Ok(InferStage::new(model, retriever, config))
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

pub async fn run(args: BatchArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let tiling = args.scene.tiling();
    tiling.validate("batch options").context("checking the tiling options")?;
    if let Some(request_id) = &args.request_id {
        let probe = schemas::SceneRequest::new(request_id, "probe", schemas::SceneSource::Uri { uri: "probe".to_owned() });
        schemas::Message::validate(&probe).context("checking --request-id")?;
    }
    let tasks = tasks(&args.task)?;
    let has_model = args.model.is_some() || args.model_registry.is_some();
    if !tasks.is_empty() && !has_model {
        bail!(
            "{} task(s) given but no model\nhint: pass --model DIR|URL (a model artifact, see `strata model init`) or --model-registry URL",
            tasks.len()
        );
    }
    if !has_model && args.retrieval.index.is_some() {
        bail!("--index needs --model: retrieval feeds the model's prompter");
    }
    let tables = Tables::new(storage::resolve(&args.tables).context("resolving --tables")?);
    let tiles_root = storage::resolve(&args.tiles).context("resolving --tiles")?;

    // The model and index first: a wrong path should fail before any scene is read.
    let infer = match (&args.model, &args.model_registry) {
        (Some(location), _) => {
            eprintln!("strata batch: loading the model {location}");
            Some(infer_stage(location, &args.retrieval, args.device, args.batch_size, args.max_new_tokens).await?)
        }
        (None, Some(url)) => {
            let registry = operators::registry::Registry::new(storage::resolve(url).context("resolving --model-registry")?);
            let model = crate::serve::models::load_serving(&registry, args.device).await?;
            eprintln!("strata batch: loaded version {} served by the registry {url}", operators::stages::infer::TileModel::version(&model));
            Some(infer_stage_with(model, &args.retrieval, args.batch_size, args.max_new_tokens).await?)
        }
        (None, None) => None,
    };

    let (found, missing) = inputs::discover(&args.scenes).await;
    let request_id = args.request_id.clone().unwrap_or_else(|| inputs::default_request_id(&found, &tiling, &tasks));
    let (requests, failures) = inputs::requests(found, missing, &request_id, &tiling, &tasks).await;
    let total = requests.len() + failures.len();
    eprintln!("strata batch: {total} scene(s), {} task(s) per tile, request `{request_id}`", tasks.len());
    let dead_letters: Vec<DeadLetterRecord> = failures
        .into_iter()
        .map(|failure| {
            let request =
                schemas::SceneRequest::new(&request_id, &failure.scene_id, schemas::SceneSource::Uri { uri: failure.input.clone() });
            let error = operators::stage::StageError::from_operator(Stage::Ingest, failure.error);
            error.dead_letter(&request, &operators::stage::Position::Derived, 1)
        })
        .collect();

    let multi = MultiProgress::with_draw_target(if args.no_progress { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() });
    let scenes_bar = multi.add(ProgressBar::new(total as u64));
    scenes_bar.set_style(bar_style("scenes  {bar:30.cyan/blue} {pos}/{len} {msg}"));
    let tiles_bar = multi.add(ProgressBar::new(0));
    tiles_bar.set_style(bar_style("tiles   {bar:30.green/blue} {pos}/{len} {per_sec} eta {eta}"));
    let answers_bar = multi.add(ProgressBar::new(0));
    answers_bar.set_style(bar_style("answers {pos} ({per_sec})"));
    if tasks.is_empty() {
        answers_bar.finish_and_clear();
    }

    let progress_bar = tiles_bar.clone();
    let progress: operators::tile::Progress = Arc::new(move |event| match event {
        TileEvent::Planned { windows, .. } => progress_bar.inc_length(windows as u64),
        TileEvent::Window { .. } => progress_bar.inc(1),
    });
    let tiler = TilerConfig {
        max_scene_pixels: args.max_scene_megapixels.saturating_mul(1_000_000),
        threads: args.threads.unwrap_or_else(|| TilerConfig::default().threads),
        ..TilerConfig::default()
    };
    let tile_workers: Vec<TileStage> =
        (0..args.scene_concurrency.max(1)).map(|_| TileStage::new(tiles_root.clone(), tiler.clone(), progress.clone())).collect();
    let merge = MergeStage::new(MergeConfig { iou_threshold: args.iou_threshold });
    let sink = SinkStage::new(tables.clone(), 1);
    let config = EmbeddedConfig::default();

    let bar = scenes_bar.clone();
    let answers = answers_bar.clone();
    let tasks_per_tile = tasks.len() as u64;
    let answered = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&answered);
    let on_outcome = move |outcome: &SinkOutcome| {
        match outcome {
            SinkOutcome::Committed { tiles, .. } => {
                counter.fetch_add(tiles * tasks_per_tile, Ordering::Relaxed);
                answers.inc(tiles * tasks_per_tile);
            }
            SinkOutcome::DeadLettered(record) => bar.println(format!("failed: {}", record.message)),
        }
        bar.inc(1);
    };
    let summary = match infer {
        Some(infer) => runtime::run(requests, dead_letters, Chain { tile: tile_workers, infer, merge, sink }, &config, on_outcome).await,
        None => {
            runtime::run(requests, dead_letters, Chain { tile: tile_workers, infer: TilesOnly, merge, sink }, &config, on_outcome).await
        }
    };
    scenes_bar.finish_and_clear();
    tiles_bar.finish_and_clear();
    answers_bar.finish_and_clear();

    let seconds = started.elapsed().as_secs_f64();
    println!(
        "tiled {} of {total} scene(s) in {seconds:.1}s: {} tile(s) written, {} window(s) skipped as nodata",
        summary.scenes_ok, summary.tiles, summary.tiles_skipped_nodata
    );
    if !tasks.is_empty() {
        let answers = answered.load(Ordering::Relaxed);
        println!(
            "{answers} answer(s) ({:.2} tiles/s), {} detection(s) after merging, {} tile(s) failed",
            summary.tiles as f64 / seconds.max(1e-9),
            summary.detections,
            summary.tiles_failed
        );
    }
    println!("tables: {}", tables.root().url());
    println!("tiles:  {}/{request_id}/", tiles_root.url());
    for error in &summary.internal_errors {
        println!("error: {error}");
    }
    if !summary.all_ok() {
        if !summary.failures.is_empty() {
            println!("{} failure(s), recorded in the `dead_letter` table:", summary.failures.len());
            for (scene, reason) in &summary.failures {
                println!("  {scene}: {reason}");
            }
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
