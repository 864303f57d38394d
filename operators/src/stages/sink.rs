//! The sink: the one writer of the result tables, in two phases (arroyo's two-phase
//! committer). `process` *stages* a completed scene or a failure: every row is built and
//! encoded as Parquet in memory, so a scene that cannot be encoded fails before anything is
//! stored. A *commit* (when `commit_every` items are staged, at `flush`, and at the end) then
//! stores each staged item: its files at their content-derived paths, its scene index (the
//! commit point), and only then removes what an earlier run of the same scene left elsewhere.
//!
//! What a rerun does to a scene's rows:
//! - it succeeds: its new files replace the old ones (same paths) and any old file the new run
//!   did not write is removed, old dead letters of the scene included — the rows appear once;
//! - it fails: its dead letter is recorded and the earlier good rows are **kept**.
//!
//! A committed item's acks are released as delivered (rejected for dead letters); a commit
//! that fails marks them errored, so a Kafka offset is never stored for rows that are not
//! durable.

use std::time::Duration;

use backon::Retryable as _;
use schemas::{DeadLetterRecord, SinkMessage, Stage as StageName};
use sha2::{Digest as _, Sha256};

use crate::{
    geometry::Gdal,
    rows,
    stage::{Ack, AckStatus, Collector, Envelope, Position, Stage, StageError, StageErrorKind},
    OperatorError,
};
use tables::{SceneIndex, Tables};

/// What the sink reports for each committed item.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkOutcome {
    /// A scene's rows are in the tables.
    Committed {
        /// Request id.
        request_id: String,
        /// Scene id.
        scene_id: String,
        /// Tiles answered.
        tiles: u64,
        /// Tiles whose inference failed (dead-lettered).
        tiles_failed: u64,
        /// Windows skipped as nodata.
        tiles_skipped_nodata: u64,
        /// Detections after merging.
        detections: u64,
        /// The scene's tiles that failed, now in the `dead_letter` table (a runtime with a
        /// dead-letter topic copies them there).
        dead_letters: Vec<DeadLetterRecord>,
    },
    /// A failure is in the `dead_letter` table.
    DeadLettered(DeadLetterRecord),
}

impl From<DeadLetterRecord> for SinkOutcome {
    fn from(record: DeadLetterRecord) -> Self {
        Self::DeadLettered(record)
    }
}

/// One item ready to commit.
struct Staged {
    request_id: Option<String>,
    scene_id: Option<String>,
    /// `(path, bytes)` of result files.
    files: Vec<(String, Vec<u8>)>,
    /// `(path, bytes)` of dead-letter files.
    dead_letters: Vec<(String, Vec<u8>)>,
    /// Whether the item is a success (replaces the scene's rows) or a failure (keeps them).
    success: bool,
    outcome: SinkOutcome,
    ack: Ack,
}

/// The table sink.
pub struct SinkStage {
    tables: Tables,
    commit_every: usize,
    max_attempts: u32,
    staged: Vec<Staged>,
}

impl SinkStage {
    /// A sink writing to `tables`, committing every `commit_every` staged items (at least 1),
    /// with [`crate::runtime::EmbeddedConfig`]'s default attempts per commit.
    pub fn new(tables: Tables, commit_every: usize) -> Self {
        let max_attempts = crate::runtime::EmbeddedConfig::default().max_attempts;
        Self { tables, commit_every: commit_every.max(1), max_attempts, staged: Vec::new() }
    }

    /// The attempts a commit gets against transient store failures (at least 1). The sink
    /// owns this budget: a commit that exhausts it is not retried again by the runtime.
    #[must_use]
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Items staged and not yet committed.
    pub fn staged(&self) -> usize {
        self.staged.len()
    }

    fn stage_scene(scene: &schemas::SceneResults, ack: Ack) -> Result<Staged, OperatorError> {
        let date = rows::scene_date(scene);
        let (request, scene_id) = (&scene.scene.request_id, &scene.scene.scene_id);
        let mut files = Vec::new();
        for (table, mut frame) in rows::scene_frames(scene)? {
            files.push((Tables::scene_file(table, date, request, scene_id), Tables::encode(table, &mut frame, &Gdal)?));
        }
        let mut dead_letters = Vec::new();
        if !scene.failed.is_empty() {
            let mut frame = tables::dead_letter_frame(&scene.failed)?;
            let path = format!(
                "{}/date={}/request={request}/{scene_id}/tiles.parquet",
                schemas::tables::DEAD_LETTER.name,
                date.format("%Y-%m-%d")
            );
            dead_letters.push((path, Tables::encode(&schemas::tables::DEAD_LETTER, &mut frame, &Gdal)?));
            ack.update(AckStatus::Rejected);
        }
        let outcome = SinkOutcome::Committed {
            request_id: request.clone(),
            scene_id: scene_id.clone(),
            tiles: scene.results.len() as u64,
            tiles_failed: scene.failed.len() as u64,
            tiles_skipped_nodata: scene.scene.tiles_skipped_nodata,
            detections: scene.detections.len() as u64,
            dead_letters: scene.failed.clone(),
        };
        Ok(Staged { request_id: Some(request.clone()), scene_id: Some(scene_id.clone()), files, dead_letters, success: true, outcome, ack })
    }

