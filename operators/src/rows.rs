//! The rows a completed scene puts in each result table, as frames ready to encode. Column
//! order and types are checked against [`schemas::tables`] by [`tables::frame`].

use chrono::{DateTime, NaiveDate, Utc};
use schemas::{
    tables::{self, TableSchema},
    SceneResults, SceneTiled, TaskAnswer, TaskOutput, TileMessage, TileTask,
};

use crate::{
    georef::{LonLatGeometry, TileGeoref},
    OperatorError,
};
use ::tables::{frame, Cell, DataFrame};

/// The partition date of a scene's rows: the day its request was made.
pub fn scene_date(scene: &SceneResults) -> NaiveDate {
    scene.scene.submitted_at.date_naive()
}

fn provenance(tile: &TileTask, task: &str, model_version: &str) -> Vec<Cell> {
    vec![tile.request_id.as_str().into(), tile.scene_id.as_str().into(), tile.tile_id.as_str().into(), task.into(), model_version.into()]
}

fn tail(answer: Option<&TaskAnswer>, produced_at: DateTime<Utc>, date: NaiveDate) -> Vec<Cell> {
    let ids = answer.map(|a| a.retrieved.iter().map(|r| r.id.clone()).collect()).unwrap_or_default();
    vec![Cell::List(ids), answer.map_or(0, |a| a.descriptions_used).into(), Cell::Time(produced_at), Cell::Date(date)]
}

/// The tiles of a scene: every tile answered, and every tile whose inference failed (read back
/// from its dead-letter payload), in tile order.
fn tile_rows(scene: &SceneResults, date: NaiveDate) -> Result<Vec<Vec<Cell>>, OperatorError> {
    let mut tiles: Vec<(TileTask, f32, DateTime<Utc>)> =
        scene.results.iter().map(|r| (r.tile.clone(), r.valid_fraction, r.tile.created_at)).collect();
    for record in &scene.failed {
        let Ok(bytes) = record.original_payload.to_bytes() else { continue };
        if let Ok(TileMessage::Tile(tile)) = schemas::decode::<TileMessage>(&bytes, &schemas::DecodeLimits::default()) {
            let created = tile.task.created_at;
            tiles.push((tile.task, tile.valid_fraction, created));
        }
    }
    tiles.sort_by(|a, b| a.0.tile_id.cmp(&b.0.tile_id));
    let mut rows = Vec::with_capacity(tiles.len());
    for (t, valid_fraction, created_at) in tiles {
        rows.push(vec![
            t.request_id.as_str().into(),
            t.scene_id.as_str().into(),
            t.tile_id.as_str().into(),
            t.tile.uri.as_str().into(),
            t.window.col_off.into(),
            t.window.row_off.into(),
            t.window.width.into(),
            t.window.height.into(),
            t.tile.width_px.into(),
            t.crs.wkt.as_str().into(),
            t.crs.epsg.into(),
            serde_json::to_string(&t.geotransform.0).map_err(|e| OperatorError::Internal { reason: e.to_string() })?.into(),
            Cell::Geometry(tile_geometry(&t)),
            valid_fraction.into(),
            Cell::Time(created_at),
            Cell::Date(date),
        ]);
    }
    Ok(rows)
}

/// A tile's footprint as stored: traced along its densified edges, counter-clockwise and cut
/// at the antimeridian ([`TileGeoref::footprint`]), the one rule every polygon follows. A
/// task that cannot be georeferenced (it was validated when it was cut, so only a task from an
/// older or foreign writer) keeps its corner ring, oriented counter-clockwise, with a warning.
fn tile_geometry(task: &TileTask) -> Vec<u8> {
    match TileGeoref::new(task).and_then(|georef| georef.footprint()) {
        Ok(geometry) => geometry.to_wkb(),
        Err(error) => {
            tracing::warn!(scene_id = %task.scene_id, tile_id = %task.tile_id, %error, "Tile footprint stored as its corner ring.");
            LonLatGeometry::Polygon(counter_clockwise(&task.footprint_lonlat)).to_wkb()
        }
    }
}

/// A scene's footprint as stored: the parts the tiler traced, or for markers from before
/// they existed the corner ring, oriented counter-clockwise.
fn scene_geometry(scene: &SceneTiled) -> Vec<u8> {
    match scene.footprint_parts.as_slice() {
        [] => LonLatGeometry::Polygon(counter_clockwise(&scene.footprint_lonlat)).to_wkb(),
        [one] => LonLatGeometry::Polygon(one.clone()).to_wkb(),
        parts => LonLatGeometry::MultiPolygon(parts.to_vec()).to_wkb(),
    }
}

/// `ring` (closed) wound counter-clockwise (RFC 7946 §3.1.6).
fn counter_clockwise(ring: &[[f64; 2]]) -> Vec<[f64; 2]> {
    let twice_area: f64 = ring.windows(2).map(|w| w[0][0] * w[1][1] - w[1][0] * w[0][1]).sum();
    let mut ring = ring.to_vec();
    if twice_area < 0.0 {
        ring.reverse();
    }
    ring
}

