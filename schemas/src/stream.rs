//! The messages between stages: what the tile stage sends to inference, and what inference
//! sends to the merge stage. Besides the work itself, each stream carries two kinds of
//! control record, in band, so every runtime (channels or Kafka topics) moves them the same
//! way:
//!
//! - a *scene-tiled marker* after a scene's last tile, with the number of tiles written: a
//!   later stage knows a scene is complete when it has seen that many tile outcomes;
//! - *dead-letter records* of inputs a stage gave up on, so the one writer of the tables (the
//!   sink) records every failure exactly once, in order with the results.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{check_id, DeadLetterRecord, Message, SchemaError, TaskSpec, TileResult, TileTask};

/// A tile written by the tile stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TiledTile {
    /// Message schema version.
    pub schema_version: u32,
    /// The task for the inference stage.
    pub task: TileTask,
    /// Fraction of the window's pixels holding data, in [0, 1].
    pub valid_fraction: f32,
}

/// The marker the tile stage sends after a scene's last tile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneTiled {
    /// Message schema version.
    pub schema_version: u32,
    /// Request id.
    pub request_id: String,
    /// Scene id.
    pub scene_id: String,
    /// URL the pixels were read from (the first asset for STAC items).
    pub source_uri: String,
    /// Scene width, pixels.
    pub width: u64,
    /// Scene height, pixels.
    pub height: u64,
    /// Bands in the (primary) raster.
    pub band_count: u32,
    /// Band data type name, e.g. `UInt16`.
    pub dtype: String,
    /// EPSG code of the scene CRS, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crs_epsg: Option<u32>,
    /// The scene's four corners in lon/lat (upper left, lower left, lower right, upper right,
    /// then the first again), as `gdalinfo` lists them: a key to the scene's extent, not a
    /// polygon to draw (it may cross the antimeridian or wind clockwise).
    pub footprint_lonlat: Vec<[f64; 2]>,
    /// The scene footprint to draw: one closed, counter-clockwise lon/lat ring per part
    /// (RFC 7946 §3.1.6), densified along the scene's edges, two parts when it crosses the
    /// antimeridian (cut at ±180°, §3.1.9), one ring closed along the pole's latitude when it
    /// contains a pole. Empty in markers from before it existed: readers then fall back to
    /// `footprint_lonlat`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub footprint_parts: Vec<Vec<[f64; 2]>>,
    /// Tiles written (and sent before this marker): the scene is complete downstream once
    /// this many tile outcomes have arrived.
    pub tiles_written: u64,
    /// Windows skipped because they held no data.
    pub tiles_skipped_nodata: u64,
    /// The tasks requested for every tile.
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
    /// When the request was made: the partition date of every row of the scene.
    pub submitted_at: DateTime<Utc>,
    /// Wall time spent tiling, milliseconds.
    pub tile_ms: f64,
}

/// What flows from the tile stage to the inference stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TileMessage {
    /// One tile to run the tasks on.
    Tile(TiledTile),
    /// A scene's last tile has been sent.
    SceneTiled(SceneTiled),
    /// An input the tile stage gave up on.
    Failed(DeadLetterRecord),
}

/// What flows from the inference stage to the merge stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ResultMessage {
    /// One tile's answers.
    Result(TileResult),
    /// A scene's last tile has been sent (forwarded from the tile stage).
    SceneTiled(SceneTiled),
    /// A tile or scene a stage gave up on.
    Failed(DeadLetterRecord),
}

impl SceneTiled {
    fn check(&self, kind: &'static str) -> Result<(), SchemaError> {
        check_id(kind, "request_id", &self.request_id)?;
        check_id(kind, "scene_id", &self.scene_id)
    }
}

impl Message for TileMessage {
    const KIND: &'static str = "tile_message";

    fn validate(&self) -> Result<(), SchemaError> {
        match self {
            Self::Tile(tile) => {
                tile.task.validate()?;
                if !(0.0..=1.0).contains(&tile.valid_fraction) {
                    return Err(SchemaError::Invalid {
                        kind: Self::KIND,
                        field: "valid_fraction".to_owned(),
                        reason: "must lie in [0, 1]".to_owned(),
                    });
                }
                Ok(())
            }
            Self::SceneTiled(marker) => marker.check(Self::KIND),
            Self::Failed(record) => record.validate(),
        }
    }
}

