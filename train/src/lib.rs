//! Strata's training jobs as a library: what `strata train align|instruct|retriever` runs, and
//! what a test or a notebook can drive without spawning the binary.
//!
//! One loop ([`run_loop`], private) owns what every job shares: the seeded data order
//! ([`sampler`]), libtorch's generator reseeded per step, checkpoints with the run's identity
//! and resume ([`checkpoint`]), the divergence guard, `metrics.csv` and `eval.csv`, held-out
//! evaluation every `eval_every` steps, `--stop-after`, and progress. An [`Objective`] is what
//! differs: the paper's two stages of the model (MODEL_SPEC §5, [`vlm`]) and the retriever's
//! contrastive training of its image tower ([`retriever`]).
//!
//! The model's optimisation arithmetic (AdamW in groups, warm-up and cosine, which weights a
//! stage trains) is `model::train`'s; this crate lives above `model`, `retrieval` and `eval`
//! because a job retrieves descriptions for its samples and scores its held-out answers.
//!
//! ```no_run
//! let options = train::RunOptions { progress: false, ..train::RunOptions::default() };
//! let outcome = train::vlm::run(model::train::Stage::Alignment, std::path::Path::new("align.toml"), &options)?;
//! println!("{outcome}");
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod checkpoint;
pub mod data;
mod progress;
mod remote;
pub mod retriever;
pub mod sampler;
pub mod vlm;

use std::{
    collections::HashMap,
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::bail;
use model::device::DevicePreference;
use model::tch::Tensor;

use crate::{
    checkpoint::{latest_checkpoint, restart_table, restore_checkpoint, write_checkpoint, Checkpoint, CheckpointState, RunIdentity},
    progress::StepProgress,
    sampler::batch_indices,
};

/// How a job runs (the `strata train` flags); what it trains is in its training file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where it runs: `auto` takes CUDA when it is usable.
    pub device: DevicePreference,
    /// Continue from the run folder's latest checkpoint (refused if another configuration
    /// wrote it); without it, a folder holding checkpoints is refused.
    pub resume: bool,
    /// Run about this many steps now (up to the end of the accumulation cycle), then
    /// checkpoint and stop.
    pub stop_after: Option<usize>,
    /// Show progress (a bar on a terminal, a line every 5 % of the steps without one).
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { device: DevicePreference::Auto, resume: false, stop_after: None, progress: true }
    }
}

/// What a job did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every step ran; `output` is the trained model artifact or tower.
    Trained {
        /// The trained artifact (`<out>/model`) or tower (`<out>/retriever`).
        output: PathBuf,
        /// The loss of the last step.
        last_loss: f64,
        /// What the job reports, one line each (the result, its measurements, how to use it).
        summary: Vec<String>,
    },
    /// `stop_after` steps ran and were checkpointed; `--resume` continues.
    Stopped {
        /// The last step done.
        step: usize,
        /// All the steps of the run.
        steps: usize,
    },
    /// The run folder holds a finished run of this configuration already.
    AlreadyDone {
        /// The run folder.
        out: PathBuf,
        /// Its steps.
        steps: usize,
        /// Its output.
        output: PathBuf,
        /// What the output is (`model`, `tower`).
        what: &'static str,
    },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Trained { summary, .. } => write!(f, "{}", summary.join("\n")),
            Self::Stopped { step, steps } => write!(f, "stopped after step {step} of {steps}, checkpointed; continue with --resume"),
            Self::AlreadyDone { out, steps, output, what } => {
                write!(f, "`{}` finished all {steps} steps already: its {what} is {} (nothing to do)", out.display(), output.display())
            }
        }
    }
}

/// The optimiser settings every objective takes (AdamW with decoupled weight decay, linear
/// warm-up then cosine decay, a global gradient-norm clip). Each training file gives them
/// under the same keys; the defaults are the objective's (`vlm::TrainFile`,
/// `retriever::RetrieverFile`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimiserSettings {
    /// Peak learning rate of the new modules (or of the retriever's projection).
    pub learning_rate: f64,
    /// Peak learning rate of the vision transformer; 0 keeps it as it is.
    pub vision_learning_rate: f64,
    /// Optimiser steps of linear warm-up (default: 5 % of the optimiser steps).
    pub warmup_steps: Option<usize>,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
}

