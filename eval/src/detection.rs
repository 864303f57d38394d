//! Object detection as PASCAL VOC and DIOR report it: per label, average precision at IoU 0.5
//! (AP@0.5, all-point interpolation), precision and recall over all detections, and the false
//! detections on images where the label is absent — the number a map full of ships on fields
//! shows, which a score over present objects alone never sees.
//!
//! Source: the PASCAL VOC devkit's detection evaluation (`VOCevaldet`; `voc_eval.py` of
//! py-faster-rcnn, which DIOR's evaluation uses), VOC 2010+ all-point AP:
//! - a label's detections over all images are ranked by score, highest first (ties keep their
//!   input order);
//! - each is matched to the truth box of its image it overlaps most; it is a true positive when
//!   that IoU exceeds 0.5 and the truth is not matched yet, else a false positive (a second
//!   detection of one object is a false positive);
//! - IoU in the devkit's integer-pixel convention: a box spans `x2 − x1 + 1` pixels;
//! - AP is the area under the precision–recall curve made monotone from the right.
//!
//! Checked against the `mean_average_precision` package's VOC mode on committed fixtures with
//! ties, duplicates and empty images (`scripts/fixtures/make_detection_golden.py`).

use crate::grounding::PixelBox;

/// IoU threshold of AP@0.5 (a match needs more than this).
pub const IOU_THRESHOLD: f64 = 0.5;

/// One predicted box of a label on image `image` (an index into the truths), with the score
/// it is ranked by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Which image: an index into the `truths` given to [`evaluate`].
    pub image: usize,
    /// The box, pixels `[x1, y1, x2, y2]`.
    pub bbox: PixelBox,
    /// Confidence; higher ranks first.
    pub score: f64,
}

/// What one label scored.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelScore {
    /// Truth boxes over all images.
    pub truths: usize,
    /// Detections over all images.
    pub detections: usize,
    /// Detections matched to a truth.
    pub true_positives: usize,
    /// AP@0.5, all-point; `None` without truth boxes (undefined).
    pub average_precision: Option<f64>,
    /// Images without a truth box of the label.
    pub images_without: usize,
    /// Detections on those images (all false).
    pub detections_where_absent: usize,
}

impl LabelScore {
    /// True positives over detections; `None` without detections.
    pub fn precision(&self) -> Option<f64> {
        (self.detections > 0).then(|| self.true_positives as f64 / self.detections as f64)
    }

    /// True positives over truths; `None` without truths.
    pub fn recall(&self) -> Option<f64> {
        (self.truths > 0).then(|| self.true_positives as f64 / self.truths as f64)
    }

    /// False detections per image without the label; `None` when every image has it.
    pub fn false_detections_per_absent_image(&self) -> Option<f64> {
        (self.images_without > 0).then(|| self.detections_where_absent as f64 / self.images_without as f64)
    }
}

/// IoU in the VOC devkit's convention: integer pixel coordinates, inclusive, so a box spans
/// `x2 − x1 + 1` pixels.
pub fn voc_iou(a: &PixelBox, b: &PixelBox) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
    let intersection = w * h;
    let area = |r: &PixelBox| (r[2] - r[0] + 1.0) * (r[3] - r[1] + 1.0);
    let union = area(a) + area(b) - intersection;
    if union <= 0.0 {
        0.0
    } else {
        intersection / union
    }
}

/// All-point interpolated average precision of a precision–recall curve (points in rank
/// order): the curve is extended with (0, 0) and (recall 1, precision 0), made monotone from
/// the right, and summed where recall changes (VOC 2010+).
pub fn average_precision(precision: &[f64], recall: &[f64]) -> f64 {
    let mut p: Vec<f64> = std::iter::once(0.0).chain(precision.iter().copied()).chain(std::iter::once(0.0)).collect();
    let r: Vec<f64> = std::iter::once(0.0).chain(recall.iter().copied()).chain(std::iter::once(1.0)).collect();
    for i in (1..p.len()).rev() {
        p[i - 1] = p[i - 1].max(p[i]);
    }
    (0..r.len() - 1).filter(|&i| r[i + 1] != r[i]).map(|i| (r[i + 1] - r[i]) * p[i + 1]).sum()
}

