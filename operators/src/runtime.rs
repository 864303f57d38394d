//! The embedded runtime: the stages as a chain of tasks over bounded channels, in one
//! process, with no broker — what `strata batch` and the tests run. The Kafka runtime drives
//! the same stages between topics.
//!
//! ```text
//! scene requests ─► tile ×N ─► infer ─► merge + sink ─► outcomes
//! ```
//!
//! Merge and sink run as one composed stage ([`Then`]): the merge stage's output is the
//! sink's input, in the same task, in both runtimes. An [`OutcomeReporter`] sees every
//! committed outcome (progress bars here; metrics and the dead-letter topic on Kafka).
//!
//! Backpressure: every channel holds at most `channel_capacity` envelopes and a full channel
//! blocks the stage before it, so memory does not grow with the batch. Each scene request
//! carries an [`Ack`]; it resolves when the scene's rows (or its dead letter) are committed,
//! and that is what the summary counts: every scene ends in exactly one outcome. A stage task
//! that panics or fails is reported in the summary, never swallowed.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use schemas::{DeadLetterRecord, SceneRequest};
use tokio::sync::mpsc;

use crate::{
    stage::{retry_policy, Ack, AckStatus, Closed, Collector, Envelope, Position, Stage, StageError, StageErrorKind},
    stages::sink::SinkOutcome,
};

/// An input channel several workers of one stage share.
pub struct SharedReceiver<T> {
    inner: Arc<tokio::sync::Mutex<mpsc::Receiver<Envelope<T>>>>,
}

impl<T> Clone for SharedReceiver<T> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<T> SharedReceiver<T> {
    /// Wraps a receiver.
    pub fn new(receiver: mpsc::Receiver<Envelope<T>>) -> Self {
        Self { inner: Arc::new(tokio::sync::Mutex::new(receiver)) }
    }

    async fn recv(&self) -> Option<Envelope<T>> {
        self.inner.lock().await.recv().await
    }
}

/// Processes one input: retries retryable errors with backoff and jitter, and turns a final
/// failure into a dead-letter output carrying the input's ack.
///
/// # Errors
/// [`Closed`] when the next stage is gone.
pub async fn process_one<S: Stage>(
    stage: &mut S,
    envelope: Envelope<S::In>,
    out: &mut Collector<S::Out>,
    max_attempts: u32,
) -> Result<(), Closed> {
    let mut delays = backon::BackoffBuilder::build(retry_policy(max_attempts));
    let mut attempt = 1;
    loop {
        let error = match stage.process(envelope.clone(), out).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if error.kind == StageErrorKind::Retryable {
            if let Some(delay) = delays.next() {
                tracing::warn!(stage = stage.name().as_str(), attempt, ?delay, error = %error.chain(), "Retrying after a transient failure.");
                tokio::time::sleep(delay).await;
                attempt += 1;
                continue;
            }
        }
        let ids = envelope.payload_ids();
        tracing::warn!(
            stage = stage.name().as_str(),
            // Plain values, and no field at all for an id the input lacks (not `Some(..)`/`None`).
            request_id = ids.request_id.as_deref(),
            scene_id = ids.scene_id.as_deref(),
            tile_id = ids.tile_id.as_deref(),
            error = %error.chain(),
            "Dead-lettering an input."
        );
        let record = error.dead_letter(&envelope.payload, &envelope.position, attempt);
        return out.collect(Envelope::new(S::Out::from(record), envelope.position.clone(), envelope.ack.clone())).await;
    }
}

/// Two stages run as one: every output of `first` goes straight into `second`, in the same
/// task. `second`'s failures are retried and dead-lettered by [`process_one`] as a runtime
/// would, so an input of `first` is never processed twice because of what happened after it
/// (the merge stage, whose state an input changes, followed by the sink). Errors of `first`
/// are the composed stage's own: the runtime retries or dead-letters that input.
pub struct Then<A, B> {
    first: A,
    second: B,
    max_attempts: u32,
}

