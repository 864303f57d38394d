//! Georeferencing: a box the model drew on a tile, placed on the scene and on the globe.
//!
//! The model answers on a 0–1000 grid relative to the tile image (MODEL_SPEC §6). A detection
//! row needs that box three ways: in tile-image pixels (what the model saw), in scene pixels
//! (where cross-tile merging compares boxes, [`crate::merge`]) and as a lon/lat polygon (the
//! tables' geometry). The polygon is the box's outline mapped through the tile's geotransform
//! and the CRS, with every edge densified, because a straight pixel edge is curved in lon/lat
//! (and a rotated or south-up geotransform turns the pixel rectangle around). Rings follow
//! RFC 7946 §3.1.6 (exterior counter-clockwise, whatever the signs of the geotransform) and
//! §3.1.9 (a polygon crossing the antimeridian is cut in two at ±180°, never drawn as a
//! 358°-wide band; one around a pole is closed along the pole's latitude). Scene and tile
//! footprints are traced by the same code ([`window_footprint`], [`TileGeoref::footprint`]),
//! so every polygon in the tables and exports follows one rule.
//!
//! Everything comes from the [`TileTask`] alone, so a result that carries its task can be
//! georeferenced anywhere. Partial windows (scenes smaller than a tile) are padded: their
//! content fills only the top-left part of the tile image. The content size is not a field of
//! the task; it is recovered exactly from the task's lon/lat footprint, whose corners are the
//! window's corners, mapped back through the tile geotransform (see [`TileGeoref::new`]).

use gdal::spatial_ref::CoordTransform;
use schemas::{GeoTransform, GridBox, PixelWindow, TileTask};

use crate::{tile::raster, OperatorError};

/// The model's box grid spans `0..=GRID_MAX` across the tile image (MODEL_SPEC §6).
pub const GRID_MAX: f64 = 1000.0;

/// The most segments a box edge is cut into before it is transformed to lon/lat (see
/// [`DENSIFY_TOLERANCE_M`] for when it is cut at all).
pub const DEFAULT_SEGMENTS_PER_EDGE: usize = 16;

/// How far, in metres, a drawn edge (straight in lon/lat) may stray from the true one (the
/// image of a straight pixel edge) before the edge is cut in two. A pixel edge of a few hundred
/// metres bends by well under a millimetre under UTM → lon/lat, so a small box keeps its four
/// corners; a scene's 100 km edges are cut where the projection bends them. Distances are
/// measured on a sphere of the mean Earth radius, ample for a tolerance this small.
pub const DENSIFY_TOLERANCE_M: f64 = 0.1;

/// Metres per degree of latitude on a sphere of the mean Earth radius (6,371,008.8 m).
const METRES_PER_DEGREE: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0;

/// A closed ring of `[x, y]` points (lon/lat: `[longitude, latitude]` in degrees); the first
/// point is repeated at the end.
pub type Ring = Vec<[f64; 2]>;

/// A lon/lat (EPSG:4326, x = longitude) polygon without holes, or the parts of one that was
/// cut at the antimeridian.
#[derive(Debug, Clone, PartialEq)]
pub enum LonLatGeometry {
    /// One counter-clockwise exterior ring.
    Polygon(Ring),
    /// Two or more polygons, each one counter-clockwise exterior ring; longitudes of every part
    /// lie in [-180, 180]. The part touching +180° comes first.
    MultiPolygon(Vec<Ring>),
}

impl LonLatGeometry {
    /// The exterior rings: one for a polygon, one per part for a multipolygon.
    pub fn parts(&self) -> &[Ring] {
        match self {
            Self::Polygon(ring) => std::slice::from_ref(ring),
            Self::MultiPolygon(parts) => parts,
        }
    }