impl Message for ResultMessage {
    const KIND: &'static str = "result_message";

    fn validate(&self) -> Result<(), SchemaError> {
        match self {
            Self::Result(result) => result.validate(),
            Self::SceneTiled(marker) => marker.check(Self::KIND),
            Self::Failed(record) => record.validate(),
        }
    }
}

impl From<DeadLetterRecord> for TileMessage {
    fn from(record: DeadLetterRecord) -> Self {
        Self::Failed(record)
    }
}

impl From<DeadLetterRecord> for ResultMessage {
    fn from(record: DeadLetterRecord) -> Self {
        Self::Failed(record)
    }
}

/// One object found in a scene, after boxes of the same label seen by overlapping tiles were
/// merged (non-maximum suppression).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneDetection {
    /// What was searched for.
    pub target: String,
    /// The box's label (the target).
    pub label: String,
    /// Index of the object among the scene's detections of this target, best first.
    pub box_index: u32,
    /// The tile whose box was kept (the best score).
    pub tile_id: String,
    /// Every tile that saw the object, sorted.
    pub tiles: Vec<String>,
    /// `[x1, y1, x2, y2]` in the best tile's image pixels.
    pub tile_box: [f64; 4],
    /// `[x1, y1, x2, y2]` in scene pixels.
    pub scene_box: [f64; 4],
    /// The box outline in lon/lat: one closed counter-clockwise ring per part (two parts when
    /// it crosses the antimeridian, split at ±180°).
    pub lonlat_parts: Vec<Vec<[f64; 2]>>,
    /// The kept box's score: the geometric-mean probability of the tokens that spell the box
    /// (`TaskOutput::Detect::box_scores`), or of the whole answer from a producer that did not
    /// score boxes.
    pub score: f32,
}

/// What the merge stage learned about a whole scene.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneStats {
    /// Model version that answered (the first one seen), when any task ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Tiles answered per task kind.
    pub tiles_per_task: std::collections::BTreeMap<String, u64>,
    /// Tiles per matched class (unmatched answers under `(none)`).
    pub class_histogram: std::collections::BTreeMap<String, u64>,
    /// The most frequent matched class (ties: the first by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub majority_class: Option<String>,
    /// Detections after merging, per label.
    pub detections_per_label: std::collections::BTreeMap<String, u64>,
    /// Model time summed over tiles, ms.
    pub infer_ms: f64,
    /// Retrieval time summed over tiles, ms.
    pub retrieve_ms: f64,
    /// Time spent merging, ms.
    pub merge_ms: f64,
}

/// Everything the tables get for one completed scene.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneResults {
    /// Message schema version.
    pub schema_version: u32,
    /// The scene as tiled.
    pub scene: SceneTiled,
    /// One result per tile that was answered, in tile order.
    pub results: Vec<TileResult>,
    /// Tiles whose inference failed, in tile order.
    pub failed: Vec<DeadLetterRecord>,
    /// Merged detections.
    pub detections: Vec<SceneDetection>,
    /// The scene summary.
    pub stats: SceneStats,
    /// When the merge finished.
    pub merged_at: DateTime<Utc>,
}

/// What flows from the merge stage to the sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkMessage {
    /// A completed scene.
    Scene(Box<SceneResults>),
    /// A scene (or an input) that failed before it could complete.
    Failed(DeadLetterRecord),
}

impl From<DeadLetterRecord> for SinkMessage {
    fn from(record: DeadLetterRecord) -> Self {
        Self::Failed(record)
    }
}

impl Message for SinkMessage {
    const KIND: &'static str = "sink_message";

    fn validate(&self) -> Result<(), SchemaError> {
        match self {
            Self::Scene(scene) => {
                scene.scene.check(Self::KIND)?;
                scene.results.iter().try_for_each(Message::validate)
            }
            Self::Failed(record) => record.validate(),
        }
    }
}
