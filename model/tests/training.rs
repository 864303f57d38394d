//! A tiny model learns a trivially learnable image → text mapping (the colour of the image)
//! in a few hundred CPU steps, with the base LLM frozen: the answer can only come through the
//! vision tower, projector, prompter, experts and LoRA, and each of them must receive
//! gradients and move.

mod common;

use std::collections::BTreeMap;

use common::*;
use model::artifact::{self, Artifact, Provenance};
use model::generate::{GenerationConfig, Sampling};
use model::train::{Precision, Stage, TrainConfig, Trainer};
use model::vlm::{StrataModel, VlmRequest};
use tch::{Kind, Tensor};

const COLOURS: [(&str, [u8; 3]); 4] =
    [("red", [220, 20, 20]), ("green", [20, 220, 20]), ("blue", [20, 20, 220]), ("yellow", [230, 230, 20])];
const QUERY: &str = "What colour is the image?";

fn batch(model: &StrataModel, step: u64) -> (Vec<VlmRequest>, Vec<String>) {
    let mut requests = Vec::new();
    let mut answers = Vec::new();
    for (i, (name, rgb)) in COLOURS.iter().enumerate() {
        for copy in 0..2u64 {
            let seed = step * 100 + i as u64 * 10 + copy;
            requests.push(request(colour_image(model, *rgb, seed), QUERY, &["The image shows a area seen from above."]));
            answers.push((*name).to_owned());
        }
    }
    (requests, answers)
}

fn snapshot(model: &StrataModel, groups: &[&str]) -> BTreeMap<String, Tensor> {
    model
        .var_store()
        .variables()
        .into_iter()
        .filter(|(name, _)| groups.iter().any(|g| name.contains(g)))
        .map(|(name, t)| (name, t.detach().copy()))
        .collect()
}

#[test]
fn a_tiny_model_learns_image_colours_through_prompter_experts_and_lora() {
    let mut model = tiny_model(21);
    learn_colours(&mut model, Precision::F32);
    bf16_inference_gives_the_trained_answers(&model);
}

/// `--precision bf16` (and `auto` on CPUs with AVX-512 BF16): the trained model saved as an
/// artifact (f32) and loaded with bf16 weights names the same colour for every held-out image,
/// with answer scores (the mean token probability) within 0.05 of f32's.
#[allow(clippy::unwrap_used)]
fn bf16_inference_gives_the_trained_answers(trained: &StrataModel) {
    let dir = tempfile::tempdir().unwrap();
    let provenance = Provenance { version: "colours-1".into(), parent_version: None, training_run: None };
    artifact::save(trained, &tokenizer_path(), dir.path(), &provenance).unwrap();
    let artifact = Artifact::open(dir.path()).unwrap();
    let device = tch::Device::Cpu;
    let mut f32_model = artifact.load(device, Precision::F32.inference_kind(device, 0)).unwrap();
    let mut bf16_model = artifact.load(device, Precision::Bf16.inference_kind(device, 0)).unwrap();
    assert!(bf16_model.var_store().variables().values().all(|v| v.kind() == Kind::BFloat16), "bf16 weights");

    let config = GenerationConfig { max_new_tokens: 4, sampling: Sampling::Greedy, stop_tokens: vec![], seed: None, slots: None };
    let held_out = |model: &StrataModel| {
        let mut requests = Vec::new();
        for seed in 0..5u64 {
            for (i, (_, rgb)) in COLOURS.iter().enumerate() {
                let pixels = colour_image(model, *rgb, 20_000 + seed * 10 + i as u64);
                requests.push(request(pixels, QUERY, &["The image shows a area seen from above."]));
            }
        }
        requests
    };
    let exact = f32_model.generate(&held_out(&f32_model), &config).unwrap();
    let halved = bf16_model.generate(&held_out(&bf16_model), &config).unwrap();
    let expected: Vec<&str> = (0..5).flat_map(|_| COLOURS.iter().map(|(name, _)| *name)).collect();
    assert_eq!(exact.iter().map(|a| a.text.as_str()).collect::<Vec<_>>(), expected, "f32: {exact:?}");
    assert_eq!(halved.iter().map(|a| a.text.as_str()).collect::<Vec<_>>(), expected, "bf16: {halved:?}");
    let worst = exact.iter().zip(&halved).map(|(a, b)| (a.score - b.score).abs()).fold(0.0, f64::max);
    eprintln!("bf16 vs f32: largest answer score difference {worst:.4}");
    assert!(worst < 0.05, "bf16 scores drift from f32 by {worst}: {exact:?} vs {halved:?}");
}

