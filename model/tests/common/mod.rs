//! A tiny whole-model configuration and inputs shared by the model's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use model::chat::ChatTokenizer;
use model::config::StrataConfig;
use model::layers::ParamInit;
use model::vlm::{StrataModel, VlmRequest};
use tch::{Device, Kind, Tensor};

pub fn tokenizer_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/tokenizer.json")
}

/// 3 vision layers (levels 1, 2, 3), 8 LLM layers (experts in 3 and 7), 4 aggregation tokens.
pub fn tiny_config() -> StrataConfig {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-model/config.json");
    StrataConfig::from_json(&std::fs::read_to_string(path).expect("tiny config")).expect("tiny config parses")
}

pub fn tiny_model(seed: i64) -> StrataModel {
    tiny_model_on(seed, Device::Cpu)
}

pub fn tiny_model_on(seed: i64, device: Device) -> StrataModel {
    tch::manual_seed(seed);
    let config = tiny_config();
    let tokenizer = ChatTokenizer::from_file(&tokenizer_path(), &config.system_prompt).expect("tokenizer");
    StrataModel::new(config, tokenizer, device, Kind::Float, ParamInit::Random).expect("model")
}

/// Gives the zero-initialised parts (LoRA `B`, expert up-projections) random values, so a test
/// exercises them.
pub fn randomise_new_modules(model: &StrataModel) {
    tch::no_grad(|| {
        // In name order: a map's order changes from run to run, and with it which draw lands where.
        let mut variables: Vec<_> = model.var_store().variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, var) in variables {
            if name.ends_with("lora_b") || name.ends_with("up.weight") {
                let _ = var.shallow_clone().normal_(0.0, 0.2);
            }
        }
    });
}

/// A 16×16 solid-colour RGB image with a little noise.
pub fn colour_image(model: &StrataModel, rgb: [u8; 3], noise_seed: u64) -> Tensor {
    let mut state = noise_seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut bytes = Vec::with_capacity(16 * 16 * 3);
    for _ in 0..16 * 16 {
        for channel in rgb {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let jitter = ((state >> 59) as i16) - 16; // -16..15
            bytes.push((i16::from(channel) + jitter).clamp(0, 255) as u8);
        }
    }
    model.preprocess_rgb(&bytes, 16, 16).expect("pixels")
}

pub fn request(pixels: Tensor, query: &str, descriptions: &[&str]) -> VlmRequest {
    VlmRequest { pixels, query: query.to_owned(), descriptions: descriptions.iter().map(|d| (*d).to_owned()).collect() }
}
