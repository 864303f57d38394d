//! The tile stage: a scene request in; one tile message per tile as soon as it is written, then
//! the scene-tiled marker with the tile count.

use std::time::Instant;

use chrono::Utc;
use schemas::{SceneRequest, SceneTiled, Stage as StageName, TileMessage, TiledTile, SCHEMA_VERSION};
use storage::Location;

use crate::{
    stage::{Closed, Collector, Envelope, Stage, StageError, StageErrorKind},
    tile::{self, Progress, TilerConfig},
};

/// Cuts scenes into tiles under `tiles_root` (see [`tile::tile_scene`]).
pub struct TileStage {
    tiles_root: Location,
    config: TilerConfig,
    progress: Progress,
}

impl TileStage {
    /// A stage writing tiles below `tiles_root`, reporting windows to `progress`.
    pub fn new(tiles_root: Location, config: TilerConfig, progress: Progress) -> Self {
        Self { tiles_root, config, progress }
    }
}

impl Stage for TileStage {
    type In = SceneRequest;
    type Out = TileMessage;

    fn name(&self) -> StageName {
        StageName::Tile
    }

    async fn process(&mut self, input: Envelope<SceneRequest>, out: &mut Collector<TileMessage>) -> Result<(), StageError> {
        let started = Instant::now();
        let request = &input.payload;
        let (tx, mut rx) = tokio::sync::mpsc::channel(self.config.threads.max(1) * 2);
        let tiling = tile::tile_scene_streaming(request, &self.tiles_root, &self.config, self.progress.clone(), tx);
        // Each tile goes on as soon as it is stored, so inference starts on a scene's first
        // tiles while the rest are still being cut.
        let forward = async {
            let mut forwarded = 0_u64;
            while let Some(record) = rx.recv().await {
                let message = TileMessage::Tile(TiledTile {
                    schema_version: SCHEMA_VERSION,
                    task: record.task,
                    valid_fraction: record.valid_fraction,
                });
                out.collect(input.derive(message)).await?;
                forwarded += 1;
            }
            Ok::<_, Closed>(forwarded)
        };
        let (tiled, forwarded) = tokio::join!(tiling, forward);
        let closed = |e| StageError::new(StageName::Tile, StageErrorKind::Internal, e);
        // The collector failing (the next stage is gone) is the cause of a tiling stopped early.
        let tiles_written = forwarded.map_err(closed)?;
        let s = tiled.map_err(|e| StageError::from_operator(StageName::Tile, e))?;
        let marker = SceneTiled {
            schema_version: SCHEMA_VERSION,
            request_id: s.request_id,
            scene_id: s.scene_id,
            source_uri: s.source_uri,
            width: s.width,
            height: s.height,
            band_count: s.band_count,
            dtype: s.dtype,
            crs_epsg: s.crs_epsg,
            footprint_lonlat: s.footprint_lonlat,
            footprint_parts: s.footprint_parts,
            tiles_written,
            tiles_skipped_nodata: s.tiles_skipped_nodata,
            tasks: request.tasks.clone(),
            submitted_at: request.submitted_at.unwrap_or_else(Utc::now),
            tile_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        out.collect(input.derive(TileMessage::SceneTiled(marker))).await.map_err(closed)
    }
}
