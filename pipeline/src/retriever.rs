//! The retriever as `strata model ask` and `strata eval` use it: the descriptions nearest to
//! each image (with a CLIP-style encoder) or to its question (with a text-only encoder), to
//! give the model's prompter. The model cuts them to its own top-k and semantic-token budget.

use anyhow::{bail, Context as _};
use model::device::DevicePreference;
use model::encoders::{ImageEncoder, TextEncoder};
use model::preprocess::RgbImage;
use retrieval::index::DEFAULT_EF;
use retrieval::{SearchMode, SemanticIndex};

use crate::cli::RetrievalArgs;

/// How queries are embedded.
enum QueryEncoder {
    /// The image itself (CLIP-style image tower).
    Image(ImageEncoder),
    /// The question text (when the encoder has no image tower).
    Text(Box<TextEncoder>),
}

/// An open index and the encoder that queries it.
pub struct Retriever {
    index: SemanticIndex,
    encoder: QueryEncoder,
    k: usize,
    mode: SearchMode,
}

impl Retriever {
    /// Opens the index and its encoder when `--index` was given; `k` is the model's top-k
    /// unless `--retrieve-k` says otherwise.
    ///
    /// # Errors
    /// When the index or encoder cannot be opened, or their widths differ.
    pub fn open(
        args: &RetrievalArgs,
        model_top_k: usize,
        device: tch::Device,
        runtime: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Option<Self>> {
        let Some(location) = &args.index else { return Ok(None) };
        let index = crate::index_cmd::open_index(location, device, runtime)?;
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let dir = args.retrieval_encoder.clone().unwrap_or_else(TextEncoder::default_dir);
        let preference = encoder_device(device);
        let (encoder, dim, target) = if dir.join("image_model.onnx").is_file() {
            let encoder = ImageEncoder::load_on(&dir, threads, preference)
                .with_context(|| format!("loading the image encoder `{}`", dir.display()))?;
            let (dim, target) = (encoder.dim(), encoder.target());
            (QueryEncoder::Image(encoder), dim, target)
        } else {
            let encoder = TextEncoder::load_on(&dir, 256, threads, preference)
                .with_context(|| format!("loading the text encoder `{}`", dir.display()))?;
            let (dim, target) = (encoder.dim(), encoder.target());
            (QueryEncoder::Text(Box::new(encoder)), dim, target)
        };
        if dim != index.dim() {
            bail!(
                "the retrieval encoder `{}` makes {dim}-wide embeddings, but the index {location} holds {}-wide ones from `{}`\nhint: pass the encoder the index was built with (--retrieval-encoder)",
                dir.display(),
                index.dim(),
                index.manifest().encoder
            );
        }
        let mode = if index.has_ann() { SearchMode::Approximate { ef: args.ef.unwrap_or(DEFAULT_EF) } } else { SearchMode::Exact };
        tracing::info!(
            index = %location,
            by = if matches!(encoder, QueryEncoder::Image(_)) { "image" } else { "question" },
            encoder_on = %target,
            "retrieving descriptions"
        );
        Ok(Some(Self { index, encoder, k: args.retrieve_k.unwrap_or(model_top_k).max(1), mode }))
    }

    /// The texts of the nearest descriptions, best first.
    ///
    /// # Errors
    /// When encoding or searching fails.
    pub fn descriptions(&mut self, image: &RgbImage, question: &str) -> anyhow::Result<Vec<String>> {
        let query = match &mut self.encoder {
            QueryEncoder::Image(encoder) => encoder.encode(std::slice::from_ref(image))?,
            QueryEncoder::Text(encoder) => encoder.encode(&[question.to_owned()])?,
        };
        let query = query.into_iter().next().context("the encoder returned no embedding")?;
        Ok(self.index.descriptions_for(&query, self.k, self.mode)?)
    }
}

/// Where a query encoder runs next to an index or model on `device`: on a GPU run, on the GPU
/// when ONNX Runtime can use it (a CPU-only runtime falls back quietly); on a CPU run, the CPU.
pub fn encoder_device(device: tch::Device) -> DevicePreference {
    if device.is_cuda() {
        DevicePreference::Auto
    } else {
        DevicePreference::Cpu
    }
}
