//! The benchmark runner behind `strata eval`: a model artifact answers a benchmark folder
//! ([`crate::readers`]) and the answers are scored under the benchmark's protocol
//! ([`crate::score`]). Predictions, references and the report are written next to each other
//! (`predictions.jsonl`, `references.jsonl`, `report.json`, `report.parquet`), so a run can
//! be re-scored or compared later.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use model::{
    artifact::Artifact,
    device::DevicePreference,
    generate::{GenerationConfig, Sampling},
    preprocess::RgbImage,
    vlm::VlmRequest,
};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use retrieval::{RetrievalOptions, Retriever};

use crate::{
    answers::{Prediction, Reference},
    bertscore::BertScorer,
    protocol::{Protocol, ReferenceAggregate},
    score::{score, CaptionScorers, Report, Task},
    wordnet::WordNet,
    EvalError,
};

/// Which caption scorers run and with what assets (`strata eval` and `strata eval score`).
#[derive(Debug, Clone)]
pub struct ScorerSettings {
    /// The BERTScore encoder folder (default: all-MiniLM-L6-v2 from setup).
    pub bertscore_model: Option<PathBuf>,
    /// Skip BERTScore.
    pub no_bertscore: bool,
    /// WordNet 3.0 for METEOR's synonyms (default: from setup).
    pub wordnet: Option<PathBuf>,
    /// How caption text is tokenised and aggregated.
    pub protocol: Protocol,
    /// How ROUGE-L folds several references.
    pub rouge_refs: ReferenceAggregate,
    /// ROUGE-L without the Porter stemmer.
    pub no_rouge_stemmer: bool,
}

/// The heavy caption scorers, loaded only for captioning.
pub struct LoadedScorers {
    bertscore: Option<BertScorer>,
    wordnet: Option<WordNet>,
    settings: ScorerSettings,
}

impl LoadedScorers {
    /// Loads what `task` needs. A missing default asset is a warning on stderr (the metric is
    /// skipped); a folder the user named that fails is an error.
    ///
    /// # Errors
    /// When a BERTScore encoder or WordNet folder named in `settings` cannot be loaded.
    pub fn load(settings: &ScorerSettings, task: Task) -> Result<Self, EvalError> {
        let mut loaded = Self { bertscore: None, wordnet: None, settings: settings.clone() };
        if task != Task::Caption {
            return Ok(loaded);
        }
        if !settings.no_bertscore {
            let dir = settings.bertscore_model.clone().unwrap_or_else(BertScorer::default_dir);
            let device = model::device::select(DevicePreference::Auto)?.device();
            match BertScorer::load(&dir, None, device) {
                Ok(scorer) => loaded.bertscore = Some(scorer),
                Err(err) if settings.bertscore_model.is_none() => eprintln!(
                    "warning: BERTScore skipped: {err}\nhint: run `bash scripts/setup.sh` to fetch the default encoder, or pass --bertscore-model"
                ),
                Err(err) => return Err(err),
            }
        }
        let dir = settings.wordnet.clone().unwrap_or_else(WordNet::default_dir);
        match WordNet::load(&dir) {
            Ok(wordnet) => loaded.wordnet = Some(wordnet),
            Err(err) if settings.wordnet.is_none() => eprintln!(
                "warning: METEOR without WordNet synonyms: {err}\nhint: run `bash scripts/setup.sh` to fetch WordNet 3.0, or pass --wordnet"
            ),
            Err(err) => return Err(err),
        }
        Ok(loaded)
    }

    /// The scorers, borrowed for [`score`].
    pub fn scorers(&self) -> CaptionScorers<'_> {
        CaptionScorers {
            protocol: self.settings.protocol,
            bertscore: self.bertscore.as_ref(),
            wordnet: self.wordnet.as_ref(),
            rouge_stemmer: !self.settings.no_rouge_stemmer,
            rouge_references: self.settings.rouge_refs,
        }
    }
}

