//! Dead-letter records: a message that a stage could not process, why, and the message itself,
//! so nothing is lost and an operator can replay it once the cause is fixed.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Message, SchemaError};

/// A record of a permanent failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterRecord {
    /// Message schema version.
    pub schema_version: u32,
    /// The stage that gave up.
    pub stage: Stage,
    /// Whether retrying could ever help.
    pub error_kind: ErrorKind,
    /// The full error, cause chain included.
    pub message: String,
    /// Request id, when the payload could be read far enough to know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Scene id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scene_id: Option<String>,
    /// Tile id, when the failure concerns one tile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile_id: Option<String>,
    /// Where the payload was read from, in the Kafka runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourcePosition>,
    /// The payload as received.
    pub original_payload: OriginalPayload,
    /// When the stage gave up.
    pub failed_at: DateTime<Utc>,
}

/// Pipeline stages, as named in dead-letter records and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading and validating an incoming message.
    Ingest,
    /// Cutting a scene into tiles.
    Tile,
    /// Retrieval and the model.
    Infer,
    /// Cross-tile merge and the scene summary.
    Merge,
    /// Writing result tables.
    Sink,
}

impl Stage {
    /// The stage's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Tile => "tile",
            Self::Infer => "infer",
            Self::Merge => "merge",
            Self::Sink => "sink",
        }
    }
}

/// Why a record was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The input itself is bad (corrupt raster, unknown CRS, malformed message).
    Permanent,
    /// A transient failure persisted past the retry budget.
    RetriesExhausted,
    /// A failure inside Strata or its model (a libtorch error, out of memory, a bug): the
    /// input may be fine; replay it once the cause is fixed.
    Internal,
}

impl ErrorKind {
    /// The name used in tables and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::RetriesExhausted => "retries_exhausted",
            Self::Internal => "internal",
        }
    }
}

/// Where a message was consumed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePosition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

/// The original payload, kept losslessly: as text when it is UTF-8, base64 otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "encoding", content = "data", rename_all = "snake_case")]
pub enum OriginalPayload {
    /// UTF-8 text.
    Utf8(String),
    /// Standard base64 of arbitrary bytes.
    Base64(String),
}

impl OriginalPayload {
    /// Wraps raw bytes, choosing the encoding.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::Utf8(text.to_owned()),
            Err(_) => Self::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    }

    /// The original bytes.
    ///
    /// # Errors
    /// When a base64 payload is not valid base64 (a hand-edited record).
    pub fn to_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match self {
            Self::Utf8(text) => Ok(text.as_bytes().to_vec()),
            Self::Base64(data) => base64::engine::general_purpose::STANDARD.decode(data),
        }
    }
}

impl Message for DeadLetterRecord {
    const KIND: &'static str = "dead_letter";

    fn validate(&self) -> Result<(), SchemaError> {
        if self.message.trim().is_empty() {
            return Err(SchemaError::Invalid {
                kind: Self::KIND,
                field: "message".to_owned(),
                reason: "must say what went wrong".to_owned(),
            });
        }
        Ok(())
    }
}
