//! The stage contract every runtime drives (DESIGN "Dataflow"; shaped after arroyo's
//! `ArrowOperator` and vector's acknowledgements, STYLE section 3).
//!
//! A [`Stage`] takes one [`Envelope`] at a time and writes what it derives through a
//! [`Collector`]; it requires only [`Stage::process`] and may hook start, flush and close. An
//! envelope carries the payload, where it came from ([`Position`]) and an [`Ack`]: a cheap
//! clone whose last drop reports the outcome. Every output inherits clones of its input's
//! acks, so the source of a scene (a batch entry, a Kafka offset) is released only when the
//! last row derived from it has been committed to the tables or dead-lettered.
//!
//! Stages know nothing of Kafka or the command line: the embedded runtime
//! ([`crate::runtime`]) moves envelopes over bounded channels, the Kafka runtime between
//! topics. A stage's error says which stage failed and whether retrying could help
//! ([`StageErrorKind`]); the runtime retries the retryable ones and dead-letters the rest
//! through the stage's own output type ([`Payload`]), so failures travel in band to the sink.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use chrono::Utc;
use schemas::{DeadLetterRecord, ErrorKind, OriginalPayload, SourcePosition, Stage as StageName, SCHEMA_VERSION};
use tokio::sync::mpsc;

/// How an input ended, as its [`Ack`] reports it (vector's `BatchStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AckStatus {
    /// Every output is durable.
    Delivered,
    /// Some output could not be made durable (the sink failed): the source must not be
    /// released; redelivery will redo it.
    Errored,
    /// The input or part of it was dead-lettered: durable as a failure record.
    Rejected,
}

/// No outcome reported yet; a source whose last clone drops in this state was lost on the
/// way (a stage stopped), and reports [`AckStatus::Errored`].
const PENDING: u8 = 0;

impl AckStatus {
    const fn code(self) -> u8 {
        match self {
            Self::Delivered => 1,
            Self::Rejected => 2,
            Self::Errored => 3,
        }
    }

    const fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Delivered,
            2 => Self::Rejected,
            _ => Self::Errored,
        }
    }
}

type AckCallback = Box<dyn FnOnce(AckStatus) + Send>;

struct AckInner {
    /// The worst status any holder reported (Errored > Rejected > Delivered), or [`PENDING`].
    status: AtomicU8,
    on_done: Mutex<Option<AckCallback>>,
}

impl Drop for AckInner {
    fn drop(&mut self) {
        let callback = self.on_done.get_mut().map(Option::take).unwrap_or_else(|poisoned| poisoned.into_inner().take());
        if let Some(callback) = callback {
            callback(AckStatus::from_code(self.status.load(Ordering::Acquire)));
        }
    }
}

/// An acknowledgement handle: clones share one outcome, reported once, when the last clone
/// of every source it covers is dropped. The final writer (the sink) reports delivered or
/// rejected; a source dropped without any report was lost on the way and reports errored. An ack may cover several sources (the merge stage's
/// scene output covers every tile result of the scene), and then reports to each.
#[derive(Clone, Default)]
pub struct Ack {
    sources: Vec<Arc<AckInner>>,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ack").field("sources", &self.sources.len()).finish()
    }
}

impl Ack {
    /// An ack that reports to `on_done` once every clone is gone.
    pub fn new(on_done: impl FnOnce(AckStatus) + Send + 'static) -> Self {
        let inner = AckInner { status: AtomicU8::new(PENDING), on_done: Mutex::new(Some(Box::new(on_done))) };
        Self { sources: vec![Arc::new(inner)] }
    }

    /// An ack that reports to nobody (tests, replays).
    pub fn none() -> Self {
        Self::default()
    }

    /// A pair: the ack, and a receiver of its outcome.
    pub fn channel() -> (Self, tokio::sync::oneshot::Receiver<AckStatus>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Self::new(move |status| {
                let _ = tx.send(status);
            }),
            rx,
        )
    }

    /// Records an outcome; the worst one reported wins when the last clone drops.
    pub fn update(&self, status: AckStatus) {
        for source in &self.sources {
            source.status.fetch_max(status.code(), Ordering::AcqRel);
        }
    }

    /// Makes this ack cover `other`'s sources too.
    pub fn merge(&mut self, other: Ack) {
        for source in other.sources {
            if !self.sources.iter().any(|s| Arc::ptr_eq(s, &source)) {
                self.sources.push(source);
            }
        }
    }

    /// Opaque keys of the sources it covers (to tell which inputs an output derives from).
    pub fn source_keys(&self) -> Vec<usize> {
        self.sources.iter().map(|s| Arc::as_ptr(s) as usize).collect()
    }

    /// How many sources it covers.
    pub fn source_count(&self) -> usize {
        self.sources.len()
    }
}

