//! Visual grounding: IoU of predicted and reference boxes (pixels, `[x1, y1, x2, y2]`),
//! Acc@0.5 (share of predictions with IoU ≥ 0.5), split by the reference box's size with the
//! COCO thresholds (small < 32², medium < 96², large ≥ 96² square pixels), and the number of
//! answers that held no usable box (counted as misses).

/// A box in pixels, `[x1, y1, x2, y2]`.
pub type PixelBox = [f64; 4];

/// Intersection over union; 0 for degenerate boxes.
pub fn iou(a: &PixelBox, b: &PixelBox) -> f64 {
    let area = |r: &PixelBox| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let intersection = w * h;
    let union = area(a) + area(b) - intersection;
    if union <= 0.0 {
        0.0
    } else {
        intersection / union
    }
}

/// Size class of a reference box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Size {
    /// Area below 32² px.
    Small,
    /// Area below 96² px.
    Medium,
    /// The rest.
    Large,
}

impl Size {
    /// The class of `b`.
    pub fn of(b: &PixelBox) -> Self {
        let area = (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0);
        if area < 32.0 * 32.0 {
            Self::Small
        } else if area < 96.0 * 96.0 {
            Self::Medium
        } else {
            Self::Large
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Small => "small",
            Self::Medium => "medium",
            Self::Large => "large",
        }
    }
}

/// Grounding results.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroundingScore {
    /// Predictions scored (including parse failures).
    pub total: usize,
    /// IoU ≥ 0.5.
    pub hits: usize,
    /// Sum of IoUs (parse failures count 0), for the mean.
    pub iou_sum: f64,
    /// `(hits, total)` for small, medium and large reference boxes.
    pub by_size: [(usize, usize); 3],
    /// Answers without a usable box.
    pub parse_failures: usize,
}

impl GroundingScore {
    /// Acc@0.5.
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.hits as f64 / self.total as f64
        }
    }

    /// Mean IoU.
    pub fn mean_iou(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.iou_sum / self.total as f64
        }
    }

    /// Acc@0.5 within one size class (`None` when it has no boxes).
    pub fn accuracy_for(&self, size: Size) -> Option<f64> {
        let (hits, total) = self.by_size[size as usize];
        (total > 0).then(|| hits as f64 / total as f64)
    }

    /// Adds one prediction (`None`: the answer held no usable box).
    pub fn add(&mut self, predicted: Option<&PixelBox>, reference: &PixelBox) {
        let overlap = predicted.map_or(0.0, |p| iou(p, reference));
        let hit = overlap >= 0.5;
        self.total += 1;
        self.hits += usize::from(hit);
        self.iou_sum += overlap;
        self.parse_failures += usize::from(predicted.is_none());
        let slot = &mut self.by_size[Size::of(reference) as usize];
        slot.0 += usize::from(hit);
        slot.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_known_boxes() {
        assert!((iou(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 10.0, 10.0]) - 1.0).abs() < 1e-12);
        assert!((iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]) - 50.0 / 150.0).abs() < 1e-12);
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[20.0, 20.0, 30.0, 30.0]), 0.0);
        assert_eq!(iou(&[5.0, 5.0, 5.0, 9.0], &[0.0, 0.0, 10.0, 10.0]), 0.0);
    }

    #[test]
    fn accuracy_splits_by_reference_size_and_counts_failures() {
        let mut score = GroundingScore::default();
        score.add(Some(&[0.0, 0.0, 20.0, 20.0]), &[0.0, 0.0, 20.0, 20.0]); // small hit
        score.add(Some(&[0.0, 0.0, 50.0, 50.0]), &[25.0, 0.0, 75.0, 50.0]); // medium miss (IoU 1/3)
        score.add(None, &[0.0, 0.0, 200.0, 200.0]); // large, no box
        assert_eq!((score.total, score.hits, score.parse_failures), (3, 1, 1));
        assert_eq!(score.accuracy_for(Size::Small), Some(1.0));
        assert_eq!(score.accuracy_for(Size::Medium), Some(0.0));
        assert_eq!(score.accuracy_for(Size::Large), Some(0.0));
        assert!((score.mean_iou() - (1.0 + 1.0 / 3.0) / 3.0).abs() < 1e-12);
    }
}
