//! Tile tasks: one georeferenced, model-ready tile and the tasks to run on it. Pixels stay in
//! the object store; the message carries a reference and the georeference.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{check_id, Message, SchemaError, TaskSpec};

/// A tile for the inference stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TileTask {
    /// Message schema version.
    pub schema_version: u32,
    /// Request this tile belongs to.
    pub request_id: String,
    /// Scene this tile was cut from.
    pub scene_id: String,
    /// Tile id, unique within the scene and stable across reruns (e.g. `r0003_c0007`).
    pub tile_id: String,
    /// The tile image in the object store.
    pub tile: ObjectRef,
    /// The source window in scene pixels.
    pub window: PixelWindow,
    /// Size of the whole scene, in pixels.
    pub scene_size: RasterSize,
    /// Maps the tile image's pixel corners to `crs` coordinates (GDAL order).
    pub geotransform: GeoTransform,
    /// The scene's coordinate reference system.
    pub crs: Crs,
    /// The window's four corners in lon/lat (EPSG:4326, x = longitude): upper left, lower
    /// left, lower right, upper right, then the first again. They key the tile to the globe
    /// (georeferencing recovers the tile's content size from them); the polygon the tables
    /// store is traced from them along the densified edges, counter-clockwise and cut at the
    /// antimeridian (`operators::georef::TileGeoref::footprint`).
    pub footprint_lonlat: Vec<[f64; 2]>,
    /// Tasks to run.
    pub tasks: Vec<TaskSpec>,
    /// When the tile was cut.
    pub created_at: DateTime<Utc>,
}

/// A reference to an object holding pixels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// Object URL, e.g. `s3://bucket/tiles/req/scene/r0000_c0000.png`.
    pub uri: String,
    /// Media type, e.g. `image/png`.
    pub media_type: String,
    /// Image width in pixels.
    pub width_px: u32,
    /// Image height in pixels.
    pub height_px: u32,
}

/// A rectangle of scene pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PixelWindow {
    /// Column of the left edge.
    pub col_off: u64,
    /// Row of the top edge.
    pub row_off: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Width and height of a raster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RasterSize {
    /// Width in pixels.
    pub width: u64,
    /// Height in pixels.
    pub height: u64,
}

/// An affine transform from pixel (column, row) to CRS (x, y), in GDAL's coefficient order:
/// `x = c0 + col·c1 + row·c2`, `y = c3 + col·c4 + row·c5`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GeoTransform(pub [f64; 6]);

impl GeoTransform {
    /// CRS coordinates of a pixel-space point (corners are at integer positions).
    pub fn apply(&self, col: f64, row: f64) -> (f64, f64) {
        let g = &self.0;
        (g[0] + col * g[1] + row * g[2], g[3] + col * g[4] + row * g[5])
    }

    /// Whether the transform can be inverted (pixels have non-zero area).
    pub fn is_invertible(&self) -> bool {
        let g = &self.0;
        let det = g[1] * g[5] - g[2] * g[4];
        det.is_finite() && det.abs() > f64::EPSILON * (g[1].abs() + g[5].abs()).max(1e-300)
    }
}

/// A coordinate reference system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crs {
    /// Full WKT definition, as GDAL reports it.
    pub wkt: String,
    /// EPSG code, when the CRS has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsg: Option<u32>,
}

impl Message for TileTask {
    const KIND: &'static str = "tile_task";

    fn validate(&self) -> Result<(), SchemaError> {
        let kind = Self::KIND;
        check_id(kind, "request_id", &self.request_id)?;
        check_id(kind, "scene_id", &self.scene_id)?;
        check_id(kind, "tile_id", &self.tile_id)?;
        let invalid = |field: &str, reason: &str| SchemaError::Invalid { kind, field: field.to_owned(), reason: reason.to_owned() };
        if self.tile.uri.trim().is_empty() {
            return Err(invalid("tile.uri", "must not be empty"));
        }
        if self.window.width == 0 || self.window.height == 0 {
            return Err(invalid("window", "width and height must be positive"));
        }
        if self.window.col_off + u64::from(self.window.width) > self.scene_size.width
            || self.window.row_off + u64::from(self.window.height) > self.scene_size.height
        {
            return Err(invalid("window", "extends past the scene"));
        }
        if !self.geotransform.is_invertible() || self.geotransform.0.iter().any(|c| !c.is_finite()) {
            return Err(invalid("geotransform", "must be finite with non-zero pixel area"));
        }
        if self.crs.wkt.trim().is_empty() {
            return Err(invalid("crs.wkt", "must not be empty"));
        }
        let ring = &self.footprint_lonlat;
        if ring.len() < 4 || ring.first() != ring.last() {
            return Err(invalid("footprint_lonlat", "must be a closed ring of at least 4 points"));
        }
        if ring.iter().any(|[lon, lat]| !(-180.0..=180.0).contains(lon) || !(-90.0..=90.0).contains(lat)) {
            return Err(invalid("footprint_lonlat", "longitudes must lie in [-180, 180] and latitudes in [-90, 90]"));
        }
        Ok(())
    }
}
