//! Recall@k of cross-modal retrieval (image → text), as the remote-sensing image–text
//! retrieval papers (RSITMR, GeoRSCLIP, RemoteCLIP) and CLIP_benchmark report it: the share of
//! queries with at least one relevant item among the `k` best-scored gallery items.
//!
//! Ties are counted against the query: a relevant item ranks behind every irrelevant item that
//! scores at least as high. An encoder that maps everything to one point therefore scores 0,
//! not 1.

/// Recall@k for each `k` in `ks`.
///
/// `scores[q][g]` is the similarity of query `q` to gallery item `g`; `relevant[q]` lists the
/// gallery items that count as a hit for query `q` (an image's own captions).
///
/// # Errors
/// A message when `scores` and `relevant` differ in length, a row of `scores` differs from the
/// first one's length, a relevant index is outside the gallery, or a query has none.
pub fn recall_at_k(scores: &[Vec<f32>], relevant: &[Vec<usize>], ks: &[usize]) -> Result<Vec<f64>, String> {
    if scores.len() != relevant.len() {
        return Err(format!("{} rows of scores but {} lists of relevant items", scores.len(), relevant.len()));
    }
    if scores.is_empty() {
        return Ok(vec![0.0; ks.len()]);
    }
    let gallery = scores[0].len();
    let mut ranks = Vec::with_capacity(scores.len());
    for (q, (row, hits)) in scores.iter().zip(relevant).enumerate() {
        if row.len() != gallery {
            return Err(format!("query {q} has {} scores, query 0 has {gallery}", row.len()));
        }
        if hits.is_empty() {
            return Err(format!("query {q} has no relevant item"));
        }
        if let Some(bad) = hits.iter().find(|&&g| g >= gallery) {
            return Err(format!("query {q}: relevant item {bad} is outside the gallery of {gallery}"));
        }
        let best = hits.iter().map(|&g| row[g]).fold(f32::NEG_INFINITY, f32::max);
        // 0-based rank of the best relevant item: irrelevant items scoring at least as high.
        let rank = row.iter().enumerate().filter(|(g, &s)| s >= best && !hits.contains(g)).count();
        ranks.push(rank);
    }
    Ok(ks.iter().map(|&k| ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len() as f64).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_query_counts_when_any_relevant_item_is_in_the_top_k() {
        let scores = vec![vec![0.9, 0.1, 0.5, 0.3], vec![0.2, 0.8, 0.9, 0.1], vec![0.1, 0.2, 0.3, 0.4]];
        // Query 0: item 0 first. Query 1: items 1 and 3 relevant, 1 second. Query 2: item 0 last.
        let relevant = vec![vec![0], vec![1, 3], vec![0]];
        assert_eq!(recall_at_k(&scores, &relevant, &[1, 2, 4]).unwrap(), vec![1.0 / 3.0, 2.0 / 3.0, 1.0]);
    }

    #[test]
    fn ties_count_against_the_query_so_a_constant_encoder_scores_zero() {
        let scores = vec![vec![0.5; 10]; 3];
        let relevant = vec![vec![0], vec![4], vec![9]];
        assert_eq!(recall_at_k(&scores, &relevant, &[1, 5]).unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn mismatched_inputs_are_refused() {
        assert!(recall_at_k(&[vec![1.0]], &[], &[1]).unwrap_err().contains("1 rows of scores but 0"));
        assert!(recall_at_k(&[vec![1.0]], &[vec![3]], &[1]).unwrap_err().contains("outside the gallery"));
        assert!(recall_at_k(&[vec![1.0]], &[vec![]], &[1]).unwrap_err().contains("no relevant item"));
    }
}
