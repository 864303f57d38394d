//! Georeferencing boxes, held to pyproj (`scripts/fixtures/make_georef_golden.py`, no GDAL and
//! no Strata code in the truth) and to the tiler's own tiles: UTM, a padded partial window, a
//! rotated and a south-up geotransform, and a box across the antimeridian.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

mod common;

use std::sync::Arc;

use chrono::Utc;
use gdal::{
    spatial_ref::SpatialRef,
    vector::{Geometry, OGRwkbGeometryType},
};
use operators::{
    geometry::Gdal,
    georef::{GeoreferencedBox, LonLatGeometry, TileGeoref, DEFAULT_SEGMENTS_PER_EDGE},
    tile::{tile_scene, TilerConfig},
    ErrorClass, OperatorError,
};
use schemas::{Crs, GeoTransform, GridBox, ObjectRef, PixelWindow, RasterSize, SceneRequest, SceneSource, TileTask, TilingOptions};
use serde_json::Value;

/// pyproj and GDAL (both PROJ) agree far below this, in degrees.
const DEGREES: f64 = 1e-7;
/// In CRS units (metres): plain affine arithmetic, only rounding apart.
const METRES: f64 = 1e-6;

fn cases() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/georef/cases.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(fixture["segments_per_edge"].as_u64().unwrap(), DEFAULT_SEGMENTS_PER_EDGE as u64);
    fixture["cases"].as_array().unwrap().clone()
}

fn case(name: &str) -> Value {
    cases().into_iter().find(|c| c["name"] == name).unwrap()
}

fn floats(value: &Value) -> Vec<f64> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

fn points(value: &Value) -> Vec<[f64; 2]> {
    value.as_array().unwrap().iter().map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()]).collect()
}

fn task(case: &Value) -> TileTask {
    let t = &case["task"];
    let epsg = u32::try_from(case["epsg"].as_u64().unwrap()).unwrap();
    TileTask {
        schema_version: schemas::SCHEMA_VERSION,
        request_id: "req".to_owned(),
        scene_id: "scene".to_owned(),
        tile_id: case["name"].as_str().unwrap().to_owned(),
        tile: ObjectRef {
            uri: "memory://georef/tile.png".to_owned(),
            media_type: "image/png".to_owned(),
            width_px: t["width_px"].as_u64().unwrap() as u32,
            height_px: t["height_px"].as_u64().unwrap() as u32,
        },
        window: serde_json::from_value::<PixelWindow>(t["window"].clone()).unwrap(),
        scene_size: serde_json::from_value::<RasterSize>(t["scene_size"].clone()).unwrap(),
        geotransform: GeoTransform(floats(&t["geotransform"]).try_into().unwrap()),
        crs: Crs { wkt: SpatialRef::from_epsg(epsg).unwrap().to_wkt().unwrap(), epsg: Some(epsg) },
        footprint_lonlat: points(&t["footprint_lonlat"]),
        tasks: vec![],
        created_at: Utc::now(),
    }
}

fn grid_box(case: &Value) -> GridBox {
    serde_json::from_value(case["grid_box"].clone()).unwrap()
}

fn georeference(case: &Value) -> GeoreferencedBox {
    TileGeoref::new(&task(case)).unwrap().georeference(&grid_box(case)).unwrap()
}

/// Every wanted point is in `ring` (closed) and the ring holds nothing else.
fn assert_same_points(ring: &[[f64; 2]], want: &[[f64; 2]], tolerance: f64, what: &str) {
    assert_eq!(ring.first(), ring.last(), "{what}: the ring is not closed");
    let open = &ring[..ring.len() - 1];
    assert_eq!(open.len(), want.len(), "{what}: point count");
    for w in want {
        let nearest = open.iter().map(|p| (p[0] - w[0]).abs().max((p[1] - w[1]).abs())).fold(f64::INFINITY, f64::min);
        assert!(nearest < tolerance, "{what}: {w:?} is {nearest:e} from the nearest point of the ring");
    }
}

fn assert_close(got: &[f64], want: &[f64], tolerance: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < tolerance, "{what}: got {got:?}, want {want:?}");
    }
}

/// Twice the signed area (shoelace); positive for counter-clockwise rings.
fn signed_area(ring: &[[f64; 2]]) -> f64 {
    let n = ring.len();
    (0..n).map(|i| ring[i][0] * ring[(i + 1) % n][1] - ring[(i + 1) % n][0] * ring[i][1]).sum()
}

