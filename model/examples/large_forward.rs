//! Can a Qwen2.5-7B-shaped LLM be built, loaded and run on this machine's CPU in bf16?
//!
//! Writes a random bf16 checkpoint with Qwen2.5-7B's exact shapes (28 layers, d = 3584, GQA
//! 28/4, MLP 18944, vocabulary 152064; 7.6 B parameters, 15.2 GB) once, tensor by tensor,
//! then builds the model with uninitialised parameters, fills them from the memory-mapped file
//! (`model::weights::load`: one copy, file pages dropped as they are read), and runs one
//! forward pass. Prints the peak resident memory after loading and after the forward.
//!
//!     cargo run --profile bench -p model --example large_forward -- [DIR] [TOKENS]
//!
//! DIR defaults to `$STRATA_CACHE/bench/qwen2.5-7b-random` (about 15.2 GB of disk).

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Instant;

use model::layers::ParamInit;
use model::qwen2::{Qwen2Config, Qwen2Extensions, Qwen2ForCausalLM};
use model::weights::{self, LoadPolicy};
use safetensors::{Dtype, View};
use tch::{nn, Device, Kind, Tensor};

const CONFIG: &str = r#"{"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": false}"#;

fn memory_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A bf16 tensor whose bytes are generated when the writer asks for them.
struct RandomBf16 {
    shape: Vec<usize>,
    seed: u64,
    /// Norm weights are ones; everything else uniform in ±0.02.
    ones: bool,
}

impl View for &RandomBf16 {
    fn dtype(&self) -> Dtype {
        Dtype::BF16
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let count: usize = self.shape.iter().product();
        let mut bytes = Vec::with_capacity(count * 2);
        let mut state = self.seed | 1;
        for _ in 0..count {
            let value = if self.ones {
                1.0f32
            } else {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
            };
            bytes.extend_from_slice(&((value.to_bits() >> 16) as u16).to_le_bytes());
        }
        Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 2
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let cache = std::env::var("STRATA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())).join(".cache/strata"));
    let dir = args.next().map_or_else(|| cache.join("bench/qwen2.5-7b-random"), PathBuf::from);
    let tokens: i64 = args.next().map_or(Ok(16), |t| t.parse())?;
    let config = Qwen2Config::from_json(CONFIG)?;

    // The variable names and shapes come from the model itself, so the file fits it exactly.
    let weights_file = dir.join("model.safetensors");
    if !weights_file.exists() {
        std::fs::create_dir_all(&dir)?;
        // Uninitialised parameters on the CPU are never touched, so this costs address space only.
        let mut skeleton_store = nn::VarStore::new(Device::Cpu);
        skeleton_store.set_kind(Kind::BFloat16);
        let extensions = Qwen2Extensions { init: ParamInit::Uninitialized, ..Default::default() };
        let _skeleton = Qwen2ForCausalLM::build(&skeleton_store.root(), &(skeleton_store.root() / "strata"), &config, &extensions);
        let mut views: Vec<(String, RandomBf16)> = skeleton_store
            .variables()
            .into_iter()
            .enumerate()
            .map(|(i, (name, t))| {
                let ones = name.ends_with("norm.weight");
                (name, RandomBf16 { shape: t.size().iter().map(|d| *d as usize).collect(), seed: 0x9E37_79B9 + i as u64, ones })
            })
            .collect();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        let start = Instant::now();
        let partial = dir.join("model.safetensors.partial");
        safetensors::serialize_to_file(views.iter().map(|(n, v)| (n.as_str(), v)), None, &partial)?;
        std::fs::rename(&partial, &weights_file)?;
        eprintln!(
            "wrote {} ({:.1} GB) in {:.0} s",
            weights_file.display(),
            std::fs::metadata(&weights_file)?.len() as f64 / 1e9,
            start.elapsed().as_secs_f64()
        );
    }

    let start = Instant::now();
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::BFloat16);
    let extensions = Qwen2Extensions { init: ParamInit::Uninitialized, ..Default::default() };
    let mut llm = Qwen2ForCausalLM::build(&vs.root(), &(vs.root() / "strata"), &config, &extensions);
    let built = start.elapsed().as_secs_f64();
    let report = weights::load(&vs, &[weights_file], LoadPolicy::Complete)?;
    let parameters: usize = vs.variables().values().map(Tensor::numel).sum();
    let loaded = start.elapsed().as_secs_f64();
    let rss_after_load = memory_mib("VmRSS:");
    let peak_after_load = memory_mib("VmHWM:");

    let ids: Vec<i64> = (0..tokens).map(|i| (i * 7919 + 13) % config.vocab_size).collect();
    let start = Instant::now();
    let logits = tch::no_grad(|| llm.forward(&Tensor::from_slice(&ids).view([1, tokens])));
    let forward = start.elapsed().as_secs_f64();
    let finite = logits.isfinite().all().int64_value(&[]) == 1;
    println!(
        "{}",
        serde_json::json!({
            "parameters": parameters,
            "weights_gb": parameters as f64 * 2.0 / 1e9,
            "tensors_loaded": report.loaded,
            "build_s": built,
            "build_and_load_s": loaded,
            "rss_after_load_mib": rss_after_load,
            "peak_rss_after_load_mib": peak_after_load,
            "forward_tokens": tokens,
            "forward_s": forward,
            "logits_shape": logits.size(),
            "logits_kind": format!("{:?}", logits.kind()),
            "logits_finite": finite,
            "peak_rss_mib": memory_mib("VmHWM:"),
        })
    );
    if !finite {
        return Err("the forward produced non-finite logits".into());
    }
    Ok(())
}
