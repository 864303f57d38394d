//! The stages: tile (GDAL), infer (retrieve + LVLM), merge (georeference, cross-tile NMS,
//! scene summary) and sink (two-phase tables). Each implements [`crate::stage::Stage`]; the
//! messages between them are [`schemas::TileMessage`], [`schemas::ResultMessage`] and
//! [`schemas::SinkMessage`].

pub mod infer;
pub mod merge;
pub mod sink;
pub mod tile;

use schemas::{ResultMessage, SceneRequest, SinkMessage, TileMessage};

use crate::stage::{Payload, PayloadIds};

fn ids(request: &str, scene: &str, tile: Option<&str>) -> PayloadIds {
    PayloadIds { request_id: Some(request.to_owned()), scene_id: Some(scene.to_owned()), tile_id: tile.map(str::to_owned) }
}

fn record_ids(record: &schemas::DeadLetterRecord) -> PayloadIds {
    PayloadIds { request_id: record.request_id.clone(), scene_id: record.scene_id.clone(), tile_id: record.tile_id.clone() }
}

impl Payload for SceneRequest {
    fn ids(&self) -> PayloadIds {
        ids(&self.request_id, &self.scene_id, None)
    }

    fn encode(&self) -> Vec<u8> {
        schemas::encode(self)
    }
}

impl Payload for TileMessage {
    fn ids(&self) -> PayloadIds {
        match self {
            Self::Tile(tile) => ids(&tile.task.request_id, &tile.task.scene_id, Some(&tile.task.tile_id)),
            Self::SceneTiled(marker) => ids(&marker.request_id, &marker.scene_id, None),
            Self::Failed(record) => record_ids(record),
        }
    }

    fn encode(&self) -> Vec<u8> {
        schemas::encode(self)
    }
}

impl Payload for ResultMessage {
    fn ids(&self) -> PayloadIds {
        match self {
            Self::Result(result) => ids(result.request_id(), result.scene_id(), Some(result.tile_id())),
            Self::SceneTiled(marker) => ids(&marker.request_id, &marker.scene_id, None),
            Self::Failed(record) => record_ids(record),
        }
    }

    fn encode(&self) -> Vec<u8> {
        schemas::encode(self)
    }
}

impl Payload for SinkMessage {
    fn ids(&self) -> PayloadIds {
        match self {
            Self::Scene(scene) => ids(&scene.scene.request_id, &scene.scene.scene_id, None),
            Self::Failed(record) => record_ids(record),
        }
    }

    fn encode(&self) -> Vec<u8> {
        schemas::encode(self)
    }
}