#[test]
fn boxes_match_pyproj_on_utm_rotated_south_up_and_padded_tiles() {
    for case in cases().iter().filter(|c| c["name"] != "antimeridian") {
        let name = case["name"].as_str().unwrap();
        let want = &case["expected"];
        let frame = TileGeoref::new(&task(case)).unwrap();
        let content = floats(&want["content_px"]);
        assert_eq!(frame.content_px(), (content[0] as u32, content[1] as u32), "{name}: content size recovered from the footprint");
        let placed = frame.georeference(&grid_box(case)).unwrap();
        assert_close(&placed.image_box, &floats(&want["image_box"]), 1e-9, &format!("{name} image box"));
        assert_close(&placed.scene_box, &floats(&want["scene_box"]), 1e-9, &format!("{name} scene box"));
        assert_same_points(&placed.crs_ring, &points(&want["crs_points"]), METRES, &format!("{name} CRS ring"));
        let LonLatGeometry::Polygon(ring) = &placed.lonlat else { panic!("{name}: split without crossing 180°") };
        assert_same_points(ring, &points(&want["lonlat_points"]), DEGREES, &format!("{name} lon/lat ring"));
    }
}

#[test]
fn a_box_across_the_antimeridian_is_cut_in_two_at_180() {
    let case = case("antimeridian");
    let want = &case["expected"];
    let placed = georeference(&case);
    let LonLatGeometry::MultiPolygon(parts) = &placed.lonlat else { panic!("not split: {:?}", placed.lonlat) };
    assert_eq!(parts.len(), 2);
    let (east, west) = (&parts[0], &parts[1]);
    for (part, side) in [(east, 180.0_f64), (west, -180.0)] {
        let lons: Vec<f64> = part.iter().map(|p| p[0]).collect();
        assert!(lons.iter().all(|lon| (-180.0..=180.0).contains(lon)), "{lons:?}");
        let span = lons.iter().copied().fold(f64::NEG_INFINITY, f64::max) - lons.iter().copied().fold(f64::INFINITY, f64::min);
        // The box is 0.8 × 512 px × 30 m ≈ 12.3 km ≈ 0.18° of longitude at 52°N, split about
        // in half: no part may wrap the other way round the globe.
        assert!(span > 0.05 && span < 0.15, "a part spans {span}° of longitude");
        assert!(lons.iter().all(|lon| lon.signum() == side.signum()), "the {side} part strays across: {lons:?}");
        // The cut edge lies on the antimeridian at the latitudes pyproj's bisection found.
        let mut cut: Vec<f64> = part.iter().skip(1).filter(|p| p[0] == side).map(|p| p[1]).collect();
        cut.sort_by(f64::total_cmp);
        assert_close(&cut, &floats(&want["cut_latitudes"]), DEGREES, &format!("cut on {side}"));
    }
    // Off the cut, the two parts hold exactly the densified outline pyproj computed.
    let outline: Vec<[f64; 2]> =
        parts.iter().flat_map(|part| part[..part.len() - 1].iter().copied()).filter(|p| p[0].abs() != 180.0).collect();
    let mut closed = outline.clone();
    closed.push(outline[0]);
    assert_same_points(&closed, &points(&want["lonlat_points"]), DEGREES, "antimeridian outline");
    assert_same_points(&placed.crs_ring, &points(&want["crs_points"]), METRES, "antimeridian CRS ring");

    // GDAL reads the WKB back as a valid two-part multipolygon.
    let geometry = Geometry::from_wkb(&placed.lonlat.to_wkb()).unwrap();
    assert_eq!(geometry.geometry_name(), "MULTIPOLYGON");
    assert_eq!(geometry.geometry_count(), 2);
    assert!(geometry.is_valid(), "{}", geometry.wkt().unwrap());
    // Both parts together cover the box (about 0.18° × 0.11°), as pyproj's outline does when
    // drawn across 180° without a cut, not the rest of the globe.
    let mut unwrapped = points(&want["lonlat_points"]);
    unwrapped.iter_mut().filter(|p| p[0] < 0.0).for_each(|p| p[0] += 360.0);
    let want_area = signed_area(&unwrapped).abs() / 2.0;
    let area: f64 = parts.iter().map(|p| signed_area(p) / 2.0).sum();
    assert!(
        // Shoelace terms near ±180° are ~3e4 square degrees each: sums in another order differ
        // by ~1e-11.
        (area - want_area).abs() < 1e-9 && (geometry.area() - area).abs() < 1e-10,
        "area {area}, want {want_area} square degrees; GDAL reads {}",
        geometry.area()
    );
}

