//! The tiling stage: one scene in, georeferenced model-ready tiles out.
//!
//! The scene is read through [`crate::vsi`], so any store works and COGs are read by range.
//! Windows are planned ([`plan`]), one contrast stretch is measured for the whole scene
//! ([`stretch`]), and worker threads — each with its own GDAL dataset handle, since GDAL
//! handles are not shareable — render windows to PNG. Rendered tiles flow through a bounded
//! channel to the writer, so memory stays at a few tiles per worker whatever the scene size.
//! Windows with no valid pixel (nodata, outside the mask) are skipped and counted.

pub mod plan;
pub(crate) mod raster;
pub mod stretch;

pub use raster::{epsg_wkt, gdal_version, route_gdal_messages, write_rgb};

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};

use bytes::Bytes;
use chrono::Utc;
use object_store::{ObjectStoreExt, PutPayload};
use schemas::{
    stac::RgbAssets, Crs, GeoTransform, ObjectRef, PixelWindow, RasterSize, SceneRequest, SceneSource, TileTask, SCHEMA_VERSION,
};
use tracing::Instrument as _;

use self::{
    plan::{plan_windows, PlannedWindow},
    raster::{BandRef, Source},
    stretch::{BandStretch, ChannelMap},
};
use storage::Location;

use crate::{
    vsi::{ReadRetry, VsiFile},
    OperatorError,
};

const fn default_max_scene_pixels() -> u64 {
    // 4.3 gigapixels: a full 65,536² scene; real scenes (Sentinel-2 10,980², Landsat ~8,000²,
    // WorldView strips) are far below, decompression bombs far above.
    1 << 32
}

/// How the tiler runs (the per-request options live in the request's `tiling`).
#[derive(Debug, Clone)]
pub struct TilerConfig {
    /// Scenes declaring more pixels than this are refused before any pixel is read.
    pub max_scene_pixels: u64,
    /// Worker threads per scene.
    pub threads: usize,
    /// Longest side of the reduced read used to measure the stretch.
    pub stretch_sample_px: usize,
    /// GDAL's block cache for the process, in MiB. GDAL's own default is 5 % of RAM, which on
    /// a 24 GiB machine lets one large scene hold 1.2 GiB of blocks; tiling reads each block
    /// about once (neighbouring windows share only the overlap), so a small cache loses no
    /// speed. `GDAL_CACHEMAX` in the environment wins over this.
    pub block_cache_mib: usize,
    /// How reads of the scene retry transient object-store errors before the scene fails with
    /// a retryable [`OperatorError::Storage`].
    pub read_retry: ReadRetry,
}

impl Default for TilerConfig {
    fn default() -> Self {
        Self {
            max_scene_pixels: default_max_scene_pixels(),
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            stretch_sample_px: 1024,
            block_cache_mib: 256,
            read_retry: ReadRetry::default(),
        }
    }
}

impl TilerConfig {
    /// The defaults with a cap on declared scene size, in megapixels, and the worker threads
    /// per scene (default: one per CPU): what `strata batch` and `strata serve` set.
    pub fn with_limits(max_scene_megapixels: u64, threads: Option<usize>) -> Self {
        let defaults = Self::default();
        Self { max_scene_pixels: max_scene_megapixels.saturating_mul(1_000_000), threads: threads.unwrap_or(defaults.threads), ..defaults }
    }
}

/// Progress, reported as the scene is cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TileEvent {
    /// The scene has this many windows.
    Planned {
        /// Scene id.
        scene_id: String,
        /// Number of windows.
        windows: usize,
    },
    /// One window is done.
    Window {
        /// Whether a tile was written (false: skipped as nodata).
        written: bool,
    },
}

/// Receives [`TileEvent`]s; called from worker threads.
pub type Progress = Arc<dyn Fn(TileEvent) + Send + Sync>;

/// One written tile.
#[derive(Debug, Clone, PartialEq)]
pub struct TileRecord {
    /// The task for the inference stage (tasks copied from the request).
    pub task: TileTask,
    /// Fraction of the window's pixels holding data.
    pub valid_fraction: f32,
}

