//! Parquet encoding with GeoParquet 1.1 `geo` metadata: WKB geometry columns in lon/lat. The
//! CRS is left out of the metadata on purpose: GeoParquet defines a missing CRS as OGC:CRS84
//! (WGS 84, longitude first), which is exactly what the columns hold.

use polars::prelude::{DataFrame, KeyValueMetadata, ParquetCompression, ParquetWriter};
use schemas::tables::{ColumnType, TableSchema};

use crate::OperatorError;

/// The `geo` metadata document for a table.
fn geo_metadata(table: &TableSchema, frame: &DataFrame) -> Option<String> {
    let primary = table.geometry_column?;
    let mut columns = serde_json::Map::new();
    for column in table.columns.iter().filter(|c| c.ty == ColumnType::GeometryWkb) {
        let mut meta = serde_json::json!({ "encoding": "WKB", "geometry_types": ["Polygon"] });
        if let Some(bbox) = bbox_of(frame, column.name) {
            meta["bbox"] = serde_json::json!(bbox);
        }
        columns.insert(column.name.to_owned(), meta);
    }
    Some(serde_json::json!({ "version": "1.1.0", "primary_column": primary, "columns": columns }).to_string())
}

/// The bounding box of a WKB polygon column, from its coordinates.
fn bbox_of(frame: &DataFrame, column: &str) -> Option<[f64; 4]> {
    let values = frame.column(column).ok()?.binary().ok()?.clone();
    let mut bbox = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
    for wkb in values.iter().flatten() {
        for [x, y] in super::frames::polygon_points(wkb) {
            bbox = [bbox[0].min(x), bbox[1].min(y), bbox[2].max(x), bbox[3].max(y)];
        }
    }
    bbox[0].is_finite().then_some(bbox)
}

/// Encodes a frame as one Parquet file, checking its columns against the table schema.
pub fn encode(table: &TableSchema, frame: &mut DataFrame) -> Result<Vec<u8>, OperatorError> {
    let names: Vec<&str> = frame.get_column_names().into_iter().map(|n| n.as_str()).collect();
    let expected: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
    if names != expected {
        return Err(OperatorError::Internal {
            reason: format!("frame for `{}` has columns {names:?}, schema says {expected:?}", table.name),
        });
    }
    let mut bytes = Vec::new();
    let metadata = geo_metadata(table, frame).map(|geo| KeyValueMetadata::from_static(vec![("geo".to_owned(), geo)]));
    ParquetWriter::new(&mut bytes)
        .with_compression(ParquetCompression::Zstd(None))
        .with_key_value_metadata(metadata)
        .finish(frame)
        .map_err(|source| OperatorError::Table { table: table.name.to_owned(), action: "encoding Parquet".to_owned(), source })?;
    Ok(bytes)
}
