//! Decoding and encoding of versioned JSON messages. All the ways a payload can be wrong are
//! caught here, with the field named, so stages can dead-letter a message with a useful reason.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The message schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// A message type that travels between stages.
pub trait Message: Serialize + DeserializeOwned {
    /// Short name used in errors and logs, e.g. `scene_request`.
    const KIND: &'static str;

    /// Checks constraints that serde cannot express (ranges, non-empty lists, id syntax).
    ///
    /// # Errors
    /// [`SchemaError::Invalid`] naming the field and why it is wrong.
    fn validate(&self) -> Result<(), SchemaError> {
        Ok(())
    }
}

/// Limits applied before a payload is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Payloads larger than this are refused unparsed.
    pub max_payload_bytes: usize,
}

impl Default for DecodeLimits {
    /// 1 MiB: Kafka's default maximum message size; pixels never travel in messages.
    fn default() -> Self {
        Self { max_payload_bytes: 1 << 20 }
    }
}

/// Why a payload is not a valid message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The payload exceeds [`DecodeLimits::max_payload_bytes`].
    #[error("{kind} payload is {size_bytes} bytes, larger than the limit of {limit_bytes} bytes")]
    TooLarge {
        /// Message kind.
        kind: &'static str,
        /// Size of the payload.
        size_bytes: usize,
        /// The limit in force.
        limit_bytes: usize,
    },
    /// The payload is not a JSON object.
    #[error("{kind} payload is not a JSON object: {source}")]
    NotJson {
        /// Message kind.
        kind: &'static str,
        /// The parser's complaint, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The payload has no usable `schema_version`.
    #[error("{kind} field `schema_version`: {reason}")]
    MissingVersion {
        /// Message kind.
        kind: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The payload was written by a schema version this build does not read.
    #[error("{kind} field `schema_version`: version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// Message kind.
        kind: &'static str,
        /// Version found in the payload.
        found: u64,
        /// Version this build reads.
        supported: u32,
    },
    /// A field is missing or has the wrong type or value.
    #[error("{kind} field `{field}`: {reason}")]
    Invalid {
        /// Message kind.
        kind: &'static str,
        /// Dotted path of the field, e.g. `tiling.tile_size_px` or `tasks[0].classes`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl SchemaError {
    /// The dotted path of the field at fault, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::MissingVersion { .. } | Self::UnsupportedVersion { .. } => Some("schema_version"),
            Self::Invalid { field, .. } => Some(field),
            Self::TooLarge { .. } | Self::NotJson { .. } => None,
        }
    }
}

#[derive(Deserialize)]
struct VersionProbe {
    schema_version: Option<serde_json::Value>,
}

/// Decodes and validates one message.
///
/// # Errors
/// Every way the payload can be wrong, as a [`SchemaError`] naming the field at fault.
pub fn decode<M: Message>(payload: &[u8], limits: &DecodeLimits) -> Result<M, SchemaError> {
    let kind = M::KIND;
    if payload.len() > limits.max_payload_bytes {
        return Err(SchemaError::TooLarge { kind, size_bytes: payload.len(), limit_bytes: limits.max_payload_bytes });
    }
    // The version is checked before the body so that a message from a newer producer is
    // reported as such rather than as whichever of its new fields trips the parser first.
    let probe: VersionProbe = serde_json::from_slice(payload).map_err(|source| SchemaError::NotJson { kind, source })?;
    match probe.schema_version {
        None => return Err(SchemaError::MissingVersion { kind, reason: "missing field".to_owned() }),
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(found) if found == u64::from(SCHEMA_VERSION) => {}
            Some(found) => return Err(SchemaError::UnsupportedVersion { kind, found, supported: SCHEMA_VERSION }),
            None => return Err(SchemaError::MissingVersion { kind, reason: format!("expected a positive integer, found {n}") }),
        },
        Some(other) => return Err(SchemaError::MissingVersion { kind, reason: format!("expected a positive integer, found {other}") }),
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    let message: M = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let reason = strip_position(&inner.to_string());
        SchemaError::Invalid { kind, field: field_of(&path, &reason), reason }
    })?;
    message.validate()?;
    Ok(message)
}

/// Encodes a message as JSON.
///
/// # Panics
/// Never in practice: every message type serialises to JSON infallibly (no maps with
/// non-string keys, no failing `Serialize` impls).
pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    #[allow(clippy::expect_used)]
    serde_json::to_vec(message).expect("message types serialise infallibly")
}

/// serde reports a missing field at the path of the struct that lacks it; users want the
/// field itself, so `missing field `x`` at `tiling` becomes `tiling.x`.
fn field_of(path: &str, reason: &str) -> String {
    let missing = reason.strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
    match (path, missing) {
        (".", Some(name)) => name.to_owned(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        (".", None) => "(message)".to_owned(),
        (path, None) => path.to_owned(),
    }
}

/// Line/column positions mean little in one-line Kafka payloads; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}
