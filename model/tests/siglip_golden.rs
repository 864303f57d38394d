//! The tch SigLIP vision tower against the reference implementation: a small random tower
//! saved by transformers 4.57.1 loads under its Hugging Face names and reproduces the hidden
//! state of every layer (fixtures from scripts/fixtures/make_siglip_golden.py).

use std::{collections::HashMap, path::Path};

use model::siglip::{SiglipVisionConfig, SiglipVisionModel};
use tch::{nn, Device, Tensor};

fn relative_error(got: &Tensor, want: &Tensor) -> f64 {
    (got - want).abs().max().double_value(&[]) / want.abs().max().double_value(&[])
}

#[test]
fn hidden_states_of_every_layer_match_transformers_within_1e_4_relative() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/siglip-tiny");
    let config = SiglipVisionConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let tower = SiglipVisionModel::new(&vs.root(), &config);
    vs.load(dir.join("model.safetensors")).unwrap();

    let golden: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("golden.safetensors")).unwrap().into_iter().collect();
    let output = tch::no_grad(|| tower.forward(&golden["pixel_values"]));
    assert_eq!(output.hidden_states.len(), 4, "embeddings plus one per layer");
    for (i, hidden) in output.hidden_states.iter().enumerate() {
        let want = &golden[&format!("hidden_states.{i}")];
        assert_eq!(hidden.size(), vec![2, config.num_patches(), 48]);
        let err = relative_error(hidden, want);
        assert!(err < 1e-4, "hidden state {i}: relative error {err}");
    }
    let err = relative_error(&output.last_hidden_state, &golden["last_hidden_state"]);
    assert!(err < 1e-4, "last hidden state: relative error {err}");
}

#[test]
fn full_siglip_configs_and_bad_geometry_are_handled() {
    let nested = r#"{"text_config": {}, "vision_config": {"hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 384, "patch_size": 16}}"#;
    let config = SiglipVisionConfig::from_json(nested).unwrap();
    assert_eq!(config.num_patches(), 576);
    let bad = r#"{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "image_size": 100, "patch_size": 16}"#;
    assert!(SiglipVisionConfig::from_json(bad).unwrap_err().to_string().contains("patch_size"));
}
