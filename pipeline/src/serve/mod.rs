//! `strata serve` and `strata submit`: the chain on Kafka. This module only wires: the stages
//! come from `operators`, the Kafka plumbing from [`kafka`].

pub mod dead_letters;
pub mod kafka;
#[cfg(test)]
mod mock_tests;
pub mod models;
pub mod observe;
pub mod offsets;
pub mod status;

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use operators::{
    chain::{self, ChainSettings, MergeAndSink, ModelSource, Roles},
    merge::MergeConfig,
    runtime::OutcomeReporter,
    stage::{Envelope, Payload, Stage},
    stages::{infer::InferConfig, sink::SinkOutcome},
    tile::{TileEvent, TilerConfig},
};
use schemas::{DeadLetterRecord, Message};
use tables::Tables;
use tokio::sync::{mpsc, watch};

use self::kafka::{produce_outputs, produce_until_delivered, serve_stage, KafkaSettings, Producer, RoleReport};
use self::models::Follow;
use crate::cli::{Role, ServeArgs, SubmitArgs};

/// Outputs produced to the broker at the same time, per role.
const PRODUCE_CONCURRENCY: usize = 64;

/// Runs the roles `args.role` names until SIGTERM or Ctrl-C.
///
/// # Errors
/// When the broker cannot be reached at start, the model or index cannot be loaded, or a
/// stage fails as a whole.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // The endpoints first: liveness answers while the model loads, readiness once serving.
    let health = Arc::new(observe::Health::default());
    if let Some(addr) = observe::serve_http(&args.listen, Arc::clone(&health)).await? {
        eprintln!("strata serve: metrics on http://{addr}/metrics, probes on /healthz and /readyz");
    }
    let mut settings = args.kafka.settings();
    settings.max_in_flight = args.max_in_flight.max(1);
    settings.drain_timeout = Duration::from_secs(args.drain_timeout);
    settings.check_reachable(Duration::from_secs(10)).await?;
    settings.ensure_topics().await?;
    let producer = settings.producer().context("creating the Kafka producer")?;
    let tables = Tables::new(storage::resolve(&args.tables).context("resolving --tables")?);
    let tiles_root = storage::resolve(&args.tiles).context("resolving --tiles")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let on_signal = Arc::clone(&stop_tx);
    let draining = Arc::clone(&health);
    tokio::spawn(async move {
        wait_for_signal().await;
        draining.set_stopping();
        tracing::info!("Shutting down: draining in-flight work.");
        eprintln!("strata serve: shutting down (draining for at most the drain timeout)");
        let _ = on_signal.send(true);
    });

    let (roles_run, chain_settings) = chain_settings(&args, &tables, &tiles_root, settings.max_attempts)?;
    // The model first: a wrong path fails before anything is read.
    match (&chain_settings.model, roles_run.infer) {
        (ModelSource::Artifact(location), true) => eprintln!("strata serve: loading the model {location}"),
        (ModelSource::Registry(url), true) => eprintln!("strata serve: loading the version {url} serves"),
        (ModelSource::None, true) => eprintln!("strata serve: no --model: infer workers pass tiles through unanswered"),
        (_, false) => {}
    }
    let built = chain::build(&chain_settings, roles_run).await?;
    let follow = Follow { device: args.device, precision: args.precision, poll: Duration::from_secs(args.model_poll) };
    let mut roles = spawn_roles(built, &settings, &producer, &stop_rx, follow);
    if let (Some(minutes), true) = (args.compact_every, roles_run.merge) {
        tokio::spawn(compact_periodically(tables.clone(), Duration::from_secs(minutes * 60), stop_rx.clone()));
    }
    eprintln!(
        "strata serve: {} on {} (tables {}, tiles {}); Ctrl-C or SIGTERM to stop",
        match args.role {
            Role::Tile => "tile",
            Role::Infer => "infer",
            Role::Merge => "merge",
            Role::All => "tile, infer and merge",
        },
        settings.brokers,
        tables.root().url(),
        tiles_root.url()
    );

    health.set_ready();
    let mut failed = false;
    while let Some(joined) = roles.join_next().await {
        health.set_stopping();
        // One role ending (it failed, or a shutdown began) ends the others too, drained: a
        // process that serves only part of its roles would look alive and do less.
        let _ = stop_tx.send(true);
        match joined {
            Ok((role, Ok(report))) => report_role(role, &report, &mut failed),
            Ok((role, Err(error))) => {
                eprintln!("strata serve: the {role} role failed: {error:#}");
                failed = true;
            }
            Err(join) => {
                eprintln!("strata serve: a role stopped: {join}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `--compact-every`: compacts and vacuums the tables every `every` until the process stops.
/// A failed round is logged and the next one tries again (compaction never loses rows).
async fn compact_periodically(tables: Tables, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let retention = Some(tables::compact::DEFAULT_RETENTION);
        let report = |c: &tables::compact::Compacted| {
            tracing::info!(table = c.table, before = c.files_before, after = c.files_after, vacuumed = c.vacuumed, "Compacted a table.");
        };
        if let Err(error) = tables.compact(tables::compact::DEFAULT_TARGET_BYTES, retention, &operators::geometry::Gdal, report).await {
            tracing::warn!(%error, "Compacting the tables failed; the next round tries again.");
        }
    }
}

/// The roles `args.role` names and the chain's settings from the flags.
fn chain_settings(
    args: &ServeArgs,
    tables: &Tables,
    tiles: &storage::Location,
    max_attempts: u32,
) -> anyhow::Result<(Roles, ChainSettings)> {
    let roles = Roles {
        tile: matches!(args.role, Role::Tile | Role::All),
        infer: matches!(args.role, Role::Infer | Role::All),
        merge: matches!(args.role, Role::Merge | Role::All),
    };
    let settings = ChainSettings {
        tiles: tiles.clone(),
        tables: tables.clone(),
        tiler: TilerConfig::with_limits(args.max_scene_megapixels, args.threads),
        tile_workers: 1,
        progress: Arc::new(|_: TileEvent| {}),
        merge: MergeConfig { iou_threshold: args.iou_threshold },
        infer: InferConfig {
            max_batch_tiles: args.batch_size.max(1),
            max_new_tokens: args.max_new_tokens,
            decode_slots: args.decode_slots,
            ..InferConfig::default()
        },
        model: ModelSource::from_settings(args.model.as_deref(), args.model_registry.as_deref())?,
        retrieval: crate::retriever::options(&args.retrieval),
        device: args.device,
        precision: args.precision,
        max_attempts,
    };
    Ok((roles, settings))
}

/// A role's task: its name and how it ended.
type RoleTask = (&'static str, anyhow::Result<RoleReport>);

/// Spawns a Kafka role for every stage the chain builder returned: tile (scenes → tiles),
/// infer (tiles → results, following the registry the model came from), merge with its sink
/// (results → tables). Each runs until `stop`.
fn spawn_roles(
    built: chain::BuiltChain,
    settings: &KafkaSettings,
    producer: &Producer,
    stop: &watch::Receiver<bool>,
    follow: Follow,
) -> tokio::task::JoinSet<RoleTask> {
    let mut roles = tokio::task::JoinSet::new();
    let link = || Link { settings: settings.clone(), producer: producer.clone(), stop: stop.clone() };
    if let Some(mut stage) = built.infer {
        if let Some(version) = stage.version() {
            observe::metrics().model.with_label_values(&[version]).set(1);
        }
        if let Some((registry, version)) = built.serving {
            let (updates, received) = mpsc::channel(1);
            stage = stage.with_updates(received);
            eprintln!("strata serve: serving model `{version}`; following {}", registry.url());
            tokio::spawn(models::follow(registry, version, follow, settings.clone(), updates, stop.clone()));
        }
        roles.spawn(link().serve("infer", stage, settings.topics.tiles.clone(), settings.topics.results.clone()));
    }
    for stage in built.tile {
        roles.spawn(link().serve("tile", stage, settings.topics.scenes.clone(), settings.topics.tiles.clone()));
    }
    if let Some(stage) = built.merge {
        roles.spawn(serve_merge(stage, settings.clone(), producer.clone(), stop.clone()));
    }
    roles
}

/// The merge role: an ordinary role whose stage merges each scene's results and commits them
/// to the tables; its outcomes go to a [`TopicReporter`] instead of a topic.
async fn serve_merge(stage: MergeAndSink, mut settings: KafkaSettings, producer: Producer, stop: watch::Receiver<bool>) -> RoleTask {
    // The merge stage holds every result of a scene until the scene is complete: a cap on
    // in-flight messages could stop reading before a big scene's last tile and never
    // resume. Its memory is bounded by the open scenes instead.
    settings.max_in_flight = usize::MAX;
    let reporter = TopicReporter { producer, topic: settings.topics.dead_letter.clone() };
    let input = settings.topics.results.clone();
    let report = serve_stage("merge", stage, &input, &settings, stop, move |rx| report_outcomes(rx, reporter)).await;
    ("merge", report)
}

/// What a role that produces to a topic needs.
struct Link {
    settings: KafkaSettings,
    producer: Producer,
    stop: watch::Receiver<bool>,
}

impl Link {
    /// Serves `stage` from `input` to `output` until stopped.
    async fn serve<S>(self, role: &'static str, stage: S, input: String, output: String) -> RoleTask
    where
        S: Stage,
        S::In: Message,
        S::Out: Message + Payload,
    {
        let Self { settings, producer, stop } = self;
        let report =
            serve_stage(role, stage, &input, &settings, stop, move |rx| produce_outputs(rx, producer, output, PRODUCE_CONCURRENCY)).await;
        (role, report)
    }
}

fn report_role(role: &str, report: &RoleReport, failed: &mut bool) {
    eprintln!(
        "strata serve: {role}: {} message(s) read, {} undecodable (dead-lettered), {} left in flight for replay",
        report.read, report.undecodable, report.left_in_flight
    );
    if report.lost > 0 {
        eprintln!("strata serve: {role}: {} message(s) could not be made durable; they are replayed on the next start", report.lost);
        *failed = true;
    }
}

/// The Kafka runtime's outcome reporter: the row and dead-letter metrics, and a copy of each
/// dead letter on the dead-letter topic (the records are in the `dead_letter` table already).
struct TopicReporter {
    producer: Producer,
    topic: String,
}

impl OutcomeReporter for TopicReporter {
    async fn report(&mut self, outcome: &SinkOutcome) {
        let records: &[DeadLetterRecord] = match outcome {
            SinkOutcome::Committed { request_id, scene_id, tiles, tiles_failed, detections, dead_letters, .. } => {
                tracing::info!(%request_id, %scene_id, tiles, tiles_failed, detections, "Scene committed.");
                let rows = &observe::metrics().rows;
                rows.with_label_values(&["scenes"]).inc();
                rows.with_label_values(&["tiles"]).inc_by(*tiles);
                rows.with_label_values(&["detections"]).inc_by(*detections);
                dead_letters
            }
            SinkOutcome::DeadLettered(record) => std::slice::from_ref(record),
        };
        for record in records {
            observe::metrics().dead_letters.with_label_values(&[record.stage.as_str()]).inc();
            let key = operators::stage::PayloadIds {
                request_id: record.request_id.clone(),
                scene_id: record.scene_id.clone(),
                tile_id: record.tile_id.clone(),
            }
            .partition_key();
            if let Err(error) = produce_until_delivered(&self.producer, &self.topic, key.as_deref(), &schemas::encode(record)).await {
                tracing::error!(%error, "A dead letter is in the table but cannot go to the dead-letter topic.");
            }
        }
    }
}

/// The merge role's output: each committed outcome is reported, and only then is the input's
/// ack released (the offset may then be stored).
async fn report_outcomes(mut outcomes: mpsc::Receiver<Envelope<SinkOutcome>>, mut reporter: impl OutcomeReporter) -> anyhow::Result<()> {
    while let Some(envelope) = outcomes.recv().await {
        reporter.report(&envelope.payload).await;
        drop(envelope);
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "Cannot listen for SIGTERM; Ctrl-C still stops.");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `strata submit`: scene requests onto the `scenes` topic.
///
/// # Errors
/// When the broker cannot be reached or the options are invalid.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let settings = args.kafka.settings();
    let tiling = args.scene.tiling();
    tiling.validate("submit options").context("checking the tiling options")?;
    let tasks = args.task.tasks()?;
    if tasks.is_empty() {
        eprintln!("strata submit: no tasks given (--caption, --classify, --vqa, --detect, --tasks): the scenes will only be tiled");
    }
    let (found, missing) = operators::inputs::discover(&args.scenes).await;
    let request_id = match &args.request_id {
        Some(id) => id.clone(),
        None => operators::inputs::default_request_id(&found, &tiling, &tasks).replacen("batch-", "submit-", 1),
    };
    let (requests, failures) = operators::inputs::requests(found, missing, &request_id, &tiling, &tasks).await;
    for request in &requests {
        schemas::Message::validate(request).with_context(|| format!("checking the request for `{}`", request.scene_id))?;
    }
    settings.check_reachable(Duration::from_secs(10)).await?;
    settings.ensure_topics().await?;
    let producer = settings.producer().context("creating the Kafka producer")?;
    let topic = settings.topics.scenes.clone();
    let sends = requests.iter().map(|request| {
        let key = format!("{}/{}", request.request_id, request.scene_id);
        let bytes = schemas::encode(request);
        let (producer, topic) = (&producer, &topic);
        async move { tokio::time::timeout(Duration::from_secs(60), produce_until_delivered(producer, topic, Some(&key), &bytes)).await }
    });
    let sent = futures::future::join_all(sends).await;
    for (request, outcome) in requests.iter().zip(&sent) {
        if let Ok(Err(error)) = outcome {
            println!("not sent: {}: {error}", request.scene_id);
        }
    }
    let delivered = sent.iter().filter(|r| matches!(r, Ok(Ok(())))).count();
    println!("request {request_id}: {delivered} scene(s) sent to `{topic}` on {}", settings.brokers);
    for failure in &failures {
        println!("not sent: {}: {}", failure.input, failure.error);
    }
    if delivered < requests.len() {
        println!("{} scene(s) could not be sent within 60 s (is the broker up?)", requests.len() - delivered);
    }
    Ok(if failures.is_empty() && delivered == requests.len() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
