//! One contrast stretch per scene: the 2nd and 98th percentiles of each band's valid pixels,
//! measured once on a reduced-resolution read of the whole scene (or on every pixel, when
//! that read misses the data: a thin strip in an empty scene) and applied identically to every
//! tile, so neighbouring tiles match and a tile's colours do not depend on its content.
//! A paletted band is not stretched: its values are indices into its colour table, and each
//! output channel looks its component up ([`ChannelMap::Lookup`]).

use std::sync::Arc;

/// Lower and upper percentiles of the stretch.
pub const PERCENTILES: (f64, f64) = (0.02, 0.98);

/// A linear map from one band's values to 0–255.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BandStretch {
    /// Value mapped to 0.
    pub low: f32,
    /// Value mapped to 255.
    pub high: f32,
}

impl BandStretch {
    /// Measures the stretch from sample values; `None` entries are invalid pixels.
    /// Returns `None` when no sample is valid.
    pub fn from_samples(samples: impl Iterator<Item = f32>) -> Option<Self> {
        let mut values: Vec<f32> = samples.filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            return None;
        }
        values.sort_unstable_by(f32::total_cmp);
        let at = |q: f64| {
            let index = ((values.len() - 1) as f64 * q).round() as usize;
            values[index.min(values.len() - 1)]
        };
        let low = at(PERCENTILES.0);
        let mut high = at(PERCENTILES.1);
        if high <= low {
            // A constant band: map it to mid-grey rather than dividing by zero.
            high = low + 1.0;
        }
        Some(Self { low, high })
    }

    /// Maps one value to 0–255 (clamped).
    #[inline]
    pub fn apply(&self, value: f32) -> u8 {
        let scaled = (value - self.low) * (255.0 / (self.high - self.low));
        scaled.clamp(0.0, 255.0).round() as u8
    }
}

/// How one output channel (R, G or B) is made from its band's values.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelMap {
    /// A linear stretch of a measured quantity.
    Stretch(BandStretch),
    /// One component of a colour table, indexed by the band's value (GDAL's
    /// `ColorInterp=Palette`, as `gdal_translate -expand rgb` renders it); values outside the
    /// table are black.
    Lookup(Arc<[u8]>),
}

impl ChannelMap {
    /// Maps one value to 0–255.
    #[inline]
    pub fn apply(&self, value: f32) -> u8 {
        match self {
            Self::Stretch(stretch) => stretch.apply(value),
            Self::Lookup(table) => {
                // Indices are whole numbers; anything else (NaN, fractions from resampling
                // that should not have happened) has no colour.
                if value >= 0.0 && value.fract() == 0.0 {
                    table.get(value as usize).copied().unwrap_or(0)
                } else {
                    0
                }
            }
        }
    }

    /// Whether the values are categories (palette indices), which must never be averaged or
    /// interpolated when a tile is resampled.
    pub fn is_categorical(&self) -> bool {
        matches!(self, Self::Lookup(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_index_the_table_and_black_out_the_rest() {
        let reds = ChannelMap::Lookup(Arc::from(vec![0u8, 10, 255]));
        assert_eq!([0.0, 1.0, 2.0, 3.0, -1.0, 1.5, f32::NAN].map(|v| reds.apply(v)), [0, 10, 255, 0, 0, 0, 0]);
        assert!(reds.is_categorical());
        assert!(!ChannelMap::Stretch(BandStretch { low: 0.0, high: 1.0 }).is_categorical());
    }

    #[test]
    fn percentiles_clip_outliers() {
        // 0..=999 plus a few huge outliers: the stretch ignores them.
        let samples = (0..1000).map(|v| v as f32).chain([1e9, 1e9, -1e9]);
        let s = BandStretch::from_samples(samples).unwrap();
        assert!((s.low - 20.0).abs() <= 2.0, "{s:?}");
        assert!((s.high - 980.0).abs() <= 2.0, "{s:?}");
        assert_eq!(s.apply(-5.0), 0);
        assert_eq!(s.apply(5000.0), 255);
        assert_eq!(s.apply(500.0), 128);
    }

    #[test]
    fn constant_and_empty_bands_do_not_divide_by_zero() {
        let s = BandStretch::from_samples(std::iter::repeat_n(7.0, 10)).unwrap();
        assert_eq!(s.apply(7.0), 0);
        assert!(BandStretch::from_samples([f32::NAN].into_iter()).is_none());
    }
}