#[test]
fn every_ring_is_counter_clockwise_whatever_the_geotransform() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let placed = georeference(&case);
        assert!(signed_area(&placed.crs_ring) > 0.0, "{name}: CRS ring is clockwise");
        for part in placed.lonlat.parts() {
            assert!(signed_area(part) > 0.0, "{name}: lon/lat ring is clockwise");
        }
        if name == "south_up" {
            // The outline in pixel order (top-left, bottom-left, ...) is clockwise on the map
            // here, so this case proves the ring was turned around.
            assert!(signed_area(&points(&case["expected"]["crs_points"])) < 0.0);
        }
    }
}

#[test]
fn polygon_wkb_equals_gdals_and_the_tables_read_it_back() {
    use tables::GeometryReader as _;
    let placed = georeference(&case("rotated"));
    let LonLatGeometry::Polygon(ring) = &placed.lonlat else { panic!("not a polygon") };
    let mut linear_ring = Geometry::empty(OGRwkbGeometryType::wkbLinearRing).unwrap();
    for &[x, y] in ring {
        linear_ring.add_point_2d((x, y));
    }
    let mut polygon = Geometry::empty(OGRwkbGeometryType::wkbPolygon).unwrap();
    polygon.add_geometry(linear_ring).unwrap();
    assert_eq!(placed.lonlat.to_wkb(), polygon.wkb().unwrap());
    let geometry = Geometry::from_wkb(&placed.lonlat.to_wkb()).unwrap();
    assert_eq!(geometry.geometry_name(), "POLYGON");
    assert!(geometry.is_valid());
    assert_eq!(Gdal.exterior_rings(&placed.lonlat.to_wkb()), (Some("Polygon"), vec![ring.clone()]));
    assert!(Gdal.wkt(&placed.lonlat.to_wkb()).unwrap().starts_with("POLYGON (("));
    assert_eq!(Gdal.geojson(&placed.lonlat.to_wkb()).unwrap()["type"], "Polygon");
    assert!(Gdal.wkt(b"not wkb").is_err());
}

#[test]
fn boxes_without_area_or_in_the_padding_are_refused() {
    let frame = TileGeoref::new(&task(&case("utm33_partial_window"))).unwrap();
    for (grid, why) in [
        (GridBox { x1: 10, y1: 10, x2: 10, y2: 20 }, "no width"),
        (GridBox { x1: 20, y1: 10, x2: 10, y2: 20 }, "reversed"),
        (GridBox { x1: 10, y1: 10, x2: 1001, y2: 20 }, "off the grid"),
        // The content is 225 × 150 of a 384 image: x from 0.5859 of the grid is padding.
        (GridBox { x1: 600, y1: 10, x2: 1000, y2: 20 }, "in the padding"),
    ] {
        let err = frame.georeference(&grid).unwrap_err();
        assert!(matches!(err, OperatorError::Georeference { .. }), "{why}: {err}");
        assert_eq!(err.class(), ErrorClass::Permanent, "{why}");
    }
}