/// What the scene turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneSummary {
    /// Request id.
    pub request_id: String,
    /// Scene id.
    pub scene_id: String,
    /// URL the pixels were read from (the first asset for STAC items).
    pub source_uri: String,
    /// Width in pixels.
    pub width: u64,
    /// Height in pixels.
    pub height: u64,
    /// Number of bands in the (primary) raster.
    pub band_count: u32,
    /// Data type name, e.g. `UInt16`.
    pub dtype: String,
    /// EPSG code, when the CRS has one.
    pub crs_epsg: Option<u32>,
    /// The scene's corners in lon/lat (upper left, lower left, lower right, upper right, the
    /// first again).
    pub footprint_lonlat: Vec<[f64; 2]>,
    /// The scene footprint to draw: counter-clockwise rings, densified, cut at the
    /// antimeridian ([`crate::georef::window_footprint`]).
    pub footprint_parts: Vec<Vec<[f64; 2]>>,
    /// Tiles written.
    pub tiles_written: u64,
    /// Windows skipped for holding no data.
    pub tiles_skipped_nodata: u64,
    /// Bytes read from the store (all assets).
    pub bytes_fetched: u64,
    /// Total size of the source objects.
    pub source_bytes: u64,
}

/// A tiled scene: its summary and its tiles in grid order.
#[derive(Debug, Clone, PartialEq)]
pub struct TiledScene {
    /// The scene.
    pub summary: SceneSummary,
    /// Its tiles.
    pub tiles: Vec<TileRecord>,
}

/// Cuts one scene into tiles written under `tiles_root/{request_id}/{scene_id}/`, and returns
/// them in grid order once the whole scene is cut. [`tile_scene_streaming`] hands each tile on
/// as soon as it is written instead.
///
/// # Errors
/// As [`tile_scene_streaming`].
pub async fn tile_scene(
    request: &SceneRequest,
    tiles_root: &Location,
    config: &TilerConfig,
    progress: Progress,
) -> Result<TiledScene, OperatorError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<TileRecord>(config.threads.max(1) * 2);
    let collect = async {
        let mut tiles = Vec::new();
        while let Some(record) = rx.recv().await {
            tiles.push(record);
        }
        tiles
    };
    let (summary, mut tiles) = tokio::join!(tile_scene_streaming(request, tiles_root, config, progress, tx), collect);
    let summary = summary?;
    tiles.sort_by_key(|t| (t.task.window.row_off, t.task.window.col_off));
    Ok(TiledScene { summary, tiles })
}

