//! The GDAL side of tiling: opening and validating a scene, choosing bands, measuring the
//! stretch, and rendering one window into an RGB tile with its georeference.
//!
//! Validity follows GDAL's mask semantics (RFC 15): each band's mask (nodata, alpha or a
//! per-dataset mask) says which of its pixels hold data, and a tile pixel is a hole only when
//! every band it shows is — the dataset mask rasterio's `dataset_mask()` and gdalwarp's
//! `UNIFIED_SRC_NODATA` use — so water whose red band is 0 is not a hole. Resampled reads
//! never average nodata into data: GDAL leaves masked pixels out of its averages, and a
//! `--nodata` the file does not declare is declared to GDAL through a virtual dataset
//! ([`open`]) so that it does the same.

use std::sync::Arc;

use gdal::{
    cpl::CslStringList,
    errors::CplErrType,
    raster::{ColorEntry, ColorInterpretation, GdalDataType, RasterBand, ResampleAlg},
    spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef},
    Dataset, DatasetOptions, GdalOpenFlags,
};
use schemas::{GeoTransform, PixelWindow};

use super::stretch::{BandStretch, ChannelMap};
use crate::OperatorError;

/// Points per edge of a scene footprint: scenes are large, and their edges curve in lon/lat
/// (GDAL's `OCTTransformBounds` uses 21; more costs nothing that matters).
pub const SCENE_SEGMENTS_PER_EDGE: usize = 64;

/// Fewer valid pixels than this in the reduced read, and the stretch is measured on every
/// pixel instead: the read samples every n-th pixel and can miss a thin strip of data whole.
pub const MIN_STRETCH_SAMPLES: usize = 4096;

/// The most values a full-resolution stretch measurement keeps; beyond it every other value
/// is dropped (percentiles barely move, memory stays bounded).
const MAX_STRETCH_VALUES: usize = 1 << 24;

/// What went wrong, before the scene id is attached.
pub type Failure = String;

/// GDAL's version and build summary, for `strata info`.
pub fn gdal_version() -> String {
    gdal::version::VersionInfo::version_summary()
}

/// Sends GDAL's own messages through `tracing` instead of GDAL's default handler, which prints
/// `ERROR 1: …` lines on stderr beside the stage's own error (a truncated PNG printed three).
/// A failure still reaches the user: the gdal crate copies GDAL's last message into the error
/// the stage reports and dead-letters, so failures log at debug (`-vv`), warnings at warn,
/// fatal errors at error, all with target `gdal`. The handler is process-wide; the binary
/// installs it once at start-up.
pub fn route_gdal_messages() {
    gdal::config::set_error_handler(|class, number, message| match class {
        CplErrType::Fatal => tracing::error!(target: "gdal", number, "{message}"),
        CplErrType::Warning => tracing::warn!(target: "gdal", number, "{message}"),
        CplErrType::Failure => tracing::debug!(target: "gdal", number, "{message}"),
        CplErrType::Debug | CplErrType::None => tracing::trace!(target: "gdal", number, "{message}"),
    });
}

/// A source raster as GDAL sees it plus the URL users know it by.
#[derive(Debug, Clone)]
pub struct Source {
    /// `/vsistrata/...` path.
    pub vsi_path: String,
    /// The object's URL, for messages.
    pub uri: String,
    /// A nodata value the user gave (`--nodata`), declared on every band in place of the
    /// file's own.
    pub nodata: Option<f64>,
}

/// Opens a source read-only as a raster. With a user nodata value the file is wrapped in an
/// in-memory VRT declaring it (`gdal_translate -of VRT -a_nodata`): GDAL then masks those
/// pixels itself, so its averaging and bilinear reads leave them out instead of blending
/// nodata into the neighbouring data.
pub fn open(source: &Source) -> Result<Dataset, Failure> {
    let options = DatasetOptions {
        open_flags: GdalOpenFlags::GDAL_OF_RASTER | GdalOpenFlags::GDAL_OF_READONLY | GdalOpenFlags::GDAL_OF_VERBOSE_ERROR,
        ..Default::default()
    };
    let dataset = Dataset::open_ex(&source.vsi_path, options).map_err(|e| {
        let detail = e.to_string().replace(&source.vsi_path, &source.uri);
        format!("`{}` is not a raster GDAL can read ({detail})", source.uri)
    })?;
    match source.nodata {
        None => Ok(dataset),
        Some(nodata) => with_nodata(&dataset, nodata).map_err(|e| {
            let detail = e.replace(&source.vsi_path, &source.uri);
            format!("cannot declare nodata {nodata} on `{}`: {detail}", source.uri)
        }),
    }
}