/// A benchmark run: which benchmark, which model, where the files go.
#[derive(Debug, Clone)]
pub struct BenchmarkSettings {
    /// The benchmark's name as [`crate::readers::read`] knows it (`aid`, `dior-rsvg`, ...).
    pub benchmark: String,
    /// Its folder, in the public layout.
    pub data: PathBuf,
    /// The split to answer.
    pub split: String,
    /// The model artifact.
    pub model: PathBuf,
    /// At most this many samples, spread over the split ([`spread`]).
    pub limit: Option<usize>,
    /// Samples per generation batch.
    pub batch_size: usize,
    /// Where the model runs.
    pub device: DevicePreference,
    /// The type its weights are loaded in there.
    pub precision: model::device::Precision,
    /// The index the prompter's descriptions come from (none by default).
    pub retrieval: RetrievalOptions,
    /// Where predictions, references and the report go.
    pub out: PathBuf,
    /// The caption scorers.
    pub scorers: ScorerSettings,
    /// Show a progress bar.
    pub progress: bool,
}

/// What a benchmark run measured.
#[derive(Debug)]
pub struct BenchmarkRun {
    /// The scores.
    pub report: Report,
    /// `name (split, samples, model version)`, and the unreadable samples when there are any.
    pub header: String,
    /// Samples whose image could not be read (skipped, each warned about).
    pub failed_samples: usize,
}

/// Longest answer per task, tokens.
const fn max_new_tokens(task: Task) -> i64 {
    match task {
        Task::Classify | Task::Vqa => 16,
        Task::Ground => 32,
        // Several boxes of about 20 tokens each.
        Task::Detect => 128,
        Task::Caption => 64,
    }
}

