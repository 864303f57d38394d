//! Training (MODEL_SPEC §5): next-token loss on response tokens, AdamW with linear warm-up and
//! cosine decay, gradient accumulation and clipping, in the paper's two stages.
//!
//! Which variables train is decided by name: the base LLM (`model.*`, `lm_head.*`) never
//! trains (LoRA adapts it); stage 1 trains the projector and prompter; stage 2 adds the
//! experts, LoRA and the vision tower, the tower at its own, lower learning rate.

use tch::Tensor;

pub use crate::autocast::Precision;
use crate::vlm::{StrataModel, VlmRequest};
use crate::ModelError;

/// The two training stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Stage 1, image–caption alignment: projector and prompter.
    Alignment,
    /// Stage 2, instruction tuning: prompter, projector, experts, LoRA and the vision tower.
    InstructionTuning,
}

impl Stage {
    /// Whether variable `name` trains in this stage.
    pub fn trains(self, name: &str) -> bool {
        match self {
            Self::Alignment => name.starts_with("strata.projector.") || name.starts_with("strata.prompter."),
            Self::InstructionTuning => name.starts_with("strata.") || name.starts_with("vision_model."),
        }
    }
}

/// Optimiser and schedule settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Which stage.
    pub stage: Stage,
    /// Peak learning rate of the prompter, projector, experts and LoRA.
    pub learning_rate: f64,
    /// Peak learning rate of the vision tower (stage 2).
    pub vision_learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Optimiser steps of linear warm-up.
    pub warmup_steps: usize,
    /// Optimiser steps in total (the cosine reaches zero there).
    pub total_steps: usize,
    /// Micro-batches per optimiser step.
    pub grad_accumulation: usize,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// Forward passes in f32 or under bf16 autocast; weights and moments are f32 either way.
    pub precision: Precision,
    /// Also train the base LLM (`model.*`, `lm_head.*`), at the learning rate of the new
    /// modules. Off in the paper's recipe, whose base is pretrained; a base trained from
    /// scratch (a small model on synthetic data) has nothing to preserve.
    pub train_base_llm: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            stage: Stage::InstructionTuning,
            learning_rate: 2e-4,
            vision_learning_rate: 2e-6,
            weight_decay: 0.0,
            warmup_steps: 100,
            total_steps: 1000,
            grad_accumulation: 1,
            max_grad_norm: 1.0,
            precision: Precision::Auto,
            train_base_llm: false,
        }
    }
}

impl TrainConfig {
    /// Whether variable `name` trains: the stage's choice, and the base LLM's own weights too
    /// with [`TrainConfig::train_base_llm`].
    pub fn trains(&self, name: &str) -> bool {
        let base = name.starts_with("model.") || name.starts_with("lm_head.");
        self.stage.trains(name) || (self.train_base_llm && base)
    }

    /// Learning-rate multiplier at optimiser step `step`: linear warm-up, then cosine to 0.
    pub fn schedule(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// What one micro-batch did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// The micro-batch's loss.
    pub loss: f64,
    /// Whether the optimiser stepped (end of an accumulation cycle).
    pub updated: bool,
    /// Learning rate of the last optimiser step.
    pub learning_rate: f64,
}

/// AdamW's moments of one trainable variable.
struct Moments {
    name: String,
    variable: Tensor,
    first: Tensor,
    second: Tensor,
    /// Which learning rate applies (an index into [`AdamW::step`]'s rates).
    group: usize,
}

const BETAS: (f64, f64) = (0.9, 0.999);
const EPSILON: f64 = 1e-8;

/// AdamW with decoupled weight decay, as `torch.optim.AdamW` computes it (β = (0.9, 0.999),
/// ε = 1e-8, bias-corrected moments), written out here rather than taken from libtorch so that
/// its state (the moments and the step count) can be saved in a checkpoint and a resumed run
/// continues exactly as an uninterrupted one. Parameters come in groups, each with its own
/// learning rate (the paper's instruct stage trains the vision tower at a lower one).
pub struct AdamW {
    moments: Vec<Moments>,
    steps: usize,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW").field("parameters", &self.moments.len()).field("steps", &self.steps).finish()
    }
}

