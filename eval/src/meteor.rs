//! METEOR as NLTK computes it (`nltk.translate.meteor_score`, nltk 3.9.2, α = 0.9, β = 3,
//! γ = 0.5): exact, then Porter-stem, then WordNet-synonym matching, scanning both token
//! lists from the end; F-mean weighted towards recall, times a fragmentation penalty; with
//! several references the best score counts. NLTK's quirk is kept: the synonym stage sees the
//! stemmed forms left over from the stem stage.

use crate::porter;
use crate::wordnet::WordNet;

type Enumerated = Vec<(usize, String)>;

/// Pairs equal words, last hypothesis word first; removes matched words from both lists.
fn match_enums(hypothesis: &mut Enumerated, reference: &mut Enumerated, equal: impl Fn(&str, &str) -> bool) -> Vec<(usize, usize)> {
    let mut matches = Vec::new();
    for i in (0..hypothesis.len()).rev() {
        for j in (0..reference.len()).rev() {
            if equal(&hypothesis[i].1, &reference[j].1) {
                matches.push((hypothesis[i].0, reference[j].0));
                hypothesis.remove(i);
                reference.remove(j);
                break;
            }
        }
    }
    matches
}

/// The synonym stage: a hypothesis word matches a reference word that is itself or a lemma
/// name (without `_`) of one of its synsets.
fn match_synonyms(hypothesis: &mut Enumerated, reference: &mut Enumerated, wordnet: &WordNet) -> Vec<(usize, usize)> {
    let mut matches = Vec::new();
    for i in (0..hypothesis.len()).rev() {
        let mut synonyms = wordnet.synonyms(&hypothesis[i].1);
        synonyms.retain(|s| !s.contains('_'));
        synonyms.insert(hypothesis[i].1.clone());
        if let Some(j) = (0..reference.len()).rev().find(|j| synonyms.contains(&reference[*j].1)) {
            matches.push((hypothesis[i].0, reference[j].0));
            hypothesis.remove(i);
            reference.remove(j);
        }
    }
    matches
}

fn chunks(matches: &[(usize, usize)]) -> usize {
    1 + matches.windows(2).filter(|w| !(w[1].0 == w[0].0 + 1 && w[1].1 == w[0].1 + 1)).count()
}

/// METEOR of one tokenised hypothesis against one tokenised reference.
pub fn single(reference: &[String], hypothesis: &[String], wordnet: Option<&WordNet>) -> f64 {
    let (alpha, beta, gamma) = (0.9, 3.0, 0.5);
    let mut hyp: Enumerated = hypothesis.iter().map(|w| w.to_lowercase()).enumerate().collect();
    let mut refs: Enumerated = reference.iter().map(|w| w.to_lowercase()).enumerate().collect();
    let (hyp_len, ref_len) = (hyp.len(), refs.len());
    let mut matches = match_enums(&mut hyp, &mut refs, |a, b| a == b);
    let mut hyp: Enumerated = hyp.into_iter().map(|(i, w)| (i, porter::stem(&w))).collect();
    let mut refs: Enumerated = refs.into_iter().map(|(i, w)| (i, porter::stem(&w))).collect();
    matches.extend(match_enums(&mut hyp, &mut refs, |a, b| a == b));
    if let Some(wordnet) = wordnet {
        matches.extend(match_synonyms(&mut hyp, &mut refs, wordnet));
    }
    matches.sort_by_key(|m| m.0);
    let count = matches.len() as f64;
    if count == 0.0 || hyp_len == 0 || ref_len == 0 {
        return 0.0;
    }
    let precision = count / hyp_len as f64;
    let recall = count / ref_len as f64;
    let fmean = precision * recall / (alpha * precision + (1.0 - alpha) * recall);
    let fragmentation = chunks(&matches) as f64 / count;
    (1.0 - gamma * fragmentation.powf(beta)) * fmean
}

/// METEOR against several references: the best.
pub fn meteor(references: &[Vec<String>], hypothesis: &[String], wordnet: Option<&WordNet>) -> f64 {
    references.iter().map(|r| single(r, hypothesis, wordnet)).fold(0.0, f64::max)
}
