//! `strata map` in a real browser: headless Chromium (Debian's, installed by
//! `scripts/setup.sh --tests`) opens the generated page from disk with the network cut off, and
//! the test reads what the page drew (its `data-*` report on `<body>`), checks that nothing
//! failed, and keeps a screenshot under the test's output directory.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{batch_small, data, query_json, random_model, strata, text};
use operators::{geometry::Gdal, georef::LonLatGeometry};
use tables::{
    frames::{self, Cell},
    Commit, DataFile, Tables,
};

/// One detection on the first tile of `scene`, as the merge stage writes them: the middle of
/// the tile's footprint. (A random model's answers never parse as boxes.)
async fn add_detection(tables: &Path, scene: &str) {
    let tile =
        &query_json(tables, &format!("SELECT request_id, scene_id, tile_id FROM tiles WHERE scene_id = '{scene}' ORDER BY tile_id"))[0];
    let ring = query_json(tables, &format!("SELECT geometry FROM tiles WHERE tile_id = '{}'", tile["tile_id"].as_str().unwrap()))[0]
        ["geometry"]
        .as_str()
        .unwrap()
        .to_owned();
    // WKT "POLYGON ((x y, ...))": the box between the footprint's 1/3 and 2/3 in lon and lat.
    let points: Vec<[f64; 2]> = ring
        .trim_start_matches("POLYGON ((")
        .trim_end_matches("))")
        .split(',')
        .map(|p| {
            let mut xy = p.split_whitespace().map(|v| v.parse::<f64>().unwrap());
            [xy.next().unwrap(), xy.next().unwrap()]
        })
        .collect();
    let (lo, hi) =
        (|i: usize| points.iter().map(|p| p[i]).fold(f64::MAX, f64::min), |i: usize| points.iter().map(|p| p[i]).fold(f64::MIN, f64::max));
    let at = |i: usize, f: f64| lo(i) + (hi(i) - lo(i)) * f;
    let wkb = LonLatGeometry::Polygon(vec![
        [at(0, 0.33), at(1, 0.33)],
        [at(0, 0.66), at(1, 0.33)],
        [at(0, 0.66), at(1, 0.66)],
        [at(0, 0.33), at(1, 0.66)],
        [at(0, 0.33), at(1, 0.33)],
    ])
    .to_wkb();
    let s = |v: &serde_json::Value| Cell::Str(v.as_str().unwrap().to_owned());
    let now = chrono::Utc::now();
    let mut row =
        vec![s(&tile["request_id"]), s(&tile["scene_id"]), s(&tile["tile_id"]), Cell::Str("detect".into()), Cell::Str("tiny-1".into())];
    row.extend([Cell::Str("ship".into()), Cell::U32(0), Cell::Str("ship".into())]);
    row.extend([10.0, 10.0, 30.0, 30.0, 100.0, 100.0, 120.0, 120.0].map(Cell::F64));
    row.extend([Cell::Geometry(wkb), Cell::F32(0.87), Cell::List(vec![tile["tile_id"].as_str().unwrap().to_owned()])]);
    row.extend([Cell::List(Vec::new()), Cell::U32(0), Cell::Time(now), Cell::Date(now.date_naive())]);
    let mut frame = frames::frame(&schemas::tables::DETECTIONS, &[row]).unwrap();
    // Another writer's commit to the same table: the map reads it like the sink's own.
    let date = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    let file = DataFile::encode(&schemas::tables::DETECTIONS, &mut frame, &Gdal, date, "extra", "ship").unwrap();
    let store = Tables::new(storage::resolve(tables.to_str().unwrap()).unwrap());
    store.commit(&Commit { files: vec![file], replaces: Vec::new() }, &Gdal).await.unwrap();
}

/// Headless Chromium with no network: every host unresolvable, every proxy connection refused.
fn chromium(args: &[&str], page: &Path) -> std::process::Output {
    let browser =
        ["chromium", "chromium-browser"].into_iter().find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()));
    let browser = browser.expect("Chromium is missing: run `bash scripts/setup.sh --tests` (Debian package chromium)");
    let profile = tempfile::tempdir().unwrap();
    Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage", "--disable-extensions"])
        .args(["--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=10000", "--window-size=1200,900"])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap()
}

