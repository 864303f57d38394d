//! Model artifacts through a real S3 server (moto): pushed, fetched once into the cache (also
//! by two workers at once), and served from `s3://` by the whole embedded chain, with the
//! scene, the tiles and the tables on S3 too.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

use std::{path::Path, sync::Arc};

use model::{
    artifact::{self, Provenance},
    chat::ChatTokenizer,
    config::StrataConfig,
    layers::ParamInit,
    vlm::StrataModel,
};
use object_store::{ObjectStoreExt as _, PutPayload};
use operators::{
    runtime::{self, Chain, EmbeddedConfig},
    stage::AckStatus,
    stages::{
        infer::{InferConfig, InferStage, LoadedModel},
        merge::{MergeConfig, MergeStage},
        sink::SinkStage,
        tile::TileStage,
    },
    tile::TilerConfig,
};
use schemas::{SceneRequest, SceneSource, TaskSpec, TilingOptions};
use storage::artifacts::{fetch_model_into, push_model};
use strata_e2e::{workspace_root, S3Server};
use tables::{query, Tables};

fn tiny_artifact(dir: &Path) -> std::path::PathBuf {
    let fixtures = workspace_root().join("model/tests/fixtures");
    let config = StrataConfig::from_json(&std::fs::read_to_string(fixtures.join("tiny-model/config.json")).unwrap()).unwrap();
    let tokenizer_path = fixtures.join("tokenizer/tokenizer.json");
    let tokenizer = ChatTokenizer::from_file(&tokenizer_path, &config.system_prompt).unwrap();
    let model = StrataModel::new(config, tokenizer, model::tch::Device::Cpu, model::tch::Kind::Float, ParamInit::Random).unwrap();
    let out = dir.join("tiny-s3");
    artifact::save(&model, &tokenizer_path, &out, &Provenance { version: "tiny-s3".into(), ..Provenance::default() }).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_on_s3_is_fetched_once_and_serves_the_chain() {
    let server = S3Server::start().await.unwrap();
    for bucket in ["models", "imagery"] {
        server.create_bucket(bucket).await.unwrap();
    }
    // storage::resolve configures S3 from the standard environment, as in production; this is
    // the only test in this binary, so setting it here races with nothing.
    for (key, value) in [
        ("AWS_ENDPOINT_URL", server.endpoint()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ] {
        std::env::set_var(key, value);
    }
    let work = tempfile::tempdir().unwrap();
    let local = tiny_artifact(work.path());
    let target = storage::resolve("s3://models/tiny-s3").unwrap();
    let (files, bytes) = push_model(&local, &target).await.unwrap();
    assert_eq!(files, 4, "config, tokenizer, weights and the manifest");
    assert!(bytes > 0);

    // Two workers fetching at once into one cache both end with a verified copy.
    let cache = work.path().join("cache/tiny-s3");
    let (a, b) = tokio::join!(fetch_model_into(&target, &cache), fetch_model_into(&target, &cache));
    a.unwrap();
    b.unwrap();
    artifact::Artifact::open(&cache).unwrap();
    assert!(fetch_model_into(&target, &cache).await.unwrap(), "an unchanged model is reused, not downloaded again");
    let leftovers: Vec<_> = std::fs::read_dir(cache.parent().unwrap()).unwrap().flatten().filter(|e| e.file_name() != "tiny-s3").collect();
    assert!(leftovers.is_empty(), "no download folders are left behind: {leftovers:?}");

    // A missing model is a clear error naming the manifest.
    let err = fetch_model_into(&storage::resolve("s3://models/nope").unwrap(), &work.path().join("nope")).await.unwrap_err();
    assert!(err.to_string().contains("manifest.json"), "{err}");

    // The whole chain with the model from s3://, the scene on S3 and the tables on S3.
    std::env::set_var("STRATA_CACHE", work.path().join("strata-cache"));
    let scene = std::fs::read(workspace_root().join("data/scenes/rmnp-rgb.tif")).unwrap();
    server.store("imagery").unwrap().put(&object_store::path::Path::from("scenes/rmnp.tif"), PutPayload::from(scene)).await.unwrap();
    let model =
        LoadedModel::load("s3://models/tiny-s3", model::device::DevicePreference::Cpu, model::device::Precision::Auto).await.unwrap();
    let tables = Tables::new(storage::resolve("s3://imagery/tables").unwrap());
    let tiles = storage::resolve("s3://imagery/tiles").unwrap();
    let progress: operators::tile::Progress = Arc::new(|_| {});
    let mut request = SceneRequest::new("req-s3", "rmnp", SceneSource::Uri { uri: "s3://imagery/scenes/rmnp.tif".into() });
    request.tiling = TilingOptions { tile_size_px: 256, overlap_px: 32, output_size_px: 64, ..TilingOptions::default() };
    request.tasks = vec![TaskSpec::Caption { prompt: None }, TaskSpec::Detect { target: "building".into() }];
    let chain = Chain {
        tile: vec![TileStage::new(tiles, TilerConfig { threads: 2, ..TilerConfig::default() }, progress)],
        infer: InferStage::new(model, None, InferConfig { max_batch_tiles: 4, max_new_tokens: 3, ..InferConfig::default() }),
        merge: operators::runtime::Then::new(MergeStage::new(MergeConfig::default()), SinkStage::new(tables.clone(), 1), 4),
    };
    let summary = runtime::run(vec![request], Vec::new(), chain, &EmbeddedConfig::default(), ()).await;
    assert!(summary.all_ok(), "{summary:?}");
    assert_eq!(summary.acks.get("rmnp"), Some(&AckStatus::Delivered));
    let frame = query::run(&tables, "SELECT count(*) AS n FROM captions c JOIN tiles t ON c.tile_id = t.tile_id").await.unwrap();
    let rows: serde_json::Value =
        serde_json::from_str(&query::render(frame, query::OutputFormat::Json, &operators::geometry::Gdal).unwrap()).unwrap();
    assert_eq!(rows[0]["n"].as_u64(), Some(summary.tiles));
    assert!(summary.tiles >= 4);
    let model_cache = work.path().join("strata-cache/models");
    assert_eq!(std::fs::read_dir(&model_cache).unwrap().count(), 1, "the model was cached under STRATA_CACHE");
}
