//! Fault injection with librdkafka's in-process mock cluster: the broker down at start,
//! produce and offset-commit request errors, and the group coordinator moving to another
//! broker mid-stream. The role still reads every message, produces every output and commits
//! every offset. And the chain builder's stages, driven by both runtimes, write the same rows.
//! (End-to-end behaviour against a real broker is in `tests/serve.rs` and `tests/faults.rs`.)

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

use std::{collections::BTreeSet, time::Duration};

use chrono::Utc;
use operators::stages::infer::TilesOnly;
use rdkafka::{
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    mocking::{MockCluster, MockCoordinator},
    producer::{FutureProducer, FutureRecord},
    types::{RDKafkaApiKey, RDKafkaRespErr},
    ClientConfig, Message as _, Offset, TopicPartitionList,
};
use schemas::{DeadLetterRecord, ErrorKind, OriginalPayload, ResultMessage, Stage, TileMessage, SCHEMA_VERSION};
use tokio::sync::watch;

use super::kafka::{produce_outputs, produce_until_delivered, serve_stage, KafkaSettings};
use super::{spawn_roles, Follow};

const MESSAGES: usize = 30;

/// Input `i`: a tile failure the pass-through stage forwards unchanged.
fn input(i: usize) -> TileMessage {
    TileMessage::Failed(DeadLetterRecord {
        schema_version: SCHEMA_VERSION,
        stage: Stage::Tile,
        error_kind: ErrorKind::Permanent,
        message: format!("record {i}"),
        request_id: Some("mock".into()),
        scene_id: Some(format!("scene-{i}")),
        tile_id: None,
        source: None,
        original_payload: OriginalPayload::from_bytes(b"{}"),
        failed_at: Utc::now(),
    })
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// The distinct inputs that reached `results` (at least once each is the contract).
async fn outputs(bootstrap: &str, wanted: usize) -> BTreeSet<String> {
    let consumer: StreamConsumer = client(bootstrap).set("group.id", "checker").set("auto.offset.reset", "earliest").create().unwrap();
    consumer.subscribe(&["results"]).unwrap();
    let mut seen = BTreeSet::new();
    // Generous: after the coordinator moves, a rebalance may wait out the group's timeouts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while seen.len() < wanted {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => {
                let decoded: ResultMessage = schemas::decode(message.payload().unwrap(), &schemas::DecodeLimits::default()).unwrap();
                if let ResultMessage::Failed(record) = decoded {
                    seen.insert(record.message);
                }
            }
            Ok(Err(_)) => {}
            Err(_) => break,
        }
    }
    seen
}

