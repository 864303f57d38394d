//! Image preprocessing as the reference CLIP and SigLIP pipelines run it (OpenAI CLIP's
//! torchvision transforms on PIL images, and the PIL backend of the Hugging Face image
//! processors): resize with Pillow's antialiased resampling, centre crop, rescale to `[0, 1]`,
//! normalise per channel.
//!
//! Pillow resamples 8-bit images separably — one axis, then the other — through an 8-bit
//! intermediate image, with coefficients computed in f64 and applied in 22-bit fixed
//! point. Every one of those steps rounds, so a float resize only gets close; this module
//! follows the same arithmetic and produces the same bytes (checked against Pillow by
//! `model/tests/preprocess_golden.rs`).

use std::path::Path;

use serde::Deserialize;

use crate::ModelError;

/// Fractional bits of Pillow's fixed-point coefficients (32 bits less 8 for the pixel and 2
/// for filter overshoot).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (`R G B R G B …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `height × width × 3` bytes.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Wraps interleaved RGB bytes.
    ///
    /// # Errors
    /// [`ModelError::Request`] when the byte count is not `width × height × 3` or a side is 0.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Result<Self, ModelError> {
        if width == 0 || height == 0 || pixels.len() != width * height * 3 {
            return Err(ModelError::Request { reason: format!("{} bytes are not a {width}×{height} RGB image", pixels.len()) });
        }
        Ok(Self { width, height, pixels })
    }

    /// Decodes an encoded picture (PNG, JPEG or TIFF, 8 or 16 bits per sample) into the form
    /// the preprocessing takes. This is the one image decoder of Strata: inference decodes its
    /// tiles with it, and training, evaluation and `strata model ask` their images, so a model
    /// sees the same pixels in each. Grey is repeated into three channels, alpha is dropped,
    /// 16-bit samples are scaled to 8 bits (`v / 257`, the `image` crate's rule).
    ///
    /// # Errors
    /// [`ModelError::Image`] when the bytes are no picture of those formats, or are truncated.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self, ModelError> {
        let invalid = |reason: String| ModelError::Image { what: what.to_owned(), reason };
        let format = image::guess_format(bytes).map_err(|e| invalid(e.to_string()))?;
        let decoded = image::load_from_memory_with_format(bytes, format).map_err(|e| invalid(e.to_string()))?;
        let rgb = decoded.to_rgb8();
        let (width, height) = (rgb.width() as usize, rgb.height() as usize);
        Self::new(width, height, rgb.into_raw()).map_err(|e| invalid(e.to_string()))
    }

    /// Reads and decodes a picture file ([`RgbImage::decode`]).
    ///
    /// # Errors
    /// [`ModelError::Image`] when the file cannot be read or decoded.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        Self::read_named(path, &format!("`{}`", path.display()))
    }

    /// As [`RgbImage::read`], the file called `what` in errors (e.g. with the data-set line
    /// that names it).
    ///
    /// # Errors
    /// [`ModelError::Image`] when the file cannot be read or decoded.
    pub fn read_named(path: &Path, what: &str) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::Image { what: what.to_owned(), reason: e.to_string() })?;
        Self::decode(&bytes, what)
    }
}

/// Pillow's convolution filters, by their `PIL.Image.Resampling` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `LANCZOS` (1): windowed sinc, support 3.
    Lanczos,
    /// `BILINEAR` (2): triangle, support 1.
    Bilinear,
    /// `BICUBIC` (3): Keys cubic with a = −0.5, support 2 — what CLIP and SigLIP use.
    Bicubic,
    /// `BOX` (4): support ½.
    Box,
    /// `HAMMING` (5): Hamming-windowed sinc, support 1.
    Hamming,
}

