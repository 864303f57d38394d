//! The sink: the one writer of the result tables, in two phases (arroyo's two-phase
//! committer). `process` *stages* a completed scene or a failure: every row is built and
//! encoded as GeoParquet in memory, so a scene that cannot be encoded fails before anything is
//! stored. A *commit* (when `commit_every` items are staged, at `flush`, and at the end) then
//! writes every staged item as one Delta transaction per table ([`tables::Tables::commit`]):
//! small scenes share commits, and readers see whole commits only.
//!
//! What a rerun does to a scene's rows:
//! - it succeeds: the transaction that adds its new rows removes the old ones, old dead
//!   letters of the scene included — the rows appear once;
//! - it fails: its dead letter is added and the earlier good rows are **kept**.
//!
//! A replay of items already committed (a kill after the commit, before the source offsets
//! were stored) finds its files in the tables (they are named by content) and commits nothing.
//! A committed item's acks are released as delivered (rejected for dead letters); a commit
//! that fails marks them errored, so a Kafka offset is never stored for rows that are not
//! durable.

use std::time::Duration;

use backon::Retryable as _;
use schemas::{DeadLetterRecord, SinkMessage, Stage as StageName};

use crate::{
    geometry::Gdal,
    rows,
    stage::{Ack, AckStatus, Collector, Envelope, Position, Stage, StageError, StageErrorKind},
    OperatorError,
};
use tables::{Commit, DataFile, Tables};

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
    scene_id: Option<String>,
    /// Its files, and the scene it replaces (a success replaces; a failure keeps).
    commit: Commit,
    outcome: SinkOutcome,
    ack: Ack,
}

/// How long the first staged item waits for others to share its commit, at most.
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_secs(1);

/// Encoded bytes staged at which the sink commits without waiting for more items.
pub const DEFAULT_COMMIT_BYTES: usize = 64 * 1024 * 1024;

/// The table sink.
pub struct SinkStage {
    tables: Tables,
    commit_every: usize,
    commit_bytes: usize,
    commit_delay: Duration,
    max_attempts: u32,
    staged: Vec<Staged>,
    /// When the oldest staged item was staged.
    staged_since: Option<std::time::Instant>,
}

impl SinkStage {
    /// A sink writing to `tables` that commits its staged items together, as Kafka Connect
    /// sinks roll files: when `commit_every` items (at least 1) or [`DEFAULT_COMMIT_BYTES`] are
    /// staged, when the oldest has waited [`DEFAULT_COMMIT_DELAY`], when no input came for as
    /// long, and at the end; with [`crate::runtime::EmbeddedConfig`]'s default attempts per
    /// commit. A source offset is therefore held back by the delay at most.
    pub fn new(tables: Tables, commit_every: usize) -> Self {
        let max_attempts = crate::runtime::EmbeddedConfig::default().max_attempts;
        Self {
            tables,
            commit_every: commit_every.max(1),
            commit_bytes: DEFAULT_COMMIT_BYTES,
            commit_delay: DEFAULT_COMMIT_DELAY,
            max_attempts,
            staged: Vec::new(),
            staged_since: None,
        }
    }

    /// Commits once `bytes` of encoded files are staged (at least 1) or the oldest staged item
    /// has waited `delay`.
    #[must_use]
    pub fn with_commit_bounds(mut self, bytes: usize, delay: Duration) -> Self {
        self.commit_bytes = bytes.max(1);
        self.commit_delay = delay;
        self
    }