/// Cuts one scene into tiles written under `tiles_root/{request_id}/{scene_id}/`, sending each
/// tile's record to `on_tile` as soon as its PNG is stored (in completion order, not grid
/// order), so later stages start on a scene's first tiles while the rest are still being cut.
/// Returns the scene's summary once every window is done.
///
/// A scene that fails part-way may already have sent some tiles: the caller must treat them
/// as belonging to a failed scene (the merge stage drops outcomes of scenes that failed as a
/// whole), and a retried scene sends them again (tile ids are stable, so they count once). A
/// scene refused for good (a bad scene, a block GDAL cannot decode) has the tile images it had
/// written removed, so the tiles store holds no image that no table records; a file cut short
/// is found before any tile is cut (its last pixel is read first).
///
/// # Errors
/// [`OperatorError::BadScene`] for inputs that can never be tiled (not a raster, no CRS, too
/// large, bands missing), [`OperatorError::Storage`] for objects that are missing or cannot be
/// read or written — including a read that failed in the middle of the scene after its
/// retries, whatever GDAL made of it, so a store outage is retryable and a missing object
/// permanent, never a bad scene — [`OperatorError::Gdal`] for blocks GDAL cannot decode, and
/// [`OperatorError::Internal`] when `on_tile`'s receiver went away before the scene was done.
pub async fn tile_scene_streaming(
    request: &SceneRequest,
    tiles_root: &Location,
    config: &TilerConfig,
    progress: Progress,
    on_tile: tokio::sync::mpsc::Sender<TileRecord>,
) -> Result<SceneSummary, OperatorError> {
    apply_block_cache(config.block_cache_mib);
    let span = tracing::info_span!("scene", scene_id = %request.scene_id, request_id = %request.request_id);
    async move {
        let scene = request.scene_id.clone();
        let bad = |reason: String| OperatorError::BadScene { scene: scene.clone(), reason };
        let (locations, asset_bands) = source_locations(request).map_err(&bad)?;
        let mut files = Vec::with_capacity(locations.len());
        for location in &locations {
            let file = VsiFile::open_with_retry(location, config.read_retry).await?;
            if file.size() == 0 {
                return Err(bad(format!("`{}` is empty (0 bytes)", location.url())));
            }
            files.push(file);
        }
        let sources: Vec<Source> = files
            .iter()
            .zip(&locations)
            .map(|(f, l)| Source { vsi_path: f.path().to_owned(), uri: l.url(), nodata: request.tiling.nodata })
            .collect();

        let sources_for_messages: Vec<(String, String)> = sources.iter().map(|s| (s.vsi_path.clone(), s.uri.clone())).collect();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Rendered>(config.threads.max(1) * 2);
        let job =
            CutJob { request: request.clone(), sources, asset_bands, config: config.clone(), tiles_root_url: tiles_root.url(), progress };
        let cutter = tokio::task::spawn_blocking(move || job.run(tx));

        let mut write_error = None;
        let mut written = Vec::new();
        while let Some(rendered) = rx.recv().await {
            let location = tiles_root.join(&tile_key(request, &rendered.window.tile_id()));
            let put = location.store().put(location.path(), PutPayload::from_bytes(rendered.png)).await;
            if let Err(source) = put {
                write_error = Some(OperatorError::Storage { uri: location.url(), source });
                break; // dropping the receiver stops the workers
            }
            written.push(location);
            if on_tile.send(rendered.record).await.is_err() {
                write_error = Some(OperatorError::Internal {
                    reason: format!("tiling scene `{scene}` stopped: the receiver of its tiles went away"),
                });
                break;
            }
        }
        drop(rx);
        let outcome = cutter.await.map_err(|e| bad(format!("the tiling worker failed: {e}")))?;
        if let Some(err) = write_error {
            return Err(err);
        }
        // A read the store refused (after its retries) is the cause of whatever GDAL then
        // reported ("not a raster", "read error"); and should GDAL have carried on regardless,
        // tiles built around a missing block cannot be trusted either.
        if let Some((file, source)) = files.iter().find_map(|f| f.take_store_error().map(|e| (f, e))) {
            if let Err(failure) = &outcome {
                tracing::debug!(error = %failure, "GDAL failed after an object store read failed.");
            }
            return Err(OperatorError::Storage { uri: file.uri().to_owned(), source });
        }
        let mut summary = match outcome {
            Ok(summary) => summary,
            Err(failure) => {
                let err = match failure {
                    CutFailure::Scene(reason) => bad(reason),
                    CutFailure::Gdal { action, source } => {
                        let detail =
                            sources_for_messages.iter().fold(source.to_string(), |text, (vsi, uri)| text.replace(vsi.as_str(), uri));
                        OperatorError::Gdal { scene: scene.clone(), action, detail }
                    }
                };
                // The scene is refused for good (it is not retried), so the tiles cut before
                // the failure would be images no table records: they are removed.
                remove_tiles(&written).await;
                return Err(err);
            }
        };
        summary.bytes_fetched = files.iter().map(VsiFile::bytes_fetched).sum();
        summary.source_bytes = files.iter().map(VsiFile::size).sum();
        summary.source_uri = locations[0].url();
        tracing::info!(
            tiles_written = summary.tiles_written,
            tiles_skipped_nodata = summary.tiles_skipped_nodata,
            bytes_fetched = summary.bytes_fetched,
            "Scene tiled."
        );
        Ok(summary)
    }
    .instrument(span)
    .await
}

/// Deletes the tile images of a scene that failed for good, best effort: a delete that fails is
/// logged (the scene's dead letter already tells the user what went wrong).
async fn remove_tiles(written: &[Location]) {
    for location in written {
        if let Err(error) = location.store().delete(location.path()).await {
            tracing::warn!(tile = %location.url(), %error, "Cannot remove a tile image of a scene that failed.");
        }
    }
    if !written.is_empty() {
        tracing::debug!(tiles = written.len(), "Removed the tile images of a scene that failed part-way.");
    }
}

