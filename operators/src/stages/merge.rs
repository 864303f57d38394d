//! The merge stage: per scene, waits until every tile's outcome is in (the scene-tiled marker
//! says how many), then georeferences the detected boxes, merges boxes of the same label that
//! overlapping tiles both saw (NMS), and summarises the scene.
//!
//! Completion is counted, not ordered: results may arrive in any order and before the marker
//! (the Kafka runtime gives no order across partitions), and a tile answered twice (a retry, a
//! replay) counts once. A scene that failed as a whole drops whatever partial state it had.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Instant,
};

use chrono::Utc;
use schemas::{
    DeadLetterRecord, ResultMessage, SceneDetection, SceneResults, SceneStats, SceneTiled, SinkMessage, Stage as StageName, TaskOutput,
    TileResult, SCHEMA_VERSION,
};

pub use crate::merge::MergeConfig;
use crate::{
    georef::{GeoreferencedBox, TileGeoref},
    merge::{self, Detection},
    stage::{Ack, AckStatus, Collector, Envelope, Position, Stage, StageError, StageErrorKind},
};

#[derive(Default)]
struct SceneState {
    marker: Option<SceneTiled>,
    results: BTreeMap<String, TileResult>,
    failed: BTreeMap<String, DeadLetterRecord>,
    ack: Ack,
}

impl SceneState {
    fn complete(&self) -> bool {
        self.marker.as_ref().is_some_and(|m| (self.results.len() + self.failed.len()) as u64 >= m.tiles_written)
    }
}

/// The merge stage.
#[derive(Default)]
pub struct MergeStage {
    config: MergeConfig,
    scenes: HashMap<(String, String), SceneState>,
    /// Scenes that failed as a whole: late outcomes of their tiles (sent before the failure)
    /// are dropped instead of opening a scene that would never complete.
    failed: HashSet<(String, String)>,
}

impl MergeStage {
    /// A stage merging with `config`.
    pub fn new(config: MergeConfig) -> Self {
        Self { config, scenes: HashMap::new(), failed: HashSet::new() }
    }

    /// Scenes waiting for more tile outcomes.
    pub fn open_scenes(&self) -> usize {
        self.scenes.len()
    }
}

/// Georeferences and merges a scene's detections, and builds its summary. A box that cannot
/// be placed (no area, wholly in a partial window's padding, around a pole) is logged and left
/// out; it never fails the scene.
pub fn merge_scene(scene: SceneTiled, results: Vec<TileResult>, failed: Vec<DeadLetterRecord>, config: &MergeConfig) -> SceneResults {
    let started = Instant::now();
    let mut stats = SceneStats::default();
    let mut candidates: Vec<Detection<(String, GeoreferencedBox)>> = Vec::new();
    for result in &results {
        if !result.outputs.is_empty() {
            stats.model_version.get_or_insert_with(|| result.model_version.clone());
        }
        stats.infer_ms += result.timings.infer_ms;
        stats.retrieve_ms += result.timings.retrieve_ms;
        let mut georef = None;
        for answer in &result.outputs {
            *stats.tiles_per_task.entry(answer.output.kind().as_str().to_owned()).or_default() += 1;
            match &answer.output {
                TaskOutput::Classify { label, .. } => {
                    *stats.class_histogram.entry(label.clone().unwrap_or_else(|| "(none)".to_owned())).or_default() += 1;
                }
                TaskOutput::Detect { target, boxes, score, box_scores, .. } if !boxes.is_empty() => {
                    if georef.is_none() {
                        match TileGeoref::new(&result.tile) {
                            Ok(tile) => georef = Some(tile),
                            Err(error) => {
                                tracing::warn!(tile_id = %result.tile_id(), %error, "Cannot georeference the tile's boxes; leaving them out.");
                                continue;
                            }
                        }
                    }
                    let Some(tile) = &georef else { continue };
                    for (i, grid) in boxes.iter().enumerate() {
                        match tile.georeference(grid) {
                            Ok(placed) => candidates.push(Detection {
                                label: target.clone(),
                                score: box_scores.get(i).copied().unwrap_or(*score),
                                scene_box: placed.scene_box,
                                tile_id: result.tile_id().to_owned(),
                                payload: (target.clone(), placed),
                            }),
                            Err(error) => {
                                tracing::warn!(tile_id = %result.tile_id(), ?grid, %error, "Leaving out a box that cannot be placed.")
                            }
                        }
                    }
                }
                TaskOutput::Detect { .. } | TaskOutput::Caption { .. } | TaskOutput::Vqa { .. } => {}
            }
        }
    }
    stats.majority_class = stats
        .class_histogram
        .iter()
        .filter(|(class, _)| class.as_str() != "(none)")
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(class, _)| class.clone());
    let mut detections: Vec<SceneDetection> = Vec::new();
    let mut per_target: BTreeMap<String, u32> = BTreeMap::new();
    for object in merge::merge_detections(candidates, config) {
        let (target, placed) = object.best.payload;
        let index = per_target.entry(target.clone()).or_default();
        *stats.detections_per_label.entry(object.best.label.clone()).or_default() += 1;
        detections.push(SceneDetection {
            target,
            label: object.best.label,
            box_index: *index,
            tile_id: object.best.tile_id,
            tiles: object.tile_ids,
            tile_box: placed.image_box,
            scene_box: placed.scene_box,
            lonlat_parts: placed.lonlat.parts().to_vec(),
            score: object.best.score,
        });
        *index += 1;
    }
    stats.merge_ms = started.elapsed().as_secs_f64() * 1e3;
    SceneResults { schema_version: SCHEMA_VERSION, scene, results, failed, detections, stats, merged_at: Utc::now() }
}

