//! `strata eval`: run a model artifact over a benchmark folder and print the paper-style
//! table, or score any model's answer file. Predictions, references and the report are written
//! next to each other so a run can be re-scored or compared later.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use eval::answers::{read_predictions, read_references, Prediction, Reference};
use eval::bertscore::BertScorer;
use eval::score::{score, CaptionScorers, Report, Task};
use eval::wordnet::WordNet;
use model::artifact::Artifact;
use model::generate::{GenerationConfig, Sampling};
use model::preprocess::RgbImage;
use model::vlm::VlmRequest;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

use crate::cli::{EvalArgs, EvalCommand, EvalRunArgs, EvalScoreArgs, OutputStyle, ScorerArgs};

pub fn run(args: EvalArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(EvalCommand::Score(score_args)) => score_file(&score_args),
        None => run_benchmark(&args.run, runtime),
    }
}

/// The heavy caption scorers, loaded only for captioning. A missing default asset is a
/// warning (the metric is skipped); a folder the user named that fails is an error.
fn load_scorers(args: &ScorerArgs, task: Task) -> anyhow::Result<(Option<BertScorer>, Option<WordNet>)> {
    if task != Task::Caption {
        return Ok((None, None));
    }
    let bertscore = if args.no_bertscore {
        None
    } else {
        let dir = args.bertscore_model.clone().unwrap_or_else(BertScorer::default_dir);
        match BertScorer::load(&dir, None, model::device::select(model::device::DevicePreference::Auto)?.device()) {
            Ok(scorer) => Some(scorer),
            Err(err) if args.bertscore_model.is_none() => {
                eprintln!(
                    "warning: BERTScore skipped: {err}\nhint: run `bash scripts/setup.sh` to fetch the default encoder, or pass --bertscore-model"
                );
                None
            }
            Err(err) => return Err(err).context("loading the BERTScore encoder"),
        }
    };
    let dir = args.wordnet.clone().unwrap_or_else(WordNet::default_dir);
    let wordnet = match WordNet::load(&dir) {
        Ok(wordnet) => Some(wordnet),
        Err(err) if args.wordnet.is_none() => {
            eprintln!(
                "warning: METEOR without WordNet synonyms: {err}\nhint: run `bash scripts/setup.sh` to fetch WordNet 3.0, or pass --wordnet"
            );
            None
        }
        Err(err) => return Err(err).context("loading WordNet"),
    };
    Ok((bertscore, wordnet))
}

fn scorers<'a>(loaded: &'a (Option<BertScorer>, Option<WordNet>), args: &ScorerArgs) -> CaptionScorers<'a> {
    CaptionScorers {
        protocol: args.protocol,
        bertscore: loaded.0.as_ref(),
        wordnet: loaded.1.as_ref(),
        rouge_stemmer: !args.no_rouge_stemmer,
        rouge_references: args.rouge_refs,
    }
}

/// The table (with the protocol line and `warning:` lines) on stdout, or the JSON report; with
/// JSON the warnings also go to stderr, where a person piping the JSON away still sees them.
fn print_report(report: &Report, format: OutputStyle, header: &str) {
    match format {
        OutputStyle::Text => print!("{header}\n{}", report.to_table()),
        OutputStyle::Json => {
            println!("{}", report.to_json());
            for warning in &report.warnings {
                eprintln!("warning: {warning}");
            }
        }
    }
}

fn score_file(args: &EvalScoreArgs) -> anyhow::Result<ExitCode> {
    let predictions = read_predictions(&args.pred)?;
    let references = read_references(&args.references)?;
    let loaded = load_scorers(&args.scorers, args.task)?;
    let report = score(args.task, &predictions, &references, scorers(&loaded, &args.scorers))?;
    print_report(&report, args.format, &format!("{} answers scored against {}", predictions.len(), args.references.display()));
    Ok(ExitCode::SUCCESS)
}

const fn max_new_tokens(task: Task) -> i64 {
    match task {
        Task::Classify | Task::Vqa => 16,
        Task::Ground => 32,
        Task::Caption => 64,
    }
}

fn write_jsonl<T: serde::Serialize>(path: &Path, items: &[T]) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating `{}`", path.display()))?);
    for item in items {
        serde_json::to_writer(&mut file, item)?;
        file.write_all(b"\n")?;
    }
    file.flush()?;
    Ok(())
}

fn write_parquet(path: &Path, report: &Report, benchmark: &str, version: &str) -> anyhow::Result<()> {
    use polars::prelude::*;
    let n = report.metrics.len();
    let mut frame = DataFrame::new(
        n,
        vec![
            Column::new("benchmark".into(), vec![benchmark.to_owned(); n]),
            Column::new("model_version".into(), vec![version.to_owned(); n]),
            Column::new("metric".into(), report.metrics.iter().map(|m| m.name.clone()).collect::<Vec<_>>()),
            Column::new("value".into(), report.metrics.iter().map(|m| m.value).collect::<Vec<_>>()),
            Column::new("count".into(), report.metrics.iter().map(|m| m.count as u64).collect::<Vec<_>>()),
        ],
    )?;
    let file = std::fs::File::create(path).with_context(|| format!("creating `{}`", path.display()))?;
    ParquetWriter::new(file).finish(&mut frame)?;
    Ok(())
}