    /// ISO/OGC WKB, little-endian, 2D: a `Polygon` (type 3) or a `MultiPolygon` (type 6) —
    /// the encoding GeoParquet stores; a polygon's bytes equal GDAL's for the same ring.
    pub fn to_wkb(&self) -> Vec<u8> {
        const POLYGON: u32 = 3;
        const MULTI_POLYGON: u32 = 6;
        fn header(out: &mut Vec<u8>, kind: u32) {
            out.push(1); // little-endian (NDR)
            out.extend_from_slice(&kind.to_le_bytes());
        }
        fn count(out: &mut Vec<u8>, n: usize) {
            // Rings of a box hold tens of points; u32 cannot overflow.
            out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
        }
        fn polygon(out: &mut Vec<u8>, ring: &[[f64; 2]]) {
            header(out, POLYGON);
            count(out, 1);
            count(out, ring.len());
            for [x, y] in ring {
                out.extend_from_slice(&x.to_le_bytes());
                out.extend_from_slice(&y.to_le_bytes());
            }
        }
        let mut out = Vec::new();
        match self {
            Self::Polygon(ring) => polygon(&mut out, ring),
            Self::MultiPolygon(parts) => {
                header(&mut out, MULTI_POLYGON);
                count(&mut out, parts.len());
                for part in parts {
                    polygon(&mut out, part);
                }
            }
        }
        out
    }
}

/// One box, georeferenced.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoreferencedBox {
    /// `[x1, y1, x2, y2]` in tile-image pixels (origin at the image's top-left corner), clipped
    /// to the image's content (the padding of a partial window holds no scene).
    pub image_box: [f64; 4],
    /// `[x1, y1, x2, y2]` in scene pixels (fractional: a grid step is rarely a whole pixel).
    pub scene_box: [f64; 4],
    /// The box outline in the scene CRS: closed, densified, counter-clockwise (x east, y north).
    pub crs_ring: Ring,
    /// The box outline in lon/lat: closed, densified, counter-clockwise, cut at the
    /// antimeridian when it crosses it.
    pub lonlat: LonLatGeometry,
}

/// What is needed to georeference boxes on one tile: the tile's geometry and a lon/lat
/// transform built once for all its boxes.
///
/// Not `Send`: GDAL's coordinate transforms are bound to their thread. Build one where the
/// boxes are georeferenced and drop it before any `.await`.
pub struct TileGeoref {
    scene_id: String,
    tile_id: String,
    window: PixelWindow,
    /// Tile image size (width, height), in pixels.
    image_px: (u32, u32),
    /// Part of the image holding the window (width, height), in pixels.
    content_px: (u32, u32),
    geotransform: GeoTransform,
    to_lonlat: CoordTransform,
    segments_per_edge: usize,
}

impl std::fmt::Debug for TileGeoref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TileGeoref")
            .field("scene_id", &self.scene_id)
            .field("tile_id", &self.tile_id)
            .field("window", &self.window)
            .field("image_px", &self.image_px)
            .field("content_px", &self.content_px)
            .field("geotransform", &self.geotransform)
            .field("segments_per_edge", &self.segments_per_edge)
            .finish_non_exhaustive()
    }
}

impl TileGeoref {
    /// Prepares a tile for georeferencing.
    ///
    /// The content size (the part of the tile image the window fills) is recovered from the
    /// task: the footprint's first four points are the window's corners in lon/lat; mapped to
    /// the CRS and through the inverse of the tile geotransform they land on `(0, 0)` and
    /// `(content_w, content_h)`, integers the tiler chose, so rounding recovers them exactly.
    ///
    /// # Errors
    /// [`OperatorError::Georeference`] when the image size is zero, the geotransform is not
    /// invertible, the CRS cannot be transformed to lon/lat, or the footprint does not match
    /// the window's corners under the geotransform.
    pub fn new(task: &TileTask) -> Result<Self, OperatorError> {
        let fail = |reason: String| OperatorError::Georeference { scene: task.scene_id.clone(), tile: task.tile_id.clone(), reason };
        let image_px = (task.tile.width_px, task.tile.height_px);
        if image_px.0 == 0 || image_px.1 == 0 {
            return Err(fail(format!("the tile image is {} × {} pixels", image_px.0, image_px.1)));
        }
        let geotransform = task.geotransform;
        if !geotransform.is_invertible() || geotransform.0.iter().any(|c| !c.is_finite()) {
            return Err(fail(format!("the tile geotransform {:?} is not invertible", geotransform.0)));
        }
        let to_lonlat = raster::to_lonlat(&task.crs.wkt).map_err(&fail)?;
        let from_lonlat = raster::from_lonlat(&task.crs.wkt).map_err(&fail)?;
        let corners = task.footprint_lonlat.get(..4).ok_or_else(|| fail("the footprint has fewer than 4 points".to_owned()))?;
        let corners = raster::transform_points(&from_lonlat, corners).map_err(|e| fail(format!("footprint: {e}")))?;
        let pixels: Vec<[f64; 2]> = corners.iter().map(|&[x, y]| invert(&geotransform, x, y)).collect();
        let max = |axis: usize| pixels.iter().map(|p| p[axis]).fold(f64::NEG_INFINITY, f64::max);
        let min = |axis: usize| pixels.iter().map(|p| p[axis]).fold(f64::INFINITY, f64::min);
        // Transforms round-trip to well under a thousandth of a pixel; more means the
        // footprint belongs to another window or geotransform.
        const SLACK_PX: f64 = 1e-3;
        let (w, h) = (max(0), max(1));
        let (content_w, content_h) = (w.round(), h.round());
        let consistent = min(0).abs() < SLACK_PX
            && min(1).abs() < SLACK_PX
            && (w - content_w).abs() < SLACK_PX
            && (h - content_h).abs() < SLACK_PX
            && (1.0..=f64::from(image_px.0)).contains(&content_w)
            && (1.0..=f64::from(image_px.1)).contains(&content_h);
        if !consistent {
            return Err(fail(format!(
                "the footprint's corners map to image pixels {pixels:?} under the tile geotransform, not to the corners of a \
                 rectangle inside the {} × {} image",
                image_px.0, image_px.1
            )));
        }
        Ok(Self {
            scene_id: task.scene_id.clone(),
            tile_id: task.tile_id.clone(),
            window: task.window,
            image_px,
            // Both are whole numbers in 1..=image size, checked above.
            content_px: (content_w as u32, content_h as u32),
            geotransform,
            to_lonlat,
            segments_per_edge: DEFAULT_SEGMENTS_PER_EDGE,
        })
    }

