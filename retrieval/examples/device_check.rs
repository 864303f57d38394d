//! GPU check (run on a machine with CUDA): the retriever's exact search and the model give the
//! same answers on the GPU as on the CPU, and how fast the GPU path is. Prints JSON lines; exits
//! non-zero on any disagreement.
//!
//!     device_check [ROWS] [DIM]          (default 1,000,000 × 512 synthetic clustered vectors)
//!
//! Needs `libtorch_cuda.so` on the library path (the device machine's PyTorch: point
//! `LD_LIBRARY_PATH` at its `torch/lib`), and `model/tests/fixtures` for the tiny model.

use std::path::PathBuf;
use std::time::Instant;

use model::chat::ChatTokenizer;
use model::config::StrataConfig;
use model::device::{select, DevicePreference};
use model::generate::{GenerationConfig, Sampling};
use model::layers::ParamInit;
use model::tch::{Device, Kind};
use model::vlm::{StrataModel, VlmRequest};
use retrieval::build::write_index;
use retrieval::{Description, SearchMode, SemanticIndex};

type Check = Result<(), Box<dyn std::error::Error>>;

/// Clustered unit vectors, deterministic.
fn clustered(count: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let centres: Vec<f32> = (0..2000 * dim).map(|_| uniform()).collect();
    let mut out = Vec::with_capacity(count * dim);
    for i in 0..count {
        let c = &centres[(i * 7919 % 2000) * dim..][..dim];
        let start = out.len();
        out.extend(c.iter().map(|x| x + 0.5 * uniform()));
        let norm = out[start..].iter().map(|x| x * x).sum::<f32>().sqrt();
        out[start..].iter_mut().for_each(|x| *x /= norm);
    }
    out
}

fn exact_search(rows: usize, dim: usize, device: Device) -> Check {
    let work = tempfile::tempdir()?;
    let values = clustered(rows, dim, 1);
    let descriptions: Vec<Description> =
        (0..rows).map(|i| Description { id: i.to_string(), text: String::new(), level: None, category: None, source: None }).collect();
    write_index(work.path(), &descriptions, &values, dim, "synthetic", None)?;
    drop(values);
    let queries: Vec<Vec<f32>> = clustered(1000, dim, 2).chunks(dim).map(<[f32]>::to_vec).collect();
    let cpu = SemanticIndex::open(work.path(), Device::Cpu)?;
    let started = Instant::now();
    let gpu = SemanticIndex::open(work.path(), device)?;
    let upload_s = started.elapsed().as_secs_f64();
    let reference = cpu.search(&queries[..200], 5, SearchMode::Exact)?;
    let on_gpu = gpu.search(&queries[..200], 5, SearchMode::Exact)?;
    let mut same_rows = 0;
    let mut worst_score = 0f32;
    for (a, b) in reference.iter().zip(&on_gpu) {
        same_rows += a.iter().zip(b).filter(|(x, y)| x.row == y.row).count();
        worst_score = a.iter().zip(b).map(|(x, y)| (x.score - y.score).abs()).fold(worst_score, f32::max);
    }
    let mut timings = serde_json::Map::new();
    for (name, index) in [("cpu", &cpu), ("gpu", &gpu)] {
        let single_n = if name == "cpu" { 50 } else { 1000 };
        let started = Instant::now();
        for q in &queries[..single_n] {
            index.search(std::slice::from_ref(q), 5, SearchMode::Exact)?;
        }
        let single = single_n as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        for batch in queries.chunks(64) {
            index.search(batch, 5, SearchMode::Exact)?;
        }
        let batch = queries.len() as f64 / started.elapsed().as_secs_f64();
        timings.insert(name.into(), serde_json::json!({"qps_single": single, "qps_batch64": batch}));
    }
    println!(
        "{}",
        serde_json::json!({"check": "exact search", "rows": rows, "dim": dim, "upload_s": upload_s,
            "same_rows_of_1000": same_rows, "largest_score_difference": worst_score, "timings": timings})
    );
    if same_rows < 995 || worst_score > 1e-4 {
        return Err("exact search on the GPU disagrees with the CPU".into());
    }
    Ok(())
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures")
}