/// bf16 autocast over f32 master weights (the CUDA default), here on the device `Auto` picks:
/// the CPU in CI, the GPU where there is one. The same task is learnt, and nothing the
/// optimiser keeps is stored in bf16.
#[test]
fn bf16_autocast_training_learns_the_same_task_over_f32_weights_and_moments() {
    let device = model::device::select(model::device::DevicePreference::Auto).unwrap().device();
    eprintln!("training on {device:?}");
    let mut model = tiny_model_on(21, device);
    // The forward pass does run in bf16: the loss moves by rounding, not by more.
    let (requests, answers) = batch(&model, 0);
    let exact = tch::no_grad(|| model.loss(&requests, &answers)).unwrap().double_value(&[]);
    let mixed = {
        let _autocast = Precision::Bf16.scope(device);
        tch::no_grad(|| model.loss(&requests, &answers)).unwrap().to_kind(Kind::Float).double_value(&[])
    };
    assert!(mixed != exact && (mixed - exact).abs() < 0.02 * exact, "f32 loss {exact}, bf16 autocast loss {mixed}");
    let trainer = learn_colours(&mut model, Precision::Bf16);
    for (name, moment) in trainer.moments() {
        assert_eq!(moment.kind(), Kind::Float, "{name}");
    }
}

#[allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where
fn learn_colours(model: &mut StrataModel, precision: Precision) -> Trainer {
    let config = TrainConfig {
        stage: Stage::InstructionTuning,
        learning_rate: 3e-3,
        vision_learning_rate: 1e-3,
        weight_decay: 0.0,
        warmup_steps: 10,
        total_steps: 150,
        grad_accumulation: 2,
        max_grad_norm: 1.0,
        precision,
        train_base_llm: false,
    };
    let groups = [
        "strata.prompter.",
        "strata.projector.",
        ".experts.",
        ".router.",
        "lora_a",
        "lora_b",
        "vision_model.",
        "model.layers.",
        "lm_head.",
    ];
    let before = snapshot(model, &groups);
    let mut trainer = Trainer::new(model, config).unwrap();
    let trainable = Trainer::trainable(model);
    assert!(trainable.iter().all(|n| !n.starts_with("model.") && !n.starts_with("lm_head.")), "the base LLM must stay frozen");

    let mut first_loss = None;
    let mut last_losses = Vec::new();
    for step in 0..300u64 {
        let (requests, answers) = batch(model, step);
        let outcome = trainer.step(model, &requests, &answers).unwrap();
        first_loss.get_or_insert(outcome.loss);
        if step >= 290 {
            last_losses.push(outcome.loss);
        }
    }
    let first_loss = first_loss.unwrap();
    let last_loss = last_losses.iter().sum::<f64>() / last_losses.len() as f64;
    assert!(last_loss < first_loss / 10.0, "loss went from {first_loss} to {last_loss}");

    // Every trained group moved; the frozen LLM did not.
    let after = snapshot(model, &groups);
    for group in ["strata.prompter.", "strata.projector.", ".experts.", ".router.", "lora_a", "lora_b", "vision_model."] {
        let moved =
            before.iter().filter(|(name, _)| name.contains(group)).any(|(name, t)| (t - &after[name]).abs().max().double_value(&[]) > 1e-6);
        assert!(moved, "no parameter of `{group}` changed: no gradient reached it");
    }
    for (name, t) in before.iter().filter(|(n, _)| n.starts_with("model.layers.") || n.starts_with("lm_head.")) {
        assert_eq!((t - &after[name]).abs().max().double_value(&[]), 0.0, "{name} is frozen but changed");
    }

    // Held-out noisy images, one batch: every colour is named.
    let mut requests = Vec::new();
    for (i, (_, rgb)) in COLOURS.iter().enumerate() {
        requests.push(request(colour_image(model, *rgb, 10_000 + i as u64), QUERY, &["The image shows a area seen from above."]));
    }
    let config = GenerationConfig { max_new_tokens: 4, sampling: Sampling::Greedy, stop_tokens: vec![], seed: None, slots: None };
    let answers = model.generate(&requests, &config).unwrap();
    let texts: Vec<&str> = answers.iter().map(|a| a.text.as_str()).collect();
    assert_eq!(texts, COLOURS.iter().map(|(name, _)| *name).collect::<Vec<_>>(), "answers: {answers:?}");
    assert!(answers.iter().all(|a| a.complete && a.score > 0.5), "{answers:?}");
    for (name, variable) in model.var_store().variables() {
        assert_eq!(variable.kind(), Kind::Float, "{name} is a master weight: f32 whatever the precision");
    }
    trainer
}
