//! Reads a picture file (PNG, JPEG, TIFF, anything GDAL opens) as interleaved 8-bit RGB, the
//! form the model's preprocessing takes: three bands as R, G, B, one band as grey. Values
//! outside 0–255 are clamped by GDAL's conversion.

use std::path::Path;

use anyhow::{bail, Context as _};

/// `(rgb bytes, width, height)`.
pub fn read_rgb(path: &Path) -> anyhow::Result<(Vec<u8>, i64, i64)> {
    let dataset = gdal::Dataset::open(path).with_context(|| format!("`{}` is not a readable image", path.display()))?;
    let (width, height) = dataset.raster_size();
    let bands = dataset.raster_count();
    if bands == 0 || width == 0 || height == 0 {
        bail!("`{}` has no pixels", path.display());
    }
    let picks: [usize; 3] = if bands >= 3 { [1, 2, 3] } else { [1, 1, 1] };
    let mut planes = Vec::with_capacity(3);
    for band in picks {
        let band = dataset.rasterband(band).with_context(|| format!("reading band {band} of `{}`", path.display()))?;
        let buffer =
            band.read_as::<u8>((0, 0), (width, height), (width, height), None).with_context(|| format!("decoding `{}`", path.display()))?;
        planes.push(buffer.into_shape_and_vec().1);
    }
    let mut rgb = Vec::with_capacity(width * height * 3);
    for ((r, g), b) in planes[0].iter().zip(&planes[1]).zip(&planes[2]) {
        rgb.extend([*r, *g, *b]);
    }
    Ok((rgb, width as i64, height as i64))
}
