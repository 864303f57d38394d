//! The model's batched generation called directly, the reference of the pipeline-overhead
//! figure in `benches/inference/compare.sh`: the same artifact, the same tile PNGs, the same
//! tasks and prompts (the infer stage's own [`task_query`]), the same micro-batches (the tiles
//! in order in chunks of `BATCH`, across scenes, as the infer stage gathers them: a scene
//! marker waits behind the tiles before it without cutting the batch short), the same decoding
//! slots (`SLOTS`, `strata batch --decode-slots`; none: every row of a batch at once), greedy,
//! the same `max_new_tokens` and stop tokens.
//!
//! Untimed: loading the artifact, decoding the PNGs and preprocessing them (once). Timed: the
//! loop of [`StrataModel::generate`] calls over every batch, one pass, no warm-up (the pipeline
//! gets none either). The answers are read back to the CPU token by token inside `generate`,
//! so the device is synchronised when the clock stops. Prints one JSON line, with each task's
//! prompt length for the transformers peer.
//!
//!     inference ARTIFACT TILE_LIST TASKS_JSON THREADS BATCH NEW_TOKENS [DEVICE] [PRECISION] [SLOTS]
//!
//! PRECISION: `auto` (default), `f32` or `bf16`, as `strata batch --precision` reads it.
//! SLOTS: rows decoded at once, or `all` (default).
//! TILE_LIST: one `scene_id<TAB>png path` line per tile, a scene's tiles together.
//! TASKS_JSON: the tasks as `strata batch --tasks` reads them.

use std::path::Path;
use std::time::Instant;

use model::artifact::Artifact;
use model::device::{self, DevicePreference};
use model::generate::{GenerationConfig, Sampling};
use model::preprocess::RgbImage;
use model::tch::Tensor;
use model::vlm::{StrataModel, VlmRequest};
use operators::stages::infer::task_query;
use schemas::TaskSpec;

type BoxError = Box<dyn std::error::Error>;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Decodes a tile PNG into 8-bit RGB as the infer stage does (expand palettes, strip 16 bits).
fn read_png(path: &Path) -> Result<RgbImage, BoxError> {
    let mut decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info()?;
    let mut buffer = vec![0u8; reader.output_buffer_size().ok_or("PNG too large")?];
    let info = reader.next_frame(&mut buffer)?;
    let pixels = &buffer[..info.buffer_size()];
    let rgb: Vec<u8> = match info.color_type {
        png::ColorType::Rgb => pixels.to_vec(),
        png::ColorType::Rgba => pixels.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        png::ColorType::Grayscale => pixels.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => pixels.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        png::ColorType::Indexed => return Err("indexed PNG was not expanded".into()),
    };
    Ok(RgbImage::new(info.width as usize, info.height as usize, rgb)?)
}