impl AdamW {
    /// Optimises `(name, variable, group)` parameters (the variables must require gradients).
    pub fn new(parameters: impl IntoIterator<Item = (String, Tensor, usize)>) -> Self {
        let moments = parameters
            .into_iter()
            .map(|(name, variable, group)| {
                let (first, second) = (variable.zeros_like(), variable.zeros_like());
                Moments { name, variable, first, second, group }
            })
            .collect();
        Self { moments, steps: 0 }
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Whether it optimises nothing.
    pub fn is_empty(&self) -> bool {
        self.moments.is_empty()
    }

    /// The global L2 norm of the gradients present (0 before any backward pass).
    pub fn grad_norm(&self) -> f64 {
        tch::no_grad(|| {
            self.moments
                .iter()
                .map(|m| m.variable.grad())
                .filter(Tensor::defined)
                .map(|g| g.pow_tensor_scalar(2).sum(tch::Kind::Double).double_value(&[]))
                .sum::<f64>()
                .sqrt()
        })
    }

    /// One step: each gradient times `grad_scale` (global-norm clipping), the learning rate of
    /// its group from `learning_rates`, then the gradients are zeroed. Parameters without a
    /// gradient (unused this step) are left alone, as torch does.
    ///
    /// # Panics
    /// Never for groups given to [`AdamW::new`] that `learning_rates` covers; a group past its
    /// end takes the last rate.
    pub fn step(&mut self, learning_rates: &[f64], weight_decay: f64, grad_scale: f64) {
        self.steps += 1;
        let t = i32::try_from(self.steps).unwrap_or(i32::MAX);
        let (bias1, bias2) = (1.0 - BETAS.0.powi(t), 1.0 - BETAS.1.powi(t));
        tch::no_grad(|| {
            for m in &mut self.moments {
                let grad = m.variable.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = if grad_scale == 1.0 { grad } else { &grad * grad_scale };
                let lr = learning_rates.get(m.group).or(learning_rates.last()).copied().unwrap_or(0.0);
                m.first.copy_(&(&m.first * BETAS.0 + &grad * (1.0 - BETAS.0)));
                m.second.copy_(&(&m.second * BETAS.1 + grad.square() * (1.0 - BETAS.1)));
                let denominator = (&m.second / bias2).sqrt() + EPSILON;
                let update = (&m.first / bias1) / denominator;
                let decayed = &m.variable * (1.0 - lr * weight_decay);
                m.variable.copy_(&(decayed - update * lr));
                let _ = m.variable.grad().zero_();
            }
        });
    }

    /// The moments, `<name>.exp_avg` and `<name>.exp_avg_sq`, for a checkpoint.
    pub fn moments(&self) -> Vec<(String, Tensor)> {
        self.moments
            .iter()
            .flat_map(|m| {
                [(format!("{}.exp_avg", m.name), m.first.shallow_clone()), (format!("{}.exp_avg_sq", m.name), m.second.shallow_clone())]
            })
            .collect()
    }

    /// Restores the step count and what [`AdamW::moments`] returned.
    ///
    /// # Errors
    /// [`ModelError::Request`] when a moment is missing or has another shape (a checkpoint of
    /// another model or stage).
    pub fn restore(&mut self, steps: usize, moments: &std::collections::HashMap<String, Tensor>) -> Result<(), ModelError> {
        for m in &mut self.moments {
            for (suffix, target) in [("exp_avg", &mut m.first), ("exp_avg_sq", &mut m.second)] {
                let key = format!("{}.{suffix}", m.name);
                let saved = moments.get(&key).ok_or_else(|| ModelError::Request { reason: format!("the checkpoint has no `{key}`") })?;
                if saved.size() != target.size() {
                    return Err(ModelError::Request {
                        reason: format!("`{key}` has shape {:?} in the checkpoint, {:?} in the model", saved.size(), target.size()),
                    });
                }
                tch::no_grad(|| target.copy_(saved));
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Trains a model in place: freezes what the stage does not train, runs micro-batches with
/// gradient accumulation, clips the global gradient norm, follows the warm-up + cosine
/// schedule and steps [`AdamW`] (the vision tower in its own group).
pub struct Trainer {
    optimizer: AdamW,
    config: TrainConfig,
    micro_steps: usize,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("config", &self.config).field("optimizer", &self.optimizer).finish_non_exhaustive()
    }
}

/// What a checkpoint holds of the optimiser besides the moments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainerState {
    /// Micro-batches run.
    pub micro_steps: usize,
    /// Optimiser steps taken.
    pub optimizer_steps: usize,
}

/// The parameter group of the vision tower's variables.
const VISION_GROUP: usize = 1;

impl Trainer {
    /// Freezes what the stage does not train and sets up AdamW over the rest.
    ///
    /// # Errors
    /// [`ModelError::Request`] for zero accumulation or total steps, or a stage that trains
    /// nothing in this model.
    pub fn new(model: &StrataModel, config: TrainConfig) -> Result<Self, ModelError> {
        if config.grad_accumulation == 0 || config.total_steps == 0 {
            return Err(ModelError::Request { reason: "grad_accumulation and total_steps must be at least 1".into() });
        }
        let mut variables: Vec<(String, Tensor)> = model.var_store().variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let mut parameters = Vec::new();
        for (name, variable) in variables {
            let trains = config.trains(&name);
            let variable = variable.set_requires_grad(trains);
            if trains {
                let group = if name.starts_with("vision_model.") { VISION_GROUP } else { 0 };
                parameters.push((name, variable, group));
            }
        }
        let optimizer = AdamW::new(parameters);
        if optimizer.is_empty() {
            return Err(ModelError::Request { reason: format!("the {:?} stage trains no variable of this model", config.stage) });
        }
        Ok(Self { optimizer, config, micro_steps: 0 })
    }

    /// Names of the variables that train.
    pub fn trainable(model: &StrataModel) -> Vec<String> {
        let mut names: Vec<String> = model.var_store().variables().into_iter().filter(|(_, v)| v.requires_grad()).map(|(n, _)| n).collect();
        names.sort();
        names
    }

    /// Micro-batches and optimiser steps so far.
    pub fn state(&self) -> TrainerState {
        TrainerState { micro_steps: self.micro_steps, optimizer_steps: self.optimizer.steps() }
    }

    /// The optimiser's moments, `<name>.exp_avg` and `<name>.exp_avg_sq`, for a checkpoint.
    pub fn moments(&self) -> Vec<(String, Tensor)> {
        self.optimizer.moments()
    }

    /// Restores what [`Trainer::state`] and [`Trainer::moments`] returned.
    ///
    /// # Errors
    /// [`ModelError::Request`] when a moment is missing or has another shape (a checkpoint of
    /// another model or stage).
    pub fn restore(&mut self, state: TrainerState, moments: &std::collections::HashMap<String, Tensor>) -> Result<(), ModelError> {
        self.optimizer.restore(state.optimizer_steps, moments)?;
        self.micro_steps = state.micro_steps;
        Ok(())
    }

    /// Runs one micro-batch: loss, backward, and an optimiser step at the end of each
    /// accumulation cycle (clip, schedule, step, zero the gradients).
    ///
    /// # Errors
    /// As [`StrataModel::loss`].
    pub fn step(&mut self, model: &mut StrataModel, requests: &[VlmRequest], responses: &[String]) -> Result<StepOutcome, ModelError> {
        let loss = {
            // Autocast covers the forward pass only; backward runs each operator in the dtype
            // its forward used, and the gradients land on the f32 weights.
            let _autocast = self.config.precision.scope(model.device());
            model.loss(requests, responses)?.to_kind(tch::Kind::Float)
        };
        (&loss / self.config.grad_accumulation as f64).backward();
        self.micro_steps += 1;
        let scale = self.config.schedule(self.optimizer.steps());
        let learning_rate = self.config.learning_rate * scale;
        let updated = self.micro_steps.is_multiple_of(self.config.grad_accumulation);
        if updated {
            // The vision tower trains (at its own rate) in the instruct stage only.
            let vision =
                if self.config.stage == Stage::InstructionTuning { self.config.vision_learning_rate * scale } else { learning_rate };
            let clip = (self.config.max_grad_norm / (self.optimizer.grad_norm() + 1e-6)).min(1.0);
            self.optimizer.step(&[learning_rate, vision], self.config.weight_decay, clip);
        }
        Ok(StepOutcome { loss: loss.double_value(&[]), updated, learning_rate })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let config = TrainConfig { warmup_steps: 10, total_steps: 110, ..Default::default() };
        assert!((config.schedule(0) - 0.1).abs() < 1e-12);
        assert!((config.schedule(9) - 1.0).abs() < 1e-12);
        assert!((config.schedule(10) - 1.0).abs() < 1e-12);
        assert!((config.schedule(60) - 0.5).abs() < 1e-12);
        assert!(config.schedule(110).abs() < 1e-12);
        assert!(config.schedule(500).abs() < 1e-12);
    }

    #[test]
    fn stages_train_what_the_paper_says() {
        assert!(Stage::Alignment.trains("strata.prompter.aggregation_tokens"));
        assert!(Stage::Alignment.trains("strata.projector.linear_1.weight"));
        assert!(!Stage::Alignment.trains("strata.llm.layers.3.experts.0.up.weight"));
        assert!(!Stage::Alignment.trains("vision_model.post_layernorm.weight"));
        assert!(Stage::InstructionTuning.trains("strata.llm.layers.3.experts.0.up.weight"));
        assert!(Stage::InstructionTuning.trains("strata.llm.layers.0.self_attn.q_proj.lora_b"));
        assert!(Stage::InstructionTuning.trains("vision_model.post_layernorm.weight"));
        for stage in [Stage::Alignment, Stage::InstructionTuning] {
            assert!(!stage.trains("model.layers.0.self_attn.q_proj.weight"));
            assert!(!stage.trains("lm_head.weight"));
            // A base trained from scratch may train as well, when asked.
            let config = TrainConfig { stage, train_base_llm: true, ..TrainConfig::default() };
            assert!(config.trains("model.layers.0.self_attn.q_proj.weight") && config.trains("lm_head.weight"));
            assert!(!TrainConfig { stage, ..TrainConfig::default() }.trains("lm_head.weight"));
        }
    }
}
