//! The result tables at scale, for `benches/tables/compare.sh`, which runs it side by side with
//! the layout before Delta Lake and with DuckDB on the same tables.
//!
//! Usage (cargo bench -p operators --bench tables -- ...):
//!   write delta|old ROOT SCENES [TILES] [GROUP]   generated scenes through the sink stage as the
//!                                                 merge role writes them (delta), or one file per
//!                                                 scene and table as Strata wrote before (old)
//!   compact ROOT [TARGET_MIB]                     `strata tables compact`'s work, no vacuum
//!   query delta|old ROOT SQL                      one query, as `strata query` runs it (delta) or
//!                                                 as it ran before (old: list every file, read
//!                                                 each whole, then SQL)
//! Each prints one JSON line: what it did, seconds, peak RSS.

use std::time::Instant;

use chrono::{Duration, TimeZone as _, Utc};
use futures::TryStreamExt as _;
use object_store::{ObjectStoreExt as _, PutPayload};
use operators::{
    geometry::Gdal,
    merge::MergeConfig,
    rows,
    stage::{Ack, Collector, Envelope, Position, Stage as _},
    stages::{merge::merge_scene, sink::SinkStage},
};
use schemas::{
    Crs, GeoTransform, GridBox, ObjectRef, PixelWindow, RasterSize, RetrievedDescription, SceneTiled, SinkMessage, StageTimings,
    TaskAnswer, TaskOutput, TaskSpec, TileResult, TileTask, SCHEMA_VERSION,
};
use tables::{DataFile, Tables};

fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    usage.ru_maxrss as f64 / 1024.0
}

/// WGS 84 as GDAL writes it (the georeference of the generated tiles).
const WGS84: &str = r#"GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]"#;

const CLASSES: [&str; 6] = ["farmland", "forest", "lake", "residential", "harbor", "industrial"];