impl OptimiserSettings {
    /// Refuses settings that would train backwards (a negative rate is gradient ascent), never
    /// stop (NaN or infinity) or do nothing: the learning rate and the clip must be finite and
    /// positive, the vision tower's rate and the weight decay finite and ≥ 0; a warm-up longer
    /// than the run would never reach the peak rate.
    ///
    /// # Errors
    /// The first setting out of range, named with the training file `config`.
    pub fn check(&self, config: &Path, optimizer_steps: usize) -> anyhow::Result<()> {
        let settings = [
            ("learning_rate", self.learning_rate, false),
            ("vision_learning_rate", self.vision_learning_rate, true),
            ("max_grad_norm", self.max_grad_norm, false),
            ("weight_decay", self.weight_decay, true),
        ];
        for (name, value, zero_allowed) in settings {
            let ok = value.is_finite() && (value > 0.0 || (zero_allowed && value == 0.0));
            if !ok {
                let range = if zero_allowed { "a finite number ≥ 0" } else { "a finite number > 0" };
                bail!("`{}`: {name} is {value}; it must be {range}", config.display());
            }
        }
        if let Some(warmup) = self.warmup_steps.filter(|w| *w > optimizer_steps) {
            bail!(
                "`{}`: warmup_steps ({warmup}) is more than the run's {optimizer_steps} optimiser steps: the learning rate would never reach its peak\nhint: lower warmup_steps, or leave it out for 5 % of the steps",
                config.display()
            );
        }
        Ok(())
    }

    /// The warm-up of a run of `optimizer_steps`: as set, else 5 % of the steps.
    pub fn warmup(&self, optimizer_steps: usize) -> usize {
        self.warmup_steps.unwrap_or(optimizer_steps / 20)
    }
}

/// One step's report from an objective.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepReport {
    /// The training loss of the micro-batch, before the update.
    pub loss: f64,
    /// The learning rate of the main group.
    pub learning_rate: f64,
    /// Seconds of compute for the micro-batch (its samples per second are reported).
    pub seconds: f64,
}

