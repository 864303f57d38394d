//! The tiling stage on real and synthetic scenes: georeference against GDAL's own numbers,
//! coverage at the edges, nodata skipping, one stretch for all tiles, and refusal of scenes
//! that can never be tiled.

mod common;

use std::{collections::HashMap, process::Command, sync::Arc};

use common::{data, decode_png, write_f32, write_i16, Synthetic};
use object_store::ObjectStoreExt;
use operators::{
    storage::{self, Location},
    tile::{tile_scene, TileEvent, TiledScene, TilerConfig},
    ErrorClass, OperatorError,
};
use schemas::{SceneRequest, SceneSource, TilingOptions};

fn request(scene_id: &str, uri: &str, tiling: TilingOptions) -> SceneRequest {
    let mut request = SceneRequest::new("req-test", scene_id, SceneSource::Uri { uri: uri.to_owned() });
    request.tiling = tiling;
    request
}

fn tiling(tile: u32, overlap: u32, output: u32) -> TilingOptions {
    TilingOptions { tile_size_px: tile, overlap_px: overlap, output_size_px: output, ..Default::default() }
}

fn memory_root(name: &str) -> Location {
    storage::resolve(&format!("memory://{name}/tiles")).unwrap()
}

async fn tile(request: &SceneRequest, root: &Location) -> Result<TiledScene, OperatorError> {
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let progress = Arc::new(move |e: TileEvent| sink.lock().unwrap().push(e));
    let result = tile_scene(request, root, &TilerConfig { threads: 2, ..TilerConfig::default() }, progress).await;
    if let Ok(scene) = &result {
        // Progress accounts for every window exactly once.
        let events = events.lock().unwrap();
        let windows = events.iter().filter(|e| matches!(e, TileEvent::Window { .. })).count() as u64;
        assert_eq!(windows, scene.summary.tiles_written + scene.summary.tiles_skipped_nodata);
    }
    result
}

/// gdalinfo's lon/lat corners (upper left, lower left, lower right, upper right).
fn gdalinfo_corners(path: &std::path::Path) -> Vec<[f64; 2]> {
    let out = Command::new("gdalinfo").arg("-json").arg(path).output().expect("gdalinfo (gdal-bin) is installed by setup");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    info["wgs84Extent"]["coordinates"][0]
        .as_array()
        .unwrap()
        .iter()
        .take(4)
        .map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()])
        .collect()
}