    fn due(&self) -> bool {
        let bytes: usize = self.staged.iter().flat_map(|i| &i.commit.files).map(|f| f.bytes.len()).sum();
        self.staged.len() >= self.commit_every
            || bytes >= self.commit_bytes
            || self.staged_since.is_some_and(|since| since.elapsed() >= self.commit_delay)
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
        let folder = format!("request={request}");
        let mut files = Vec::new();
        for (table, mut frame) in rows::scene_frames(scene)? {
            files.push(DataFile::encode(table, &mut frame, &Gdal, date, &folder, scene_id)?);
        }
        if !scene.failed.is_empty() {
            let mut frame = tables::dead_letter_frame(&scene.failed)?;
            files.push(DataFile::encode(&schemas::tables::DEAD_LETTER, &mut frame, &Gdal, date, &folder, &format!("{scene_id}-tiles"))?);
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
        let commit = Commit { files, replaces: vec![(request.clone(), scene_id.clone())] };
        Ok(Staged { scene_id: Some(scene_id.clone()), commit, outcome, ack })
    }

    fn stage_failure(record: &DeadLetterRecord, ack: Ack) -> Result<Staged, OperatorError> {
        let mut frame = tables::dead_letter_frame(std::slice::from_ref(record))?;
        let date = record.failed_at.date_naive();
        let stage = record.stage.as_str();
        let (folder, stem) = match (&record.request_id, &record.scene_id) {
            (Some(request), Some(scene)) => (
                format!("request={request}"),
                match &record.tile_id {
                    None => format!("{scene}-{stage}"),
                    Some(tile) => format!("{scene}-{stage}-{tile}"),
                },
            ),
            // Too broken to name: the file is named by what it holds.
            _ => ("unidentified".to_owned(), stage.to_owned()),
        };
        let file = DataFile::encode(&schemas::tables::DEAD_LETTER, &mut frame, &Gdal, date, &folder, &stem)?;
        ack.update(AckStatus::Rejected);
        Ok(Staged {
            scene_id: record.scene_id.clone(),
            commit: Commit { files: vec![file], replaces: Vec::new() },
            outcome: SinkOutcome::DeadLettered(record.clone()),
            ack,
        })
    }

    /// The staged items as one commit. A later success of a scene replaces what earlier items
    /// of the same commit staged for it, as it replaces what earlier commits wrote.
    fn combined(items: &[Staged]) -> Commit {
        let mut commit = Commit::default();
        for item in items {
            for replaced in &item.commit.replaces {
                commit.files.retain(|f| f.scene().as_ref() != Some(replaced));
                if !commit.replaces.contains(replaced) {
                    commit.replaces.push(replaced.clone());
                }
            }
            for file in &item.commit.files {
                if !commit.files.iter().any(|f| f.table.name == file.table.name && f.path == file.path) {
                    commit.files.push(file.clone());
                }
            }
        }
        commit
    }

    /// Commits every staged item in one commit, retrying transient failures (store errors,
    /// races with other writers) with backoff. When it still fails, every item's acks are
    /// marked errored (its source is not released, so a replay redoes it) and the failure is
    /// returned.
    async fn commit(&mut self, out: &mut Collector<SinkOutcome>) -> Result<(), StageError> {
        let items = std::mem::take(&mut self.staged);
        self.staged_since = None;
        if items.is_empty() {
            return Ok(());
        }
        let commit = Self::combined(&items);
        let committed = (|| async { self.tables.commit(&commit, &Gdal).await.map_err(OperatorError::from) })
            .retry(crate::stage::retry_policy(self.max_attempts))
            .when(|e: &OperatorError| e.class() == crate::ErrorClass::Retryable)
            .notify(|e, wait| tracing::warn!(error = %e, ?wait, "Retrying a table commit after a transient failure."))
            .await;
        if let Err(error) = committed {
            let scenes: Vec<_> = items.iter().filter_map(|i| i.scene_id.as_deref()).collect();
            tracing::error!(%error, ?scenes, "Could not commit scenes' rows; their sources are not released.");
            for item in &items {
                item.ack.update(AckStatus::Errored);
            }
            // Not retried by the runtime: the retries are spent, and the inputs are already
            // staged (a second process call would stage them twice).
            return Err(StageError::new(StageName::Sink, StageErrorKind::Internal, error));
        }
        for item in items {
            item.ack.update(AckStatus::Delivered);
            let envelope = Envelope::new(item.outcome, Position::Derived, item.ack);
            out.collect(envelope).await.map_err(|e| StageError::new(StageName::Sink, StageErrorKind::Internal, e))?;
        }
        Ok(())
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
        self.staged_since.get_or_insert_with(std::time::Instant::now);
        if self.due() {
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
        Some(self.commit_delay)
    }

    fn flush_due(&self) -> bool {
        self.staged_since.is_some_and(|since| since.elapsed() >= self.commit_delay)
    }
}