/// What a training job trains, and how. The loop ([`run_loop`]) calls, in order: [`restore`]
/// when resuming, [`prepare`], [`start`], then per step [`step`] and, on evaluation steps,
/// [`evaluate`], and at the end [`finish`].
///
/// [`restore`]: Objective::restore
/// [`prepare`]: Objective::prepare
/// [`start`]: Objective::start
/// [`step`]: Objective::step
/// [`evaluate`]: Objective::evaluate
/// [`finish`]: Objective::finish
pub(crate) trait Objective {
    /// Prefixes the progress bar and its lines (`Alignment`, `retriever`).
    fn label(&self) -> String;
    /// What a step's samples are called in rates (`samples`, `pairs`).
    fn unit(&self) -> &'static str;
    /// Training samples the sampler draws from.
    fn samples(&self) -> usize;
    /// Micro-batches per optimiser step; checkpoints and stops fall on optimiser steps.
    fn grad_accumulation(&self) -> usize {
        1
    }
    /// The output of a finished run in `out`, if it is there, and what it is.
    fn finished_output(&self, out: &Path) -> Option<(PathBuf, &'static str)>;
    /// The trained variables by name, for restoring a checkpoint into.
    fn variables(&self) -> HashMap<String, Tensor>;
    /// Restores the optimiser's state from a checkpoint (the weights are restored already).
    fn restore(&mut self, state: &CheckpointState, moments: &HashMap<String, Tensor>) -> anyhow::Result<()>;
    /// The checkpoint of step `step`: its state, the trainable weights, the optimiser's moments.
    fn checkpoint(&self, step: usize, identity: &RunIdentity) -> Checkpoint;
    /// The expensive preparation (decoding every image, embedding texts, opening an index),
    /// done once it is known that the run goes on.
    fn prepare(&mut self) -> anyhow::Result<()>;
    /// The line said before the first step (what trains, where, how much).
    fn banner(&self) -> String;
    /// Measures the starting point when there is one to measure (run from step
    /// `first_step`; `kept_eval` are the `eval.csv` rows kept from before it).
    fn start(&mut self, first_step: usize, kept_eval: &[String], eval_csv: &mut File) -> anyhow::Result<()>;
    /// Trains on the samples `indices`.
    fn step(&mut self, indices: &[usize]) -> anyhow::Result<StepReport>;
    /// Whether there is held-out data to evaluate on.
    fn has_held_out(&self) -> bool;
    /// Evaluates on the held-out data after step `done`, writing its rows; returns the line to
    /// show.
    fn evaluate(&mut self, done: usize, elapsed: f64, metrics: &mut File, eval_csv: &mut File) -> anyhow::Result<Option<String>>;
    /// Writes the output of a finished run to `out` and reports.
    fn finish(self, out: &Path, last_loss: f64, seconds: f64) -> anyhow::Result<Outcome>;
}

/// The settings of the loop itself, from the training file.
pub(crate) struct LoopSettings<'a> {
    /// The run folder.
    pub out: &'a Path,
    /// Micro-batches to run.
    pub steps: usize,
    /// Samples per micro-batch.
    pub batch_size: usize,
    /// Seed of the data order and of libtorch's generator.
    pub seed: u64,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Steps between held-out evaluations.
    pub eval_every: usize,
    /// What the run is; a checkpoint of another identity is refused.
    pub identity: RunIdentity,
}

/// Stops a run whose training loss is no longer finite: its weights are NaN or infinite from
/// here on, and an output written from them would load, verify and answer gibberish.
/// Checkpoints already written stay as they were. The loss is measured before each update, so
/// an update that ruins the weights shows one step later: a checkpoint taken on that step can
/// hold them, and an update on the very last step is not caught.
///
/// # Errors
/// When `loss` is NaN or infinite: the step, and what to change.
fn diverged(loss: f64, step: usize, out: &Path, metrics: &mut impl std::io::Write) -> anyhow::Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    metrics.flush()?;
    bail!(
        "the training loss is {loss} at step {step}: the run diverged, and no model is written to `{}`\n\
         hint: lower learning_rate or max_grad_norm, and start again with another `out`",
        out.display()
    )
}

