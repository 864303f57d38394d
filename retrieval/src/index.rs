//! Opening and searching an index directory (layout in the crate docs).

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::RetrievalError;
use crate::database::{Description, read_parquet};

/// `format` of every `index.json`.
pub const INDEX_FORMAT: &str = "strata-index/1";
/// The HNSW graph file.
pub const GRAPH_FILE: &str = "hnsw.usearch";
/// Rows per block of the exact search (bounds the score matrix at queries × this).
const EXACT_BLOCK_ROWS: i64 = 131_072;

/// HNSW construction settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Links per node (`M`).
    pub m: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self { m: 32, ef_construction: 200 }
    }
}

/// `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexManifest {
    /// Always [`INDEX_FORMAT`].
    pub format: String,
    /// Embedding width.
    pub dim: usize,
    /// Number of descriptions (rows).
    pub count: usize,
    /// The encoder that produced the embeddings.
    pub encoder: String,
    /// HNSW settings when the graph was built.
    #[serde(default)]
    pub hnsw: Option<HnswParams>,
    /// sha256 of the graph file.
    #[serde(default)]
    pub graph_sha256: Option<String>,
}

/// How to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    /// Every vector (blocked matrix products).
    Exact,
    /// The HNSW graph; larger `ef` finds more of the true neighbours, slower.
    Approximate {
        /// Candidate list size while searching (at least k).
        ef: usize,
    },
}

/// Default `ef` for approximate search.
pub const DEFAULT_EF: usize = 160;

/// One result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Row of the description.
    pub row: usize,
    /// Cosine similarity.
    pub score: f32,
}

/// An opened index.
pub struct SemanticIndex {
    manifest: IndexManifest,
    descriptions: Vec<Description>,
    /// `[count, dim]`; on the CPU it is a view of `mapping`.
    matrix: Tensor,
    hnsw: Option<Graph>,
    dir: PathBuf,
    // Declared last: dropped after `matrix`, which may point into it.
    mapping: Mmap,
}

impl std::fmt::Debug for SemanticIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SemanticIndex").field("dir", &self.dir).field("manifest", &self.manifest).finish_non_exhaustive()
    }
}

fn index_error(path: &Path, reason: impl Into<String>) -> RetrievalError {
    RetrievalError::Index { path: path.to_owned(), reason: reason.into() }
}

