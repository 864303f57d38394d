//! Tile results: what the model said about one tile, per task, tagged with the model version.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{check_id, Message, SchemaError, TaskKind, TileTask};

/// The outputs of every task run on one tile, with the tile itself (its georeference travels
/// with the result, so the merge stage can place boxes on the globe without another lookup).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TileResult {
    /// Message schema version.
    pub schema_version: u32,
    /// The tile the outputs are about: ids, image, window and georeference.
    pub tile: TileTask,
    /// Fraction of the tile's window that holds data, in [0, 1].
    pub valid_fraction: f32,
    /// Version of the model artifact that produced the outputs.
    pub model_version: String,
    /// One answer per requested task, in request order.
    pub outputs: Vec<TaskAnswer>,
    /// Where the time went.
    pub timings: StageTimings,
    /// When the result was produced.
    pub produced_at: DateTime<Utc>,
}

impl TileResult {
    /// The request id (of the tile).
    pub fn request_id(&self) -> &str {
        &self.tile.request_id
    }

    /// The scene id (of the tile).
    pub fn scene_id(&self) -> &str {
        &self.tile.scene_id
    }

    /// The tile id.
    pub fn tile_id(&self) -> &str {
        &self.tile.tile_id
    }
}

/// One task's answer and what went into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskAnswer {
    /// The parsed answer.
    pub output: TaskOutput,
    /// Descriptions the retriever supplied for this answer, best first.
    #[serde(default)]
    pub retrieved: Vec<RetrievedDescription>,
    /// How many of `retrieved` fitted the model's semantic-token budget (whole descriptions,
    /// from the best); fewer than `retrieved.len()` means the rest were dropped.
    #[serde(default)]
    pub descriptions_used: u32,
    /// Whether the answer ended on a stop token (false: it hit the token limit and was cut).
    #[serde(default = "yes")]
    pub complete: bool,
}

const fn yes() -> bool {
    true
}

/// A description returned by the retriever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrievedDescription {
    /// Id in the description database.
    pub id: String,
    /// Cosine similarity to the tile.
    pub score: f32,
}

/// Time spent per step on one tile, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageTimings {
    /// Reading and decoding the tile image.
    pub load_ms: f64,
    /// Retrieving descriptions.
    pub retrieve_ms: f64,
    /// Running the model on all tasks.
    pub infer_ms: f64,
}

/// A box on the model's 0–1000 grid relative to the tile (MODEL_SPEC section 6).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridBox {
    /// Left edge.
    pub x1: u16,
    /// Top edge.
    pub y1: u16,
    /// Right edge.
    pub x2: u16,
    /// Bottom edge.
    pub y2: u16,
}

/// `[x1, y1, x2, y2]`, as the model writes a box (what users read in warnings).
impl std::fmt::Display for GridBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}, {}, {}]", self.x1, self.y1, self.x2, self.y2)
    }
}

/// The output of one task on one tile.
///
/// Every `score` is the answer's geometric-mean token probability, `exp(mean log p)` over its
/// generated tokens (stop token included), in (0, 1]: 1 means the model was certain of every
/// token. It is comparable across answers of different lengths, not a calibrated probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskOutput {
    /// A caption.
    Caption {
        /// The caption.
        text: String,
        /// Answer score.
        score: f32,
    },
    /// A class pick.
    Classify {
        /// The candidate class the answer matched, if any.
        label: Option<String>,
        /// The model's answer as generated.
        raw_answer: String,
        /// Answer score.
        score: f32,
    },
    /// A VQA answer.
    Vqa {
        /// The question asked.
        question: String,
        /// The normalised answer.
        answer: String,
        /// Answer score.
        score: f32,
    },
    /// Detected boxes for one target.
    Detect {
        /// What was searched for.
        target: String,
        /// Boxes parsed from the answer.
        boxes: Vec<GridBox>,
        /// Fragments of the answer that were not valid boxes.
        #[serde(default)]
        parse_errors: Vec<String>,
        /// The model's answer as generated.
        raw_answer: String,
        /// Answer score.
        score: f32,
        /// Each box's own score, in the order of `boxes`: `exp(mean log p)` of the tokens that
        /// spell it, in (0, 1]. Empty from a producer that did not score boxes (every box then
        /// carries `score`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        box_scores: Vec<f32>,
    },
}

impl TaskOutput {
    /// The task this output answers.
    pub const fn kind(&self) -> TaskKind {
        match self {
            Self::Caption { .. } => TaskKind::Caption,
            Self::Classify { .. } => TaskKind::Classify,
            Self::Vqa { .. } => TaskKind::Vqa,
            Self::Detect { .. } => TaskKind::Detect,
        }
    }
}

impl Message for TileResult {
    const KIND: &'static str = "tile_result";

    fn validate(&self) -> Result<(), SchemaError> {
        let kind = Self::KIND;
        self.tile.validate().map_err(|err| match err {
            SchemaError::Invalid { field, reason, .. } => SchemaError::Invalid { kind, field: format!("tile.{field}"), reason },
            other => other,
        })?;
        check_id(kind, "model_version", &self.model_version)?;
        if !(0.0..=1.0).contains(&self.valid_fraction) {
            return Err(SchemaError::Invalid { kind, field: "valid_fraction".to_owned(), reason: "must lie in [0, 1]".to_owned() });
        }
        for (i, answer) in self.outputs.iter().enumerate() {
            if let TaskOutput::Detect { boxes, box_scores, .. } = &answer.output {
                if !box_scores.is_empty() && box_scores.len() != boxes.len() {
                    return Err(SchemaError::Invalid {
                        kind,
                        field: format!("outputs[{i}].output.box_scores"),
                        reason: format!("holds {} scores for {} boxes", box_scores.len(), boxes.len()),
                    });
                }
                if let Some(j) = boxes.iter().position(|b| b.x2 > 1000 || b.y2 > 1000 || b.x1 > b.x2 || b.y1 > b.y2) {
                    return Err(SchemaError::Invalid {
                        kind,
                        field: format!("outputs[{i}].output.boxes[{j}]"),
                        reason: "must satisfy 0 <= x1 <= x2 <= 1000 and 0 <= y1 <= y2 <= 1000".to_owned(),
                    });
                }
            }
        }
        Ok(())
    }
}
