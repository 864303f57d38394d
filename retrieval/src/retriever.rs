//! Retrieval for the prompter: the descriptions nearest to each tile (with a CLIP-style image
//! encoder) or to each task's query (with a text-only encoder), from a semantic index opened
//! locally or fetched once from an object store (MODEL_SPEC §2). The model cuts what it gets
//! to its own top-k and semantic-token budget.

use std::path::{Path, PathBuf};

use model::device::DevicePreference;
use model::encoders::{ImageEncoder, TextEncoder};
use model::preprocess::RgbImage;

use crate::index::DEFAULT_EF;
use crate::{RetrievalError, SearchMode, SemanticIndex};

/// How an index is queried.
#[derive(Debug, Clone, Default)]
pub struct RetrievalOptions {
    /// The index: a directory or the URL it was pushed to.
    pub index: Option<String>,
    /// The encoder that queries it: a CLIP-style directory with `image_model.onnx` retrieves by
    /// image, a text encoder by the query. Default: all-MiniLM-L6-v2 from setup.
    pub encoder: Option<PathBuf>,
    /// Descriptions per query (default: the model's top-k).
    pub k: Option<usize>,
    /// HNSW candidate list while searching (default [`DEFAULT_EF`]).
    pub ef: Option<usize>,
}

/// How queries are embedded.
enum QueryEncoder {
    /// The image itself (CLIP-style image tower).
    Image(ImageEncoder),
    /// The query text (when the encoder has no image tower).
    Text(Box<TextEncoder>),
}

/// One retrieved description.
#[derive(Debug, Clone, PartialEq)]
pub struct Retrieved {
    /// Id in the description database.
    pub id: String,
    /// Its text.
    pub text: String,
    /// Cosine similarity to the query.
    pub score: f32,
}

/// An open index and the encoder that queries it.
pub struct Retriever {
    index: SemanticIndex,
    encoder: QueryEncoder,
    k: usize,
    mode: SearchMode,
}

impl std::fmt::Debug for Retriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retriever").field("k", &self.k).field("by_image", &self.by_image()).finish()
    }
}

fn model_err(action: impl Into<String>) -> impl FnOnce(model::ModelError) -> RetrievalError {
    let action = action.into();
    move |source| RetrievalError::Encoder { action, source: Box::new(source) }
}

/// Runs blocking work (opening an index, loading an encoder) off the async threads; a panic in
/// it becomes an error instead of taking the process down.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, RetrievalError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| RetrievalError::Internal { reason: format!("a blocking task failed: {e}") })
}

/// Opens an index from a directory, or from the URL it was pushed to: the first open
/// downloads it into `~/.cache/strata/indexes/`, later ones reuse that copy while the remote
/// manifest is unchanged.
///
/// # Errors
/// When the location is invalid, the download fails, or the index does not verify.
pub async fn open_index(location: &str, device: model::tch::Device) -> Result<SemanticIndex, RetrievalError> {
    let resolved = storage::resolve(location)?;
    let dir = match resolved.local_path() {
        Some(dir) => dir,
        None => {
            let cache = model::cache_dir().join("indexes").join(storage::artifacts::cache_key(&resolved.url()));
            let started = std::time::Instant::now();
            let transfer = crate::store::fetch_index(resolved.store().as_ref(), resolved.path(), &cache).await?;
            if transfer.reused {
                tracing::info!(index = %resolved.url(), cache = %cache.display(), "Using the cached copy of the index.");
            } else {
                tracing::info!(
                    index = %resolved.url(),
                    megabytes = transfer.bytes as f64 / 1e6,
                    cache = %cache.display(),
                    seconds = started.elapsed().as_secs_f64(),
                    "Fetched the index."
                );
            }
            cache
        }
    };
    blocking(move || SemanticIndex::open(&dir, device)).await?
}

impl Retriever {
    /// Opens the index and its encoder when `options.index` is set; `model_top_k` is the
    /// default number of descriptions.
    ///
    /// # Errors
    /// When the index or encoder cannot be opened, or their widths differ.
    pub async fn open(options: &RetrievalOptions, model_top_k: usize, device: model::tch::Device) -> Result<Option<Self>, RetrievalError> {
        let Some(location) = &options.index else { return Ok(None) };
        let index = open_index(location, device).await?;
        let dir = options.encoder.clone().unwrap_or_else(TextEncoder::default_dir);
        let (options, location) = (options.clone(), location.clone());
        blocking(move || Self::with_index(index, &dir, &options, model_top_k, device, &location)).await?.map(Some)
    }