/// A virtual (VRT) copy of `dataset` whose bands declare `nodata`. `gdal_translate` builds it;
/// its XML is then opened on its own, so the copy reads the file through its own handles
/// (the translated dataset points into `dataset`'s bands, which close with it).
fn with_nodata(dataset: &Dataset, nodata: f64) -> Result<Dataset, Failure> {
    use gdal::Metadata as _;
    let mut args = CslStringList::new();
    for arg in ["-of", "VRT", "-a_nodata", &nodata.to_string()] {
        args.add_string(arg).map_err(|e| e.to_string())?;
    }
    // SAFETY: `args` outlives the options; GDAL copies what it keeps. The options are freed
    // here, the source handle stays owned by `dataset`, and the returned handle (checked for
    // null) is owned by the new `Dataset`, which closes it.
    let translated = unsafe {
        let options = gdal_sys::GDALTranslateOptionsNew(args.as_ptr(), std::ptr::null_mut());
        if options.is_null() {
            return Err("GDAL refused the translate options".to_owned());
        }
        let mut usage_error: std::ffi::c_int = 0;
        let handle = gdal_sys::GDALTranslate(c"".as_ptr(), dataset.c_dataset(), options, &mut usage_error);
        gdal_sys::GDALTranslateOptionsFree(options);
        if handle.is_null() {
            let message = gdal_sys::CPLGetLastErrorMsg();
            return Err(if message.is_null() {
                "GDAL could not build the virtual dataset".to_owned()
            } else {
                std::ffi::CStr::from_ptr(message).to_string_lossy().into_owned()
            });
        }
        Dataset::from_c_dataset(handle)
    };
    let xml = translated.metadata_domain("xml:VRT").map(|lines| lines.concat()).filter(|xml| xml.starts_with("<VRTDataset"));
    drop(translated);
    let xml = xml.ok_or_else(|| "GDAL gave no VRT description".to_owned())?;
    let options = DatasetOptions { open_flags: GdalOpenFlags::GDAL_OF_RASTER | GdalOpenFlags::GDAL_OF_READONLY, ..Default::default() };
    Dataset::open_ex(&xml, options).map_err(|e| e.to_string())
}

/// The colour table of a band GDAL says is paletted (`ColorInterp=Palette`), as one lookup per
/// output channel (red, green, blue); `None` for other bands and for tables in a colour model
/// other than RGB or grey.
pub fn palette(band: &RasterBand<'_>) -> Option<[ChannelMap; 3]> {
    if band.color_interpretation() != ColorInterpretation::PaletteIndex {
        return None;
    }
    let table = band.color_table()?;
    let component = |v: i16| u8::try_from(v.clamp(0, 255)).unwrap_or(0);
    let mut channels: [Vec<u8>; 3] = Default::default();
    for index in 0..table.entry_count() {
        let rgb = match table.entry(index)? {
            ColorEntry::Rgba(e) => [e.r, e.g, e.b],
            ColorEntry::Gray(e) => [e.g; 3],
            _ => return None,
        };
        for (channel, value) in channels.iter_mut().zip(rgb) {
            channel.push(component(value));
        }
    }
    let [r, g, b] = channels;
    Some([ChannelMap::Lookup(Arc::from(r)), ChannelMap::Lookup(Arc::from(g)), ChannelMap::Lookup(Arc::from(b))])
}

/// The resampling of a tile's reads at `scale` (output pixels per scene pixel): area average
/// when shrinking and bilinear when enlarging a measured quantity; for categories (palette
/// indices) the most common value when shrinking and the nearest when enlarging, because an
/// average of two classes is a third class that is not there.
pub fn resampling(scale: f64, categorical: bool) -> ResampleAlg {
    match (categorical, scale < 1.0) {
        (false, true) => ResampleAlg::Average,
        (false, false) => ResampleAlg::Bilinear,
        (true, true) => ResampleAlg::Mode,
        (true, false) => ResampleAlg::NearestNeighbour,
    }
}

