//! Opening and searching an index directory (layout in the crate docs).

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use model::tch::{Device, Kind, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::database::{read_parquet, Description};
use crate::walk::{prefetch, GraphFile};
use crate::RetrievalError;

/// `format` of every `index.json`.
pub const INDEX_FORMAT: &str = "strata-index/1";
/// The HNSW graph file.
pub const GRAPH_FILE: &str = "hnsw.usearch";
/// Rows per block of the exact search (bounds the score matrix at queries × this).
const EXACT_BLOCK_ROWS: i64 = 131_072;

/// How the graph stores its copy of the vectors. The graph only picks candidates: their
/// scores are always recomputed from the exact f32 embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GraphPrecision {
    /// Full precision (4 bytes per value).
    F32,
    /// IEEE half precision (2 bytes per value).
    F16,
    /// bfloat16 (2 bytes per value): half the memory traffic of f32, widened to f32 in
    /// registers with one shift; rounding moves scores by ~0.2 %, which barely changes which
    /// points are the nearest.
    #[default]
    Bf16,
}

impl GraphPrecision {
    fn scalar_kind(self) -> usearch::ScalarKind {
        match self {
            Self::F32 => usearch::ScalarKind::F32,
            Self::F16 => usearch::ScalarKind::F16,
            Self::Bf16 => usearch::ScalarKind::BF16,
        }
    }
}

/// Graphs written before the precision was recorded hold f32 vectors.
fn legacy_precision() -> GraphPrecision {
    GraphPrecision::F32
}

/// HNSW construction settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Links per node (`M`).
    pub m: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
    /// How the graph stores vectors.
    #[serde(default = "legacy_precision")]
    pub precision: GraphPrecision,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self { m: 32, ef_construction: 200, precision: GraphPrecision::default() }
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

/// The graph proposes this many candidates per requested hit; re-scoring them exactly
/// repairs the near-ties that rounded graph distances put in the wrong order.
const RESCORED_CANDIDATES_PER_HIT: usize = 2;

/// Default `ef` for approximate search, chosen for recall over speed: recall@5 1.000 on
/// 1M × 512 clustered vectors (`benches/index/compare.sh`, where ef = 32 already gives 0.97),
/// and ≥ 0.95 on the noisier clusters of `retrieval/tests/index.rs`, where ef = 64 gives 0.91.
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

/// Copies a 1-D tensor into a `Vec`, naming `what` was read when libtorch refuses: a failed
/// read must be an error, never an empty list of hits.
fn read_back<T: model::tch::kind::Element + Copy>(tensor: &Tensor, dir: &Path, what: &str) -> Result<Vec<T>, RetrievalError> {
    Vec::<T>::try_from(tensor).map_err(|e| index_error(dir, format!("reading {what} back from the device failed: {e}")))
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
        row_of(&self.mapping, self.manifest.dim, row)
    }

    /// The `k` nearest descriptions of each query vector (L2-normalised, `dim` wide).
    ///
    /// # Errors
    /// [`RetrievalError::Query`] for a wrong width, `k = 0`, or approximate search on an
    /// index without a graph; [`RetrievalError::Index`] when the exact search's results cannot
    /// be read back from the device.
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
            // One query on the CPU: a multi-threaded scan with SIMD dot products reads the
            // matrix once and keeps k hits per thread; libtorch's GEMV + topk is slower here.
            SearchMode::Exact if queries.len() == 1 && self.matrix.device() == Device::Cpu => {
                Ok(vec![scan_exact(&self.mapping, self.manifest.dim, &queries[0], k)])
            }
            SearchMode::Exact => self.search_exact(queries, k),
            SearchMode::Approximate { ef } => {
                let graph = self.hnsw.as_ref().ok_or_else(|| RetrievalError::Query {
                    reason: "this index has no HNSW graph; rebuild it with one or search exactly".into(),
                })?;
                let (mapping, dim) = (&self.mapping, self.manifest.dim);
                let one = |query: &Vec<f32>| graph.search(mapping, dim, query, k, ef);
                if queries.len() == 1 {
                    return Ok(vec![one(&queries[0])]);
                }
                // Batches are spread over rayon's pool (kept warm, unlike spawned threads); the
                // graph is read-only, each thread searches with its own scratch state.
                Ok(queries.par_iter().map(one).collect())
            }
        }
    }

    fn search_exact(&self, queries: &[Vec<f32>], k: usize) -> Result<Vec<Vec<Hit>>, RetrievalError> {
        let device = self.matrix.device();
        let flat: Vec<f32> = queries.iter().flatten().copied().collect();
        let q = Tensor::from_slice(&flat).view([queries.len() as i64, self.manifest.dim as i64]).to_device(device);
        let count = self.manifest.count as i64;
        let k = (k as i64).min(count);
        let (mut best_scores, mut best_rows): (Vec<Tensor>, Vec<Tensor>) = (Vec::new(), Vec::new());
        model::tch::no_grad(|| {
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
        let scores = read_back::<f32>(&scores.to_device(Device::Cpu).flatten(0, 1), &self.dir, "the exact search's scores")?;
        let rows = read_back::<i64>(&rows.to_device(Device::Cpu).flatten(0, 1), &self.dir, "the exact search's rows")?;
        Ok(scores
            .chunks(k as usize)
            .zip(rows.chunks(k as usize))
            .map(|(s, r)| s.iter().zip(r).map(|(score, row)| Hit { row: *row as usize, score: *score }).collect())
            .collect())
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

/// The HNSW graph: built by USearch, searched by `walk::GraphFile`.
struct Graph {
    file: GraphFile,
}

/// The options every graph is built and opened with.
pub(crate) fn graph_options(dim: usize, params: HnswParams) -> usearch::IndexOptions {
    usearch::IndexOptions {
        dimensions: dim,
        metric: usearch::MetricKind::IP,
        quantization: params.precision.scalar_kind(),
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
        // A damaged file is refused before anything reads its offsets.
        if sha256_file(&path)? != sha {
            return Err(index_error(&path, "the HNSW graph is corrupt (sha256 differs from index.json); rebuild the index"));
        }
        let file = GraphFile::open(&path, manifest.dim, manifest.count, params.precision)
            .map_err(|reason| index_error(&path, format!("cannot read the HNSW graph: {reason}")))?;
        Ok(Self { file })
    }

    /// The best `k` of the graph's `2k` candidates, scored exactly against the stored f32
    /// vectors in `embeddings` and ordered by that score (the graph's own copy of the vectors
    /// may be rounded, see [`GraphPrecision`]).
    fn search(&self, embeddings: &[u8], dim: usize, query: &[f32], k: usize, ef: usize) -> Vec<Hit> {
        let candidates = self.file.search(query, ef, k * RESCORED_CANDIDATES_PER_HIT);
        for (row, _) in &candidates {
            prefetch(row_of(embeddings, dim, *row).as_ptr().cast(), dim * 4);
        }
        let mut hits: Vec<Hit> = candidates.iter().map(|&(row, _)| Hit { row, score: dot(row_of(embeddings, dim, row), query) }).collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(k);
        hits
    }
}

/// Row `row` of a page-aligned `[count, dim]` f32 mapping.
fn row_of(embeddings: &[u8], dim: usize, row: usize) -> &[f32] {
    let bytes = &embeddings[row * dim * 4..(row + 1) * dim * 4];
    // SAFETY: the mapping is page-aligned and holds f32 rows; `row` is in range (indexing
    // above panics otherwise, as slice indexing does).
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), dim) }
}

