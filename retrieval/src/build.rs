//! Building an index directory: descriptions are embedded in shards that survive an
//! interruption (a rerun with the same inputs and encoder picks up after the last finished
//! shard), then joined into `embeddings.f32`, the HNSW graph is built, and `index.json` is
//! written last.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use model::encoders::TextEncoder;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::database::{read_inputs, write_parquet, Description};
use crate::index::{graph_options, sha256_file, HnswParams, IndexManifest, GRAPH_FILE, INDEX_FORMAT};
use crate::RetrievalError;

/// How to build.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildOptions {
    /// Descriptions per resumable shard.
    pub shard_size: usize,
    /// HNSW graph settings; `None` for an exact-only index.
    pub hnsw: Option<HnswParams>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self { shard_size: 4096, hnsw: Some(HnswParams::default()) }
    }
}

/// What a build did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    /// Descriptions indexed.
    pub count: usize,
    /// Shards reused from an interrupted build.
    pub resumed_shards: usize,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Plan {
    inputs_sha256: String,
    encoder: String,
    count: usize,
    dim: usize,
    shard_size: usize,
}

fn index_error(path: &Path, reason: impl std::fmt::Display) -> RetrievalError {
    RetrievalError::Index { path: path.to_owned(), reason: reason.to_string() }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RetrievalError> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes).map_err(|e| index_error(&partial, e))?;
    std::fs::rename(&partial, path).map_err(|e| index_error(path, e))
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Embeds the descriptions in `inputs` with `encoder` and writes an index to `out`.
/// `progress(done, total)` is called after every shard.
///
/// # Errors
/// [`RetrievalError::Input`] for bad inputs, [`RetrievalError::Model`] when encoding fails,
/// [`RetrievalError::Index`] when files cannot be written.
pub fn build_index(
    inputs: &[PathBuf],
    out: &Path,
    encoder: &mut TextEncoder,
    options: &BuildOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<BuildReport, RetrievalError> {
    let descriptions = read_inputs(inputs)?;
    let work = out.join(".build");
    std::fs::create_dir_all(&work).map_err(|e| index_error(&work, e))?;
    let mut hasher = Sha256::new();
    for d in &descriptions {
        hasher.update(serde_json::to_vec(d).unwrap_or_default());
    }
    let plan = Plan {
        inputs_sha256: hasher.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        encoder: encoder.name().to_owned(),
        count: descriptions.len(),
        dim: encoder.dim(),
        shard_size: options.shard_size.max(1),
    };
    let plan_path = work.join("plan.json");
    let previous: Option<Plan> = std::fs::read_to_string(&plan_path).ok().and_then(|t| serde_json::from_str(&t).ok());
    if previous.as_ref() != Some(&plan) {
        // Different inputs or encoder: nothing from an earlier build can be reused.
        std::fs::remove_dir_all(&work).map_err(|e| index_error(&work, e))?;
        std::fs::create_dir_all(&work).map_err(|e| index_error(&work, e))?;
        write_atomically(&plan_path, &serde_json::to_vec(&plan).unwrap_or_default())?;
    }
    let shards: Vec<&[Description]> = descriptions.chunks(plan.shard_size).collect();
    let mut resumed = 0;
    for (i, shard) in shards.iter().enumerate() {
        let path = work.join(format!("shard-{i:06}.f32"));
        let expected = shard.len() * plan.dim * 4;
        if std::fs::metadata(&path).is_ok_and(|m| m.len() as usize == expected) {
            resumed += 1;
        } else {
            let texts: Vec<String> = shard.iter().map(|d| d.text.clone()).collect();
            let vectors = encoder.encode(&texts)?;
            write_atomically(&path, &f32_bytes(&vectors.concat()))?;
        }
        progress(((i + 1) * plan.shard_size).min(descriptions.len()), descriptions.len());
    }
    let embeddings = out.join("embeddings.f32");
    {
        let partial = embeddings.with_extension("partial");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&partial).map_err(|e| index_error(&partial, e))?);
        for i in 0..shards.len() {
            let shard = std::fs::read(work.join(format!("shard-{i:06}.f32"))).map_err(|e| index_error(&work, e))?;
            file.write_all(&shard).map_err(|e| index_error(&partial, e))?;
        }
        file.flush().map_err(|e| index_error(&partial, e))?;
        drop(file);
        std::fs::rename(&partial, &embeddings).map_err(|e| index_error(&embeddings, e))?;
    }
    finish_index(out, &descriptions, plan.dim, encoder.name(), options.hnsw)?;
    std::fs::remove_dir_all(&work).map_err(|e| index_error(&work, e))?;
    Ok(BuildReport { count: descriptions.len(), resumed_shards: resumed })
}