/// Adds one band to a tile's validity: `valid[i]` becomes true where this band holds data at
/// pixel `i` (its GDAL mask says so, the value is finite and not `nodata`). Called for every
/// band shown, starting from all false, it gives GDAL's dataset mask: a pixel is a hole only
/// when every band is. Returns the band's own validity, so that a channel whose band has no
/// data at a pixel others do can be drawn black.
pub fn band_validity(valid: &mut [bool], values: &[f32], mask: Option<&[bool]>, nodata: Option<f32>) -> Vec<bool> {
    let own: Vec<bool> = values
        .iter()
        .enumerate()
        .map(|(i, &x)| x.is_finite() && Some(x) != nodata && mask.is_none_or(|m| m.get(i).copied().unwrap_or(false)))
        .collect();
    valid.iter_mut().zip(&own).for_each(|(v, &o)| *v |= o);
    own
}

/// Band data types that can be stretched to 8 bits.
fn supported(dtype: GdalDataType) -> bool {
    matches!(
        dtype,
        GdalDataType::UInt8
            | GdalDataType::UInt16
            | GdalDataType::Int16
            | GdalDataType::UInt32
            | GdalDataType::Int32
            | GdalDataType::Float32
            | GdalDataType::Float64
    )
}

/// Which band of which dataset feeds R, G and B.
pub type BandRef = (usize, usize);

/// The default RGB mapping for a single raster: colour interpretation when the file says which
/// bands are red, green and blue; otherwise by band count — 6 bands are a Landsat TM/ETM+
/// reflective stack (blue, green, red, NIR, SWIR1, SWIR2 → 3, 2, 1), 7 or more a Landsat 8/9
/// or Sentinel-2 stack that starts with coastal aerosol (→ 4, 3, 2), 3–5 bands are taken as
/// R, G, B(, ...), and 1–2 bands are shown as grey.
pub fn default_bands(dataset: &Dataset) -> Vec<usize> {
    use gdal::raster::ColorInterpretation as Ci;
    let count = dataset.raster_count();
    let find = |wanted: Ci| (1..=count).find(|&i| dataset.rasterband(i).map(|b| b.color_interpretation() == wanted).unwrap_or(false));
    if let (Some(r), Some(g), Some(b)) = (find(Ci::RedBand), find(Ci::GreenBand), find(Ci::BlueBand)) {
        return vec![r, g, b];
    }
    match count {
        0 => vec![],
        1 | 2 => vec![1, 1, 1],
        3..=5 => vec![1, 2, 3],
        6 => vec![3, 2, 1],
        _ => vec![4, 3, 2],
    }
}

/// Facts about the scene checked before any pixel is read.
pub struct SceneInfo {
    /// Width in pixels.
    pub width: u64,
    /// Height in pixels.
    pub height: u64,
    /// Bands of the primary dataset.
    pub band_count: u32,
    /// Data type of the first selected band.
    pub dtype: String,
    /// The scene's geotransform.
    pub geotransform: GeoTransform,
    /// CRS as WKT.
    pub crs_wkt: String,
    /// EPSG code, when there is one.
    pub crs_epsg: Option<u32>,
}

