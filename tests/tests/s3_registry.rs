//! The model registry on a real S3 server (moto): publish → list → promote → rollback, lineage
//! round-tripping, and corrupt or replaced artifacts refused on publish, on promote and on
//! load, with the serving version left as it was.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

use std::{collections::BTreeMap, path::Path};

use model::{
    artifact::{self, Provenance},
    chat::ChatTokenizer,
    config::StrataConfig,
    layers::ParamInit,
    vlm::StrataModel,
};
use object_store::{ObjectStoreExt as _, PutPayload};
use storage::{
    registry::{PublishOptions, Registry},
    StorageError,
};
use strata_e2e::{workspace_root, S3Server};

fn tiny_artifact(dir: &Path, version: &str, parent: Option<&str>, seed: i64) -> std::path::PathBuf {
    let fixtures = workspace_root().join("model/tests/fixtures");
    let config = StrataConfig::from_json(&std::fs::read_to_string(fixtures.join("tiny-model/config.json")).unwrap()).unwrap();
    let tokenizer_path = fixtures.join("tokenizer/tokenizer.json");
    let tokenizer = ChatTokenizer::from_file(&tokenizer_path, &config.system_prompt).unwrap();
    model::tch::manual_seed(seed);
    let model = StrataModel::new(config, tokenizer, model::tch::Device::Cpu, model::tch::Kind::Float, ParamInit::Random).unwrap();
    let out = dir.join(format!("{version}-{seed}"));
    let provenance = Provenance { version: version.into(), parent_version: parent.map(str::to_owned), ..Provenance::default() };
    artifact::save(&model, &tokenizer_path, &out, &provenance).unwrap();
    out
}

fn flip_a_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_published_promoted_and_rolled_back_and_corrupt_ones_are_refused() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("models").await.unwrap();
    let work = tempfile::tempdir().unwrap();
    // The only test in this binary: setting the environment races with nothing.
    for (key, value) in [
        ("AWS_ENDPOINT_URL", server.endpoint()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("STRATA_CACHE", work.path().join("cache").display().to_string()),
    ] {
        std::env::set_var(key, value);
    }
    let registry = Registry::new(storage::resolve("s3://models/registry").unwrap());
    assert!(registry.list().await.unwrap().is_empty());
    assert!(registry.serving().await.unwrap().is_none());

    // Publish two versions with their lineage; lineage reads back as written.
    let v1 = tiny_artifact(work.path(), "rs-1", None, 1);
    let v2 = tiny_artifact(work.path(), "rs-2", Some("rs-1"), 2);
    let first = registry
        .publish(&v1, PublishOptions { metrics: BTreeMap::from([("accuracy".to_owned(), 0.41)]), ..PublishOptions::default() })
        .await
        .unwrap()
        .0;
    let options = PublishOptions {
        training_config: Some(serde_json::json!({"stage": "instruct", "steps": 400, "lr": 0.0002})),
        data_digest: Some("sha256:0123abcd".into()),
        metrics: BTreeMap::from([("accuracy".to_owned(), 0.93), ("cider".to_owned(), 1.2)]),
        ..PublishOptions::default()
    };
    let (second, new) = registry.publish(&v2, options.clone()).await.unwrap();
    assert!(new);
    assert_eq!(second.parent_version.as_deref(), Some("rs-1"), "the parent comes from the manifest");
    assert_eq!(second.training_config, options.training_config);
    assert_eq!(registry.list().await.unwrap(), vec![first.clone(), second.clone()]);

    // Publishing the same artifact again is a no-op; other contents, or other lineage, under a
    // version are refused.
    assert_eq!(registry.publish(&v1, PublishOptions::default()).await.unwrap(), (first.clone(), false));
    let relabelled = PublishOptions { data_digest: Some("sha256:other".into()), ..PublishOptions::default() };
    let err = registry.publish(&v1, relabelled).await.unwrap_err();
    assert!(err.to_string().contains("other lineage"), "{err}");
    let impostor = tiny_artifact(work.path(), "rs-1", None, 99);
    let err = registry.publish(&impostor, PublishOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("already published with other contents"), "{err}");

    // A flipped byte in a local artifact is refused before anything is uploaded.
    let broken = tiny_artifact(work.path(), "rs-broken", None, 3);
    flip_a_byte(&broken.join("model.safetensors"));
    let err = registry.publish(&broken, PublishOptions::default()).await.unwrap_err();
    assert!(matches!(err, StorageError::Model { .. }), "{err}");
    assert!(registry.lineage("rs-broken").await.unwrap().is_none());

    // Promote, promote, roll back.
    let serving = registry.promote("rs-1").await.unwrap();
    assert_eq!((serving.version.as_str(), serving.history.len()), ("rs-1", 0));
    let serving = registry.promote("rs-2").await.unwrap();
    assert_eq!((serving.version.as_str(), serving.history.clone()), ("rs-2", vec!["rs-1".to_owned()]));
    let serving = registry.rollback().await.unwrap();
    assert_eq!((serving.version.as_str(), serving.history.len()), ("rs-1", 0));
    let err = registry.rollback().await.unwrap_err();
    assert!(err.to_string().contains("nothing to roll back"), "{err}");
    let err = registry.promote("rs-9").await.unwrap_err();
    assert!(err.to_string().contains("`rs-9` is not published"), "{err}");

    // Damage in the store after publishing: a flipped byte in the weights, seen by a worker
    // with an empty cache, is refused on load and on promote; the serving version stays.
    let weights = object_store::path::Path::from("registry/versions/rs-2/model.safetensors");
    let store = server.store("models").unwrap();
    let good = store.get(&weights).await.unwrap().bytes().await.unwrap().to_vec();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x01;
    store.put(&weights, PutPayload::from(bad)).await.unwrap();
    let _ = std::fs::remove_dir_all(work.path().join("cache"));
    let err = registry.fetch("rs-2").await.unwrap_err();
    assert!(err.to_string().contains("sha256"), "{err}");
    let err = registry.promote("rs-2").await.unwrap_err();
    assert!(err.to_string().contains("sha256"), "{err}");
    assert_eq!(registry.serving().await.unwrap().unwrap().version, "rs-1");

    // A manifest replaced after publishing (weights and manifest swapped together) no longer
    // matches the lineage.
    store.put(&weights, PutPayload::from(good)).await.unwrap();
    let other = tiny_artifact(work.path(), "rs-2", Some("rs-1"), 7);
    for name in ["model.safetensors", "manifest.json"] {
        let path = object_store::path::Path::from(format!("registry/versions/rs-2/{name}"));
        store.put(&path, PutPayload::from(std::fs::read(other.join(name)).unwrap())).await.unwrap();
    }
    let _ = std::fs::remove_dir_all(work.path().join("cache"));
    let err = registry.fetch("rs-2").await.unwrap_err();
    assert!(err.to_string().contains("not the one published"), "{err}");
    assert_eq!(registry.serving().await.unwrap().unwrap().version, "rs-1");
    // The serving version still loads.
    let dir = registry.fetch("rs-1").await.unwrap();
    assert_eq!(artifact::Artifact::open(&dir).unwrap().manifest.version, "rs-1");
}
