//! Tile results: what the model said about one tile, per task, tagged with the model version.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{check_id, Message, SchemaError, TaskKind};

/// The outputs of every task run on one tile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TileResult {
    /// Message schema version.
    pub schema_version: u32,
    /// Request the tile belongs to.
    pub request_id: String,
    /// Scene the tile was cut from.
    pub scene_id: String,
    /// The tile.
    pub tile_id: String,
    /// Version of the model artifact that produced the outputs.
    pub model_version: String,
    /// Descriptions the retriever supplied to the model, best first.
    #[serde(default)]
    pub retrieved: Vec<RetrievedDescription>,
    /// One output per requested task, in request order.
    pub outputs: Vec<TaskOutput>,
    /// Where the time went.
    pub timings: StageTimings,
    /// When the result was produced.
    pub produced_at: DateTime<Utc>,
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

/// The output of one task on one tile. Scores are mean token log-probabilities of the answer.
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
        check_id(kind, "request_id", &self.request_id)?;
        check_id(kind, "scene_id", &self.scene_id)?;
        check_id(kind, "tile_id", &self.tile_id)?;
        check_id(kind, "model_version", &self.model_version)?;
        for (i, output) in self.outputs.iter().enumerate() {
            if let TaskOutput::Detect { boxes, .. } = output {
                if let Some(j) = boxes.iter().position(|b| b.x2 > 1000 || b.y2 > 1000 || b.x1 > b.x2 || b.y1 > b.y2) {
                    return Err(SchemaError::Invalid {
                        kind,
                        field: format!("outputs[{i}].boxes[{j}]"),
                        reason: "must satisfy 0 <= x1 <= x2 <= 1000 and 0 <= y1 <= y2 <= 1000".to_owned(),
                    });
                }
            }
        }
        Ok(())
    }
}