impl Stage for MergeStage {
    type In = ResultMessage;
    type Out = SinkMessage;

    fn name(&self) -> StageName {
        StageName::Merge
    }

    async fn process(&mut self, input: Envelope<ResultMessage>, out: &mut Collector<SinkMessage>) -> Result<(), StageError> {
        let closed = |e| StageError::new(StageName::Merge, StageErrorKind::Internal, e);
        let Envelope { payload, ack, .. } = input;
        let key = match &payload {
            ResultMessage::Result(r) => (r.request_id().to_owned(), r.scene_id().to_owned()),
            ResultMessage::SceneTiled(m) => (m.request_id.clone(), m.scene_id.clone()),
            ResultMessage::Failed(record) => match (&record.request_id, &record.scene_id, &record.tile_id) {
                (Some(request), Some(scene), Some(_)) => (request.clone(), scene.clone()),
                // A failure of a whole scene (or of an input without ids): drop what the scene
                // had and pass the record on.
                _ => {
                    let mut ack = ack;
                    if let (Some(request), Some(scene)) = (&record.request_id, &record.scene_id) {
                        let key = (request.clone(), scene.clone());
                        if let Some(state) = self.scenes.remove(&key) {
                            ack.merge(state.ack);
                        }
                        self.failed.insert(key);
                    }
                    let envelope = Envelope::new(SinkMessage::Failed(record.clone()), Position::Derived, ack);
                    return out.collect(envelope).await.map_err(closed);
                }
            },
        };
        if self.failed.contains(&key) {
            tracing::debug!(request_id = %key.0, scene_id = %key.1, "Dropping an outcome of a scene that failed as a whole.");
            // Handled: its scene is dead-lettered. Left pending, the ack would report the
            // input lost, and a log-driven runtime would hold its offset forever.
            ack.update(AckStatus::Rejected);
            return Ok(());
        }
        let state = self.scenes.entry(key.clone()).or_default();
        state.ack.merge(ack);
        match payload {
            ResultMessage::Result(result) => {
                state.failed.remove(result.tile_id());
                state.results.insert(result.tile_id().to_owned(), result);
            }
            ResultMessage::SceneTiled(marker) => state.marker = Some(marker),
            ResultMessage::Failed(record) => {
                let tile = record.tile_id.clone().unwrap_or_default();
                if !state.results.contains_key(&tile) {
                    state.failed.insert(tile, record);
                }
            }
        }
        if !state.complete() {
            return Ok(());
        }
        let Some(state) = self.scenes.remove(&key) else { return Ok(()) };
        let Some(marker) = state.marker else { return Ok(()) };
        let results: Vec<TileResult> = state.results.into_values().collect();
        let failed: Vec<DeadLetterRecord> = state.failed.into_values().collect();
        let merged = tracing::info_span!("merge", request_id = %key.0, scene_id = %key.1)
            .in_scope(|| merge_scene(marker, results, failed, &self.config));
        let message = SinkMessage::Scene(Box::new(merged));
        out.collect(Envelope::new(message, Position::Derived, state.ack)).await.map_err(closed)
    }

    async fn on_close(&mut self) -> Result<(), StageError> {
        if self.scenes.is_empty() {
            return Ok(());
        }
        // Inputs ended with scenes still waiting: some tile outcome never arrived. Their acks
        // report errored as the state is dropped; say which.
        let open: Vec<String> = self.scenes.keys().map(|(request, scene)| format!("{request}/{scene}")).collect();
        self.scenes.clear();
        Err(StageError::new(
            StageName::Merge,
            StageErrorKind::Internal,
            format!("{} scene(s) never completed (a tile outcome is missing): {}", open.len(), open.join(", ")),
        ))
    }
}
