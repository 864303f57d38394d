//! Model announcements: published on the compacted `models` topic when a new artifact is
//! ready, so workers can switch to it without downtime.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{check_id, Message, SchemaError};

/// A model artifact was published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPublished {
    /// Message schema version.
    pub schema_version: u32,
    /// Version of the new artifact.
    pub model_version: String,
    /// Version it was trained from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_version: Option<String>,
    /// Where the artifact directory lives.
    pub artifact_uri: String,
    /// sha256 (lowercase hex) of the artifact's `manifest.json`.
    pub manifest_sha256: String,
    /// Training run that produced it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_run: Option<String>,
    /// When it was published.
    pub published_at: DateTime<Utc>,
}

impl Message for ModelPublished {
    const KIND: &'static str = "model_published";

    fn validate(&self) -> Result<(), SchemaError> {
        check_id(Self::KIND, "model_version", &self.model_version)?;
        if let Some(parent) = &self.parent_version {
            check_id(Self::KIND, "parent_version", parent)?;
        }
        if self.artifact_uri.trim().is_empty() {
            return Err(SchemaError::Invalid {
                kind: Self::KIND,
                field: "artifact_uri".to_owned(),
                reason: "must not be empty".to_owned(),
            });
        }
        let hash = &self.manifest_sha256;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(SchemaError::Invalid {
                kind: Self::KIND,
                field: "manifest_sha256".to_owned(),
                reason: "must be 64 lowercase hex digits".to_owned(),
            });
        }
        Ok(())
    }
}
