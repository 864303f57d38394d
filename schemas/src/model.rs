//! Model announcements on the compacted `models` topic: a new artifact is published, or a
//! registry's serving version changed, so workers can switch without downtime.

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
        check_sha256(Self::KIND, &self.manifest_sha256)
    }
}

/// The serving version of a model registry changed (`strata model promote` / `rollback`):
/// keyed by the registry's URL on the compacted `models` topic, so the topic keeps the latest
/// pointer per registry. Infer workers following that registry read its `serving.json` again
/// (the source of truth) and switch after verifying the artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelServing {
    /// Message schema version.
    pub schema_version: u32,
    /// The registry's URL.
    pub registry_uri: String,
    /// The version that serves now.
    pub model_version: String,
    /// sha256 (lowercase hex) of that version's `manifest.json`, as published.
    pub manifest_sha256: String,
    /// When the pointer changed.
    pub changed_at: DateTime<Utc>,
}

impl Message for ModelServing {
    const KIND: &'static str = "model_serving";

    fn validate(&self) -> Result<(), SchemaError> {
        check_id(Self::KIND, "model_version", &self.model_version)?;
        if self.registry_uri.trim().is_empty() {
            return Err(SchemaError::Invalid {
                kind: Self::KIND,
                field: "registry_uri".to_owned(),
                reason: "must not be empty".to_owned(),
            });
        }
        check_sha256(Self::KIND, &self.manifest_sha256)
    }
}

fn check_sha256(kind: &'static str, hash: &str) -> Result<(), SchemaError> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(SchemaError::Invalid {
            kind,
            field: "manifest_sha256".to_owned(),
            reason: "must be 64 lowercase hex digits".to_owned(),
        });
    }
    Ok(())
}
