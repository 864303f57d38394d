//! `strata model`: make, check and try model artifacts — what an ML engineer does before a
//! version goes to the workers.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use model::artifact::{self, Artifact, Provenance};
use model::chat::ChatTokenizer;
use model::config::StrataConfig;
use model::generate::{GenerationConfig, Sampling};
use model::layers::ParamInit;
use model::preprocess::RgbImage;
use model::tch::Kind;
use model::vlm::{StrataModel, VlmRequest};

use std::collections::BTreeMap;

use storage::registry::{PublishOptions, Registry};

use crate::cli::{
    AnnounceArgs, KeysFormat, ModelAskArgs, ModelCommand, ModelInitArgs, ModelPromoteArgs, ModelPublishArgs, ModelPushArgs,
    ModelRollbackArgs, OutputStyle, RegistryArgs,
};

pub fn run(command: ModelCommand, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    match command {
        ModelCommand::Init(args) => init(&args),
        ModelCommand::Verify { dir } => verify(&dir),
        ModelCommand::Ask(args) => ask(&args, runtime),
        ModelCommand::Push(args) => push(&args, runtime),
        ModelCommand::Fetch { url } => fetch(&url, runtime),
        ModelCommand::Publish(args) => runtime.block_on(publish(&args)),
        ModelCommand::List(args) => runtime.block_on(list(&args)),
        ModelCommand::Promote(args) => runtime.block_on(promote(&args)),
        ModelCommand::Rollback(args) => runtime.block_on(rollback(&args)),
    }
}

fn registry(url: &str) -> anyhow::Result<Registry> {
    Ok(Registry::new(storage::resolve(url).with_context(|| format!("resolving the registry `{url}`"))?))
}