    /// Cuts each box edge into at most `segments` straight pieces (at least 1; halves, so a
    /// power of two is reached exactly) where the projection bends it.
    pub fn with_segments_per_edge(mut self, segments: usize) -> Self {
        self.segments_per_edge = segments.max(1);
        self
    }

    /// The part of the tile image the window fills, (width, height) in pixels: the whole image
    /// except for partial windows.
    pub fn content_px(&self) -> (u32, u32) {
        self.content_px
    }

    /// Places one box.
    ///
    /// # Errors
    /// [`OperatorError::Georeference`] when the box is outside the grid or has no area
    /// (`x1 >= x2` or `y1 >= y2`), lies wholly in the padding of a partial window, cannot be
    /// transformed to lon/lat. A box around a pole is one polygon closed along the pole's
    /// latitude (see [`window_footprint`]).
    pub fn georeference(&self, grid: &GridBox) -> Result<GeoreferencedBox, OperatorError> {
        let fail = |reason: String| OperatorError::Georeference { scene: self.scene_id.clone(), tile: self.tile_id.clone(), reason };
        let [gx1, gy1, gx2, gy2] = [grid.x1, grid.y1, grid.x2, grid.y2].map(f64::from);
        if gx2 > GRID_MAX || gy2 > GRID_MAX || gx1 >= gx2 || gy1 >= gy2 {
            return Err(fail(format!("box {grid} is not a box with area on the 0–1000 grid")));
        }
        let (image_w, image_h) = (f64::from(self.image_px.0), f64::from(self.image_px.1));
        let (content_w, content_h) = (f64::from(self.content_px.0), f64::from(self.content_px.1));
        let image_box = [
            (gx1 / GRID_MAX * image_w).min(content_w),
            (gy1 / GRID_MAX * image_h).min(content_h),
            (gx2 / GRID_MAX * image_w).min(content_w),
            (gy2 / GRID_MAX * image_h).min(content_h),
        ];
        if image_box[0] >= image_box[2] || image_box[1] >= image_box[3] {
            return Err(fail(format!("box {grid} lies in the tile's padding, outside the scene")));
        }
        let (sx, sy) = (f64::from(self.window.width) / content_w, f64::from(self.window.height) / content_h);
        let (col0, row0) = (self.window.col_off as f64, self.window.row_off as f64);
        let scene_box = [col0 + image_box[0] * sx, row0 + image_box[1] * sy, col0 + image_box[2] * sx, row0 + image_box[3] * sy];

        let outline = Outline { geotransform: &self.geotransform, to_lonlat: &self.to_lonlat };
        let (crs_ring, lonlat) = outline.trace(&image_box, self.segments_per_edge).map_err(|e| fail(format!("box {grid}: {e}")))?;
        Ok(GeoreferencedBox { image_box, scene_box, crs_ring, lonlat })
    }

