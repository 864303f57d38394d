//! `strata index`: build the semantic description database and search it.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use model::device::DevicePreference;
use model::encoders::{ImageEncoder, TextEncoder};
use model::preprocess::RgbImage;
use retrieval::index::{GraphPrecision, HnswParams, DEFAULT_EF};
use retrieval::{build_index, BuildOptions, SearchMode};

use crate::cli::{GraphPrecisionArg, IndexBuildArgs, IndexCommand, IndexPushArgs, IndexSearchArgs, OutputStyle};
use retrieval::retriever::encoder_device;

pub fn run(command: IndexCommand, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    match command {
        IndexCommand::Build(args) => build(&args),
        IndexCommand::Search(args) => search(&args, runtime),
        IndexCommand::Push(args) => push(&args, runtime),
    }
}

fn push(args: &IndexPushArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    let target = storage::resolve(&args.to)?;
    let started = std::time::Instant::now();
    let transfer = runtime
        .block_on(retrieval::store::push_index(&args.index, target.store().as_ref(), target.path()))
        .with_context(|| format!("pushing `{}` to {}", args.index.display(), target.url()))?;
    println!(
        "pushed {} files ({:.1} MB) to {} in {:.1} s",
        transfer.files,
        transfer.bytes as f64 / 1e6,
        target.url(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn encoder(dir: Option<&std::path::PathBuf>, device: DevicePreference) -> anyhow::Result<TextEncoder> {
    let dir = dir.cloned().unwrap_or_else(TextEncoder::default_dir);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let encoder =
        TextEncoder::load_on(&dir, 256, threads, device).with_context(|| format!("loading the text encoder from `{}`", dir.display()))?;
    tracing::info!(encoder = %dir.display(), on = %encoder.target(), "text encoder loaded");
    Ok(encoder)
}

fn build(args: &IndexBuildArgs) -> anyhow::Result<ExitCode> {
    let mut encoder = encoder(args.encoder.as_ref(), args.device)?;
    let options = BuildOptions {
        shard_size: args.shard_size,
        hnsw: (!args.no_hnsw).then_some(HnswParams {
            m: args.hnsw_m,
            ef_construction: args.ef_construction,
            precision: match args.graph_precision {
                GraphPrecisionArg::F32 => GraphPrecision::F32,
                GraphPrecisionArg::F16 => GraphPrecision::F16,
                GraphPrecisionArg::Bf16 => GraphPrecision::Bf16,
            },
        }),
    };
    let progress = if args.no_progress { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
    progress.set_style(
        indicatif::ProgressStyle::with_template("embedding {bar:30} {pos}/{len} descriptions ({per_sec}, ETA {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let report = build_index(&args.inputs, &args.out, &mut encoder, &options, &mut |done, total| {
        progress.set_length(total as u64);
        progress.set_position(done as u64);
    })?;
    progress.finish_and_clear();
    println!(
        "indexed {} descriptions into {} in {:.1} s (encoder on {}; {}{})",
        report.count,
        args.out.display(),
        started.elapsed().as_secs_f64(),
        encoder.target(),
        if args.no_hnsw { "exact search only" } else { "exact and HNSW search" },
        if report.resumed_shards > 0 { format!("; resumed {} finished shards", report.resumed_shards) } else { String::new() }
    );
    Ok(ExitCode::SUCCESS)
}

fn search(args: &IndexSearchArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    let device = model::device::select(args.device)?;
    let index = runtime.block_on(retrieval::retriever::open_index(&args.index, device.device()))?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let (query, encoder_dir, dim) = if let Some(path) = &args.image {
        let Some(dir) = &args.encoder else {
            bail!(
                "image queries need a CLIP-style encoder directory (image_model.onnx, model.onnx, tokenizer.json, preprocessor_config.json), or a tower from `strata train retriever`\n\
                 hint: export one with `python scripts/export/clip_to_onnx.py CLIP_DIR OUT`, build the index with `--encoder OUT`, then search with `--encoder OUT --image FILE`"
            );
        };
        let mut encoder = ImageEncoder::load_on(dir, threads, encoder_device(device.device()))
            .with_context(|| format!("loading the image encoder from `{}`", dir.display()))?;
        tracing::info!(encoder = %dir.display(), on = %encoder.target(), "image encoder loaded");
        if let Some(text) = encoder.paired_text_encoder().filter(|t| !model::image_tower::same_text_encoder(t, &index.manifest().encoder)) {
            eprintln!(
                "warning: the tower `{}` was trained against the text encoder `{text}`, but this index was built with `{}`: its hits will not mean much\nhint: build the index with `--encoder {text}`, or train a tower against the index's encoder",
                dir.display(),
                index.manifest().encoder
            );
        }
        let image = RgbImage::read(path)?;
        (encoder.encode(&[image])?, dir.display().to_string(), encoder.dim())
    } else {
        let Some(text) = &args.text else { bail!("give --text \"...\" or --image FILE to search") };
        let mut encoder = encoder(args.encoder.as_ref(), encoder_device(device.device()))?;
        (encoder.encode(std::slice::from_ref(text))?, encoder.name().to_owned(), encoder.dim())
    };
    if dim != index.dim() {
        bail!(
            "the encoder at `{encoder_dir}` makes {dim}-wide embeddings, but this index holds {}-wide ones from `{}`\n\
             hint: search with the encoder the index was built with (--encoder)",
            index.dim(),
            index.manifest().encoder
        );
    }
    let mode =
        if args.exact || !index.has_ann() { SearchMode::Exact } else { SearchMode::Approximate { ef: args.ef.unwrap_or(DEFAULT_EF) } };
    let hits = index.search(&query, args.k, mode)?.remove(0);
    match args.format {
        OutputStyle::Text => {
            for (rank, hit) in hits.iter().enumerate() {
                let d = index.description(hit.row);
                println!("{:>3}  {:.4}  {:<40}  {}", rank + 1, hit.score, d.id, d.text);
            }
        }
        OutputStyle::Json => {
            let rows: Vec<serde_json::Value> = hits
                .iter()
                .enumerate()
                .map(|(rank, hit)| {
                    let d = index.description(hit.row);
                    serde_json::json!({"rank": rank + 1, "score": hit.score, "id": d.id, "text": d.text, "level": d.level, "category": d.category})
                })
                .collect();
            println!("{}", serde_json::Value::Array(rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}