/// Frames of every scene table for one completed scene, in [`tables::SCENE_TABLES`] order;
/// tables without rows for the scene are left out.
///
/// # Errors
/// Only on an internal schema mismatch or a footprint that cannot be encoded.
pub fn scene_frames(scene: &SceneResults) -> Result<Vec<(&'static TableSchema, DataFrame)>, OperatorError> {
    let date = scene_date(scene);
    let mut captions = Vec::new();
    let mut classifications = Vec::new();
    let mut vqa = Vec::new();
    for result in &scene.results {
        for answer in &result.outputs {
            let kind = answer.output.kind().as_str();
            let mut row = provenance(&result.tile, kind, &result.model_version);
            match &answer.output {
                TaskOutput::Caption { text, score } => {
                    row.extend([text.as_str().into(), (*score).into()]);
                    row.extend(tail(Some(answer), result.produced_at, date));
                    captions.push(row);
                }
                TaskOutput::Classify { label, raw_answer, score } => {
                    let candidates = result
                        .tile
                        .tasks
                        .iter()
                        .find_map(|t| match t {
                            schemas::TaskSpec::Classify { classes, .. } => Some(classes.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    row.extend([label.clone().into(), raw_answer.as_str().into(), Cell::List(candidates), (*score).into()]);
                    row.extend(tail(Some(answer), result.produced_at, date));
                    classifications.push(row);
                }
                TaskOutput::Vqa { question, answer: text, score } => {
                    row.extend([question.as_str().into(), text.as_str().into(), (*score).into()]);
                    row.extend(tail(Some(answer), result.produced_at, date));
                    vqa.push(row);
                }
                TaskOutput::Detect { .. } => {}
            }
        }
    }
    let mut detections = Vec::new();
    for d in &scene.detections {
        let Some(result) = scene.results.iter().find(|r| r.tile_id() == d.tile_id) else { continue };
        let answer = result.outputs.iter().find(|a| matches!(&a.output, TaskOutput::Detect { target, .. } if *target == d.target));
        let geometry = match d.lonlat_parts.as_slice() {
            [one] => LonLatGeometry::Polygon(one.clone()),
            parts => LonLatGeometry::MultiPolygon(parts.to_vec()),
        };
        let mut row = provenance(&result.tile, "detect", &result.model_version);
        row.extend([
            d.target.as_str().into(),
            d.box_index.into(),
            d.label.as_str().into(),
            Cell::F64(d.tile_box[0]),
            Cell::F64(d.tile_box[1]),
            Cell::F64(d.tile_box[2]),
            Cell::F64(d.tile_box[3]),
            Cell::F64(d.scene_box[0]),
            Cell::F64(d.scene_box[1]),
            Cell::F64(d.scene_box[2]),
            Cell::F64(d.scene_box[3]),
            Cell::Geometry(geometry.to_wkb()),
            d.score.into(),
            Cell::List(d.tiles.clone()),
        ]);
        row.extend(tail(answer, scene.merged_at, date));
        detections.push(row);
    }
    let s = &scene.scene;
    let stats = &scene.stats;
    let scene_row = vec![
        s.request_id.as_str().into(),
        s.scene_id.as_str().into(),
        s.source_uri.as_str().into(),
        s.width.into(),
        s.height.into(),
        s.band_count.into(),
        s.dtype.as_str().into(),
        s.crs_epsg.into(),
        s.tiles_written.into(),
        s.tiles_skipped_nodata.into(),
        (scene.failed.len() as u64).into(),
        stats.model_version.clone().into(),
        counts_json(&stats.tiles_per_task).into(),
        stats.majority_class.clone().into(),
        counts_json(&stats.class_histogram).into(),
        counts_json(&stats.detections_per_label).into(),
        Cell::F64(s.tile_ms),
        Cell::F64(stats.infer_ms),
        Cell::F64(stats.retrieve_ms),
        Cell::F64(stats.merge_ms),
        Cell::Geometry(scene_geometry(s)),
        Cell::Time(scene.merged_at),
        Cell::Date(date),
    ];
    let mut frames = Vec::new();
    let mut add = |table: &'static TableSchema, rows: Vec<Vec<Cell>>| -> Result<(), OperatorError> {
        if !rows.is_empty() {
            frames.push((table, frame(table, &rows)?));
        }
        Ok(())
    };
    add(&tables::TILES, tile_rows(scene, date)?)?;
    add(&tables::CAPTIONS, captions)?;
    add(&tables::CLASSIFICATIONS, classifications)?;
    add(&tables::VQA, vqa)?;
    add(&tables::DETECTIONS, detections)?;
    add(&tables::SCENES, vec![scene_row])?;
    Ok(frames)
}

/// A count map as a JSON object (a `BTreeMap<String, u64>` always serialises).
fn counts_json(map: &std::collections::BTreeMap<String, u64>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_owned())
}
