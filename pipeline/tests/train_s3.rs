//! Training data in an object store: `strata train instruct` and `strata train retriever`
//! read their JSONL and the images it names from a real S3 server (moto), mirror them once,
//! and name a missing image with the line that names it.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

mod common;

use std::path::Path;

use common::{random_model, strata, text};
use object_store::{ObjectStoreExt as _, PutPayload};
use strata_e2e::S3Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_reads_its_samples_and_images_through_the_object_store() {
    let s3 = S3Server::start().await.unwrap();
    s3.create_bucket("training").await.unwrap();
    let work = tempfile::tempdir().unwrap();
    // The only test in this binary: the environment is ours, and the commands inherit it. The
    // mirror goes to a cache of this test's own, which links to the assets setup fetched.
    std::fs::create_dir_all(work.path().join("cache")).unwrap();
    std::os::unix::fs::symlink(model::assets_dir(), work.path().join("cache/assets")).unwrap();
    for (key, value) in [
        ("AWS_ENDPOINT_URL", s3.endpoint()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("STRATA_CACHE", work.path().join("cache").display().to_string()),
    ] {
        std::env::set_var(key, value);
    }
    let data = work.path().join("data");
    let out = strata(&["data", "synth", "--out", data.to_str().unwrap(), "--n", "30", "--size", "32", "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The synth layout, uploaded as it is: JSONL in train/ and test/, images one folder up.
    let store = s3.store("training").unwrap();
    let mut images = 0;
    for folder in ["train", "test", "images"] {
        for entry in std::fs::read_dir(data.join(folder)).unwrap() {
            let path = entry.unwrap().path();
            let key = format!("synth/{folder}/{}", path.file_name().unwrap().to_str().unwrap());
            store.put(&object_store::path::Path::from(key), PutPayload::from(std::fs::read(&path).unwrap())).await.unwrap();
            images += usize::from(folder == "images");
        }
    }
    let base = random_model(work.path(), "base");
    let config = |name: &str| {
        let file = work.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "model = {base:?}\ndata = \"s3://training/synth/train/instruct.jsonl\"\nheld_out = \"s3://training/synth/test/instruct.jsonl\"\n\
                 out = \"runs/{name}\"\nsteps = 2\nbatch_size = 4\neval_every = 2\neval_samples = 4\neval_max_new_tokens = 2\n"
            ),
        )
        .unwrap();
        file
    };
    let train = |file: &Path| strata(&["train", "instruct", "--config", file.to_str().unwrap(), "--device", "cpu", "--no-progress"]);

    let out = train(&config("first"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let images_of = |line_of: &str| -> usize {
        let line = stderr.lines().find(|l| l.starts_with(line_of)).unwrap_or_else(|| panic!("no line for {line_of}: {stderr}"));
        line.split(", ").next().unwrap().rsplit(' ').nth(1).unwrap().parse().unwrap()
    };
    let (train_images, test_images) =
        (images_of("s3://training/synth/train/instruct.jsonl: "), images_of("s3://training/synth/test/instruct.jsonl: "));
    assert_eq!(train_images + test_images, images, "every image once, from the split that names it: {stderr}");
    assert!(work.path().join("runs/first/model/manifest.json").is_file());
    let mirrored = std::fs::read_dir(work.path().join("cache/training-data")).unwrap().count();
    assert_eq!(mirrored, 1, "one mirror for the bucket");

    // A second run fetches nothing again.
    let out = train(&config("second"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("{train_images} images, 0 fetched")), "{}", text(&out.stderr));

    // The retriever's job reads the same way.
    let retriever = work.path().join("retriever.toml");
    std::fs::write(
        &retriever,
        format!(
            "start = {base:?}\ndata = \"s3://training/synth/train/align.jsonl\"\nheld_out = \"s3://training/synth/test/align.jsonl\"\n\
             out = \"runs/retriever\"\nsteps = 2\nbatch_size = 4\n"
        ),
    )
    .unwrap();
    let out = strata(&["train", "retriever", "--config", retriever.to_str().unwrap(), "--device", "cpu", "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(work.path().join("runs/retriever/retriever/retriever.json").is_file());

    // An image gone from the store is named, with the line that names it.
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(data.join("train/instruct.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    let image = first["image"].as_str().unwrap();
    store.delete(&object_store::path::Path::from(format!("synth/{image}"))).await.unwrap();
    let out = train(&config("third"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "`s3://training/synth/{image}` (named by `s3://training/synth/train/instruct.jsonl` line 1) does not exist"
        )),
        "{stderr}"
    );
}