/// Reads `index.json`.
///
/// # Errors
/// [`RetrievalError::Index`] when it is missing or malformed.
pub fn read_manifest(dir: &Path) -> Result<IndexManifest, RetrievalError> {
    let path = dir.join("index.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| index_error(&path, format!("cannot read ({e}); is this an index built by `strata index build`?")))?;
    let manifest: IndexManifest = serde_json::from_str(&text).map_err(|e| index_error(&path, format!("malformed: {e}")))?;
    if manifest.format != INDEX_FORMAT {
        return Err(index_error(&path, format!("format `{}` is not `{INDEX_FORMAT}`", manifest.format)));
    }
    Ok(manifest)
}

impl SemanticIndex {
    /// Opens an index: the descriptions are read, the embeddings memory-mapped (and copied to
    /// `device` when it is a GPU), the HNSW graph loaded when present.
    ///
    /// # Errors
    /// [`RetrievalError::Index`] naming the file that is missing, truncated or corrupt.
    pub fn open(dir: &Path, device: Device) -> Result<Self, RetrievalError> {
        let manifest = read_manifest(dir)?;
        let descriptions = read_parquet(&dir.join("descriptions.parquet"))?;
        if descriptions.len() != manifest.count {
            return Err(index_error(
                &dir.join("descriptions.parquet"),
                format!("{} rows, index.json says {}", descriptions.len(), manifest.count),
            ));
        }
        let path = dir.join("embeddings.f32");
        let file = std::fs::File::open(&path).map_err(|e| index_error(&path, format!("cannot open: {e}")))?;
        let expected = manifest.count * manifest.dim * 4;
        let actual = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
        if actual != expected || expected == 0 {
            return Err(index_error(
                &path,
                format!(
                    "{actual} bytes, expected {expected} ({} × {} f32); the file is truncated or corrupt",
                    manifest.count, manifest.dim
                ),
            ));
        }
        // SAFETY: read-only private mapping of a file the index owns; see the field comment
        // for the lifetime of views into it.
        let mapping = unsafe { Mmap::map(&file) }.map_err(|e| index_error(&path, e.to_string()))?;
        let shape = [manifest.count as i64, manifest.dim as i64];
        // SAFETY: the mapping holds exactly count × dim f32 (checked above), is page-aligned,
        // and outlives `matrix` (field order); the tensor is only read.
        let view = unsafe { Tensor::from_blob(mapping.as_ptr(), &shape, &[shape[1], 1], Kind::Float, Device::Cpu) };
        let matrix = if device == Device::Cpu { view } else { view.to_device(device) };
        let hnsw = match (&manifest.hnsw, &manifest.graph_sha256) {
            (Some(params), Some(sha)) => Some(Graph::open(dir, &manifest, *params, sha)?),
            (Some(_), None) => return Err(index_error(&dir.join("index.json"), "an HNSW graph is named without its sha256")),
            _ => None,
        };
        Ok(Self { manifest, descriptions, matrix, hnsw, dir: dir.to_owned(), mapping })
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.manifest.count
    }

    /// Whether the index is empty (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.manifest.count == 0
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.manifest.dim
    }

    /// Its manifest.
    pub fn manifest(&self) -> &IndexManifest {
        &self.manifest
    }

    /// Whether an HNSW graph was built.
    pub fn has_ann(&self) -> bool {
        self.hnsw.is_some()
    }

    /// The description of `row`.
    pub fn description(&self, row: usize) -> &Description {
        &self.descriptions[row]
    }

    /// The stored vector of `row`.
    pub fn vector(&self, row: usize) -> &[f32] {
        let dim = self.manifest.dim;
        let bytes = &self.mapping[row * dim * 4..(row + 1) * dim * 4];
        // SAFETY: the mapping is page-aligned and holds f32 rows; `row` is in range (indexing
        // above panics otherwise, as slice indexing does).
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), dim) }
    }

    /// The `k` nearest descriptions of each query vector (L2-normalised, `dim` wide).
    ///
    /// # Errors
    /// [`RetrievalError::Query`] for a wrong width, `k = 0`, or approximate search on an
    /// index without a graph.
    pub fn search(&self, queries: &[Vec<f32>], k: usize, mode: SearchMode) -> Result<Vec<Vec<Hit>>, RetrievalError> {
        if k == 0 {
            return Err(RetrievalError::Query { reason: "k must be at least 1".into() });
        }
        if let Some(bad) = queries.iter().position(|q| q.len() != self.manifest.dim) {
            return Err(RetrievalError::Query {
                reason: format!("query {bad} has {} dimensions, the index has {}", queries[bad].len(), self.manifest.dim),
            });
        }
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        match mode {
            SearchMode::Exact => Ok(self.search_exact(queries, k)),
            SearchMode::Approximate { ef } => {
                let graph = self.hnsw.as_ref().ok_or_else(|| RetrievalError::Query {
                    reason: "this index has no HNSW graph; rebuild it with one or search exactly".into(),
                })?;
                graph.search(queries, k, ef.max(k))
            }
        }
    }

    fn search_exact(&self, queries: &[Vec<f32>], k: usize) -> Vec<Vec<Hit>> {
        let device = self.matrix.device();
        let flat: Vec<f32> = queries.iter().flatten().copied().collect();
        let q = Tensor::from_slice(&flat).view([queries.len() as i64, self.manifest.dim as i64]).to_device(device);
        let count = self.manifest.count as i64;
        let k = (k as i64).min(count);
        let (mut best_scores, mut best_rows): (Vec<Tensor>, Vec<Tensor>) = (Vec::new(), Vec::new());
        tch::no_grad(|| {
            let mut start = 0;
            while start < count {
                let rows = EXACT_BLOCK_ROWS.min(count - start);
                let block = self.matrix.narrow(0, start, rows);
                // One query is a matrix-vector product: BLAS GEMV streams the rows once, where a
                // 1-row GEMM is markedly slower.
                let scores = if queries.len() == 1 { block.mv(&q.get(0)).unsqueeze(0) } else { q.matmul(&block.transpose(0, 1)) };
                let (values, indices) = scores.topk(k.min(rows), 1, true, true);
                best_scores.push(values);
                best_rows.push(indices + start);
                start += rows;
            }
        });
        let (scores, order) = Tensor::cat(&best_scores, 1).topk(k, 1, true, true);
        let rows = Tensor::cat(&best_rows, 1).gather(1, &order, false);
        let scores = Vec::<f32>::try_from(scores.to_device(Device::Cpu).flatten(0, 1)).unwrap_or_default();
        let rows = Vec::<i64>::try_from(rows.to_device(Device::Cpu).flatten(0, 1)).unwrap_or_default();
        scores
            .chunks(k as usize)
            .zip(rows.chunks(k as usize))
            .map(|(s, r)| s.iter().zip(r).map(|(score, row)| Hit { row: *row as usize, score: *score }).collect())
            .collect()
    }

    /// The texts of the `k` descriptions nearest to `embedding`, best first — what the
    /// prompter takes as retrieved descriptions.
    ///
    /// # Errors
    /// As [`SemanticIndex::search`].
    pub fn descriptions_for(&self, embedding: &[f32], k: usize, mode: SearchMode) -> Result<Vec<String>, RetrievalError> {
        let hits = self.search(&[embedding.to_vec()], k, mode)?;
        Ok(hits.into_iter().flatten().map(|h| self.descriptions[h.row].text.clone()).collect())
    }
}

