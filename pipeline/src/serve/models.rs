//! Hot model swap for infer workers that follow a model registry (`--model-registry`).
//!
//! The registry's `serving.json` is the source of truth. A worker reads it again whenever a
//! message arrives on the compacted `models` topic (`strata model promote` / `rollback`
//! announce there) and every `--model-poll` seconds in case an announcement was missed or
//! never sent. A new serving version is fetched, checked (every file against its manifest,
//! the manifest against the published lineage) and loaded in the background while the old
//! one keeps serving; the inference stage switches between batches. A version that does not
//! verify or load is refused, logged and counted, and the old one goes on serving.

use std::time::Duration;

use anyhow::Context as _;
use operators::{chain::load_version, stages::infer::LoadedModel};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    Message as _,
};
use storage::registry::Registry;
use tokio::sync::{mpsc, watch};

use super::kafka::KafkaSettings;

/// How an infer worker following a registry loads the versions it promotes.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    /// Where each version is loaded.
    pub device: model::device::DevicePreference,
    /// The type its weights are loaded in.
    pub precision: model::device::Precision,
    /// How often the registry's serving version is read without an announcement.
    pub poll: Duration,
}

/// Follows the registry's serving pointer until `stop`, sending each newly verified and
/// loaded version on `updates`. `current` is the version loaded at start.
pub async fn follow(
    registry: Registry,
    mut current: String,
    Follow { device, precision, poll }: Follow,
    settings: KafkaSettings,
    updates: mpsc::Sender<LoadedModel>,
    mut stop: watch::Receiver<bool>,
) {
    let announcements = match announcements(&settings) {
        Ok(consumer) => Some(consumer),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "Cannot read the models topic; following the registry by polling only.");
            None
        }
    };
    let mut ticks = tokio::time::interval(poll.max(Duration::from_secs(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Versions refused already: said once, not at every poll.
    let mut refused: Option<String> = None;
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
            _ = ticks.tick() => {}
            received = async {
                match &announcements {
                    Some(consumer) => consumer.recv().await.map(|m| m.payload().map(<[u8]>::to_vec)),
                    None => std::future::pending().await,
                }
            } => {
                if let Err(error) = received {
                    tracing::debug!(%error, "models topic");
                    continue;
                }
                tracing::info!(registry = %registry.url(), "A model announcement arrived; reading the registry.");
            }
        }
        let serving = match registry.serving().await {
            Ok(Some(serving)) => serving,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(%error, "Cannot read the registry's serving version; trying again later.");
                continue;
            }
        };
        if serving.version == current || refused.as_deref() == Some(serving.version.as_str()) {
            continue;
        }
        tracing::info!(from = %current, to = %serving.version, "The registry serves a new version; loading it in the background.");
        match load_version(&registry, &serving.version, device, precision).await {
            Ok(model) => {
                if updates.send(model).await.is_err() {
                    return; // the stage stopped
                }
                let metric = &super::observe::metrics().model;
                metric.reset();
                metric.with_label_values(&[&serving.version]).set(1);
                eprintln!("strata serve: model `{}` verified and loaded; it serves from the next batch", serving.version);
                current = serving.version;
                refused = None;
            }
            Err(error) => {
                // Reported once, through tracing (shown at the default level): an operator's log
                // collector sees it with its fields, a terminal sees the same line.
                super::observe::metrics().model_refused.inc();
                tracing::error!(version = %serving.version, current = %current, error = %format!("{error:#}"),
                    "The new serving version is refused; the current one keeps serving.");
                refused = Some(serving.version);
            }
        }
    }
}

/// A consumer of the `models` topic reading only new announcements: a group of its own (no
/// offsets committed), starting at the end, since the registry is read at start anyway.
fn announcements(settings: &KafkaSettings) -> anyhow::Result<StreamConsumer> {
    let mut config = rdkafka::ClientConfig::new();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", format!("{}models-{}-{nanos}", settings.group_prefix, std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest");
    for (key, value) in &settings.options {
        config.set(key, value);
    }
    let consumer: StreamConsumer = config.create().context("creating the models consumer")?;
    consumer.subscribe(&[&settings.topics.models]).with_context(|| format!("subscribing to `{}`", settings.topics.models))?;
    Ok(consumer)
}

/// Announces the registry's serving version on the `models` topic (best effort: workers
/// also poll the registry).
///
/// # Errors
/// When the broker cannot be reached or the message is not acknowledged.
pub async fn announce(settings: &KafkaSettings, registry: &Registry) -> anyhow::Result<()> {
    let serving = registry.serving().await?.context("no version serves: nothing to announce")?;
    let lineage = registry.lineage(&serving.version).await?.context("the serving version has no lineage")?;
    let message = schemas::ModelServing {
        schema_version: schemas::SCHEMA_VERSION,
        registry_uri: registry.url(),
        model_version: serving.version,
        manifest_sha256: lineage.manifest_sha256,
        changed_at: serving.changed_at,
    };
    settings.check_reachable(Duration::from_secs(10)).await?;
    settings.ensure_topics().await?;
    let producer = settings.producer().context("creating the Kafka producer")?;
    let key = registry.url();
    super::kafka::produce_until_delivered(&producer, &settings.topics.models, Some(&key), &schemas::encode(&message)).await?;
    Ok(())
}