fn tiny_model(device: Device, kind: Kind) -> Result<StrataModel, Box<dyn std::error::Error>> {
    let config = StrataConfig::from_json(&std::fs::read_to_string(fixtures().join("tiny-model/config.json"))?)?;
    let tokenizer = ChatTokenizer::from_file(&fixtures().join("tokenizer/tokenizer.json"), &config.system_prompt)?;
    Ok(StrataModel::new(config, tokenizer, device, kind, ParamInit::Random)?)
}

fn requests(model: &StrataModel) -> Result<Vec<VlmRequest>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for (i, query) in ["describe the image", "what colour is it?", "is there water"].iter().enumerate() {
        let bytes: Vec<u8> = (0..48 * 40 * 3).map(|p| ((p * (7 + i)) % 251) as u8).collect();
        let pixels = model.preprocess_rgb(&bytes, 48, 40)?.to_device(model.device());
        out.push(VlmRequest {
            pixels,
            query: (*query).to_owned(),
            descriptions: vec!["a harbour with ships".into(), "green fields".into()],
        });
    }
    Ok(out)
}

fn model_on(device: Device) -> Check {
    model::tch::manual_seed(3);
    let mut cpu = tiny_model(Device::Cpu, Kind::Float)?;
    model::tch::no_grad(|| {
        for (name, var) in cpu.var_store().variables() {
            if name.ends_with("lora_b") || name.ends_with("up.weight") {
                let _ = var.shallow_clone().normal_(0.0, 0.2);
            }
        }
    });
    let mut gpu = tiny_model(device, Kind::Float)?;
    gpu.var_store_mut().copy(cpu.var_store())?;
    let responses = vec!["a harbour".to_owned(), "blue".to_owned(), "yes".to_owned()];
    let cpu_loss = f64::try_from(cpu.loss(&requests(&cpu)?, &responses)?)?;
    let gpu_loss = f64::try_from(gpu.loss(&requests(&gpu)?, &responses)?.to_device(Device::Cpu))?;
    let greedy = GenerationConfig { max_new_tokens: 12, sampling: Sampling::Greedy, stop_tokens: Vec::new(), seed: None, slots: None };
    let cpu_answers = cpu.generate(&requests(&cpu)?, &greedy)?;
    let gpu_answers = gpu.generate(&requests(&gpu)?, &greedy)?;
    let same_answers = cpu_answers.iter().zip(&gpu_answers).filter(|(a, b)| a.text == b.text).count();
    // bf16, the production dtype on GPUs.
    gpu.var_store_mut().bfloat16();
    let bf16_loss = f64::try_from(gpu.loss(&requests(&gpu)?, &responses)?.to_kind(Kind::Float).to_device(Device::Cpu))?;
    let started = Instant::now();
    let bf16_answers = gpu.generate(&requests(&gpu)?, &greedy)?;
    let bf16_s = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"check": "tiny model", "cpu_loss": cpu_loss, "gpu_f32_loss": gpu_loss, "gpu_bf16_loss": bf16_loss,
            "same_greedy_answers_f32_of_3": same_answers, "bf16_answers": bf16_answers.iter().map(|a| &a.text).collect::<Vec<_>>(),
            "bf16_generate_s": bf16_s})
    );
    if (cpu_loss - gpu_loss).abs() > 1e-3 * cpu_loss.abs().max(1.0) || same_answers != 3 {
        return Err("the model on the GPU (f32) disagrees with the CPU".into());
    }
    if (cpu_loss - bf16_loss).abs() > 0.05 * cpu_loss.abs().max(1.0) {
        return Err("the model in bf16 on the GPU is far from f32".into());
    }
    Ok(())
}

fn main() -> Check {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rows = args.first().map_or(Ok(1_000_000), |a| a.parse())?;
    let dim = args.get(1).map_or(Ok(512), |a| a.parse())?;
    let selected = select(DevicePreference::Cuda(0))?;
    println!("{}", serde_json::json!({"device": selected.describe(), "precision": selected.describe_precision()}));
    exact_search(rows, dim, selected.device())?;
    model_on(selected.device())?;
    Ok(())
}
