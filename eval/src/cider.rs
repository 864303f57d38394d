//! CIDEr-D as the COCO caption toolkit computes it (`pycocoevalcap.cider`): TF-IDF weighted
//! 1..4-gram vectors with document frequencies over the reference sets of the whole corpus,
//! clipped candidate counts, a Gaussian length penalty (σ = 6), averaged over references and
//! n, times 10. Scores depend on the corpus, so they are computed for all captions at once.

use std::collections::HashMap;

type Counts<'a> = HashMap<&'a [String], f64>;

fn counts(words: &[String]) -> Counts<'_> {
    let mut counts = HashMap::new();
    for n in 1..=4 {
        for window in words.windows(n) {
            *counts.entry(window).or_insert(0.0) += 1.0;
        }
    }
    counts
}

struct Vector<'a> {
    weights: [HashMap<&'a [String], f64>; 4],
    norms: [f64; 4],
    length: f64,
}

fn vectorise<'a>(counts: &Counts<'a>, document_frequency: &HashMap<&'a [String], f64>, log_refs: f64) -> Vector<'a> {
    let mut weights: [HashMap<&[String], f64>; 4] = Default::default();
    let mut norms = [0f64; 4];
    let mut length = 0.0;
    for (gram, tf) in counts {
        let df = document_frequency.get(gram).copied().unwrap_or(0.0).max(1.0).ln();
        let n = gram.len() - 1;
        let value = tf * (log_refs - df);
        weights[n].insert(gram, value);
        norms[n] += value * value;
        // The toolkit counts bigrams here (its `n == 1` is the 2-gram bucket).
        if n == 1 {
            length += tf;
        }
    }
    Vector { weights, norms: norms.map(f64::sqrt), length }
}

fn similarity(hyp: &Vector<'_>, reference: &Vector<'_>) -> [f64; 4] {
    let delta = hyp.length - reference.length;
    std::array::from_fn(|n| {
        let mut value = 0.0;
        for (gram, weight) in &hyp.weights[n] {
            let r = reference.weights[n].get(gram).copied().unwrap_or(0.0);
            value += weight.min(r) * r;
        }
        if hyp.norms[n] != 0.0 && reference.norms[n] != 0.0 {
            value /= hyp.norms[n] * reference.norms[n];
        }
        value * (-(delta * delta) / (2.0 * 36.0)).exp()
    })
}

/// Corpus CIDEr-D and the per-caption scores.
pub fn cider_d(candidates: &[Vec<String>], references: &[Vec<Vec<String>>]) -> (f64, Vec<f64>) {
    let reference_counts: Vec<Vec<Counts<'_>>> = references.iter().map(|refs| refs.iter().map(|r| counts(r)).collect()).collect();
    let mut document_frequency: HashMap<&[String], f64> = HashMap::new();
    for refs in &reference_counts {
        let mut seen: std::collections::HashSet<&[String]> = std::collections::HashSet::new();
        for r in refs {
            seen.extend(r.keys().copied());
        }
        for gram in seen {
            *document_frequency.entry(gram).or_insert(0.0) += 1.0;
        }
    }
    let log_refs = (references.len() as f64).ln();
    let scores: Vec<f64> = candidates
        .iter()
        .zip(&reference_counts)
        .map(|(candidate, refs)| {
            let hyp = vectorise(&counts(candidate), &document_frequency, log_refs);
            let mut sum = [0f64; 4];
            for r in refs {
                let reference = vectorise(r, &document_frequency, log_refs);
                for (s, v) in sum.iter_mut().zip(similarity(&hyp, &reference)) {
                    *s += v;
                }
            }
            let mean = sum.iter().sum::<f64>() / 4.0;
            mean / refs.len().max(1) as f64 * 10.0
        })
        .collect();
    let corpus = if scores.is_empty() { 0.0 } else { scores.iter().sum::<f64>() / scores.len() as f64 };
    (corpus, scores)
}
