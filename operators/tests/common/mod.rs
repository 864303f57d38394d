//! Synthetic rasters for tests, written with GDAL itself.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use gdal::{raster::Buffer, raster::RasterCreationOptions, spatial_ref::SpatialRef, DriverManager};

/// Bundled data shipped with the repository.
pub fn data(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data").join(path)
}

/// What to write.
pub struct Synthetic {
    pub width: usize,
    pub height: usize,
    pub bands: usize,
    pub epsg: Option<u32>,
    /// GDAL geotransform; UTM-ish 10 m pixels by default.
    pub geotransform: [f64; 6],
    pub nodata: Option<f64>,
    pub options: Vec<&'static str>,
}

impl Default for Synthetic {
    fn default() -> Self {
        Self {
            width: 600,
            height: 400,
            bands: 3,
            epsg: Some(32633),
            geotransform: [500_000.0, 10.0, 0.0, 5_800_000.0, 0.0, -10.0],
            nodata: None,
            options: vec!["TILED=YES", "COMPRESS=DEFLATE"],
        }
    }
}

impl Synthetic {
    /// Creates a u16 GeoTIFF and writes no pixels (sparse files stay tiny).
    pub fn create_u16(&self, path: &Path) -> gdal::Dataset {
        let driver = DriverManager::get_driver_by_name("GTiff").unwrap();
        let options = RasterCreationOptions::from_iter(self.options.iter().map(|s| (*s).to_owned()));
        let mut ds = driver.create_with_band_type_with_options::<u16, _>(path, self.width, self.height, self.bands, &options).unwrap();
        ds.set_geo_transform(&self.geotransform).unwrap();
        if let Some(epsg) = self.epsg {
            ds.set_spatial_ref(&SpatialRef::from_epsg(epsg).unwrap()).unwrap();
        }
        ds
    }

    /// Writes a u16 GeoTIFF whose pixel values come from `value(band, col, row)`.
    pub fn write_u16(&self, path: &Path, value: impl Fn(usize, usize, usize) -> u16) {
        let ds = self.create_u16(path);
        for b in 1..=self.bands {
            let mut band = ds.rasterband(b).unwrap();
            if let Some(nodata) = self.nodata {
                band.set_no_data_value(Some(nodata)).unwrap();
            }
            let data: Vec<u16> = (0..self.height).flat_map(|r| (0..self.width).map(move |c| (c, r))).map(|(c, r)| value(b, c, r)).collect();
            let mut buffer = Buffer::new((self.width, self.height), data);
            band.write((0, 0), (self.width, self.height), &mut buffer).unwrap();
        }
    }
}

/// Writes a one-band f32 GeoTIFF (NaN allowed) from `value(col, row)`.
pub fn write_f32(path: &Path, width: usize, height: usize, nodata: Option<f64>, value: impl Fn(usize, usize) -> f32) {
    let driver = DriverManager::get_driver_by_name("GTiff").unwrap();
    let mut ds = driver.create_with_band_type::<f32, _>(path, width, height, 1).unwrap();
    ds.set_geo_transform(&[500_000.0, 10.0, 0.0, 5_800_000.0, 0.0, -10.0]).unwrap();
    ds.set_spatial_ref(&SpatialRef::from_epsg(32633).unwrap()).unwrap();
    let mut band = ds.rasterband(1).unwrap();
    band.set_no_data_value(nodata).unwrap();
    let data: Vec<f32> = (0..height).flat_map(|r| (0..width).map(move |c| (c, r))).map(|(c, r)| value(c, r)).collect();
    band.write((0, 0), (width, height), &mut Buffer::new((width, height), data)).unwrap();
}

/// Writes a one-band i16 GeoTIFF from `value(col, row)`.
pub fn write_i16(path: &Path, width: usize, height: usize, value: impl Fn(usize, usize) -> i16) {
    let driver = DriverManager::get_driver_by_name("GTiff").unwrap();
    let mut ds = driver.create_with_band_type::<i16, _>(path, width, height, 1).unwrap();
    ds.set_geo_transform(&[500_000.0, 10.0, 0.0, 5_800_000.0, 0.0, -10.0]).unwrap();
    ds.set_spatial_ref(&SpatialRef::from_epsg(32633).unwrap()).unwrap();
    let data: Vec<i16> = (0..height).flat_map(|r| (0..width).map(move |c| (c, r))).map(|(c, r)| value(c, r)).collect();
    ds.rasterband(1).unwrap().write((0, 0), (width, height), &mut Buffer::new((width, height), data)).unwrap();
}

/// Decodes a PNG into (width, height, RGB bytes).
pub fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}
