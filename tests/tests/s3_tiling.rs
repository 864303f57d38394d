//! Tiling straight from a real S3 server (moto): a COG is read by byte ranges, never
//! downloaded whole, and tiles and tables are written back to S3.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

use std::sync::Arc;

use object_store::{path::Path, ObjectStoreExt, PutPayload};
use operators::gdal::{
    raster::{Buffer, RasterCreationOptions},
    spatial_ref::SpatialRef,
    DriverManager,
};
use operators::{
    gdal,
    tile::{tile_scene, TilerConfig},
    vsi::VsiFile,
};
use schemas::{SceneRequest, SceneSource, TilingOptions};
use storage::Location;
use strata_e2e::S3Server;
use tables::{query, Tables};

/// A 2048² 3-band u16 COG with 256 px blocks and overviews, as satellite COGs are laid out.
fn make_cog(dir: &std::path::Path) -> Vec<u8> {
    let (size, bands) = (2048usize, 3usize);
    let mem = DriverManager::get_driver_by_name("MEM").unwrap();
    let mut ds = mem.create_with_band_type::<u16, _>("", size, size, bands).unwrap();
    ds.set_geo_transform(&[400_000.0, 10.0, 0.0, 5_000_000.0, 0.0, -10.0]).unwrap();
    ds.set_spatial_ref(&SpatialRef::from_epsg(32632).unwrap()).unwrap();
    for b in 1..=bands {
        // Noise-like content so the file does not compress to nothing.
        let data: Vec<u16> = (0..size * size).map(|i| ((i as u64 * 2_654_435_761 + b as u64 * 97) >> 7) as u16 % 4000).collect();
        ds.rasterband(b).unwrap().write((0, 0), (size, size), &mut Buffer::new((size, size), data)).unwrap();
    }
    let path = dir.join("scene.tif");
    let cog = DriverManager::get_driver_by_name("COG").unwrap();
    let options = RasterCreationOptions::from_iter(["BLOCKSIZE=256".to_owned(), "COMPRESS=DEFLATE".to_owned()]);
    ds.create_copy(&cog, &path, &options).unwrap();
    std::fs::read(&path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cogs_on_s3_are_read_by_range_and_results_written_back() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("imagery").await.unwrap();
    // storage::resolve configures S3 from the standard environment, as in production. This
    // is the only test in this binary that reads it.
    for (key, value) in [
        ("AWS_ENDPOINT_URL", server.endpoint()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ] {
        std::env::set_var(key, value);
    }
    let dir = tempfile::tempdir().unwrap();
    let cog = make_cog(dir.path());
    let store = server.store("imagery").unwrap();
    store.put(&Path::from("scenes/scene.tif"), PutPayload::from(cog.clone())).await.unwrap();

    // One 256² window at full resolution touches a few blocks, not the file.
    let location = Location::new(Arc::clone(&store), "s3://imagery", Path::from("scenes/scene.tif"));
    let file = VsiFile::open(&location).await.unwrap();
    let vsi_path = file.path().to_owned();
    let window = tokio::task::spawn_blocking(move || {
        let ds = gdal::Dataset::open(&vsi_path).unwrap();
        let band = ds.rasterband(1).unwrap();
        band.read_as::<u16>((1024, 1024), (256, 256), (256, 256), None).unwrap().into_shape_and_vec().1
    })
    .await
    .unwrap();
    assert_eq!(window.len(), 256 * 256);
    let (fetched, size) = (file.bytes_fetched(), file.size());
    assert_eq!(size, cog.len() as u64);
    assert!(fetched * 10 < size, "read {fetched} of {size} bytes for one window: not a ranged read");
    assert!(file.requests() >= 2, "header and data should be separate range requests");
    drop(file);

    // The whole stage on s3:// URLs: scene in, tiles and tables out.
    let mut request = SceneRequest::new("req-s3", "scene", SceneSource::Uri { uri: "s3://imagery/scenes/scene.tif".to_owned() });
    request.tiling = TilingOptions { tile_size_px: 1024, overlap_px: 0, output_size_px: 256, ..Default::default() };
    let tiles_root = storage::resolve("s3://imagery/tiles").unwrap();
    let scene = tile_scene(&request, &tiles_root, &TilerConfig { threads: 2, ..Default::default() }, Arc::new(|_| {})).await.unwrap();
    assert_eq!(scene.tiles.len(), 4);
    assert_eq!(scene.summary.source_uri, "s3://imagery/scenes/scene.tif");
    let tile_uri = &scene.tiles[0].task.tile.uri;
    assert_eq!(tile_uri, "s3://imagery/tiles/req-s3/scene/r0000_c0000.png");
    let png = store.get(&Path::from("tiles/req-s3/scene/r0000_c0000.png")).await.unwrap().bytes().await.unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // The stretch came from the COG's overviews, so the whole scene was read about once.
    assert!(scene.summary.bytes_fetched < 2 * scene.summary.source_bytes, "{:?}", scene.summary);

    // The same scene through the embedded chain (tiles only), with the tables on S3 too.
    let tables = Tables::new(storage::resolve("s3://imagery/tables").unwrap());
    let chain = operators::runtime::Chain {
        tile: vec![operators::stages::tile::TileStage::new(tiles_root, TilerConfig { threads: 2, ..Default::default() }, Arc::new(|_| {}))],
        infer: operators::stages::infer::TilesOnly,
        merge: operators::runtime::Then::new(
            operators::stages::merge::MergeStage::default(),
            operators::stages::sink::SinkStage::new(tables.clone(), 1),
            4,
        ),
    };
    let summary = operators::runtime::run(vec![request], Vec::new(), chain, &Default::default(), ()).await;
    assert!(summary.all_ok(), "{summary:?}");
    let counted = query::run(&tables, "SELECT count(*) AS n FROM tiles").await.unwrap();
    assert_eq!(counted.column("n").unwrap().u32().unwrap().get(0), Some(4));

    // The same COG from a plain web server, read-only: `http://` URLs and STAC hrefs resolve to
    // object_store's HTTP store, which reads by range requests (moto answers path-style GETs
    // with `206 Partial Content`, as web servers and CDNs do).
    server.put_public("imagery", "public/scene.tif", &cog).await.unwrap();
    let http_url = format!("{}/imagery/public/scene.tif", server.endpoint());
    let location = storage::resolve(&http_url).unwrap();
    assert_eq!(location.url(), http_url);
    let file = VsiFile::open(&location).await.unwrap();
    let vsi_path = file.path().to_owned();
    let first = tokio::task::spawn_blocking(move || {
        let ds = gdal::Dataset::open(&vsi_path).unwrap();
        ds.rasterband(1).unwrap().read_as::<u16>((1024, 1024), (256, 256), (256, 256), None).unwrap().into_shape_and_vec().1
    })
    .await
    .unwrap();
    assert_eq!(first, window, "the same pixels as through S3");
    assert!(file.bytes_fetched() * 10 < file.size(), "read {} of {} bytes over HTTP: not a ranged read", file.bytes_fetched(), file.size());
    drop(file);
    let item: schemas::stac::StacItem = serde_json::from_value(serde_json::json!({
        "type": "Feature", "stac_version": "1.0.0", "id": "web-item", "properties": {},
        "assets": {"visual": {"href": http_url, "roles": ["visual"]}}
    }))
    .unwrap();
    for (scene_id, source) in [
        ("web", SceneSource::Uri { uri: http_url.clone() }),
        (
            "web-item",
            SceneSource::StacItem { item: Box::new(item), base_uri: Some("https://catalog.invalid/items/web-item.json".to_owned()) },
        ),
    ] {
        let mut request = SceneRequest::new("req-http", scene_id, source);
        request.tiling = TilingOptions { tile_size_px: 1024, overlap_px: 0, output_size_px: 256, ..Default::default() };
        let tiles = storage::resolve("s3://imagery/tiles").unwrap();
        let scene = tile_scene(&request, &tiles, &TilerConfig { threads: 2, ..Default::default() }, Arc::new(|_| {})).await.unwrap();
        assert_eq!(scene.tiles.len(), 4, "{scene_id}");
        assert_eq!(scene.summary.source_uri, http_url, "{scene_id}");
    }
    // Nothing there: a missing object is named, not retried for minutes.
    let missing = format!("{}/imagery/public/none.tif", server.endpoint());
    let Err(err) = VsiFile::open(&storage::resolve(&missing).unwrap()).await else { panic!("{missing} opened") };
    assert!(err.to_string().contains("none.tif") && err.class() == operators::ErrorClass::Permanent, "{err}");
}
