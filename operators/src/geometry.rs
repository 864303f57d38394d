//! GDAL as the engine that reads the WKB geometries of the result tables: the WKT and GeoJSON
//! that `strata query` and `strata map` show, and the rings the GeoParquet metadata's types
//! and bounding boxes come from.

use gdal::vector::{Geometry, OGRwkbGeometryType};

/// Reads WKB with GDAL's OGR ([`tables::GeometryReader`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gdal;

impl tables::GeometryReader for Gdal {
    fn wkt(&self, wkb: &[u8]) -> Result<String, String> {
        Geometry::from_wkb(wkb).and_then(|g| g.wkt()).map_err(|e| e.to_string())
    }

    fn geojson(&self, wkb: &[u8]) -> Option<serde_json::Value> {
        let json = Geometry::from_wkb(wkb).ok()?.json().ok()?;
        serde_json::from_str(&json).ok()
    }

    fn exterior_rings(&self, wkb: &[u8]) -> (Option<&'static str>, Vec<Vec<[f64; 2]>>) {
        let Ok(geometry) = Geometry::from_wkb(wkb) else { return (None, Vec::new()) };
        let ring_points = |ring: &Geometry| -> Vec<[f64; 2]> {
            (0..ring.point_count())
                .map(|i| {
                    let (x, y, _) = ring.get_point(i32::try_from(i).unwrap_or(i32::MAX));
                    [x, y]
                })
                .collect()
        };
        let exterior = |polygon: &Geometry| (polygon.geometry_count() > 0).then(|| ring_points(&polygon.get_geometry(0)));
        match geometry.geometry_type() {
            OGRwkbGeometryType::wkbPolygon => (Some("Polygon"), exterior(&geometry).into_iter().collect()),
            OGRwkbGeometryType::wkbMultiPolygon => {
                (Some("MultiPolygon"), (0..geometry.geometry_count()).filter_map(|i| exterior(&geometry.get_geometry(i))).collect())
            }
            _ => (None, Vec::new()),
        }
    }
}
