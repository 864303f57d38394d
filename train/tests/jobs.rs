//! The training loop driven as a library, with both objectives: a run stopped part-way and
//! resumed ends exactly where an uninterrupted run ends (same losses, step for step), a
//! finished run is not run again, and a checkpoint of another configuration is refused.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

use std::path::{Path, PathBuf};

use model::{
    artifact::{self, Provenance},
    chat::ChatTokenizer,
    config::StrataConfig,
    layers::ParamInit,
    vlm::StrataModel,
};
use train::{Outcome, RunOptions};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures")
}

/// A tiny random model artifact (3 vision layers, 8 LLM layers), as `strata model init
/// --random` writes one.
fn tiny_artifact(dir: &Path) -> PathBuf {
    let config = std::fs::read_to_string(fixtures().join("tiny-model/config.json")).unwrap();
    let config = StrataConfig::from_json(&config).unwrap();
    let tokenizer_json = fixtures().join("tokenizer/tokenizer.json");
    let tokenizer = ChatTokenizer::from_file(&tokenizer_json, &config.system_prompt).unwrap();
    model::device::manual_seed(3);
    let model = StrataModel::new(config, tokenizer, model::tch::Device::Cpu, model::tch::Kind::Float, ParamInit::Random).unwrap();
    let out = dir.join("base");
    let provenance = Provenance { version: "tiny".to_owned(), parent_version: None, training_run: None };
    artifact::save(&model, &tokenizer_json, &out, &provenance).unwrap();
    out
}

/// Eight 24×24 solid-colour PNGs with captions, as `images/` beside `train.jsonl` (LLaVA
/// conversations) and `pairs.jsonl` (image–text pairs).
fn data(dir: &Path) {
    let colours = [
        ("red", [200, 30, 30]),
        ("green", [30, 180, 40]),
        ("blue", [20, 40, 200]),
        ("yellow", [220, 210, 30]),
        ("white", [240, 240, 240]),
        ("black", [10, 10, 10]),
        ("grey", [128, 128, 128]),
        ("purple", [120, 30, 160]),
    ];
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let (mut conversations, mut pairs) = (String::new(), String::new());
    for (name, rgb) in colours {
        let image = image::RgbImage::from_fn(24, 24, |x, y| {
            let shade = u8::try_from((x + y) % 8).unwrap();
            image::Rgb(rgb.map(|c: u8| c.saturating_add(shade)))
        });
        image.save(dir.join(format!("images/{name}.png"))).unwrap();
        let caption = format!("A {name} field seen from above.");
        conversations.push_str(
            &serde_json::json!({"id": name, "image": format!("images/{name}.png"), "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": caption}]})
            .to_string(),
        );
        conversations.push('\n');
        pairs.push_str(&serde_json::json!({"image": format!("images/{name}.png"), "text": caption}).to_string());
        pairs.push('\n');
    }
    std::fs::write(dir.join("train.jsonl"), conversations).unwrap();
    std::fs::write(dir.join("pairs.jsonl"), pairs).unwrap();
}

/// libtorch draws initial weights and dropout masks from one generator per process, and the
/// test harness runs these tests on parallel threads: each holds this lock so that one test's
/// draws cannot interleave with the other's seeded ones (a training job is one per process).
static TORCH_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds [`TORCH_GENERATOR`]; a test that panicked while holding it poisons nothing we need.
fn exclusive_generator() -> std::sync::MutexGuard<'static, ()> {
    TORCH_GENERATOR.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn options(resume: bool, stop_after: Option<usize>) -> RunOptions {
    RunOptions { device: model::device::DevicePreference::Cpu, resume, stop_after, progress: false }
}

/// The `train` rows of `metrics.csv`: step and loss.
fn train_losses(out: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(out.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1] == "train").then(|| (f[0].to_owned(), f[2].to_owned()))
        })
        .collect()
}

