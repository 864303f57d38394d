//! `strata serve` and `strata submit` as operators run them, against a real Kafka-protocol
//! broker (nisshi) started on 127.0.0.1 by the test: scenes in through `submit`, one tile
//! worker, two infer workers sharing the `tiles` partitions in one consumer group, one merge
//! worker writing the tables; a poison message on the `scenes` topic; graceful shutdown.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

mod common;

use std::time::{Duration, Instant};

use common::{count, data, http_get, logs, query_json, random_model, strata, text, Worker};

use schemas::{SceneRequest, SceneSource, TaskSpec};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::ClientConfig,
    producer::{FutureProducer, FutureRecord},
};
use strata_e2e::NisshiBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_scenes_reach_every_table_once_through_the_broker_with_two_infer_workers() {
    let broker = NisshiBroker::start().await.unwrap();
    let brokers = broker.bootstrap_servers();
    let work = tempfile::tempdir().unwrap();
    let model = random_model(work.path(), "tiny-serve");
    let tables = work.path().join("tables");
    let tiles = work.path().join("tiles");
    let (tables_arg, tiles_arg, model_arg) = (tables.to_str().unwrap(), tiles.to_str().unwrap(), model.to_str().unwrap());
    // The oversized poison below must reach Strata's own limit (1 MiB), so the `scenes` topic
    // takes larger records than Kafka's default `max.message.bytes` (which the broker enforces).
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let scenes_topic = NewTopic::new("scenes", 4, TopicReplication::Fixed(1)).set("max.message.bytes", "4000000");
    for created in admin.create_topics([&scenes_topic], &AdminOptions::new()).await.unwrap() {
        created.unwrap();
    }

    // Scenes first, so the workers find a backlog (and the topics exist).
    let scenes = [data("scenes/rmnp-rgb.tif"), data("scenes/L7_ETMs.tif")];
    let mut submit = vec![
        "submit",
        "--brokers",
        &brokers,
        "--request-id",
        "serve-e2e",
        "--tile-size",
        "256",
        "--overlap",
        "32",
        "--output-size",
        "64",
        "--caption",
        "--classify",
        "forest,water,urban",
        "--vqa",
        "Is there a road?",
        "--detect",
        "building",
    ];
    submit.extend(scenes.iter().map(|s| s.to_str().unwrap()));
    let out = strata(&submit);
    assert!(out.status.success(), "submit: {}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("2 scene(s) sent"), "{}", text(&out.stdout));

    // Poison messages: each must become one dead letter, and the partition must keep flowing.
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("message.max.bytes", "4000000").create().unwrap();
    let request = |scene_id: &str, uri: &str| {
        let mut request = SceneRequest::new("serve-e2e", scene_id, SceneSource::Uri { uri: uri.to_owned() });
        request.tasks = vec![TaskSpec::Caption { prompt: None }];
        // Serialised directly: `schemas::encode` would refuse the invalid id.
        serde_json::to_vec(&request).unwrap()
    };
    let corrupt = work.path().join("corrupt.tif");
    std::fs::write(&corrupt, b"II*\0 this is not really a TIFF").unwrap();
    let mut oversized = br#"{"schema_version": 1, "padding": ""#.to_vec();
    oversized.extend(std::iter::repeat_n(b'x', 1_200_000));
    oversized.extend(br#""}"#);
    let poisons: Vec<(&str, Vec<u8>)> = vec![
        ("not-json", b"{not json".to_vec()),
        ("future", serde_json::json!({"schema_version": 99, "request_id": "serve-e2e", "scene_id": "future"}).to_string().into_bytes()),
        ("oversized", oversized),
        ("path-id", request("../../etc/passwd", scenes[0].to_str().unwrap())),
        ("missing", request("missing", "/nonexistent/missing.tif")),
        ("corrupt", request("corrupt", corrupt.to_str().unwrap())),
    ];
    for (key, payload) in &poisons {
        producer.send(FutureRecord::to("scenes").key(*key).payload(payload), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }

    let common = |role: &'static str| {
        vec![
            "--role",
            role,
            "--brokers",
            &brokers,
            "--tables",
            tables_arg,
            "--tiles",
            tiles_arg,
            "--drain-timeout",
            "20",
            "--listen",
            "127.0.0.1:0",
        ]
    };
    // The merge worker reads its settings from a file, as a deployment would.
    let config = work.path().join("merge.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"merge\"\nbrokers = {brokers:?}\ntables = {tables_arg:?}\ntiles = {tiles_arg:?}\ndrain_timeout = 20\nlisten = \"127.0.0.1:0\"\n\
             log_format = \"json\"\n\n[kafka_options]\n\"client.id\" = \"strata-merge-e2e\"\n"
        ),
    )
    .unwrap();
    let mut infer_args = common("infer");
    infer_args.extend(["--model", model_arg, "--device", "cpu", "--max-new-tokens", "4", "--batch-size", "4"]);
    let mut workers = vec![
        Worker::start("tile", work.path(), &common("tile")),
        Worker::start("infer-1", work.path(), &infer_args),
        Worker::start("infer-2", work.path(), &infer_args),
        Worker::start("merge", work.path(), &["--config", config.to_str().unwrap()]),
    ];

    let deadline = Instant::now() + Duration::from_secs(300);
    let done = loop {
        let scenes_done = count(&tables, "SELECT count(*) AS n FROM scenes");
        let poison = count(&tables, "SELECT count(*) AS n FROM dead_letter");
        if scenes_done >= 2 && poison >= 6 {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        for worker in &mut workers {
            if let Ok(Some(status)) = worker.child.try_wait() {
                panic!("worker {} exited early ({status}):\n{}", worker.name, worker.log());
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(done, "the scenes did not reach the tables in time:\n{}", logs(&workers));

    // Both infer workers took part: the tiles topic's partitions were shared.
    let tiles_n = count(&tables, "SELECT count(*) AS n FROM tiles");
    assert!(tiles_n >= 4, "{tiles_n}");
    for table in ["captions", "classifications", "vqa"] {
        let joined = count(
            &tables,
            &format!(
                "SELECT count(*) AS n FROM {table} r JOIN tiles t ON r.request_id = t.request_id AND r.scene_id = t.scene_id AND r.tile_id = t.tile_id"
            ),
        );
        let rows = count(&tables, &format!("SELECT count(*) AS n FROM {table}"));
        assert_eq!((rows, joined), (tiles_n, tiles_n), "{table}: exactly one row per tile");
    }
    let versions = query_json(&tables, "SELECT DISTINCT model_version FROM captions");
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0]["model_version"], "tiny-serve");
    let poison = query_json(&tables, "SELECT stage, error_kind, scene_id, message FROM dead_letter ORDER BY message");
    assert_eq!(poison.len(), 6, "one record per poison message, nothing else failed: {poison:?}");
    let said = |needle: &str, stage: &str| {
        let found = poison.iter().filter(|r| r["message"].as_str().unwrap().contains(needle)).collect::<Vec<_>>();
        assert_eq!(found.len(), 1, "`{needle}` once: {poison:?}");
        assert_eq!(found[0]["stage"], stage, "{needle}: {poison:?}");
        assert_eq!(found[0]["error_kind"], "permanent", "{needle}: {poison:?}");
    };
    said("payload is not a JSON object", "ingest");
    said("version 99 is not supported", "ingest");
    said("larger than the limit", "ingest");
    said("field `scene_id`: must not start with `.`", "ingest");
    said("missing.tif not found", "tile");
    said("corrupt.tif` is not a raster", "tile");

    // The same records are on the dead-letter topic, with where they were read from, each
    // listed once (a rebalance between the two infer workers may have sent one twice).
    let listed = strata(&["dead-letters", "list", "--brokers", &brokers]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let lines: Vec<String> = text(&listed.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.contains("\tingest\tpermanent\t") && l.contains("scenes/")).count(), 4, "{lines:?}");

    // Both infer workers share the tiles topic: each is assigned partitions (the group may
    // still be settling when a small backlog is already done, so wait for it).
    let assigned =
        |workers: &[Worker]| workers.iter().filter(|w| w.name.starts_with("infer")).all(|w| w.log().contains("Partition assigned"));
    let deadline = Instant::now() + Duration::from_secs(90);
    while !assigned(&workers) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(assigned(&workers), "both infer workers were assigned partitions:\n{}", logs(&workers));

    // Metrics and probes: each worker exports what it did; the infer workers their batches
    // and the model version; readiness while serving.
    let endpoint = |name: &str| workers.iter().find(|w| w.name == name).and_then(Worker::endpoints);
    let merge = endpoint("merge").unwrap_or_else(|| panic!("the merge worker printed no endpoint:\n{}", logs(&workers)));
    assert_eq!(http_get(&merge, "/healthz").0, 200);
    assert_eq!(http_get(&merge, "/readyz").0, 200);
    let (code, metrics) = http_get(&merge, "/metrics");
    assert_eq!(code, 200);
    let value = |metrics: &str, series: &str| -> f64 {
        metrics.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(-1.0)
    };
    // Commits, counted at least once: results an infer worker redelivers after the rebalance
    // that lets the second worker in can complete a scene again, and its rerun commits the
    // same rows again (the tables hold each once, asserted above).
    let scenes_committed = value(&metrics, "strata_rows_total{table=\"scenes\"}");
    assert!(scenes_committed >= 2.0, "{metrics}");
    assert!(value(&metrics, "strata_rows_total{table=\"tiles\"}") >= tiles_n as f64, "{metrics}");
    // At least once: a redelivery after a rebalance counts a record again (the table holds it once).
    assert!(value(&metrics, "strata_dead_letters_total{stage=\"ingest\"}") >= 1.0, "{metrics}");
    assert!(value(&metrics, "strata_messages_done_total{outcome=\"delivered\",role=\"merge\"}") >= tiles_n as f64, "{metrics}");
    let infer_read: f64 = ["infer-1", "infer-2"]
        .iter()
        .map(|name| {
            let (_, metrics) = http_get(&endpoint(name).unwrap(), "/metrics");
            assert!(metrics.contains("strata_model_info{version=\"tiny-serve\"} 1"), "{metrics}");
            value(&metrics, "strata_messages_read_total{role=\"infer\"}").max(0.0)
        })
        .sum();
    assert!(infer_read >= tiles_n as f64, "the infer workers read every tile between them ({infer_read})");
    // The file's log_format: one JSON object per line.
    let merge_log = workers.iter().find(|w| w.name == "merge").unwrap().log();
    let json_line = merge_log.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON log line:\n{merge_log}"));
    assert!(serde_json::from_str::<serde_json::Value>(json_line).is_ok(), "{json_line}");

    // Graceful shutdown: every worker drains, commits and exits 0.
    for worker in &mut workers {
        let status = worker.terminate(Duration::from_secs(60));
        assert!(status.is_some_and(|s| s.success()), "worker {} did not stop cleanly ({status:?}):\n{}", worker.name, worker.log());
    }

    // Every offset was committed: no group is behind.
    let status = strata(&["status", "--brokers", &brokers]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let report = text(&status.stdout);
    for (group, topic) in [("strata-tile", "scenes"), ("strata-infer", "tiles"), ("strata-merge", "results")] {
        let line = report.lines().find(|l| l.starts_with(group)).unwrap_or_else(|| panic!("{group} missing:\n{report}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[1], topic, "{line}");
        assert_eq!(fields[4], "0", "{group} lags:\n{report}");
        assert_ne!(fields[3], "0", "{topic} has messages:\n{report}");
    }
    assert!(report.contains("dead-letter records: "), "{report}");

    // Restarted, the workers find nothing left to do.
    let merge = Worker::start("merge-again", work.path(), &["--config", config.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(8));
    drop(merge);
    assert_eq!(count(&tables, "SELECT count(*) AS n FROM scenes"), 2, "no scene written twice");
}

#[test]
fn a_broker_that_is_not_there_is_named_and_the_command_exits_2() {
    // Port 9 (discard) on loopback: nothing listens there.
    let scene = data("scenes/rmnp-rgb.tif");
    let out = strata(&["submit", "--brokers", "127.0.0.1:9", "--caption", scene.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot reach the Kafka broker at 127.0.0.1:9"), "{stderr}");
    assert!(stderr.contains("--brokers"), "the hint names the flag: {stderr}");
    let out = strata(&["serve", "--brokers", "", "--role", "tile"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no Kafka broker given"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_workers_switch_to_a_promoted_version_and_refuse_a_corrupt_one() {
    let broker = NisshiBroker::start().await.unwrap();
    let brokers = broker.bootstrap_servers();
    let work = tempfile::tempdir().unwrap();
    let registry = work.path().join("registry");
    let reg = registry.to_str().unwrap();
    for version in ["rs-1", "rs-2", "rs-3"] {
        let model = random_model(&work.path().join(version), version);
        let mut publish = vec!["model", "publish", model.to_str().unwrap(), "--to", reg];
        if version == "rs-1" {
            publish.push("--promote");
        }
        let out = strata(&publish);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let tables = work.path().join("tables");
    let tiles = work.path().join("tiles");
    let (tables_arg, tiles_arg) = (tables.to_str().unwrap(), tiles.to_str().unwrap());
    let mut worker = Worker::start(
        "all",
        work.path(),
        &[
            "--role",
            "all",
            "--brokers",
            &brokers,
            "--tables",
            tables_arg,
            "--tiles",
            tiles_arg,
            "--model-registry",
            reg,
            "--model-poll",
            "2",
            "--device",
            "cpu",
            "--max-new-tokens",
            "3",
            "--listen",
            "127.0.0.1:0",
            "--drain-timeout",
            "20",
        ],
    );
    let scene = data("scenes/rmnp-rgb.tif");
    let submit = |request: &str| {
        let out = strata(&[
            "submit",
            "--brokers",
            &brokers,
            "--request-id",
            request,
            "--tile-size",
            "256",
            "--overlap",
            "32",
            "--output-size",
            "64",
            "--caption",
            scene.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "submit: {}", text(&out.stderr));
    };
    let wait_for = |what: &str, done: &dyn Fn(&Worker) -> bool, worker: &mut Worker| {
        let deadline = Instant::now() + Duration::from_secs(180);
        while !done(worker) {
            if let Ok(Some(status)) = worker.child.try_wait() {
                panic!("the worker exited ({status}) waiting for {what}:\n{}", worker.log());
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", worker.log());
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    // Versions of a request's caption rows, and whether all its tiles are answered.
    let versions = |request: &str| -> Option<Vec<String>> {
        let tiled = count(&tables, &format!("SELECT count(*) AS n FROM tiles WHERE request_id = '{request}'"));
        let rows = query_json(&tables, &format!("SELECT model_version FROM captions WHERE request_id = '{request}'"));
        (tiled > 0 && rows.len() as u64 == tiled).then(|| rows.iter().map(|r| r["model_version"].as_str().unwrap().to_owned()).collect())
    };

    submit("before");
    wait_for("the first request", &|_| versions("before").is_some(), &mut worker);
    assert!(versions("before").unwrap().iter().all(|v| v == "rs-1"));

    // Promote with an announcement: the worker loads rs-2 in the background and switches.
    let out = strata(&["model", "promote", "rs-2", "--registry", reg, "--brokers", &brokers]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("announced on `models`"), "{}", text(&out.stdout));
    wait_for("the switch to rs-2", &|w| w.log().contains("model `rs-2` verified and loaded"), &mut worker);
    let status = strata(&["status", "--brokers", &brokers, "--model-registry", reg]);
    assert!(text(&status.stdout).contains("registry serves model rs-2"), "{}", text(&status.stdout));
    submit("after");
    wait_for("the second request", &|_| versions("after").is_some(), &mut worker);
    assert!(versions("after").unwrap().iter().all(|v| v == "rs-2"), "{:?}", versions("after"));
    assert!(versions("before").unwrap().iter().all(|v| v == "rs-1"), "earlier rows keep the version that produced them");

    // A corrupt artifact behind the pointer (changed by hand, as a broken tool might): refused,
    // and rs-2 goes on serving.
    let weights = registry.join("versions/rs-3/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    let pointer = serde_json::json!({"version": "rs-3", "history": ["rs-1", "rs-2"], "changed_at": "2026-11-30T12:00:00Z"});
    std::fs::write(registry.join("serving.json"), pointer.to_string()).unwrap();
    // Reported once, as an error event naming the refused version and the one that serves on.
    let refused = |log: &str| {
        log.lines().any(|l| l.contains("The new serving version is refused") && l.contains("version=rs-3") && l.contains("current=rs-2"))
    };
    wait_for("the refusal of rs-3", &|w| refused(&w.log()), &mut worker);
    submit("refused");
    wait_for("the third request", &|_| versions("refused").is_some(), &mut worker);
    assert!(versions("refused").unwrap().iter().all(|v| v == "rs-2"), "{:?}", versions("refused"));
    let (_, metrics) = http_get(&worker.endpoints().unwrap(), "/metrics");
    assert!(metrics.contains("strata_model_refused_total 1"), "{metrics}");
    assert!(metrics.contains("strata_model_info{version=\"rs-2\"} 1") && !metrics.contains("version=\"rs-1\""), "{metrics}");

    let status = worker.terminate(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{status:?}:\n{}", worker.log());
}

/// Tiles that fail inside a scene (here: a caption asked of workers serving no model) are in
/// the scene's `dead_letter` rows, and also on the dead-letter topic, in `strata status` and in
/// `strata_dead_letters_total`, where operators look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiles_failing_inside_a_scene_reach_the_dead_letter_topic_and_metrics() {
    let broker = NisshiBroker::start().await.unwrap();
    let brokers = broker.bootstrap_servers();
    let work = tempfile::tempdir().unwrap();
    let (tables, tiles) = (work.path().join("tables"), work.path().join("tiles"));
    let scene = data("scenes/rmnp-rgb.tif");
    let mut worker = Worker::start(
        "all",
        work.path(),
        &["--role", "all", "--brokers", &brokers, "--tables", tables.to_str().unwrap(), "--tiles", tiles.to_str().unwrap()]
            .into_iter()
            .chain(["--listen", "127.0.0.1:0"])
            .collect::<Vec<_>>(),
    );
    let out = strata(&[
        "submit",
        "--brokers",
        &brokers,
        "--request-id",
        "no-model",
        "--caption",
        "--tile-size",
        "256",
        "--output-size",
        "64",
        scene.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(180);
    while count(&tables, "SELECT count(*) AS n FROM scenes") == 0 {
        assert!(Instant::now() < deadline, "the scene did not commit:\n{}", worker.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    let scene_row = &query_json(&tables, "SELECT tiles_written, tiles_failed FROM scenes")[0];
    let failed = scene_row["tiles_failed"].as_u64().unwrap();
    assert!(failed > 0 && failed == scene_row["tiles_written"].as_u64().unwrap(), "{scene_row}");
    assert_eq!(count(&tables, "SELECT count(*) AS n FROM dead_letter WHERE stage = 'infer'"), failed);

    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let listed = text(&strata(&["dead-letters", "list", "--brokers", &brokers]).stdout);
        if listed.lines().filter(|l| l.contains("\tinfer\t")).count() as u64 >= failed || Instant::now() > deadline {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(listed.lines().filter(|l| l.contains("\tinfer\t") && l.contains("no model is loaded")).count() as u64, failed, "{listed}");
    let status = text(&strata(&["status", "--brokers", &brokers]).stdout);
    assert!(status.contains(&format!("dead-letter records: {failed}")), "{status}");
    let (_, metrics) = http_get(&worker.endpoints().unwrap(), "/metrics");
    assert!(metrics.contains(&format!("strata_dead_letters_total{{stage=\"infer\"}} {failed}")), "{metrics}");
    let status = worker.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
