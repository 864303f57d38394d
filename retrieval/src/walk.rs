//! The HNSW search over a graph file that USearch built.
//!
//! USearch builds the graph and writes `hnsw.usearch`; this module reads that file (memory-mapped,
//! every offset and link checked once on open) and runs the standard HNSW search over it: greedy
//! descent through the upper layers, then a best-first beam of `ef` candidates on the base layer.
//! It exists for speed. USearch's own search scores each neighbour through a function pointer and
//! never prefetches, so on a graph far larger than the CPU caches (1M × 512 is a gigabyte of
//! vectors) each score waits on main memory in turn. Here every unvisited neighbour's vector is
//! prefetched before any of them is scored, four are scored at once, and the dot products are
//! SIMD kernels for the graph's precision, chosen once per process. The unit tests at the bottom
//! hold this walk to USearch's own search on the same file.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::path::Path;

use memmap2::Mmap;

use crate::index::GraphPrecision;

/// `index_dense_head_t`: 64 bytes after the vectors.
const DENSE_HEAD_BYTES: usize = 64;
const MAGIC: &[u8] = b"usearch";
/// `index_serialized_header_t`: size, connectivity, connectivity_base, max_level, entry_slot.
const GRAPH_HEAD_BYTES: usize = 40;
/// A node starts with its key (u64) and its level (i16).
const NODE_HEAD_BYTES: usize = 10;
/// `scalar_kind_t` codes.
const SCALAR_BF16: u8 = 4;
const SCALAR_F32: u8 = 11;
const SCALAR_F16: u8 = 12;
const KEY_U64: u8 = 14;
const SLOT_U32: u8 = 15;
const METRIC_IP: u8 = b'i';

/// A memory-mapped USearch HNSW file.
pub(crate) struct GraphFile {
    mapping: Mmap,
    layout: Layout,
}

/// Where things are in the file.
struct Layout {
    dim: usize,
    precision: GraphPrecision,
    /// Byte offset of slot 0's vector; slot `s` is `bytes_per_vector` further per slot.
    vectors_at: usize,
    bytes_per_vector: usize,
    /// Byte offset of each slot's node.
    nodes_at: Vec<usize>,
    base_list_bytes: usize,
    list_bytes: usize,
    max_level: usize,
    entry_slot: u32,
}

impl std::fmt::Debug for GraphFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphFile").field("dim", &self.layout.dim).field("nodes", &self.layout.nodes_at.len()).finish_non_exhaustive()
    }
}

/// Little-endian integers at byte offsets, bounds-checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes<const N: usize>(&self, at: usize) -> Result<[u8; N], String> {
        self.0
            .get(at..at + N)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("truncated: {N} bytes wanted at offset {at}, the file has {}", self.0.len()))
    }
    fn u8(&self, at: usize) -> Result<u8, String> {
        Ok(self.bytes::<1>(at)?[0])
    }
    fn u32(&self, at: usize) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes(at)?))
    }
    fn u64(&self, at: usize) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes(at)?))
    }
    fn i16(&self, at: usize) -> Result<i16, String> {
        Ok(i16::from_le_bytes(self.bytes(at)?))
    }
}

fn size(value: u64, what: &str) -> Result<usize, String> {
    usize::try_from(value).map_err(|_| format!("{what} {value} does not fit in memory"))
}

impl GraphFile {
    /// Maps and checks the file: header, precision and width as expected, every node inside
    /// the file, every link to an existing node, every key a row below `rows`, no key twice.
    /// After this, the search reads the file without bounds checks.
    pub(crate) fn open(path: &Path, dim: usize, rows: usize, precision: GraphPrecision) -> Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        // SAFETY: a read-only private mapping of a file the index owns; nothing writes it while open.
        let mapping = unsafe { Mmap::map(&file) }.map_err(|e| format!("cannot map: {e}"))?;
        let layout = Layout::parse(&mapping, dim, rows, precision)?;
        #[cfg(unix)]
        {
            // Searches jump all over the file: read-ahead would only evict useful pages.
            let _ = mapping.advise(memmap2::Advice::Random);
        }
        Ok(Self { mapping, layout })
    }
}