/// Scene `i` of the generated feed: `tiles` tiles of 512 px on a 4-tile-wide grid somewhere
/// in Europe, one request per day (scenes spread over 30 days), every task answered, one ship
/// on every fifth tile.
fn scene(i: usize, tiles: usize) -> schemas::SceneResults {
    let day = i % 30;
    let submitted = Utc.with_ymd_and_hms(2026, 3, 1, 6, 0, 0).single().unwrap_or_default() + Duration::days(day as i64);
    let (request, scene_id) = (format!("feed-2026-03-{:02}", day + 1), format!("S2-{i:06}"));
    let (lon0, lat0) = (-5.0 + (i % 200) as f64 * 0.1, 40.0 + (i / 200 % 100) as f64 * 0.1);
    let per_row = 4;
    let size = RasterSize { width: 512 * per_row as u64, height: 512 * tiles.div_ceil(per_row) as u64 };
    let pixel = 0.1 / size.width as f64;
    let tasks = vec![
        TaskSpec::Caption { prompt: None },
        TaskSpec::Classify { classes: CLASSES.iter().map(|c| (*c).to_owned()).collect(), prompt: None },
        TaskSpec::Vqa { question: "Is there a harbour?".into() },
        TaskSpec::Detect { target: "ship".into() },
    ];
    let ring = |x0: f64, y0: f64, x1: f64, y1: f64| vec![[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]];
    let results = (0..tiles)
        .map(|t| {
            let (col, row) = ((t % per_row) as u64 * 512, (t / per_row) as u64 * 512);
            let (x0, y0) = (lon0 + col as f64 * pixel, lat0 - row as f64 * pixel);
            let answer = |output| TaskAnswer {
                output,
                retrieved: vec![RetrievedDescription { id: format!("osm-{}", t % 50), score: 0.6 }],
                descriptions_used: 1,
                complete: true,
            };
            let class = CLASSES[(i + t) % CLASSES.len()];
            let boxes = if t % 5 == 0 { vec![GridBox { x1: 100, y1: 100, x2: 180, y2: 160 }] } else { Vec::new() };
            TileResult {
                schema_version: SCHEMA_VERSION,
                tile: TileTask {
                    schema_version: SCHEMA_VERSION,
                    request_id: request.clone(),
                    scene_id: scene_id.clone(),
                    tile_id: format!("r{:04}_c{:04}", row / 512, col / 512),
                    tile: ObjectRef {
                        uri: format!("s3://tiles/{request}/{scene_id}/{t}.png"),
                        media_type: "image/png".into(),
                        width_px: 512,
                        height_px: 512,
                    },
                    window: PixelWindow { col_off: col, row_off: row, width: 512, height: 512 },
                    scene_size: size,
                    geotransform: GeoTransform([x0, pixel, 0.0, y0, 0.0, -pixel]),
                    crs: Crs { wkt: WGS84.into(), epsg: Some(4326) },
                    footprint_lonlat: ring(x0, y0, x0 + 512.0 * pixel, y0 - 512.0 * pixel),
                    tasks: tasks.clone(),
                    created_at: submitted,
                },
                valid_fraction: 1.0,
                model_version: "demo-1800-2400".into(),
                outputs: vec![
                    answer(TaskOutput::Caption { text: format!("A {class} area with roads and buildings."), score: 0.4 }),
                    answer(TaskOutput::Classify { label: Some(class.into()), raw_answer: class.into(), score: 0.8 }),
                    answer(TaskOutput::Vqa {
                        question: "Is there a harbour?".into(),
                        answer: if class == "harbor" { "yes" } else { "no" }.into(),
                        score: 0.9,
                    }),
                    answer(TaskOutput::Detect {
                        target: "ship".into(),
                        box_scores: vec![0.7; boxes.len()],
                        raw_answer: String::new(),
                        boxes,
                        parse_errors: Vec::new(),
                        score: 0.5,
                    }),
                ],
                timings: StageTimings { load_ms: 1.0, retrieve_ms: 2.0, infer_ms: 100.0 },
                produced_at: submitted,
            }
        })
        .collect();
    let marker = SceneTiled {
        schema_version: SCHEMA_VERSION,
        request_id: request.clone(),
        scene_id: scene_id.clone(),
        source_uri: format!("s3://imagery/{scene_id}.tif"),
        width: size.width,
        height: size.height,
        band_count: 3,
        dtype: "Byte".into(),
        crs_epsg: Some(4326),
        footprint_lonlat: ring(lon0, lat0, lon0 + 0.1, lat0 - size.height as f64 * pixel),
        footprint_parts: vec![ring(lon0, lat0, lon0 + 0.1, lat0 - size.height as f64 * pixel)],
        tiles_written: tiles as u64,
        tiles_skipped_nodata: 0,
        tasks,
        submitted_at: submitted,
        tile_ms: 10.0,
    };
    merge_scene(marker, results, Vec::new(), &MergeConfig::default())
}

async fn write_delta(tables: &Tables, scenes: usize, tiles: usize, group: usize) -> serde_json::Value {
    let mut sink = SinkStage::new(tables.clone(), group);
    let mut out = Collector::buffer();
    let mut committed = 0;
    let started = Instant::now();
    for i in 0..scenes {
        let envelope = Envelope::new(SinkMessage::Scene(Box::new(scene(i, tiles))), Position::Batch { index: i as u64 }, Ack::new(|_| {}));
        sink.process(envelope, &mut out).await.expect("commit");
        committed += out.drain().len();
        if (i + 1) % 1000 == 0 {
            eprintln!("{} scenes, {:.1} scenes/s", i + 1, (i + 1) as f64 / started.elapsed().as_secs_f64());
        }
    }
    sink.flush(&mut out).await.expect("commit");
    committed += out.drain().len();
    let seconds = started.elapsed().as_secs_f64();
    serde_json::json!({ "layout": "delta", "scenes": committed, "seconds": seconds, "scenes_per_second": committed as f64 / seconds })
}

