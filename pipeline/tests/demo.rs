//! The README's first command, shortened: `scripts/demo.sh --quick` runs the same steps as the
//! full demo (index, synth data, training, held-out evaluation, registry, batch over a real
//! and a generated scene with every task, summary, map) with fewer training steps and one scene
//! of each kind. The test checks what a user would look at afterwards: the tables.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

mod common;

use std::{path::Path, process::Command};

use common::{query_json, strata, text};

/// `POLYGON ((x y, ...))` as points.
fn ring(wkt: &str) -> Vec<[f64; 2]> {
    assert!(wkt.starts_with("POLYGON ((") && wkt.ends_with("))"), "not a polygon: {wkt}");
    wkt.trim_start_matches("POLYGON ((")
        .trim_end_matches("))")
        .split(',')
        .map(|p| {
            let xy: Vec<f64> = p.split_whitespace().map(|v| v.parse().unwrap()).collect();
            assert_eq!(xy.len(), 2, "a point of {wkt}");
            [xy[0], xy[1]]
        })
        .collect()
}

fn bounds(points: &[[f64; 2]]) -> [f64; 4] {
    let fold = |i: usize, f: fn(f64, f64) -> f64, start: f64| points.iter().map(|p| p[i]).fold(start, f);
    [fold(0, f64::min, f64::MAX), fold(1, f64::min, f64::MAX), fold(0, f64::max, f64::MIN), fold(1, f64::max, f64::MIN)]
}

#[test]
fn the_quick_demo_fills_every_table_through_the_registry_served_model() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = tempfile::tempdir().unwrap();
    // A folder name with a space, `|` and `&`: the demo's cache key and every path it builds
    // must take any name a user gives.
    let out = work.path().join("demo | A&B");
    let cache = std::env::var("STRATA_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/strata"));
    let run = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .args(["--quick", "--out"])
        .arg(&out)
        .env("STRATA_BIN", env!("CARGO_BIN_EXE_strata"))
        // Its own cache, so the model is trained here and not reused from an earlier run; the
        // setup's assets (encoder, descriptions, Leaflet) stay where setup put them.
        .env("STRATA_CACHE", work.path().join("cache"))
        .env("STRATA_ASSETS", cache.join("assets"))
        .env_remove("STRATA_DEMO_OUT")
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert!(run.status.success(), "the demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    for step in ["[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"] {
        assert!(stderr.contains(step), "step {step} missing:\n{stderr}");
    }
    assert!(stdout.contains("generated scenes: ") && stdout.contains("done in "), "{stdout}");

    // The model the batch ran is the one the registry serves, and it carries its evaluation.
    let listed = strata(&["model", "list", "--registry", out.join("registry").to_str().unwrap(), "--format", "json"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let registry: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let serving = registry["serving"]["version"].as_str().unwrap().to_owned();
    let lineage = &registry["versions"][0];
    assert_eq!(lineage["version"], serving.as_str());
    assert!(lineage["metrics"].as_object().is_some_and(|m| m.keys().any(|k| k.starts_with("aid "))), "{lineage}");
    // Detection is measured both ways: AP where the label is (when the six quick samples hold
    // one), false detections where it is not.
    for key in ["dior-det parse failures", "dior-det false detections per image without the label"] {
        assert!(lineage["metrics"][key].is_number(), "{key} missing: {lineage}");
    }
    assert!(stdout.contains("generated scenes, ship: ") && stdout.contains("per tile)"), "{stdout}");
    // The retriever's tower was trained first, and its held-out recall@5 did not fall.
    let recall = |when: &str| lineage["metrics"][format!("retriever recall@5 ({when} training)")].as_f64();
    assert!(recall("after").unwrap() >= recall("before").unwrap(), "{lineage}");
    assert!(out.join("retriever/retriever.json").is_file(), "the tower the batch retrieved with");

    // Both scenes, every tile answered by that version, none failed.
    let tables = out.join("tables");
    let scenes = query_json(&tables, "SELECT scene_id, tiles_written, tiles_failed, model_version, geometry FROM scenes ORDER BY scene_id");
    let ids: Vec<&str> = scenes.iter().map(|s| s["scene_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["rmnp-rgb", "synth-scene-1-0"]);
    let mut tiles_total = 0;
    for scene in &scenes {
        assert_eq!(scene["tiles_failed"], 0, "{scene}");
        assert_eq!(scene["model_version"], serving.as_str(), "{scene}");
        tiles_total += scene["tiles_written"].as_u64().unwrap();
    }
    assert_eq!(tiles_total, 9 + 9, "a 3 x 3 grid of 192-pixel windows on rmnp-rgb, 3 x 3 renders in the generated scene");

    // A row for every task on every tile: a class (or a null label), a caption, two answers.
    let count = |table: &str| query_json(&tables, &format!("SELECT count(*) AS n FROM {table}"))[0]["n"].as_u64().unwrap();
    assert_eq!(count("classifications"), tiles_total);
    assert_eq!(count("captions"), tiles_total);
    assert_eq!(count("vqa"), 2 * tiles_total);
    assert_eq!(count("tiles"), tiles_total);

    // Detections: polygons in lon/lat, each inside the footprint of the scene it was found in.
    let detections = query_json(
        &tables,
        "SELECT d.scene_id, d.label, d.score, d.geometry, s.geometry AS footprint FROM detections d \
         JOIN scenes s ON d.scene_id = s.scene_id",
    );
    assert!(!detections.is_empty(), "no detections; the demo detects ships and storage tanks on every tile");
    for detection in &detections {
        assert!(["ship", "storage tank"].contains(&detection["label"].as_str().unwrap()), "{detection}");
        let score = detection["score"].as_f64().unwrap();
        assert!(score > 0.0 && score <= 1.0, "{detection}");
        let points = ring(detection["geometry"].as_str().unwrap());
        // A box's edges are densified (it is a curved quadrilateral in lon/lat), and closed.
        assert!(points.len() >= 5 && points.first() == points.last(), "not a closed ring: {detection}");
        let [x1, y1, x2, y2] = bounds(&points);
        assert!(x2 > x1 && y2 > y1, "an empty box: {detection}");
        let [fx1, fy1, fx2, fy2] = bounds(&ring(detection["footprint"].as_str().unwrap()));
        let eps = 1e-9;
        assert!(x1 >= fx1 - eps && x2 <= fx2 + eps && y1 >= fy1 - eps && y2 <= fy2 + eps, "outside its scene: {detection}");
    }

    // The summary of each scene counts what the tables hold.
    let summary = query_json(&tables, "SELECT scene_id, tiles_per_task, detections_per_label FROM scenes");
    for scene in &summary {
        let per_task: serde_json::Value = serde_json::from_str(scene["tiles_per_task"].as_str().unwrap()).unwrap();
        for task in ["caption", "classify", "vqa", "detect"] {
            assert!(per_task[task].as_u64().is_some_and(|n| n > 0), "{task} missing from {scene}");
        }
        let per_label: serde_json::Value = serde_json::from_str(scene["detections_per_label"].as_str().unwrap()).unwrap();
        let in_table: u64 = detections.iter().filter(|d| d["scene_id"] == scene["scene_id"]).count() as u64;
        assert_eq!(per_label.as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum::<u64>(), in_table, "{scene}");
    }

    // The map the demo points at.
    let map = std::fs::read_to_string(out.join("map.html")).unwrap();
    assert!(map.contains("synth-scene-1-0") && map.contains("rmnp-rgb"));
}
