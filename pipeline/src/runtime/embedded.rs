//! The embedded runtime: scene requests → tiling workers → table sink, over bounded channels.
//!
//! Backpressure: at most `scene_concurrency` scenes are being tiled and at most as many
//! finished scenes wait for the sink, so memory does not grow with the batch size. Every
//! scene ends in exactly one outcome: its `tiles` and `scenes` rows, or a `dead_letter` row.
//! Files are keyed by request and scene, and each outcome removes the other outcome's files,
//! so rerunning a batch replaces its rows instead of duplicating them.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use operators::{
    storage::Location,
    tables::{self, SceneRow, Tables},
    tile::{self, Progress, TiledScene, TilerConfig},
    ErrorClass, OperatorError,
};
use schemas::{tables as table_schemas, DeadLetterRecord, ErrorKind, OriginalPayload, SceneRequest, Stage, SCHEMA_VERSION};
use tokio::sync::mpsc;

/// How the embedded runtime runs.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Where tile images go.
    pub tiles_root: Location,
    /// Where result tables go.
    pub tables: Tables,
    /// Tiler settings.
    pub tiler: TilerConfig,
    /// Scenes tiled at the same time.
    pub scene_concurrency: usize,
    /// Attempts for retryable failures (object store hiccups), including the first.
    pub max_attempts: u32,
}

/// The outcome of one scene.
#[derive(Debug)]
pub enum SceneOutcome {
    /// Tiled and recorded.
    Tiled(Box<TiledScene>),
    /// Dead-lettered.
    Failed(Box<DeadLetterRecord>),
}

/// Totals of a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Scenes tiled.
    pub scenes_ok: usize,
    /// Scenes dead-lettered.
    pub scenes_failed: usize,
    /// Tiles written.
    pub tiles_written: u64,
    /// Windows skipped as nodata.
    pub tiles_skipped_nodata: u64,
    /// One line per failed scene: id and reason.
    pub failures: Vec<(String, String)>,
}

/// A dead-letter record for a scene request that failed at `stage`.
pub fn dead_letter(request: &SceneRequest, stage: Stage, error: &OperatorError) -> DeadLetterRecord {
    DeadLetterRecord {
        schema_version: SCHEMA_VERSION,
        stage,
        error_kind: match error.class() {
            ErrorClass::Permanent => ErrorKind::Permanent,
            ErrorClass::Retryable => ErrorKind::RetriesExhausted,
        },
        message: error.to_string(),
        request_id: Some(request.request_id.clone()),
        scene_id: Some(request.scene_id.clone()),
        tile_id: None,
        source: None,
        original_payload: OriginalPayload::from_bytes(&schemas::encode(request)),
        failed_at: Utc::now(),
    }
}

/// File stem of everything a scene writes.
fn scene_stem(request_id: &str, scene_id: &str) -> String {
    format!("{request_id}--{scene_id}")
}