    fn stage_failure(record: &DeadLetterRecord, ack: Ack) -> Result<Staged, OperatorError> {
        let mut frame = tables::dead_letter_frame(std::slice::from_ref(record))?;
        let bytes = Tables::encode(&schemas::tables::DEAD_LETTER, &mut frame, &Gdal)?;
        let date = record.failed_at.date_naive().format("%Y-%m-%d");
        let table = schemas::tables::DEAD_LETTER.name;
        let path = match (&record.request_id, &record.scene_id) {
            (Some(request), Some(scene)) => match &record.tile_id {
                None => format!("{table}/date={date}/request={request}/{scene}/{}.parquet", record.stage.as_str()),
                Some(tile) => format!("{table}/date={date}/request={request}/{scene}/{}-{tile}.parquet", record.stage.as_str()),
            },
            // Too broken to name: the file is named by what it holds.
            _ => {
                let digest = Sha256::digest(schemas::encode(record));
                let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("{table}/date={date}/unidentified/{}-{hex}.parquet", record.stage.as_str())
            }
        };
        ack.update(AckStatus::Rejected);
        Ok(Staged {
            request_id: record.request_id.clone(),
            scene_id: record.scene_id.clone(),
            files: Vec::new(),
            dead_letters: vec![(path, bytes)],
            success: false,
            outcome: SinkOutcome::DeadLettered(record.clone()),
            ack,
        })
    }

    async fn commit_one(&self, item: &Staged) -> Result<(), OperatorError> {
        for (path, bytes) in item.files.iter().chain(&item.dead_letters) {
            self.tables.put(path, bytes.clone()).await?;
        }
        let (Some(request), Some(scene)) = (&item.request_id, &item.scene_id) else { return Ok(()) };
        let old = self.tables.scene_index(request, scene).await?;
        let new_dead: Vec<String> = item.dead_letters.iter().map(|(p, _)| p.clone()).collect();
        let index = if item.success {
            SceneIndex { files: item.files.iter().map(|(p, _)| p.clone()).collect(), dead_letters: new_dead }
        } else {
            // A failed rerun keeps the scene's good rows.
            SceneIndex { files: old.files.clone(), dead_letters: new_dead }
        };
        self.tables.set_scene_index(request, scene, &index).await?;
        for stale in old.files.iter().chain(&old.dead_letters) {
            if !index.files.contains(stale) && !index.dead_letters.contains(stale) {
                tracing::info!(file = %stale, "Removing a result file a rerun replaced.");
                self.tables.delete(stale).await?;
            }
        }
        Ok(())
    }

    /// Commits every staged item, retrying transient store failures with backoff. An item
    /// that still cannot be committed is dropped with its acks marked errored (its source is
    /// not released, so a replay redoes it) and the first such failure is returned.
    async fn commit(&mut self, out: &mut Collector<SinkOutcome>) -> Result<(), StageError> {
        let mut first_error = None;
        for item in std::mem::take(&mut self.staged) {
            let committed = (|| self.commit_one(&item))
                .retry(crate::stage::retry_policy(self.max_attempts))
                .when(|e: &OperatorError| e.class() == crate::ErrorClass::Retryable)
                .notify(|e, wait| tracing::warn!(error = %e, ?wait, "Retrying a table commit after a transient failure."))
                .await;
            match committed {
                Ok(()) => {
                    item.ack.update(AckStatus::Delivered);
                    let envelope = Envelope::new(item.outcome, Position::Derived, item.ack);
                    out.collect(envelope).await.map_err(|e| StageError::new(StageName::Sink, StageErrorKind::Internal, e))?;
                }
                Err(error) => {
                    tracing::error!(%error, scene_id = ?item.scene_id, "Could not commit a scene's rows; its source is not released.");
                    item.ack.update(AckStatus::Errored);
                    // Not retried by the runtime: the retries are spent, and the input is
                    // already staged (a second process call would stage it twice).
                    first_error.get_or_insert(StageError::new(StageName::Sink, StageErrorKind::Internal, error));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Stage for SinkStage {
    type In = SinkMessage;
    type Out = SinkOutcome;

    fn name(&self) -> StageName {
        StageName::Sink
    }

    async fn process(&mut self, input: Envelope<SinkMessage>, out: &mut Collector<SinkOutcome>) -> Result<(), StageError> {
        let staged = match &input.payload {
            SinkMessage::Scene(scene) => {
                tracing::info_span!("sink", request_id = %scene.scene.request_id, scene_id = %scene.scene.scene_id)
                    .in_scope(|| Self::stage_scene(scene, input.ack.clone()))
            }
            SinkMessage::Failed(record) => Self::stage_failure(record, input.ack.clone()),
        }
        .map_err(|e| StageError::new(StageName::Sink, StageErrorKind::Internal, e))?;
        self.staged.push(staged);
        if self.staged.len() >= self.commit_every {
            self.commit(out).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, out: &mut Collector<SinkOutcome>) -> Result<(), StageError> {
        self.commit(out).await
    }

    async fn on_close(&mut self) -> Result<(), StageError> {
        for item in self.staged.drain(..) {
            item.ack.update(AckStatus::Errored);
        }
        Ok(())
    }

    fn max_wait(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
}