    /// The tile's footprint: the outline of the part of the tile image holding the scene
    /// (the whole image but for partial windows), densified, counter-clockwise and cut at the
    /// antimeridian, as every table and export stores it (the message's
    /// `footprint_lonlat` holds only the window's corners).
    ///
    /// # Errors
    /// [`OperatorError::Georeference`] when the outline cannot be transformed to lon/lat.
    pub fn footprint(&self) -> Result<LonLatGeometry, OperatorError> {
        let fail = |reason: String| OperatorError::Georeference { scene: self.scene_id.clone(), tile: self.tile_id.clone(), reason };
        let content = [0.0, 0.0, f64::from(self.content_px.0), f64::from(self.content_px.1)];
        let outline = Outline { geotransform: &self.geotransform, to_lonlat: &self.to_lonlat };
        outline.trace(&content, self.segments_per_edge).map(|(_, lonlat)| lonlat).map_err(|e| fail(format!("footprint: {e}")))
    }
}

/// The lon/lat footprint of a window of scene pixels: its outline densified (at most `segments`
/// pieces per edge, where the projection bends it by more than [`DENSIFY_TOLERANCE_M`]) in the
/// scene CRS, transformed, counter-clockwise whatever the signs of the
/// geotransform (RFC 7946 §3.1.6), cut in two at ±180° when it crosses the antimeridian
/// (§3.1.9), and closed through the pole when it contains one. Scene and tile footprints use
/// this, and [`TileGeoref::georeference`] the same code, so every polygon Strata writes follows
/// one rule.
///
/// # Errors
/// A message when a point of the outline cannot be transformed to lon/lat.
pub fn window_footprint(
    to_lonlat: &CoordTransform,
    geotransform: &GeoTransform,
    window: &PixelWindow,
    segments: usize,
) -> Result<LonLatGeometry, String> {
    let (c0, r0) = (window.col_off as f64, window.row_off as f64);
    let pixel_box = [c0, r0, c0 + f64::from(window.width), r0 + f64::from(window.height)];
    Outline { geotransform, to_lonlat }.trace(&pixel_box, segments.max(1)).map(|(_, lonlat)| lonlat)
}

/// A pixel rectangle's outline on the globe: pixels go through `geotransform` to the CRS and
/// through `to_lonlat` to lon/lat.
struct Outline<'a> {
    geotransform: &'a GeoTransform,
    to_lonlat: &'a CoordTransform,
}