impl Layout {
    fn parse(bytes: &[u8], dim: usize, rows: usize, precision: GraphPrecision) -> Result<Self, String> {
        let read = Reader(bytes);
        let count = read.u32(0)? as usize;
        let bytes_per_vector = read.u32(4)? as usize;
        let (scalar_bytes, scalar_code) = match precision {
            GraphPrecision::F32 => (4, SCALAR_F32),
            GraphPrecision::F16 => (2, SCALAR_F16),
            GraphPrecision::Bf16 => (2, SCALAR_BF16),
        };
        if count != rows {
            return Err(format!("{count} vectors in the graph, index.json says {rows}"));
        }
        if bytes_per_vector != dim * scalar_bytes {
            return Err(format!("{bytes_per_vector} bytes per vector, expected {dim} × {scalar_bytes} ({precision:?})"));
        }
        let vectors_at = 8;
        let head = vectors_at + count.checked_mul(bytes_per_vector).ok_or("vector matrix too large")?;
        if read.bytes::<7>(head)? != MAGIC {
            return Err("no USearch header after the vectors".into());
        }
        let major = u16::from_le_bytes(read.bytes(head + 7)?);
        if major != 2 {
            return Err(format!("USearch file format {major}.x, this build reads 2.x"));
        }
        let (metric, scalar, key, slot) = (read.u8(head + 13)?, read.u8(head + 14)?, read.u8(head + 15)?, read.u8(head + 16)?);
        if metric != METRIC_IP || scalar != scalar_code || key != KEY_U64 || slot != SLOT_U32 {
            return Err(format!(
                "unexpected kinds (metric {metric}, scalar {scalar}, key {key}, slot {slot}); expected inner product, {precision:?}, u64 keys, u32 slots"
            ));
        }
        let (deleted, dims, multi) = (read.u64(head + 25)?, read.u64(head + 33)?, read.u8(head + 41)?);
        if deleted != 0 || multi != 0 || dims != dim as u64 {
            return Err(format!("{dims} dimensions, {deleted} deleted entries, multi = {multi}; expected {dim}, 0, 0"));
        }

        let graph = head + DENSE_HEAD_BYTES;
        let nodes = size(read.u64(graph)?, "node count")?;
        let connectivity = size(read.u64(graph + 8)?, "connectivity")?;
        let connectivity_base = size(read.u64(graph + 16)?, "base connectivity")?;
        let max_level = size(read.u64(graph + 24)?, "top level")?;
        let entry = size(read.u64(graph + 32)?, "entry slot")?;
        if nodes != count
            || entry >= nodes.max(1)
            || connectivity == 0
            || connectivity_base == 0
            || connectivity.max(connectivity_base) > 1 << 16
        {
            return Err(format!(
                "graph header: {nodes} nodes for {count} vectors, entry {entry}, connectivity {connectivity}/{connectivity_base}"
            ));
        }
        let list_bytes = 4 + 4 * connectivity;
        let base_list_bytes = 4 + 4 * connectivity_base;

        let levels_at = graph + GRAPH_HEAD_BYTES;
        let mut at = levels_at + 2 * nodes;
        let mut nodes_at = Vec::with_capacity(nodes);
        let mut seen = vec![false; rows];
        for slot in 0..nodes {
            let level = read.i16(levels_at + 2 * slot)?;
            let level = usize::try_from(level)
                .ok()
                .filter(|l| *l <= max_level)
                .ok_or_else(|| format!("node {slot} has level {level}, the graph's top level is {max_level}"))?;
            if read.i16(at + 8)? != level as i16 {
                return Err(format!("node {slot}: its level differs from the level table"));
            }
            let key = read.u64(at)?;
            let row =
                usize::try_from(key).ok().filter(|r| *r < rows).ok_or_else(|| format!("node {slot} has key {key}, beyond {rows} rows"))?;
            if std::mem::replace(&mut seen[row], true) {
                return Err(format!("key {key} appears twice"));
            }
            let mut list = at + NODE_HEAD_BYTES;
            for layer in 0..=level {
                let capacity = if layer == 0 { connectivity_base } else { connectivity };
                let links = read.u32(list)? as usize;
                if links > capacity {
                    return Err(format!("node {slot} layer {layer}: {links} links, room for {capacity}"));
                }
                for i in 0..links {
                    let target = read.u32(list + 4 + 4 * i)? as usize;
                    if target >= nodes {
                        return Err(format!("node {slot} layer {layer} links to node {target}, beyond {nodes}"));
                    }
                    // The walk reads the target's links on this layer next.
                    if layer > 0 && read.i16(levels_at + 2 * target)? < layer as i16 {
                        return Err(format!("node {slot} layer {layer} links to node {target}, which is not on that layer"));
                    }
                }
                list += if layer == 0 { base_list_bytes } else { list_bytes };
            }
            nodes_at.push(at);
            at = list;
        }
        if nodes > 0 && (read.i16(levels_at + 2 * entry)? as usize) < max_level {
            return Err(format!("entry node {entry} is not on the top level {max_level}"));
        }
        if at > bytes.len() {
            return Err(format!("truncated: nodes end at {at}, the file has {}", bytes.len()));
        }
        Ok(Self {
            dim,
            precision,
            vectors_at,
            bytes_per_vector,
            nodes_at,
            base_list_bytes,
            list_bytes,
            max_level,
            entry_slot: entry as u32,
        })
    }
}

