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
    let mut previous = vec![0usize; prediction.len() + 1];
    let mut current = vec![0usize; prediction.len() + 1];
    for t in target {
        for (j, p) in prediction.iter().enumerate() {
            current[j + 1] = if t == p { previous[j] + 1 } else { previous[j + 1].max(current[j]) };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    let lcs = previous[prediction.len()] as f64;
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