/// Scores one label: `truths[i]` are image i's truth boxes (empty where the label is absent),
/// `detections` the predicted boxes on any of those images.
///
/// # Panics
/// Never for detections on images within `truths`; a detection naming another image counts
/// as a false positive.
pub fn evaluate(truths: &[Vec<PixelBox>], detections: &[Detection]) -> LabelScore {
    let total_truths: usize = truths.iter().map(Vec::len).sum();
    let mut ranked: Vec<&Detection> = detections.iter().collect();
    // Stable: equal scores keep their input order.
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut matched: Vec<Vec<bool>> = truths.iter().map(|t| vec![false; t.len()]).collect();
    let (mut tp, mut fp) = (0usize, 0usize);
    let (mut precision, mut recall) = (Vec::with_capacity(ranked.len()), Vec::with_capacity(ranked.len()));
    for detection in ranked {
        let boxes = truths.get(detection.image).map(Vec::as_slice).unwrap_or_default();
        // The truth it overlaps most (the first of equals), as the devkit's argmax.
        let best =
            boxes.iter().enumerate().map(|(i, t)| (i, voc_iou(&detection.bbox, t))).fold(None, |best: Option<(usize, f64)>, (i, o)| {
                match best {
                    Some((_, b)) if b >= o => best,
                    _ => Some((i, o)),
                }
            });
        match best {
            Some((i, overlap)) if overlap > IOU_THRESHOLD && !matched[detection.image][i] => {
                matched[detection.image][i] = true;
                tp += 1;
            }
            _ => fp += 1,
        }
        precision.push(tp as f64 / (tp + fp) as f64);
        recall.push(tp as f64 / total_truths.max(1) as f64);
    }
    let absent: Vec<bool> = truths.iter().map(Vec::is_empty).collect();
    LabelScore {
        truths: total_truths,
        detections: detections.len(),
        true_positives: tp,
        average_precision: (total_truths > 0).then(|| average_precision(&precision, &recall)),
        images_without: absent.iter().filter(|&&a| a).count(),
        detections_where_absent: detections.iter().filter(|d| absent.get(d.image).copied().unwrap_or(false)).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perfect_detector_scores_one_and_a_duplicate_is_a_false_positive() {
        let truths = vec![vec![[0.0, 0.0, 9.0, 9.0]], vec![], vec![[20.0, 20.0, 29.0, 29.0]]];
        let perfect = [
            Detection { image: 0, bbox: [0.0, 0.0, 9.0, 9.0], score: 0.9 },
            Detection { image: 2, bbox: [20.0, 20.0, 29.0, 29.0], score: 0.8 },
        ];
        let s = evaluate(&truths, &perfect);
        assert_eq!((s.average_precision, s.precision(), s.recall()), (Some(1.0), Some(1.0), Some(1.0)));
        assert_eq!((s.images_without, s.false_detections_per_absent_image()), (1, Some(0.0)));
        // The same object twice, and a box on the empty image.
        let mut noisy = perfect.to_vec();
        noisy.push(Detection { image: 0, bbox: [1.0, 0.0, 9.0, 9.0], score: 0.95 });
        noisy.push(Detection { image: 1, bbox: [0.0, 0.0, 5.0, 5.0], score: 0.99 });
        let s = evaluate(&truths, &noisy);
        assert_eq!(s.true_positives, 2);
        assert_eq!(s.precision(), Some(0.5));
        assert_eq!(s.false_detections_per_absent_image(), Some(1.0));
        // Ranked: fp (0.99), tp (0.95), fp (0.9, the duplicate), tp (0.8): precision 1/2 at
        // recall 1/2, 1/2 at recall 1.
        assert!((s.average_precision.unwrap() - 0.5).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn iou_counts_pixels_inclusively_as_the_devkit() {
        assert_eq!(voc_iou(&[0.0, 0.0, 0.0, 0.0], &[0.0, 0.0, 0.0, 0.0]), 1.0);
        // Two 10×10 boxes overlapping in 5×10 pixels: 50 / 150.
        assert!((voc_iou(&[0.0, 0.0, 9.0, 9.0], &[5.0, 0.0, 14.0, 9.0]) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(voc_iou(&[0.0, 0.0, 9.0, 9.0], &[20.0, 0.0, 29.0, 9.0]), 0.0);
    }

    #[test]
    fn no_truths_leave_ap_undefined_and_no_detections_score_zero() {
        let s = evaluate(&[vec![], vec![]], &[Detection { image: 1, bbox: [0.0, 0.0, 3.0, 3.0], score: 1.0 }]);
        assert_eq!((s.average_precision, s.recall(), s.precision()), (None, None, Some(0.0)));
        let s = evaluate(&[vec![[0.0, 0.0, 3.0, 3.0]]], &[]);
        assert_eq!((s.average_precision, s.recall(), s.precision()), (Some(0.0), Some(0.0), None));
    }
}
