//! Training (MODEL_SPEC §5): next-token loss on response tokens, AdamW with linear warm-up and
//! cosine decay, gradient accumulation and clipping, in the paper's two stages.
//!
//! Which variables train is decided by name: the base LLM (`model.*`, `lm_head.*`) never
//! trains (LoRA adapts it); stage 1 trains the projector and prompter; stage 2 adds the
//! experts, LoRA and the vision tower, the tower at its own, lower learning rate (optimiser
//! group [`crate::vlm::VISION_GROUP`]).

use tch::nn::{self, OptimizerConfig};

use crate::vlm::{StrataModel, VlmRequest, VISION_GROUP};
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
        }
    }
}

impl TrainConfig {
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

/// Trains a model in place.
pub struct Trainer {
    optimizer: nn::Optimizer,
    config: TrainConfig,
    micro_steps: usize,
    optimizer_steps: usize,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("config", &self.config).field("optimizer_steps", &self.optimizer_steps).finish_non_exhaustive()
    }
}

impl Trainer {
    /// Freezes what the stage does not train and builds AdamW over the rest.
    ///
    /// # Errors
    /// [`ModelError::Torch`] when the optimiser cannot be built; [`ModelError::Request`] for
    /// zero accumulation or total steps.
    pub fn new(model: &StrataModel, config: TrainConfig) -> Result<Self, ModelError> {
        if config.grad_accumulation == 0 || config.total_steps == 0 {
            return Err(ModelError::Request { reason: "grad_accumulation and total_steps must be at least 1".into() });
        }
        for (name, variable) in model.var_store().variables() {
            let _ = variable.set_requires_grad(config.stage.trains(&name));
        }
        let optimizer = nn::AdamW { wd: config.weight_decay, ..Default::default() }
            .build(model.var_store(), config.learning_rate)
            .map_err(|source| ModelError::Torch { action: "building AdamW".into(), source })?;
        Ok(Self { optimizer, config, micro_steps: 0, optimizer_steps: 0 })
    }

    /// Names of the variables that train.
    pub fn trainable(model: &StrataModel) -> Vec<String> {
        let mut names: Vec<String> = model.var_store().variables().into_iter().filter(|(_, v)| v.requires_grad()).map(|(n, _)| n).collect();
        names.sort();
        names
    }

    /// Runs one micro-batch: loss, backward, and an optimiser step at the end of each
    /// accumulation cycle (clip, schedule, step, zero the gradients).
    ///
    /// # Errors
    /// As [`StrataModel::loss`].
    pub fn step(&mut self, model: &mut StrataModel, requests: &[VlmRequest], responses: &[String]) -> Result<StepOutcome, ModelError> {
        let loss = model.loss(requests, responses)?;
        (&loss / self.config.grad_accumulation as f64).backward();
        self.micro_steps += 1;
        let scale = self.config.schedule(self.optimizer_steps);
        let learning_rate = self.config.learning_rate * scale;
        let updated = self.micro_steps.is_multiple_of(self.config.grad_accumulation);
        if updated {
            self.optimizer.clip_grad_norm(self.config.max_grad_norm);
            self.optimizer.set_lr_group(0, learning_rate);
            if self.config.stage == Stage::InstructionTuning {
                self.optimizer.set_lr_group(VISION_GROUP, self.config.vision_learning_rate * scale);
            }
            self.optimizer.step();
            self.optimizer.zero_grad();
            self.optimizer_steps += 1;
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
        }
    }
}