impl<A, B> Then<A, B> {
    /// `first` followed by `second`, whose retryable failures get `max_attempts` tries.
    pub fn new(first: A, second: B, max_attempts: u32) -> Self {
        Self { first, second, max_attempts }
    }

    /// The two stages.
    pub fn stages(&self) -> (&A, &B) {
        (&self.first, &self.second)
    }
}

impl<A, B> Then<A, B>
where
    A: Stage,
    B: Stage<In = A::Out>,
    A::Out: crate::stage::Payload,
{
    /// Runs what `first` collected through `second`.
    async fn pass_on(&mut self, collected: Vec<Envelope<A::Out>>, out: &mut Collector<B::Out>) -> Result<(), StageError> {
        let name = self.second.name();
        for envelope in collected {
            process_one(&mut self.second, envelope, out, self.max_attempts)
                .await
                .map_err(|closed| StageError::new(name, StageErrorKind::Internal, closed))?;
        }
        Ok(())
    }
}

impl<A, B> Stage for Then<A, B>
where
    A: Stage + Sync,
    B: Stage<In = A::Out> + Sync,
    A::Out: crate::stage::Payload + Sync,
{
    type In = A::In;
    type Out = B::Out;

    fn name(&self) -> schemas::Stage {
        self.first.name()
    }

    async fn process(&mut self, input: Envelope<A::In>, out: &mut Collector<B::Out>) -> Result<(), StageError> {
        let mut collected = Collector::buffer();
        let first = self.first.process(input, &mut collected).await;
        // What `first` collected stands even when it then failed (the stage contract).
        self.pass_on(collected.drain(), out).await?;
        // `second` sees input only when `first` emits, so its time bound is checked here.
        if self.second.flush_due() {
            self.second.flush(out).await?;
        }
        first
    }

    async fn on_start(&mut self) -> Result<(), StageError> {
        self.first.on_start().await?;
        self.second.on_start().await
    }

    async fn flush(&mut self, out: &mut Collector<B::Out>) -> Result<(), StageError> {
        let mut collected = Collector::buffer();
        let first = self.first.flush(&mut collected).await;
        self.pass_on(collected.drain(), out).await?;
        self.second.flush(out).await?;
        first
    }

    async fn on_close(&mut self) -> Result<(), StageError> {
        let first = self.first.on_close().await;
        let second = self.second.on_close().await;
        first.and(second)
    }

    fn max_wait(&self) -> Option<std::time::Duration> {
        match (self.first.max_wait(), self.second.max_wait()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn flush_due(&self) -> bool {
        self.first.flush_due() || self.second.flush_due()
    }
}

/// What a runtime does with each committed outcome, after it is in the tables and before the
/// input's ack is released: show progress (the embedded runtime's bars), or count it and
/// copy its dead letters to the dead-letter topic (the Kafka runtime).
pub trait OutcomeReporter: Send {
    /// Reports one outcome.
    fn report(&mut self, outcome: &SinkOutcome) -> impl std::future::Future<Output = ()> + Send;
}

/// A reporter that does nothing.
impl OutcomeReporter for () {
    async fn report(&mut self, _: &SinkOutcome) {}
}

impl<R: OutcomeReporter> OutcomeReporter for &mut R {
    fn report(&mut self, outcome: &SinkOutcome) -> impl std::future::Future<Output = ()> + Send {
        (**self).report(outcome)
    }
}

impl<T: crate::stage::Payload> Envelope<T> {
    fn payload_ids(&self) -> crate::stage::PayloadIds {
        self.payload.ids()
    }
}

/// Drives one stage worker until its input ends: `on_start`, every input (with retries and
/// dead letters), `flush` whenever no input came for the stage's `max_wait` and at the end,
/// then `on_close`. Errors of flush and close (which concern no single input) are returned
/// for the summary; the stage goes on after a failed flush.
///
/// # Errors
/// A start failure, or [`StageErrorKind::Internal`] when the next stage is gone.
pub async fn drive<S: Stage>(
    mut stage: S,
    input: SharedReceiver<S::In>,
    output: mpsc::Sender<Envelope<S::Out>>,
    max_attempts: u32,
) -> Result<Vec<StageError>, StageError> {
    let name = stage.name();
    let gone = |e: Closed| StageError::new(name, StageErrorKind::Internal, e);
    stage.on_start().await?;
    let mut out = Collector::channel(output);
    let mut errors = Vec::new();
    loop {
        let next = match stage.max_wait() {
            Some(wait) => match tokio::time::timeout(wait, input.recv()).await {
                Ok(next) => next,
                Err(_elapsed) => {
                    if let Err(error) = stage.flush(&mut out).await {
                        tracing::error!(stage = name.as_str(), error = %error.chain(), "Flush failed.");
                        errors.push(error);
                    }
                    continue;
                }
            },
            None => input.recv().await,
        };
        let Some(envelope) = next else { break };
        process_one(&mut stage, envelope, &mut out, max_attempts).await.map_err(gone)?;
        if stage.flush_due() {
            if let Err(error) = stage.flush(&mut out).await {
                tracing::error!(stage = name.as_str(), error = %error.chain(), "Flush failed.");
                errors.push(error);
            }
        }
    }
    if let Err(error) = stage.flush(&mut out).await {
        errors.push(error);
    }
    if let Err(error) = stage.on_close().await {
        errors.push(error);
    }
    Ok(errors)
}

/// How the chain runs.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Envelopes a channel between two stages holds.
    pub channel_capacity: usize,
    /// Attempts per input for retryable failures, the first included.
    pub max_attempts: u32,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self { channel_capacity: 64, max_attempts: 4 }
    }
}

