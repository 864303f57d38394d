//! The stages as a runtime drives them: the conformance suite over every stage, the whole
//! embedded chain on a real scene with a small random model, a model failure in one batch,
//! cross-tile merging, and the sink's rerun rules.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use model::{
    artifact::{self, Provenance},
    chat::ChatTokenizer,
    config::StrataConfig,
    generate::GenerationConfig,
    layers::ParamInit,
    preprocess::RgbImage,
    vlm::{Answer, StrataModel, VlmRequest},
};
use operators::{
    runtime::{self, Chain, EmbeddedConfig, RunSummary},
    stage::{conformance::check_stage, Ack, AckStatus, Collector, Envelope, Position, Stage},
    stages::{
        infer::{InferConfig, InferStage, LoadedModel, TileModel, TilesOnly},
        merge::{merge_scene, MergeConfig, MergeStage},
        sink::{SinkOutcome, SinkStage},
        tile::TileStage,
    },
    tile::{TileEvent, TilerConfig},
};
use schemas::{
    DeadLetterRecord, ErrorKind, GridBox, OriginalPayload, ResultMessage, SceneRequest, SceneSource, SinkMessage, Stage as StageName,
    StageTimings, TaskAnswer, TaskOutput, TaskSpec, TileMessage, TileResult, TiledTile, TilingOptions, SCHEMA_VERSION,
};
use storage::Location;
use tables::{query, Tables};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn scene_url(name: &str) -> String {
    format!("file://{}", workspace().join("data/scenes").join(name).display())
}

/// A small random model saved as a real artifact (config.json, tokenizer.json, safetensors,
/// manifest with hashes).
fn tiny_artifact(dir: &Path, version: &str) -> PathBuf {
    let fixtures = workspace().join("model/tests/fixtures");
    let config = StrataConfig::from_json(&std::fs::read_to_string(fixtures.join("tiny-model/config.json")).unwrap()).unwrap();
    let tokenizer_path = fixtures.join("tokenizer/tokenizer.json");
    let tokenizer = ChatTokenizer::from_file(&tokenizer_path, &config.system_prompt).unwrap();
    let model = StrataModel::new(config, tokenizer, model::tch::Device::Cpu, model::tch::Kind::Float, ParamInit::Random).unwrap();
    let out = dir.join(version);
    artifact::save(&model, &tokenizer_path, &out, &Provenance { version: version.to_owned(), ..Provenance::default() }).unwrap();
    out
}

fn all_tasks() -> Vec<TaskSpec> {
    vec![
        TaskSpec::Caption { prompt: None },
        TaskSpec::Classify { classes: vec!["forest".into(), "water".into(), "urban".into()], prompt: None },
        TaskSpec::Vqa { question: "Is there a road?".into() },
        TaskSpec::Detect { target: "building".into() },
    ]
}

fn request(scene_id: &str, url: &str, tasks: Vec<TaskSpec>) -> SceneRequest {
    let mut request = SceneRequest::new("req-stages", scene_id, SceneSource::Uri { uri: url.to_owned() });
    request.tiling = TilingOptions { tile_size_px: 256, overlap_px: 32, output_size_px: 64, ..TilingOptions::default() };
    request.tasks = tasks;
    request
}

fn tile_stage(root: &Location) -> TileStage {
    let progress: operators::tile::Progress = Arc::new(|_: TileEvent| {});
    TileStage::new(root.clone(), TilerConfig { threads: 2, ..TilerConfig::default() }, progress)
}

/// Tile messages of one real scene, as the tile stage emits them.
async fn tiled(root: &Location, scene_id: &str, tasks: Vec<TaskSpec>) -> Vec<TileMessage> {
    let mut stage = tile_stage(root);
    let mut out = Collector::buffer();
    let input = Envelope::new(request(scene_id, &scene_url("rmnp-rgb.tif"), tasks), Position::Batch { index: 0 }, Ack::none());
    stage.process(input, &mut out).await.unwrap();
    out.drain().into_iter().map(|e| e.payload).collect()
}

fn count_files(dir: &Path, extension: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { count_files(&p, extension) } else { usize::from(p.extension().is_some_and(|e| e == extension)) })
        .sum()
}

/// Loads an artifact as the infer role does, on the CPU in the precision `auto` picks.
async fn load_on_cpu(location: &str) -> LoadedModel {
    LoadedModel::load(location, model::device::DevicePreference::Cpu, model::device::Precision::Auto).await.unwrap()
}

