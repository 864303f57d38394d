//! The Kafka runtime: drives one stage between topics, with the same `operators` stages and
//! the same [`operators::runtime::drive`] loop as the embedded runtime.
//!
//! ```text
//! input topic ─► decode ─► stage (drive: retries, dead letters, flush) ─► output task
//!      ▲                                                                      │
//!      └──── offsets stored when every output of a message is durable ◄──────┘
//! ```
//!
//! Delivery is at-least-once and made exactly-once where it lands: each message read gets an
//! [`Ack`]; the output task reports it delivered once the broker acknowledged every message
//! derived from it (or the sink committed its rows), and only then is its offset *stored*
//! (`enable.auto.offset.store=false`), in order per partition ([`OffsetTracker`]); librdkafka
//! commits stored offsets in the background and on revocation. A crash replays everything not
//! yet durable; downstream stages count a tile once and the sink rewrites the same files, so a
//! replay adds no row.

use std::{
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::Context as _;
use futures::StreamExt as _;
use operators::{
    runtime::{drive, SharedReceiver},
    stage::{Ack, AckStatus, Envelope, Payload, Position, Stage},
};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::ClientConfig,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::KafkaError,
    producer::{FutureProducer, FutureRecord},
    statistics::Statistics,
    types::RDKafkaErrorCode,
    ClientContext, Message as _, Offset, TopicPartitionList,
};
use schemas::{DeadLetterRecord, DecodeLimits, ErrorKind, Message, SourcePosition};
use tokio::sync::{mpsc, watch};

use super::offsets::{OffsetTracker, TopicPartition};

/// Topic names. Messages are JSON with a `schema_version`; pixels never travel on Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Scene requests (`strata submit`), keyed by scene.
    pub scenes: String,
    /// Tile messages (tiles, scene-tiled markers, failures), keyed by scene.
    pub tiles: String,
    /// Result messages, keyed by scene, so that one merge worker sees a whole scene.
    pub results: String,
    /// Dead-letter records, after the sink wrote them to the `dead_letter` table.
    pub dead_letter: String,
    /// Model announcements (compacted), keyed by registry: infer workers following a
    /// registry switch versions when its serving pointer changes.
    pub models: String,
}

impl Topics {
    /// The default names with `prefix` in front (`""` for none).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            scenes: format!("{prefix}scenes"),
            tiles: format!("{prefix}tiles"),
            results: format!("{prefix}results"),
            dead_letter: format!("{prefix}dead-letter"),
            models: format!("{prefix}models"),
        }
    }

    fn all(&self) -> [&str; 5] {
        [&self.scenes, &self.tiles, &self.results, &self.dead_letter, &self.models]
    }
}

/// How to reach the broker and how much work to hold.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic names.
    pub topics: Topics,
    /// Consumer groups are `{group_prefix}{role}`.
    pub group_prefix: String,
    /// Partitions of topics this runtime creates (existing topics are left as they are).
    pub partitions: i32,
    /// Messages read and not yet durable, per role; reading pauses at this many.
    pub max_in_flight: usize,
    /// How long a shutdown waits for in-flight work before leaving it to be replayed.
    pub drain_timeout: Duration,
    /// Attempts per input for retryable stage failures, the first included (the embedded
    /// runtime's default: both runtimes give a stage the same budget).
    pub max_attempts: u32,
    /// Payloads larger than this are dead-lettered unparsed.
    pub max_message_bytes: usize,
    /// Static membership: consumers use `group.instance.id` `{instance_id}-{role}`.
    pub instance_id: Option<String>,
    /// librdkafka properties applied last, over Strata's own (security, tuning).
    pub options: Vec<(String, String)>,
}