    fn with_index(
        index: SemanticIndex,
        dir: &Path,
        options: &RetrievalOptions,
        model_top_k: usize,
        device: model::tch::Device,
        location: &str,
    ) -> Result<Self, RetrievalError> {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let preference = encoder_device(device);
        let image_tower = dir.join("image_model.onnx").is_file() || model::image_tower::ImageTower::is_dir(dir);
        let (encoder, dim, target) = if image_tower {
            let encoder = ImageEncoder::load_on(dir, threads, preference)
                .map_err(model_err(format!("loading the image encoder `{}`", dir.display())))?;
            if let Some(text) =
                encoder.paired_text_encoder().filter(|t| !model::image_tower::same_text_encoder(t, &index.manifest().encoder))
            {
                tracing::warn!(
                    tower = %dir.display(),
                    trained_against = text,
                    index_built_with = %index.manifest().encoder,
                    "The retrieval tower was trained against another text encoder than the index was built with: its results will not mean much."
                );
            }
            let (dim, target) = (encoder.dim(), encoder.target());
            (QueryEncoder::Image(encoder), dim, target)
        } else {
            let encoder = TextEncoder::load_on(dir, 256, threads, preference)
                .map_err(model_err(format!("loading the text encoder `{}`", dir.display())))?;
            let (dim, target) = (encoder.dim(), encoder.target());
            (QueryEncoder::Text(Box::new(encoder)), dim, target)
        };
        if dim != index.dim() {
            return Err(RetrievalError::Index {
                path: PathBuf::from(location),
                reason: format!(
                    "the retrieval encoder `{}` makes {dim}-wide embeddings, but the index holds {}-wide ones from `{}`\nhint: pass the encoder the index was built with (--retrieval-encoder)",
                    dir.display(),
                    index.dim(),
                    index.manifest().encoder
                ),
            });
        }
        let mode = if index.has_ann() { SearchMode::Approximate { ef: options.ef.unwrap_or(DEFAULT_EF) } } else { SearchMode::Exact };
        let by_image = matches!(encoder, QueryEncoder::Image(_));
        tracing::info!(index = %location, by = if by_image { "image" } else { "query" }, encoder_on = %target, "Retrieving descriptions.");
        Ok(Self { index, encoder, k: options.k.unwrap_or(model_top_k).max(1), mode })
    }

    /// Whether it retrieves by image (one search per tile) rather than by query text (one per
    /// task).
    pub fn by_image(&self) -> bool {
        matches!(self.encoder, QueryEncoder::Image(_))
    }

    /// The texts of the descriptions nearest to one image (image encoder) or one query (text
    /// encoder), best first.
    ///
    /// # Errors
    /// When encoding or searching fails.
    pub fn descriptions(&mut self, image: &RgbImage, query: &str) -> Result<Vec<String>, RetrievalError> {
        let found = self.retrieve(std::slice::from_ref(image), &[query.to_owned()])?;
        Ok(found.into_iter().flatten().map(|r| r.text).collect())
    }

    /// The nearest descriptions for each image (image encoder) or each query (text encoder),
    /// best first. Pass the inputs the encoder takes; the other list is ignored.
    ///
    /// # Errors
    /// When encoding or searching fails.
    pub fn retrieve(&mut self, images: &[RgbImage], queries: &[String]) -> Result<Vec<Vec<Retrieved>>, RetrievalError> {
        let embeddings = match &mut self.encoder {
            QueryEncoder::Image(encoder) => encoder.encode(images).map_err(model_err("embedding tiles for retrieval"))?,
            QueryEncoder::Text(encoder) => encoder.encode(queries).map_err(model_err("embedding queries for retrieval"))?,
        };
        if embeddings.is_empty() {
            return Ok(Vec::new());
        }
        let hits = self.index.search(&embeddings, self.k, self.mode)?;
        Ok(hits
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|hit| {
                        let description = self.index.description(hit.row);
                        Retrieved { id: description.id.clone(), text: description.text.clone(), score: hit.score }
                    })
                    .collect()
            })
            .collect())
    }
}

/// Where a query encoder runs next to an index or model on `device`: on a GPU run, on the GPU
/// when ONNX Runtime can use it (a CPU-only runtime falls back with a warning); on a CPU run,
/// the CPU.
pub fn encoder_device(device: model::tch::Device) -> DevicePreference {
    if device.is_cuda() {
        DevicePreference::Auto
    } else {
        DevicePreference::Cpu
    }
}