/// At most `limit` samples spread over `samples`: the split, in its stable order, cut into
/// `limit` blocks of equal length, and one sample from each block at a place drawn with a fixed
/// seed (the same subset every run). Benchmarks laid out a folder per class list one class
/// after another, so their first N samples would all be of the first class; and a fixed stride
/// can alias with a repeating layout (RSVQA lists each image's questions kind after kind).
fn spread<T>(samples: Vec<T>, limit: usize) -> Vec<T> {
    let len = samples.len();
    if limit >= len {
        return samples;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    // Block i is [i·len/limit, (i+1)·len/limit): never empty as limit < len, so the picks are
    // strictly increasing.
    let mut wanted =
        (0..limit).map(|i| rng.random_range(i * len / limit..(i + 1) * len / limit)).collect::<Vec<_>>().into_iter().peekable();
    samples
        .into_iter()
        .enumerate()
        .filter_map(|(at, sample)| {
            if wanted.peek() == Some(&at) {
                wanted.next();
                Some(sample)
            } else {
                None
            }
        })
        .collect()
}

fn run_benchmark(args: &EvalRunArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    let (Some(name), Some(data), Some(model_dir)) = (&args.benchmark, &args.data, &args.model) else {
        anyhow::bail!("--benchmark, --data and --model are required (or use `strata eval score`)");
    };
    let mut benchmark = eval::readers::read(name, data, Some(&args.split))?;
    if let Some(limit) = args.limit {
        benchmark.samples = spread(std::mem::take(&mut benchmark.samples), limit);
    }
    let artifact = Artifact::open(model_dir)?;
    let device = model::device::select(args.device)?;
    let mut model = artifact.load(device.device(), device.dtype()).with_context(|| format!("loading `{}`", model_dir.display()))?;
    let mut retriever = crate::retriever::open(&args.retrieval, model.config().retrieval.top_k, device.device(), runtime)?;
    let loaded = load_scorers(&args.scorers, benchmark.task)?;
    let generation = GenerationConfig {
        max_new_tokens: max_new_tokens(benchmark.task),
        sampling: Sampling::Greedy,
        stop_tokens: Vec::new(),
        seed: None,
    };

    let progress =
        if args.no_progress { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(benchmark.samples.len() as u64) };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} samples ({per_sec}, ETA {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress.set_message(name.clone());
    let mut predictions = Vec::with_capacity(benchmark.samples.len());
    let mut failures = 0usize;
    for batch in benchmark.samples.chunks(args.batch_size.max(1)) {
        let mut requests = Vec::with_capacity(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        for sample in batch {
            let prepared = crate::images::read_rgb(&sample.image).and_then(|(rgb, w, h)| {
                let pixels = model.preprocess_rgb(&rgb, w, h)?;
                let descriptions = match &mut retriever {
                    Some(retriever) => {
                        retriever.descriptions(&RgbImage::new(usize::try_from(w)?, usize::try_from(h)?, rgb)?, &sample.query)?
                    }
                    None => Vec::new(),
                };
                Ok((pixels, descriptions))
            });
            match prepared {
                Ok((pixels, descriptions)) => {
                    requests.push(VlmRequest { pixels, query: sample.query.clone(), descriptions });
                    ids.push(sample.reference.id.clone());
                }
                Err(err) => {
                    failures += 1;
                    progress.suspend(|| eprintln!("warning: sample `{}` skipped: {err:#}", sample.reference.id));
                }
            }
        }
        if !requests.is_empty() {
            let answers = model.generate(&requests, &generation)?;
            for (id, answer) in ids.into_iter().zip(answers) {
                predictions.push(Prediction { id, answer: serde_json::Value::String(answer.text), score: Some(answer.score) });
            }
        }
        progress.inc(batch.len() as u64);
    }
    progress.finish_and_clear();

    let references: Vec<Reference> = benchmark.samples.iter().map(|s| s.reference.clone()).collect();
    let report = score(benchmark.task, &predictions, &references, scorers(&loaded, &args.scorers))?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating `{}`", args.out.display()))?;
    write_jsonl(&args.out.join("predictions.jsonl"), &predictions)?;
    write_jsonl(&args.out.join("references.jsonl"), &references)?;
    let version = artifact.manifest.version.clone();
    let summary = serde_json::json!({
        "benchmark": name, "split": args.split, "model_version": version, "samples": benchmark.samples.len(),
        "failed_samples": failures, "protocol": report.protocol, "warnings": report.warnings, "report": report.to_json(),
    });
    std::fs::write(args.out.join("report.json"), serde_json::to_string_pretty(&summary)?)?;
    write_parquet(&args.out.join("report.parquet"), &report, name, &version)?;
    let header = format!(
        "{name} ({} split, {} samples, model {version}){}",
        args.split,
        benchmark.samples.len(),
        if failures > 0 { format!(", {failures} samples could not be read") } else { String::new() }
    );
    print_report(&report, args.format, &header);
    eprintln!("wrote predictions, references and the report to {}", args.out.display());
    Ok(if failures > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn a_limit_takes_one_sample_from_each_equal_block_of_the_split() {
        // Three classes of four, one after another: a limit of three takes one of each.
        let samples: Vec<usize> = (0..12).collect();
        let three = spread(samples.clone(), 3);
        assert_eq!(three.iter().map(|i| i / 4).collect::<Vec<_>>(), [0, 1, 2], "{three:?}");
        assert_eq!(spread(samples.clone(), 3), three, "the same subset every time");
        let five = spread(samples.clone(), 5);
        assert_eq!(five.len(), 5);
        assert!(five.windows(2).all(|w| w[0] < w[1]), "in the split's order, each once: {five:?}");
        assert_eq!(spread(samples.clone(), 12), samples);
        assert_eq!(spread(samples.clone(), 100), samples);
        assert!(spread(samples, 0).is_empty());
    }
}
