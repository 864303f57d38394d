//! Parquet encoding with GeoParquet 1.1 `geo` metadata: WKB geometry columns in lon/lat. The
//! CRS is left out of the metadata on purpose: GeoParquet defines a missing CRS as OGC:CRS84
//! (WGS 84, longitude first), which is exactly what the columns hold.

use polars::prelude::{DataFrame, KeyValueMetadata, ParquetCompression, ParquetWriter};
use schemas::tables::{ColumnType, TableSchema};

use crate::{GeometryReader, TableError};

/// The `geo` metadata document for a table.
fn geo_metadata(table: &TableSchema, frame: &DataFrame, geometry: &dyn GeometryReader) -> Option<String> {
    let primary = table.geometry_column?;
    let mut columns = serde_json::Map::new();
    for column in table.columns.iter().filter(|c| c.ty == ColumnType::GeometryWkb) {
        let (types, bbox) = column_summary(frame, column.name, geometry);
        // Every polygon Strata writes is wound counter-clockwise (georef), so readers may rely
        // on it (GeoParquet 1.1 `orientation`).
        let mut meta = serde_json::json!({ "encoding": "WKB", "geometry_types": types, "orientation": "counterclockwise" });
        if let Some(bbox) = bbox {
            meta["bbox"] = serde_json::json!(bbox);
        }
        columns.insert(column.name.to_owned(), meta);
    }
    Some(serde_json::json!({ "version": "1.1.0", "primary_column": primary, "columns": columns }).to_string())
}

/// The geometry types a WKB column holds (sorted, as GeoParquet lists them; `Polygon` for an
/// empty column, which is what the tables hold) and its bounding box.
fn column_summary(frame: &DataFrame, column: &str, geometry: &dyn GeometryReader) -> (Vec<&'static str>, Option<[f64; 4]>) {
    let mut types = std::collections::BTreeSet::new();
    let mut rings = Vec::new();
    if let Some(values) = frame.column(column).ok().and_then(|c| c.binary().ok().cloned()) {
        for wkb in values.iter().flatten() {
            let (kind, parts) = geometry.exterior_rings(wkb);
            types.extend(kind);
            rings.extend(parts);
        }
    }
    if types.is_empty() {
        types.insert("Polygon");
    }
    (types.into_iter().collect(), bbox(&rings))
}

/// The bounding box `[xmin, ymin, xmax, ymax]` of lon/lat rings, as GeoParquet 1.1 and
/// RFC 7946 §5.2 define it on the sphere. Each ring (each part of a footprint cut at the
/// antimeridian) covers its own span of longitude; when the widest stretch of longitude that
/// no ring covers lies between them rather than across ±180°, the box is the rest of the
/// circle: it crosses the antimeridian and `xmin > xmax`, as GDAL's `OCTTransformBounds`
/// gives. A ring touching ±180° from one side only keeps an ordinary box.
pub(crate) fn bbox(rings: &[Vec<[f64; 2]>]) -> Option<[f64; 4]> {
    let (mut south, mut north) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut spans: Vec<(f64, f64)> = Vec::with_capacity(rings.len());
    for ring in rings.iter().filter(|r| !r.is_empty()) {
        let (mut west, mut east) = (f64::INFINITY, f64::NEG_INFINITY);
        for &[lon, lat] in ring {
            (west, east) = (west.min(lon), east.max(lon));
            (south, north) = (south.min(lat), north.max(lat));
        }
        spans.push((west, east));
    }
    if spans.is_empty() || !south.is_finite() {
        return None;
    }
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Merge overlapping spans, then find the widest uncovered gap between neighbours.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(spans.len());
    for (west, east) in spans {
        match merged.last_mut() {
            Some(last) if west <= last.1 => last.1 = last.1.max(east),
            _ => merged.push((west, east)),
        }
    }
    let (west, east) = (merged[0].0, merged[merged.len() - 1].1);
    let across = 360.0 - (east - west); // the gap that wraps round ±180°
    let widest = merged.windows(2).map(|w| (w[1].0 - w[0].1, w[1].0, w[0].1)).max_by(|a, b| a.0.total_cmp(&b.0));
    match widest {
        Some((gap, xmin, xmax)) if gap > across => Some([xmin, south, xmax, north]),
        _ => Some([west, south, east, north]),
    }
}

