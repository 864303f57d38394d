//! `strata batch`: runs every scene of a folder, prefix, list of files or STAC items through
//! the embedded runtime (tile → infer → merge → sink) with no broker, and prints a summary.
//! The stages come from the chain builder ([`operators::chain`]), as `strata serve`'s do.

use std::{process::ExitCode, sync::Arc, time::Instant};

use anyhow::{bail, Context as _};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use operators::{
    chain::{self, ChainSettings, ModelSource, Roles},
    merge::MergeConfig,
    runtime::{self, EmbeddedConfig, OutcomeReporter, RunSummary},
    stages::{infer::InferConfig, sink::SinkOutcome},
    tile::{TileEvent, TilerConfig},
};
use schemas::{DeadLetterRecord, Stage};
use tables::Tables;

use operators::inputs;

use crate::cli::BatchArgs;

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The progress bars of a run: scenes committed, tiles written, answers recorded.
struct Bars {
    scenes: ProgressBar,
    tiles: ProgressBar,
    answers: ProgressBar,
}

impl Bars {
    fn new(hidden: bool, with_answers: bool) -> (Self, MultiProgress) {
        let multi = MultiProgress::with_draw_target(if hidden { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() });
        let scenes = multi.add(ProgressBar::new(0));
        scenes.set_style(bar_style("scenes  {bar:30.cyan/blue} {pos}/{len} {msg}"));
        let tiles = multi.add(ProgressBar::new(0));
        tiles.set_style(bar_style("tiles   {bar:30.green/blue} {pos}/{len} {per_sec} eta {eta}"));
        let answers = multi.add(ProgressBar::new(0));
        answers.set_style(bar_style("answers {pos} ({per_sec})"));
        if !with_answers {
            answers.finish_and_clear();
        }
        (Self { scenes, tiles, answers }, multi)
    }

    /// Tile windows planned and written, as the tiler reports them.
    fn tile_progress(&self) -> operators::tile::Progress {
        let bar = self.tiles.clone();
        Arc::new(move |event| match event {
            TileEvent::Planned { windows, .. } => bar.inc_length(windows as u64),
            TileEvent::Window { .. } => bar.inc(1),
        })
    }

    fn finish(&self) {
        self.scenes.finish_and_clear();
        self.tiles.finish_and_clear();
        self.answers.finish_and_clear();
    }
}

/// The chain's settings from the flags.
fn chain_settings(
    args: &BatchArgs,
    model: ModelSource,
    tables: &Tables,
    progress: operators::tile::Progress,
) -> anyhow::Result<ChainSettings> {
    Ok(ChainSettings {
        tiles: storage::resolve(&args.tiles).context("resolving --tiles")?,
        tables: tables.clone(),
        tiler: TilerConfig::with_limits(args.max_scene_megapixels, args.threads),
        tile_workers: args.scene_concurrency,
        progress,
        merge: MergeConfig { iou_threshold: args.iou_threshold },
        infer: InferConfig {
            max_batch_tiles: args.batch_size.max(1),
            max_new_tokens: args.max_new_tokens,
            decode_slots: args.decode_slots,
            ..InferConfig::default()
        },
        model,
        retrieval: crate::retriever::options(&args.retrieval),
        device: args.device,
        precision: args.precision,
        max_attempts: EmbeddedConfig::default().max_attempts,
    })
}

/// The embedded runtime's outcome reporter: the scene and answer bars, and the count of
/// answers the summary prints.
struct BarReporter {
    scenes: ProgressBar,
    answers: ProgressBar,
    tasks_per_tile: u64,
    answered: u64,
}

impl OutcomeReporter for BarReporter {
    async fn report(&mut self, outcome: &SinkOutcome) {
        match outcome {
            SinkOutcome::Committed { tiles, .. } => {
                self.answered += tiles * self.tasks_per_tile;
                self.answers.inc(tiles * self.tasks_per_tile);
            }
            SinkOutcome::DeadLettered(record) => self.scenes.println(format!("failed: {}", record.message)),
        }
        self.scenes.inc(1);
    }
}