/// Offsets the group has committed on `topic`, summed over its partitions.
fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    // Not subscribed: reading a group's offsets does not join it.
    let consumer: BaseConsumer = client(bootstrap).set("group.id", group).create().unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(5)).unwrap();
    committed.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_offset_is_committed_through_a_down_broker_request_errors_and_a_coordinator_move() {
    let mock = MockCluster::new(3).unwrap();
    let bootstrap = mock.bootstrap_servers();
    for topic in ["tiles", "results"] {
        mock.create_topic(topic, 2, 1).unwrap();
    }
    let producer: FutureProducer = client(&bootstrap).create().unwrap();
    for i in 0..MESSAGES {
        let payload = schemas::encode(&input(i));
        let key = format!("scene-{i}");
        producer.send(FutureRecord::to("tiles").key(&key).payload(&payload), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }

    // A broker that does not answer is named within the timeout.
    for broker in 1..=3 {
        mock.broker_down(broker).unwrap();
    }
    let mut settings = KafkaSettings::new(&bootstrap);
    // One produce request in flight per connection: the mock checks no idempotent sequence
    // numbers (only a transactional producer's), so with requests pipelined it appends a batch
    // sent after one it failed, and librdkafka, seeing the later batch acknowledged, reports the
    // failed one delivered too ("implicitly acked by subsequent batch success"); a real broker
    // refuses the later batch as out of order. Unbounded, an injected REQUEST_TIMED_OUT thus
    // lost an output while its input offset was committed.
    settings.options.push(("max.in.flight.requests.per.connection".to_owned(), "1".to_owned()));
    let error = settings.check_reachable(Duration::from_secs(2)).await.unwrap_err();
    assert!(format!("{error:#}").contains(&bootstrap), "{error:#}");

    // The role starts while the brokers are still down, and waits them out.
    let (stop_tx, stop_rx) = watch::channel(false);
    let output_producer = settings.producer().unwrap();
    let role = tokio::spawn(async move {
        serve_stage("infer", TilesOnly, "tiles", &settings, stop_rx, move |rx| {
            produce_outputs(rx, output_producer, "results".to_owned(), 8)
        })
        .await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Errors a broker returns while it is busy or moving leadership: retried, not fatal.
    // REQUEST_TIMED_OUT leaves the batch's fate unknown to the producer (the mock did not
    // write it): retried with the same sequence number.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        ],
    );
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    for broker in 1..=3 {
        mock.broker_up(broker).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The group's coordinator moves to another broker mid-stream.
    mock.coordinator(MockCoordinator::Group("strata-infer".into()), 3).unwrap();

    let seen = outputs(&bootstrap, MESSAGES).await;
    assert_eq!(
        seen.len(),
        MESSAGES,
        "every input reached the output topic: {seen:?} (committed: {})",
        committed(&bootstrap, "strata-infer", "tiles", 2)
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while committed(&bootstrap, "strata-infer", "tiles", 2) < MESSAGES as i64 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(committed(&bootstrap, "strata-infer", "tiles", 2), MESSAGES as i64, "every offset committed");
    stop_tx.send(true).unwrap();
    let report = role.await.unwrap().unwrap();
    assert!(report.read >= MESSAGES as u64, "{report:?}");
    assert_eq!((report.left_in_flight, report.lost, report.undecodable), (0, 0, 0), "{report:?}");
}

/// The `tiles` rows of `tables` that do not depend on when or where they were written.
async fn tile_rows(tables: &tables::Tables) -> String {
    let sql =
        "SELECT scene_id, tile_id, col_off, row_off, width, height, output_size_px, valid_fraction, geometry FROM tiles ORDER BY tile_id";
    let frame = tables::query::run(tables, sql).await.unwrap();
    tables::query::render(frame, tables::query::OutputFormat::Json, &operators::geometry::Gdal).unwrap()
}

/// One scene, one chain builder, two runtimes: in-process (`strata batch`) and as Kafka roles
/// (`strata serve --role all`, on the mock cluster). Both commit the scene, with the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_builder_gives_both_runtimes_the_same_stages_and_rows() {
    use operators::chain::{self, ChainSettings, ModelSource, Roles};
    use schemas::{SceneRequest, SceneSource};

    let work = tempfile::tempdir().unwrap();
    let scene = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/scenes/rmnp-rgb.tif");
    let mut request = SceneRequest::new("both", "rmnp", SceneSource::Uri { uri: format!("file://{}", scene.display()) });
    request.tiling.tile_size_px = 256;
    let settings = |name: &str| ChainSettings {
        tiles: storage::resolve(work.path().join(name).join("tiles").to_str().unwrap()).unwrap(),
        tables: tables::Tables::new(storage::resolve(work.path().join(name).join("tables").to_str().unwrap()).unwrap()),
        tiler: operators::tile::TilerConfig::default(),
        tile_workers: 1,
        progress: std::sync::Arc::new(|_| {}),
        merge: operators::merge::MergeConfig::default(),
        infer: operators::stages::infer::InferConfig::default(),
        model: ModelSource::None,
        retrieval: retrieval::RetrievalOptions::default(),
        device: model::device::DevicePreference::Cpu,
        precision: model::device::Precision::Auto,
        max_attempts: 4,
    };

    let embedded = settings("embedded");
    let chain = chain::build(&embedded, Roles::ALL).await.unwrap().into_embedded().unwrap();
    let config = operators::runtime::EmbeddedConfig::default();
    let summary = operators::runtime::run(vec![request.clone()], Vec::new(), chain, &config, ()).await;
    assert!(summary.all_ok() && summary.tiles > 1, "{summary:?}");

    let mock = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let kafka = KafkaSettings::new(&bootstrap);
    for topic in [&kafka.topics.scenes, &kafka.topics.tiles, &kafka.topics.results, &kafka.topics.dead_letter] {
        mock.create_topic(topic, 2, 1).unwrap();
    }
    let producer = kafka.producer().unwrap();
    let payload = schemas::encode(&request);
    produce_until_delivered(&producer, &kafka.topics.scenes, Some("both/rmnp"), &payload).await.unwrap();
    let served = settings("kafka");
    let built = chain::build(&served, Roles::ALL).await.unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let follow =
        Follow { device: model::device::DevicePreference::Cpu, precision: model::device::Precision::Auto, poll: Duration::from_secs(30) };
    let mut roles = spawn_roles(built, &kafka, &producer, &stop_rx, follow);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let committed = "SELECT count(*) AS n FROM scenes WHERE request_id = 'both' AND scene_id = 'rmnp'";
    while tables::query::run(&served.tables, committed).await.unwrap().column("n").unwrap().u32().unwrap().get(0) != Some(1) {
        assert!(tokio::time::Instant::now() < deadline, "the scene was not committed through the Kafka roles");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop_tx.send(true).unwrap();
    let mut ended = Vec::new();
    while let Some(joined) = roles.join_next().await {
        let (role, report) = joined.unwrap();
        let report = report.unwrap();
        assert_eq!((report.lost, report.undecodable), (0, 0), "{role}: {report:?}");
        ended.push(role);
    }
    ended.sort_unstable();
    assert_eq!(ended, ["infer", "merge", "tile"], "one role per stage the builder returned");
    assert_eq!(tile_rows(&served.tables).await, tile_rows(&embedded.tables).await, "the same tiles, tile for tile");
}

/// Sends inputs `range` to `tiles`, keyed by scene.
async fn produce_inputs(producer: &FutureProducer, range: std::ops::Range<usize>) {
    for i in range {
        let payload = schemas::encode(&input(i));
        let key = format!("scene-{i}");
        producer.send(FutureRecord::to("tiles").key(&key).payload(&payload), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
}

/// A member of the `strata-infer` group, and the sender that stops it.
fn member(bootstrap: &str) -> (watch::Sender<bool>, tokio::task::JoinHandle<anyhow::Result<super::kafka::RoleReport>>) {
    let settings = KafkaSettings::new(bootstrap);
    let (stop_tx, stop_rx) = watch::channel(false);
    let output_producer = settings.producer().unwrap();
    let task = tokio::spawn(async move {
        serve_stage("infer", TilesOnly, "tiles", &settings, stop_rx, move |rx| {
            produce_outputs(rx, output_producer, "results".to_owned(), 8)
        })
        .await
    });
    (stop_tx, task)
}

/// Waits until the group has committed `wanted` offsets on `tiles` (of 2 partitions).
async fn committed_reaches(bootstrap: &str, wanted: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let now = committed(bootstrap, "strata-infer", "tiles", 2);
        if now >= wanted || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The group's membership changes under a stream, as a deployment scales: a second member
/// joins, the first leaves (SIGTERM's path: drain, commit, leave the group), a third joins.
/// Partitions move to whoever is left, and every input is read, produced and committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_a_group_mid_stream_lose_nothing() {
    let mock = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    for topic in ["tiles", "results"] {
        mock.create_topic(topic, 2, 1).unwrap();
    }
    let producer: FutureProducer = client(&bootstrap).create().unwrap();

    let (first_stop, first) = member(&bootstrap);
    produce_inputs(&producer, 0..10).await;
    assert_eq!(committed_reaches(&bootstrap, 10).await, 10, "the first member alone");

    let (second_stop, second) = member(&bootstrap);
    produce_inputs(&producer, 10..20).await;
    assert_eq!(committed_reaches(&bootstrap, 20).await, 20, "with a second member joining");

    first_stop.send(true).unwrap();
    let report = first.await.unwrap().unwrap();
    assert_eq!((report.left_in_flight, report.lost), (0, 0), "the first member drained before leaving: {report:?}");
    produce_inputs(&producer, 20..25).await;
    let (third_stop, third) = member(&bootstrap);
    produce_inputs(&producer, 25..MESSAGES).await;
    assert_eq!(committed_reaches(&bootstrap, MESSAGES as i64).await, MESSAGES as i64, "after the first left and a third joined");

    assert_eq!(outputs(&bootstrap, MESSAGES).await.len(), MESSAGES, "every input reached the output topic");
    let mut reports = Vec::new();
    for (stop, task) in [(second_stop, second), (third_stop, third)] {
        stop.send(true).unwrap();
        let report = task.await.unwrap().unwrap();
        assert_eq!((report.left_in_flight, report.lost, report.undecodable), (0, 0, 0), "{report:?}");
        reports.push(report);
    }
    // Alone after the first left, the second member held both partitions.
    assert!(reports[0].read >= 5, "the second member took over the first's partitions: {reports:?}");
}

/// An idempotent producer whose sequence numbers the broker refuses fails for good (a fatal
/// error, after which librdkafka refuses every send): the runtime's producer replaces itself
/// and delivers the record, where it used to retry the dead instance forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_fails_for_good_is_replaced_and_the_record_delivered() {
    let mock = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    mock.create_topic("results", 1, 1).unwrap();
    let producer = KafkaSettings::new(&bootstrap).producer().unwrap();
    produce_until_delivered(&producer, "results", Some("a"), &schemas::encode(&input(0))).await.unwrap();
    mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER]);
    let sent = tokio::time::timeout(
        Duration::from_secs(60),
        produce_until_delivered(&producer, "results", Some("a"), &schemas::encode(&input(1))),
    )
    .await;
    assert!(matches!(sent, Ok(Ok(()))), "delivered after the producer was replaced: {sent:?}");
    assert_eq!(outputs(&bootstrap, 2).await.len(), 2, "both records are on the topic");
}