#[test]
fn alignment_stopped_and_resumed_matches_an_uninterrupted_run() {
    let _generator = exclusive_generator();
    let dir = tempfile::tempdir().unwrap();
    tiny_artifact(dir.path());
    data(dir.path());
    let config = |name: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "model = \"base\"\ndata = \"train.jsonl\"\nheld_out = \"train.jsonl\"\nout = \"runs/{name}\"\nsteps = 6\nbatch_size = 3\n\
                 checkpoint_every = 2\neval_every = 3\neval_samples = 4\neval_max_new_tokens = 4\nlearning_rate = 1e-3\nseed = 5\n"
            ),
        )
        .unwrap();
        path
    };
    let stage = model::train::Stage::Alignment;

    let whole = train::vlm::run(stage, &config("whole"), &options(false, None)).unwrap();
    let Outcome::Trained { output, last_loss, summary } = &whole else { panic!("{whole:?}") };
    assert!(output.join("manifest.json").is_file(), "the trained artifact");
    assert!(last_loss.is_finite());
    assert!(summary[0].contains("for 6 steps (Alignment"), "{summary:?}");
    let eval = std::fs::read_to_string(dir.path().join("runs/whole/eval.csv")).unwrap();
    assert!(eval.lines().any(|l| l.starts_with("3,caption,")) && eval.lines().any(|l| l.starts_with("6,caption,")), "{eval}");

    let split = config("split");
    assert_eq!(train::vlm::run(stage, &split, &options(false, Some(2))).unwrap(), Outcome::Stopped { step: 2, steps: 6 });
    let refused = train::vlm::run(stage, &split, &options(false, None)).unwrap_err();
    assert!(refused.to_string().contains("already holds checkpoints"), "{refused:#}");
    let resumed = train::vlm::run(stage, &split, &options(true, None)).unwrap();
    assert!(matches!(resumed, Outcome::Trained { .. }), "{resumed:?}");
    let (whole_losses, split_losses) = (train_losses(&dir.path().join("runs/whole")), train_losses(&dir.path().join("runs/split")));
    assert_eq!(whole_losses.len(), 6);
    assert_eq!(split_losses, whole_losses, "a resumed run draws the same batches and reaches the same losses");

    let again = train::vlm::run(stage, &split, &options(true, None)).unwrap();
    assert!(matches!(&again, Outcome::AlreadyDone { steps: 6, what: "model", .. }), "{again:?}");

    // Another configuration in the same folder: its checkpoint is refused, naming what differs.
    let path = config("split");
    std::fs::write(&path, std::fs::read_to_string(&path).unwrap().replace("seed = 5", "seed = 6")).unwrap();
    let err = train::vlm::run(stage, &path, &options(true, None)).unwrap_err();
    assert!(format!("{err:#}").contains("seed (5 → 6)"), "{err:#}");
}

#[test]
fn the_retriever_objective_runs_on_the_same_loop_and_resumes_exactly() {
    let _generator = exclusive_generator();
    let encoder = model::encoders::TextEncoder::default_dir();
    if !encoder.is_dir() {
        // The text encoder comes from scripts/setup.sh, which the test command runs first.
        panic!("`{}` is missing: run `bash scripts/setup.sh`", encoder.display());
    }
    let dir = tempfile::tempdir().unwrap();
    tiny_artifact(dir.path());
    data(dir.path());
    let config = |name: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "start = \"base\"\ndata = \"pairs.jsonl\"\nheld_out = \"pairs.jsonl\"\nout = \"runs/{name}\"\nsteps = 4\nbatch_size = 4\n\
                 checkpoint_every = 2\neval_every = 2\nseed = 9\n"
            ),
        )
        .unwrap();
        path
    };
    let whole = train::retriever::run(&config("whole"), &options(false, None)).unwrap();
    let Outcome::Trained { output, summary, .. } = &whole else { panic!("{whole:?}") };
    assert!(output.join("retriever.json").is_file(), "{}", output.display());
    assert!(summary.iter().any(|l| l.starts_with("held-out image → text: before R@1")), "{summary:?}");
    let eval = std::fs::read_to_string(dir.path().join("runs/whole/eval.csv")).unwrap();
    for step in ["0", "2", "4"] {
        assert!(eval.lines().any(|l| l.starts_with(&format!("{step},retrieval,recall@1,"))), "recall at step {step}: {eval}");
    }

    let split = config("split");
    assert_eq!(train::retriever::run(&split, &options(false, Some(1))).unwrap(), Outcome::Stopped { step: 1, steps: 4 });
    assert!(matches!(train::retriever::run(&split, &options(true, None)).unwrap(), Outcome::Trained { .. }));
    assert_eq!(train_losses(&dir.path().join("runs/split")), train_losses(&dir.path().join("runs/whole")));
    assert!(matches!(train::retriever::run(&split, &options(true, None)).unwrap(), Outcome::AlreadyDone { what: "tower", .. }));
}