/// Writes an index from vectors already at hand (`vectors`: `count × dim`, L2-normalised).
///
/// # Errors
/// [`RetrievalError::Index`] when files cannot be written or sizes disagree.
pub fn write_index(
    out: &Path,
    descriptions: &[Description],
    vectors: &[f32],
    dim: usize,
    encoder: &str,
    hnsw: Option<HnswParams>,
) -> Result<(), RetrievalError> {
    if dim == 0 || vectors.len() != descriptions.len() * dim {
        return Err(index_error(out, format!("{} values for {} descriptions of width {dim}", vectors.len(), descriptions.len())));
    }
    std::fs::create_dir_all(out).map_err(|e| index_error(out, e))?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(out.join("embeddings.f32")).map_err(|e| index_error(out, e))?);
    for chunk in vectors.chunks(1 << 16) {
        file.write_all(&f32_bytes(chunk)).map_err(|e| index_error(out, e))?;
    }
    file.flush().map_err(|e| index_error(out, e))?;
    drop(file);
    finish_index(out, descriptions, dim, encoder, hnsw)
}

/// Builds the graph from `embeddings.f32`, writes the descriptions, then `index.json`.
fn finish_index(
    out: &Path,
    descriptions: &[Description],
    dim: usize,
    encoder: &str,
    hnsw: Option<HnswParams>,
) -> Result<(), RetrievalError> {
    let _ = std::fs::remove_file(out.join("index.json"));
    write_parquet(&out.join("descriptions.parquet"), descriptions)?;
    let mut graph_sha256 = None;
    if let Some(params) = hnsw {
        let path = out.join("embeddings.f32");
        let file = std::fs::File::open(&path).map_err(|e| index_error(&path, e))?;
        // SAFETY: read-only mapping of the file just written, dropped before this returns.
        let mapping = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| index_error(&path, e))?;
        // SAFETY: page-aligned, holds count × dim f32 written above.
        let values = unsafe { std::slice::from_raw_parts(mapping.as_ptr().cast::<f32>(), mapping.len() / 4) };
        let graph_path = out.join(GRAPH_FILE);
        let graph = usearch::Index::new(&graph_options(dim, params)).map_err(|e| index_error(&graph_path, e))?;
        // One USearch context per rayon worker: rows are added from the pool in parallel.
        graph.reserve_capacity_and_threads(descriptions.len(), rayon::current_num_threads()).map_err(|e| index_error(&graph_path, e))?;
        let failure = values
            .par_chunks(dim)
            .enumerate()
            .find_map_any(|(row, vector)| graph.add(row as u64, vector).err().map(|e| format!("row {row}: {e}")));
        if let Some(failure) = failure {
            return Err(index_error(&graph_path, format!("building the HNSW graph: {failure}")));
        }
        graph.save(&graph_path.to_string_lossy()).map_err(|e| index_error(&graph_path, format!("writing the HNSW graph: {e}")))?;
        graph_sha256 = Some(sha256_file(&graph_path)?);
    }
    let manifest =
        IndexManifest { format: INDEX_FORMAT.to_owned(), dim, count: descriptions.len(), encoder: encoder.to_owned(), hnsw, graph_sha256 };
    write_atomically(&out.join("index.json"), &serde_json::to_vec_pretty(&manifest).unwrap_or_default())
}
