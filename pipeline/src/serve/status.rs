//! `strata status`: how far behind each role's consumer group is, per topic (the lag counts
//! work read and not yet done as well as work not yet read), how many dead letters there are,
//! and which model version a registry serves. Read-only: it joins no group and moves no offset.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Offset, TopicPartitionList,
};

use super::kafka::KafkaSettings;
use crate::cli::StatusArgs;

/// One consumer group's position on one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    /// Consumer group.
    pub group: String,
    /// Topic it reads.
    pub topic: String,
    /// Messages the group has committed past, over all partitions.
    pub committed: i64,
    /// Messages in the topic (end offsets summed).
    pub end: i64,
    /// Messages not yet done: end minus committed, per partition, summed.
    pub lag: i64,
}

/// The lag of `group` on `topic`.
///
/// # Errors
/// When the broker cannot be reached or the topic does not exist.
pub fn group_lag(settings: &KafkaSettings, group: &str, topic: &str, timeout: Duration) -> anyhow::Result<GroupLag> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the Kafka client")?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout).with_context(|| format!("reading the metadata of `{topic}`"))?;
    let mut partitions = TopicPartitionList::new();
    for meta in metadata.topics().iter().filter(|t| t.name() == topic) {
        for partition in meta.partitions() {
            partitions.add_partition(topic, partition.id());
        }
    }
    if partitions.count() == 0 {
        anyhow::bail!("topic `{topic}` does not exist on {}", settings.brokers);
    }
    let committed = consumer.committed_offsets(partitions.clone(), timeout).with_context(|| format!("reading the offsets of `{group}`"))?;
    let mut lag = GroupLag { group: group.to_owned(), topic: topic.to_owned(), committed: 0, end: 0, lag: 0 };
    for element in partitions.elements() {
        let (low, high) =
            consumer.fetch_watermarks(topic, element.partition(), timeout).with_context(|| format!("reading the end of `{topic}`"))?;
        // A group that never committed on a partition starts at its beginning.
        let position = match committed.find_partition(topic, element.partition()).map(|e| e.offset()) {
            Some(Offset::Offset(offset)) => offset,
            _ => low,
        };
        lag.committed += position - low;
        lag.end += high - low;
        lag.lag += (high - position).max(0);
    }
    Ok(lag)
}

/// Runs `strata status`.
///
/// # Errors
/// When the broker cannot be reached.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let settings = args.kafka.settings();
    settings.check_reachable(Duration::from_secs(10)).await?;
    let timeout = Duration::from_secs(10);
    let rows = tokio::task::spawn_blocking(move || {
        let roles = [("tile", &settings.topics.scenes), ("infer", &settings.topics.tiles), ("merge", &settings.topics.results)];
        let mut rows = Vec::new();
        for (role, topic) in roles {
            let group = format!("{}{role}", settings.group_prefix);
            rows.push(group_lag(&settings, &group, topic, timeout));
        }
        let dead = group_lag(&settings, &format!("{}status", settings.group_prefix), &settings.topics.dead_letter, timeout);
        (rows, dead)
    })
    .await
    .context("reading the consumer groups")?;
    let (rows, dead) = rows;
    println!("{:<24} {:<24} {:>10} {:>10} {:>8}", "group", "topic", "done", "messages", "lag");
    for row in rows {
        match row {
            Ok(row) => println!("{:<24} {:<24} {:>10} {:>10} {:>8}", row.group, row.topic, row.committed, row.end, row.lag),
            Err(error) => println!("{error:#}"),
        }
    }
    match dead {
        Ok(dead) => println!("dead-letter records: {} (copies included; `strata dead-letters list` shows each failure once)", dead.end),
        Err(error) => println!("dead letters: {error:#}"),
    }
    if let Some(url) = &args.model_registry {
        let registry = storage::registry::Registry::new(storage::resolve(url).context("resolving --model-registry")?);
        match registry.serving().await {
            Ok(Some(serving)) => println!(
                "registry serves model {} (since {}; {}); workers switch after verifying it",
                serving.version,
                serving.changed_at.format("%Y-%m-%d %H:%M:%S UTC"),
                registry.url()
            ),
            Ok(None) => println!("registry serves no model yet: nothing promoted in {}", registry.url()),
            Err(error) => println!("registry: {error}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