/// The training loop every job runs (see the crate docs). A resumed run continues exactly as
/// an uninterrupted one: the data order is a function of the seed and the step, libtorch's
/// generator is reseeded from the seed and the step before every step, and a checkpoint holds
/// the trainable weights, the optimiser's moments and its step counts.
///
/// # Errors
/// A run folder holding checkpoints without `resume`, a checkpoint of another configuration,
/// a diverged loss, unwritable files, and the objective's own errors.
pub(crate) fn run_loop<O: Objective>(mut objective: O, settings: LoopSettings<'_>, options: &RunOptions) -> anyhow::Result<Outcome> {
    let LoopSettings { out, steps, batch_size, seed, checkpoint_every, eval_every, identity } = settings;
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("creating `{}`: {e}", out.display()))?;

    // Resume: the latest checkpoint of this very configuration.
    let mut first_step = 0;
    let checkpoint = latest_checkpoint(out);
    if checkpoint.is_none() && options.resume {
        // Said rather than refused: a script may pass --resume on every start.
        eprintln!("note: `{}` holds no checkpoint yet; --resume starts the run from step 0", out.display());
    }
    if let Some(checkpoint) = checkpoint {
        if !options.resume {
            bail!("`{}` already holds checkpoints of a run\nhint: add --resume to continue it, or give another `out`", out.display());
        }
        let (state, moments) = restore_checkpoint(&checkpoint, &identity, &objective.variables())?;
        objective.restore(&state, &moments)?;
        first_step = state.step;
        if let Some((output, what)) = objective.finished_output(out).filter(|_| first_step >= steps) {
            return Ok(Outcome::AlreadyDone { out: out.to_owned(), steps, output, what });
        }
        eprintln!("resuming from {} (step {first_step})", checkpoint.display());
    }

    // metrics.csv and eval.csv keep the rows up to the checkpoint resumed from.
    let (mut metrics, kept) = restart_table(&out.join("metrics.csv"), "step,split,loss,learning_rate,samples_per_s,elapsed_s", first_step)?;
    let (mut eval_csv, kept_eval) = restart_table(&out.join("eval.csv"), "step,task,metric,value,samples", first_step)?;
    // The loss reported at the end, should no step remain (a run stopped after its last checkpoint).
    let mut last_loss = kept
        .iter()
        .rev()
        .find_map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            (fields.get(1) == Some(&"train")).then(|| fields.get(2).and_then(|v| v.parse::<f64>().ok())).flatten()
        })
        .unwrap_or(f64::NAN);

    objective.prepare()?;
    eprintln!("{}", objective.banner());
    objective.start(first_step, &kept_eval, &mut eval_csv)?;

    let progress = StepProgress::new(objective.label(), objective.unit(), steps, first_step, !options.progress);
    let accumulation = objective.grad_accumulation();
    for step in first_step..steps {
        // Dropout draws from libtorch's generator: reseeded per step, a resumed run draws alike.
        model::tch::manual_seed(seed.wrapping_mul(1_000_003).wrapping_add(step as u64) as i64);
        let indices = batch_indices(objective.samples(), batch_size, seed, step);
        let report = objective.step(&indices)?;
        let rate = batch_size as f64 / report.seconds.max(1e-9);
        let done = step + 1;
        last_loss = report.loss;
        writeln!(metrics, "{done},train,{:.6},{:.3e},{rate:.3},{:.1}", report.loss, report.learning_rate, progress.elapsed())?;
        diverged(report.loss, done, out, &mut metrics)?;
        progress.step(done, report.loss, rate);
        if objective.has_held_out() && (done.is_multiple_of(eval_every) || done == steps) {
            if let Some(line) = objective.evaluate(done, progress.elapsed(), &mut metrics, &mut eval_csv)? {
                progress.bar.println(line);
            }
        }
        // Checkpoints fall on optimiser steps: gradients half-accumulated are not saved.
        let boundary = done.is_multiple_of(accumulation);
        let stopping = options.stop_after.is_some_and(|n| done - first_step >= n) && done < steps && boundary;
        if done.is_multiple_of(checkpoint_every) || done == steps || stopping {
            metrics.flush()?;
            write_checkpoint(out, &objective.checkpoint(done, &identity))?;
        }
        if stopping {
            progress.bar.finish_and_clear();
            return Ok(Outcome::Stopped { step: done, steps });
        }
    }
    progress.bar.finish_and_clear();
    metrics.flush()?;
    objective.finish(out, last_loss, progress.elapsed())
}

/// Reads a training file (TOML, unknown keys refused by its type) and returns it with the
/// folder its relative paths are relative to.
///
/// # Errors
/// An unreadable file, or one that is not valid for `T` (named with the file).
pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(config: &Path) -> anyhow::Result<(T, &Path)> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(config).with_context(|| format!("reading `{}`", config.display()))?;
    let file = toml::from_str(&text).with_context(|| format!("in `{}`", config.display()))?;
    Ok((file, config.parent().unwrap_or(Path::new("."))))
}

/// Counts a training file must give as at least 1.
///
/// # Errors
/// The first that is 0, named with the file.
pub(crate) fn check_counts(config: &Path, counts: &[(&str, usize)]) -> anyhow::Result<()> {
    if let Some((name, _)) = counts.iter().find(|(_, value)| *value == 0) {
        bail!("`{}`: {name} is 0; it must be at least 1", config.display());
    }
    Ok(())
}
