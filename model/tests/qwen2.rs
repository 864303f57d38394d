//! The Qwen2 decoder's behaviour that generation relies on: cached decoding equals a full
//! forward, the causal mask hides the future, and configs are checked.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

use model::qwen2::{Qwen2Config, Qwen2ForCausalLM};
use tch::{nn, Device, Kind, Tensor};

fn tiny_config(tied: bool) -> Qwen2Config {
    Qwen2Config::from_json(&format!(
        r#"{{"vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 10000.0,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": {tied}}}"#
    ))
    .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn cached_decoding_gives_the_same_logits_as_a_full_forward() {
    tch::manual_seed(7);
    for tied in [false, true] {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut model = Qwen2ForCausalLM::new(&vs.root(), &tiny_config(tied));
        let ids = Tensor::from_slice(&[3i64, 14, 15, 92, 65, 35, 89, 79]).view([1, 8]);
        let full = tch::no_grad(|| model.forward(&ids));
        assert_eq!(full.size(), vec![1, 8, 97]);

        model.clear_kv_cache();
        let prefix = tch::no_grad(|| model.forward(&ids.narrow(1, 0, 5)));
        let mut steps = vec![prefix];
        for t in 5..8 {
            steps.push(tch::no_grad(|| model.forward(&ids.narrow(1, t, 1))));
        }
        let cached = Tensor::cat(&steps, 1);
        // Relative to the logits' scale: f32 summation order differs between the two paths.
        let relative = max_abs_diff(&full, &cached) / full.abs().max().double_value(&[]);
        assert!(relative < 1e-5, "tied={tied}: relative difference {relative}");
    }
}

#[test]
fn later_tokens_do_not_change_earlier_logits() {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = Qwen2ForCausalLM::new(&vs.root(), &tiny_config(false));
    let a = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([1, 6]);
    let b = Tensor::from_slice(&[1i64, 2, 3, 40, 50, 60]).view([1, 6]);
    let la = tch::no_grad(|| model.forward(&a));
    model.clear_kv_cache();
    let lb = tch::no_grad(|| model.forward(&b));
    assert!(max_abs_diff(&la.narrow(1, 0, 3), &lb.narrow(1, 0, 3)) < 1e-6);
    assert!(max_abs_diff(&la.narrow(1, 3, 3), &lb.narrow(1, 3, 3)) > 1e-3);
    assert_eq!(la.kind(), Kind::Float);
}

#[test]
fn inconsistent_configs_are_refused_with_the_fields_named() {
    let err = Qwen2Config::from_json(
        r#"{"vocab_size": 10, "hidden_size": 30, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 4, "num_key_value_heads": 2}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("num_attention_heads"), "{err}");
    let err = Qwen2Config::from_json(r#"{"vocab_size": 10}"#).unwrap_err();
    assert!(err.to_string().contains("hidden_size"), "{err}");
}

#[test]
fn llama_configs_load_without_attention_biases_and_unsupported_variants_are_refused() {
    let base = r#""vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2"#;
    let with = |extra: &str| Qwen2Config::from_json(&format!("{{{base}{extra}}}"));
    assert!(with("").unwrap().has_attention_bias(), "Qwen2 projections have biases");
    let llama = with(r#", "model_type": "llama", "rope_scaling": null, "hidden_act": "silu", "head_dim": 8"#).unwrap();
    assert!(!llama.has_attention_bias(), "Llama projections have none");
    // The variable store of a Llama decoder has no bias to fill.
    let vs = nn::VarStore::new(Device::Cpu);
    let _llm = Qwen2ForCausalLM::new(&vs.root(), &llama);
    assert!(vs.variables().keys().all(|name| !name.ends_with("q_proj.bias")), "{:?}", vs.variables().keys().collect::<Vec<_>>());
    for (extra, named) in [
        (r#", "model_type": "mistral""#, "mistral"),
        (r#", "model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#, "rope_scaling"),
        (r#", "model_type": "llama", "mlp_bias": true"#, "mlp_bias"),
        (r#", "model_type": "llama", "hidden_act": "gelu""#, "gelu"),
        (r#", "model_type": "llama", "head_dim": 16"#, "head_dim"),
    ] {
        let err = with(extra).unwrap_err();
        assert!(err.to_string().contains(named), "{extra}: {err}");
    }
}
