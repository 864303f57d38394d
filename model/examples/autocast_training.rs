//! What bf16 autocast buys a training step on this machine: the instruct stage
//! (`model::train::Trainer`: prompter, projector, experts, LoRA and the vision tower train)
//! of a model with a SigLIP-base-shaped tower (12 layers, d = 768, 224-pixel images, 196
//! patches) and a Qwen2.5-0.5B-shaped LLM (24 layers, d = 896, GQA 14/2, MLP 4864, vocabulary
//! 151,936), random weights, timed in f32 and under bf16 autocast over the same f32 weights.
//!
//!     cargo run --profile bench -p model --example autocast_training -- [BATCH] [STEPS]
//!
//! Runs on CUDA when present (`DevicePreference::Auto`), else on the CPU (slow: use a small
//! STEPS). Prints one JSON line per precision: samples/s, the last loss, and whether every
//! weight and moment stayed f32.

use std::path::PathBuf;
use std::time::Instant;

use model::chat::ChatTokenizer;
use model::config::StrataConfig;
use model::device::{self, DevicePreference};
use model::layers::ParamInit;
use model::train::{Precision, Stage, TrainConfig, Trainer};
use model::vlm::{StrataModel, VlmRequest};
use tch::{Kind, Tensor};

fn config() -> Result<StrataConfig, Box<dyn std::error::Error>> {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures.join("tiny-model/config.json"))?)?;
    value["vision"] = serde_json::json!({"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "image_size": 224, "patch_size": 16});
    value["vision_levels"] = serde_json::Value::Null;
    value["llm"] = serde_json::json!({"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": true});
    value["lora"]["rank"] = serde_json::json!(16);
    value["experts"]["rank"] = serde_json::json!(16);
    Ok(StrataConfig::from_json(&value.to_string())?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().map_or(Ok(8), |b| b.parse())?;
    let steps: usize = args.next().map_or(Ok(10), |s| s.parse())?;
    let device = device::select(DevicePreference::Auto)?.device();
    let config = config()?;
    let tokenizer_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/tokenizer.json");
    for precision in [Precision::F32, Precision::Bf16] {
        tch::manual_seed(0);
        let tokenizer = ChatTokenizer::from_file(&tokenizer_path, &config.system_prompt)?;
        let mut model = StrataModel::new(config.clone(), tokenizer, device, Kind::Float, ParamInit::Random)?;
        let train =
            TrainConfig { stage: Stage::InstructionTuning, warmup_steps: 1, total_steps: steps + 2, precision, ..TrainConfig::default() };
        let mut trainer = Trainer::new(&model, train)?;
        let requests: Vec<VlmRequest> = (0..batch)
            .map(|_| VlmRequest {
                pixels: Tensor::rand([3, 224, 224], (Kind::Float, device)) * 2.0 - 1.0,
                query: "Describe the image in detail.".to_owned(),
                descriptions: vec!["Harbor: boat".to_owned(), "Yacht Berths: boats, docks, harbor, marina".to_owned()],
            })
            .collect();
        let responses = vec!["An aerial view of a port where two ships are moored beside the quay.".to_owned(); batch];
        // Two warm-up steps (kernel selection, allocator), then the timed ones.
        for _ in 0..2 {
            trainer.step(&mut model, &requests, &responses)?;
        }
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        let started = Instant::now();
        let mut loss = f64::NAN;
        for _ in 0..steps {
            loss = trainer.step(&mut model, &requests, &responses)?.loss;
        }
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        let seconds = started.elapsed().as_secs_f64();
        let f32_state = model.var_store().variables().values().all(|v| v.kind() == Kind::Float)
            && trainer.moments().iter().all(|(_, m)| m.kind() == Kind::Float);
        println!(
            "{}",
            serde_json::json!({
                "device": format!("{device:?}"), "precision": format!("{precision:?}"), "batch": batch, "steps": steps,
                "samples_per_s": (batch * steps) as f64 / seconds, "last_loss": loss, "weights_and_moments_f32": f32_state,
            })
        );
    }
    Ok(())
}