/// The layout before Delta Lake: one file per scene and table at
/// `{table}/date=D/request=R/{scene}.parquet`, and `_index/request=R/{scene}.json`.
async fn write_old(tables: &Tables, scenes: usize, tiles: usize) -> serde_json::Value {
    let started = Instant::now();
    for i in 0..scenes {
        let results = scene(i, tiles);
        let date = rows::scene_date(&results);
        let (request, scene_id) = (&results.scene.request_id, &results.scene.scene_id);
        let mut written = Vec::new();
        for (table, mut frame) in rows::scene_frames(&results).expect("rows") {
            let file = DataFile::encode(table, &mut frame, &Gdal, date, "x", "x").expect("encode");
            let path = format!("{}/date={}/request={request}/{scene_id}.parquet", table.name, date.format("%Y-%m-%d"));
            let at = tables.root().join(&path);
            at.store().put(at.path(), PutPayload::from(file.bytes)).await.expect("put");
            written.push(path);
        }
        let index = tables.root().join(&format!("_index/request={request}/{scene_id}.json"));
        let body = serde_json::to_vec(&serde_json::json!({ "files": written })).unwrap_or_default();
        index.store().put(index.path(), PutPayload::from(body)).await.expect("put");
        if (i + 1) % 1000 == 0 {
            eprintln!("{} scenes, {:.1} scenes/s", i + 1, (i + 1) as f64 / started.elapsed().as_secs_f64());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    serde_json::json!({ "layout": "old", "scenes": scenes, "seconds": seconds, "scenes_per_second": scenes as f64 / seconds })
}

/// A query as `strata query` ran it before Delta Lake: list every file of each table the SQL
/// names, read each one whole, in turn, then run the SQL.
async fn query_old(tables: &Tables, sql: &str) -> tables::DataFrame {
    let mut loaded = Vec::new();
    for table in schemas::tables::ALL.iter().filter(|t| tables::query::names_table(sql, t.name)) {
        let folder = tables.root().join(table.name);
        let mut files: Vec<_> = folder.store().list(Some(folder.path())).try_collect().await.expect("list");
        files.sort_by(|a, b| a.location.cmp(&b.location));
        let prefix = format!("{}/", folder.path());
        let mut frames = Vec::new();
        for meta in files {
            let relative = meta.location.as_ref().strip_prefix(&prefix).unwrap_or_default().to_owned();
            frames.push(tables.read_file(table, &relative, None).await.expect("read"));
        }
        loaded.push((table.name, frames));
    }
    tables::query::run_frames(loaded, sql).expect("query")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let open = |root: &str| Tables::new(storage::resolve(root).expect("tables root"));
    let started = Instant::now();
    let mut report = runtime.block_on(async {
        match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["write", layout, root, scenes, rest @ ..] => {
                let scenes: usize = scenes.parse().expect("SCENES");
                let tiles = rest.first().and_then(|t| t.parse().ok()).unwrap_or(20);
                let group = rest.get(1).and_then(|g| g.parse().ok()).unwrap_or(64);
                match *layout {
                    "delta" => write_delta(&open(root), scenes, tiles, group).await,
                    _ => write_old(&open(root), scenes, tiles).await,
                }
            }
            ["compact", root, rest @ ..] => {
                let target: u64 = rest.first().and_then(|t| t.parse().ok()).unwrap_or(128);
                let done = open(root).compact(target * 1024 * 1024, None, &Gdal, |c| eprintln!("{c:?}")).await.expect("compact");
                let files: usize = done.iter().map(|c| c.files_after).sum();
                serde_json::json!({ "compacted": true, "files_after": files, "per_table": done.iter().map(|c| (c.table, c.files_after)).collect::<Vec<_>>() })
            }
            ["query", layout, root, sql] => {
                let frame = match *layout {
                    "delta" => tables::query::run(&open(root), sql).await.expect("query"),
                    _ => query_old(&open(root), sql).await,
                };
                serde_json::json!({ "layout": layout, "rows": frame.height() })
            }
            _ => {
                eprintln!("usage: tables write delta|old ROOT SCENES [TILES] [GROUP] | compact ROOT [TARGET_MIB] | query delta|old ROOT SQL");
                std::process::exit(2);
            }
        }
    });
    report["wall_seconds"] = started.elapsed().as_secs_f64().into();
    report["peak_rss_mib"] = peak_rss_mib().into();
    println!("{report}");
}