fn assert_close(got: [f64; 2], want: [f64; 2], what: &str) {
    assert!((got[0] - want[0]).abs() < 1e-6 && (got[1] - want[1]).abs() < 1e-6, "{what}: got {got:?}, gdalinfo says {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn footprints_agree_with_gdalinfo_corners() {
    // A projected Landsat scene (UTM south), a geographic one, and a rotated geotransform.
    for (file, tile_size) in [("scenes/L7_ETMs.tif", 128), ("scenes/rmnp-rgb.tif", 200), ("fixtures/geomatrix.tif", 8)] {
        let path = data(file);
        let scene = tile(&request("scene", path.to_str().unwrap(), tiling(tile_size, 16, 64)), &memory_root("footprints"))
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let corners = gdalinfo_corners(&path);
        let ring = &scene.summary.footprint_lonlat;
        for (i, name) in ["upper left", "lower left", "lower right", "upper right"].iter().enumerate() {
            assert_close(ring[i], corners[i], &format!("{file} scene {name}"));
        }
        // The first tile starts at the scene's upper-left corner and the last ends at its
        // lower-right corner.
        let first = &scene.tiles.first().unwrap().task;
        let last = &scene.tiles.last().unwrap().task;
        assert_close(first.footprint_lonlat[0], corners[0], &format!("{file} first tile upper left"));
        assert_close(last.footprint_lonlat[2], corners[2], &format!("{file} last tile lower right"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_sized_scenes_are_covered_to_the_last_pixel() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.tif");
    let synthetic = Synthetic { width: 1001, height: 777, bands: 1, ..Default::default() };
    synthetic.write_u16(&path, |_, c, r| (c + r) as u16 + 1);
    let scene = tile(&request("odd", path.to_str().unwrap(), tiling(256, 32, 128)), &memory_root("odd")).await.unwrap();
    assert_eq!(scene.summary.tiles_skipped_nodata, 0);
    // Columns: 0, 224, 448, 672, 745 (pulled back); rows: 0, 224, 448, 521.
    assert_eq!(scene.tiles.len(), 5 * 4);
    let mut covered = vec![false; 1001 * 777];
    for t in &scene.tiles {
        let w = t.task.window;
        assert!(w.col_off + u64::from(w.width) <= 1001 && w.row_off + u64::from(w.height) <= 777);
        for r in w.row_off..w.row_off + u64::from(w.height) {
            for c in w.col_off..w.col_off + u64::from(w.width) {
                covered[(r * 1001 + c) as usize] = true;
            }
        }
    }
    assert!(covered.iter().all(|&c| c), "some pixel is not in any tile");
    let last = &scene.tiles.last().unwrap().task;
    assert_eq!((last.window.col_off + 256, last.window.row_off + 256), (1001, 777));
    assert_eq!(last.tile_id, "r0003_c0004");
    // Tile geotransforms place tile pixels where the scene's are: tile pixel (0,0) of the
    // last tile is scene pixel (745, 521).
    let (x, y) = last.geotransform.apply(0.0, 0.0);
    assert_eq!((x, y), (500_000.0 + 745.0 * 10.0, 5_800_000.0 - 521.0 * 10.0));
    assert_eq!(last.geotransform.0[1], 10.0 * 256.0 / 128.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_without_data_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half-empty.tif");
    let synthetic = Synthetic { width: 600, height: 600, bands: 3, nodata: Some(0.0), ..Default::default() };
    // Data only in the left 300 columns.
    synthetic.write_u16(&path, |_, c, r| if c < 300 { 1000 + (r % 50) as u16 } else { 0 });
    let root = memory_root("nodata");
    let scene = tile(&request("half", path.to_str().unwrap(), tiling(256, 0, 256)), &root).await.unwrap();
    // Columns 0, 256, 344: the window at 344 holds no data in any of the 3 rows.
    assert_eq!(scene.summary.tiles_skipped_nodata, 3);
    assert_eq!(scene.summary.tiles_written, 6);
    let partial: Vec<_> = scene.tiles.iter().filter(|t| t.task.window.col_off == 256).collect();
    assert_eq!(partial.len(), 3);
    for t in partial {
        assert!((t.valid_fraction - 44.0 / 256.0).abs() < 1e-6, "{}", t.valid_fraction);
    }
    // Skipped tiles are not written; written ones are.
    let listed = root.store().list_with_delimiter(Some(&root.join("req-test/half").path().clone())).await.unwrap();
    assert_eq!(listed.objects.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stretch_applies_identically_to_every_tile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gradient.tif");
    let synthetic = Synthetic { width: 700, height: 256, bands: 3, ..Default::default() };
    synthetic.write_u16(&path, |b, c, _| (1000 + c * 40 + b * 7) as u16);
    let root = memory_root("stretch");
    // Output size equals tile size: no resampling, so pixels compare exactly.
    let scene = tile(&request("gradient", path.to_str().unwrap(), tiling(256, 64, 256)), &root).await.unwrap();
    let mut pixels_by_column: HashMap<u64, Vec<[u8; 3]>> = HashMap::new();
    for t in &scene.tiles {
        let location = storage::resolve(&t.task.tile.uri).unwrap();
        let bytes = location.store().get(location.path()).await.unwrap().bytes().await.unwrap();
        let (w, h, rgb) = decode_png(&bytes);
        assert_eq!((w, h), (256, 256));
        for col in 0..u64::from(t.task.window.width) {
            let i = (10 * 256 + col as usize) * 3; // row 10
            pixels_by_column.entry(t.task.window.col_off + col).or_default().push([rgb[i], rgb[i + 1], rgb[i + 2]]);
        }
    }
    let shared: Vec<_> = pixels_by_column.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(shared.len() >= 64, "tiles should overlap");
    for (col, values) in shared {
        assert!(values.windows(2).all(|p| p[0] == p[1]), "scene column {col} renders differently across tiles: {values:?}");
    }
    // The stretch spans the scene: the left edge is dark and the right edge bright.
    assert!(pixels_by_column[&0][0][0] < 10 && pixels_by_column[&699][0][0] > 245);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenes_that_cannot_be_tiled_are_refused_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let root = memory_root("bad");
    let no_crs = dir.path().join("no-crs.tif");
    Synthetic { width: 64, height: 64, epsg: None, ..Default::default() }.write_u16(&no_crs, |_, c, _| c as u16);
    let bomb = dir.path().join("bomb.tif");
    Synthetic {
        width: 300_000,
        height: 300_000,
        bands: 1,
        options: vec!["TILED=YES", "BLOCKXSIZE=4096", "BLOCKYSIZE=4096", "SPARSE_OK=TRUE", "COMPRESS=DEFLATE", "BIGTIFF=YES"],
        ..Default::default()
    }
    .create_u16(&bomb);
    let text = dir.path().join("notes.tif");
    std::fs::write(&text, "this is not a raster\n").unwrap();
    let empty = dir.path().join("empty.tif");
    std::fs::write(&empty, b"").unwrap();
    let missing = dir.path().join("missing.tif");
    let cases: Vec<(&std::path::Path, &str)> = vec![
        (&no_crs, "no coordinate reference system"),
        (&text, "is not a raster GDAL can read"),
        (&empty, "is empty (0 bytes)"),
        (&missing, "not found"),
    ];
    for (path, expected) in cases {
        let err = tile(&request("bad", path.to_str().unwrap(), TilingOptions::default()), &root).await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains(expected), "{}: {message}", path.display());
        assert!(message.contains(path.file_name().unwrap().to_str().unwrap()), "message does not name the file: {message}");
        assert_eq!(err.class(), ErrorClass::Permanent, "{message}");
    }
    // A 90-gigapixel header in a tiny file is refused before any pixel is read; the bomb
    // would need 180 GB of memory to decode whole.
    assert!(std::fs::metadata(&bomb).unwrap().len() < 10 << 20);
    let err = tile(&request("bomb", bomb.to_str().unwrap(), TilingOptions::default()), &root).await.unwrap_err();
    assert!(err.to_string().contains("90.0 gigapixels"), "{err}");
    // Bands that do not exist are named.
    let err = tile(
        &request(
            "bands",
            data("scenes/rmnp-rgb.tif").to_str().unwrap(),
            TilingOptions { bands: Some(vec![4, 3, 2]), ..Default::default() },
        ),
        &root,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("band 4 was requested but"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_and_float_single_band_scenes_render_as_grey() {
    let dir = tempfile::tempdir().unwrap();
    let root = memory_root("dtypes");
    // An elevation-like i16 band with negative values.
    let dem = dir.path().join("dem.tif");
    write_i16(&dem, 300, 200, |c, _| c as i16 * 10 - 1500);
    // A reflectance-like f32 band whose left third is NaN (no data).
    let refl = dir.path().join("reflectance.tif");
    write_f32(&refl, 300, 200, Some(f64::NAN), |c, r| if c < 100 { f32::NAN } else { (c + r) as f32 / 500.0 });
    for (path, dtype, valid) in [(&dem, "Int16", 1.0f32), (&refl, "Float32", 2.0 / 3.0)] {
        let scene = tile(&request("grey", path.to_str().unwrap(), tiling(300, 0, 300)), &root).await.unwrap();
        assert_eq!(scene.summary.dtype, dtype);
        assert_eq!(scene.tiles.len(), 1);
        assert!((scene.tiles[0].valid_fraction - valid).abs() < 0.01, "{dtype}: {}", scene.tiles[0].valid_fraction);
        let location = storage::resolve(&scene.tiles[0].task.tile.uri).unwrap();
        let bytes = location.store().get(location.path()).await.unwrap().bytes().await.unwrap();
        let (_, _, rgb) = decode_png(&bytes);
        let pixel = |c: usize, r: usize| &rgb[(r * 300 + c) * 3..(r * 300 + c) * 3 + 3];
        // Grey: the one band feeds all three channels; the stretch spans the values.
        assert!(pixel(250, 100).iter().all(|&v| v == pixel(250, 100)[0]));
        assert!(pixel(290, 190)[0] > 240, "{dtype}: bright end {:?}", pixel(290, 190));
        if dtype == "Float32" {
            assert_eq!(pixel(50, 100), [0, 0, 0], "NaN pixels stay black");
        } else {
            assert!(pixel(2, 100)[0] < 15, "dark end {:?}", pixel(2, 100));
        }
    }
}
