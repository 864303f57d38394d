//! ROUGE-1 and ROUGE-L F-measures as Google's `rouge-score` computes them (its tokenizer,
//! optional Porter stemming of tokens longer than 3 characters; with several references the
//! one with the best F-measure counts), averaged over captions.

use std::collections::HashMap;

use crate::porter;

/// Precision, recall and F-measure.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Prf {
    /// Precision.
    pub precision: f64,
    /// Recall.
    pub recall: f64,
    /// Harmonic mean.
    pub fmeasure: f64,
}

impl Prf {
    fn new(precision: f64, recall: f64) -> Self {
        let fmeasure = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        Self { precision, recall, fmeasure }
    }
}

/// `rouge-score`'s tokens of `text`.
pub fn tokens(text: &str, use_stemmer: bool) -> Vec<String> {
    let base = crate::text::tokenize(text);
    if use_stemmer {
        base.into_iter().map(|t| if t.chars().count() > 3 { porter::stem(&t) } else { t }).filter(|t| !t.is_empty()).collect()
    } else {
        base
    }
}

/// ROUGE-1 of one pair of token lists.
pub fn rouge1(target: &[String], prediction: &[String]) -> Prf {
    let mut target_counts: HashMap<&str, usize> = HashMap::new();
    for t in target {
        *target_counts.entry(t).or_insert(0) += 1;
    }
    let mut prediction_counts: HashMap<&str, usize> = HashMap::new();
    for t in prediction {
        *prediction_counts.entry(t).or_insert(0) += 1;
    }
    let overlap: usize = target_counts.iter().map(|(t, c)| (*c).min(prediction_counts.get(t).copied().unwrap_or(0))).sum();
    Prf::new(overlap as f64 / prediction.len().max(1) as f64, overlap as f64 / target.len().max(1) as f64)
}

/// ROUGE-L (longest common subsequence) of one pair of token lists.
pub fn rouge_l(target: &[String], prediction: &[String]) -> Prf {
    if target.is_empty() || prediction.is_empty() {
        return Prf::default();
    }
    let lcs = lcs_length(target, prediction) as f64;
    Prf::new(lcs / prediction.len() as f64, lcs / target.len() as f64)
}

/// The score against several references: the one with the highest F-measure (first on ties).
pub fn best_of(references: &[Vec<String>], prediction: &[String], metric: fn(&[String], &[String]) -> Prf) -> Prf {
    let mut best: Option<Prf> = None;
    for reference in references {
        let score = metric(reference, prediction);
        if best.is_none_or(|b| score.fmeasure > b.fmeasure) {
            best = Some(score);
        }
    }
    best.unwrap_or_default()
}

/// ROUGE-L as pycocoevalcap 1.2 computes it (`pycocoevalcap.rouge.Rouge`, β = 1.2): the LCS of
/// the candidate with each reference, the best precision and the best recall over references
/// (possibly from different references), combined as `(1 + β²)·P·R / (R + β²·P)`. pycocoevalcap
/// splits captions on single spaces, so an empty caption is one empty token; kept.
pub fn coco_rouge_l(references: &[Vec<String>], candidate: &[String]) -> f64 {
    const BETA: f64 = 1.2;
    let as_split = |tokens: &[String]| if tokens.is_empty() { vec![String::new()] } else { tokens.to_vec() };
    let candidate = as_split(candidate);
    let (mut precision, mut recall) = (0.0f64, 0.0f64);
    for reference in references {
        let reference = as_split(reference);
        let lcs = lcs_length(&reference, &candidate) as f64;
        precision = precision.max(lcs / candidate.len() as f64);
        recall = recall.max(lcs / reference.len() as f64);
    }
    if precision == 0.0 || recall == 0.0 {
        return 0.0;
    }
    (1.0 + BETA * BETA) * precision * recall / (recall + BETA * BETA * precision)
}

fn lcs_length(a: &[String], b: &[String]) -> usize {
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            current[j + 1] = if x == y { previous[j] + 1 } else { previous[j + 1].max(current[j]) };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The score against several references, averaged (F-measure, precision and recall each):
/// what scripts that loop `scorer.score(ref, pred)` over references and take the mean report.
pub fn mean_of(references: &[Vec<String>], prediction: &[String], metric: fn(&[String], &[String]) -> Prf) -> Prf {
    if references.is_empty() {
        return Prf::default();
    }
    let n = references.len() as f64;
    let scores: Vec<Prf> = references.iter().map(|r| metric(r, prediction)).collect();
    Prf {
        precision: scores.iter().map(|s| s.precision).sum::<f64>() / n,
        recall: scores.iter().map(|s| s.recall).sum::<f64>() / n,
        fmeasure: scores.iter().map(|s| s.fmeasure).sum::<f64>() / n,
    }
}
