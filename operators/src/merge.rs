//! Cross-tile merging: one object seen by several overlapping tiles becomes one detection.
//!
//! Neighbouring windows overlap (64 px by default), so an object near a tile edge is detected
//! once per tile that sees it. In scene pixels those boxes nearly coincide; greedy
//! non-maximum suppression per label (the rule of torchvision's `batched_nms`: sort by score,
//! keep the best box, drop every box of the same label whose IoU with it exceeds the
//! threshold, repeat) keeps one detection and records which tiles saw it. Boxes of different
//! labels never suppress each other. The function is pure and deterministic: the same
//! detections in any order give the same output.

use std::cmp::Ordering;

/// The NMS threshold unless set (`--iou-threshold`).
pub const fn default_iou_threshold() -> f64 {
    0.5
}

/// How detections are merged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MergeConfig {
    /// A box is merged into a better-scoring box of the same label when their intersection
    /// over union is strictly greater than this (0..=1; 0.5 by default).
    pub iou_threshold: f64,
}

impl Default for MergeConfig {
    fn default() -> Self {
        Self { iou_threshold: default_iou_threshold() }
    }
}

/// One detection on one tile, in scene pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection<T = ()> {
    /// The object's label; only detections with equal labels merge.
    pub label: String,
    /// Confidence; higher is better. NaN ranks below every number.
    pub score: f32,
    /// `[x1, y1, x2, y2]` in scene pixels (see [`crate::georef::GeoreferencedBox::scene_box`]).
    /// A box without area (or with non-finite corners) overlaps nothing and is kept alone.
    pub scene_box: [f64; 4],
    /// The tile it was detected on.
    pub tile_id: String,
    /// Whatever the caller carries along (a row index, the lon/lat polygon, ...); the merged
    /// detection keeps the payload of its best-scoring member.
    pub payload: T,
}

/// One object after merging.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedDetection<T = ()> {
    /// The best-scoring detection of the group, unchanged (its label, score, box, tile and
    /// payload).
    pub best: Detection<T>,
    /// Every tile that saw the object, sorted and without repeats (the best one's included).
    pub tile_ids: Vec<String>,
    /// Positions in the input of every detection merged into this one, the best one's
    /// included, ascending.
    pub members: Vec<usize>,
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes; 0 when either has no area.
pub fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let area = |r: &[f64; 4]| {
        let (w, h) = (r[2] - r[0], r[3] - r[1]);
        if w > 0.0 && h > 0.0 && (w * h).is_finite() {
            w * h
        } else {
            0.0
        }
    };
    let (area_a, area_b) = (area(a), area(b));
    if area_a == 0.0 || area_b == 0.0 {
        return 0.0;
    }
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let intersection = w * h;
    intersection / (area_a + area_b - intersection)
}

/// Merges detections per label by greedy non-maximum suppression.
///
/// Output order: score descending, then label, then box (`x1, y1, x2, y2`), then tile id —
/// a total order, so the result does not depend on the input order (up to members of exactly
/// equal detections). Cost is quadratic in the detections of one label, which is fine for the
/// hundreds to thousands of one scene.
pub fn merge_detections<T>(detections: Vec<Detection<T>>, config: &MergeConfig) -> Vec<MergedDetection<T>> {
    let mut order: Vec<usize> = (0..detections.len()).collect();
    order.sort_by(|&a, &b| rank(&detections[a], &detections[b]).then(a.cmp(&b)));
    let mut suppressed = vec![false; detections.len()];
    let mut groups: Vec<(usize, Vec<usize>, Vec<String>)> = Vec::new();
    for (position, &best) in order.iter().enumerate() {
        if suppressed[best] {
            continue;
        }
        let mut members = vec![best];
        for &other in &order[position + 1..] {
            if suppressed[other] || detections[other].label != detections[best].label {
                continue;
            }
            if iou(&detections[best].scene_box, &detections[other].scene_box) > config.iou_threshold {
                suppressed[other] = true;
                members.push(other);
            }
        }
        members.sort_unstable();
        let mut tile_ids: Vec<String> = members.iter().map(|&m| detections[m].tile_id.clone()).collect();
        tile_ids.sort_unstable();
        tile_ids.dedup();
        groups.push((best, members, tile_ids));
    }
    // Move the best detections out without cloning their payloads.
    let mut slots: Vec<Option<Detection<T>>> = detections.into_iter().map(Some).collect();
    groups
        .into_iter()
        .filter_map(|(best, members, tile_ids)| slots[best].take().map(|best| MergedDetection { best, tile_ids, members }))
        .collect()
}

