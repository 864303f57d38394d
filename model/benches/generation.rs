//! Prefill and decode throughput of the Qwen2 decoder on a Hugging Face checkpoint, measured
//! the way `benches/generation/transformers_generate.py` measures its peer: prefill is one
//! forward over the prompt, decode is a greedy generation of `NEW` tokens minus one prefill;
//! best of `RUNS`. Prints one JSON line. Run through `bash benches/generation/compare.sh`.
//!
//!     generation DIR THREADS PROMPT NEW RUNS

use std::path::PathBuf;
use std::time::Instant;

use model::generate::{self, GenerationConfig, PromptBatch, Sampling};
use model::layers::ParamInit;
use model::qwen2::{Qwen2Config, Qwen2Extensions, Qwen2ForCausalLM};
use model::weights::{self, LoadPolicy};
use tch::{nn, Device, Kind, Tensor};

mod common;
use common::peak_rss_mib;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.len() != 5 {
        return Err("usage: generation DIR THREADS PROMPT NEW RUNS".into());
    }
    let dir = PathBuf::from(&args[0]);
    let (threads, prompt_len, new_tokens, runs): (i32, i64, i64, usize) =
        (args[1].parse()?, args[2].parse()?, args[3].parse()?, args[4].parse()?);
    tch::set_num_threads(threads);
    let config = Qwen2Config::from_json(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let extensions = Qwen2Extensions { init: ParamInit::Uninitialized, ..Default::default() };
    let mut llm = Qwen2ForCausalLM::build(&vs.root(), &(vs.root() / "strata" / "llm"), &config, &extensions);
    weights::load(&vs, &[dir.join("model.safetensors")], LoadPolicy::Complete)?;

    // Same prompt construction as the peer is not needed (random ids either way), only the length.
    let ids: Vec<i64> = (0..prompt_len).map(|i| (i * 7919 + 13) % config.vocab_size).collect();
    let prompt = PromptBatch::from_token_ids(&llm, std::slice::from_ref(&ids), Device::Cpu)?;
    let input = Tensor::from_slice(&ids).view([1, prompt_len]);
    let generation = GenerationConfig { max_new_tokens: new_tokens, sampling: Sampling::Greedy, stop_tokens: vec![], seed: None };

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
        assert_eq!(out[0].tokens.len() as i64, new_tokens);
    }
    let best_prefill = prefill.iter().copied().fold(f64::INFINITY, f64::min);
    let best_total = total.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{}",
        serde_json::json!({
            "impl": "strata (tch 0.24, libtorch 2.11.0)",
            "threads": threads,
            "prompt_tokens": prompt_len,
            "new_tokens": new_tokens,
            "prefill_tokens_per_s": prompt_len as f64 / best_prefill,
            "decode_tokens_per_s": (new_tokens - 1) as f64 / (best_total - best_prefill),
            "peak_rss_mib": peak_rss_mib(),
            "kind": format!("{:?}", Kind::Float),
        })
    );
    Ok(())
}