/// Rows per task of the exact scan.
const SCAN_ROWS: usize = 8192;

/// The `k` rows of `embeddings` with the largest inner product with `query`, best first.
fn scan_exact(embeddings: &[u8], dim: usize, query: &[f32], k: usize) -> Vec<Hit> {
    let count = embeddings.len() / (dim * 4);
    let best_per_block: Vec<Vec<Hit>> = (0..count.div_ceil(SCAN_ROWS))
        .into_par_iter()
        .map(|block| {
            let start = block * SCAN_ROWS;
            let mut best = TopK::new(k);
            for row in start..(start + SCAN_ROWS).min(count) {
                best.offer(Hit { row, score: dot(row_of(embeddings, dim, row), query) });
            }
            best.hits
        })
        .collect();
    let mut best = TopK::new(k);
    for hit in best_per_block.into_iter().flatten() {
        best.offer(hit);
    }
    best.hits
}

/// The best `k` hits seen so far, kept sorted best first (k is small).
struct TopK {
    k: usize,
    hits: Vec<Hit>,
}

impl TopK {
    fn new(k: usize) -> Self {
        Self { k, hits: Vec::with_capacity(k + 1) }
    }

    fn offer(&mut self, hit: Hit) {
        if self.hits.len() == self.k && self.hits.last().is_some_and(|worst| worst.score >= hit.score) {
            return;
        }
        let at = self.hits.partition_point(|h| h.score >= hit.score);
        self.hits.insert(at, hit);
        self.hits.truncate(self.k);
    }
}

/// Inner product; AVX2+FMA when the CPU has it (checked once), else portable lanes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS_AVX2_FMA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *HAS_AVX2_FMA.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            // SAFETY: the CPU supports both features (checked above).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

/// Eight independent lanes so the compiler vectorises it.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps,
        _mm_add_ps, _mm_cvtss_f32, _mm_hadd_ps,
    };
    let n = a.len().min(b.len());
    let (mut acc0, mut acc1): (__m256, __m256) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY (all loads): i + 16 <= n, resp. i + 8 <= n, bounds both slices.
    while i + 16 <= n {
        unsafe {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i + 8)), _mm256_loadu_ps(b.as_ptr().add(i + 8)), acc1);
        }
        i += 16;
    }
    while i + 8 <= n {
        unsafe {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), acc0);
        }
        i += 8;
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let quarter = _mm_hadd_ps(half, half);
    let sum = _mm_cvtss_f32(_mm_hadd_ps(quarter, quarter));
    sum + a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_read_back_is_an_error_naming_what_was_read() {
        let dir = Path::new("indexes/osm");
        let two_dimensional = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        let err = read_back::<f32>(&two_dimensional, dir, "the exact search's scores").unwrap_err();
        assert!(matches!(err, RetrievalError::Index { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("indexes/osm") && message.contains("reading the exact search's scores back"), "{message}");
        assert_eq!(read_back::<i64>(&Tensor::from_slice(&[3i64, 1]), dir, "rows").unwrap(), vec![3, 1]);
    }
}
