//! BLEU-1..4 as the COCO caption toolkit computes it (`pycocoevalcap.bleu`, option
//! `closest`): n-gram precisions clipped by the maximum count in any reference, summed over
//! the corpus, with a brevity penalty from the reference length closest to each candidate.
//! Returns the corpus scores and the per-caption ones.

use std::collections::HashMap;

type Ngrams<'a> = HashMap<&'a [String], usize>;

fn ngrams(words: &[String], max_n: usize) -> Ngrams<'_> {
    let mut counts = HashMap::new();
    for n in 1..=max_n {
        for window in words.windows(n) {
            *counts.entry(window).or_insert(0) += 1;
        }
    }
    counts
}

/// BLEU scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Bleu {
    /// Corpus BLEU-1..4.
    pub corpus: [f64; 4],
    /// Per-caption BLEU-1..4.
    pub per_caption: Vec<[f64; 4]>,
}

/// Scores tokenised candidates against their tokenised references.
pub fn bleu(candidates: &[Vec<String>], references: &[Vec<Vec<String>>]) -> Bleu {
    const SMALL: f64 = 1e-9;
    const TINY: f64 = 1e-15;
    let mut totals_guess = [0f64; 4];
    let mut totals_correct = [0f64; 4];
    let (mut total_test, mut total_ref) = (0f64, 0f64);
    let mut per_caption = Vec::with_capacity(candidates.len());
    for (candidate, refs) in candidates.iter().zip(references) {
        let mut max_counts: HashMap<&[String], usize> = HashMap::new();
        for reference in refs {
            for (gram, count) in ngrams(reference, 4) {
                let entry = max_counts.entry(gram).or_insert(0);
                *entry = (*entry).max(count);
            }
        }
        let test_len = candidate.len();
        // Closest reference length; ties go to the shorter one.
        let ref_len = refs.iter().map(|r| r.len()).min_by_key(|l| (l.abs_diff(test_len), *l)).unwrap_or(0);
        let mut correct = [0f64; 4];
        for (gram, count) in ngrams(candidate, 4) {
            correct[gram.len() - 1] += count.min(max_counts.get(gram).copied().unwrap_or(0)) as f64;
        }
        let guess: [f64; 4] = std::array::from_fn(|k| (test_len + 1).saturating_sub(k + 1) as f64);
        let mut scores = [0f64; 4];
        let mut product = 1.0;
        for k in 0..4 {
            product *= (correct[k] + TINY) / (guess[k] + SMALL);
            scores[k] = product.powf(1.0 / (k + 1) as f64);
            totals_guess[k] += guess[k];
            totals_correct[k] += correct[k];
        }
        let ratio = (test_len as f64 + TINY) / (ref_len as f64 + SMALL);
        if ratio < 1.0 {
            for score in &mut scores {
                *score *= (1.0 - 1.0 / ratio).exp();
            }
        }
        per_caption.push(scores);
        total_test += test_len as f64;
        total_ref += ref_len as f64;
    }
    let mut corpus = [0f64; 4];
    let mut product = 1.0;
    for k in 0..4 {
        product *= (totals_correct[k] + TINY) / (totals_guess[k] + SMALL);
        corpus[k] = product.powf(1.0 / (k + 1) as f64);
    }
    let ratio = (total_test + TINY) / (total_ref + SMALL);
    if ratio < 1.0 {
        for score in &mut corpus {
            *score *= (1.0 - 1.0 / ratio).exp();
        }
    }
    Bleu { corpus, per_caption }
}