/// Validates size, bands and georeference; `bands` must already be resolved.
pub fn inspect(datasets: &[Dataset], sources: &[Source], bands: &[BandRef], max_pixels: u64) -> Result<SceneInfo, Failure> {
    let primary = &datasets[0];
    let (w, h) = primary.raster_size();
    let (width, height) = (w as u64, h as u64);
    if width == 0 || height == 0 {
        return Err(format!("`{}` has no pixels ({width} × {height})", sources[0].uri));
    }
    if width.saturating_mul(height) > max_pixels {
        return Err(format!(
            "`{}` declares {width} × {height} pixels ({:.1} gigapixels), over the limit of {:.1} gigapixels; \
             this is usually a corrupt or malicious header (hint: raise --max-scene-megapixels if it is real)",
            sources[0].uri,
            (width * height) as f64 / 1e9,
            max_pixels as f64 / 1e9
        ));
    }
    for (dataset, source) in datasets.iter().zip(sources).skip(1) {
        if dataset.raster_size() != (w, h) {
            let (ow, oh) = dataset.raster_size();
            return Err(format!(
                "`{}` is {ow} × {oh} pixels but `{}` is {w} × {h}; band assets must share one grid",
                source.uri, sources[0].uri
            ));
        }
    }
    let mut dtype = String::new();
    for &(ds, band_index) in bands {
        let count = datasets[ds].raster_count();
        if band_index == 0 || band_index > count {
            return Err(format!("band {band_index} was requested but `{}` has {count} band(s)", sources[ds].uri));
        }
        let band = datasets[ds].rasterband(band_index).map_err(|e| format!("cannot open band {band_index}: {e}"))?;
        let band_type = band.band_type();
        if !supported(band_type) {
            return Err(format!("band {band_index} of `{}` has data type {band_type}, which cannot be shown as an image", sources[ds].uri));
        }
        if dtype.is_empty() {
            dtype = band_type.name();
        }
    }
    // A file cut short (an interrupted download or upload) still opens: its header is intact.
    // Reading the last pixel decodes the last block (for a PNG, the whole image), so truncation
    // is named as such here, before any tile is written and before a check such as the CRS
    // below could blame the file for something else.
    for (dataset, source) in datasets.iter().zip(sources) {
        let band = dataset.rasterband(1).map_err(|e| format!("cannot open band 1 of `{}`: {e}", source.uri))?;
        let (bw, bh) = dataset.raster_size();
        let last = (isize::try_from(bw).unwrap_or(isize::MAX) - 1, isize::try_from(bh).unwrap_or(isize::MAX) - 1);
        if let Err(e) = band.read_as::<f64>(last, (1, 1), (1, 1), None) {
            let detail = e.to_string().replace(&source.vsi_path, &source.uri);
            return Err(format!(
                "`{}` is truncated or corrupt (an interrupted download or upload?): its last pixel cannot be read: {detail}",
                source.uri
            ));
        }
    }
    let crs_wkt = primary.projection();
    if crs_wkt.trim().is_empty() {
        return Err(format!("`{}` has no coordinate reference system, so its tiles cannot be placed on the map", sources[0].uri));
    }
    let geotransform =
        primary.geo_transform().map_err(|_| format!("`{}` has no geotransform (it is not georeferenced)", sources[0].uri))?;
    let geotransform = GeoTransform(geotransform);
    if !geotransform.is_invertible() {
        return Err(format!("`{}` has a degenerate geotransform {:?}", sources[0].uri, geotransform.0));
    }
    let srs = SpatialRef::from_wkt(&crs_wkt).map_err(|e| format!("`{}` has a CRS GDAL cannot parse: {e}", sources[0].uri))?;
    let crs_epsg =
        srs.auth_name().filter(|name| name == "EPSG").and_then(|_| srs.auth_code().ok()).and_then(|code| u32::try_from(code).ok());
    // Fail now, not per tile, when the CRS cannot be mapped to lon/lat.
    to_lonlat(&crs_wkt).map_err(|e| format!("`{}`: {e}", sources[0].uri))?;
    Ok(SceneInfo {
        width,
        height,
        band_count: u32::try_from(primary.raster_count()).unwrap_or(u32::MAX),
        dtype,
        geotransform,
        crs_wkt,
        crs_epsg,
    })
}

/// A transform from the scene CRS to lon/lat (x = longitude).
pub fn to_lonlat(crs_wkt: &str) -> Result<CoordTransform, Failure> {
    let (scene, wgs84) = scene_and_wgs84(crs_wkt)?;
    CoordTransform::new(&scene, &wgs84).map_err(|e| format!("CRS cannot be transformed to lon/lat: {e}"))
}

/// A transform from lon/lat (x = longitude) to the scene CRS: the inverse of [`to_lonlat`].
pub fn from_lonlat(crs_wkt: &str) -> Result<CoordTransform, Failure> {
    let (scene, wgs84) = scene_and_wgs84(crs_wkt)?;
    CoordTransform::new(&wgs84, &scene).map_err(|e| format!("lon/lat cannot be transformed to the CRS: {e}"))
}

/// The scene CRS and EPSG:4326, both in traditional GIS axis order (x = easting/longitude).
fn scene_and_wgs84(crs_wkt: &str) -> Result<(SpatialRef, SpatialRef), Failure> {
    let mut scene = SpatialRef::from_wkt(crs_wkt).map_err(|e| format!("unknown CRS: {e}"))?;
    scene.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let mut wgs84 = SpatialRef::from_epsg(4326).map_err(|e| format!("EPSG:4326 unavailable: {e}"))?;
    wgs84.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    Ok((scene, wgs84))
}

/// Transforms points with `transform` (either direction); every result must be finite.
pub fn transform_points(transform: &CoordTransform, points: &[[f64; 2]]) -> Result<Vec<[f64; 2]>, Failure> {
    let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = points.iter().map(|&[x, y]| (x, y)).unzip();
    let mut zs = vec![0.0; xs.len()];
    transform.transform_coords(&mut xs, &mut ys, &mut zs).map_err(|e| format!("cannot transform the points: {e}"))?;
    let out: Vec<[f64; 2]> = xs.into_iter().zip(ys).map(|(x, y)| [x, y]).collect();
    if out.iter().any(|[x, y]| !x.is_finite() || !y.is_finite()) {
        return Err("the points fall outside the CRS's valid area".to_owned());
    }
    Ok(out)
}