/// Where an input came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// The `index`-th input of a batch run.
    Batch {
        /// Position in the batch.
        index: u64,
    },
    /// A record of a partitioned log (a Kafka topic).
    Log(SourcePosition),
    /// Derived by a stage from one or more inputs (no position of its own).
    Derived,
}

impl Position {
    /// The log position, for dead-letter records.
    pub fn log(&self) -> Option<SourcePosition> {
        match self {
            Self::Log(position) => Some(position.clone()),
            Self::Batch { .. } | Self::Derived => None,
        }
    }
}

/// A payload with its position and acknowledgement.
#[derive(Debug, Clone)]
pub struct Envelope<T> {
    /// The message.
    pub payload: T,
    /// Where it came from.
    pub position: Position,
    /// Released when every output derived from it is durable.
    pub ack: Ack,
}

impl<T> Envelope<T> {
    /// An envelope.
    pub fn new(payload: T, position: Position, ack: Ack) -> Self {
        Self { payload, position, ack }
    }

    /// An output derived from this envelope: same position, a clone of the ack.
    pub fn derive<U>(&self, payload: U) -> Envelope<U> {
        Envelope { payload, position: self.position.clone(), ack: self.ack.clone() }
    }
}

/// Whether retrying could help, and whose fault a failure is (arroyo's error domains).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StageErrorKind {
    /// A service hiccup (object store, broker): retry with backoff.
    Retryable,
    /// The input is bad (corrupt raster, malformed message): dead-letter it; retrying gives
    /// the same answer.
    Permanent,
    /// Strata or its model failed (a libtorch error, out of memory, a bug): dead-letter the
    /// input as internal, keep serving.
    Internal,
}

impl StageErrorKind {
    /// How a dead letter names a failure of this kind: a retryable one reaches the dead
    /// letters only once its retries are exhausted.
    pub const fn dead_letter_kind(self) -> ErrorKind {
        match self {
            Self::Retryable => ErrorKind::RetriesExhausted,
            Self::Permanent => ErrorKind::Permanent,
            Self::Internal => ErrorKind::Internal,
        }
    }
}

/// A stage failure: which stage, what kind, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{} stage: {source}", stage.as_str())]
pub struct StageError {
    /// The stage that failed.
    pub stage: StageName,
    /// Retryable, permanent or internal.
    pub kind: StageErrorKind,
    /// What went wrong.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl StageError {
    /// A failure of `stage`.
    pub fn new(stage: StageName, kind: StageErrorKind, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self { stage, kind, source: source.into() }
    }

    /// A failure classified by the operator error's own class ([`crate::ErrorClass`]), the
    /// one place an operator error becomes a stage error: an internal error stays internal.
    pub fn from_operator(stage: StageName, error: crate::OperatorError) -> Self {
        let kind = match error.class() {
            crate::ErrorClass::Retryable => StageErrorKind::Retryable,
            crate::ErrorClass::Permanent => StageErrorKind::Permanent,
            crate::ErrorClass::Internal => StageErrorKind::Internal,
        };
        Self::new(stage, kind, error)
    }

    /// The message with every cause, as dead-letter records keep it.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self.source.as_ref());
        while let Some(err) = cause {
            let next = err.to_string();
            if !text.contains(&next) {
                text.push_str(": ");
                text.push_str(&next);
            }
            cause = err.source();
        }
        text
    }

    /// The dead-letter record for `payload` failing with this error after `attempts` tries.
    pub fn dead_letter<P: Payload>(&self, payload: &P, position: &Position, attempts: u32) -> DeadLetterRecord {
        let ids = payload.ids();
        let error_kind = self.kind.dead_letter_kind();
        let mut message = self.chain();
        if self.kind == StageErrorKind::Retryable {
            message.push_str(&format!(" (gave up after {attempts} attempts)"));
        }
        DeadLetterRecord {
            schema_version: SCHEMA_VERSION,
            stage: self.stage,
            error_kind,
            message,
            request_id: ids.request_id,
            scene_id: ids.scene_id,
            tile_id: ids.tile_id,
            source: position.log(),
            original_payload: OriginalPayload::from_bytes(&payload.encode()),
            failed_at: Utc::now(),
        }
    }
}

/// The ids a payload names, for dead-letter records and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayloadIds {
    /// Request id.
    pub request_id: Option<String>,
    /// Scene id.
    pub scene_id: Option<String>,
    /// Tile id.
    pub tile_id: Option<String>,
}

impl PayloadIds {
    /// The key that keeps a scene's messages together (`{request}/{scene}`): on Kafka, on one
    /// partition and in order, so one merge worker sees every result of a scene. `None` when
    /// the payload names no scene.
    pub fn partition_key(&self) -> Option<String> {
        match (&self.request_id, &self.scene_id) {
            (Some(request), Some(scene)) => Some(format!("{request}/{scene}")),
            _ => None,
        }
    }
}

