//! Wires the `--index`, `--retrieval-encoder`, `--retrieve-k` and `--ef` flags to the
//! operators' retriever (`operators::retrieve`), for `model ask`, `eval` and `batch`.

use retrieval::{RetrievalOptions, Retriever};

use crate::cli::RetrievalArgs;

/// The retrieval options the flags ask for.
pub fn options(args: &RetrievalArgs) -> RetrievalOptions {
    RetrievalOptions { index: args.index.clone(), encoder: args.retrieval_encoder.clone(), k: args.retrieve_k, ef: args.ef }
}

/// Opens the index and its encoder when `--index` was given.
///
/// # Errors
/// When the index or encoder cannot be opened, or their widths differ.
pub fn open(
    args: &RetrievalArgs,
    model_top_k: usize,
    device: &model::device::SelectedDevice,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Option<Retriever>> {
    Ok(runtime.block_on(Retriever::open(&options(args), model_top_k, device.device()))?)
}
