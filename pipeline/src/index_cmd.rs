//! `strata index`: build the semantic description database and search it.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use model::encoders::TextEncoder;
use retrieval::index::{DEFAULT_EF, GraphPrecision, HnswParams};
use retrieval::{BuildOptions, SearchMode, SemanticIndex, build_index};

use crate::cli::{GraphPrecisionArg, IndexBuildArgs, IndexCommand, IndexSearchArgs, OutputStyle};

pub fn run(command: IndexCommand) -> anyhow::Result<ExitCode> {
    match command {
        IndexCommand::Build(args) => build(&args),
        IndexCommand::Search(args) => search(&args),
    }
}

fn encoder(dir: Option<&std::path::PathBuf>) -> anyhow::Result<TextEncoder> {
    let dir = dir.cloned().unwrap_or_else(TextEncoder::default_dir);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    TextEncoder::load(&dir, 256, threads).with_context(|| format!("loading the text encoder from `{}`", dir.display()))
}

fn build(args: &IndexBuildArgs) -> anyhow::Result<ExitCode> {
    let mut encoder = encoder(args.encoder.as_ref())?;
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
        "indexed {} descriptions into {} in {:.1} s ({}{})",
        report.count,
        args.out.display(),
        started.elapsed().as_secs_f64(),
        if args.no_hnsw { "exact search only" } else { "exact and HNSW search" },
        if report.resumed_shards > 0 { format!("; resumed {} finished shards", report.resumed_shards) } else { String::new() }
    );
    Ok(ExitCode::SUCCESS)
}

fn search(args: &IndexSearchArgs) -> anyhow::Result<ExitCode> {
    if args.image.is_some() {
        bail!("image queries need a CLIP-style image encoder, and none is bundled yet\nhint: search with --text");
    }
    let Some(text) = &args.text else { bail!("give --text \"...\" to search") };
    let device = model::device::select(args.device)?;
    let index = SemanticIndex::open(&args.index, device.device())?;
    let mut encoder = encoder(args.encoder.as_ref())?;
    let query = encoder.encode(std::slice::from_ref(text))?;
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