/// Inference must not wait for a whole scene to be cut: the tile stage hands each tile on as
/// soon as its PNG is stored. With a next stage that takes one message and then stalls, most
/// of the scene is still uncut when the first tile arrives; and once drained, every tile came
/// through exactly once, before the marker that counts them.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tile_stage_hands_on_each_tile_as_it_is_written() {
    let work = tempfile::tempdir().unwrap();
    let tiles_dir = work.path().join("tiles");
    let root = storage::resolve(tiles_dir.to_str().unwrap()).unwrap();
    let mut stage = tile_stage(&root);
    let mut scene = request("rmnp", &scene_url("rmnp-rgb.tif"), Vec::new());
    scene.tiling = TilingOptions { tile_size_px: 48, overlap_px: 0, output_size_px: 16, ..TilingOptions::default() };
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let tiling = tokio::spawn(async move {
        let mut out = Collector::channel(tx);
        stage.process(Envelope::new(scene, Position::Batch { index: 0 }, Ack::none()), &mut out).await.map_err(|e| e.to_string())
    });
    let first = rx.recv().await.unwrap();
    assert!(matches!(first.payload, TileMessage::Tile(_)), "the first message is a tile");
    let written_when_first_arrived = count_files(&tiles_dir, "png");
    let mut messages = vec![first.payload];
    while let Some(message) = rx.recv().await {
        messages.push(message.payload);
    }
    tiling.await.unwrap().unwrap();
    let written = count_files(&tiles_dir, "png");
    assert!(written > 40, "the scene should make many tiles, made {written}");
    assert!(
        written_when_first_arrived < written / 2,
        "the first tile arrived after {written_when_first_arrived} of {written} tiles were cut"
    );
    let Some(TileMessage::SceneTiled(marker)) = messages.pop() else { panic!("the marker comes last") };
    assert_eq!(marker.tiles_written, written as u64);
    let mut ids: Vec<String> = messages
        .iter()
        .map(|m| match m {
            TileMessage::Tile(t) => t.task.tile_id.clone(),
            other => panic!("one marker, last, and no failure: {other:?}"),
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), written, "each tile once");
}

/// The real model, failing every call whose number (from 1) is listed, and running a hook
/// on its first call (to change things mid-stream).
struct FlakyModel {
    inner: LoadedModel,
    calls: Arc<AtomicUsize>,
    fail_on: Vec<usize>,
    panic: bool,
    on_first_call: Option<Box<dyn FnOnce() + Send>>,
}

impl TileModel for FlakyModel {
    fn version(&self) -> &str {
        self.inner.version()
    }
    fn top_k(&self) -> usize {
        self.inner.top_k()
    }
    fn preprocess(&self, image: &RgbImage) -> Result<model::tch::Tensor, model::ModelError> {
        self.inner.preprocess(image)
    }
    fn answer(&mut self, requests: &[VlmRequest], config: &GenerationConfig) -> Result<Vec<Answer>, model::ModelError> {
        if let Some(hook) = self.on_first_call.take() {
            hook();
        }
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_on.contains(&call) {
            if self.panic {
                panic!("injected panic in call {call}");
            }
            return Err(model::ModelError::Request { reason: format!("injected failure in call {call}") });
        }
        self.inner.answer(requests, config)
    }
}

fn rows(tables: &Tables, sql: &str) -> Vec<serde_json::Value> {
    let runtime = tokio::runtime::Handle::current();
    let frame = tokio::task::block_in_place(|| runtime.block_on(query::run(tables, sql))).unwrap();
    let text = query::render(frame, query::OutputFormat::Json, &operators::geometry::Gdal).unwrap();
    serde_json::from_str(&text).unwrap()
}

