//! LoRA training throughput of the decoder on a Hugging Face checkpoint, measured the way
//! `benches/training/peft_train.py` measures its peer (transformers + peft): the base frozen,
//! LoRA (rank R, α = 2R, no dropout) on every attention and MLP projection, AdamW over the
//! adapters only (Strata's side: `model::train::AdamW`, the optimiser `strata train` steps),
//! next-token cross-entropy over every position of fixed pseudo-random token
//! rows (the same formula on both sides), `WARMUP` untimed steps then `STEPS` timed ones.
//! Prints one JSON line (with `STRATA_BENCH_PHASES` set, also forward/backward/optimiser
//! seconds per step on stderr). Run through `bash benches/training/compare.sh`.
//!
//!     training DIR THREADS BATCH SEQ STEPS RANK

use std::path::PathBuf;
use std::time::Instant;

use model::layers::ParamInit;
use model::lora::LoraConfig;
use model::qwen2::{DecoderInput, Qwen2Config, Qwen2Extensions, Qwen2ForCausalLM};
use model::train::AdamW;
use model::weights::{self, LoadPolicy};
use tch::nn;
use tch::{Device, Kind, Tensor};

mod common;
use common::peak_rss_mib;

const WARMUP: usize = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.len() != 6 {
        return Err("usage: training DIR THREADS BATCH SEQ STEPS RANK".into());
    }
    let dir = PathBuf::from(&args[0]);
    let (threads, batch, seq, steps, rank): (i32, i64, i64, usize, i64) =
        (args[1].parse()?, args[2].parse()?, args[3].parse()?, args[4].parse()?, args[5].parse()?);
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let config = Qwen2Config::from_json(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let lora = LoraConfig { rank, alpha: 2.0 * rank as f64, dropout: 0.0, targets: LoraConfig::ALL_TARGETS.map(str::to_owned).to_vec() };
    let extensions = Qwen2Extensions { lora: Some(lora), experts: None, init: ParamInit::Uninitialized };
    let mut llm = Qwen2ForCausalLM::build(&vs.root(), &(vs.root() / "strata" / "llm"), &config, &extensions);
    weights::load(&vs, &[dir.join("model.safetensors")], LoadPolicy::Required(&["model."]))?;
    let mut trainable = 0;
    let mut adapters = Vec::new();
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, variable) in variables {
        let adapter = name.starts_with("strata.");
        let variable = variable.set_requires_grad(adapter);
        if adapter {
            trainable += variable.numel();
            adapters.push((name, variable, 0));
        }
    }
    // The training job's own optimiser (`strata train`), at torch.optim.AdamW's defaults as
    // the peer uses them: lr 1e-4, weight decay 0.01, no clipping.
    let mut optimizer = AdamW::new(adapters);

    // Row b, position t: (b·7919 + t·104729 + 17) mod vocab, as the peer builds it.
    let ids: Vec<i64> =
        (0..batch).flat_map(|b| (0..seq).map(move |t| b * 7919 + t * 104_729 + 17)).map(|v| v % config.vocab_size).collect();
    let ids = Tensor::from_slice(&ids).view([batch, seq]);
    let positions = Tensor::arange(seq, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([batch, seq], false);
    let mut losses = Vec::new();
    let mut timed = 0.0;
    for step in 0..WARMUP + steps {
        let start = Instant::now();
        let embeds = llm.embed(&ids);
        let hidden = llm.forward_embeds(&DecoderInput { embeds: &embeds, positions: &positions, roles: None, key_mask: None, train: true });
        llm.clear_kv_cache();
        let logits = llm.logits(&hidden);
        let vocab = logits.size()[2];
        let loss = logits.narrow(1, 0, seq - 1).reshape([-1, vocab]).cross_entropy_for_logits(&ids.narrow(1, 1, seq - 1).reshape([-1]));
        let forward = start.elapsed().as_secs_f64();
        loss.backward();
        let backward = start.elapsed().as_secs_f64() - forward;
        // Steps and zeroes the gradients, as the peer's zero_grad + step.
        optimizer.step(&[1e-4], 0.01, 1.0);
        if std::env::var_os("STRATA_BENCH_PHASES").is_some() {
            eprintln!(
                "step {step}: forward {forward:.2}s backward {backward:.2}s optimizer {:.2}s",
                start.elapsed().as_secs_f64() - forward - backward
            );
        }
        losses.push(loss.double_value(&[]));
        if step >= WARMUP {
            timed += start.elapsed().as_secs_f64();
        }
    }
    let samples_per_s = (batch as f64 * steps as f64) / timed;
    println!(
        "{}",
        serde_json::json!({
            "side": "strata",
            "threads": threads, "batch": batch, "seq": seq, "steps": steps, "rank": rank,
            "trainable_parameters": trainable,
            "samples_per_s": samples_per_s,
            "tokens_per_s": samples_per_s * seq as f64,
            "first_loss": losses[0], "last_loss": losses[losses.len() - 1],
            "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}
