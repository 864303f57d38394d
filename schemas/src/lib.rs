//! The contract between Strata's stages: every message that crosses a topic or a channel, and
//! every result table's columns, defined once.
//!
//! Messages are JSON with a `schema_version`. Decoding goes through [`decode`], which refuses
//! oversized payloads before parsing, refuses versions this build does not know, names the
//! offending field on every error, and runs each message's own validation, so a stage never
//! sees a message that is structurally wrong.
//!
//! ```
//! use schemas::{decode, DecodeLimits, SceneRequest};
//! let json = br#"{"schema_version": 1, "request_id": "r1", "scene_id": "s1",
//!                 "source": {"kind": "uri", "uri": "file:///data/scene.tif"}}"#;
//! let request: SceneRequest = decode(json, &DecodeLimits::default()).unwrap();
//! assert_eq!(request.tiling.tile_size_px, 512);
//! ```
//!
//! This crate does no I/O and depends on no other crate of ours.

mod dead_letter;
mod envelope;
mod model;
mod result;
mod scene;
pub mod stac;
mod stream;
pub mod tables;
mod tile;

pub use dead_letter::{DeadLetterRecord, ErrorKind, OriginalPayload, SourcePosition, Stage, MAX_KEPT_PAYLOAD_BYTES};
pub use envelope::{decode, encode, DecodeLimits, Message, SchemaError, SCHEMA_VERSION};
pub use model::{ModelPublished, ModelServing};
pub use result::{GridBox, RetrievedDescription, StageTimings, TaskAnswer, TaskOutput, TileResult};
pub use scene::{SceneRequest, SceneSource, Stretch, TaskKind, TaskSpec, TilingOptions};
pub use stream::{ResultMessage, SceneDetection, SceneResults, SceneStats, SceneTiled, SinkMessage, TileMessage, TiledTile};
pub use tile::{Crs, GeoTransform, ObjectRef, PixelWindow, RasterSize, TileTask};

/// Checks that an identifier is safe to use in object keys and file names: 1–200 characters
/// from `[A-Za-z0-9._-]`, not starting with a dot.
pub(crate) fn check_id(kind: &'static str, field: &str, value: &str) -> Result<(), SchemaError> {
    let reason = if value.is_empty() {
        Some("must not be empty".to_owned())
    } else if value.len() > 200 {
        Some(format!("is {} characters long, at most 200 are allowed", value.len()))
    } else if value.starts_with('.') {
        Some("must not start with `.`".to_owned())
    } else {
        value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|bad| format!("contains {bad:?}; only letters, digits, `.`, `_` and `-` are allowed"))
    };
    match reason {
        Some(reason) => Err(SchemaError::Invalid { kind, field: field.to_owned(), reason }),
        None => Ok(()),
    }
}
