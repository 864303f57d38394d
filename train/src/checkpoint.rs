//! Checkpoints and run identity. A run folder holds `checkpoints/step-NNNNNN/` (the trainable
//! weights, the optimiser's moments and `state.json`), `metrics.csv` and `eval.csv`. A
//! checkpoint records the digest of the settings that shape the loss curve ([`RunIdentity`]),
//! so resuming with another configuration is refused with the settings that differ named.

use std::{
    collections::HashMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use model::tch::Tensor;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Micro-batches done.
    pub step: usize,
    /// Micro-steps the optimiser has accumulated.
    pub micro_steps: usize,
    /// Optimiser steps taken (the schedule's position).
    pub optimizer_steps: usize,
    /// [`RunIdentity::digest`] of the run that wrote it.
    pub config_digest: String,
    /// The settings the digest covers, to name the ones that differ (absent in checkpoints
    /// written before they were kept).
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

/// A checkpoint to write: its state, the trainable weights and the optimiser's moments, each
/// by variable name.
pub struct Checkpoint {
    /// `state.json`.
    pub state: CheckpointState,
    /// The trainable variables.
    pub weights: Vec<(String, Tensor)>,
    /// The optimiser's moments.
    pub moments: Vec<(String, Tensor)>,
}

/// What a run is: the settings that shape its loss curve, and their digest.
#[derive(Debug, Clone)]
pub struct RunIdentity {
    /// 16 hex digits of the sha256 of `config`.
    pub digest: String,
    config: serde_json::Value,
}

impl RunIdentity {
    /// The identity of a run with these settings.
    pub fn new(config: serde_json::Value) -> Self {
        let digest = format!("{:x}", sha2::Sha256::digest(config.to_string().as_bytes()))[..16].to_owned();
        Self { digest, config }
    }

    /// The state a checkpoint of this run holds.
    pub fn state(&self, step: usize, micro_steps: usize, optimizer_steps: usize) -> CheckpointState {
        CheckpointState { step, micro_steps, optimizer_steps, config_digest: self.digest.clone(), config: Some(self.config.clone()) }
    }

    /// `key (saved → now)` for each setting that differs from `saved`.
    pub fn differences(&self, saved: &serde_json::Value) -> Vec<String> {
        let (Some(now), Some(then)) = (self.config.as_object(), saved.as_object()) else { return Vec::new() };
        let mut keys: Vec<&String> = now.keys().chain(then.keys()).collect();
        keys.sort();
        keys.dedup();
        let shown = |v: Option<&serde_json::Value>| v.map_or_else(|| "unset".to_owned(), ToString::to_string);
        keys.into_iter()
            .filter(|k| now.get(*k) != then.get(*k))
            .map(|k| format!("{k} ({} → {})", shown(then.get(k)), shown(now.get(k))))
            .collect()
    }
}

/// Writes `checkpoints/step-N/` (weights, optimiser moments, state) through a `.partial`
/// folder renamed at the end, so a kill mid-write leaves the previous checkpoint the latest.
///
/// # Errors
/// When a file cannot be written.
pub fn write_checkpoint(out: &Path, checkpoint: &Checkpoint) -> anyhow::Result<()> {
    let Checkpoint { state, weights, moments } = checkpoint;
    let dir = out.join("checkpoints").join(format!("step-{:06}", state.step));
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).with_context(|| format!("creating `{}`", partial.display()))?;
    Tensor::write_safetensors(weights, partial.join("weights.safetensors")).context("writing the checkpoint's weights")?;
    Tensor::write_safetensors(moments, partial.join("optimizer.safetensors")).context("writing the checkpoint's optimiser state")?;
    std::fs::write(partial.join("state.json"), serde_json::to_string_pretty(state)?)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir).with_context(|| format!("finishing `{}`", dir.display()))?;
    Ok(())
}

/// Reads a checkpoint of the run `identity` into `variables` and returns its state and the
/// optimiser's moments.
///
/// # Errors
/// A checkpoint of another configuration, one holding a variable that is not in
/// `variables`, or unreadable files.
pub fn restore_checkpoint(
    checkpoint: &Path,
    identity: &RunIdentity,
    variables: &HashMap<String, Tensor>,
) -> anyhow::Result<(CheckpointState, HashMap<String, Tensor>)> {
    let state: CheckpointState = serde_json::from_str(&std::fs::read_to_string(checkpoint.join("state.json"))?)?;
    if state.config_digest != identity.digest {
        let differences = state.config.as_ref().map(|saved| identity.differences(saved)).unwrap_or_default();
        let what = if differences.is_empty() {
            "start, data, stage, schedule, batch or seed differ".to_owned()
        } else {
            format!("it differs in {}", differences.join(", "))
        };
        bail!(
            "`{}` was written by another training configuration (digest {} ≠ {}): {what}\nhint: resume with the configuration that made it, or give another `out`",
            checkpoint.display(),
            state.config_digest,
            identity.digest
        );
    }
    let weights: HashMap<String, Tensor> = Tensor::read_safetensors(checkpoint.join("weights.safetensors"))?.into_iter().collect();
    model::tch::no_grad(|| -> anyhow::Result<()> {
        for (name, saved) in &weights {
            let mut variable =
                variables.get(name).with_context(|| format!("the checkpoint holds `{name}`, which is not trained here"))?.shallow_clone();
            variable.f_copy_(saved).with_context(|| format!("the checkpoint's `{name}` does not fit the variable of that name"))?;
        }
        Ok(())
    })?;
    let moments: HashMap<String, Tensor> = Tensor::read_safetensors(checkpoint.join("optimizer.safetensors"))?.into_iter().collect();
    Ok((state, moments))
}

/// The newest complete checkpoint of the run folder `out` (a `.partial` one is ignored).
pub fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(out.join("checkpoints"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.extension().is_none() && p.join("state.json").exists())
        .collect();
    found.sort();
    found.pop()
}

/// Rewrites the per-step CSV table at `path` with `header` and the rows of steps up to
/// `first_step` (those before the checkpoint a run resumes from; none for a fresh run), and
/// returns it open for the next rows, with the rows kept.
///
/// # Errors
/// When the file cannot be written.
pub fn restart_table(path: &Path, header: &str, first_step: usize) -> anyhow::Result<(std::fs::File, Vec<String>)> {
    let kept: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| l.split(',').next().and_then(|s| s.parse::<usize>().ok()).is_some_and(|s| s <= first_step))
        .map(str::to_owned)
        .collect();
    let mut file = std::fs::File::create(path).with_context(|| format!("writing `{}`", path.display()))?;
    writeln!(file, "{header}")?;
    for line in &kept {
        writeln!(file, "{line}")?;
    }
    Ok((file, kept))
}
