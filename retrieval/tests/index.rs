//! Vector search: exact top-k equals brute force, HNSW recall on clustered data, indexes
//! round-trip through their files, and bad input or corrupt files are errors, never panics.

use retrieval::build::write_index;
use retrieval::index::{GraphPrecision, HnswParams, DEFAULT_EF};
use retrieval::{Description, SearchMode, SemanticIndex};

/// Deterministic clustered unit vectors: `clusters` random centres, points scattered around them.
fn clustered(count: usize, dim: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut normal = move || {
        // Sum of uniforms: close enough to Gaussian for test data.
        let mut s = 0.0f32;
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            s += (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        }
        s
    };
    let centres: Vec<Vec<f32>> = (0..clusters).map(|_| (0..dim).map(|_| normal()).collect()).collect();
    let mut out = Vec::with_capacity(count * dim);
    for i in 0..count {
        let c = &centres[i % clusters];
        let v: Vec<f32> = c.iter().map(|x| x + 0.35 * normal()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(v.into_iter().map(|x| x / norm));
    }
    out
}

fn descriptions(count: usize) -> Vec<Description> {
    (0..count)
        .map(|i| Description { id: format!("d{i}"), text: format!("description {i}"), level: None, category: None, source: None })
        .collect()
}

fn brute_force(vectors: &[f32], dim: usize, query: &[f32], k: usize) -> Vec<usize> {
    let mut scored: Vec<(usize, f32)> =
        vectors.chunks(dim).enumerate().map(|(i, v)| (i, v.iter().zip(query).map(|(a, b)| a * b).sum())).collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.into_iter().take(k).map(|(i, _)| i).collect()
}

#[test]
fn exact_top_k_equals_brute_force() {
    let (count, dim) = (3000, 48);
    let vectors = clustered(count, dim, 30, 1);
    let dir = tempfile::tempdir().unwrap();
    write_index(dir.path(), &descriptions(count), &vectors, dim, "synthetic", None).unwrap();
    let index = SemanticIndex::open(dir.path(), model::tch::Device::Cpu).unwrap();
    let queries: Vec<Vec<f32>> = clustered(25, dim, 30, 99).chunks(dim).map(<[f32]>::to_vec).collect();
    let hits = index.search(&queries, 10, SearchMode::Exact).unwrap();
    for (q, found) in queries.iter().zip(&hits) {
        let expected = brute_force(&vectors, dim, q, 10);
        assert_eq!(found.iter().map(|h| h.row).collect::<Vec<_>>(), expected);
        // One query alone takes the scanning path; same answer, same scores.
        let alone = index.search(std::slice::from_ref(q), 10, SearchMode::Exact).unwrap().remove(0);
        assert_eq!(alone.iter().map(|h| h.row).collect::<Vec<_>>(), expected);
        for (a, b) in alone.iter().zip(found) {
            assert!((a.score - b.score).abs() < 1e-5, "{} vs {}", a.score, b.score);
        }
    }
    assert_eq!(index.vector(7), &vectors[7 * dim..8 * dim]);
    // k larger than the index returns everything once.
    assert_eq!(index.search(&queries[..1], 5000, SearchMode::Exact).unwrap()[0].len(), count);
}

#[test]
fn hnsw_reaches_recall_095_at_its_default_setting_on_clustered_data() {
    let (count, dim) = (20_000, 64);
    let vectors = clustered(count, dim, 200, 7);
    let dir = tempfile::tempdir().unwrap();
    write_index(dir.path(), &descriptions(count), &vectors, dim, "synthetic", Some(HnswParams::default())).unwrap();
    let index = SemanticIndex::open(dir.path(), model::tch::Device::Cpu).unwrap();
    let queries: Vec<Vec<f32>> = clustered(200, dim, 200, 1234).chunks(dim).map(<[f32]>::to_vec).collect();
    let exact = index.search(&queries, 5, SearchMode::Exact).unwrap();
    let ann = index.search(&queries, 5, SearchMode::Approximate { ef: DEFAULT_EF }).unwrap();
    let found: usize = exact.iter().zip(&ann).map(|(e, a)| a.iter().filter(|h| e.iter().any(|x| x.row == h.row)).count()).sum();
    let recall = found as f64 / (5 * queries.len()) as f64;
    assert!(recall >= 0.95, "recall@5 {recall}");
    // Whatever the graph stores, the scores are exact cosines, best first.
    for (q, hits) in queries.iter().zip(&ann) {
        for pair in hits.windows(2) {
            assert!(pair[0].score >= pair[1].score);
        }
        for hit in hits {
            let exact: f32 = index.vector(hit.row).iter().zip(q).map(|(a, b)| a * b).sum();
            assert!((hit.score - exact).abs() < 1e-5, "{} vs {exact}", hit.score);
        }
    }
    // The knob works: a tiny ef finds less.
    let rough = index.search(&queries, 5, SearchMode::Approximate { ef: 5 }).unwrap();
    let rough_found: usize = exact.iter().zip(&rough).map(|(e, a)| a.iter().filter(|h| e.iter().any(|x| x.row == h.row)).count()).sum();
    assert!(rough_found <= found);
}

#[test]
fn bad_queries_and_corrupt_files_are_errors() {
    let (count, dim) = (500, 16);
    let vectors = clustered(count, dim, 10, 3);
    let dir = tempfile::tempdir().unwrap();
    let params = HnswParams { m: 8, ef_construction: 50, precision: GraphPrecision::Bf16 };
    write_index(dir.path(), &descriptions(count), &vectors, dim, "synthetic", Some(params)).unwrap();
    let index = SemanticIndex::open(dir.path(), model::tch::Device::Cpu).unwrap();
    let err = index.search(&[vec![0.0; 7]], 5, SearchMode::Exact).unwrap_err().to_string();
    assert!(err.contains("7 dimensions") && err.contains("16"), "{err}");
    assert!(index.search(&[vec![0.0; dim]], 0, SearchMode::Exact).is_err());
    drop(index);

    // Wrong sizes to write: refused.
    assert!(write_index(dir.path(), &descriptions(3), &vectors[..10], dim, "x", None).is_err());

    // A corrupt HNSW graph.
    let graph = dir.path().join("hnsw.usearch");
    let good_graph = std::fs::read(&graph).unwrap();
    std::fs::write(&graph, &good_graph[..good_graph.len() / 3]).unwrap();
    let err = SemanticIndex::open(dir.path(), model::tch::Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("hnsw"), "{err}");
    std::fs::write(&graph, &good_graph).unwrap();

    // Truncated embeddings.
    let embeddings = dir.path().join("embeddings.f32");
    let good = std::fs::read(&embeddings).unwrap();
    std::fs::write(&embeddings, &good[..good.len() - 8]).unwrap();
    let err = SemanticIndex::open(dir.path(), model::tch::Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
    std::fs::write(&embeddings, &good).unwrap();

    // A garbled manifest, then none.
    std::fs::write(dir.path().join("index.json"), b"{not json").unwrap();
    assert!(SemanticIndex::open(dir.path(), model::tch::Device::Cpu).unwrap_err().to_string().contains("malformed"));
    std::fs::remove_file(dir.path().join("index.json")).unwrap();
    assert!(SemanticIndex::open(dir.path(), model::tch::Device::Cpu).unwrap_err().to_string().contains("strata index build"));
}

#[test]
fn every_graph_precision_finds_the_neighbours_and_old_manifests_open_as_f32() {
    let (count, dim) = (4000, 32);
    let vectors = clustered(count, dim, 40, 11);
    let queries: Vec<Vec<f32>> = clustered(100, dim, 40, 77).chunks(dim).map(<[f32]>::to_vec).collect();
    for precision in [GraphPrecision::F32, GraphPrecision::F16, GraphPrecision::Bf16] {
        let dir = tempfile::tempdir().unwrap();
        let params = HnswParams { precision, ..HnswParams::default() };
        write_index(dir.path(), &descriptions(count), &vectors, dim, "synthetic", Some(params)).unwrap();
        let index = SemanticIndex::open(dir.path(), model::tch::Device::Cpu).unwrap();
        assert_eq!(index.manifest().hnsw.map(|p| p.precision), Some(precision));
        let exact = index.search(&queries, 5, SearchMode::Exact).unwrap();
        let ann = index.search(&queries, 5, SearchMode::Approximate { ef: DEFAULT_EF }).unwrap();
        let found: usize = exact.iter().zip(&ann).map(|(e, a)| a.iter().filter(|h| e.iter().any(|x| x.row == h.row)).count()).sum();
        assert!(found as f64 / 500.0 >= 0.95, "{precision:?}: recall@5 {}", found as f64 / 500.0);
        if precision == GraphPrecision::F32 {
            // Manifests written before the precision was recorded describe f32 graphs.
            drop(index);
            let path = dir.path().join("index.json");
            let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            manifest["hnsw"].as_object_mut().unwrap().remove("precision");
            std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
            let index = SemanticIndex::open(dir.path(), model::tch::Device::Cpu).unwrap();
            assert_eq!(index.manifest().hnsw.map(|p| p.precision), Some(GraphPrecision::F32));
            assert_eq!(index.search(&queries, 5, SearchMode::Approximate { ef: DEFAULT_EF }).unwrap(), ann);
        }
    }
}
