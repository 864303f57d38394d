//! `strata batch`: tile every scene of a folder, prefix, list of files or STAC items, with no
//! broker, and record the results in the tables.

use std::{process::ExitCode, sync::Arc, time::Instant};

use anyhow::Context as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use operators::{
    storage,
    tables::Tables,
    tile::{TileEvent, TilerConfig},
};
use schemas::{Stage, TilingOptions};

use crate::{
    cli::BatchArgs,
    inputs,
    runtime::embedded::{self, EmbeddedConfig, SceneOutcome},
};

pub async fn run(args: BatchArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let tiling = TilingOptions {
        tile_size_px: args.tile_size,
        overlap_px: args.overlap,
        output_size_px: args.output_size,
        bands: args.bands.clone(),
        nodata: args.nodata,
        stac_assets: args.assets.clone(),
    };
    tiling.validate("batch options").context("checking the tiling options")?;
    if let Some(request_id) = &args.request_id {
        let probe = schemas::SceneRequest::new(request_id, "probe", schemas::SceneSource::Uri { uri: "probe".to_owned() });
        schemas::Message::validate(&probe).context("checking --request-id")?;
    }
    let tables = Tables::new(storage::resolve(&args.tables).context("resolving --tables")?);
    let tiles_root = storage::resolve(&args.tiles).context("resolving --tiles")?;

    let (found, missing) = inputs::discover(&args.scenes).await;
    let request_id = args.request_id.clone().unwrap_or_else(|| inputs::default_request_id(&found, &tiling, &[]));
    let (requests, failures) = inputs::requests(found, missing, &request_id, &tiling, &[]).await;
    let total = requests.len() + failures.len();
    eprintln!("strata batch: {total} scene(s), request `{request_id}`");

    let multi = MultiProgress::with_draw_target(if args.no_progress { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() });
    let bar_style = |template: &str| ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    let scenes_bar = multi.add(ProgressBar::new(total as u64));
    scenes_bar.set_style(bar_style("scenes {bar:30.cyan/blue} {pos}/{len} {msg}"));
    let tiles_bar = multi.add(ProgressBar::new(0));
    tiles_bar.set_style(bar_style("tiles  {bar:30.green/blue} {pos}/{len} {per_sec} eta {eta}"));

    // Inputs that never became requests are dead-lettered first.
    let mut dead_lettered = Vec::new();
    for failure in failures {
        let request = schemas::SceneRequest::new(&request_id, &failure.scene_id, schemas::SceneSource::Uri { uri: failure.input.clone() });
        let record = embedded::dead_letter(&request, Stage::Ingest, &failure.error);
        embedded::record(&tables, &SceneOutcome::Failed(Box::new(record))).await.context("writing the dead_letter table")?;
        scenes_bar.inc(1);
        dead_lettered.push((failure.scene_id, failure.error.to_string()));
    }

    let progress_bar = tiles_bar.clone();
    let progress: operators::tile::Progress = Arc::new(move |event| match event {
        TileEvent::Planned { windows, .. } => progress_bar.inc_length(windows as u64),
        TileEvent::Window { .. } => progress_bar.inc(1),
    });
    let config = EmbeddedConfig {
        tiles_root: tiles_root.clone(),
        tables: tables.clone(),
        tiler: TilerConfig {
            max_scene_pixels: args.max_scene_megapixels.saturating_mul(1_000_000),
            threads: args.threads.unwrap_or_else(|| TilerConfig::default().threads),
            ..TilerConfig::default()
        },
        scene_concurrency: args.scene_concurrency,
        max_attempts: 3,
    };
    let bar = scenes_bar.clone();
    let mut summary = embedded::run(requests, config, progress, move |outcome| {
        if let SceneOutcome::Failed(record) = outcome {
            bar.println(format!("failed: {}", record.message));
        }
        bar.inc(1);
    })
    .await
    .context("writing the result tables")?;
    scenes_bar.finish_and_clear();
    tiles_bar.finish_and_clear();

    summary.scenes_failed += dead_lettered.len();
    summary.failures.splice(0..0, dead_lettered);
    println!(
        "tiled {} of {} scene(s) in {:.1}s: {} tile(s) written, {} window(s) skipped as nodata",
        summary.scenes_ok,
        total,
        started.elapsed().as_secs_f64(),
        summary.tiles_written,
        summary.tiles_skipped_nodata
    );
    println!("tables: {}", tables.root().url());
    println!("tiles:  {}/{request_id}/", tiles_root.url());
    if summary.scenes_failed > 0 {
        println!("{} scene(s) failed and were recorded in the `dead_letter` table:", summary.scenes_failed);
        for (scene, reason) in &summary.failures {
            println!("  {scene}: {reason}");
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