/// Sets GDAL's process-wide block cache once, unless the user set `GDAL_CACHEMAX`.
fn apply_block_cache(mib: usize) {
    static APPLIED: std::sync::Once = std::sync::Once::new();
    APPLIED.call_once(|| {
        if std::env::var_os("GDAL_CACHEMAX").is_none() {
            let bytes = i64::try_from(mib.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
            // SAFETY: a plain setter of a process-wide GDAL integer.
            unsafe { gdal_sys::GDALSetCacheMax64(bytes) };
        }
    });
}

/// Object key of a tile below the tiles root.
fn tile_key(request: &SceneRequest, tile_id: &str) -> String {
    format!("{}/{}/{tile_id}.png", request.request_id, request.scene_id)
}

/// The objects to read and, for STAC band assets, which band of each.
fn source_locations(request: &SceneRequest) -> Result<(Vec<Location>, bool), String> {
    match &request.source {
        SceneSource::Uri { uri } => Ok((vec![storage::resolve(uri).map_err(|e| e.to_string())?], false)),
        SceneSource::StacItem { item, base_uri } => {
            let assets = item.rgb_assets(request.tiling.stac_assets.as_deref())?;
            let keys: Vec<&String> = match &assets {
                RgbAssets::Visual(key) => vec![key],
                RgbAssets::Bands(keys) => keys.iter().collect(),
            };
            let mut locations = Vec::new();
            for key in keys {
                let href = &item.assets[key].href;
                locations.push(resolve_href(href, base_uri.as_deref()).map_err(|e| format!("asset `{key}`: {e}"))?);
            }
            Ok((locations, matches!(assets, RgbAssets::Bands(_))))
        }
    }
}

/// Resolves a STAC asset href against the item's own location ([`storage::resolve_href`]).
fn resolve_href(href: &str, base_uri: Option<&str>) -> Result<Location, String> {
    storage::resolve_href(href, base_uri).map_err(|e| e.to_string())
}

struct Rendered {
    window: PlannedWindow,
    record: TileRecord,
    png: Bytes,
}

enum CutFailure {
    Scene(String),
    Gdal { action: String, source: gdal::errors::GdalError },
}

impl std::fmt::Display for CutFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Scene(reason) => f.write_str(reason),
            Self::Gdal { action, source } => write!(f, "GDAL failed while {action}: {source}"),
        }
    }
}

impl From<String> for CutFailure {
    fn from(reason: String) -> Self {
        Self::Scene(reason)
    }
}

/// Everything the blocking half of tiling needs, owned.
struct CutJob {
    request: SceneRequest,
    sources: Vec<Source>,
    asset_bands: bool,
    config: TilerConfig,
    tiles_root_url: String,
    progress: Progress,
}

/// Per-scene constants shared by the workers.
struct Plan {
    bands: Vec<BandRef>,
    nodata: Vec<Option<f64>>,
    /// How each output channel is drawn: a stretch, or a palette lookup.
    stretches: Vec<ChannelMap>,
    geotransform: GeoTransform,
    crs: Crs,
    scene_size: RasterSize,
    tile_size: u32,
    output_size: u32,
}