/// At most `limit` samples spread over `samples`: the split, in its stable order, cut into
/// `limit` blocks of equal length, and one sample from each block at a place drawn with a fixed
/// seed (the same subset every run). Benchmarks laid out a folder per class list one class
/// after another, so their first N samples would all be of the first class; and a fixed stride
/// can alias with a repeating layout (RSVQA lists each image's questions kind after kind).
pub fn spread<T>(samples: Vec<T>, limit: usize) -> Vec<T> {
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

fn io_err(path: &Path, action: &str) -> impl FnOnce(std::io::Error) -> EvalError {
    let (path, action) = (path.to_owned(), action.to_owned());
    move |e| EvalError::Io { path, reason: format!("{action}: {e}") }
}

fn write_jsonl<T: serde::Serialize>(path: &Path, items: &[T]) -> Result<(), EvalError> {
    let file = std::fs::File::create(path).map_err(io_err(path, "creating"))?;
    let mut file = std::io::BufWriter::new(file);
    for item in items {
        serde_json::to_writer(&mut file, item).map_err(|e| EvalError::Io { path: path.to_owned(), reason: e.to_string() })?;
        file.write_all(b"\n").map_err(io_err(path, "writing"))?;
    }
    file.flush().map_err(io_err(path, "writing"))
}

fn write_parquet(path: &Path, report: &Report, benchmark: &str, version: &str) -> Result<(), EvalError> {
    use tables::Cell;
    let rows: Vec<Vec<Cell>> = report
        .metrics
        .iter()
        .map(|m| vec![benchmark.into(), version.into(), m.name.as_str().into(), Cell::F64(m.value), Cell::U64(m.count as u64)])
        .collect();
    tables::parquet::write(path, &schemas::tables::EVAL_REPORT, &rows)
        .map_err(|e| EvalError::Io { path: path.to_owned(), reason: e.to_string() })
}

/// Runs a model artifact over a benchmark split and scores it; writes the predictions, the
/// references and the report under `settings.out`. A sample whose image cannot be read is
/// skipped with a warning and counted in [`BenchmarkRun::failed_samples`].
///
/// # Errors
/// An unreadable benchmark folder, model or index; generation failures; unwritable output.
pub fn run_benchmark(settings: &BenchmarkSettings) -> Result<BenchmarkRun, EvalError> {
    let name = &settings.benchmark;
    let mut benchmark = crate::readers::read(name, &settings.data, Some(&settings.split))?;
    if let Some(limit) = settings.limit {
        benchmark.samples = spread(std::mem::take(&mut benchmark.samples), limit);
    }
    let artifact = Artifact::open(&settings.model)?;
    let device = model::device::select(settings.device)?.with_precision(settings.precision);
    let mut model = artifact.load_for_inference(&device)?;
    let weights = model::device::kind_name(model.kind());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| EvalError::Io { path: settings.out.clone(), reason: format!("starting the I/O runtime: {e}") })?;
    let mut retriever = runtime.block_on(Retriever::open(&settings.retrieval, model.config().retrieval.top_k, device.device()))?;
    let scorers = LoadedScorers::load(&settings.scorers, benchmark.task)?;
    let generation = GenerationConfig {
        max_new_tokens: max_new_tokens(benchmark.task),
        sampling: Sampling::Greedy,
        stop_tokens: Vec::new(),
        seed: None,
        slots: None,
    };

    let progress =
        if settings.progress { indicatif::ProgressBar::new(benchmark.samples.len() as u64) } else { indicatif::ProgressBar::hidden() };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} samples ({per_sec}, ETA {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress.set_message(name.clone());
    let mut predictions = Vec::with_capacity(benchmark.samples.len());
    let mut failures = 0usize;
    for batch in benchmark.samples.chunks(settings.batch_size.max(1)) {
        let mut requests = Vec::with_capacity(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        for sample in batch {
            let prepared = RgbImage::read(&sample.image).map_err(EvalError::from).and_then(|image| {
                let pixels = model.preprocess(&image)?;
                let descriptions = match &mut retriever {
                    Some(retriever) => retriever.descriptions(&image, &sample.query)?,
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
                    progress.suspend(|| eprintln!("warning: sample `{}` skipped: {err}", sample.reference.id));
                }
            }
        }
        if !requests.is_empty() {
            let answers = model.generate(&requests, &generation)?;
            for (id, answer) in ids.into_iter().zip(answers) {
                predictions.push(Prediction {
                    id,
                    answer: serde_json::Value::String(answer.text),
                    score: Some(answer.score),
                    box_scores: (!answer.box_scores.is_empty()).then_some(answer.box_scores),
                });
            }
        }
        progress.inc(batch.len() as u64);
    }
    progress.finish_and_clear();

    let references: Vec<Reference> = benchmark.samples.iter().map(|s| s.reference.clone()).collect();
    let report = score(benchmark.task, &predictions, &references, scorers.scorers())?;
    let out = &settings.out;
    std::fs::create_dir_all(out).map_err(io_err(out, "creating"))?;
    write_jsonl(&out.join("predictions.jsonl"), &predictions)?;
    write_jsonl(&out.join("references.jsonl"), &references)?;
    let version = artifact.manifest.version.clone();
    let summary = serde_json::json!({
        "benchmark": name, "split": settings.split, "model_version": version, "samples": benchmark.samples.len(),
        "failed_samples": failures, "device": device.describe(), "precision": device.precision().name(), "weights": weights, "protocol": report.protocol, "warnings": report.warnings, "report": report.to_json(),
    });
    let report_json = out.join("report.json");
    let text = serde_json::to_string_pretty(&summary).map_err(|e| EvalError::Io { path: report_json.clone(), reason: e.to_string() })?;
    std::fs::write(&report_json, text).map_err(io_err(&report_json, "writing"))?;
    write_parquet(&out.join("report.parquet"), &report, name, &version)?;
    let header = format!(
        "{name} ({} split, {} samples, model {version}, {} {weights}){}",
        settings.split,
        benchmark.samples.len(),
        device.describe(),
        if failures > 0 { format!(", {failures} samples could not be read") } else { String::new() }
    );
    Ok(BenchmarkRun { report, header, failed_samples: failures })
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