async fn publish(args: &ModelPublishArgs) -> anyhow::Result<ExitCode> {
    let registry = registry(&args.to)?;
    let training_config = match &args.training_config {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading --training-config `{}`", path.display()))?;
            // JSON stays JSON; TOML becomes JSON; anything else is kept as text.
            Some(
                serde_json::from_str(&text)
                    .or_else(|_| {
                        text.parse::<toml::Table>()
                            .map_err(|e| e.to_string())
                            .and_then(|t| serde_json::to_value(t).map_err(|e| e.to_string()))
                    })
                    .unwrap_or(serde_json::Value::String(text)),
            )
        }
    };
    let metrics = match &args.metrics {
        None => BTreeMap::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading --metrics `{}`", path.display()))?;
            serde_json::from_str::<BTreeMap<String, f64>>(&text)
                .with_context(|| format!("--metrics `{}` must be a JSON object of name -> number", path.display()))?
        }
    };
    let options = PublishOptions { parent_version: args.parent.clone(), training_config, data_digest: args.data_digest.clone(), metrics };
    let (lineage, new) = registry.publish(&args.model, options).await?;
    let what = if new { "published" } else { "already published, unchanged:" };
    println!("{what} `{}` in {} (manifest sha256 {})", lineage.version, registry.url(), &lineage.manifest_sha256[..12]);
    if args.promote {
        let serving = registry.promote(&lineage.version).await?;
        println!("serving `{}`", serving.version);
        announce(&args.announce, &registry).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Announces the serving version on the `models` topic when brokers are given; a failure
/// is a warning (the pointer changed already, and workers poll it).
async fn announce(args: &AnnounceArgs, registry: &Registry) {
    let Some(brokers) = &args.brokers else { return };
    let mut settings = crate::serve::kafka::KafkaSettings::new(brokers);
    settings.topics = crate::serve::kafka::Topics::with_prefix(&args.topic_prefix);
    match crate::serve::models::announce(&settings, registry).await {
        Ok(()) => println!("announced on `{}` at {brokers}", settings.topics.models),
        Err(error) => eprintln!("warning: not announced on {brokers} ({error:#}); workers see the change at their next poll"),
    }
}

async fn list(args: &RegistryArgs) -> anyhow::Result<ExitCode> {
    let registry = registry(&args.registry)?;
    let (versions, serving) = (registry.list().await?, registry.serving().await?);
    let serving_version = serving.as_ref().map(|s| s.version.as_str());
    match args.format {
        KeysFormat::Json => {
            let listing = serde_json::json!({ "serving": serving, "versions": versions });
            println!("{}", serde_json::to_string_pretty(&listing)?);
        }
        KeysFormat::Text => {
            if versions.is_empty() {
                println!("no versions published in {}", registry.url());
            }
            for lineage in &versions {
                let mark = if Some(lineage.version.as_str()) == serving_version { "*" } else { " " };
                let metrics: Vec<String> = lineage.metrics.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
                println!(
                    "{mark} {}\tparent {}\tpublished {}\tmanifest {}\t{}",
                    lineage.version,
                    lineage.parent_version.as_deref().unwrap_or("-"),
                    lineage.published_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    &lineage.manifest_sha256[..12],
                    if metrics.is_empty() { "no metrics".to_owned() } else { metrics.join(" ") }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn promote(args: &ModelPromoteArgs) -> anyhow::Result<ExitCode> {
    let registry = registry(&args.registry)?;
    let before = registry.serving().await?.map(|s| s.version);
    let serving = registry.promote(&args.model_version).await?;
    if before.as_deref() == Some(serving.version.as_str()) {
        println!("`{}` serves already; nothing changed", serving.version);
        return Ok(ExitCode::SUCCESS);
    }
    println!("serving `{}` (before: {})", serving.version, before.as_deref().unwrap_or("none"));
    announce(&args.announce, &registry).await;
    Ok(ExitCode::SUCCESS)
}

async fn rollback(args: &ModelRollbackArgs) -> anyhow::Result<ExitCode> {
    let registry = registry(&args.registry)?;
    let serving = registry.rollback().await?;
    println!("serving `{}` again", serving.version);
    announce(&args.announce, &registry).await;
    Ok(ExitCode::SUCCESS)
}

fn push(args: &ModelPushArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    let target = storage::resolve(&args.to).context("resolving --to")?;
    let started = std::time::Instant::now();
    let (files, bytes) = runtime.block_on(storage::artifacts::push_model(&args.model, &target))?;
    println!(
        "pushed {} ({files} files, {:.1} MB) to {} in {:.1}s",
        args.model.display(),
        bytes as f64 / 1e6,
        target.url(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn fetch(url: &str, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    let location = storage::resolve(url).context("resolving the URL")?;
    let (dir, reused) = runtime.block_on(storage::artifacts::fetch_model(&location))?;
    let artifact = Artifact::open(&dir).with_context(|| format!("verifying the copy in `{}`", dir.display()))?;
    println!("model `{}` {} {}", artifact.manifest.version, if reused { "already in" } else { "fetched into" }, dir.display());
    Ok(ExitCode::SUCCESS)
}

fn init(args: &ModelInitArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading `{}`", args.config.display()))?;
    let config = StrataConfig::from_json(&text).with_context(|| format!("in `{}`", args.config.display()))?;
    let tokenizer = ChatTokenizer::from_file(&args.tokenizer, &config.system_prompt)?;
    let device = model::device::select(args.device)?;
    // An artifact holds f32 weights whatever the device: training loads them as its f32
    // master weights, and inference casts them at load (`--precision`).
    // libtorch's global generator draws every initial weight: seeded, the artifact is
    // reproducible. (A seed past i64::MAX wraps; it is only a seed.)
    model::device::manual_seed(args.seed);
    let model = if args.checkpoint.is_empty() {
        if !args.random {
            bail!("no --checkpoint given\nhint: pass the SigLIP and Qwen2 `*.safetensors` files, or --random for an untrained model");
        }
        StrataModel::new(config, tokenizer, device.device(), Kind::Float, ParamInit::Random)?
    } else {
        StrataModel::from_base_checkpoints(config, tokenizer, &args.checkpoint, device.device(), Kind::Float)?
    };
    let provenance =
        Provenance { version: args.model_version.clone(), parent_version: args.parent.clone(), training_run: args.training_run.clone() };
    let manifest = artifact::save(&model, &args.tokenizer, &args.out, &provenance)?;
    let parameters = model.parameter_count();
    println!("wrote model `{}` to {} ({} parameters, {} files)", manifest.version, args.out.display(), parameters, manifest.files.len());
    Ok(ExitCode::SUCCESS)
}

fn verify(dir: &Path) -> anyhow::Result<ExitCode> {
    let artifact = match Artifact::open(dir) {
        Ok(artifact) => artifact,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(1));
        }
    };
    let (manifest, config) = (&artifact.manifest, &artifact.config);
    println!("model {} ({})", manifest.version, dir.display());
    println!("  parent version: {}", manifest.parent_version.as_deref().unwrap_or("-"));
    println!("  training run:   {}", manifest.training_run.as_deref().unwrap_or("-"));
    for (file, sha) in &manifest.files {
        println!("  ok  {sha}  {file}");
    }
    let levels = config.levels();
    println!(
        "  vision: {} layers, d_v {}, {}px / {}px patches; levels {:?}",
        config.vision.num_hidden_layers, config.vision.hidden_size, config.vision.image_size, config.vision.patch_size, levels
    );
    println!(
        "  llm: {} layers, d {}, vocabulary {}; experts in layers {:?} (rank {})",
        config.llm.num_hidden_layers,
        config.llm.hidden_size,
        config.llm.vocab_size,
        config.experts.layers(config.llm.num_hidden_layers),
        config.experts.rank
    );
    println!(
        "  prompter: {} aggregation tokens × {} levels = {} semantic tokens; LoRA: {}",
        config.prompter.num_aggregation_tokens,
        levels.len(),
        config.semantic_tokens(),
        config.lora.as_ref().map_or_else(|| "none".to_owned(), |l| format!("rank {} alpha {}", l.rank, l.alpha))
    );
    Ok(ExitCode::SUCCESS)
}

fn ask(args: &ModelAskArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    let artifact = Artifact::open(&args.model)?;
    let device = model::device::select(args.device)?.with_precision(args.precision);
    let mut model = artifact.load_for_inference(&device).with_context(|| format!("loading `{}`", args.model.display()))?;
    let mut retriever = crate::retriever::open(&args.retrieval, model.config().retrieval.top_k, &device, runtime)?;
    let mut requests = Vec::with_capacity(args.images.len());
    for image in &args.images {
        let rgb = RgbImage::read(image)?;
        let pixels = model.preprocess(&rgb)?;
        let descriptions = match &mut retriever {
            Some(retriever) => {
                let found = retriever.descriptions(&rgb, &args.query)?;
                tracing::info!(image = %image.display(), descriptions = ?found, "retrieved");
                found
            }
            None => args.descriptions.clone(),
        };
        requests.push(VlmRequest { pixels, query: args.query.clone(), descriptions });
    }
    let sampling = match args.temperature {
        Some(temperature) => Sampling::TopP { temperature, top_p: args.top_p },
        None => Sampling::Greedy,
    };
    let config = GenerationConfig { max_new_tokens: args.max_new_tokens, sampling, stop_tokens: Vec::new(), seed: args.seed, slots: None };
    let answers = model.generate(&requests, &config)?;
    for ((image, answer), request) in args.images.iter().zip(&answers).zip(&requests) {
        match args.format {
            OutputStyle::Text => {
                println!("{}\t{:.4}\t{}", image.display(), answer.score, answer.text)
            }
            OutputStyle::Json => println!(
                "{}",
                serde_json::json!({
                    "image": image.display().to_string(),
                    "answer": answer.text,
                    "score": answer.score,
                    "complete": answer.complete,
                    "descriptions": request.descriptions,
                    "model_version": artifact.manifest.version,
                })
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}
