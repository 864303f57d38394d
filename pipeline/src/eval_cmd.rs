//! `strata eval`: the flags become [`eval::bench::BenchmarkSettings`], the `eval` crate runs
//! the model over the benchmark and scores it, and the table (or JSON) is printed; `strata eval
//! score` scores any model's answer file.

use std::process::ExitCode;

use anyhow::Context as _;
use eval::answers::{read_predictions, read_references};
use eval::bench::{BenchmarkSettings, LoadedScorers, ScorerSettings};
use eval::score::{score, Report};

use crate::cli::{EvalArgs, EvalCommand, EvalRunArgs, EvalScoreArgs, OutputStyle, ScorerArgs};

/// `strata eval ...`.
///
/// # Errors
/// As [`eval::bench::run_benchmark`]; unreadable answer or reference files.
pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(EvalCommand::Score(score_args)) => score_file(&score_args),
        None => run_benchmark(&args.run),
    }
}

fn scorer_settings(args: &ScorerArgs) -> ScorerSettings {
    ScorerSettings {
        bertscore_model: args.bertscore_model.clone(),
        no_bertscore: args.no_bertscore,
        wordnet: args.wordnet.clone(),
        protocol: args.protocol,
        rouge_refs: args.rouge_refs,
        no_rouge_stemmer: args.no_rouge_stemmer,
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
    let scorers = LoadedScorers::load(&scorer_settings(&args.scorers), args.task).context("loading the caption scorers")?;
    let report = score(args.task, &predictions, &references, scorers.scorers())?;
    print_report(&report, args.format, &format!("{} answers scored against {}", predictions.len(), args.references.display()));
    Ok(ExitCode::SUCCESS)
}

fn run_benchmark(args: &EvalRunArgs) -> anyhow::Result<ExitCode> {
    let (Some(benchmark), Some(data), Some(model)) = (&args.benchmark, &args.data, &args.model) else {
        anyhow::bail!("--benchmark, --data and --model are required (or use `strata eval score`)");
    };
    let settings = BenchmarkSettings {
        benchmark: benchmark.clone(),
        data: data.clone(),
        split: args.split.clone(),
        model: model.clone(),
        limit: args.limit,
        batch_size: args.batch_size,
        device: args.device,
        precision: args.precision,
        retrieval: crate::retriever::options(&args.retrieval),
        out: args.out.clone(),
        scorers: scorer_settings(&args.scorers),
        progress: !args.no_progress,
    };
    let run = eval::bench::run_benchmark(&settings).with_context(|| format!("evaluating `{}` on {benchmark}", model.display()))?;
    print_report(&run.report, args.format, &run.header);
    eprintln!("wrote predictions, references and the report to {}", args.out.display());
    Ok(if run.failed_samples > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