#[test]
fn a_footprint_that_does_not_fit_the_geotransform_is_refused() {
    let mut task = task(&case("utm33"));
    task.footprint_lonlat.iter_mut().for_each(|p| p[0] += 0.001);
    let err = TileGeoref::new(&task).unwrap_err();
    assert!(err.to_string().contains("footprint"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_grid_of_a_real_tile_is_its_window_and_footprint() {
    // Full windows of a UTM Landsat scene, and the padded single window of a geographic one.
    for (file, tile_size) in [("scenes/L7_ETMs.tif", 128), ("scenes/rmnp-rgb.tif", 512)] {
        let path = common::data(file);
        let mut request = SceneRequest::new("req", "scene", SceneSource::Uri { uri: path.to_str().unwrap().to_owned() });
        request.tiling = TilingOptions { tile_size_px: tile_size, overlap_px: 16, output_size_px: 96, ..Default::default() };
        let root = storage::resolve("memory://georef-tiles/tiles").unwrap();
        let config = TilerConfig { threads: 2, ..TilerConfig::default() };
        let scene = tile_scene(&request, &root, &config, Arc::new(|_| {})).await.unwrap();
        for tile in &scene.tiles {
            let t = &tile.task;
            let placed =
                TileGeoref::new(t).unwrap().georeference(&GridBox { x1: 0, y1: 0, x2: 1000, y2: 1000 }).unwrap_or_else(|e| panic!("{e}"));
            let w = &t.window;
            let window =
                [w.col_off as f64, w.row_off as f64, (w.col_off + u64::from(w.width)) as f64, (w.row_off + u64::from(w.height)) as f64];
            assert_close(&placed.scene_box, &window, 1e-9, &format!("{file} {}", t.tile_id));
            let LonLatGeometry::Polygon(ring) = &placed.lonlat else { panic!("split") };
            for corner in &t.footprint_lonlat {
                let nearest = ring.iter().map(|p| (p[0] - corner[0]).abs().max((p[1] - corner[1]).abs())).fold(f64::INFINITY, f64::min);
                assert!(nearest < 1e-9, "{file} {}: footprint corner {corner:?} is not on the box outline", t.tile_id);
            }
        }
        if file.contains("rmnp") {
            let frame = TileGeoref::new(&scene.tiles[0].task).unwrap();
            // 485 × 373 pixels at 96/512: the content is 91 × 70 of the 96 × 96 image.
            assert_eq!(frame.content_px(), (91, 70));
        }
    }
}

// ---- Footprints on the sphere (issue 17, kinds 1 and 2) ----------------------------------
//
// Scenes written here with GDAL, tiled by the tiler, and held to GDAL's `OCTTransformBounds`
// (an implementation that shares no code with Strata's tracing): the handed case (UTM 60N
// across 180°), its neighbours (UTM 1N from the other side, UTM 60S at Fiji, a scene around
// the South Pole), and one ground stored with every sign of the geotransform.

/// A one-band scene of `width × height` pixels on `geotransform` in `epsg`, all data.
fn write_scene(dir: &std::path::Path, name: &str, epsg: u32, geotransform: [f64; 6], size: usize) -> String {
    let path = dir.join(format!("{name}.tif"));
    let synthetic = common::Synthetic { width: size, height: size, bands: 1, epsg: Some(epsg), geotransform, ..Default::default() };
    synthetic.write_u16(&path, |_, c, r| (100 + c + r) as u16);
    path.to_str().unwrap().to_owned()
}

async fn tile_one(path: &str, name: &str, tile_size: u32) -> operators::tile::TiledScene {
    let mut request = SceneRequest::new("req", name, SceneSource::Uri { uri: path.to_owned() });
    request.tiling = TilingOptions { tile_size_px: tile_size, overlap_px: 0, output_size_px: 64, ..Default::default() };
    let root = storage::resolve(&format!("memory://footprints-{name}/tiles")).unwrap();
    tile_scene(&request, &root, &TilerConfig { threads: 2, ..TilerConfig::default() }, Arc::new(|_| {})).await.unwrap()
}

/// GDAL's lon/lat bounds of the scene (`xmin > xmax` across the antimeridian).
fn gdal_bounds(epsg: u32, geotransform: [f64; 6], size: usize) -> [f64; 4] {
    let mut scene = SpatialRef::from_epsg(epsg).unwrap();
    scene.set_axis_mapping_strategy(gdal::spatial_ref::AxisMappingStrategy::TraditionalGisOrder);
    let mut wgs84 = SpatialRef::from_epsg(4326).unwrap();
    wgs84.set_axis_mapping_strategy(gdal::spatial_ref::AxisMappingStrategy::TraditionalGisOrder);
    let transform = gdal::spatial_ref::CoordTransform::new(&scene, &wgs84).unwrap();
    let g = geotransform;
    let (x0, x1) = (g[0], g[0] + size as f64 * g[1]);
    let (y0, y1) = (g[3], g[3] + size as f64 * g[5]);
    transform.transform_bounds(&[x0.min(x1), y0.min(y1), x0.max(x1), y0.max(y1)], 21).unwrap()
}

/// Width of the narrowest arc of longitude holding every point (any wrapping convention).
fn circular_span(parts: &[Vec<[f64; 2]>]) -> f64 {
    let mut xs: Vec<f64> = parts.iter().flatten().map(|p| p[0].rem_euclid(360.0)).collect();
    xs.sort_by(f64::total_cmp);
    let widest_gap = xs.windows(2).map(|w| w[1] - w[0]).chain([xs[0] + 360.0 - xs[xs.len() - 1]]).fold(0.0, f64::max);
    360.0 - widest_gap
}

fn assert_drawable(parts: &[Vec<[f64; 2]>], what: &str) {
    for part in parts {
        assert_eq!(part.first(), part.last(), "{what}: ring not closed");
        assert!(signed_area(part) > 0.0, "{what}: ring is clockwise");
        assert!(part.iter().all(|p| (-180.0..=180.0).contains(&p[0]) && (-90.0..=90.0).contains(&p[1])), "{what}: {part:?}");
        // As drawn in CRS84 (no wrapping), no part is wider than the scene.
        let lons = part.iter().map(|p| p[0]);
        let planar = lons.clone().fold(f64::NEG_INFINITY, f64::max) - lons.fold(f64::INFINITY, f64::min);
        assert!(planar < 90.0 || part.iter().any(|p| p[1].abs() == 90.0), "{what}: a part spans {planar}° of longitude");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn footprints_across_the_antimeridian_stay_narrow_and_match_gdal_bounds() {
    let dir = tempfile::tempdir().unwrap();
    // (name, EPSG, geotransform): 180° lies inside each scene.
    let cases = [
        // The handed case: 100 m pixels, easting 600–700 km at ~65°N; 180° at ~641 km.
        ("utm60n", 32660, [600_000.0, 100.0, 0.0, 7_250_000.0, 0.0, -100.0]),
        // Zone 1 from the west: 180° is ~3° west of its central meridian (-177°).
        ("utm1n", 32601, [300_000.0, 120.0, 0.0, 7_250_000.0, 0.0, -120.0]),
        // Southern hemisphere, Fiji (~17°S): 180° at ~819 km easting.
        ("utm60s", 32760, [760_000.0, 120.0, 0.0, 8_150_000.0, 0.0, -120.0]),
    ];
    for (name, epsg, geotransform) in cases {
        let path = write_scene(dir.path(), name, epsg, geotransform, 1000);
        let scene = tile_one(&path, name, 512).await;
        let want = gdal_bounds(epsg, geotransform, 1000);
        assert!(want[0] > want[2], "{name}: GDAL sees no crossing: {want:?}");
        let want_width = want[2] + 360.0 - want[0];
        let parts = &scene.summary.footprint_parts;
        assert_eq!(parts.len(), 2, "{name}: the scene footprint is not cut at 180°");
        assert_drawable(parts, &format!("{name} scene"));
        // The +180 part first, then the -180 part; together the GDAL box, to the metre.
        let west_edge = parts[0].iter().map(|p| p[0]).fold(f64::INFINITY, f64::min);
        let east_edge = parts[1].iter().map(|p| p[0]).fold(f64::NEG_INFINITY, f64::max);
        let south = parts.iter().flatten().map(|p| p[1]).fold(f64::INFINITY, f64::min);
        let north = parts.iter().flatten().map(|p| p[1]).fold(f64::NEG_INFINITY, f64::max);
        assert_close(&[west_edge, south, east_edge, north], &want, 1e-3, &format!("{name} scene bounds"));
        assert!((circular_span(parts) - want_width).abs() < 1e-3, "{name}: spans {}°, GDAL {want_width}°", circular_span(parts));
        // Every tile: drawable, no wider than the scene, and a tile astride 180° is cut too.
        let mut cut_tiles = 0;
        for tile in &scene.tiles {
            let footprint = TileGeoref::new(&tile.task).unwrap().footprint().unwrap();
            let what = format!("{name} {}", tile.task.tile_id);
            assert_drawable(footprint.parts(), &what);
            assert!(circular_span(footprint.parts()) <= want_width + 1e-9, "{what}");
            cut_tiles += usize::from(matches!(footprint, LonLatGeometry::MultiPolygon(_)));
        }
        assert!(cut_tiles >= 2, "{name}: {cut_tiles} tiles cut at 180°");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scene_around_a_pole_is_one_polar_cap() {
    let dir = tempfile::tempdir().unwrap();
    // Polar stereographic (Antarctic, then Arctic), 1 km pixels, the pole at the centre.
    let geotransform = [-500_000.0, 1000.0, 0.0, 500_000.0, 0.0, -1000.0];
    for (name, epsg, pole) in [("south-pole", 3031, -90.0), ("north-pole", 3995, 90.0)] {
        let path = write_scene(dir.path(), name, epsg, geotransform, 1000);
        let scene = tile_one(&path, name, 512).await;
        let want = gdal_bounds(epsg, geotransform, 1000);
        let (want_pole, want_edge) = if pole < 0.0 { (want[1], want[3]) } else { (want[3], want[1]) };
        assert_close(&[want[0], want_pole, want[2]], &[-180.0, pole, 180.0], 1e-9, &format!("{name}: GDAL's polar bounds"));
        let parts = &scene.summary.footprint_parts;
        assert_eq!(parts.len(), 1, "{name}: a polar cap is one polygon");
        assert_drawable(parts, name);
        let ring = &parts[0];
        assert!(ring.iter().any(|p| p == &[180.0, pole]) && ring.iter().any(|p| p == &[-180.0, pole]), "{name}: not closed along the pole");
        let lats = ring.iter().map(|p| p[1]);
        let edge = if pole < 0.0 { lats.fold(f64::NEG_INFINITY, f64::max) } else { lats.fold(f64::INFINITY, f64::min) };
        assert!((edge - want_edge).abs() < 1e-3, "{name}: edge at {edge}°, GDAL {want_edge}°");
        // The pole is inside, and the area is the cap's (not the rest of the globe): GDAL reads it.
        let geometry = Geometry::from_wkb(&LonLatGeometry::Polygon(ring.clone()).to_wkb()).unwrap();
        assert!(geometry.is_valid(), "{name}: {}", geometry.wkt().unwrap());
        let mut near_pole = Geometry::empty(gdal::vector::OGRwkbGeometryType::wkbPoint).unwrap();
        near_pole.add_point_2d((0.0, pole * 0.9999));
        assert!(geometry.contains(&near_pole), "{name}");
        assert!(geometry.area() < 360.0 * 10.0, "{name}: area {} square degrees", geometry.area());
        // The four tiles each hold the pole near a corner; each is drawable.
        for tile in &scene.tiles {
            assert_drawable(TileGeoref::new(&tile.task).unwrap().footprint().unwrap().parts(), &format!("{name} {}", tile.task.tile_id));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ground_stored_with_any_geotransform_signs_has_one_counter_clockwise_footprint() {
    let dir = tempfile::tempdir().unwrap();
    // 300 × 300 px of 10 m in UTM 33N; x 400–403 km, y 5000–5003 km, stored four ways.
    let (x0, x1, y0, y1) = (400_000.0, 403_000.0, 5_000_000.0, 5_003_000.0);
    let stored = [
        ("north-up", [x0, 10.0, 0.0, y1, 0.0, -10.0]),
        ("south-up", [x0, 10.0, 0.0, y0, 0.0, 10.0]),
        ("east-to-west", [x1, -10.0, 0.0, y1, 0.0, -10.0]),
        ("both-flipped", [x1, -10.0, 0.0, y0, 0.0, 10.0]),
    ];
    let mut areas = Vec::new();
    for (name, geotransform) in stored {
        let path = write_scene(dir.path(), name, 32633, geotransform, 300);
        let scene = tile_one(&path, name, 128).await;
        let parts = &scene.summary.footprint_parts;
        assert_eq!(parts.len(), 1, "{name}");
        assert_drawable(parts, name);
        let south = parts[0].iter().map(|p| p[1]).fold(f64::INFINITY, f64::min);
        let west = parts[0].iter().map(|p| p[0]).fold(f64::INFINITY, f64::min);
        areas.push((name, signed_area(&parts[0]), west, south));
        for tile in &scene.tiles {
            let footprint = TileGeoref::new(&tile.task).unwrap().footprint().unwrap();
            assert_drawable(footprint.parts(), &format!("{name} {}", tile.task.tile_id));
        }
    }
    let (_, area, west, south) = areas[0];
    for (name, a, w, s) in &areas[1..] {
        assert!((a - area).abs() < 1e-12 && (w - west).abs() < 1e-12 && (s - south).abs() < 1e-12, "{name} differs from north-up");
    }
}
