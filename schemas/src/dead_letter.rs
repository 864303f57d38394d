//! Dead-letter records: a message that a stage could not process, why, and the message itself,
//! so nothing is lost and an operator can replay it once the cause is fixed.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Message, SchemaError, SCHEMA_VERSION};

/// Bytes of an input's payload kept in its ingest dead-letter record. An oversized payload
/// cannot travel on whole (the broker would refuse it again on the way to the dead letters),
/// so its first bytes and its digest are kept instead.
pub const MAX_KEPT_PAYLOAD_BYTES: usize = 64 * 1024;

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

impl DeadLetterRecord {
    /// The record of an input that never became a stage's payload: bytes that do not decode
    /// as a message (the Kafka runtime), or a scene a batch names that cannot be found. The
    /// one constructor of [`Stage::Ingest`] records, for both runtimes.
    ///
    /// `message` says what is wrong and where (`source`, when the input came from a log). A
    /// payload over [`MAX_KEPT_PAYLOAD_BYTES`] keeps its first bytes, and the message gains its
    /// length and SHA-256. Ids are recovered from the payload when it is JSON readable enough
    /// to name them (at the top level or under `task`), so the record can be found.
    pub fn ingest(error_kind: ErrorKind, message: &str, payload: &[u8], source: Option<SourcePosition>) -> Self {
        use sha2::Digest as _;
        let (kept, cut) = if payload.len() > MAX_KEPT_PAYLOAD_BYTES {
            let digest: String = sha2::Sha256::digest(payload).iter().map(|b| format!("{b:02x}")).collect();
            (
                &payload[..MAX_KEPT_PAYLOAD_BYTES],
                format!("; original payload cut to its first {MAX_KEPT_PAYLOAD_BYTES} of {} bytes, sha256 {digest}", payload.len()),
            )
        } else {
            (payload, String::new())
        };
        let ids: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
        let id = |name: &str| {
            let named =
                |value: Option<&serde_json::Value>| value.and_then(|v| v.get(name)).and_then(serde_json::Value::as_str).map(str::to_owned);
            named(Some(&ids)).or_else(|| named(ids.get("task")))
        };
        Self {
            schema_version: SCHEMA_VERSION,
            stage: Stage::Ingest,
            error_kind,
            message: format!("{message}{cut}"),
            request_id: id("request_id"),
            scene_id: id("scene_id"),
            tile_id: id("tile_id"),
            source,
            original_payload: OriginalPayload::from_bytes(kept),
            failed_at: Utc::now(),
        }
    }
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

#[cfg(test)]
mod ingest_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(offset: i64) -> Option<SourcePosition> {
        Some(SourcePosition { topic: "scenes".to_owned(), partition: 2, offset })
    }

    #[test]
    fn an_oversized_payload_keeps_its_first_bytes_and_digest_so_its_dead_letter_can_travel() {
        let payload = vec![b'x'; 3 << 20];
        let record = DeadLetterRecord::ingest(ErrorKind::Permanent, "tile input at scenes/2@7: not JSON", &payload, at(7));
        let kept = record.original_payload.to_bytes().unwrap();
        assert_eq!(kept.len(), MAX_KEPT_PAYLOAD_BYTES);
        assert!(record.message.starts_with("tile input at scenes/2@7: not JSON"), "{}", record.message);
        assert!(record.message.contains(&format!("of {} bytes, sha256 ", payload.len())), "{}", record.message);
        // The record as it travels stays well under a broker's default limit.
        assert!(crate::encode(&record).len() < 1 << 20);
    }

    #[test]
    fn an_input_keeps_whatever_ids_it_names_and_its_bytes() {
        let payload = br#"{"schema_version": 99, "request_id": "r1", "scene_id": "s1"}"#;
        let record = DeadLetterRecord::ingest(ErrorKind::Permanent, "bad version", payload, at(0));
        assert_eq!((record.request_id.as_deref(), record.scene_id.as_deref(), record.tile_id.as_deref()), (Some("r1"), Some("s1"), None));
        assert_eq!(record.original_payload.to_bytes().unwrap(), payload.to_vec());
        assert_eq!((record.stage, record.error_kind), (Stage::Ingest, ErrorKind::Permanent));
        // A tile message names its ids under `task`; bytes that are no JSON name none.
        let tile = br#"{"kind": "tile", "task": {"request_id": "r2", "scene_id": "s2", "tile_id": "t2"}}"#;
        let record = DeadLetterRecord::ingest(ErrorKind::Permanent, "bad tile", tile, None);
        assert_eq!(record.tile_id.as_deref(), Some("t2"));
        let record = DeadLetterRecord::ingest(ErrorKind::RetriesExhausted, "store down", &[0xff, 0xfe], None);
        assert_eq!((&record.request_id, &record.original_payload), (&None, &OriginalPayload::Base64("//4=".to_owned())));
        record.validate().unwrap();
    }
}