async fn tile_with_retries(request: &SceneRequest, config: &EmbeddedConfig, progress: &Progress) -> Result<TiledScene, OperatorError> {
    let mut attempt = 1;
    loop {
        match tile::tile_scene(request, &config.tiles_root, &config.tiler, Arc::clone(progress)).await {
            Ok(scene) => return Ok(scene),
            Err(err) if err.class() == ErrorClass::Retryable && attempt < config.max_attempts => {
                let backoff = Duration::from_millis(250 * 2u64.pow(attempt));
                tracing::warn!(scene_id = %request.scene_id, attempt, error = %err, "Retrying scene after a transient failure.");
                tokio::time::sleep(backoff).await;
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Writes one scene's outcome, replacing whatever an earlier run wrote for it.
///
/// # Errors
/// When the tables cannot be written.
pub async fn record(tables: &Tables, outcome: &SceneOutcome) -> Result<(), OperatorError> {
    let now = Utc::now();
    let date = tables::partition_date(now);
    match outcome {
        SceneOutcome::Tiled(scene) => {
            let stem = scene_stem(&scene.summary.request_id, &scene.summary.scene_id);
            let mut tiles_frame = tables::tiles_frame(&scene.tiles, now)?;
            tables.write(&table_schemas::TILES, &stem, date, &mut tiles_frame).await?;
            let mut scenes_frame = tables::scenes_frame(&[SceneRow { summary: &scene.summary, produced_at: now }])?;
            tables.write(&table_schemas::SCENES, &stem, date, &mut scenes_frame).await?;
            tables.remove(&table_schemas::DEAD_LETTER, &stem).await?;
        }
        SceneOutcome::Failed(record) => {
            let stem = scene_stem(record.request_id.as_deref().unwrap_or("unknown"), record.scene_id.as_deref().unwrap_or("unknown"));
            let mut frame = tables::dead_letter_frame(std::slice::from_ref(record))?;
            tables.write(&table_schemas::DEAD_LETTER, &stem, tables::partition_date(record.failed_at), &mut frame).await?;
            tables.remove(&table_schemas::TILES, &stem).await?;
            tables.remove(&table_schemas::SCENES, &stem).await?;
        }
    }
    Ok(())
}

/// Runs the scenes through tiling and into the tables. `on_scene` is told of each outcome as
/// it is recorded (for progress bars).
///
/// # Errors
/// Only when the tables themselves cannot be written; bad scenes are dead-lettered.
pub async fn run(
    scenes: Vec<SceneRequest>,
    config: EmbeddedConfig,
    progress: Progress,
    on_scene: impl Fn(&SceneOutcome) + Send,
) -> Result<RunSummary, OperatorError> {
    let concurrency = config.scene_concurrency.max(1);
    let (request_tx, request_rx) = mpsc::channel::<SceneRequest>(concurrency);
    let (outcome_tx, mut outcome_rx) = mpsc::channel::<SceneOutcome>(concurrency);
    let config = Arc::new(config);
    let request_rx = Arc::new(tokio::sync::Mutex::new(request_rx));

    let feeder = tokio::spawn(async move {
        for scene in scenes {
            if request_tx.send(scene).await.is_err() {
                break;
            }
        }
    });
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (rx, tx, config, progress) = (Arc::clone(&request_rx), outcome_tx.clone(), Arc::clone(&config), Arc::clone(&progress));
        workers.push(tokio::spawn(async move {
            loop {
                let Some(request) = rx.lock().await.recv().await else { break };
                let outcome = match tile_with_retries(&request, &config, &progress).await {
                    Ok(scene) => SceneOutcome::Tiled(Box::new(scene)),
                    Err(err) => {
                        tracing::warn!(scene_id = %request.scene_id, error = %err, "Scene failed; dead-lettering it.");
                        SceneOutcome::Failed(Box::new(dead_letter(&request, Stage::Tile, &err)))
                    }
                };
                if tx.send(outcome).await.is_err() {
                    break;
                }
            }
        }));
    }
    // Only the workers hold the receivers and senders from here on, so when they stop (the
    // sink failed) the feeder's sends fail instead of waiting forever.
    drop(request_rx);
    drop(outcome_tx);

    let mut summary = RunSummary::default();
    let mut sink_error = None;
    while let Some(outcome) = outcome_rx.recv().await {
        if let Err(err) = record(&config.tables, &outcome).await {
            sink_error = Some(err);
            break;
        }
        match &outcome {
            SceneOutcome::Tiled(scene) => {
                summary.scenes_ok += 1;
                summary.tiles_written += scene.summary.tiles_written;
                summary.tiles_skipped_nodata += scene.summary.tiles_skipped_nodata;
            }
            SceneOutcome::Failed(record) => {
                summary.scenes_failed += 1;
                summary.failures.push((record.scene_id.clone().unwrap_or_default(), record.message.clone()));
            }
        }
        on_scene(&outcome);
    }
    drop(outcome_rx);
    let _ = feeder.await;
    for worker in workers {
        let _ = worker.await;
    }
    match sink_error {
        Some(err) => Err(err),
        None => Ok(summary),
    }
}
