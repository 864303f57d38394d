//! `strata dead-letters list|replay`: what the `dead-letter` topic holds, and sending the
//! original payloads back to the topics they were read from once the cause is fixed.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Message as _, Offset, TopicPartitionList,
};
use schemas::{DeadLetterRecord, DecodeLimits};

use super::kafka::{produce_until_delivered, KafkaSettings};
use crate::cli::{DeadLettersArgs, DeadLettersCommand};

/// Every record of the dead-letter topic, from the beginning to the end it has now (no
/// consumer group: listing moves no offset), each failure once. The topic is written
/// at-least-once (a rebalance or a restart can send a failure's record again; the
/// `dead_letter` table holds it once), so copies — same stage, source position, ids and
/// error — are dropped. Records that are not dead-letter records are reported and skipped.
///
/// # Errors
/// When the broker cannot be reached or the topic does not exist.
pub fn read_all(settings: &KafkaSettings, timeout: Duration) -> anyhow::Result<Vec<DeadLetterRecord>> {
    let topic = &settings.topics.dead_letter;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", "strata-dead-letters-reader")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the Kafka consumer")?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout).with_context(|| format!("reading the metadata of `{topic}`"))?;
    let partitions: Vec<i32> =
        metadata.topics().iter().filter(|t| t.name() == topic).flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    if partitions.is_empty() {
        anyhow::bail!("topic `{topic}` does not exist on {}", settings.brokers);
    }
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0_i64;
    let mut ends = std::collections::HashMap::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout).with_context(|| format!("reading the end of `{topic}`"))?;
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
            ends.insert(partition, high);
            remaining += high - low;
        }
    }
    let mut records = Vec::new();
    let mut seen = std::collections::HashSet::new();
    if remaining == 0 {
        return Ok(records);
    }
    consumer.assign(&assignment).context("assigning the dead-letter partitions")?;
    let limits = DecodeLimits { max_payload_bytes: usize::MAX };
    let deadline = std::time::Instant::now() + timeout;
    while !ends.is_empty() && std::time::Instant::now() < deadline {
        let Some(polled) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = polled.context("reading the dead-letter topic")?;
        let partition = message.partition();
        match schemas::decode::<DeadLetterRecord>(message.payload().unwrap_or_default(), &limits) {
            Ok(record) => {
                let key = (
                    record.stage,
                    record.source.as_ref().map(|s| (s.topic.clone(), s.partition, s.offset)),
                    record.request_id.clone(),
                    record.scene_id.clone(),
                    record.tile_id.clone(),
                    record.message.clone(),
                );
                if seen.insert(key) {
                    records.push(record);
                }
            }
            Err(error) => eprintln!("skipping {topic}/{partition}@{}: {error}", message.offset()),
        }
        if ends.get(&partition).is_some_and(|end| message.offset() + 1 >= *end) {
            ends.remove(&partition);
        }
    }
    if !ends.is_empty() {
        eprintln!("warning: stopped after {} s before reaching the end of every partition", timeout.as_secs());
    }
    Ok(records)
}

/// Runs `strata dead-letters`.
///
/// # Errors
/// When the broker cannot be reached.
pub async fn run(command: DeadLettersCommand) -> anyhow::Result<ExitCode> {
    let (replay, args): (bool, DeadLettersArgs) = match command {
        DeadLettersCommand::List(args) => (false, args),
        DeadLettersCommand::Replay(args) => (true, args),
    };
    let settings = args.kafka.settings();
    let timeout = Duration::from_secs(args.timeout);
    let reader = settings.clone();
    let records = tokio::task::spawn_blocking(move || read_all(&reader, timeout)).await.context("reading dead letters")??;
    let selected: Vec<&DeadLetterRecord> = records
        .iter()
        .filter(|r| args.stage.as_deref().is_none_or(|stage| r.stage.as_str() == stage))
        .filter(|r| args.request_id.as_deref().is_none_or(|id| r.request_id.as_deref() == Some(id)))
        .collect();
    if !replay {
        for record in &selected {
            let at = record.source.as_ref().map_or_else(|| "-".to_owned(), |s| format!("{}/{}@{}", s.topic, s.partition, s.offset));
            println!(
                "{}\t{}\t{}\t{}/{}/{}\t{at}\t{}",
                record.failed_at.format("%Y-%m-%dT%H:%M:%SZ"),
                record.stage.as_str(),
                record.error_kind.as_str(),
                record.request_id.as_deref().unwrap_or("-"),
                record.scene_id.as_deref().unwrap_or("-"),
                record.tile_id.as_deref().unwrap_or("-"),
                record.message
            );
        }
        eprintln!("{} dead letter(s) of {} in `{}`", selected.len(), records.len(), settings.topics.dead_letter);
        return Ok(ExitCode::SUCCESS);
    }

    let producer = settings.producer().context("creating the Kafka producer")?;
    let (mut sent, mut skipped) = (0, 0);
    for record in selected {
        // Only inputs read from a topic can go back to it; the payload is sent as it
        // was received, with the scene key it had.
        let (Some(source), Ok(bytes)) = (&record.source, record.original_payload.to_bytes()) else {
            skipped += 1;
            continue;
        };
        let key = match (&record.request_id, &record.scene_id) {
            (Some(request), Some(scene)) => Some(format!("{request}/{scene}")),
            _ => None,
        };
        match produce_until_delivered(&producer, &source.topic, key.as_deref(), &bytes).await {
            Ok(()) => sent += 1,
            Err(error) => {
                eprintln!("not replayed: {}: {error}", record.message);
                skipped += 1;
            }
        }
    }
    println!("replayed {sent} dead letter(s) to the topics they came from; {skipped} had no source topic or could not be sent");
    Ok(ExitCode::SUCCESS)
}