impl GraphFile {
    fn vector(&self, slot: u32) -> *const u8 {
        // SAFETY: slots come from the entry point or from links, all checked below the node
        // count on open; the matrix of that many vectors was checked to lie inside the mapping.
        unsafe { self.mapping.as_ptr().add(self.layout.vectors_at + slot as usize * self.layout.bytes_per_vector) }
    }

    /// The links of `slot` on `layer` (which must be at most the node's level).
    fn links(&self, slot: u32, layer: usize) -> &[[u8; 4]] {
        let node = self.layout.nodes_at[slot as usize] + NODE_HEAD_BYTES;
        let list = if layer == 0 { node } else { node + self.layout.base_list_bytes + (layer - 1) * self.layout.list_bytes };
        let bytes = &self.mapping[list..list + 4];
        let links = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let slots = &self.mapping[list + 4..list + 4 + 4 * links];
        // SAFETY: [u8; 4] has alignment 1; the length is a multiple of 4.
        unsafe { std::slice::from_raw_parts(slots.as_ptr().cast::<[u8; 4]>(), links) }
    }

    fn key(&self, slot: u32) -> usize {
        let at = self.layout.nodes_at[slot as usize];
        let mut key = [0u8; 8];
        key.copy_from_slice(&self.mapping[at..at + 8]);
        u64::from_le_bytes(key) as usize
    }

    /// The `want` best rows for `query` (by the graph's scores: inner products with its copy
    /// of the vectors), best first, from a beam of `max(ef, want)` candidates.
    pub(crate) fn search(&self, query: &[f32], ef: usize, want: usize) -> Vec<(usize, f32)> {
        // The kernels read as many values from each stored vector as the query has.
        assert_eq!(query.len(), self.layout.dim, "query width differs from the graph's (callers check it)");
        if self.layout.nodes_at.is_empty() || want == 0 {
            return Vec::new();
        }
        let kernel = Kernel::detect();
        match self.layout.precision {
            GraphPrecision::F32 => self.walk::<F32>(kernel, query, ef.max(want), want),
            GraphPrecision::F16 => self.walk::<F16>(kernel, query, ef.max(want), want),
            GraphPrecision::Bf16 => self.walk::<Bf16>(kernel, query, ef.max(want), want),
        }
    }

