//! The GDAL side of tiling: opening and validating a scene, choosing bands, measuring the
//! stretch, and rendering one window into an RGB tile with its georeference.

use gdal::{
    raster::{GdalDataType, RasterBand, ResampleAlg},
    spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef},
    Dataset, DatasetOptions, GdalOpenFlags,
};
use schemas::{GeoTransform, PixelWindow};

use super::stretch::BandStretch;

/// What went wrong, before the scene id is attached.
pub type Failure = String;

/// A source raster as GDAL sees it plus the URL users know it by.
#[derive(Debug, Clone)]
pub struct Source {
    /// `/vsistrata/...` path.
    pub vsi_path: String,
    /// The object's URL, for messages.
    pub uri: String,
}

/// Opens a source read-only as a raster.
pub fn open(source: &Source) -> Result<Dataset, Failure> {
    let options = DatasetOptions {
        open_flags: GdalOpenFlags::GDAL_OF_RASTER | GdalOpenFlags::GDAL_OF_READONLY | GdalOpenFlags::GDAL_OF_VERBOSE_ERROR,
        ..Default::default()
    };
    Dataset::open_ex(&source.vsi_path, options).map_err(|e| {
        let detail = e.to_string().replace(&source.vsi_path, &source.uri);
        format!("`{}` is not a raster GDAL can read ({detail})", source.uri)
    })
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

/// The closed lon/lat ring of a pixel rectangle, counter-clockwise (RFC 7946) for north-up
/// rasters: top-left, bottom-left, bottom-right, top-right, top-left.
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
/// per-dataset mask), or `None` when the band declares every pixel valid.
pub fn read_mask(band: &RasterBand<'_>, window: &PixelWindow, shape: (usize, usize)) -> gdal::errors::Result<Option<Vec<bool>>> {
    if band.mask_flags()?.is_all_valid() {
        return Ok(None);
    }
    let mask = band.open_mask_band()?;
    let buffer = mask.read_as::<u8>(
        (window.col_off as isize, window.row_off as isize),
        (window.width as usize, window.height as usize),
        shape,
        Some(ResampleAlg::NearestNeighbour),
    )?;
    Ok(Some(buffer.into_shape_and_vec().1.into_iter().map(|m| m > 0).collect()))
}

/// Measures one band's stretch on a reduced-resolution read of the whole scene (GDAL uses
/// overviews when the file has them, so this stays cheap on large COGs).
pub fn measure_stretch(band: &RasterBand<'_>, nodata: Option<f64>, sample_px: usize) -> gdal::errors::Result<Option<BandStretch>> {
    let (w, h) = band.size();
    let scale = (sample_px as f64 / w.max(h) as f64).min(1.0);
    let shape = (((w as f64) * scale).round().max(1.0) as usize, ((h as f64) * scale).round().max(1.0) as usize);
    let whole = PixelWindow { col_off: 0, row_off: 0, width: w as u32, height: h as u32 };
    let values = read_window(band, &whole, shape, ResampleAlg::NearestNeighbour)?;
    let mask = read_mask(band, &whole, shape)?;
    let nodata = nodata.map(|v| v as f32);
    Ok(BandStretch::from_samples(values.iter().enumerate().filter_map(|(i, &v)| {
        let masked = mask.as_ref().is_some_and(|m| !m[i]);
        (!masked && Some(v) != nodata).then_some(v)
    })))
}