async fn run_chain<I>(scenes: Vec<SceneRequest>, infer: I, tables: &Tables, tiles: &Location) -> RunSummary
where
    I: Stage<In = TileMessage, Out = ResultMessage>,
{
    let chain = Chain {
        tile: vec![tile_stage(tiles)],
        infer,
        merge: operators::runtime::Then::new(MergeStage::new(MergeConfig::default()), SinkStage::new(tables.clone(), 1), 4),
    };
    runtime::run(scenes, Vec::new(), chain, &EmbeddedConfig::default(), ()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_passes_the_conformance_suite() {
    let work = tempfile::tempdir().unwrap();
    let root = storage::resolve("memory://conformance/tiles").unwrap();

    // Tile: a real scene gives tiles then one marker; a missing scene is a permanent error.
    let mut tile = tile_stage(&root);
    let good = vec![request("rmnp", &scene_url("rmnp-rgb.tif"), all_tasks())];
    let bad = vec![request("missing", &scene_url("no-such-scene.tif"), Vec::new())];
    let report = check_stage(&mut tile, good, bad).await;
    let markers: Vec<_> = report.outputs.iter().filter(|e| matches!(e.payload, TileMessage::SceneTiled(_))).collect();
    assert_eq!(markers.len(), 1);
    let TileMessage::SceneTiled(marker) = &markers[0].payload else { unreachable!() };
    assert_eq!(marker.tiles_written as usize, report.outputs.len() - 1, "the marker counts the tiles sent before it");
    assert!(matches!(report.outputs.last().unwrap().payload, TileMessage::SceneTiled(_)), "the marker comes last");
    assert_eq!(report.errors[0].kind, operators::stage::StageErrorKind::Permanent);

    // Infer: every tile gets one answer per task, the marker passes through after them.
    let messages: Vec<TileMessage> = report.outputs.into_iter().map(|e| e.payload).collect();
    let model = load_on_cpu(tiny_artifact(work.path(), "tiny-1").to_str().unwrap()).await;
    let mut infer = InferStage::new(model, None, InferConfig { max_batch_tiles: 3, max_new_tokens: 4, ..InferConfig::default() });
    let report = check_stage(&mut infer, messages.clone(), Vec::new()).await;
    assert_eq!(report.outputs.len(), messages.len());
    let results: Vec<&TileResult> = report
        .outputs
        .iter()
        .filter_map(|e| match &e.payload {
            ResultMessage::Result(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), messages.len() - 1);
    for result in &results {
        assert_eq!(result.model_version, "tiny-1");
        let kinds: Vec<&str> = result.outputs.iter().map(|a| a.output.kind().as_str()).collect();
        assert_eq!(kinds, ["caption", "classify", "vqa", "detect"]);
    }
    assert!(matches!(report.outputs.last().unwrap().payload, ResultMessage::SceneTiled(_)));

    // Without a model: tiles only, and a tile asking for tasks is refused.
    let plain: Vec<TileMessage> = tiled(&root, "plain", Vec::new()).await;
    let with_tasks: Vec<TileMessage> = messages.iter().filter(|m| matches!(m, TileMessage::Tile(_))).take(1).cloned().collect();
    let report = check_stage(&mut TilesOnly, plain.clone(), with_tasks).await;
    assert_eq!(report.outputs.len(), plain.len());

    // Merge: one scene output once every tile outcome is in.
    let result_messages: Vec<ResultMessage> = report.outputs.into_iter().map(|e| e.payload).collect();
    let mut merge = MergeStage::new(MergeConfig::default());
    let report = check_stage(&mut merge, result_messages.clone(), Vec::new()).await;
    assert_eq!(report.outputs.len(), 1);
    assert_eq!(merge.open_scenes(), 0);
    let SinkMessage::Scene(scene) = &report.outputs[0].payload else { panic!("expected a scene") };
    assert_eq!(scene.results.len() as u64, scene.scene.tiles_written);

    // Sink: commits, and reports every input delivered.
    let tables = Tables::new(storage::resolve("memory://conformance/tables").unwrap());
    let mut sink = SinkStage::new(tables.clone(), 2);
    let inputs = vec![SinkMessage::Scene(scene.clone())];
    let report = check_stage(&mut sink, inputs, Vec::new()).await;
    assert_eq!(report.acks, vec![Some(AckStatus::Delivered)]);
    assert!(matches!(report.outputs[0].payload, SinkOutcome::Committed { .. }));

    // Merge and sink as one stage (the merge role of both runtimes): one commit for the
    // scene, and every result's ack delivered only once its scene is in the tables.
    let tables = Tables::new(storage::resolve("memory://conformance/composed").unwrap());
    let mut merge_and_sink = operators::runtime::Then::new(MergeStage::new(MergeConfig::default()), SinkStage::new(tables.clone(), 1), 4);
    let report = check_stage(&mut merge_and_sink, result_messages.clone(), Vec::new()).await;
    assert_eq!(report.outputs.len(), 1);
    let SinkOutcome::Committed { tiles, .. } = &report.outputs[0].payload else { panic!("expected a commit") };
    assert_eq!(*tiles, scene.scene.tiles_written);
    assert_eq!(report.acks, vec![Some(AckStatus::Delivered); result_messages.len()]);
    assert_eq!(merge_and_sink.stages().0.open_scenes(), 0);
    let counted = rows(&tables, "SELECT count(*) AS n FROM tiles");
    assert_eq!(counted[0]["n"], serde_json::json!(scene.scene.tiles_written));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_answers_every_task_on_every_tile_and_a_rerun_replaces_its_rows() {
    let work = tempfile::tempdir().unwrap();
    let tables = Tables::new(storage::resolve(work.path().join("tables").to_str().unwrap()).unwrap());
    let tiles = storage::resolve(work.path().join("tiles").to_str().unwrap()).unwrap();
    let artifact = tiny_artifact(work.path(), "tiny-1");
    for run in 0..2 {
        let model = load_on_cpu(artifact.to_str().unwrap()).await;
        let infer = InferStage::new(model, None, InferConfig { max_batch_tiles: 4, max_new_tokens: 4, ..InferConfig::default() });
        let summary = run_chain(vec![request("rmnp", &scene_url("rmnp-rgb.tif"), all_tasks())], infer, &tables, &tiles).await;
        assert!(summary.all_ok(), "run {run}: {summary:?}");
        assert_eq!(summary.acks.get("rmnp"), Some(&AckStatus::Delivered));
    }
    let n_tiles = rows(&tables, "SELECT count(*) AS n FROM tiles")[0]["n"].as_u64().unwrap();
    assert!(n_tiles >= 4, "{n_tiles}");
    for table in ["captions", "classifications", "vqa"] {
        let joined = rows(
            &tables,
            &format!(
                "SELECT count(*) AS n FROM {table} r JOIN tiles t ON r.request_id = t.request_id AND r.scene_id = t.scene_id AND r.tile_id = t.tile_id"
            ),
        );
        assert_eq!(joined[0]["n"].as_u64(), Some(n_tiles), "{table}: exactly one row per tile, after a rerun too");
    }
    let scene = rows(&tables, "SELECT tiles_written, tiles_failed, model_version, tiles_per_task FROM scenes");
    assert_eq!(scene.len(), 1);
    assert_eq!(scene[0]["tiles_written"].as_u64(), Some(n_tiles));
    assert_eq!(scene[0]["model_version"], "tiny-1");
    let per_task: serde_json::Value = serde_json::from_str(scene[0]["tiles_per_task"].as_str().unwrap()).unwrap();
    assert_eq!(per_task["caption"].as_u64(), Some(n_tiles));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_over_the_models_budget_fails_its_own_tiles_and_no_other() {
    let work = tempfile::tempdir().unwrap();
    let tables = Tables::new(storage::resolve(work.path().join("tables").to_str().unwrap()).unwrap());
    let tiles = storage::resolve(work.path().join("tiles").to_str().unwrap()).unwrap();
    let model = load_on_cpu(tiny_artifact(work.path(), "tiny-1").to_str().unwrap()).await;
    let infer = InferStage::new(model, None, InferConfig { max_batch_tiles: 8, max_new_tokens: 3, ..InferConfig::default() });
    // Far over the default budget of 1,024 query tokens.
    let long = TaskSpec::Detect { target: "ship ".repeat(3000).trim().to_owned() };
    let short = TaskSpec::Caption { prompt: None };
    let err = infer.check_tasks(&[short.clone(), long.clone()]).unwrap_err().to_string();
    assert!(err.contains("task 2 (detect)") && err.contains("over this model's budget of 1024"), "{err}");
    infer.check_tasks(std::slice::from_ref(&short)).unwrap();

    // Two scenes whose tiles share micro-batches: only the one asking the long task fails.
    let scenes = vec![request("good", &scene_url("rmnp-rgb.tif"), vec![short]), request("long", &scene_url("rmnp-rgb.tif"), vec![long])];
    let summary = run_chain(scenes, infer, &tables, &tiles).await;
    assert_eq!(summary.acks.get("good"), Some(&AckStatus::Delivered), "{summary:?}");
    assert_eq!(summary.acks.get("long"), Some(&AckStatus::Rejected), "{summary:?}");
    let dead = rows(&tables, "SELECT scene_id, stage, error_kind, message FROM dead_letter");
    assert!(!dead.is_empty());
    for row in &dead {
        assert_eq!(
            (row["scene_id"].as_str(), row["stage"].as_str(), row["error_kind"].as_str()),
            (Some("long"), Some("infer"), Some("permanent"))
        );
        assert!(row["message"].as_str().unwrap().contains("hint: shorten the class list, question or target"), "{row}");
    }
    let answered = rows(&tables, "SELECT count(*) AS n FROM captions WHERE scene_id = 'good'");
    let tiled = rows(&tables, "SELECT count(*) AS n FROM tiles WHERE scene_id = 'good'");
    assert_eq!(answered[0]["n"], tiled[0]["n"], "every tile of the good scene is answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_failure_dead_letters_exactly_that_batch_and_the_rest_succeeds() {
    for panic in [false, true] {
        let work = tempfile::tempdir().unwrap();
        let tables = Tables::new(storage::resolve(work.path().join("tables").to_str().unwrap()).unwrap());
        let tiles = storage::resolve(work.path().join("tiles").to_str().unwrap()).unwrap();
        let inner = load_on_cpu(tiny_artifact(work.path(), "tiny-1").to_str().unwrap()).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let model = FlakyModel { inner, calls: Arc::clone(&calls), fail_on: vec![2], panic, on_first_call: None };
        let infer = InferStage::new(model, None, InferConfig { max_batch_tiles: 2, max_new_tokens: 3, ..InferConfig::default() });
        let summary =
            run_chain(vec![request("rmnp", &scene_url("rmnp-rgb.tif"), vec![TaskSpec::Caption { prompt: None }])], infer, &tables, &tiles)
                .await;
        assert!(calls.load(Ordering::SeqCst) >= 3, "the stage kept serving after the failure");
        assert_eq!(summary.tiles_failed, 2, "exactly the failed batch's tiles: {summary:?}");
        assert!(!summary.all_ok());
        assert_eq!(summary.acks.get("rmnp"), Some(&AckStatus::Rejected), "the scene reports its dead letters");
        assert!(summary.internal_errors.is_empty(), "{:?}", summary.internal_errors);
        let dead = rows(&tables, "SELECT stage, error_kind, tile_id, message FROM dead_letter ORDER BY tile_id");
        assert_eq!(dead.len(), 2, "{dead:?}");
        for row in &dead {
            assert_eq!(row["stage"], "infer");
            assert_eq!(row["error_kind"], "internal");
            assert!(row["message"].as_str().unwrap().contains("injected"), "{row}");
        }
        let answered = rows(&tables, "SELECT count(*) AS n FROM captions")[0]["n"].as_u64().unwrap();
        let tiled = rows(&tables, "SELECT count(*) AS n FROM tiles")[0]["n"].as_u64().unwrap();
        assert_eq!(answered + 2, tiled, "every other tile has its caption; failed tiles still have their tile row");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_scenes_share_a_micro_batch_and_continuous_decoding_keeps_every_answer() {
    let work = tempfile::tempdir().unwrap();
    let tiles = storage::resolve(work.path().join("tiles").to_str().unwrap()).unwrap();
    let artifact = tiny_artifact(work.path(), "tiny-1");
    let scenes = || ["first", "second"].iter().map(|id| request(id, &scene_url("rmnp-rgb.tif"), all_tasks())).collect::<Vec<_>>();
    let mut answers = Vec::new();
    for (run, decode_slots) in [None, Some(3)].into_iter().enumerate() {
        let tables = Tables::new(storage::resolve(work.path().join(format!("tables-{run}")).to_str().unwrap()).unwrap());
        let calls = Arc::new(AtomicUsize::new(0));
        let inner = load_on_cpu(artifact.to_str().unwrap()).await;
        let model = FlakyModel { inner, calls: Arc::clone(&calls), fail_on: vec![], panic: false, on_first_call: None };
        // Room for both scenes' tiles, and no flush on a timer: only a scene marker could cut
        // the batch, and it must not.
        let config = InferConfig { max_batch_tiles: 1000, max_wait: Duration::from_secs(600), max_new_tokens: 6, decode_slots };
        let summary = run_chain(scenes(), InferStage::new(model, None, config), &tables, &tiles).await;
        assert!(summary.all_ok(), "{summary:?}");
        for scene in ["first", "second"] {
            assert_eq!(summary.acks.get(scene), Some(&AckStatus::Delivered), "{scene}: {summary:?}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "both scenes' tiles were answered as one micro-batch");
        let per_scene = rows(&tables, "SELECT scene_id, count(*) AS n FROM captions GROUP BY scene_id ORDER BY scene_id");
        let tiled = rows(&tables, "SELECT scene_id, count(*) AS n FROM tiles GROUP BY scene_id ORDER BY scene_id");
        assert_eq!(per_scene, tiled, "every tile of both scenes has its caption");
        answers.push((
            rows(&tables, "SELECT scene_id, tile_id, caption FROM captions ORDER BY scene_id, tile_id"),
            rows(&tables, "SELECT scene_id, tile_id, raw_answer FROM classifications ORDER BY scene_id, tile_id"),
            rows(&tables, "SELECT scene_id, tile_id, answer FROM vqa ORDER BY scene_id, tile_id"),
        ));
    }
    assert_eq!(answers[0], answers[1], "3 decoding slots give every tile the answers all-at-once decoding gives");
}

/// A tile result with detection boxes given in scene pixels (converted to the tile's grid).
fn with_boxes(tile: &TiledTile, target: &str, scene_boxes: &[[f64; 4]], score: f32) -> TileResult {
    let w = &tile.task.window;
    let grid = |v: f64, off: u64, len: u32| (((v - off as f64) / f64::from(len)) * 1000.0).round().clamp(0.0, 1000.0) as u16;
    let boxes = scene_boxes
        .iter()
        .map(|b| GridBox {
            x1: grid(b[0], w.col_off, w.width),
            y1: grid(b[1], w.row_off, w.height),
            x2: grid(b[2], w.col_off, w.width),
            y2: grid(b[3], w.row_off, w.height),
        })
        .collect();
    TileResult {
        schema_version: SCHEMA_VERSION,
        tile: tile.task.clone(),
        valid_fraction: tile.valid_fraction,
        model_version: "tiny-1".into(),
        outputs: vec![TaskAnswer {
            output: TaskOutput::Detect {
                target: target.into(),
                boxes,
                parse_errors: Vec::new(),
                raw_answer: String::new(),
                score,
                box_scores: Vec::new(),
            },
            retrieved: Vec::new(),
            descriptions_used: 0,
            complete: true,
        }],
        timings: StageTimings::default(),
        produced_at: chrono::Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_tiles_merge_into_one_detection_per_object_and_label() {
    let root = storage::resolve("memory://merge/tiles").unwrap();
    let messages = tiled(&root, "rmnp", vec![TaskSpec::Detect { target: "ship".into() }]).await;
    let tiles: Vec<TiledTile> = messages
        .iter()
        .filter_map(|m| match m {
            TileMessage::Tile(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    let TileMessage::SceneTiled(marker) = messages.last().unwrap().clone() else { panic!() };
    // The first two tiles of the top row overlap by 32 px (columns 224..256). Tiles arrive
    // as they are written, so they are found by position.
    let at = |col: u64| tiles.iter().find(|t| (t.task.window.row_off, t.task.window.col_off) == (0, col)).unwrap();
    let (a, b) = (at(0), at(224));
    let object = [230.0, 100.0, 250.0, 120.0];
    let elsewhere = [20.0, 20.0, 60.0, 60.0];
    let results = vec![with_boxes(a, "ship", &[object, elsewhere], 0.9), with_boxes(b, "ship", &[object], 0.7)];
    let scene = merge_scene(marker.clone(), results, Vec::new(), &MergeConfig::default());
    assert_eq!(scene.detections.len(), 2, "{:?}", scene.detections);
    let merged = scene.detections.iter().find(|d| d.tiles.len() == 2).expect("the shared object lists both tiles");
    assert_eq!(merged.tiles, vec![a.task.tile_id.clone(), b.task.tile_id.clone()]);
    assert_eq!(merged.tile_id, a.task.tile_id, "the best score is kept");
    assert!((merged.score - 0.9).abs() < 1e-6);
    assert_eq!(scene.stats.detections_per_label.get("ship"), Some(&2));
    // Every detection's lon/lat polygon lies inside its tile's footprint.
    for d in &scene.detections {
        let tile = tiles.iter().find(|t| t.task.tile_id == d.tile_id).unwrap();
        let (lon, lat): (Vec<f64>, Vec<f64>) = tile.task.footprint_lonlat.iter().map(|p| (p[0], p[1])).unzip();
        let bounds = |v: &[f64]| (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        let ((x0, x1), (y0, y1)) = (bounds(&lon), bounds(&lat));
        for p in d.lonlat_parts.iter().flatten() {
            assert!(p[0] >= x0 - 1e-9 && p[0] <= x1 + 1e-9 && p[1] >= y0 - 1e-9 && p[1] <= y1 + 1e-9, "{p:?} outside the tile");
        }
    }

    // Each box keeps its own score when the model scored boxes one by one (the answer's score
    // is the mean over the whole answer, and says nothing of a doubtful second box).
    let mut scored = with_boxes(a, "ship", &[object, elsewhere], 0.6);
    if let TaskOutput::Detect { box_scores, .. } = &mut scored.outputs[0].output {
        *box_scores = vec![0.95, 0.15];
    }
    let scene = merge_scene(marker.clone(), vec![scored], Vec::new(), &MergeConfig::default());
    let mut scores: Vec<f32> = scene.detections.iter().map(|d| d.score).collect();
    scores.sort_by(f32::total_cmp);
    assert_eq!(scores, vec![0.15, 0.95], "{:?}", scene.detections);

    // Different labels are never merged, however much they overlap.
    let results = vec![with_boxes(a, "ship", &[object], 0.9), with_boxes(b, "boat", &[object], 0.8)];
    let scene = merge_scene(marker, results, Vec::new(), &MergeConfig::default());
    assert_eq!(scene.detections.len(), 2);
    assert!(scene.detections.iter().all(|d| d.tiles.len() == 1));
}

fn dead_letter(request: Option<&str>, scene: Option<&str>, message: &str) -> DeadLetterRecord {
    DeadLetterRecord {
        schema_version: SCHEMA_VERSION,
        stage: StageName::Tile,
        error_kind: ErrorKind::Permanent,
        message: message.into(),
        request_id: request.map(Into::into),
        scene_id: scene.map(Into::into),
        tile_id: None,
        source: None,
        original_payload: OriginalPayload::from_bytes(message.as_bytes()),
        failed_at: chrono::Utc::now(),
    }
}

async fn sink_one(tables: &Tables, message: SinkMessage) -> AckStatus {
    let mut sink = SinkStage::new(tables.clone(), 1);
    let mut out = Collector::buffer();
    let (ack, rx) = Ack::channel();
    sink.process(Envelope::new(message, Position::Derived, ack), &mut out).await.unwrap();
    sink.flush(&mut out).await.unwrap();
    drop(out.drain());
    rx.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rerun_keeps_the_good_rows_and_file_names_never_collide() {
    let root = storage::resolve("memory://sink/tiles").unwrap();
    let tables = Tables::new(storage::resolve("memory://sink/tables").unwrap());
    let messages = tiled(&root, "a--b", Vec::new()).await;
    let mut merge = MergeStage::new(MergeConfig::default());
    let mut out = Collector::buffer();
    for m in messages.iter().cloned() {
        let m = match m {
            TileMessage::Tile(t) => ResultMessage::Result(TileResult {
                schema_version: SCHEMA_VERSION,
                tile: t.task,
                valid_fraction: t.valid_fraction,
                model_version: "none".into(),
                outputs: Vec::new(),
                timings: StageTimings::default(),
                produced_at: chrono::Utc::now(),
            }),
            TileMessage::SceneTiled(marker) => ResultMessage::SceneTiled(marker),
            TileMessage::Failed(r) => ResultMessage::Failed(r),
        };
        merge.process(Envelope::new(m, Position::Derived, Ack::none()), &mut out).await.unwrap();
    }
    let SinkMessage::Scene(scene) = out.drain().remove(0).payload else { panic!() };
    let n = scene.results.len();
    assert_eq!(sink_one(&tables, SinkMessage::Scene(scene.clone())).await, AckStatus::Delivered);

    // The same scene fails on a rerun: its dead letter is recorded, its rows stay.
    let status = sink_one(&tables, SinkMessage::Failed(dead_letter(Some("req-stages"), Some("a--b"), "transient"))).await;
    assert_eq!(status, AckStatus::Rejected);
    assert_eq!(rows(&tables, "SELECT count(*) AS n FROM tiles")[0]["n"].as_u64(), Some(n as u64));
    assert_eq!(rows(&tables, "SELECT count(*) AS n FROM dead_letter")[0]["n"].as_u64(), Some(1));

    // A scene id and request id that would collide as `{request}--{scene}` stems stay apart.
    let mut other = (*scene).clone();
    other.scene.request_id = "req-stages--a".into();
    other.scene.scene_id = "b".into();
    for r in &mut other.results {
        r.tile.request_id = "req-stages--a".into();
        r.tile.scene_id = "b".into();
    }
    sink_one(&tables, SinkMessage::Scene(Box::new(other))).await;
    assert_eq!(rows(&tables, "SELECT count(*) AS n FROM scenes")[0]["n"].as_u64(), Some(2));

    // Inputs without ids each get their own dead-letter file.
    sink_one(&tables, SinkMessage::Failed(dead_letter(None, None, "garbage one"))).await;
    sink_one(&tables, SinkMessage::Failed(dead_letter(None, None, "garbage two"))).await;
    assert_eq!(rows(&tables, "SELECT count(*) AS n FROM dead_letter WHERE scene_id IS NULL")[0]["n"].as_u64(), Some(2));

    // Succeeding again removes the scene's dead letter and keeps its rows once.
    assert_eq!(sink_one(&tables, SinkMessage::Scene(scene)).await, AckStatus::Delivered);
    assert_eq!(rows(&tables, "SELECT count(*) AS n FROM dead_letter WHERE scene_id = 'a--b'")[0]["n"].as_u64(), Some(0));
    assert_eq!(rows(&tables, "SELECT count(*) AS n FROM tiles WHERE scene_id = 'a--b'")[0]["n"].as_u64(), Some(n as u64));
}

/// A merge stage that panics on its first input.
struct PanickingMerge;

impl Stage for PanickingMerge {
    type In = ResultMessage;
    type Out = SinkMessage;

    fn name(&self) -> StageName {
        StageName::Merge
    }

    async fn process(
        &mut self,
        _input: Envelope<ResultMessage>,
        _out: &mut Collector<SinkMessage>,
    ) -> Result<(), operators::stage::StageError> {
        panic!("injected merge panic");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_panics_fails_the_run_instead_of_being_swallowed() {
    let work = tempfile::tempdir().unwrap();
    let tables = Tables::new(storage::resolve(work.path().join("tables").to_str().unwrap()).unwrap());
    let tiles = storage::resolve(work.path().join("tiles").to_str().unwrap()).unwrap();
    let chain = Chain {
        tile: vec![tile_stage(&tiles)],
        infer: TilesOnly,
        merge: operators::runtime::Then::new(PanickingMerge, SinkStage::new(tables, 1), 4),
    };
    let scenes = vec![request("rmnp", &scene_url("rmnp-rgb.tif"), Vec::new())];
    let summary = runtime::run(scenes, Vec::new(), chain, &EmbeddedConfig::default(), ()).await;
    assert!(!summary.all_ok(), "{summary:?}");
    assert!(summary.internal_errors.iter().any(|e| e.contains("merge") && e.contains("panic")), "{:?}", summary.internal_errors);
    assert_eq!(summary.acks.get("rmnp"), Some(&AckStatus::Errored), "a scene lost to the panic reports errored, not delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_model_takes_over_between_batches_and_each_row_names_its_version() {
    let work = tempfile::tempdir().unwrap();
    let tables = Tables::new(storage::resolve(work.path().join("tables").to_str().unwrap()).unwrap());
    let tiles = storage::resolve(work.path().join("tiles").to_str().unwrap()).unwrap();
    let load = |version: &'static str| {
        let dir = tiny_artifact(work.path(), version);
        async move { load_on_cpu(dir.to_str().unwrap()).await }
    };
    let (first, second) = (load("tiny-1").await, load("tiny-2").await);
    let (updates, received) = tokio::sync::mpsc::channel(1);
    // The new version arrives while the first batch runs.
    let steady = |inner| FlakyModel { inner, calls: Arc::new(AtomicUsize::new(0)), fail_on: Vec::new(), panic: false, on_first_call: None };
    let arrival = steady(second);
    let hook: Box<dyn FnOnce() + Send> = Box::new(move || updates.try_send(arrival).map_err(|_| "channel full").unwrap());
    let model = FlakyModel { on_first_call: Some(hook), ..steady(first) };
    let infer = InferStage::new(model, None, InferConfig { max_batch_tiles: 2, max_new_tokens: 3, ..InferConfig::default() })
        .with_updates(received);
    let summary =
        run_chain(vec![request("rmnp", &scene_url("rmnp-rgb.tif"), vec![TaskSpec::Caption { prompt: None }])], infer, &tables, &tiles)
            .await;
    assert!(summary.all_ok(), "{summary:?}");
    let versions = rows(&tables, "SELECT model_version, count(*) AS n FROM captions GROUP BY model_version ORDER BY model_version");
    let tiled = rows(&tables, "SELECT count(*) AS n FROM tiles")[0]["n"].as_u64().unwrap();
    assert!(tiled >= 4, "{tiled}");
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert_eq!(
        (versions[0]["model_version"].as_str(), versions[0]["n"].as_u64()),
        (Some("tiny-1"), Some(2)),
        "the first batch: {versions:?}"
    );
    assert_eq!((versions[1]["model_version"].as_str(), versions[1]["n"].as_u64()), (Some("tiny-2"), Some(tiled - 2)), "{versions:?}");
}

/// Encodes `pixels` (`channels` bytes per pixel) as an 8-bit PNG of `color` type.
fn png(width: u32, height: u32, color: png::ColorType, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header().unwrap().write_image_data(pixels).unwrap();
    out
}

/// Inference decodes a tile from its bytes; training, evaluation and `strata model ask` read
/// the same file from disk: with one decoder and one preprocessing, the model sees the very
/// same tensor either way (the GDAL reader training used before could differ).
#[tokio::test]
async fn inference_training_and_evaluation_see_the_same_pixels_for_a_tile() {
    let work = tempfile::tempdir().unwrap();
    let artifact = tiny_artifact(work.path(), "tiny-pixels");
    let (width, height) = (37u32, 23u32);
    let rgb: Vec<u8> = (0..width * height * 3).map(|i| ((i * 7919) % 251) as u8).collect();
    let bytes = png(width, height, png::ColorType::Rgb, &rgb);
    let tile = work.path().join("r0000_c0000.png");
    std::fs::write(&tile, &bytes).unwrap();

    let serving = load_on_cpu(artifact.to_str().unwrap()).await;
    let decoded = RgbImage::decode(&bytes, "tile").unwrap();
    assert_eq!((decoded.width, decoded.height, &decoded.pixels), (37, 23, &rgb), "the tile decodes to the bytes encoded");
    let infer_pixels = TileModel::preprocess(&serving, &decoded).unwrap();
    let trained = model::artifact::Artifact::open(&artifact).unwrap().load(model::tch::Device::Cpu, model::tch::Kind::Float).unwrap();
    let train_pixels = trained.preprocess(&RgbImage::read(&tile).unwrap()).unwrap();
    assert_eq!(infer_pixels.size(), train_pixels.size());
    assert!(infer_pixels.equal(&train_pixels), "inference and training preprocess the tile alike");

    // Grey repeats into three channels, alpha is dropped, as for tiles of those kinds.
    let grey: Vec<u8> = (0..width * height).map(|i| (i % 256) as u8).collect();
    let as_rgb = RgbImage::decode(&png(width, height, png::ColorType::Grayscale, &grey), "grey").unwrap();
    assert_eq!(as_rgb.pixels, grey.iter().flat_map(|&g| [g, g, g]).collect::<Vec<_>>());
    let rgba: Vec<u8> = rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 9]).collect();
    assert_eq!(RgbImage::decode(&png(width, height, png::ColorType::Rgba, &rgba), "rgba").unwrap().pixels, rgb);
    // A truncated file says so, naming it.
    let err = RgbImage::decode(&bytes[..bytes.len() / 2], "tile `t.png`").unwrap_err().to_string();
    assert!(err.starts_with("tile `t.png` is not a readable image"), "{err}");
}

/// Retrieval without a model is refused where inference runs, and only there: a tile worker
/// sharing a deployment's settings starts.
#[tokio::test]
async fn an_index_without_a_model_is_refused_only_for_the_infer_role() {
    use operators::chain::{self, ChainSettings, ModelSource, Roles};
    let settings = ChainSettings {
        tiles: storage::resolve("memory://chain-roles/tiles").unwrap(),
        tables: Tables::new(storage::resolve("memory://chain-roles/tables").unwrap()),
        tiler: TilerConfig::default(),
        tile_workers: 2,
        progress: Arc::new(|_: TileEvent| {}),
        merge: MergeConfig::default(),
        infer: InferConfig::default(),
        model: ModelSource::None,
        retrieval: retrieval::RetrievalOptions { index: Some("/nonexistent".to_owned()), ..Default::default() },
        device: model::device::DevicePreference::Cpu,
        precision: model::device::Precision::Auto,
        max_attempts: 4,
    };
    let Err(err) = chain::build(&settings, Roles::ALL).await else { panic!("an index without a model was accepted") };
    assert!(err.to_string().contains("--index needs --model"), "{err}");
    let tile_only = chain::build(&settings, Roles { tile: true, infer: false, merge: false }).await.unwrap();
    assert_eq!(tile_only.tile.len(), 2);
    assert!(tile_only.infer.is_none() && tile_only.merge.is_none());
    assert!(ModelSource::from_settings(Some("a"), Some("b")).is_err(), "two model sources are refused");
}