impl Filter {
    /// The filter with Pillow's number `code`; `NEAREST` (0) is not a convolution and is
    /// refused with the rest.
    ///
    /// # Errors
    /// [`ModelError::Config`] for any other number.
    pub fn from_pil(code: u32) -> Result<Self, ModelError> {
        match code {
            1 => Ok(Self::Lanczos),
            2 => Ok(Self::Bilinear),
            3 => Ok(Self::Bicubic),
            4 => Ok(Self::Box),
            5 => Ok(Self::Hamming),
            other => Err(ModelError::Config {
                reason: format!("resample {other} is not supported (use 1 lanczos, 2 bilinear, 3 bicubic, 4 box or 5 hamming)"),
            }),
        }
    }

    fn support(self) -> f64 {
        match self {
            Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        }
        match self {
            Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes these two constants as C floats.
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// One pass's fixed-point weights: for output pixel `i`, input pixels
/// `first[i] .. first[i] + weights[i].len()`.
struct Pass {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

impl Pass {
    /// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for resampling
    /// `in_size` pixels to `out_size`.
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = filter.support() * filter_scale;
        let inverse = 1.0 / filter_scale;
        let mut first = Vec::with_capacity(out_size);
        let mut weights = Vec::with_capacity(out_size);
        for out in 0..out_size {
            let center = (out as f64 + 0.5) * scale;
            // Truncation towards zero, as C's (int) cast.
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (start..end).map(|x| filter.weight((x as f64 - center + 0.5) * inverse)).collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|&w| {
                    let w = if total == 0.0 { w } else { w / total };
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    (if w < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                })
                .collect();
            first.push(start);
            weights.push(fixed);
        }
        Self { first, weights }
    }
}

/// Pillow's `clip8`: the fixed-point sum back to a byte.
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `image` to `width × height` exactly as Pillow's `Image.resize(size, filter)` does
/// for an RGB image.
///
/// # Errors
/// [`ModelError::Request`] for a zero target side.
pub fn resize(image: &RgbImage, width: usize, height: usize, filter: Filter) -> Result<RgbImage, ModelError> {
    if width == 0 || height == 0 {
        return Err(ModelError::Request { reason: format!("cannot resize to {width}×{height}") });
    }
    let (in_w, in_h) = (image.width as i64, image.height as i64);
    let (out_w, out_h) = (width as i64, height as i64);
    // Current Pillow (13 is the reference) runs the vertical pass first when the height shrinks by more than
    // twice as many pixels as the width does; the 8-bit rounding between the passes makes
    // the order visible in the result.
    let vertical_first = in_h - out_h > 0 && in_h - out_h > (in_w - out_w) * 2;
    let need_horizontal = width != image.width;
    let need_vertical = height != image.height;
    if vertical_first {
        let mut current = std::borrow::Cow::Borrowed(image);
        if need_vertical {
            let pass = Pass::new(image.height, height, filter);
            current = std::borrow::Cow::Owned(vertical_pass(&current, &pass, 0));
        }
        if need_horizontal {
            let pass = Pass::new(image.width, width, filter);
            current = std::borrow::Cow::Owned(horizontal_pass(&current, &pass, 0, current.height));
        }
        return Ok(current.into_owned());
    }
    let vertical = Pass::new(image.height, height, filter);
    let mut current = std::borrow::Cow::Borrowed(image);
    let mut row_offset = 0;
    if need_horizontal {
        // The horizontal pass runs only over the rows the vertical pass will read.
        let first_row = vertical.first[0];
        let end_row = vertical.first[height - 1] + vertical.weights[height - 1].len();
        let pass = Pass::new(image.width, width, filter);
        current = std::borrow::Cow::Owned(horizontal_pass(image, &pass, first_row, end_row - first_row));
        row_offset = first_row;
    }
    if need_vertical {
        return Ok(vertical_pass(&current, &vertical, row_offset));
    }
    Ok(current.into_owned())
}

/// Resamples rows `first_row .. first_row + rows` of `image` horizontally.
fn horizontal_pass(image: &RgbImage, pass: &Pass, first_row: usize, rows: usize) -> RgbImage {
    let width = pass.first.len();
    let rounding = 1i32 << (PRECISION_BITS - 1);
    let mut pixels = vec![0u8; rows * width * 3];
    for y in 0..rows {
        let source = &image.pixels[(y + first_row) * image.width * 3..(y + first_row + 1) * image.width * 3];
        let target = &mut pixels[y * width * 3..(y + 1) * width * 3];
        for (x, (start, weights)) in pass.first.iter().zip(&pass.weights).enumerate() {
            let mut sums = [rounding; 3];
            for (i, &w) in weights.iter().enumerate() {
                let p = &source[(start + i) * 3..(start + i) * 3 + 3];
                for c in 0..3 {
                    sums[c] += i32::from(p[c]) * w;
                }
            }
            for c in 0..3 {
                target[x * 3 + c] = clip8(sums[c]);
            }
        }
    }
    RgbImage { width, height: rows, pixels }
}

/// Resamples `image` vertically; its row 0 is source row `row_offset` of the pass.
fn vertical_pass(image: &RgbImage, pass: &Pass, row_offset: usize) -> RgbImage {
    let height = pass.first.len();
    let rounding = 1i32 << (PRECISION_BITS - 1);
    let stride = image.width * 3;
    let mut pixels = vec![0u8; height * stride];
    for (y, (start, weights)) in pass.first.iter().zip(&pass.weights).enumerate() {
        let start = start - row_offset;
        let target = &mut pixels[y * stride..(y + 1) * stride];
        for (i, value) in target.iter_mut().enumerate() {
            let mut sum = rounding;
            for (j, &w) in weights.iter().enumerate() {
                sum += i32::from(image.pixels[(start + j) * stride + i]) * w;
            }
            *value = clip8(sum);
        }
    }
    RgbImage { width: image.width, height, pixels }
}

/// The target of the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    /// The shorter side becomes this long, the longer one keeps the aspect ratio (CLIP).
    ShortestEdge(usize),
    /// Exactly this size, aspect ratio ignored (SigLIP).
    Exact {
        /// Rows.
        height: usize,
        /// Columns.
        width: usize,
    },
}

/// What an image processor does, in order: resize, centre crop, rescale, normalise. Reads a
/// Hugging Face `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    /// Resize target and filter; `None` keeps the size.
    pub resize: Option<(ResizeTo, Filter)>,
    /// Centre crop `(height, width)`, zero-padded where the image is smaller.
    pub center_crop: Option<(usize, usize)>,
    /// Factor from bytes to floats (1/255).
    pub rescale: Option<f64>,
    /// Per-channel `(mean, std)`.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

/// Either an int or a `{height, width}` / `{shortest_edge}` object, as processor configs
/// write sizes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeField {
    Int(usize),
    Map { shortest_edge: Option<usize>, height: Option<usize>, width: Option<usize>, longest_edge: Option<usize> },
}

#[derive(Debug, Deserialize)]
struct ProcessorFile {
    image_processor_type: Option<String>,
    do_resize: Option<bool>,
    size: Option<SizeField>,
    resample: Option<u32>,
    do_center_crop: Option<bool>,
    crop_size: Option<SizeField>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
}

/// OpenAI CLIP's normalisation.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's normalisation.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

impl ImageProcessor {
    /// CLIP's: shorter side to `side` (bicubic), centre crop `side × side`, CLIP mean/std.
    pub fn clip(side: usize) -> Self {
        Self {
            resize: Some((ResizeTo::ShortestEdge(side), Filter::Bicubic)),
            center_crop: Some((side, side)),
            rescale: Some(1.0 / 255.0),
            normalize: Some((CLIP_MEAN, CLIP_STD)),
        }
    }