impl CutJob {
    fn run(self, tx: tokio::sync::mpsc::Sender<Rendered>) -> Result<SceneSummary, CutFailure> {
        let datasets = self.sources.iter().map(raster::open).collect::<Result<Vec<_>, _>>()?;
        let tiling = &self.request.tiling;
        let bands: Vec<BandRef> = if self.asset_bands {
            (0..datasets.len()).map(|ds| (ds, 1)).collect()
        } else {
            let indices = match &tiling.bands {
                Some(b) if b.len() == 1 => vec![b[0] as usize; 3],
                Some(b) => b.iter().map(|&i| i as usize).collect(),
                None => raster::default_bands(&datasets[0]),
            };
            indices.into_iter().map(|i| (0, i)).collect()
        };
        if bands.is_empty() {
            return Err(format!("`{}` has no bands", self.sources[0].uri).into());
        }
        let info = raster::inspect(&datasets, &self.sources, &bands, self.config.max_scene_pixels)?;
        let to_lonlat = raster::to_lonlat(&info.crs_wkt)?;
        let whole = PixelWindow {
            col_off: 0,
            row_off: 0,
            width: u32::try_from(info.width).unwrap_or(u32::MAX),
            height: u32::try_from(info.height).unwrap_or(u32::MAX),
        };
        let scene_footprint = raster::footprint(&to_lonlat, &info.geotransform, &whole)?;
        let scene_parts = crate::georef::window_footprint(&to_lonlat, &info.geotransform, &whole, raster::SCENE_SEGMENTS_PER_EDGE)
            .map_err(|e| format!("cannot trace the scene footprint: {e}"))?
            .parts()
            .to_vec();

        let gdal_err = |action: String| move |source| CutFailure::Gdal { action, source };
        let mut nodata = Vec::new();
        let mut stretches = Vec::new();
        // One paletted band shown on all three channels is drawn through its colour table.
        let palette = match bands.as_slice() {
            [(ds, index), rest @ ..] if bands.len() == 3 && rest.iter().all(|b| b == &bands[0]) => {
                datasets[*ds].rasterband(*index).ok().as_ref().and_then(raster::palette)
            }
            _ => None,
        };
        for (slot, &(ds, index)) in bands.iter().enumerate() {
            let band = datasets[ds].rasterband(index).map_err(gdal_err(format!("opening band {index}")))?;
            let band_nodata = tiling.nodata.or_else(|| band.no_data_value());
            let map = match palette.as_ref().and_then(|p| p.get(slot)) {
                Some(lookup) => lookup.clone(),
                // Display colours already: the identity map on 0–255.
                None if tiling.stretch == Some(schemas::Stretch::None) => ChannelMap::Stretch(BandStretch { low: 0.0, high: 255.0 }),
                None => ChannelMap::Stretch(
                    raster::measure_stretch(&band, band_nodata, self.config.stretch_sample_px)
                        .map_err(gdal_err(format!("measuring the contrast stretch of band {index}")))?
                        // A scene without a single valid pixel: every window is skipped anyway.
                        .unwrap_or(BandStretch { low: 0.0, high: 1.0 }),
                ),
            };
            nodata.push(band_nodata);
            stretches.push(map);
        }
        drop(datasets);

        let windows = plan_windows(info.width, info.height, tiling.tile_size_px, tiling.overlap_px);
        (self.progress)(TileEvent::Planned { scene_id: self.request.scene_id.clone(), windows: windows.len() });
        let plan = Plan {
            bands,
            nodata,
            stretches,
            geotransform: info.geotransform,
            crs: Crs { wkt: info.crs_wkt.clone(), epsg: info.crs_epsg },
            scene_size: RasterSize { width: info.width, height: info.height },
            tile_size: tiling.tile_size_px,
            output_size: tiling.output_size_px,
        };

        let next = AtomicUsize::new(0);
        let written = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let threads = self.config.threads.clamp(1, windows.len().max(1));
        let results: Vec<Result<(), CutFailure>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let result = self.work(&plan, &windows, &next, &written, &stop, &tx);
                        if result.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        result
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err("a tiling worker panicked".to_owned().into()))).collect()
        });
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        let tiles_written = written.load(Ordering::Relaxed) as u64;
        Ok(SceneSummary {
            request_id: self.request.request_id.clone(),
            scene_id: self.request.scene_id.clone(),
            source_uri: String::new(),
            width: info.width,
            height: info.height,
            band_count: info.band_count,
            dtype: info.dtype,
            crs_epsg: info.crs_epsg,
            footprint_lonlat: scene_footprint,
            footprint_parts: scene_parts,
            tiles_written,
            tiles_skipped_nodata: windows.len() as u64 - tiles_written,
            bytes_fetched: 0,
            source_bytes: 0,
        })
    }

    /// One worker: pulls windows until none are left, rendering each with its own handles.
    fn work(
        &self,
        plan: &Plan,
        windows: &[PlannedWindow],
        next: &AtomicUsize,
        written: &AtomicUsize,
        stop: &AtomicBool,
        tx: &tokio::sync::mpsc::Sender<Rendered>,
    ) -> Result<(), CutFailure> {
        let datasets = self.sources.iter().map(raster::open).collect::<Result<Vec<_>, _>>()?;
        let to_lonlat = raster::to_lonlat(&plan.crs.wkt)?;
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(window) = windows.get(index) else { return Ok(()) };
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let _span = tracing::debug_span!("tile", tile_id = %window.tile_id()).entered();
            match self.render(plan, &datasets, &to_lonlat, window)? {
                Some(rendered) => {
                    if tx.blocking_send(rendered).is_err() {
                        return Ok(()); // the writer gave up; it reports why
                    }
                    written.fetch_add(1, Ordering::Relaxed);
                    (self.progress)(TileEvent::Window { written: true });
                }
                None => (self.progress)(TileEvent::Window { written: false }),
            }
        }
    }

    /// Renders one window, or `None` when it holds no valid pixel.
    fn render(
        &self,
        plan: &Plan,
        datasets: &[gdal::Dataset],
        to_lonlat: &gdal::spatial_ref::CoordTransform,
        planned: &PlannedWindow,
    ) -> Result<Option<Rendered>, CutFailure> {
        let window = planned.window;
        let out = plan.output_size as usize;
        // Partial windows (scenes smaller than a tile) keep the common scale and are padded.
        let scale = f64::from(plan.output_size) / f64::from(plan.tile_size);
        let content_w = ((f64::from(window.width) * scale).round() as usize).clamp(1, out);
        let content_h = ((f64::from(window.height) * scale).round() as usize).clamp(1, out);
        let shape = (content_w, content_h);
        let alg = raster::resampling(scale, plan.stretches.iter().any(ChannelMap::is_categorical));
        let pixels = content_w * content_h;
        // A pixel is a hole only when every band is (GDAL's dataset mask; see `raster`).
        let mut valid = vec![false; pixels];
        let mut channels: Vec<Vec<f32>> = Vec::with_capacity(3);
        let mut channel_valid: Vec<Vec<bool>> = Vec::with_capacity(3);
        let tile_id = planned.tile_id();
        let gdal_err = |what: &str, index: usize| {
            let action = format!("reading {what} of band {index} in tile {tile_id}");
            move |source| CutFailure::Gdal { action, source }
        };
        for (slot, &(ds, index)) in plan.bands.iter().enumerate() {
            // Grey images repeat one band: read it once.
            if let Some(previous) = plan.bands[..slot].iter().position(|b| *b == (ds, index)) {
                let copy = channels[previous].clone();
                channels.push(copy);
                channel_valid.push(channel_valid[previous].clone());
                continue;
            }
            let band = datasets[ds].rasterband(index).map_err(gdal_err("the header", index))?;
            let values = raster::read_window(&band, &window, shape, alg).map_err(gdal_err("pixels", index))?;
            let mask = raster::read_mask(&band, &window, shape, alg).map_err(gdal_err("the mask", index))?;
            let nodata = plan.nodata[slot].map(|v| v as f32);
            channel_valid.push(raster::band_validity(&mut valid, &values, mask.as_deref(), nodata));
            channels.push(values);
        }
        let valid_count = valid.iter().filter(|&&v| v).count();
        if valid_count == 0 {
            return Ok(None);
        }
        let mut rgb = vec![0u8; out * out * 3];
        for row in 0..content_h {
            for col in 0..content_w {
                let i = row * content_w + col;
                if !valid[i] {
                    continue;
                }
                let o = (row * out + col) * 3;
                for c in 0..3 {
                    // A band without data where the others have it is drawn black.
                    rgb[o + c] = if channel_valid[c][i] { plan.stretches[c].apply(channels[c][i]) } else { 0 };
                }
            }
        }
        let png = encode_png(&rgb, plan.output_size).map_err(|e| format!("cannot encode tile {tile_id} as PNG: {e}"))?;

        // The tile image's own geotransform: origin at the window corner, pixels scaled.
        let g = plan.geotransform.0;
        let (x0, y0) = plan.geotransform.apply(window.col_off as f64, window.row_off as f64);
        let sx = f64::from(window.width) / content_w as f64;
        let sy = f64::from(window.height) / content_h as f64;
        let tile_geotransform = GeoTransform([x0, g[1] * sx, g[2] * sy, y0, g[4] * sx, g[5] * sy]);
        let footprint = raster::footprint(to_lonlat, &plan.geotransform, &window)?;
        let tile_uri = format!("{}/{}", self.tiles_root_url, tile_key(&self.request, &tile_id));
        let task = TileTask {
            schema_version: SCHEMA_VERSION,
            request_id: self.request.request_id.clone(),
            scene_id: self.request.scene_id.clone(),
            tile_id,
            tile: ObjectRef { uri: tile_uri, media_type: "image/png".to_owned(), width_px: plan.output_size, height_px: plan.output_size },
            window,
            scene_size: plan.scene_size,
            geotransform: tile_geotransform,
            crs: plan.crs.clone(),
            footprint_lonlat: footprint,
            tasks: self.request.tasks.clone(),
            created_at: Utc::now(),
        };
        Ok(Some(Rendered {
            window: *planned,
            record: TileRecord { task, valid_fraction: valid_count as f32 / pixels as f32 },
            png: Bytes::from(png),
        }))
    }
}

fn encode_png(rgb: &[u8], side: u32) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::with_capacity(rgb.len() / 2);
    let mut encoder = png::Encoder::new(&mut out, side, side);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}