/// What a stage input must offer so the runtime can dead-letter it: its ids and its bytes.
pub trait Payload: Clone + Send + 'static {
    /// The ids it names.
    fn ids(&self) -> PayloadIds;
    /// The payload as it would travel (JSON), kept in the dead-letter record for replay.
    fn encode(&self) -> Vec<u8>;
}

/// Receives a stage's outputs. Sending waits while the next stage is full (backpressure: the
/// `block` policy of vector's `WhenFull`).
pub struct Collector<T> {
    target: Target<T>,
}

enum Target<T> {
    Channel(mpsc::Sender<Envelope<T>>),
    Buffer(Vec<Envelope<T>>),
}

/// The next stage is gone (it failed or the run is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the next stage stopped accepting input")]
pub struct Closed;

impl<T: Send> Collector<T> {
    /// Outputs go into a bounded channel.
    pub fn channel(sender: mpsc::Sender<Envelope<T>>) -> Self {
        Self { target: Target::Channel(sender) }
    }

    /// Outputs are kept in memory (tests, and runtimes that send after each input).
    pub fn buffer() -> Self {
        Self { target: Target::Buffer(Vec::new()) }
    }

    /// Takes one output.
    ///
    /// # Errors
    /// [`Closed`] when the next stage is gone.
    pub async fn collect(&mut self, output: Envelope<T>) -> Result<(), Closed> {
        match &mut self.target {
            Target::Channel(sender) => sender.send(output).await.map_err(|_| Closed),
            Target::Buffer(buffer) => {
                buffer.push(output);
                Ok(())
            }
        }
    }

    /// Takes the buffered outputs (empty for channel collectors).
    pub fn drain(&mut self) -> Vec<Envelope<T>> {
        match &mut self.target {
            Target::Channel(_) => Vec::new(),
            Target::Buffer(buffer) => std::mem::take(buffer),
        }
    }
}

/// A step of the pipeline: `envelope in → outputs through the collector | classified error`.
///
/// Only [`Stage::process`] is required. The runtime calls [`Stage::on_start`] once, then
/// `process` for every input, [`Stage::flush`] whenever no input arrived for
/// [`Stage::max_wait`] and at the end of the input, and [`Stage::on_close`] last. An error from
/// `process` concerns that one input; the runtime retries it ([`StageErrorKind::Retryable`])
/// or turns it into a dead-letter output, and the stage goes on with the next input.
pub trait Stage: Send + 'static {
    /// What the stage consumes.
    type In: Payload;
    /// What the stage produces; dead-letter records travel in it too.
    type Out: From<DeadLetterRecord> + Send + 'static;

    /// The stage's name in errors, logs and dead-letter records.
    fn name(&self) -> StageName;

    /// Processes one input.
    ///
    /// # Errors
    /// A [`StageError`] for this input; nothing has been lost (outputs already collected for
    /// it stand, and a retry must be idempotent downstream).
    fn process(&mut self, input: Envelope<Self::In>, out: &mut Collector<Self::Out>)
        -> impl Future<Output = Result<(), StageError>> + Send;

    /// Called once before the first input.
    ///
    /// # Errors
    /// When the stage cannot run at all (the runtime stops).
    fn on_start(&mut self) -> impl Future<Output = Result<(), StageError>> + Send {
        async { Ok(()) }
    }

    /// Emits whatever is buffered (a partial micro-batch, staged files). Calling it twice in a
    /// row must be harmless.
    ///
    /// # Errors
    /// As [`Stage::process`]; buffered inputs must not be lost.
    fn flush(&mut self, out: &mut Collector<Self::Out>) -> impl Future<Output = Result<(), StageError>> + Send {
        let _ = out;
        async { Ok(()) }
    }

    /// Called once after the last input and the last flush.
    ///
    /// # Errors
    /// When closing fails (the runtime reports it).
    fn on_close(&mut self) -> impl Future<Output = Result<(), StageError>> + Send {
        async { Ok(()) }
    }

    /// How long buffered input may wait for more before the runtime calls [`Stage::flush`];
    /// `None`: only at the end.
    fn max_wait(&self) -> Option<Duration> {
        None
    }

    /// Whether buffered input has waited as long as it may even while inputs keep coming
    /// (the runtime then calls [`Stage::flush`] after the input at hand).
    fn flush_due(&self) -> bool {
        false
    }
}

/// A well-kept retry policy for retryable stage errors: exponential backoff with jitter.
pub fn retry_policy(max_attempts: u32) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .with_max_times(max_attempts.saturating_sub(1) as usize)
}

/// Checks any stage must pass, over its own good and bad inputs (the conformance suite of
/// STYLE section 7, after object_store's `integration.rs`).
pub mod conformance {
    use super::*;