/// The lon/lat corners of a pixel rectangle: top-left, bottom-left, bottom-right, top-right,
/// top-left again (`gdalinfo`'s order). A key to the window, not a polygon to draw: the drawn
/// footprint is traced by [`crate::georef::window_footprint`].
pub fn footprint(transform: &CoordTransform, geotransform: &GeoTransform, window: &PixelWindow) -> Result<Vec<[f64; 2]>, Failure> {
    let (c0, r0) = (window.col_off as f64, window.row_off as f64);
    let (c1, r1) = (c0 + f64::from(window.width), r0 + f64::from(window.height));
    let corners: Vec<[f64; 2]> = [(c0, r0), (c0, r1), (c1, r1), (c1, r0)]
        .iter()
        .map(|&(c, r)| {
            let (x, y) = geotransform.apply(c, r);
            [x, y]
        })
        .collect();
    let mut ring = transform_points(transform, &corners).map_err(|e| format!("cannot transform the footprint to lon/lat: {e}"))?;
    ring.push(ring[0]);
    Ok(ring)
}

/// Reads `window` of a band, resampled to `shape` (cols, rows).
pub fn read_window(band: &RasterBand<'_>, window: &PixelWindow, shape: (usize, usize), alg: ResampleAlg) -> gdal::errors::Result<Vec<f32>> {
    let buffer = band.read_as::<f32>(
        (window.col_off as isize, window.row_off as isize),
        (window.width as usize, window.height as usize),
        shape,
        Some(alg),
    )?;
    Ok(buffer.into_shape_and_vec().1)
}

/// Validity of each pixel of a resampled window from GDAL's mask band (nodata, alpha or
/// per-dataset mask), or `None` when the band declares every pixel valid. The mask is
/// resampled like the values (`alg`; the mode of categories reads as an average): an output
/// pixel is valid when any scene pixel feeding it is, which is when GDAL's mask-aware average,
/// mode and bilinear reads give it a value made of data alone. (A nearest-neighbour mask would
/// drop pixels whose averaged value is good, and keep none of a fine checkerboard of data.)
pub fn read_mask(
    band: &RasterBand<'_>,
    window: &PixelWindow,
    shape: (usize, usize),
    alg: ResampleAlg,
) -> gdal::errors::Result<Option<Vec<bool>>> {
    if band.mask_flags()?.is_all_valid() {
        return Ok(None);
    }
    let alg = if matches!(alg, ResampleAlg::Mode) { ResampleAlg::Average } else { alg };
    let mask = band.open_mask_band()?;
    let buffer = mask.read_as::<u8>(
        (window.col_off as isize, window.row_off as isize),
        (window.width as usize, window.height as usize),
        shape,
        Some(alg),
    )?;
    Ok(Some(buffer.into_shape_and_vec().1.into_iter().map(|m| m > 0).collect()))
}

/// Measures one band's stretch on a reduced-resolution read of the whole scene (GDAL uses
/// overviews when the file has them, so this stays cheap on large COGs). When that read holds
/// fewer than [`MIN_STRETCH_SAMPLES`] valid pixels — the data is a thin strip or a few fields
/// in a mostly empty scene, and the read's sampling falls between them — every pixel is read
/// instead, a strip of rows at a time, so the stretch always comes from the data itself.
pub fn measure_stretch(band: &RasterBand<'_>, nodata: Option<f64>, sample_px: usize) -> gdal::errors::Result<Option<BandStretch>> {
    let (w, h) = band.size();
    let scale = (sample_px as f64 / w.max(h) as f64).min(1.0);
    let shape = (((w as f64) * scale).round().max(1.0) as usize, ((h as f64) * scale).round().max(1.0) as usize);
    let whole = PixelWindow { col_off: 0, row_off: 0, width: w as u32, height: h as u32 };
    let nodata = nodata.map(|v| v as f32);
    let mut samples = Vec::new();
    valid_values(band, &whole, shape, nodata, &mut samples)?;
    if samples.len() < MIN_STRETCH_SAMPLES && scale < 1.0 {
        samples.clear();
        let rows_per_read = (MAX_STRETCH_VALUES / 4 / w.max(1)).clamp(1, h.max(1));
        let mut keep_every = 1usize;
        for row in (0..h).step_by(rows_per_read) {
            let rows = rows_per_read.min(h - row);
            let strip = PixelWindow { col_off: 0, row_off: row as u64, width: w as u32, height: rows as u32 };
            let before = samples.len();
            valid_values(band, &strip, (w, rows), nodata, &mut samples)?;
            if keep_every > 1 {
                let kept: Vec<f32> = samples[before..].iter().step_by(keep_every).copied().collect();
                samples.truncate(before);
                samples.extend(kept);
            }
            if samples.len() > MAX_STRETCH_VALUES {
                samples = samples.into_iter().step_by(2).collect();
                keep_every *= 2;
            }
        }
    }
    Ok(BandStretch::from_samples(samples.into_iter()))
}