/// `strata batch`.
///
/// # Errors
/// Invalid options, or a model or index that cannot be loaded; failed scenes are not errors
/// (they are dead-lettered and set exit status 1).
pub async fn run(args: BatchArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let tiling = args.scene.tiling();
    tiling.validate("batch options").context("checking the tiling options")?;
    if let Some(request_id) = &args.request_id {
        let probe = schemas::SceneRequest::new(request_id, "probe", schemas::SceneSource::Uri { uri: "probe".to_owned() });
        schemas::Message::validate(&probe).context("checking --request-id")?;
    }
    let tasks = args.task.tasks()?;
    let model = ModelSource::from_settings(args.model.as_deref(), args.model_registry.as_deref())?;
    if !tasks.is_empty() && !model.is_some() {
        bail!(
            "{} task(s) given but no model\nhint: pass --model DIR|URL (a model artifact, see `strata model init`) or --model-registry URL",
            tasks.len()
        );
    }
    let tables = Tables::new(storage::resolve(&args.tables).context("resolving --tables")?);
    let (bars, _multi) = Bars::new(args.no_progress, !tasks.is_empty());
    let settings = chain_settings(&args, model, &tables, bars.tile_progress())?;
    // The model and index first: a wrong path should fail before any scene is read.
    if let ModelSource::Artifact(location) = &settings.model {
        eprintln!("strata batch: loading the model {location}");
    }
    let built = chain::build(&settings, Roles::ALL).await?;
    if let Some(infer) = &built.infer {
        // Each tile would refuse an over-long task; refused once, before any scene is read.
        infer.check_tasks(&tasks).context("checking the tasks")?;
    }
    if let Some((registry, version)) = &built.serving {
        eprintln!("strata batch: loaded version {version} served by the registry {}", registry.url());
    }
    let chain = built.into_embedded()?;

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
            DeadLetterRecord::ingest(error.kind.dead_letter_kind(), &error.chain(), &schemas::encode(&request), None)
        })
        .collect();

    bars.scenes.set_length(total as u64);
    let mut reporter =
        BarReporter { scenes: bars.scenes.clone(), answers: bars.answers.clone(), tasks_per_tile: tasks.len() as u64, answered: 0 };
    let summary = runtime::run(requests, dead_letters, chain, &EmbeddedConfig::default(), &mut reporter).await;
    bars.finish();
    let answers = (!tasks.is_empty()).then_some(reporter.answered);
    print_summary(&summary, total, started.elapsed().as_secs_f64(), answers);
    println!("tables: {}", tables.root().url());
    println!("tiles:  {}/{request_id}/", settings.tiles.url());
    print_failures(&summary);
    Ok(if summary.all_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// What the run did, its failures last.
fn print_summary(summary: &RunSummary, total: usize, seconds: f64, answers: Option<u64>) {
    println!(
        "tiled {} of {total} scene(s) in {seconds:.1}s: {} tile(s) written, {} window(s) skipped as nodata",
        summary.scenes_ok, summary.tiles, summary.tiles_skipped_nodata
    );
    if let Some(answers) = answers {
        println!(
            "{answers} answer(s) ({:.2} tiles/s), {} detection(s) after merging, {} tile(s) failed",
            summary.tiles as f64 / seconds.max(1e-9),
            summary.detections,
            summary.tiles_failed
        );
    }
}

/// Runtime errors, then the scenes that failed (they are in the `dead_letter` table too).
fn print_failures(summary: &RunSummary) {
    for error in &summary.internal_errors {
        println!("error: {error}");
    }
    if !summary.all_ok() && !summary.failures.is_empty() {
        println!("{} failure(s), recorded in the `dead_letter` table:", summary.failures.len());
        for (scene, reason) in &summary.failures {
            println!("  {scene}: {reason}");
        }
    }
}