/// Prompt length of one task's row: chat prefix, image tokens, `L·N_a` semantic tokens, then
/// `\n{query}<|im_end|>\n<|im_start|>assistant\n` (no retrieved descriptions: no index).
fn prompt_tokens(model: &StrataModel, query: &str) -> Result<i64, BoxError> {
    let config = model.config();
    let budgets = (config.max_query_tokens, config.retrieval.max_semantic_tokens);
    let encoded = model.tokenizer().encode_request(query, &[], None, budgets)?;
    Ok(encoded.prefix.len() as i64 + config.vision.num_patches() + config.semantic_tokens() + encoded.suffix.len() as i64)
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if !(6..=9).contains(&args.len()) {
        return Err("usage: inference ARTIFACT TILE_LIST TASKS_JSON THREADS BATCH NEW_TOKENS [DEVICE] [PRECISION] [SLOTS]".into());
    }
    let slots: Option<usize> = match args.get(8).map(String::as_str) {
        None | Some("all" | "") => None,
        Some(n) => Some(n.parse()?),
    };
    let (threads, batch_size, new_tokens): (i32, usize, i64) = (args[3].parse()?, args[4].parse()?, args[5].parse()?);
    let preference: DevicePreference = args.get(6).map_or("cpu", String::as_str).parse()?;
    model::tch::set_num_threads(threads);

    let artifact = Artifact::open(Path::new(&args[0]))?;
    let precision: device::Precision = args.get(7).map_or("auto", String::as_str).parse()?;
    let selected = device::select(preference)?.with_precision(precision);
    let mut model = artifact.load_for_inference(&selected)?;
    let tasks: Vec<TaskSpec> = serde_json::from_str(&std::fs::read_to_string(&args[2])?)?;
    let queries: Vec<String> = tasks.iter().map(task_query).collect();

    // Scenes in file order, each with its tiles' preprocessed pixels.
    let started = Instant::now();
    let side = model.config().vision.image_size;
    let processor = model.image_processor();
    let mut scenes: Vec<(String, Vec<Tensor>)> = Vec::new();
    for line in std::fs::read_to_string(&args[1])?.lines().filter(|l| !l.trim().is_empty()) {
        let (scene, path) = line.split_once('\t').ok_or_else(|| format!("`{line}` is not `scene<TAB>path`"))?;
        let pixels = Tensor::from_slice(&processor.apply(&read_png(Path::new(path))?)?).view([3, side, side]);
        match scenes.last_mut() {
            Some((last, tiles)) if last == scene => tiles.push(pixels),
            _ => scenes.push((scene.to_owned(), vec![pixels])),
        }
    }
    let preprocess_s = started.elapsed().as_secs_f64();
    let tiles: usize = scenes.iter().map(|(_, t)| t.len()).sum();

    let generation =
        GenerationConfig { max_new_tokens: new_tokens, sampling: Sampling::Greedy, stop_tokens: Vec::new(), seed: None, slots };
    let mut batches = Vec::new();
    let mut lengths = Vec::new();
    let mut complete = 0usize;
    // Slot occupancy: a decoding batch has room for SLOTS rows (BATCH tiles × tasks without
    // a limit); each decode step computes only the rows still generating (finished rows
    // leave, waiting rows take their slots, the last batch may be short). Occupied row-steps
    // over offered row-steps: what continuous batching raises toward 1.
    let full_batch = batch_size.max(1) * queries.len();
    let (mut row_steps, mut slot_steps) = (0usize, 0usize);
    let started = Instant::now();
    let all_tiles: Vec<&Tensor> = scenes.iter().flat_map(|(_, tiles)| tiles).collect();
    for chunk in all_tiles.chunks(batch_size.max(1)) {
        let requests: Vec<VlmRequest> = chunk
            .iter()
            .flat_map(|pixels| {
                queries.iter().map(|query| VlmRequest { pixels: pixels.shallow_clone(), query: query.clone(), descriptions: Vec::new() })
            })
            .collect();
        let (answers, stats) = model.generate_with_stats(&requests, &generation)?;
        row_steps += stats.decode_row_steps;
        slot_steps += stats.decode_steps * slots.map_or(full_batch, |s| s.min(full_batch));
        batches.push(chunk.len());
        lengths.extend(answers.iter().map(|a| a.tokens.len()));
        complete += answers.iter().filter(|a| a.complete).count();
    }
    let generate_s = started.elapsed().as_secs_f64();
    let generated: usize = lengths.iter().sum();
    let prompts = queries.iter().map(|q| prompt_tokens(&model, q)).collect::<Result<Vec<_>, _>>()?;
    println!(
        "{}",
        serde_json::json!({
            "impl": "strata direct: StrataModel::generate in a loop (tch 0.24, libtorch 2.11.0)",
            "device": selected.describe(),
            "kind": format!("{:?}", model.kind()),
            "precision": device::kind_name(model.kind()),
            "threads": threads,
            "tiles": tiles,
            "scenes": scenes.len(),
            "tasks_per_tile": tasks.len(),
            "batch_size": batch_size,
            "batches": batches,
            "max_new_tokens": new_tokens,
            "prompt_tokens_per_task": prompts,
            "generated_tokens": generated,
            "decode_slots": slots.map_or(full_batch, |s| s.min(full_batch)),
            "slot_occupancy": row_steps as f64 / slot_steps.max(1) as f64,
            "generated_tokens_per_row": {"min": lengths.iter().min(), "max": lengths.iter().max()},
            "answers_ended_by_stop_token": complete,
            "preprocess_s_untimed": preprocess_s,
            "seconds": generate_s,
            "tiles_per_s": tiles as f64 / generate_s,
            "generated_tokens_per_s": generated as f64 / generate_s,
            "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}