impl KafkaSettings {
    /// Settings for `brokers` with the defaults of `strata serve`.
    pub fn new(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            topics: Topics::with_prefix(""),
            group_prefix: "strata-".to_owned(),
            partitions: 4,
            max_in_flight: 256,
            drain_timeout: Duration::from_secs(30),
            max_attempts: operators::runtime::EmbeddedConfig::default().max_attempts,
            max_message_bytes: 1 << 20,
            instance_id: None,
            options: Vec::new(),
        }
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("client.id", "strata");
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }

    /// Checks that a broker answers, so that a wrong address fails in seconds with a message
    /// that says so, instead of as a timeout of whatever is tried first.
    ///
    /// # Errors
    /// When no broker answers a metadata request within `timeout`.
    pub async fn check_reachable(&self, timeout: Duration) -> anyhow::Result<()> {
        if self.brokers.trim().is_empty() {
            anyhow::bail!("no Kafka broker given: pass --brokers HOST:PORT (or set STRATA_BROKERS)");
        }
        let mut config = self.client();
        let brokers = self.brokers.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.set("log_level", "3").create().context("creating a Kafka client")?;
            consumer.fetch_metadata(None, timeout).map(|_| ()).map_err(|error| {
                anyhow::anyhow!(
                    "cannot reach the Kafka broker at {brokers} within {} s ({error})\nhint: is it running, and is --brokers (STRATA_BROKERS) its host:port?",
                    timeout.as_secs()
                )
            })
        })
        .await
        .context("checking the broker")?
    }

    /// A producer that waits for every in-sync replica and never writes a message twice on
    /// its own retries, and that replaces itself after a fatal error ([`Producer`]).
    ///
    /// # Errors
    /// When librdkafka rejects the configuration.
    pub fn producer(&self) -> Result<Producer, KafkaError> {
        let config = self.producer_config();
        let first = config.create()?;
        Ok(Producer { config, current: Arc::new(Mutex::new((0, first))) })
    }

    fn producer_config(&self) -> ClientConfig {
        let mut config = self.client();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "60000")
            .set("message.max.bytes", (self.max_message_bytes + 4096).to_string());
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }

    fn consumer(
        &self,
        role: &'static str,
        group: &str,
        tracker: Arc<Mutex<OffsetTracker>>,
    ) -> Result<StreamConsumer<RoleContext>, KafkaError> {
        let mut config = self.client();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            // Offsets are stored by hand, once a message's outputs are durable.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // Also the rebalance timeout: how long the group waits for a member that died
            // before handing its partitions to the others (librdkafka's default is 5 min).
            // Reading never stops for that long: at capacity the partitions are paused and
            // polling goes on.
            .set("max.poll.interval.ms", "60000")
            // Statistics carry each partition's consumer lag, exported as a metric.
            .set("statistics.interval.ms", "5000");
        if let Some(instance) = &self.instance_id {
            config.set("group.instance.id", format!("{instance}-{role}"));
        }
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config.create_with_context(RoleContext { tracker, role })
    }

    /// Creates the topics that do not exist yet.
    ///
    /// # Errors
    /// When the broker cannot be reached or refuses to create a topic.
    pub async fn ensure_topics(&self) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.client().create().context("creating the Kafka admin client")?;
        let wanted: Vec<NewTopic<'_>> = self
            .topics
            .all()
            .iter()
            .map(|name| {
                let topic = NewTopic::new(name, self.partitions, TopicReplication::Fixed(1));
                // The models topic keeps the latest announcement per registry.
                if *name == self.topics.models {
                    topic.set("cleanup.policy", "compact")
                } else {
                    topic
                }
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let created = admin.create_topics(&wanted, &options).await.with_context(|| format!("creating topics on {}", self.brokers))?;
        for result in created {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => anyhow::bail!("creating topic `{topic}` on {}: {code}", self.brokers),
            }
        }
        Ok(())
    }
}

/// Revocations reach the tracker before the partitions go: completions of messages read
/// from a revoked partition must not store offsets the new owner will store itself.
struct RoleContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    role: &'static str,
}

impl ClientContext for RoleContext {
    fn stats(&self, statistics: Statistics) {
        let lag = &super::observe::metrics().lag;
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                // -1: not consuming this partition (unassigned, or the internal UA partition).
                if *partition >= 0 && p.consumer_lag >= 0 {
                    lag.with_label_values(&[self.role, topic.as_str(), &partition.to_string()]).set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for RoleContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                let mut tracker = self.tracker.lock().unwrap_or_else(PoisonError::into_inner);
                for element in partitions.elements() {
                    tracing::info!(topic = element.topic(), partition = element.partition(), "Partition revoked.");
                    tracker.revoke(&(element.topic().to_owned(), element.partition()));
                }
            }
            Rebalance::Assign(partitions) => {
                for element in partitions.elements() {
                    tracing::info!(topic = element.topic(), partition = element.partition(), "Partition assigned.");
                }
            }
            Rebalance::Error(error) => tracing::warn!(%error, "Rebalance failed."),
        }
    }
}

/// A message whose outputs are all done, as its ack reports it.
struct Done {
    partition: TopicPartition,
    offset: i64,
    status: AckStatus,
    /// When it was read, for the latency metric.
    read_at: std::time::Instant,
}