    /// SigLIP's: bicubic resize to `side × side`, then the given mean/std (0.5 for SigLIP).
    pub fn siglip(side: usize, mean: [f32; 3], std: [f32; 3]) -> Self {
        Self {
            resize: Some((ResizeTo::Exact { height: side, width: side }, Filter::Bicubic)),
            center_crop: None,
            rescale: Some(1.0 / 255.0),
            normalize: Some((mean, std)),
        }
    }

    /// Reads a Hugging Face `preprocessor_config.json` (CLIP, SigLIP and the many processors
    /// written like them). Defaults for missing keys follow `CLIPImageProcessor`.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the file for unreadable JSON or settings this module
    /// cannot reproduce.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ModelError::Config { reason: format!("cannot read {}: {e}", path.display()) })?;
        Self::from_json(&text).map_err(|e| ModelError::Config { reason: format!("{}: {e}", path.display()) })
    }

    /// As [`ImageProcessor::from_file`], from the file's text.
    ///
    /// # Errors
    /// [`ModelError::Config`] as there.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let config = |reason: String| ModelError::Config { reason };
        let file: ProcessorFile = serde_json::from_str(text).map_err(|e| config(format!("malformed processor config: {e}")))?;
        let siglip_like = file.image_processor_type.as_deref().is_some_and(|t| t.starts_with("Siglip"));
        let resize = if file.do_resize.unwrap_or(true) {
            let target = match file.size {
                None => ResizeTo::ShortestEdge(224),
                // An int size is a square for SigLIP-style processors, a shortest edge for CLIP.
                Some(SizeField::Int(side)) if siglip_like => ResizeTo::Exact { height: side, width: side },
                Some(SizeField::Int(side)) => ResizeTo::ShortestEdge(side),
                Some(SizeField::Map { longest_edge: Some(_), .. }) => {
                    return Err(config("`size.longest_edge` is not supported".into()));
                }
                Some(SizeField::Map { shortest_edge: Some(side), .. }) => ResizeTo::ShortestEdge(side),
                Some(SizeField::Map { height: Some(height), width: Some(width), .. }) => ResizeTo::Exact { height, width },
                Some(SizeField::Map { .. }) => return Err(config("`size` needs `shortest_edge` or `height` and `width`".into())),
            };
            Some((target, Filter::from_pil(file.resample.unwrap_or(3))?))
        } else {
            None
        };
        let center_crop = if file.do_center_crop.unwrap_or(!siglip_like) {
            match file.crop_size {
                None => Some((224, 224)),
                Some(SizeField::Int(side)) => Some((side, side)),
                Some(SizeField::Map { height: Some(height), width: Some(width), .. }) => Some((height, width)),
                Some(SizeField::Map { .. }) => return Err(config("`crop_size` needs `height` and `width`".into())),
            }
        } else {
            None
        };
        let rescale = file.do_rescale.unwrap_or(true).then_some(file.rescale_factor.unwrap_or(1.0 / 255.0));
        let normalize = if file.do_normalize.unwrap_or(true) {
            let three = |values: Option<Vec<f32>>, default: [f32; 3], name: &str| -> Result<[f32; 3], ModelError> {
                match values {
                    None => Ok(default),
                    Some(v) if v.len() == 1 => Ok([v[0]; 3]),
                    Some(v) => <[f32; 3]>::try_from(v.as_slice())
                        .map_err(|_| config(format!("`{name}` has {} values, an RGB image needs 3", v.len()))),
                }
            };
            let mean = three(file.image_mean, CLIP_MEAN, "image_mean")?;
            let std = three(file.image_std, CLIP_STD, "image_std")?;
            if std.contains(&0.0) {
                return Err(config("`image_std` contains 0".into()));
            }
            Some((mean, std))
        } else {
            None
        };
        Ok(Self { resize, center_crop, rescale, normalize })
    }

    /// `(height, width)` of the pixels [`ImageProcessor::apply`] returns for an image of
    /// `width × height`.
    pub fn output_size(&self, width: usize, height: usize) -> (usize, usize) {
        let (height, width) = self.resized_size(width, height);
        self.center_crop.unwrap_or((height, width))
    }

    fn resized_size(&self, width: usize, height: usize) -> (usize, usize) {
        match self.resize {
            None => (height, width),
            Some((ResizeTo::Exact { height, width }, _)) => (height, width),
            Some((ResizeTo::ShortestEdge(side), _)) => {
                let (short, long) = if width <= height { (width, height) } else { (height, width) };
                // As Python's int(side * long / short): float division, then truncation.
                let long = (side as f64 * long as f64 / short as f64) as usize;
                if width <= height {
                    (long, side)
                } else {
                    (side, long)
                }
            }
        }
    }

    /// Channel-first float pixels `[3, h, w]` (flattened) of `image`.
    ///
    /// # Errors
    /// [`ModelError::Request`] for an image that resizes to nothing.
    pub fn apply(&self, image: &RgbImage) -> Result<Vec<f32>, ModelError> {
        let resized = match self.resize {
            Some((_, filter)) => {
                let (height, width) = self.resized_size(image.width, image.height);
                if (width, height) == (image.width, image.height) {
                    std::borrow::Cow::Borrowed(image)
                } else {
                    std::borrow::Cow::Owned(resize(image, width, height, filter)?)
                }
            }
            None => std::borrow::Cow::Borrowed(image),
        };
        let cropped = match self.center_crop {
            Some((height, width)) => std::borrow::Cow::Owned(center_crop(&resized, height, width)?),
            None => resized,
        };
        let (width, height) = (cropped.width, cropped.height);
        let plane = width * height;
        let mut out = vec![0f32; 3 * plane];
        for (i, pixel) in cropped.pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                // Rescaled in f64 and stored as f32, then normalised in f32, as NumPy does it
                // in the reference processors.
                let mut value = match self.rescale {
                    Some(factor) => (f64::from(pixel[c]) * factor) as f32,
                    None => f32::from(pixel[c]),
                };
                if let Some((mean, std)) = self.normalize {
                    value = (value - mean[c]) / std[c];
                }
                out[c * plane + i] = value;
            }
        }
        Ok(out)
    }
}

