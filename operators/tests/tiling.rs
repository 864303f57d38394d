//! The tiling stage on real and synthetic scenes: georeference against GDAL's own numbers,
//! coverage at the edges, nodata skipping, one stretch for all tiles, and refusal of scenes
//! that can never be tiled.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

mod common;

use std::{collections::HashMap, process::Command, sync::Arc};

use common::{data, decode_png, write_f32, write_i16, Synthetic};
use object_store::ObjectStoreExt;
use operators::{
    tile::{tile_scene, TileEvent, TiledScene, TilerConfig},
    ErrorClass, OperatorError,
};
use schemas::{SceneRequest, SceneSource, TilingOptions};
use storage::Location;

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

/// A scene that fails part-way (a block in its middle cannot be decoded, while its header and
/// its last block can) is refused as a whole and leaves no tile image behind that no table
/// would record; a file cut short is named as truncated before any tile is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scene_that_fails_part_way_leaves_no_tile_images() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.tif");
    // Noise does not compress: the file is mostly block data, so its middle is a block's.
    let synthetic = Synthetic { width: 1024, height: 1024, bands: 3, ..Default::default() };
    synthetic.write_u16(&path, |b, c, r| ((c * 7919 + r * 104_729 + b * 13) % 65_521) as u16 ^ ((c * r) as u16));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    for (i, byte) in bytes[middle..middle + 4096].iter_mut().enumerate() {
        *byte = (i * 31 % 251) as u8;
    }
    let corrupt = dir.path().join("corrupt-middle.tif");
    std::fs::write(&corrupt, &bytes).unwrap();
    let root = memory_root("part-way");
    let err = tile(&request("corrupt-middle", corrupt.to_str().unwrap(), tiling(128, 0, 64)), &root).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    let left = root.store().list_with_delimiter(Some(&root.join("req-test/corrupt-middle").path().clone())).await.unwrap();
    assert!(left.objects.is_empty(), "{} tile image(s) left by a failed scene: {err}", left.objects.len());

    // Cut at half its length: named as truncated, nothing written.
    let half = dir.path().join("half.tif");
    std::fs::write(&half, &std::fs::read(&path).unwrap()[..middle]).unwrap();
    let err = tile(&request("half", half.to_str().unwrap(), tiling(128, 0, 64)), &root).await.unwrap_err();
    assert!(err.to_string().contains("is truncated or corrupt") && err.to_string().contains("half.tif"), "{err}");
    let left = root.store().list_with_delimiter(Some(&root.join("req-test/half").path().clone())).await.unwrap();
    assert!(left.objects.is_empty());
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

// ---- Nodata, masks and palettes (issue 17, kind 3) ---------------------------------------

async fn tile_png(uri: &str) -> (u32, u32, Vec<u8>) {
    let location = storage::resolve(uri).unwrap();
    decode_png(&location.store().get(location.path()).await.unwrap().bytes().await.unwrap())
}

