//! `strata map`: the result tables drawn on a Leaflet map, as one HTML file that opens from the
//! local disk with no network. Leaflet 1.9.4 (vendored from npm by `scripts/setup.sh`,
//! sha256-pinned) is inlined; tile images are embedded as PNG data URIs; the rows are a JSON
//! document the page's script turns into layers (`map.html`).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context as _;
use base64::Engine as _;
use object_store::ObjectStoreExt as _;
use operators::geometry::Gdal;
use serde_json::Value;
use tables::{
    query::{self, OutputFormat},
    Tables,
};

use crate::cli::MapArgs;

/// The page; its placeholders are replaced by Leaflet and the data.
const TEMPLATE: &str = include_str!("map.html");
/// The Leaflet release setup vendors.
const LEAFLET: &str = "leaflet-1.9.4";

/// (request, scene, tile): how every table names a tile.
type TileKey = (String, String, String);

fn tile_key(properties: &Value) -> TileKey {
    let field = |name: &str| properties[name].as_str().unwrap_or_default().to_owned();
    (field("request_id"), field("scene_id"), field("tile_id"))
}

/// Leaflet's script and stylesheet from the setup assets. The stylesheet's image references
/// (layer-switcher and marker icons, which the page does not use) are dropped so nothing is
/// fetched from disk or network.
fn leaflet() -> anyhow::Result<(String, String)> {
    let dir: PathBuf = model::assets_dir().join(LEAFLET);
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).with_context(|| {
            format!("reading `{}`\nhint: run `bash scripts/setup.sh` (it vendors Leaflet from npm)", dir.join(name).display())
        })
    };
    let css: String = read("leaflet.css")?.lines().filter(|line| !line.contains("url(images/")).collect::<Vec<_>>().join("\n");
    Ok((read("leaflet.js")?, css))
}

async fn frame_as(tables: &Tables, sql: &str, format: OutputFormat) -> anyhow::Result<Value> {
    let frame = query::run(tables, sql).await?;
    let text = query::render(frame, format, &Gdal)?;
    serde_json::from_str(&text).context("reading the query result")
}

/// Rows of `sql` (JSON objects) whose tile is selected.
async fn rows(tables: &Tables, sql: &str, selected: &HashSet<TileKey>) -> anyhow::Result<Vec<Value>> {
    let Value::Array(rows) = frame_as(tables, sql, OutputFormat::Json).await? else { return Ok(Vec::new()) };
    Ok(rows.into_iter().filter(|row| selected.contains(&tile_key(row))).collect())
}

/// Features of `sql` (GeoJSON) kept by `keep`.
async fn features(tables: &Tables, sql: &str, keep: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let mut collection = frame_as(tables, sql, OutputFormat::GeoJson).await?;
    if let Some(features) = collection["features"].as_array_mut() {
        features.retain(|f| keep(&f["properties"]));
    }
    Ok(collection)
}

/// A tile image as a `data:` URI, or why it cannot be embedded.
async fn data_uri(uri: &str) -> anyhow::Result<String> {
    let location = storage::resolve(uri)?;
    let bytes = location.store().get(location.path()).await?.bytes().await?;
    let mime = if bytes.starts_with(b"\x89PNG") { "image/png" } else { "image/jpeg" };
    Ok(format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(&bytes)))
}