    /// Outcome of [`check_stage`].
    #[derive(Debug)]
    pub struct Report<O> {
        /// Outputs for the good inputs (flush included).
        pub outputs: Vec<Envelope<O>>,
        /// Errors for the bad inputs.
        pub errors: Vec<StageError>,
        /// Ack outcomes, one per input, in input order, after every output was dropped.
        pub acks: Vec<Option<AckStatus>>,
    }

    /// Runs `good` and `bad` inputs through `stage` and checks the contract:
    /// - every good input is processed without error;
    /// - every bad input gives an error tagged with the stage's name, and a dead-letter record
    ///   built from it names the stage and keeps the payload;
    /// - flushing twice emits nothing the second time;
    /// - every input's ack resolves exactly once, after its outputs are dropped, and not
    ///   before.
    ///
    /// # Panics
    /// When the stage breaks the contract (this is a test helper).
    #[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    pub async fn check_stage<S: Stage>(stage: &mut S, good: Vec<S::In>, bad: Vec<S::In>) -> Report<S::Out> {
        stage.on_start().await.expect("on_start");
        let mut out = Collector::buffer();
        let mut receivers = Vec::new();
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for (index, payload) in good.into_iter().enumerate() {
            let (ack, rx) = Ack::channel();
            receivers.push(rx);
            keys.push(ack.source_keys());
            let envelope = Envelope::new(payload, Position::Batch { index: index as u64 }, ack);
            stage.process(envelope, &mut out).await.unwrap_or_else(|e| panic!("good input {index} failed: {e}"));
        }
        for (index, payload) in bad.into_iter().enumerate() {
            let (ack, rx) = Ack::channel();
            receivers.push(rx);
            keys.push(ack.source_keys());
            let envelope = Envelope::new(payload.clone(), Position::Batch { index: index as u64 }, ack);
            let err = stage.process(envelope, &mut out).await.err().unwrap_or_else(|| panic!("bad input {index} was accepted"));
            assert_eq!(err.stage, stage.name(), "the error names the stage");
            let record = err.dead_letter(&payload, &Position::Batch { index: 0 }, 1);
            assert_eq!(record.stage, stage.name());
            assert_eq!(record.original_payload.to_bytes().unwrap(), payload.encode(), "the payload is kept");
            errors.push(err);
        }
        stage.flush(&mut out).await.expect("flush");
        let outputs = out.drain();
        stage.flush(&mut out).await.expect("second flush");
        assert!(out.drain().is_empty(), "a second flush emitted more output");
        stage.on_close().await.expect("on_close");
        // An input whose ack an output still covers must not have resolved yet.
        for (i, (rx, keys)) in receivers.iter_mut().zip(&keys).enumerate() {
            let held = outputs.iter().any(|o| o.ack.source_keys().iter().any(|k| keys.contains(k)));
            if held {
                assert!(rx.try_recv().is_err(), "ack {i} resolved while an output derived from it is held");
            }
        }
        let (outputs, held_acks): (Vec<_>, Vec<_>) =
            outputs.into_iter().map(|e| (Envelope::new(e.payload, e.position, Ack::none()), e.ack)).unzip();
        drop(held_acks);
        let mut acks = Vec::new();
        for rx in receivers {
            acks.push(rx.await.ok());
        }
        assert!(acks.iter().all(Option::is_some), "every ack resolves exactly once: {acks:?}");
        Report { outputs, errors, acks }
    }
}

#[cfg(test)]
mod tests {
    use schemas::{DeadLetterRecord, ErrorKind, SceneRequest, SceneSource, Stage as StageName};

    use super::{Position, StageError};
    use crate::OperatorError;

    fn dead_letter(error: OperatorError) -> DeadLetterRecord {
        let request = SceneRequest::new("r1", "s1", SceneSource::Uri { uri: "file:///s1.tif".to_owned() });
        StageError::from_operator(StageName::Infer, error).dead_letter(&request, &Position::Derived, 1)
    }

    #[test]
    fn a_dead_letter_blames_the_input_only_when_the_input_is_at_fault() {
        let bug = dead_letter(OperatorError::Internal { reason: "rows do not fit the table".to_owned() });
        assert_eq!(bug.error_kind, ErrorKind::Internal, "{}", bug.message);
        let model = dead_letter(OperatorError::Model {
            action: "answering".to_owned(),
            source: model::ModelError::Request { reason: "out of memory".to_owned() },
        });
        assert_eq!(model.error_kind, ErrorKind::Internal, "{}", model.message);
        let input = dead_letter(OperatorError::BadScene { scene: "s1".to_owned(), reason: "no CRS".to_owned() });
        assert_eq!(input.error_kind, ErrorKind::Permanent, "{}", input.message);
    }
}