impl Outline<'_> {
    /// The outline of `pixel_box` (`[col1, row1, col2, row2]`) in the CRS (closed, densified,
    /// counter-clockwise) and in lon/lat (see [`window_footprint`]).
    fn trace(&self, pixel_box: &[f64; 4], segments: usize) -> Result<(Ring, LonLatGeometry), String> {
        let mut pixels = self.densified_outline(pixel_box, segments)?;
        let crs = |pixels: &[[f64; 2]]| -> Ring {
            pixels
                .iter()
                .map(|&[c, r]| {
                    let (x, y) = self.geotransform.apply(c, r);
                    [x, y]
                })
                .collect()
        };
        let mut crs_ring = crs(&pixels);
        if signed_area(&crs_ring) < 0.0 {
            crs_ring.reverse();
        }
        let lonlat = raster::transform_points(self.to_lonlat, &crs(&pixels))?;
        let mut unwrapped = unwrap_longitudes(&lonlat);
        let (Some(first), Some(last)) = (unwrapped.first().copied(), unwrapped.last().copied()) else {
            return Err("the outline has no points".to_owned());
        };
        // Unwrapped, a ring around a pole does not come back to its first longitude: it has
        // gone once round the globe.
        let turns = ((last[0] - first[0]) / 360.0).round();
        if turns != 0.0 {
            return self.around_pole(&pixels, &unwrapped, turns).map(|ring| (crs_ring, LonLatGeometry::Polygon(ring)));
        }
        if signed_area(&unwrapped) < 0.0 {
            unwrapped.reverse();
            pixels.reverse();
        }
        Ok((crs_ring, self.split_at_antimeridian(&pixels, unwrapped)?))
    }

    /// The closed outline of a pixel box in the order top-left, bottom-left, bottom-right,
    /// top-right (counter-clockwise on a north-up map), each edge cut in halves, at most
    /// `segments` pieces, while the edge drawn straight in lon/lat strays from the true edge
    /// by more than [`DENSIFY_TOLERANCE_M`] at its middle. A few-pixel box keeps its 4 corners
    /// (5 points closed) instead of 4 × `segments`.
    fn densified_outline(&self, b: &[f64; 4], segments: usize) -> Result<Vec<[f64; 2]>, String> {
        let depth = usize::BITS - 1 - segments.max(1).leading_zeros(); // floor(log2(segments))
        let corners = [[b[0], b[1]], [b[0], b[3]], [b[2], b[3]], [b[2], b[1]]];
        let lonlat = self.lonlat_of(&corners)?;
        let mut points = Vec::with_capacity(4 + 1);
        for i in 0..4 {
            points.push(corners[i]);
            let j = (i + 1) % 4;
            self.refine(corners[i], corners[j], lonlat[i], lonlat[j], depth, &mut points)?;
        }
        points.push(corners[0]);
        Ok(points)
    }

    /// Adds the points strictly between pixel `a` and `b` (lon/lat `la`, `lb`) that the edge
    /// needs, in order.
    fn refine(&self, a: [f64; 2], b: [f64; 2], la: [f64; 2], lb: [f64; 2], depth: u32, out: &mut Vec<[f64; 2]>) -> Result<(), String> {
        if depth == 0 {
            return Ok(());
        }
        let m = [(a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0];
        let lm = self.lonlat_of(&[m])?[0];
        // The chord's middle, across ±180° where the edge crosses it.
        let chord = [la[0] + wrap_degrees(lb[0] - la[0]) / 2.0, (la[1] + lb[1]) / 2.0];
        let dx = wrap_degrees(lm[0] - chord[0]) * lm[1].to_radians().cos() * METRES_PER_DEGREE;
        let dy = (lm[1] - chord[1]) * METRES_PER_DEGREE;
        if dx.hypot(dy) <= DENSIFY_TOLERANCE_M {
            return Ok(());
        }
        self.refine(a, m, la, lm, depth - 1, out)?;
        out.push(m);
        self.refine(m, b, lm, lb, depth - 1, out)
    }

    /// Pixels to lon/lat.
    fn lonlat_of(&self, pixels: &[[f64; 2]]) -> Result<Vec<[f64; 2]>, String> {
        let crs: Vec<[f64; 2]> = pixels
            .iter()
            .map(|&[c, r]| {
                let (x, y) = self.geotransform.apply(c, r);
                [x, y]
            })
            .collect();
        raster::transform_points(self.to_lonlat, &crs)
    }

    /// A ring that goes once round a pole, as one polygon in [-180, 180]: the outline is opened
    /// where it crosses the antimeridian (the crossing found on the true edge), runs from one
    /// side of the map to the other, and is closed along the pole's latitude — the form
    /// RFC 7946 §3.1.9 readers and GeoParquet tools draw as a polar cap. Which pole: the one
    /// on the side of the equator the outline lies on (its mean latitude).
    fn around_pole(&self, pixels: &[[f64; 2]], unwrapped: &[[f64; 2]], turns: f64) -> Result<Ring, String> {
        let n = unwrapped.len() - 1; // the open ring: the last point repeats the first, a turn on
        let point = |j: usize| -> [f64; 2] {
            let [lon, lat] = unwrapped[j % n];
            [lon + 360.0 * turns * (j / n) as f64, lat]
        };
        // The first edge reaching a meridian 180° + k·360°.
        let mut found = None;
        for i in 0..n {
            let (a, b) = (point(i), point(i + 1));
            let k = ((a[0].max(b[0]) - 180.0) / 360.0).floor();
            let cut = 180.0 + 360.0 * k;
            if a[0].min(b[0]) < cut && cut <= a[0].max(b[0]) {
                found = Some((i, cut));
                break;
            }
        }
        let Some((i, cut)) = found else {
            return Err("the outline goes round a pole without crossing the antimeridian".to_owned());
        };
        let start = self.crossing(pixels[i], pixels[(i + 1) % n], point(i)[0], cut)?;
        // Shift so the path runs from -180 to 180 (eastwards) or from 180 to -180.
        let shift = if turns > 0.0 { -cut - 180.0 } else { -cut + 180.0 };
        let mut ring: Ring = Vec::with_capacity(n + 5);
        ring.push([start[0] + shift, start[1]]);
        for j in i + 1..=i + n {
            let [lon, lat] = point(j);
            ring.push([(lon + shift).clamp(-180.0, 180.0), lat]);
        }
        let end = [start[0] + shift + 360.0 * turns, start[1]];
        ring.push(end);
        let mean_lat = unwrapped[..n].iter().map(|p| p[1]).sum::<f64>() / n as f64;
        let pole = if mean_lat < 0.0 { -90.0 } else { 90.0 };
        ring.push([end[0], pole]);
        ring.push([ring[0][0], pole]);
        ring.push(ring[0]);
        ring.dedup();
        if signed_area(&ring) < 0.0 {
            ring.reverse();
        }
        Ok(ring)
    }

    /// Cuts a closed ring of unwrapped longitudes (continuous, possibly beyond ±180) at the
    /// antimeridian. `pixels` are the image points the ring was transformed from; crossings
    /// are found on the true (curved) edge between them by bisection, so the cut points are
    /// exact, not interpolated in lon/lat.
    fn split_at_antimeridian(&self, pixels: &[[f64; 2]], ring: Ring) -> Result<LonLatGeometry, String> {
        let east = ring.iter().map(|p| p[0]).fold(f64::NEG_INFINITY, f64::max);
        let west = ring.iter().map(|p| p[0]).fold(f64::INFINITY, f64::min);
        let cut = if east > 180.0 {
            180.0
        } else if west < -180.0 {
            -180.0
        } else {
            return Ok(LonLatGeometry::Polygon(ring));
        };
        // Insert the exact crossing points, so that clipping never interpolates.
        let mut with_cuts: Vec<[f64; 2]> = Vec::with_capacity(ring.len() + 4);
        for i in 0..ring.len() - 1 {
            let (a, b) = (ring[i], ring[i + 1]);
            with_cuts.push(a);
            if (a[0] - cut) * (b[0] - cut) < 0.0 {
                with_cuts.push(self.crossing(pixels[i], pixels[i + 1], a[0], cut)?);
            }
        }
        // `with_cuts` is open: its closing point would be `with_cuts[0]` again.
        let (inside, outside) = if cut > 0.0 { (Side::West, Side::East) } else { (Side::East, Side::West) };
        let near = clip(&with_cuts, cut, inside);
        let far: Vec<[f64; 2]> = clip(&with_cuts, cut, outside).into_iter().map(|[lon, lat]| [lon - 2.0 * cut, lat]).collect();
        let (plus, minus) = if cut > 0.0 { (near, far) } else { (far, near) };
        let parts: Vec<Ring> = [plus, minus].into_iter().filter_map(close_ring).collect();
        match <[Ring; 1]>::try_from(parts) {
            Ok([one]) => Ok(LonLatGeometry::Polygon(one)),
            Err(parts) if parts.is_empty() => Err("nothing of the box is left after cutting it at the antimeridian".to_owned()),
            Err(parts) => Ok(LonLatGeometry::MultiPolygon(parts)),
        }
    }

    /// The point where the edge from image point `a` (whose unwrapped longitude is `lon_a`) to
    /// `b` reaches longitude `cut`, found by bisection on the edge.
    fn crossing(&self, a: [f64; 2], b: [f64; 2], lon_a: f64, cut: f64) -> Result<[f64; 2], String> {
        let side_a = (lon_a - cut).signum();
        let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
        let at = |t: f64| -> Result<[f64; 2], String> {
            let (x, y) = self.geotransform.apply(a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t);
            let [[lon, lat]] = <[[f64; 2]; 1]>::try_from(raster::transform_points(self.to_lonlat, &[[x, y]])?)
                .map_err(|_| "the transform returned no point".to_owned())?;
            Ok([lon + 360.0 * ((lon_a - lon) / 360.0).round(), lat])
        };
        // 60 halvings take the edge parameter below 1e-18: the last bit of a double.
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if (at(mid)?[0] - cut).signum() == side_a {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok([cut, at(0.5 * (lo + hi))?[1]])
    }
}

/// `(col, row)` of CRS point `(x, y)` under an invertible geotransform.
fn invert(g: &GeoTransform, x: f64, y: f64) -> [f64; 2] {
    let g = &g.0;
    let det = g[1] * g[5] - g[2] * g[4];
    let (dx, dy) = (x - g[0], y - g[3]);
    [(g[5] * dx - g[2] * dy) / det, (g[1] * dy - g[4] * dx) / det]
}

/// A longitude difference in (-180, 180].
fn wrap_degrees(d: f64) -> f64 {
    d - 360.0 * ((d - 180.0) / 360.0).ceil()
}

/// The closed outline of a pixel box, `segments` points per edge, in the order top-left,
/// bottom-left, bottom-right, top-right (counter-clockwise on a north-up map).
#[cfg(test)]
fn densified_outline(b: &[f64; 4], segments: usize) -> Vec<[f64; 2]> {
    let corners = [[b[0], b[1]], [b[0], b[3]], [b[2], b[3]], [b[2], b[1]]];
    let mut points = Vec::with_capacity(4 * segments + 1);
    for (i, from) in corners.iter().enumerate() {
        let to = corners[(i + 1) % 4];
        for k in 0..segments {
            let t = k as f64 / segments as f64;
            points.push([from[0] + (to[0] - from[0]) * t, from[1] + (to[1] - from[1]) * t]);
        }
    }
    points.push(corners[0]);
    points
}

/// Twice the signed area of a closed ring (shoelace); positive when counter-clockwise.
fn signed_area(ring: &[[f64; 2]]) -> f64 {
    ring.windows(2).map(|w| w[0][0] * w[1][1] - w[1][0] * w[0][1]).sum()
}

/// Longitudes made continuous along the ring: each point moved by whole turns to within 180°
/// of the previous one, so a ring crossing the antimeridian runs past ±180 instead of jumping.
fn unwrap_longitudes(ring: &[[f64; 2]]) -> Ring {
    let mut out: Ring = Vec::with_capacity(ring.len());
    for &[lon, lat] in ring {
        let lon = match out.last() {
            Some(&[previous, _]) => lon + 360.0 * ((previous - lon) / 360.0).round(),
            None => lon,
        };
        out.push([lon, lat]);
    }
    out
}

/// Which side of a meridian to keep when clipping.
#[derive(Debug, Clone, Copy)]
enum Side {
    /// Longitudes at most the cut.
    West,
    /// Longitudes at least the cut.
    East,
}

/// Sutherland–Hodgman clipping of an open ring (first point not repeated) to one side of the
/// meridian `cut` (points on it are kept). Exact when every edge crossing the meridian already
/// has a vertex on it; other crossings are interpolated linearly.
fn clip(ring: &[[f64; 2]], cut: f64, side: Side) -> Vec<[f64; 2]> {
    let keep = |lon: f64| match side {
        Side::West => lon <= cut,
        Side::East => lon >= cut,
    };
    let mut out = Vec::with_capacity(ring.len());
    let Some(&last) = ring.last() else { return out };
    let mut previous = last;
    for &point in ring {
        match (keep(previous[0]), keep(point[0])) {
            (true, true) => out.push(point),
            (false, true) => {
                out.push(on_meridian(previous, point, cut));
                out.push(point);
            }
            (true, false) => out.push(on_meridian(previous, point, cut)),
            (false, false) => {}
        }
        previous = point;
    }
    out.dedup();
    out
}

/// Where the segment from `a` to `b` meets the meridian `cut`: an endpoint lying on it, or
/// else the linear interpolation.
fn on_meridian(a: [f64; 2], b: [f64; 2], cut: f64) -> [f64; 2] {
    if a[0] == cut {
        return a;
    }
    if b[0] == cut {
        return b;
    }
    let t = (cut - a[0]) / (b[0] - a[0]);
    [cut, a[1] + (b[1] - a[1]) * t]
}

/// Closes an open ring; `None` when fewer than three distinct points remain (the box only
/// touched the line).
fn close_ring(mut open: Vec<[f64; 2]>) -> Option<Ring> {
    if open.first() == open.last() {
        open.pop();
    }
    if open.len() < 3 {
        return None;
    }
    open.push(open[0]);
    Some(open)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwrapping_makes_a_crossing_ring_continuous() {
        let ring = [[179.5, 1.0], [-179.5, 1.0], [-179.5, 0.0], [179.5, 0.0], [179.5, 1.0]];
        let unwrapped = unwrap_longitudes(&ring);
        assert_eq!(unwrapped, vec![[179.5, 1.0], [180.5, 1.0], [180.5, 0.0], [179.5, 0.0], [179.5, 1.0]]);
    }

    #[test]
    fn shoelace_sign_is_positive_for_counter_clockwise_rings() {
        let ccw = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]];
        assert!(signed_area(&ccw) > 0.0);
        let mut cw = ccw;
        cw.reverse();
        assert!(signed_area(&cw) < 0.0);
    }

    #[test]
    fn clipping_keeps_each_side_of_the_meridian() {
        // A CCW square from 179 to 181 with vertices already on the meridian.
        let ring = [[179.0, 0.0], [180.0, 0.0], [181.0, 0.0], [181.0, 1.0], [180.0, 1.0], [179.0, 1.0]];
        assert_eq!(clip(&ring, 180.0, Side::West), vec![[179.0, 0.0], [180.0, 0.0], [180.0, 1.0], [179.0, 1.0]]);
        assert_eq!(clip(&ring, 180.0, Side::East), vec![[180.0, 0.0], [181.0, 0.0], [181.0, 1.0], [180.0, 1.0]]);
        // Without vertices on the meridian the crossings are interpolated.
        let ring = [[-181.0, 0.0], [-179.0, 0.0], [-179.0, 2.0], [-181.0, 2.0]];
        assert_eq!(clip(&ring, -180.0, Side::East), vec![[-180.0, 0.0], [-179.0, 0.0], [-179.0, 2.0], [-180.0, 2.0]]);
        assert_eq!(clip(&ring, -180.0, Side::West), vec![[-181.0, 0.0], [-180.0, 0.0], [-180.0, 2.0], [-181.0, 2.0]]);
    }

    #[test]
    fn outline_visits_the_corners_in_order() {
        let outline = densified_outline(&[0.0, 0.0, 4.0, 2.0], 2);
        assert_eq!(
            outline,
            vec![[0.0, 0.0], [0.0, 1.0], [0.0, 2.0], [2.0, 2.0], [4.0, 2.0], [4.0, 1.0], [4.0, 0.0], [2.0, 0.0], [0.0, 0.0]]
        );
    }

    #[test]
    fn longitude_differences_wrap_into_half_a_turn() {
        for (d, want) in [(190.0, -170.0), (180.0, 180.0), (-180.0, 180.0), (-190.0, 170.0), (0.5, 0.5), (-359.0, 1.0)] {
            assert!((wrap_degrees(d) - want).abs() < 1e-12, "{d}: {}", wrap_degrees(d));
        }
    }

    /// Edges are cut only where the projection bends them: a 10-pixel box at 10 m keeps its
    /// corners, a 100 km UTM edge far from the central meridian is cut, and every point of a
    /// cut edge lies within the tolerance of the true edge between its neighbours.
    #[test]
    fn edges_are_densified_only_where_the_projection_bends_them() {
        let wkt = gdal::spatial_ref::SpatialRef::from_epsg(32633).unwrap().to_wkt().unwrap();
        let to_lonlat = raster::to_lonlat(&wkt).unwrap();
        // Far east of zone 33's central meridian (15°E), at 60°N, where grid lines bend most.
        let geotransform = GeoTransform([800_000.0, 10.0, 0.0, 6_700_000.0, 0.0, -10.0]);
        let outline = Outline { geotransform: &geotransform, to_lonlat: &to_lonlat };
        let small = outline.densified_outline(&[0.0, 0.0, 10.0, 10.0], 16).unwrap();
        assert_eq!(small.len(), 5, "a small box keeps its corners: {small:?}");
        let large = outline.densified_outline(&[0.0, 0.0, 10_000.0, 10_000.0], 64).unwrap();
        assert!(large.len() > 5 && large.len() <= 4 * 64 + 1, "{} points", large.len());
        // Between consecutive points, the true edge's middle is within the tolerance of the chord.
        for pair in large.windows(2) {
            let m = [(pair[0][0] + pair[1][0]) / 2.0, (pair[0][1] + pair[1][1]) / 2.0];
            let ll = outline.lonlat_of(&[pair[0], m, pair[1]]).unwrap();
            let chord = [(ll[0][0] + ll[2][0]) / 2.0, (ll[0][1] + ll[2][1]) / 2.0];
            let dx = (ll[1][0] - chord[0]) * ll[1][1].to_radians().cos() * METRES_PER_DEGREE;
            let dy = (ll[1][1] - chord[1]) * METRES_PER_DEGREE;
            // A piece cut to the depth limit may stay above it; these 100 km edges need fewer.
            assert!(dx.hypot(dy) <= DENSIFY_TOLERANCE_M, "{pair:?} strays {} m", dx.hypot(dy));
        }
    }
}