/// Totals of a run.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunSummary {
    /// Scenes whose rows were committed without any failure.
    pub scenes_ok: usize,
    /// Scenes with a dead letter (the whole scene, or some of its tiles), or not committed.
    pub scenes_failed: usize,
    /// Tiles answered and recorded.
    pub tiles: u64,
    /// Tiles dead-lettered by inference.
    pub tiles_failed: u64,
    /// Windows skipped as nodata.
    pub tiles_skipped_nodata: u64,
    /// Detections after merging.
    pub detections: u64,
    /// One line per failure: scene (or input) and reason.
    pub failures: Vec<(String, String)>,
    /// Failures of the runtime itself (a stage that panicked, a commit that could not be made).
    pub internal_errors: Vec<String>,
    /// How each scene's ack resolved, by scene id.
    pub acks: BTreeMap<String, AckStatus>,
}

impl RunSummary {
    /// Whether everything succeeded.
    pub fn all_ok(&self) -> bool {
        self.scenes_failed == 0 && self.internal_errors.is_empty() && self.acks.values().all(|s| *s == AckStatus::Delivered)
    }
}

/// The stages of one chain (the tile stage is cloned per worker).
pub struct Chain<T, I, M> {
    /// Tile workers.
    pub tile: Vec<T>,
    /// Inference.
    pub infer: I,
    /// Merge followed by the sink ([`Then`]).
    pub merge: M,
}