/// Encodes a frame as one Parquet file, checking its columns against the table schema.
pub fn encode(table: &TableSchema, frame: &mut DataFrame, geometry: &dyn GeometryReader) -> Result<Vec<u8>, TableError> {
    let names: Vec<&str> = frame.get_column_names().into_iter().map(|n| n.as_str()).collect();
    let expected: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
    if names != expected {
        return Err(TableError::Internal { reason: format!("frame for `{}` has columns {names:?}, schema says {expected:?}", table.name) });
    }
    let mut bytes = Vec::new();
    let metadata = geo_metadata(table, frame, geometry).map(|geo| KeyValueMetadata::from_static(vec![("geo".to_owned(), geo)]));
    ParquetWriter::new(&mut bytes)
        .with_compression(ParquetCompression::Zstd(None))
        .with_key_value_metadata(metadata)
        .finish(frame)
        .map_err(|source| TableError::Frame { table: table.name.to_owned(), action: "encoding Parquet".to_owned(), source })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::bbox;

    #[test]
    fn a_box_across_the_antimeridian_has_xmin_above_xmax() {
        // The two halves of a footprint cut at 180°.
        let east = vec![[179.0, 64.0], [180.0, 64.0], [180.0, 65.0], [179.0, 65.0], [179.0, 64.0]];
        let west = vec![[-180.0, 64.0], [-178.5, 64.0], [-178.5, 65.0], [-180.0, 65.0], [-180.0, 64.0]];
        assert_eq!(bbox(&[east.clone(), west]), Some([179.0, 64.0, -178.5, 65.0]));
        // Touching 180° from one side only is an ordinary box.
        assert_eq!(bbox(&[east]), Some([179.0, 64.0, 180.0, 65.0]));
    }

    #[test]
    fn geo_metadata_declares_counter_clockwise_rings() {
        struct NoRows;
        impl crate::GeometryReader for NoRows {
            fn wkt(&self, _: &[u8]) -> Result<String, String> {
                unreachable!("no rows to read")
            }
            fn geojson(&self, _: &[u8]) -> Option<serde_json::Value> {
                unreachable!("no rows to read")
            }
            fn exterior_rings(&self, _: &[u8]) -> (Option<&'static str>, Vec<Vec<[f64; 2]>>) {
                unreachable!("no rows to read")
            }
        }
        let frame = crate::frame(&schemas::tables::SCENES, &[]).unwrap();
        let geo: serde_json::Value =
            serde_json::from_str(&super::geo_metadata(&schemas::tables::SCENES, &frame, &NoRows).unwrap()).unwrap();
        let column = &geo["columns"]["geometry"];
        assert_eq!(column["orientation"], "counterclockwise");
        assert_eq!(column["geometry_types"], serde_json::json!(["Polygon"]));
        assert!(column.get("bbox").is_none(), "no rows, no bbox");
    }

    #[test]
    fn ordinary_and_polar_boxes_are_plain() {
        let ring = vec![[10.0, 1.0], [12.0, 1.0], [12.0, 2.0], [10.0, 1.0]];
        assert_eq!(bbox(&[ring]), Some([10.0, 1.0, 12.0, 2.0]));
        // Wide footprints on both sides of 0° are not mistaken for crossings of 180°.
        let wide = vec![[-170.0, 0.0], [170.0, 0.0], [170.0, 1.0], [-170.0, 0.0]];
        assert_eq!(bbox(&[wide]), Some([-170.0, 0.0, 170.0, 1.0]));
        let cap = vec![[-180.0, -80.0], [0.0, -81.0], [180.0, -80.0], [180.0, -90.0], [-180.0, -90.0], [-180.0, -80.0]];
        assert_eq!(bbox(&[cap]), Some([-180.0, -90.0, 180.0, -80.0]));
        assert_eq!(bbox(&[]), None);
    }
}
