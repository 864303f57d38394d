//! Prefill and decode throughput of the Qwen2 decoder on a Hugging Face checkpoint, measured
//! the way `benches/generation/transformers_generate.py` measures its peer: prefill is one
//! forward over the prompt, decode is a greedy generation of `NEW` tokens minus one prefill;
//! best of `RUNS`. `BATCH` rows of the same length decode together (default 1); `PRECISION` is
//! the weights' type, `f32` (default) or `bf16` (`--precision` of the pipeline). Prints one JSON
//! line. Run through `bash benches/generation/compare.sh`.
//!
//!     generation DIR THREADS PROMPT NEW RUNS [BATCH] [PRECISION]

use std::path::PathBuf;
use std::time::Instant;

use model::generate::{self, GenerationConfig, PromptBatch, Sampling};
use model::layers::ParamInit;
use model::qwen2::{Qwen2Config, Qwen2Extensions, Qwen2ForCausalLM};
use model::weights::{self, LoadPolicy};
use tch::{nn, Device, Tensor};

mod common;
use common::peak_rss_mib;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if !(5..=7).contains(&args.len()) {
        return Err("usage: generation DIR THREADS PROMPT NEW RUNS [BATCH] [PRECISION]".into());
    }
    let dir = PathBuf::from(&args[0]);
    let (threads, prompt_len, new_tokens, runs): (i32, i64, i64, usize) =
        (args[1].parse()?, args[2].parse()?, args[3].parse()?, args[4].parse()?);
    let batch: i64 = args.get(5).map_or(Ok(1), |b| b.parse())?;
    let precision: model::device::Precision = args.get(6).map_or("f32", String::as_str).parse()?;
    tch::set_num_threads(threads);
    let config = Qwen2Config::from_json(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let kind = precision.inference_kind(Device::Cpu, config.hidden_size);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let extensions = Qwen2Extensions { init: ParamInit::Uninitialized, ..Default::default() };
    let mut llm = Qwen2ForCausalLM::build(&vs.root(), &(vs.root() / "strata" / "llm"), &config, &extensions);
    // As `StrataModel::new`: the variables take the compute kind before the weights load.
    vs.set_kind(kind);
    weights::load(&vs, &[dir.join("model.safetensors")], LoadPolicy::Complete)?;

    // Same prompt construction as the peer is not needed (random ids either way), only the length.
    let ids: Vec<i64> = (0..prompt_len).map(|i| (i * 7919 + 13) % config.vocab_size).collect();
    let rows = vec![ids.clone(); usize::try_from(batch)?];
    let prompt = PromptBatch::from_token_ids(&llm, &rows, Device::Cpu)?;
    let input = Tensor::from_slice(&ids).view([1, prompt_len]).repeat([batch, 1]);
    let generation =
        GenerationConfig { max_new_tokens: new_tokens, sampling: Sampling::Greedy, stop_tokens: vec![], seed: None, slots: None };

    let mut prefill = Vec::new();
    let mut total = Vec::new();
    let _ = tch::no_grad(|| llm.forward(&input));
    llm.clear_kv_cache();
    for _ in 0..runs {
        let start = Instant::now();
        let _ = tch::no_grad(|| llm.forward(&input));
        prefill.push(start.elapsed().as_secs_f64());
        llm.clear_kv_cache();
        let start = Instant::now();
        let out = generate::generate(&mut llm, &prompt, &generation)?;
        total.push(start.elapsed().as_secs_f64());
        assert!(out.iter().all(|row| row.tokens.len() as i64 == new_tokens));
    }
    let best_prefill = prefill.iter().copied().fold(f64::INFINITY, f64::min);
    let best_total = total.iter().copied().fold(f64::INFINITY, f64::min);
    let decode = (batch * (new_tokens - 1)) as f64 / (best_total - best_prefill);
    let peak_rss = peak_rss_mib();
    // The bytes one decoding step must read: every weight but the embedding table, of which a
    // step reads one row per sequence (unless the output layer shares it, then all of it).
    let tied = !vs.variables().contains_key("lm_head.weight");
    let weight_bytes: usize = vs
        .variables()
        .iter()
        .filter(|(name, _)| tied || !name.contains("embed_tokens"))
        .map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes())
        .sum();
    let bandwidth = stream_copy_gb_s(usize::try_from(threads)?);
    // At batch B a step yields B tokens for one read of the weights.
    let bound = bandwidth * 1e9 / weight_bytes as f64 * batch as f64;
    println!(
        "{}",
        serde_json::json!({
            "impl": "strata (tch 0.24, libtorch 2.11.0)",
            "threads": threads,
            "batch": batch,
            "prompt_tokens": prompt_len,
            "new_tokens": new_tokens,
            "prefill_tokens_per_s": (batch * prompt_len) as f64 / best_prefill,
            "decode_tokens_per_s": decode,
            "peak_rss_mib": peak_rss,
            "weight_bytes_per_step": weight_bytes,
            "stream_copy_gb_s": bandwidth,
            "bandwidth_bound_tokens_per_s": bound,
            "fraction_of_bandwidth_bound": decode / bound,
            "precision": precision.name(),
            "kind": format!("{kind:?}"),
        })
    );
    Ok(())
}

/// Memory bandwidth as STREAM's "copy" kernel measures it: `b[i] = a[i]` over two 256 MiB
/// arrays of f32 (far past any cache), split over `threads` threads, best of five passes,
/// counting the bytes read and the bytes written. GB/s (10⁹ bytes). The bound a decoder that
/// reads every weight once per step cannot beat at batch 1.
pub fn stream_copy_gb_s(threads: usize) -> f64 {
    const LEN: usize = 64 << 20;
    let source = vec![1.0f32; LEN];
    let mut target = vec![0.0f32; LEN];
    let chunk = LEN.div_ceil(threads.max(1));
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = std::time::Instant::now();
        std::thread::scope(|scope| {
            for (to, from) in target.chunks_mut(chunk).zip(source.chunks(chunk)) {
                scope.spawn(move || to.copy_from_slice(from));
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(&target);
    (2 * LEN * std::mem::size_of::<f32>()) as f64 / best / 1e9
}