/// Writes a Byte GeoTIFF of `bands` bands from `value(band, col, row)`.
fn write_u8(
    path: &std::path::Path,
    size: usize,
    bands: usize,
    nodata: Option<f64>,
    options: &[&str],
    value: impl Fn(usize, usize, usize) -> u8,
) -> gdal::Dataset {
    use gdal::{raster::Buffer, raster::RasterCreationOptions, spatial_ref::SpatialRef, DriverManager};
    let driver = DriverManager::get_driver_by_name("GTiff").unwrap();
    let options = RasterCreationOptions::from_iter(options.iter().map(|s| (*s).to_owned()));
    let mut ds = driver.create_with_band_type_with_options::<u8, _>(path, size, size, bands, &options).unwrap();
    ds.set_geo_transform(&[400_000.0, 10.0, 0.0, 5_000_000.0, 0.0, -10.0]).unwrap();
    ds.set_spatial_ref(&SpatialRef::from_epsg(32633).unwrap()).unwrap();
    for b in 1..=bands {
        let mut band = ds.rasterband(b).unwrap();
        if nodata.is_some() {
            band.set_no_data_value(nodata).unwrap();
        }
        let data: Vec<u8> = (0..size).flat_map(|r| (0..size).map(move |c| (c, r))).map(|(c, r)| value(b, c, r)).collect();
        band.write((0, 0), (size, size), &mut Buffer::new((size, size), data)).unwrap();
    }
    ds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paletted_bands_render_through_their_colour_table() {
    use gdal::raster::{ColorEntry, ColorInterpretation, ColorTable, PaletteInterpretation};
    let dir = tempfile::tempdir().unwrap();
    let root = memory_root("palette");
    let colours: [[u8; 3]; 5] = [[0, 0, 0], [0, 0, 255], [0, 128, 0], [255, 0, 0], [255, 255, 0]];
    // Four vertical stripes of classes 1–4 (the handed case); the second file also declares
    // class 0 nodata and has it in the top 32 rows.
    for (name, nodata, output) in [("landcover", None, 256u32), ("landcover-nodata", Some(0.0), 128)] {
        let path = dir.path().join(format!("{name}.tif"));
        let ds = write_u8(&path, 256, 1, nodata, &[], |_, c, r| if nodata.is_some() && r < 32 { 0 } else { (c / 64 + 1) as u8 });
        let mut band = ds.rasterband(1).unwrap();
        let mut table = ColorTable::new(PaletteInterpretation::Rgba);
        for (i, [r, g, b]) in colours.iter().enumerate() {
            table.set_color_entry(i as u16, &ColorEntry::rgba(i16::from(*r), i16::from(*g), i16::from(*b), 255));
        }
        band.set_color_table(&table);
        band.set_color_interpretation(ColorInterpretation::PaletteIndex).unwrap();
        drop(ds); // closed: the colour table is on disk
        let scene = tile(&request(name, path.to_str().unwrap(), tiling(256, 0, output)), &root).await.unwrap();
        assert_eq!(scene.tiles.len(), 1);
        let want_valid = if nodata.is_some() { 224.0 / 256.0 } else { 1.0 };
        assert!((scene.tiles[0].valid_fraction - want_valid).abs() < 1e-6, "{name}: {}", scene.tiles[0].valid_fraction);
        let (w, _, rgb) = tile_png(&scene.tiles[0].task.tile.uri).await;
        let pixel =
            |c: usize, r: usize| [rgb[(r * w as usize + c) * 3], rgb[(r * w as usize + c) * 3 + 1], rgb[(r * w as usize + c) * 3 + 2]];
        let scale = output as usize as f64 / 256.0;
        for (class, colour) in colours.iter().enumerate().skip(1) {
            let c = ((class - 1) * 64 + 32) as f64 * scale;
            assert_eq!(&pixel(c as usize, (128.0 * scale) as usize), colour, "{name}: class {class}");
        }
        // Shrunk tiles take the most common class, never a blend: every pixel is a palette
        // colour, and the nodata rows stay black.
        assert!(rgb.chunks(3).all(|p| colours.iter().any(|c| c == p)), "{name}: a colour outside the palette");
        if nodata.is_some() {
            assert_eq!(pixel(100, 5), [0, 0, 0], "{name}: nodata is black");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pixel_is_nodata_only_when_every_band_shown_is() {
    let dir = tempfile::tempdir().unwrap();
    let root = memory_root("dataset-mask");
    // Columns 0–63: collar (every band 0); 64–159: water, red 0 but green and blue data;
    // 160–255: land. Nodata 0 on every band (the handed case), then its neighbours: 2 bands
    // shown as false colour, 4 bands (RGB + NIR), and RGBA where alpha is the mask.
    let water = |b: usize, r: usize| match b {
        1 => 0,
        2 => 40 + (r % 41) as u8,
        3 => 100 + (r % 41) as u8,
        _ => 90,
    };
    let land = |b: usize, r: usize| (80 + 10 * b + 2 * (r % 41)) as u8;
    let value = |b: usize, c: usize, r: usize| {
        if c < 64 {
            0
        } else if c < 160 {
            water(b, r)
        } else {
            land(b, r)
        }
    };
    struct Case {
        name: &'static str,
        bands: usize,
        shown: Option<Vec<u32>>,
        nodata: Option<f64>,
        options: &'static [&'static str],
    }
    let cases = [
        Case { name: "rgb", bands: 3, shown: None, nodata: Some(0.0), options: &["PHOTOMETRIC=RGB"] },
        Case { name: "two-band", bands: 2, shown: Some(vec![1, 2, 2]), nodata: Some(0.0), options: &[] },
        Case { name: "rgbn", bands: 4, shown: None, nodata: Some(0.0), options: &[] },
        Case { name: "rgba", bands: 4, shown: None, nodata: None, options: &["PHOTOMETRIC=RGB", "ALPHA=YES"] },
    ];
    for case in cases {
        let path = dir.path().join(format!("{}.tif", case.name));
        let rgba = case.options.contains(&"ALPHA=YES");
        // With an alpha band the collar is transparent, whatever its colour.
        drop(write_u8(&path, 256, case.bands, case.nodata, case.options, |b, c, r| match (rgba, b) {
            (true, 4) => {
                if c < 64 {
                    0
                } else {
                    255
                }
            }
            (true, _) if c < 64 => 77,
            _ => value(b, c, r),
        }));
        let options = TilingOptions { bands: case.shown.clone(), ..tiling(256, 0, 256) };
        let scene = tile(&request(case.name, path.to_str().unwrap(), options), &root).await.unwrap();
        assert_eq!(scene.tiles.len(), 1);
        assert!((scene.tiles[0].valid_fraction - 0.75).abs() < 1e-6, "{}: valid fraction {}", case.name, scene.tiles[0].valid_fraction);
        let (_, _, rgb) = tile_png(&scene.tiles[0].task.tile.uri).await;
        let pixel = |c: usize, r: usize| [rgb[(r * 256 + c) * 3], rgb[(r * 256 + c) * 3 + 1], rgb[(r * 256 + c) * 3 + 2]];
        // (Rows where green and blue sit at the bottom of their stretch are dark by right.)
        let water_black = (0..256).filter(|&r| r % 41 >= 5 && pixel(110, r) == [0, 0, 0]).count();
        assert_eq!(water_black, 0, "{}: water pixels drawn as holes", case.name);
        assert_eq!(pixel(110, 20)[0], 0, "{}: the red band has no data in water", case.name);
        assert!(pixel(110, 40)[2] > 0, "{}: water keeps its other bands", case.name);
        assert!((0..256).all(|r| pixel(30, r) == [0, 0, 0]), "{}: the collar is a hole", case.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stretch_sees_a_thin_strip_in_an_empty_scene() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strip.tif");
    // 2048² px, nodata 0, data only in column 1000 (values rising down the scene). The reduced
    // read for the stretch (1024 px, nearest) samples odd columns only and misses it whole.
    let synthetic = Synthetic { width: 2048, height: 2048, bands: 1, nodata: Some(0.0), ..Default::default() };
    synthetic.write_u16(&path, |_, c, r| if c == 1000 { 1000 + (r / 2) as u16 } else { 0 });
    let root = memory_root("strip");
    let scene = tile(&request("strip", path.to_str().unwrap(), tiling(512, 0, 512)), &root).await.unwrap();
    assert_eq!(scene.tiles.len(), 4, "one column of tiles holds the strip");
    let mut strip = Vec::new(); // (scene row, grey)
    for t in &scene.tiles {
        let (_, _, rgb) = tile_png(&t.task.tile.uri).await;
        let col = (1000 - t.task.window.col_off) as usize;
        for r in 0..512usize {
            strip.push((t.task.window.row_off as usize + r, rgb[(r * 512 + col) * 3]));
        }
    }
    strip.sort_unstable();
    let greys: Vec<u8> = strip.iter().map(|s| s.1).collect();
    let levels = greys.iter().collect::<std::collections::BTreeSet<_>>().len();
    let (low, high) = (*greys.iter().min().unwrap(), *greys.iter().max().unwrap());
    assert!(levels >= 200 && low <= 5 && high >= 250, "{levels} grey levels from {low} to {high}");
    assert!(greys.windows(2).all(|w| w[0] <= w[1]), "the strip's gradient is not monotonic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodata_never_leaks_into_averaged_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let root = memory_root("leak");
    // A checkerboard of nodata (0) and data (1000 + column), 512² px, shrunk to 256²: each
    // output pixel averages two data pixels and two nodata pixels.
    let value = |_: usize, c: usize, r: usize| if (c + r).is_multiple_of(2) { 0 } else { 1000 + c as u16 };
    let declared = dir.path().join("declared.tif");
    Synthetic { width: 512, height: 512, bands: 1, nodata: Some(0.0), ..Default::default() }.write_u16(&declared, value);
    let undeclared = dir.path().join("undeclared.tif");
    Synthetic { width: 512, height: 512, bands: 1, ..Default::default() }.write_u16(&undeclared, value);
    // The stretch the tiler measures: the 2nd and 98th percentiles of the data.
    let mut data: Vec<f32> =
        (0..512).flat_map(|r| (0..512).map(move |c| (c, r))).filter(|(c, r)| (c + r) % 2 == 1).map(|(c, _)| 1000.0 + c as f32).collect();
    data.sort_by(f32::total_cmp);
    let at = |q: f64| data[((data.len() - 1) as f64 * q).round() as usize];
    let (low, high) = (at(0.02), at(0.98));
    let mut pngs = Vec::new();
    for (path, nodata) in [(&declared, None), (&undeclared, Some(0.0))] {
        let options = TilingOptions { nodata, ..tiling(512, 0, 256) };
        let scene = tile(&request("leak", path.to_str().unwrap(), options), &root).await.unwrap();
        assert!((scene.tiles[0].valid_fraction - 1.0).abs() < 1e-6, "{nodata:?}: {}", scene.tiles[0].valid_fraction);
        let (_, _, rgb) = tile_png(&scene.tiles[0].task.tile.uri).await;
        for col in [20usize, 128, 230] {
            // Output column `col` averages scene columns 2·col and 2·col + 1, data only.
            let mean = 1000.0 + 2.0 * col as f32 + 0.5;
            let want = ((mean - low) * 255.0 / (high - low)).clamp(0.0, 255.0);
            let got = f32::from(rgb[(100 * 256 + col) * 3]);
            assert!((got - want).abs() <= 2.0, "{nodata:?}: column {col} is {got}, data alone gives {want}");
        }
        pngs.push(rgb);
    }
    assert!(pngs[0] == pngs[1], "declaring nodata in the file or with --nodata renders differently");
}

// ---- Relative STAC hrefs (issue 17, kind 6) -----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stac_hrefs_resolve_against_the_item_in_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("visual.tif");
    Synthetic { width: 64, height: 64, ..Default::default() }.write_u16(&path, |b, c, r| (100 * b + c + r) as u16);
    let bytes = bytes::Bytes::from(std::fs::read(&path).unwrap());
    // An S3 bucket (served from memory, so that its keys go through the S3 URL path) and a
    // memory store; a local folder works by the same rule (see `storage::resolve_href`).
    storage::register_store("s3://ard-href", Arc::new(object_store::memory::InMemory::new())).unwrap();
    let items = [
        ("s3://ard-href/sample-001/10/2024-05-01/item.json", "./visual.tif", "s3://ard-href/sample-001/10/2024-05-01/visual.tif"),
        ("s3://ard-href/sample-001/10/2024-05-01/item.json", "../shared/./visual.tif", "s3://ard-href/sample-001/10/shared/visual.tif"),
        ("memory://stac-href/items/one/item.json", "../two/visual.tif", "memory://stac-href/items/two/visual.tif"),
        ("memory://stac-href/items/one/item.json", "visual.tif", "memory://stac-href/items/one/visual.tif"),
    ];
    for (i, (item_uri, href, want)) in items.iter().enumerate() {
        let target = storage::resolve(want).unwrap();
        target.store().put(target.path(), bytes.clone().into()).await.unwrap();
        let item: schemas::stac::StacItem = serde_json::from_value(serde_json::json!({
            "type": "Feature", "stac_version": "1.0.0", "id": format!("item-{i}"), "properties": {"datetime": null},
            "assets": {"visual": {"href": href, "roles": ["visual"]}}
        }))
        .unwrap();
        let source = SceneSource::StacItem { item: Box::new(item), base_uri: Some((*item_uri).to_owned()) };
        let mut request = SceneRequest::new("req-test", format!("item-{i}"), source);
        request.tiling = tiling(64, 0, 64);
        let scene = tile(&request, &memory_root("stac-href-tiles")).await.unwrap_or_else(|e| panic!("{href} against {item_uri}: {e}"));
        assert_eq!(&scene.summary.source_uri, want, "{href} against {item_uri}");
        assert_eq!(scene.tiles.len(), 1);
    }
}