/// Writes the map.
///
/// # Errors
/// Unreadable tables, a `--where` the tiles table refuses, no tile selected, Leaflet missing
/// from the assets, an unwritable output.
pub async fn run(args: MapArgs) -> anyhow::Result<ExitCode> {
    let (leaflet_js, leaflet_css) = leaflet()?;
    if let Some(folder) = args.out.parent().filter(|p| !p.as_os_str().is_empty() && !p.is_dir()) {
        anyhow::bail!("the folder of --out, `{}`, does not exist", folder.display());
    }
    let tables = crate::query::open_tables(&args.tables)?;
    let condition = args.filter.as_deref().map_or_else(String::new, |w| format!(" WHERE {w}"));
    let tiles_sql = format!(
        "SELECT request_id, scene_id, tile_id, tile_uri, valid_fraction, geometry FROM tiles{condition} ORDER BY request_id, scene_id, tile_id"
    );
    let tiles = features(&tables, &tiles_sql, |_| true).await.context("selecting tiles (`--where` is a condition on the tiles table)")?;
    let tile_list = tiles["features"].as_array().cloned().unwrap_or_default();
    if tile_list.is_empty() {
        anyhow::bail!(
            "no tiles in `{}`{}: nothing to draw\nhint: `strata query --tables {} \"SELECT scene_id, count(*) AS tiles FROM tiles GROUP BY scene_id\"` lists what is there",
            args.tables,
            args.filter.as_deref().map_or_else(String::new, |w| format!(" where {w}")),
            args.tables
        );
    }
    let selected: HashSet<TileKey> = tile_list.iter().map(|f| tile_key(&f["properties"])).collect();
    let scenes_selected: HashSet<(String, String)> = selected.iter().map(|(r, s, _)| (r.clone(), s.clone())).collect();

    let captions = rows(&tables, "SELECT request_id, scene_id, tile_id, model_version, caption, score FROM captions", &selected).await?;
    let classifications =
        rows(&tables, "SELECT request_id, scene_id, tile_id, model_version, label, raw_answer, score FROM classifications", &selected)
            .await?;
    let vqa = rows(&tables, "SELECT request_id, scene_id, tile_id, model_version, question, answer, score FROM vqa", &selected).await?;
    let detections =
        features(&tables, "SELECT request_id, scene_id, tile_id, model_version, label, score, geometry FROM detections", |p| {
            selected.contains(&tile_key(p))
        })
        .await?;
    let scenes =
        features(&tables, "SELECT request_id, scene_id, tiles_written, majority_class, model_version, geometry FROM scenes", |p| {
            scenes_selected
                .contains(&(p["request_id"].as_str().unwrap_or_default().to_owned(), p["scene_id"].as_str().unwrap_or_default().to_owned()))
        })
        .await?;

    // Tile images, up to --max-images; a missing one leaves its outline.
    let mut images = HashMap::new();
    let mut missing = 0usize;
    for feature in tile_list.iter().take(args.max_images) {
        let properties = &feature["properties"];
        let (request, scene, tile) = tile_key(properties);
        let Some(uri) = properties["tile_uri"].as_str() else { continue };
        match data_uri(uri).await {
            Ok(data) => {
                images.insert(format!("{request}/{scene}/{tile}"), data);
            }
            Err(err) => {
                missing += 1;
                tracing::warn!(tile_uri = uri, error = %format!("{err:#}"), "Tile image left out of the map.");
            }
        }
    }
    let left_out = tile_list.len().saturating_sub(args.max_images);
    let data = serde_json::json!({
        "source": args.tables,
        "tiles": tiles,
        "scenes": scenes,
        "detections": detections,
        "captions": captions,
        "classifications": classifications,
        "vqa": vqa,
        "images": images,
        "images_left_out": left_out,
    });
    // Inside <script>: "</" would end the element early (a caption could hold "</script>").
    let data = data.to_string().replace("</", "<\\/");
    let html = TEMPLATE.replacen("/*LEAFLET_CSS*/", &leaflet_css, 1).replacen("/*LEAFLET_JS*/", &leaflet_js, 1).replacen(
        "/*STRATA_DATA*/",
        &data,
        1,
    );

    let partial = args.out.with_extension("html.partial");
    std::fs::write(&partial, html).with_context(|| format!("writing `{}`", partial.display()))?;
    std::fs::rename(&partial, &args.out).with_context(|| format!("writing `{}`", args.out.display()))?;
    let count = |v: &Value| v["features"].as_array().map_or(0, Vec::len);
    let n = |count: usize, one: &str, many: &str| format!("{count} {}", if count == 1 { one } else { many });
    println!(
        "wrote {}: {}, {} ({}{}), {}, {}, {}, {}",
        args.out.display(),
        n(count(&scenes), "scene", "scenes"),
        n(tile_list.len(), "tile", "tiles"),
        n(images.len(), "image", "images"),
        if missing + left_out > 0 { format!(", {} left out", missing + left_out) } else { String::new() },
        n(count(&detections), "detection", "detections"),
        n(captions.len(), "caption", "captions"),
        n(classifications.len(), "classification", "classifications"),
        n(vqa.len(), "VQA answer", "VQA answers")
    );
    eprintln!("open it in a browser: file://{}", std::fs::canonicalize(&args.out).unwrap_or(args.out).display());
    Ok(ExitCode::SUCCESS)
}