/// The HNSW graph: a USearch index memory-mapped from `hnsw.usearch`.
struct Graph {
    index: usearch::Index,
    /// The `ef` last set: USearch keeps one search expansion per index.
    ef: std::sync::Mutex<usize>,
}

/// The options every graph is built and opened with.
pub(crate) fn graph_options(dim: usize, params: HnswParams) -> usearch::IndexOptions {
    usearch::IndexOptions {
        dimensions: dim,
        metric: usearch::MetricKind::IP,
        quantization: usearch::ScalarKind::F32,
        connectivity: params.m,
        expansion_add: params.ef_construction,
        expansion_search: DEFAULT_EF,
        multi: false,
    }
}

/// Lower-case hex sha256 of a file, streamed (the artifact hasher).
pub(crate) fn sha256_file(path: &Path) -> Result<String, RetrievalError> {
    Ok(model::artifact::sha256_file(path)?)
}

impl Graph {
    fn open(dir: &Path, manifest: &IndexManifest, params: HnswParams, sha: &str) -> Result<Self, RetrievalError> {
        let path = dir.join(GRAPH_FILE);
        if !path.is_file() {
            return Err(index_error(&path, "index.json names an HNSW graph but the file is missing"));
        }
        // The native reader trusts its input; a damaged file is refused here instead.
        if sha256_file(&path)? != sha {
            return Err(index_error(&path, "the HNSW graph is corrupt (sha256 differs from index.json); rebuild the index"));
        }
        let index = usearch::Index::new(&graph_options(manifest.dim, params)).map_err(|e| index_error(&path, e.to_string()))?;
        index.view(&path.to_string_lossy()).map_err(|e| index_error(&path, format!("cannot map the HNSW graph: {e}")))?;
        if index.size() != manifest.count {
            return Err(index_error(&path, format!("{} points in the graph, index.json says {}", index.size(), manifest.count)));
        }
        Ok(Self { index, ef: std::sync::Mutex::new(DEFAULT_EF) })
    }

    fn search(&self, queries: &[Vec<f32>], k: usize, ef: usize) -> Result<Vec<Vec<Hit>>, RetrievalError> {
        {
            let mut current = self.ef.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if *current != ef {
                self.index.change_expansion_search(ef);
                *current = ef;
            }
        }
        let one = |q: &Vec<f32>| -> Result<Vec<Hit>, RetrievalError> {
            let matches = self.index.search(q, k).map_err(|e| RetrievalError::Query { reason: format!("HNSW search failed: {e}") })?;
            Ok(matches
                .keys
                .iter()
                .zip(&matches.distances)
                .map(|(key, distance)| Hit { row: *key as usize, score: 1.0 - distance })
                .collect())
        };
        if queries.len() == 1 {
            return Ok(vec![one(&queries[0])?]);
        }
        // Batches are split across threads; the graph is safe to search concurrently.
        let threads = std::thread::available_parallelism().map_or(1, usize::from).min(queries.len());
        let chunk = queries.len().div_ceil(threads);
        let results: Vec<Result<Vec<Vec<Hit>>, RetrievalError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = queries.chunks(chunk).map(|part| scope.spawn(move || part.iter().map(one).collect())).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(RetrievalError::Query { reason: "a search thread failed".into() })))
                .collect()
        });
        let mut out = Vec::with_capacity(queries.len());
        for part in results {
            out.extend(part?);
        }
        Ok(out)
    }
}