/// The central `height × width` window; where the image is smaller it is first centred on a
/// black canvas (the reference processors' padding).
///
/// # Errors
/// [`ModelError::Request`] for a zero crop side.
pub fn center_crop(image: &RgbImage, height: usize, width: usize) -> Result<RgbImage, ModelError> {
    if width == 0 || height == 0 {
        return Err(ModelError::Request { reason: format!("cannot crop to {width}×{height}") });
    }
    // Offsets of the crop in the (possibly padded) canvas, and of the image in that canvas,
    // with the reference's rounding: floor for the crop, ceil for the padding.
    let canvas_h = height.max(image.height);
    let canvas_w = width.max(image.width);
    let pad_top = (canvas_h - image.height).div_ceil(2);
    let pad_left = (canvas_w - image.width).div_ceil(2);
    let top = (image.height as i64 - height as i64).div_euclid(2) + pad_top as i64;
    let left = (image.width as i64 - width as i64).div_euclid(2) + pad_left as i64;
    let mut pixels = vec![0u8; height * width * 3];
    for y in 0..height {
        let canvas_y = top + y as i64;
        let source_y = canvas_y - pad_top as i64;
        if source_y < 0 || source_y >= image.height as i64 {
            continue;
        }
        for x in 0..width {
            let source_x = left + x as i64 - pad_left as i64;
            if source_x < 0 || source_x >= image.width as i64 {
                continue;
            }
            let from = (source_y as usize * image.width + source_x as usize) * 3;
            pixels[(y * width + x) * 3..(y * width + x) * 3 + 3].copy_from_slice(&image.pixels[from..from + 3]);
        }
    }
    Ok(RgbImage { width, height, pixels })
}