/// What one role did before it stopped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoleReport {
    /// Messages read.
    pub read: u64,
    /// Messages that could not be decoded (dead-lettered as `ingest`).
    pub undecodable: u64,
    /// Messages whose outputs were not all durable when the role stopped (replayed later).
    pub left_in_flight: usize,
    /// Messages whose outputs could not be made durable (the sink failed for good).
    pub lost: u64,
}

/// Reads `input_topic` in the consumer group `{group_prefix}{role}`, drives `stage` over the
/// decoded messages, and hands its outputs to `output` (which must report each envelope's ack
/// delivered once the output is durable, and drop it). Runs until `shutdown` turns true, then
/// stops reading, lets the stage drain for at most `drain_timeout`, commits what is durable and
/// leaves the group.
///
/// # Errors
/// When the consumer cannot be created or subscribed, or the stage or the output task fails
/// (bad input never fails it: that is dead-lettered).
pub async fn serve_stage<S, F, Fut>(
    role: &'static str,
    stage: S,
    input_topic: &str,
    settings: &KafkaSettings,
    mut shutdown: watch::Receiver<bool>,
    output: F,
) -> anyhow::Result<RoleReport>
where
    S: Stage,
    S::In: Message,
    F: FnOnce(mpsc::Receiver<Envelope<S::Out>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let group = format!("{}{role}", settings.group_prefix);
    let consumer = settings.consumer(role, &group, Arc::clone(&tracker)).context("creating the Kafka consumer")?;
    let metrics = super::observe::metrics();
    consumer.subscribe(&[input_topic]).with_context(|| format!("subscribing to `{input_topic}`"))?;
    tracing::info!(role, group = %group, topic = input_topic, brokers = %settings.brokers, "Serving.");

    let capacity = settings.max_in_flight.clamp(1, 1024);
    let (in_tx, in_rx) = mpsc::channel::<Envelope<S::In>>(capacity);
    let (out_tx, out_rx) = mpsc::channel::<Envelope<S::Out>>(capacity);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let stage_task = tokio::spawn(drive(stage, SharedReceiver::new(in_rx), out_tx.clone(), settings.max_attempts));
    let output_task = tokio::spawn(output(out_rx));
    let limits = DecodeLimits { max_payload_bytes: settings.max_message_bytes };

    let mut report = RoleReport::default();
    let store = |report: &mut RoleReport, done: Done, draining: bool| {
        let Done { partition: (topic, partition), offset, status, read_at } = done;
        let outcome = match status {
            AckStatus::Delivered => "delivered",
            AckStatus::Rejected => "rejected",
            AckStatus::Errored => "errored",
        };
        metrics.done.with_label_values(&[role, outcome]).inc();
        metrics.latency.with_label_values(&[role]).observe(read_at.elapsed().as_secs_f64());
        if status == AckStatus::Errored {
            // Not durable: the offset must not move past it. It is read again after a restart
            // (or by the partition's next owner). While draining that is expected of work the
            // stage still held (a scene waiting for tiles); while serving it is a failure.
            if draining {
                tracing::debug!(%topic, partition, offset, "Left for replay.");
            } else {
                report.lost += 1;
                tracing::error!(%topic, partition, offset, "A message's outputs could not be made durable; its offset stays until it is replayed.");
            }
            return;
        }
        let position = tracker.lock().unwrap_or_else(PoisonError::into_inner).finish(&(topic.clone(), partition), offset);
        if let Some(position) = position {
            let mut list = TopicPartitionList::new();
            if let Err(error) = list.add_partition_offset(&topic, partition, Offset::Offset(position)) {
                tracing::warn!(%error, "Cannot name the offset to store.");
                return;
            }
            if let Err(error) = consumer.store_offsets(&list) {
                // After a revocation librdkafka refuses offsets of partitions no longer ours.
                tracing::debug!(%topic, partition, position, %error, "Offset not stored.");
            }
        }
    };

    // At capacity the assigned partitions are paused rather than left unpolled: polling goes
    // on (a consumer that stops polling is dropped from its group) and fetches nothing.
    let mut paused = false;
    let mut lonely = tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(15), Duration::from_secs(15));
    lonely.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let in_flight = tracker.lock().unwrap_or_else(PoisonError::into_inner).total_in_flight();
        metrics.in_flight.with_label_values(&[role]).set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        let full = in_flight >= settings.max_in_flight;
        if full != paused {
            let switched =
                consumer.assignment().and_then(|assigned| if full { consumer.pause(&assigned) } else { consumer.resume(&assigned) });
            match switched {
                Ok(()) => {
                    paused = full;
                    tracing::debug!(role, in_flight, paused, "Reading paused or resumed.");
                }
                Err(error) => tracing::warn!(role, %error, "Cannot pause or resume reading."),
            }
        }
        tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            Some(done) = done_rx.recv() => store(&mut report, done, false),
            _ = lonely.tick() => {
                // Say why nothing happens, instead of silence.
                if consumer.assignment().is_ok_and(|assigned| assigned.count() == 0) {
                    tracing::warn!(role, group = %group, topic = input_topic,
                        "No partition assigned yet: the group is rebalancing (a member that died holds its partitions until the broker \
                         expires it, up to a minute), or other members hold every partition.");
                }
            }
            received = consumer.recv() => {
                let message = match received {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(%error, "Kafka consumer error; retrying.");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                report.read += 1;
                metrics.read.with_label_values(&[role]).inc();
                let read_at = std::time::Instant::now();
                let position = SourcePosition { topic: message.topic().to_owned(), partition: message.partition(), offset: message.offset() };
                let key: TopicPartition = (position.topic.clone(), position.partition);
                tracker.lock().unwrap_or_else(PoisonError::into_inner).begin(&key, position.offset);
                let done = done_tx.clone();
                let offset = position.offset;
                let ack = Ack::new(move |status| {
                    let _ = done.send(Done { partition: key, offset, status, read_at });
                });
                let payload = message.payload().unwrap_or_default();
                match schemas::decode::<S::In>(payload, &limits) {
                    Ok(input) => {
                        if in_tx.send(Envelope::new(input, Position::Log(position), ack)).await.is_err() {
                            break; // the stage stopped; its error is reported below
                        }
                    }
                    Err(error) => {
                        report.undecodable += 1;
                        tracing::warn!(topic = %position.topic, partition = position.partition, offset = position.offset, %error,
                            "Dead-lettering a message that cannot be decoded.");
                        let record = undecodable(role, payload, &error, position.clone());
                        // Straight to the output, in band, so the sink records it like any failure.
                        if out_tx.send(Envelope::new(S::Out::from(record), Position::Log(position), ack)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }

    // Shutdown: no more reading; the stage drains and flushes, outputs become durable, and
    // their offsets are stored, for at most the drain timeout.
    tracing::info!(role, "Draining.");
    drop(in_tx);
    drop(out_tx);
    let deadline = tokio::time::Instant::now() + settings.drain_timeout;
    loop {
        if tracker.lock().unwrap_or_else(PoisonError::into_inner).total_in_flight() == 0 {
            break;
        }
        if stage_task.is_finished() && output_task.is_finished() {
            // Whatever the stage still held (a scene waiting for tiles) has been dropped and
            // reported; it stays unstored and is replayed.
            break;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        match tokio::time::timeout_at(deadline.min(now + Duration::from_millis(200)), done_rx.recv()).await {
            Ok(Some(done)) => store(&mut report, done, true),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    while let Ok(done) = done_rx.try_recv() {
        store(&mut report, done, true);
    }
    report.left_in_flight = tracker.lock().unwrap_or_else(PoisonError::into_inner).total_in_flight();
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => tracing::warn!(%error, "Final commit failed; uncommitted work is replayed."),
    }
    consumer.unsubscribe();
    if report.left_in_flight > 0 {
        tracing::warn!(role, in_flight = report.left_in_flight, "Stopped with work in flight; it is replayed on the next start.");
        stage_task.abort();
        output_task.abort();
        return Ok(report);
    }
    match stage_task.await {
        Ok(Ok(errors)) => {
            for error in errors {
                tracing::error!(role, error = %error.chain(), "Stage error.");
            }
        }
        Ok(Err(error)) => anyhow::bail!("the {role} stage failed: {}", error.chain()),
        Err(join) => anyhow::bail!("the {role} stage stopped: {join}"),
    }
    output_task.await.map_err(|join| anyhow::anyhow!("the {role} output stopped: {join}"))??;
    Ok(report)
}

/// The dead-letter record of a message that is not a valid input.
fn undecodable(role: &str, payload: &[u8], error: &schemas::SchemaError, position: SourcePosition) -> DeadLetterRecord {
    let message = format!("{role} input at {}/{}@{}: {error}", position.topic, position.partition, position.offset);
    DeadLetterRecord::ingest(ErrorKind::Permanent, &message, payload, Some(position))
}

/// Produces each output to `topic`, keyed by scene, up to `concurrency` at a time, and
/// reports its ack delivered once the broker acknowledged it. A produce that fails (the broker
/// is down) is retried with backoff until it succeeds: the message's offset stays unstored
/// meanwhile, so a crash loses nothing either.
///
/// # Errors
/// Never for broker outages (they are waited out).
pub async fn produce_outputs<T: Message + Payload>(
    mut outputs: mpsc::Receiver<Envelope<T>>,
    producer: Producer,
    topic: String,
    concurrency: usize,
) -> anyhow::Result<()> {
    let stream = futures::stream::poll_fn(move |cx| outputs.poll_recv(cx));
    stream
        .for_each_concurrent(concurrency.max(1), |envelope| {
            let producer = producer.clone();
            let topic = topic.clone();
            async move {
                let bytes = schemas::encode(&envelope.payload);
                let key = envelope.payload.ids().partition_key();
                match produce_until_delivered(&producer, &topic, key.as_deref(), &bytes).await {
                    Ok(()) => envelope.ack.update(AckStatus::Delivered),
                    Err(error) => {
                        // Its input stays unstored (errored) and the role exits 1, never silently.
                        tracing::error!(%topic, %error, size = bytes.len(), "An output cannot be produced.");
                        envelope.ack.update(AckStatus::Errored);
                    }
                }
            }
        })
        .await;
    Ok(())
}

/// The runtime's Kafka producer: librdkafka's, replaced by a new instance after a fatal error.
///
/// An idempotent producer whose sequence numbers the broker refused (OUT_OF_ORDER_SEQUENCE_NUMBER,
/// seen from a broker with its log on S3 under load) raises a fatal error, after which every
/// send fails at once, for good; librdkafka's documentation leaves recovery to the
/// application: drop it and create another. Records that were not acknowledged are then sent
/// again by the new instance, under a new producer id: at worst a duplicate, which the stages
/// and the sink absorb (a scene's rows are keyed and replaced, never appended twice).
#[derive(Clone)]
pub struct Producer {
    config: ClientConfig,
    /// The instance in use and how many have been replaced before it.
    current: Arc<Mutex<(u64, FutureProducer)>>,
}

impl Producer {
    fn current(&self) -> (u64, FutureProducer) {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        (current.0, current.1.clone())
    }

    /// Replaces instance `generation` after its fatal error, unless another sender already did.
    /// Returns whether a newer instance is in place.
    fn replace(&self, generation: u64, fatal: &KafkaError) -> bool {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.0 != generation {
            return true;
        }
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(error = %fatal, replaced = generation + 1, "The producer failed for good; replaced it with a new one (unacknowledged records are sent again).");
                *current = (generation + 1, fresh);
                true
            }
            Err(error) => {
                tracing::error!(%error, "Cannot create a producer to replace one that failed; retrying.");
                false
            }
        }
    }
}

/// Sends one record, retrying with exponential backoff and jitter (backon) until the broker
/// acknowledges it; only errors no retry can fix (a record larger than the broker accepts, an
/// invalid record) end the retries. After a fatal producer error the producer is replaced
/// ([`Producer`]) and the record sent by the new one.
///
/// # Errors
/// Those permanent errors.
pub async fn produce_until_delivered(producer: &Producer, topic: &str, key: Option<&str>, bytes: &[u8]) -> Result<(), KafkaError> {
    let mut delays = backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times(),
    );
    loop {
        let mut record = FutureRecord::to(topic).payload(bytes);
        if let Some(key) = key {
            record = record.key(key);
        }
        let (generation, instance) = producer.current();
        match instance.send(record, Duration::from_secs(30)).await {
            Ok(_) => return Ok(()),
            Err((error, _)) if is_permanent(&error) => return Err(error),
            Err((error, _)) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) && producer.replace(generation, &error) => {}
            Err((error, _)) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(%topic, %error, ?delay, "Producing failed; retrying.");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64) -> SourcePosition {
        SourcePosition { topic: "scenes".to_owned(), partition: 2, offset }
    }

    #[test]
    fn an_undecodable_payload_keeps_whatever_ids_it_names_and_its_bytes() {
        let payload = br#"{"schema_version": 99, "request_id": "r1", "scene_id": "s1"}"#;
        let error = schemas::decode::<schemas::SceneRequest>(payload, &DecodeLimits::default()).unwrap_err();
        let record = undecodable("tile", payload, &error, at(0));
        assert_eq!((record.request_id.as_deref(), record.scene_id.as_deref()), (Some("r1"), Some("s1")));
        assert_eq!(record.original_payload.to_bytes().unwrap(), payload.to_vec());
        assert_eq!(record.stage, schemas::Stage::Ingest);
        assert!(record.message.starts_with("tile input at scenes/2@0: "), "{}", record.message);
        assert!(record.message.contains("version 99"), "{}", record.message);
    }
}