/// Score descending (NaN last), then label, then box, then tile id.
fn rank<T>(a: &Detection<T>, b: &Detection<T>) -> Ordering {
    let score = |d: &Detection<T>| if d.score.is_nan() { f32::NEG_INFINITY } else { d.score };
    score(b)
        .total_cmp(&score(a))
        .then_with(|| a.score.is_nan().cmp(&b.score.is_nan()))
        .then_with(|| a.label.cmp(&b.label))
        .then_with(|| a.scene_box.iter().zip(&b.scene_box).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal))
        .then_with(|| a.tile_id.cmp(&b.tile_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(label: &str, score: f32, scene_box: [f64; 4], tile_id: &str) -> Detection<usize> {
        Detection { label: label.to_owned(), score, scene_box, tile_id: tile_id.to_owned(), payload: 0 }
    }

    /// Numbers each detection's payload with its input position.
    fn numbered(mut detections: Vec<Detection<usize>>) -> Vec<Detection<usize>> {
        detections.iter_mut().enumerate().for_each(|(i, d)| d.payload = i);
        detections
    }

    #[test]
    fn one_object_seen_by_two_overlapping_tiles_becomes_one_detection() {
        // A ship at the edge of r0000_c0000 and r0000_c0001 (windows overlap by 64 px).
        let detections = numbered(vec![
            det("ship", 0.8, [440.0, 100.0, 480.0, 130.0], "r0000_c0001"),
            det("ship", 0.9, [441.0, 101.0, 481.0, 131.0], "r0000_c0000"),
        ]);
        let merged = merge_detections(detections, &MergeConfig::default());
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].best.score, 0.9);
        assert_eq!(merged[0].best.tile_id, "r0000_c0000");
        assert_eq!(merged[0].best.payload, 1, "the best detection's payload travels");
        assert_eq!(merged[0].tile_ids, ["r0000_c0000", "r0000_c0001"]);
        assert_eq!(merged[0].members, [0, 1]);
    }

    #[test]
    fn separate_objects_stay_separate() {
        let detections = vec![det("ship", 0.8, [0.0, 0.0, 10.0, 10.0], "a"), det("ship", 0.9, [20.0, 0.0, 30.0, 10.0], "b")];
        let merged = merge_detections(detections, &MergeConfig::default());
        assert_eq!(merged.len(), 2);
        assert_eq!(merged.iter().map(|m| m.tile_ids.clone()).collect::<Vec<_>>(), [["b"], ["a"]]);
    }

    #[test]
    fn different_labels_never_merge_even_with_identical_boxes() {
        let b = [5.0, 5.0, 50.0, 50.0];
        let detections = vec![det("ship", 0.9, b, "a"), det("harbor", 0.8, b, "a"), det("ship", 0.7, b, "b")];
        let merged = merge_detections(detections, &MergeConfig::default());
        assert_eq!(merged.len(), 2);
        assert_eq!((merged[0].best.label.as_str(), merged[0].tile_ids.clone()), ("ship", vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!((merged[1].best.label.as_str(), merged[1].tile_ids.clone()), ("harbor", vec!["a".to_owned()]));
    }

    #[test]
    fn boxes_from_the_same_tile_are_suppressed_and_the_tile_listed_once() {
        let detections = vec![det("car", 0.9, [0.0, 0.0, 10.0, 10.0], "t"), det("car", 0.5, [0.0, 0.0, 10.0, 9.0], "t")];
        let merged = merge_detections(detections, &MergeConfig::default());
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].tile_ids, ["t"]);
        assert_eq!(merged[0].members, [0, 1]);
    }

    #[test]
    fn the_threshold_is_respected_on_both_sides() {
        // Two 10 × 10 boxes shifted by `dx` overlap with IoU (10 - dx) / (10 + dx): dx = 10/3
        // gives exactly 0.5; a little less merges at 0.5, a little more does not.
        let iou_of = |dx: f64| iou(&[0.0, 0.0, 10.0, 10.0], &[dx, 0.0, 10.0 + dx, 10.0]);
        let (above, below) = (10.0 / 3.0 - 1e-6, 10.0 / 3.0 + 1e-6);
        assert!(iou_of(above) > 0.5 && iou_of(below) < 0.5);
        for (dx, threshold, expected) in [(above, 0.5, 1), (below, 0.5, 2), (below, 0.49, 1), (above, 0.51, 2)] {
            let detections = vec![det("ship", 0.9, [0.0, 0.0, 10.0, 10.0], "a"), det("ship", 0.8, [dx, 0.0, 10.0 + dx, 10.0], "b")];
            let merged = merge_detections(detections, &MergeConfig { iou_threshold: threshold });
            assert_eq!(merged.len(), expected, "dx {dx}, threshold {threshold}");
        }
    }

    #[test]
    fn suppression_is_greedy_from_the_best_box() {
        // b overlaps both a and c, a and c do not overlap: a (best) takes b, c stays.
        let detections = vec![
            det("x", 0.9, [0.0, 0.0, 10.0, 10.0], "a"),
            det("x", 0.8, [2.0, 0.0, 12.0, 10.0], "b"),
            det("x", 0.7, [4.0, 0.0, 14.0, 10.0], "c"),
        ];
        let merged = merge_detections(detections, &MergeConfig::default());
        assert_eq!(merged.iter().map(|m| m.tile_ids.concat()).collect::<Vec<_>>(), ["ab", "c"]);
    }

    #[test]
    fn output_is_ordered_and_independent_of_input_order() {
        let detections = vec![
            det("b", 0.5, [0.0, 0.0, 1.0, 1.0], "t1"),
            det("a", 0.5, [5.0, 0.0, 6.0, 1.0], "t1"),
            det("a", 0.5, [0.0, 0.0, 1.0, 1.0], "t2"),
            det("a", f32::NAN, [9.0, 9.0, 10.0, 10.0], "t3"),
            det("a", 0.9, [20.0, 0.0, 21.0, 1.0], "t1"),
        ];
        let key = |m: &MergedDetection<usize>| (m.best.label.clone(), m.best.scene_box, m.tile_ids.clone());
        let forward: Vec<_> = merge_detections(detections.clone(), &MergeConfig::default()).iter().map(key).collect();
        let mut reversed = detections;
        reversed.reverse();
        let backward: Vec<_> = merge_detections(reversed, &MergeConfig::default()).iter().map(key).collect();
        assert_eq!(forward, backward);
        let order: Vec<(&str, f64)> = forward.iter().map(|(l, b, _)| (l.as_str(), b[0])).collect();
        assert_eq!(order, [("a", 20.0), ("a", 0.0), ("a", 5.0), ("b", 0.0), ("a", 9.0)]);
    }

    #[test]
    fn degenerate_boxes_overlap_nothing() {
        assert_eq!(iou(&[0.0, 0.0, 0.0, 10.0], &[0.0, 0.0, 0.0, 10.0]), 0.0);
        assert_eq!(iou(&[0.0, 0.0, f64::NAN, 10.0], &[0.0, 0.0, 10.0, 10.0]), 0.0);
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 10.0, 10.0]), 1.0);
    }
}
