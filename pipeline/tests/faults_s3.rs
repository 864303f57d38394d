//! An object-store outage under `strata serve`: scenes, tiles and tables on a real S3 server
//! (moto) reached through a TCP proxy that is cut for several seconds mid-stream. The
//! pipeline recovers by itself, and every result row is there once.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

mod common;

use std::time::{Duration, Instant};

use common::{count, data, random_model, strata, text, Worker};
use object_store::{ObjectStoreExt as _, PutPayload};
use strata_e2e::{NisshiBroker, S3Server, TcpProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_outage_of_seconds_mid_stream_loses_and_duplicates_nothing() {
    let s3 = S3Server::start().await.unwrap();
    s3.create_bucket("imagery").await.unwrap();
    let proxy = TcpProxy::new().unwrap();
    proxy.connect(s3.endpoint().trim_start_matches("http://").parse().unwrap()).await.unwrap();
    // The only test in this binary: the environment is ours. Workers and `strata query`
    // reach S3 through the proxy.
    let env: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL", format!("http://{}", proxy.addr())),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (key, value) in &env {
        std::env::set_var(key, value);
    }
    let store = s3.store("imagery").unwrap();
    for name in ["rmnp-rgb.tif", "L7_ETMs.tif"] {
        let bytes = std::fs::read(data(&format!("scenes/{name}"))).unwrap();
        store.put(&object_store::path::Path::from(format!("scenes/{name}")), PutPayload::from(bytes)).await.unwrap();
    }

    let broker = NisshiBroker::start().await.unwrap();
    let brokers = broker.bootstrap_servers();
    let work = tempfile::tempdir().unwrap();
    let model = random_model(work.path(), "tiny-s3-outage");
    let tables = "s3://imagery/tables";
    let mut workers = Vec::new();
    for role in ["tile", "infer", "merge"] {
        let mut args = vec!["--role", role, "--brokers", &brokers, "--tables", tables, "--tiles", "s3://imagery/tiles", "--listen", "off"];
        if role == "infer" {
            args.extend(["--model", model.to_str().unwrap(), "--device", "cpu", "--max-new-tokens", "3", "--batch-size", "2"]);
        }
        workers.push(Worker::start_with_env(role, work.path(), &args, &env));
    }
    let submit = |request: &str| {
        let out = strata(&[
            "submit",
            "--brokers",
            &brokers,
            "--request-id",
            request,
            "--caption",
            "--tile-size",
            "256",
            "--overlap",
            "32",
            "--output-size",
            "64",
            "s3://imagery/scenes/",
        ]);
        assert!(out.status.success(), "submit {request}: {}{}", text(&out.stdout), text(&out.stderr));
    };
    let tables_path = std::path::Path::new(tables);
    let rows = |request: &str| {
        let n = |sql: String| count(tables_path, &sql);
        (
            n(format!("SELECT count(*) AS n FROM scenes WHERE request_id = '{request}'")),
            n(format!("SELECT count(*) AS n FROM tiles WHERE request_id = '{request}'")),
            n(format!("SELECT count(*) AS n FROM captions WHERE request_id = '{request}'")),
            n(format!("SELECT count(*) AS n FROM dead_letter WHERE request_id = '{request}'")),
        )
    };
    let logs = |workers: &[Worker]| common::logs(workers);
    let wait_complete = |request: &str, workers: &mut Vec<Worker>| {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let now = rows(request);
            if now.0 >= 2 && now.2 >= now.1 && now.1 > 0 {
                return now;
            }
            for worker in workers.iter_mut() {
                if let Ok(Some(status)) = worker.child.try_wait() {
                    panic!("{} exited ({status}):\n{}", worker.name, worker.log());
                }
            }
            assert!(Instant::now() < deadline, "{request} incomplete: {now:?}\n{}", logs(workers));
            std::thread::sleep(Duration::from_millis(500));
        }
    };

    submit("calm");
    let calm = wait_complete("calm", &mut workers);
    assert_eq!(calm.3, 0, "no dead letters without an outage");

    // The outage: cut once the first scene of the request is tiled (the second is being read,
    // tiles are being read by infer), for 6 seconds.
    submit("outage");
    let deadline = Instant::now() + Duration::from_secs(60);
    while workers[0].log().matches("Scene tiled").count() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy.cut();
    std::thread::sleep(Duration::from_secs(6));
    proxy.connect(s3.endpoint().trim_start_matches("http://").parse().unwrap()).await.unwrap();
    let outage = wait_complete("outage", &mut workers);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rows("outage"), outage, "no replay added rows later");
    assert_eq!(outage, calm, "the same rows as without an outage, each once, no dead letters\n{}", logs(&workers));
}
