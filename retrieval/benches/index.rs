//! Vector search on the benchmark vectors (see `benches/index/compare.sh`), measured the way
//! `benches/index/faiss_bench.py` measures faiss: build time, queries/s one at a time and in
//! batches of 64, recall@k against exact search for a sweep of `ef`. Prints one JSON line.
//!
//!     index DIR D K THREADS WORK_DIR

use std::path::PathBuf;
use std::time::Instant;

use retrieval::build::write_index;
use retrieval::index::{HnswParams, DEFAULT_EF};
use retrieval::{Description, Hit, SearchMode, SemanticIndex};

fn read_f32(path: &std::path::Path) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(path)?;
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

type Timed = (f64, f64, Vec<Vec<Hit>>);

fn qps(
    index: &SemanticIndex,
    queries: &[Vec<f32>],
    k: usize,
    mode: SearchMode,
    single_n: usize,
) -> Result<Timed, Box<dyn std::error::Error>> {
    let start = Instant::now();
    for q in &queries[..single_n] {
        index.search(std::slice::from_ref(q), k, mode)?;
    }
    let single = single_n as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut found = Vec::with_capacity(queries.len());
    for batch in queries.chunks(64) {
        found.extend(index.search(batch, k, mode)?);
    }
    Ok((single, queries.len() as f64 / start.elapsed().as_secs_f64(), found))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.len() != 5 {
        return Err("usage: index DIR D K THREADS WORK_DIR".into());
    }
    let dir = PathBuf::from(&args[0]);
    let (dim, k, threads): (usize, usize, usize) = (args[1].parse()?, args[2].parse()?, args[3].parse()?);
    let work = PathBuf::from(&args[4]);
    model::tch::set_num_threads(threads as i32);
    // Single exact queries and HNSW batches run on rayon's pool: the same thread count.
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    let base = read_f32(&dir.join("base.f32"))?;
    let queries: Vec<Vec<f32>> = read_f32(&dir.join("queries.f32"))?.chunks(dim).map(<[f32]>::to_vec).collect();
    let count = base.len() / dim;
    let descriptions: Vec<Description> =
        (0..count).map(|i| Description { id: i.to_string(), text: String::new(), level: None, category: None, source: None }).collect();

    // Iterating on search alone: STRATA_BENCH_REUSE_INDEX=1 keeps an index already in WORK_DIR
    // (build time then reads null). `compare.sh` always builds afresh.
    let reuse = std::env::var_os("STRATA_BENCH_REUSE_INDEX").is_some() && work.join("index.json").is_file();
    let start = Instant::now();
    if !reuse {
        write_index(&work, &descriptions, &base, dim, "synthetic", Some(HnswParams::default()))?;
    }
    let build_s = (!reuse).then(|| start.elapsed().as_secs_f64());
    drop(base);
    let start = Instant::now();
    let index = SemanticIndex::open(&work, model::tch::Device::Cpu)?;
    let open_s = start.elapsed().as_secs_f64();

    let (flat_single, flat_batch, truth) = qps(&index, &queries, k, SearchMode::Exact, 100)?;
    let mut sweep = Vec::new();
    for ef in [8usize, 10, 12, 16, 24, 32, 48, 64, 96, 128, DEFAULT_EF, 256] {
        let (single, batch, found) = qps(&index, &queries, k, SearchMode::Approximate { ef }, queries.len())?;
        let hits: usize = truth.iter().zip(&found).map(|(t, f)| f.iter().filter(|h| t.iter().any(|x| x.row == h.row)).count()).sum();
        sweep.push(
            serde_json::json!({"ef": ef, "recall": hits as f64 / (k * queries.len()) as f64, "qps_single": single, "qps_batch64": batch}),
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": "strata retrieval (libtorch exact; usearch 2.26.6 HNSW graph in bf16, prefetching search, exact re-scoring)", "count": count, "queries": queries.len(), "threads": threads,
            "build_with_hnsw_s": build_s, "open_s": open_s, "default_ef": DEFAULT_EF,
            "flat_qps_single": flat_single, "flat_qps_batch64": flat_batch, "hnsw_sweep": sweep,
        })
    );
    Ok(())
}