/// `data-NAME="..."` of the rendered `<body>`.
fn body_attribute(dom: &str, name: &str) -> Option<String> {
    let body = &dom[dom.find("<body")?..];
    let body = &body[..body.find('>')?];
    let start = body.find(&format!("data-{name}=\""))? + name.len() + 7;
    Some(body[start..start + body[start..].find('"')?].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_opens_from_disk_without_network_and_draws_every_layer() {
    let work = tempfile::tempdir().unwrap();
    let model = random_model(work.path(), "tiny-1");
    let (tables, tiles) = (work.path().join("tables"), work.path().join("tiles"));
    let scene = data("scenes/rmnp-rgb.tif");
    let tasks = ["--caption", "--classify", "forest,water,urban", "--vqa", "Is there a road?"];
    let out = batch_small(&model, &tables, &tiles, &tasks, &[&scene]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    add_detection(&tables, "rmnp-rgb").await;
    let n_tiles = query_json(&tables, "SELECT count(*) AS n FROM tiles")[0]["n"].as_u64().unwrap();
    assert!(n_tiles > 1);

    let page = work.path().join("map.html");
    let out = strata(&["map", "--tables", tables.to_str().unwrap(), "--out", page.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(summary.contains(&format!("1 scene, {n_tiles} tiles ({n_tiles} images)")) && summary.contains("1 detection,"), "{summary}");
    let html = std::fs::read_to_string(&page).unwrap();
    // Nothing to fetch: no remote script, image or stylesheet (Leaflet's attribution is a plain
    // link, not a load). The browser run below has no network and fails on any failed load.
    for load in ["src=\"http", "<link", "url(http", "@import"] {
        assert!(!html.contains(load), "the page loads `{load}...`");
    }

    let dumped = chromium(&["--dump-dom"], &page);
    let dom = text(&dumped.stdout);
    let log = text(&dumped.stderr);
    assert_eq!(body_attribute(&dom, "ready").as_deref(), Some("true"), "the page's script did not finish:\n{log}");
    assert_eq!(body_attribute(&dom, "errors").as_deref(), Some(""), "script errors");
    let complaints: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("ERR_")).collect();
    assert!(complaints.is_empty(), "browser console:\n{}", complaints.join("\n"));
    // Scenes, tile images, tiles, captions, classes, VQA, detections: one layer each.
    assert_eq!(body_attribute(&dom, "layers").as_deref(), Some("7"));
    let features: u64 = body_attribute(&dom, "features").unwrap().parse().unwrap();
    assert_eq!(features, 1 + 5 * n_tiles + 1, "1 scene, per tile an image, an outline, a caption, a class and an answer, 1 detection");
    assert!(dom.contains("Labels") && dom.contains("ship"), "the legend names the detection label");

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("map");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("the_map_opens_from_disk.png");
    let _ = std::fs::remove_file(&shot);
    let taken = chromium(&[&format!("--screenshot={}", shot.display())], &page);
    let png = std::fs::read(&shot).unwrap_or_else(|_| panic!("no screenshot:\n{}", text(&taken.stderr)));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a screenshot of a drawn map ({} bytes)", png.len());
    println!("screenshot: {}", shot.display());
}

#[test]
fn a_map_of_nothing_is_refused_with_a_hint() {
    let work = tempfile::tempdir().unwrap();
    let out =
        strata(&["map", "--tables", work.path().join("empty").to_str().unwrap(), "--out", work.path().join("m.html").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("does not exist") && stderr.contains("hint:"), "{stderr}");
    assert!(!work.path().join("m.html").exists());
    // Tables that exist but hold no tile.
    std::fs::create_dir_all(work.path().join("empty")).unwrap();
    let out =
        strata(&["map", "--tables", work.path().join("empty").to_str().unwrap(), "--out", work.path().join("m.html").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no tiles") && text(&out.stderr).contains("hint:"), "{}", text(&out.stderr));
}