/// Runs `scenes` through the chain. `dead_letters` are inputs that never became requests
/// (committed by the sink like any failure). `reporter` sees every committed outcome
/// (progress bars).
///
/// # Errors
/// Never for bad input (that is dead-lettered); the summary lists runtime failures.
pub async fn run<T, I, M>(
    scenes: Vec<SceneRequest>,
    dead_letters: Vec<DeadLetterRecord>,
    chain: Chain<T, I, M>,
    config: &EmbeddedConfig,
    mut reporter: impl OutcomeReporter,
) -> RunSummary
where
    T: Stage<In = SceneRequest, Out = schemas::TileMessage>,
    I: Stage<In = schemas::TileMessage, Out = schemas::ResultMessage>,
    M: Stage<In = schemas::ResultMessage, Out = SinkOutcome>,
{
    let capacity = config.channel_capacity.max(1);
    let (scene_tx, scene_rx) = mpsc::channel(capacity);
    let (tile_tx, tile_rx) = mpsc::channel(capacity);
    let (result_tx, result_rx) = mpsc::channel(capacity);
    let (outcome_tx, mut outcome_rx) = mpsc::channel(capacity);

    let acks: Arc<Mutex<BTreeMap<String, AckStatus>>> = Arc::default();
    let mut tasks = Vec::new();
    let attempts = config.max_attempts;
    let scene_rx = SharedReceiver::new(scene_rx);
    for worker in chain.tile {
        let (rx, tx) = (scene_rx.clone(), tile_tx.clone());
        tasks.push(("tile", tokio::spawn(drive(worker, rx, tx, attempts))));
    }
    drop(tile_tx);
    tasks.push(("infer", tokio::spawn(drive(chain.infer, SharedReceiver::new(tile_rx), result_tx.clone(), attempts))));
    tasks.push(("merge", tokio::spawn(drive(chain.merge, SharedReceiver::new(result_rx), outcome_tx, attempts))));

    // Inputs that never became requests go to the merge stage as failures of a whole scene,
    // which it passes to the sink as they are.
    let early = dead_letters;
    let feeder_acks = Arc::clone(&acks);
    let feeder = tokio::spawn(async move {
        for record in early {
            let key = record.scene_id.clone().unwrap_or_else(|| "(unnamed input)".to_owned());
            let ack = scene_ack(&feeder_acks, key);
            if result_tx.send(Envelope::new(schemas::ResultMessage::Failed(record), Position::Derived, ack)).await.is_err() {
                return;
            }
        }
        drop(result_tx);
        for (index, scene) in scenes.into_iter().enumerate() {
            let ack = scene_ack(&feeder_acks, scene.scene_id.clone());
            if scene_tx.send(Envelope::new(scene, Position::Batch { index: index as u64 }, ack)).await.is_err() {
                return;
            }
        }
    });

    let mut summary = RunSummary::default();
    while let Some(envelope) = outcome_rx.recv().await {
        reporter.report(&envelope.payload).await;
        match &envelope.payload {
            SinkOutcome::Committed { scene_id, tiles, tiles_failed, tiles_skipped_nodata, detections, .. } => {
                summary.tiles += tiles;
                summary.tiles_failed += tiles_failed;
                summary.tiles_skipped_nodata += tiles_skipped_nodata;
                summary.detections += detections;
                if *tiles_failed > 0 {
                    summary.failures.push((scene_id.clone(), format!("{tiles_failed} tile(s) failed inference (see dead_letter)")));
                }
            }
            SinkOutcome::DeadLettered(record) => {
                let who = record.scene_id.clone().unwrap_or_else(|| "(unnamed input)".to_owned());
                summary.failures.push((who, record.message.clone()));
            }
        }
    }
    if let Err(error) = feeder.await {
        summary.internal_errors.push(format!("the scene feeder failed: {error}"));
    }
    for (name, task) in tasks {
        match task.await {
            Ok(Ok(errors)) => summary.internal_errors.extend(errors.iter().map(StageError::chain)),
            Ok(Err(error)) => summary.internal_errors.push(error.chain()),
            Err(join) => summary.internal_errors.push(format!("the {name} stage stopped: {join}")),
        }
    }
    // Every stage is done and every envelope dropped: each scene's ack has resolved.
    summary.acks = std::mem::take(&mut *acks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    summary.scenes_ok = summary.acks.values().filter(|s| **s == AckStatus::Delivered).count();
    summary.scenes_failed = summary.acks.len() - summary.scenes_ok;
    summary
}

fn scene_ack(acks: &Arc<Mutex<BTreeMap<String, AckStatus>>>, key: String) -> Ack {
    let acks = Arc::clone(acks);
    Ack::new(move |status| {
        acks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, status);
    })
}
