//! The tch Qwen2 decoder against the reference implementation: a small random checkpoint saved
//! by transformers 4.57.1 loads under its Hugging Face names and reproduces the reference
//! logits (fixtures from scripts/fixtures/make_qwen2_golden.py).

use std::path::Path;

use model::qwen2::{Qwen2Config, Qwen2ForCausalLM};
use tch::{nn, Device, Tensor};

#[test]
fn logits_match_transformers_within_1e_4_relative() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2-tiny");
    let config = Qwen2Config::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mut model = Qwen2ForCausalLM::new(&vs.root(), &config);
    vs.load(dir.join("model.safetensors")).unwrap();

    let golden: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("golden.safetensors")).unwrap().into_iter().collect();
    let logits = tch::no_grad(|| model.forward(&golden["input_ids"]));
    let reference = &golden["logits"];
    assert_eq!(logits.size(), reference.size());
    let scale = reference.abs().max().double_value(&[]);
    let worst = (&logits - reference).abs().max().double_value(&[]);
    assert!(worst / scale < 1e-4, "max |Δ| {worst} against logits of scale {scale}");
}
