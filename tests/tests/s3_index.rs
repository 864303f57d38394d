//! Retriever indexes through a real S3 server (moto): pushed once, fetched by a worker into
//! its cache, reused while unchanged, refetched when replaced, and refused when damaged.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

use object_store::{path::Path, ObjectStoreExt as _, PutPayload};
use retrieval::build::write_index;
use retrieval::index::HnswParams;
use retrieval::store::{fetch_index, push_index};
use retrieval::{Description, SearchMode, SemanticIndex};
use strata_e2e::S3Server;

/// Deterministic unit vectors.
fn vectors(count: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(count * dim);
    for _ in 0..count {
        let v: Vec<f32> = (0..dim)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(v.into_iter().map(|x| x / norm));
    }
    out
}

fn descriptions(count: usize, tag: &str) -> Vec<Description> {
    (0..count)
        .map(|i| Description { id: format!("{tag}{i}"), text: format!("{tag} description {i}"), level: None, category: None, source: None })
        .collect()
}

fn top_ids(index: &SemanticIndex, queries: &[Vec<f32>], mode: SearchMode) -> Vec<Vec<String>> {
    index.search(queries, 5, mode).unwrap().iter().map(|hits| hits.iter().map(|h| index.description(h.row).id.clone()).collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_are_pushed_fetched_once_refetched_when_replaced_and_checked() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("models").await.unwrap();
    let store = server.store("models").unwrap();
    let work = tempfile::tempdir().unwrap();
    let (count, dim) = (2000, 32);
    let local = work.path().join("local");
    write_index(&local, &descriptions(count, "a"), &vectors(count, dim, 1), dim, "synthetic", Some(HnswParams::default())).unwrap();
    let prefix = Path::from("indexes/synthetic");

    let pushed = push_index(&local, store.as_ref(), &prefix).await.unwrap();
    assert_eq!(pushed.files, 4);
    let cache = work.path().join("cache");
    let fetched = fetch_index(store.as_ref(), &prefix, &cache).await.unwrap();
    assert!(!fetched.reused);
    assert_eq!(fetched.bytes, pushed.bytes);
    let queries: Vec<Vec<f32>> = vectors(20, dim, 9).chunks(dim).map(<[f32]>::to_vec).collect();
    let original = SemanticIndex::open(&local, model::tch::Device::Cpu).unwrap();
    let copy = SemanticIndex::open(&cache, model::tch::Device::Cpu).unwrap();
    for mode in [SearchMode::Exact, SearchMode::Approximate { ef: 64 }] {
        assert_eq!(top_ids(&copy, &queries, mode), top_ids(&original, &queries, mode));
    }
    drop(copy);

    // A second worker start reuses the copy.
    let again = fetch_index(store.as_ref(), &prefix, &cache).await.unwrap();
    assert!(again.reused && again.bytes == 0);

    // A new index under the same prefix replaces the copy.
    let replacement = work.path().join("replacement");
    write_index(&replacement, &descriptions(500, "b"), &vectors(500, dim, 2), dim, "synthetic", None).unwrap();
    push_index(&replacement, store.as_ref(), &prefix).await.unwrap();
    let refetched = fetch_index(store.as_ref(), &prefix, &cache).await.unwrap();
    assert!(!refetched.reused);
    let copy = SemanticIndex::open(&cache, model::tch::Device::Cpu).unwrap();
    assert_eq!(copy.len(), 500);
    assert!(copy.description(0).id.starts_with('b'));
    drop(copy);

    // A damaged graph in the store is refused when the fresh copy is opened.
    let graph = std::fs::read(local.join("hnsw.usearch")).unwrap();
    let damaged_prefix = Path::from("indexes/damaged");
    push_index(&local, store.as_ref(), &damaged_prefix).await.unwrap();
    let mut bad = graph.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0xFF;
    store.put(&damaged_prefix.clone().join("hnsw.usearch"), PutPayload::from(bad)).await.unwrap();
    let damaged_cache = work.path().join("damaged");
    fetch_index(store.as_ref(), &damaged_prefix, &damaged_cache).await.unwrap();
    let err = SemanticIndex::open(&damaged_cache, model::tch::Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("corrupt"), "{err}");

    // Nothing there: the error says what was expected.
    let err = fetch_index(store.as_ref(), &Path::from("indexes/none"), &work.path().join("none")).await.unwrap_err().to_string();
    assert!(err.contains("strata index push"), "{err}");
    // A file the manifest names is missing.
    store.delete(&prefix.clone().join("embeddings.f32")).await.unwrap();
    let err = fetch_index(store.as_ref(), &prefix, &work.path().join("partial")).await.unwrap_err().to_string();
    assert!(err.contains("embeddings.f32"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_embedding_files_travel_in_several_parts() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("big").await.unwrap();
    let store = server.store("big").unwrap();
    let work = tempfile::tempdir().unwrap();
    // 70,000 × 64 f32 = 17.9 MB: more than one 16 MB upload part.
    let (count, dim) = (70_000, 64);
    let values = vectors(count, dim, 5);
    let local = work.path().join("local");
    write_index(&local, &descriptions(count, "d"), &values, dim, "synthetic", None).unwrap();
    let prefix = Path::from("idx");
    push_index(&local, store.as_ref(), &prefix).await.unwrap();
    let cache = work.path().join("cache");
    fetch_index(store.as_ref(), &prefix, &cache).await.unwrap();
    assert_eq!(std::fs::read(cache.join("embeddings.f32")).unwrap(), std::fs::read(local.join("embeddings.f32")).unwrap());
    let copy = SemanticIndex::open(&cache, model::tch::Device::Cpu).unwrap();
    assert_eq!(copy.vector(count - 1), &values[(count - 1) * dim..]);
}