/// Appends the valid values of `window` read at `shape` (nearest neighbour) to `out`.
fn valid_values(
    band: &RasterBand<'_>,
    window: &PixelWindow,
    shape: (usize, usize),
    nodata: Option<f32>,
    out: &mut Vec<f32>,
) -> gdal::errors::Result<()> {
    let values = read_window(band, window, shape, ResampleAlg::NearestNeighbour)?;
    let mask = read_mask(band, window, shape, ResampleAlg::NearestNeighbour)?;
    out.extend(values.iter().enumerate().filter_map(|(i, &v)| {
        let masked = mask.as_ref().is_some_and(|m| !m[i]);
        (!masked && v.is_finite() && Some(v) != nodata).then_some(v)
    }));
    Ok(())
}

/// Writes interleaved 8-bit RGB of `(width, height)` pixels to the local file `path` with
/// GDAL's `driver` (`PNG`, `GTiff`, `JPEG`, ...), georeferenced when `georef` gives a
/// geotransform and a CRS as WKT; folders are created. `strata data synth` writes its data
/// sets and scenes with it.
///
/// # Errors
/// [`OperatorError::InvalidLocation`] naming `path` when the folder, the driver or the file
/// fails.
pub fn write_rgb(
    rgb: &[u8],
    (width, height): (usize, usize),
    georef: Option<([f64; 6], String)>,
    driver: &str,
    path: &std::path::Path,
) -> Result<(), OperatorError> {
    let fail = |reason: String| OperatorError::InvalidLocation { location: path.display().to_string(), reason };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| fail(format!("creating the folder: {e}")))?;
    }
    let gdal_fail = |e: gdal::errors::GdalError| fail(format!("GDAL: {e}"));
    let mem = gdal::DriverManager::get_driver_by_name("MEM").map_err(gdal_fail)?;
    let mut dataset = mem.create_with_band_type::<u8, _>("", width, height, 3).map_err(gdal_fail)?;
    for band in 0..3 {
        let plane: Vec<u8> = rgb.iter().skip(band).step_by(3).copied().collect();
        let mut buffer = gdal::raster::Buffer::new((width, height), plane);
        dataset.rasterband(band + 1).and_then(|mut b| b.write((0, 0), (width, height), &mut buffer)).map_err(gdal_fail)?;
    }
    if let Some((geotransform, wkt)) = georef {
        dataset.set_geo_transform(&geotransform).map_err(gdal_fail)?;
        dataset.set_projection(&wkt).map_err(gdal_fail)?;
    }
    let target = gdal::DriverManager::get_driver_by_name(driver).map_err(gdal_fail)?;
    dataset.create_copy(&target, path, &gdal::raster::RasterCreationOptions::default()).map_err(gdal_fail)?;
    // GDAL leaves a sidecar with statistics next to some formats; the layouts do not want it.
    let _ = std::fs::remove_file(path.with_extension(format!("{}.aux.xml", path.extension().and_then(|e| e.to_str()).unwrap_or_default())));
    Ok(())
}

/// The WKT of an EPSG code's CRS, from GDAL's (PROJ's) database.
///
/// # Errors
/// [`OperatorError::InvalidLocation`] when PROJ does not know the code.
pub fn epsg_wkt(epsg: u32) -> Result<String, OperatorError> {
    gdal::spatial_ref::SpatialRef::from_epsg(epsg)
        .and_then(|srs| srs.to_wkt())
        .map_err(|e| OperatorError::InvalidLocation { location: format!("EPSG:{epsg}"), reason: e.to_string() })
}