    fn walk<E: Element>(&self, kernel: Kernel, query: &[f32], ef: usize, want: usize) -> Vec<(usize, f32)> {
        let score = |slot: u32| kernel.dot::<E>(query, self.vector(slot));

        // Upper layers: move greedily to the best neighbour until none is better.
        let mut here = self.layout.entry_slot;
        let mut here_score = score(here);
        for layer in (1..=self.layout.max_level).rev() {
            loop {
                let mut moved = false;
                for link in self.links(here, layer) {
                    let next = u32::from_le_bytes(*link);
                    let s = score(next);
                    if s > here_score {
                        (here, here_score) = (next, s);
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }

        SCRATCH.with_borrow_mut(|scratch| {
            let Scratch { visited, frontier, beam, fresh } = scratch;
            visited.start(self.layout.nodes_at.len());
            frontier.clear();
            beam.clear();
            visited.insert(here);
            frontier.push(Best(here_score, here));
            beam.push(Reverse(Best(here_score, here)));
            while let Some(Best(candidate_score, candidate)) = frontier.pop() {
                let worst = beam.peek().map_or(f32::NEG_INFINITY, |w| w.0 .0);
                if beam.len() >= ef && candidate_score < worst {
                    break;
                }
                // Claim the unvisited neighbours and start fetching all their vectors before
                // scoring any: the loads overlap instead of queueing one behind the other.
                fresh.clear();
                for link in self.links(candidate, 0) {
                    let slot = u32::from_le_bytes(*link);
                    if visited.insert(slot) {
                        prefetch(self.vector(slot), self.layout.bytes_per_vector);
                        fresh.push(slot);
                    }
                }
                if let Some(Best(_, upcoming)) = frontier.peek() {
                    let node = self.layout.nodes_at[*upcoming as usize];
                    prefetch(self.mapping[node..].as_ptr(), NODE_HEAD_BYTES + self.layout.base_list_bytes);
                }
                let offer = |s: f32, slot: u32, beam: &mut BinaryHeap<Worst>, frontier: &mut BinaryHeap<Best>| {
                    if beam.len() < ef || s > beam.peek().map_or(f32::NEG_INFINITY, |w| w.0 .0) {
                        frontier.push(Best(s, slot));
                        beam.push(Reverse(Best(s, slot)));
                        if beam.len() > ef {
                            beam.pop();
                        }
                    }
                };
                let mut quads = fresh.chunks_exact(4);
                for quad in &mut quads {
                    let scores = kernel.dot4::<E>(query, [quad[0], quad[1], quad[2], quad[3]].map(|s| self.vector(s)));
                    for (s, slot) in scores.into_iter().zip(quad) {
                        offer(s, *slot, beam, frontier);
                    }
                }
                for slot in quads.remainder() {
                    offer(score(*slot), *slot, beam, frontier);
                }
            }
            let mut best: Vec<(usize, f32)> = beam.drain().map(|Reverse(Best(s, slot))| (self.key(slot), s)).collect();
            best.sort_by(|a, b| b.1.total_cmp(&a.1));
            best.truncate(want);
            best
        })
    }
}

/// Per-thread search state, reused across searches.
#[derive(Default)]
struct Scratch {
    visited: Visited,
    /// Candidates still to expand, best first.
    frontier: BinaryHeap<Best>,
    /// The best `ef` seen, worst first.
    beam: BinaryHeap<Worst>,
    /// Neighbours claimed in the current expansion.
    fresh: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Visited marks as generation stamps: starting a search is one increment, not a clear.
#[derive(Default)]
struct Visited {
    stamps: Vec<u16>,
    generation: u16,
}

impl Visited {
    fn start(&mut self, nodes: usize) {
        if self.stamps.len() < nodes {
            self.stamps = vec![0; nodes];
            self.generation = 0;
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamps.fill(0);
            self.generation = 1;
        }
    }

    /// Marks `slot`; false when it was already marked in this search.
    fn insert(&mut self, slot: u32) -> bool {
        let stamp = &mut self.stamps[slot as usize];
        let fresh = *stamp != self.generation;
        *stamp = self.generation;
        fresh
    }
}

/// A node and its score, ordered by score (ties by slot), so a max-heap has the best on top
/// and a max-heap of [`Worst`] the worst.
#[derive(Clone, Copy)]
struct Best(f32, u32);
type Worst = Reverse<Best>;

impl PartialEq for Best {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Best {}
impl PartialOrd for Best {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Best {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(other.1.cmp(&self.1))
    }
}

/// Asks the CPU to start loading `bytes` bytes at `at` into its caches.
#[inline]
pub(crate) fn prefetch(at: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let first = at as usize & !63;
        let mut line = first;
        while line < at as usize + bytes {
            // SAFETY: prefetching is a hint and never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, bytes);
}

/// How the graph stores one value.
trait Element {
    const BYTES: usize;
    /// Value `i` of the vector at `at` as f32.
    fn widen(at: *const u8, i: usize) -> f32;
    /// Eight values from `at` as f32 lanes.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(at: *const u8) -> std::arch::x86_64::__m256;
}

struct F32;
struct F16;
struct Bf16;

impl Element for F32 {
    const BYTES: usize = 4;
    fn widen(at: *const u8, i: usize) -> f32 {
        // SAFETY: callers index inside a vector of the mapping.
        unsafe { at.add(4 * i).cast::<f32>().read_unaligned() }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(at: *const u8) -> std::arch::x86_64::__m256 {
        // SAFETY: callers load inside a vector of the mapping.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(at.cast()) }
    }
}

impl Element for F16 {
    const BYTES: usize = 2;
    fn widen(at: *const u8, i: usize) -> f32 {
        // SAFETY: callers index inside a vector of the mapping.
        half::f16::from_bits(unsafe { at.add(2 * i).cast::<u16>().read_unaligned() }).to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(at: *const u8) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::{_mm256_cvtph_ps, _mm_loadu_si128};
        // SAFETY: callers load inside a vector of the mapping.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(at.cast())) }
    }
}

impl Element for Bf16 {
    const BYTES: usize = 2;
    fn widen(at: *const u8, i: usize) -> f32 {
        // SAFETY: callers index inside a vector of the mapping.
        f32::from_bits(u32::from(unsafe { at.add(2 * i).cast::<u16>().read_unaligned() }) << 16)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(at: *const u8) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::{_mm256_castsi256_ps, _mm256_cvtepu16_epi32, _mm256_slli_epi32, _mm_loadu_si128};
        // bf16 is the top half of an f32: widen to 32 bits and shift into place.
        // SAFETY: callers load inside a vector of the mapping.
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(at.cast())))) }
    }
}

/// The dot-product code path, picked once for the CPU. (AVX-512 kernels were tried: no
/// faster on the 1M × 512 benchmark, where the time goes to memory, not arithmetic.)
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Kernel {
    Avx2,
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                return Kernel::Avx2;
            }
            Kernel::Portable
        })
    }

    /// `query · vector`, the vector stored as `E` at `at`, as wide as the query.
    #[inline]
    fn dot<E: Element>(self, query: &[f32], at: *const u8) -> f32 {
        #[cfg(target_arch = "x86_64")]
        match self {
            // SAFETY: the CPU has the features (detected); `at` holds `query.len()` values.
            Kernel::Avx2 => return unsafe { avx2::dot4::<E, 1>(query, [at]) }[0],
            Kernel::Portable => {}
        }
        (0..query.len()).map(|i| query[i] * E::widen(at, i)).sum()
    }

    /// Four dot products at once: four independent streams of loads in flight.
    #[inline]
    fn dot4<E: Element>(self, query: &[f32], at: [*const u8; 4]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        match self {
            // SAFETY: as in `dot`.
            Kernel::Avx2 => return unsafe { avx2::dot4::<E, 4>(query, at) },
            Kernel::Portable => {}
        }
        at.map(|v| self.dot::<E>(query, v))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm_add_ps, _mm_cvtss_f32,
        _mm_hadd_ps,
    };

    use super::Element;

    /// `N` dot products of `query` with vectors stored as `E`.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; each pointer holds `query.len()` values of `E`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4<E: Element, const N: usize>(query: &[f32], at: [*const u8; N]) -> [f32; N] {
        let dim = query.len();
        let mut acc = [_mm256_setzero_ps(); N];
        let mut i = 0;
        while i + 8 <= dim {
            // SAFETY: i + 8 <= dim bounds the query and every vector.
            let q = unsafe { _mm256_loadu_ps(query.as_ptr().add(i)) };
            for n in 0..N {
                acc[n] = _mm256_fmadd_ps(q, unsafe { E::load8(at[n].add(i * E::BYTES)) }, acc[n]);
            }
            i += 8;
        }
        let mut out = [0f32; N];
        for n in 0..N {
            let half = _mm_add_ps(_mm256_castps256_ps128(acc[n]), _mm256_extractf128_ps::<1>(acc[n]));
            let quarter = _mm_hadd_ps(half, half);
            out[n] = _mm_cvtss_f32(_mm_hadd_ps(quarter, quarter)) + (i..dim).map(|j| query[j] * E::widen(at[n], j)).sum::<f32>();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{graph_options, HnswParams};

    /// Deterministic unit vectors around a few centres (no RNG dependency needed).
    fn clustered(count: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..16).map(|_| (0..dim).map(|_| next()).collect()).collect();
        (0..count)
            .map(|i| {
                let v: Vec<f32> = centres[i % centres.len()].iter().map(|c| c + 0.6 * next()).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect()
    }

    fn build(vectors: &[Vec<f32>], precision: GraphPrecision, path: &Path) -> usearch::Index {
        let params = HnswParams { m: 16, ef_construction: 100, precision };
        let graph = usearch::Index::new(&graph_options(vectors[0].len(), params)).expect("index");
        graph.reserve(vectors.len()).expect("reserve");
        // Keys in reverse so slots and keys differ, as they do when threads add in parallel.
        for (row, v) in vectors.iter().enumerate().rev() {
            graph.add(row as u64, v).expect("add");
        }
        graph.save(&path.to_string_lossy()).expect("save");
        graph
    }

    fn brute_force(vectors: &[Vec<f32>], query: &[f32], k: usize) -> Vec<usize> {
        let mut scored: Vec<(usize, f32)> = vectors.iter().map(|v| v.iter().zip(query).map(|(a, b)| a * b).sum()).enumerate().collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.into_iter().take(k).map(|(row, _)| row).collect()
    }

    /// Fraction of `found` rows that are in `expected`.
    fn overlap(found: &[usize], expected: &[usize]) -> f64 {
        found.iter().filter(|r| expected.contains(r)).count() as f64 / expected.len() as f64
    }

    #[test]
    fn walk_finds_what_usearch_finds_on_the_same_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (vectors, queries) = (clustered(4000, 48, 1), clustered(200, 48, 2));
        let (k, ef) = (10, 40);
        for precision in [GraphPrecision::F32, GraphPrecision::Bf16, GraphPrecision::F16] {
            let path = dir.path().join(format!("{precision:?}.usearch"));
            let reference = build(&vectors, precision, &path);
            reference.change_expansion_search(ef);
            let walk = GraphFile::open(&path, 48, vectors.len(), precision).expect("open");
            assert_eq!(walk.layout.nodes_at.len(), vectors.len());
            let (mut same, mut walk_recall, mut usearch_recall) = (0.0, 0.0, 0.0);
            for query in &queries {
                let ours: Vec<usize> = walk.search(query, ef, k).iter().map(|(row, _)| *row).collect();
                let theirs: Vec<usize> = reference.search(query, k).expect("search").keys.iter().map(|&key| key as usize).collect();
                let truth = brute_force(&vectors, query, k);
                assert_eq!(ours.len(), k);
                same += overlap(&ours, &theirs);
                walk_recall += overlap(&ours, &truth);
                usearch_recall += overlap(&theirs, &truth);
            }
            let n = queries.len() as f64;
            let (same, walk_recall, usearch_recall) = (same / n, walk_recall / n, usearch_recall / n);
            // Same graph, same algorithm: the same neighbours, up to ties that rounding
            // (USearch also rounds the query to the graph's precision) orders differently.
            eprintln!("{precision:?}: same as USearch {same:.3}, recall {walk_recall:.3} (USearch {usearch_recall:.3})");
            let floor = if precision == GraphPrecision::F32 { 0.99 } else { 0.95 };
            assert!(same >= floor, "{precision:?}: only {same:.3} of USearch's hits found");
            assert!(walk_recall >= usearch_recall - 0.01, "{precision:?}: recall {walk_recall:.3}, USearch {usearch_recall:.3}");
        }
    }

    #[test]
    fn scores_are_the_graph_inner_products_best_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vectors = clustered(500, 20, 3);
        let path = dir.path().join("g.usearch");
        build(&vectors, GraphPrecision::F32, &path);
        let walk = GraphFile::open(&path, 20, vectors.len(), GraphPrecision::F32).expect("open");
        let hits = walk.search(&vectors[7], 64, 5);
        assert_eq!(hits[0].0, 7, "a stored vector finds itself first");
        for (row, score) in &hits {
            let exact: f32 = vectors[*row].iter().zip(&vectors[7]).map(|(a, b)| a * b).sum();
            assert!((exact - score).abs() < 1e-5, "row {row}: {score} vs {exact}");
        }
        assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1));
        // `want` larger than `ef`: the beam widens to `want`.
        assert_eq!(walk.search(&vectors[7], 4, 30).len(), 30);
    }

    /// Every kernel this CPU can run, for every storage type and widths with and without a
    /// tail, against an f64 sum over the same stored values.
    #[test]
    fn kernels_agree_with_a_plain_sum() {
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                kernels.push(Kernel::Avx2);
            }
        }
        fn check<E: Element>(kernel: Kernel, encode: impl Fn(f32) -> Vec<u8>) {
            for dim in [1, 7, 8, 16, 37, 512] {
                let rows = clustered(5, dim, dim as u64);
                let query = &rows[0];
                let stored: Vec<Vec<u8>> = rows[1..].iter().map(|r| r.iter().flat_map(|x| encode(*x)).collect()).collect();
                let at: [*const u8; 4] = [0, 1, 2, 3].map(|i| stored[i].as_ptr());
                let four = kernel.dot4::<E>(query, at);
                for (i, row) in stored.iter().enumerate() {
                    let expected: f64 = (0..dim).map(|j| f64::from(query[j]) * f64::from(E::widen(row.as_ptr(), j))).sum();
                    let one = kernel.dot::<E>(query, row.as_ptr());
                    assert!((f64::from(one) - expected).abs() < 1e-5, "{kernel:?} dim {dim}: {one} vs {expected}");
                    assert!((f64::from(four[i]) - expected).abs() < 1e-5, "{kernel:?} dim {dim} (4 at once): {} vs {expected}", four[i]);
                }
            }
        }
        for kernel in kernels {
            check::<F32>(kernel, |x| x.to_le_bytes().to_vec());
            check::<F16>(kernel, |x| half::f16::from_f32(x).to_le_bytes().to_vec());
            check::<Bf16>(kernel, |x| half::bf16::from_f32(x).to_le_bytes().to_vec());
        }
    }

    #[test]
    fn damaged_files_are_refused_with_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vectors = clustered(300, 16, 4);
        let path = dir.path().join("g.usearch");
        build(&vectors, GraphPrecision::F32, &path);
        let good = std::fs::read(&path).expect("read");
        let parse = |bytes: &[u8], precision| Layout::parse(bytes, 16, 300, precision).map(|_| ()).unwrap_err();

        assert!(Layout::parse(&good, 16, 300, GraphPrecision::F32).is_ok());
        assert!(parse(&good[..good.len() - 100], GraphPrecision::F32).contains("truncated"));
        assert!(parse(&good, GraphPrecision::Bf16).contains("bytes per vector"));
        assert!(Layout::parse(&good, 16, 299, GraphPrecision::F32).map(|_| ()).unwrap_err().contains("index.json says 299"));
        assert!(Layout::parse(&good, 8, 300, GraphPrecision::F32).is_err());

        // The first link of the first node pointed far beyond the graph.
        let vectors_end = 8 + 300 * 16 * 4;
        let first_node = vectors_end + DENSE_HEAD_BYTES + GRAPH_HEAD_BYTES + 2 * 300;
        let mut bad = good.clone();
        let links = u32::from_le_bytes(bad[first_node + 10..first_node + 14].try_into().expect("4 bytes"));
        assert!(links > 0);
        bad[first_node + 14..first_node + 18].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert!(parse(&bad, GraphPrecision::F32).contains("links to node 1000000"));

        // A node's key beyond the rows.
        let mut bad = good.clone();
        bad[first_node..first_node + 8].copy_from_slice(&5000u64.to_le_bytes());
        assert!(parse(&bad, GraphPrecision::F32).contains("key 5000"));

        // Not a USearch file at all.
        let mut bad = good;
        bad[vectors_end..vectors_end + 7].copy_from_slice(b"garbage");
        assert!(parse(&bad, GraphPrecision::F32).contains("no USearch header"));
    }
}
