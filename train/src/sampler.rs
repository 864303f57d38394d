//! The data order: epochs are seeded permutations of the samples, one after another, so the
//! samples of micro-batch `step` are a function of `(seed, step)` alone and a resumed run draws
//! exactly what an uninterrupted one would.

use rand::{seq::SliceRandom as _, SeedableRng as _};

/// Sample indices of micro-batch `step` over `samples` samples, `batch` per micro-batch; a
/// batch may straddle two epochs.
pub fn batch_indices(samples: usize, batch: usize, seed: u64, step: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(batch);
    let mut permutation: Option<(usize, Vec<usize>)> = None;
    for slot in step * batch..(step + 1) * batch {
        let (epoch, position) = (slot / samples, slot % samples);
        if permutation.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..samples).collect();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(epoch as u64);
            order.shuffle(&mut rng);
            permutation = Some((epoch, order));
        }
        out.push(permutation.as_ref().map_or(position, |(_, order)| order[position]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::batch_indices;

    #[test]
    fn batches_walk_seeded_epochs_without_repeats_within_one() {
        let first_epoch: Vec<usize> = (0..5).flat_map(|step| batch_indices(10, 2, 7, step)).collect();
        let mut sorted = first_epoch.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>(), "an epoch visits every sample once");
        assert_ne!(first_epoch, (0..10).collect::<Vec<_>>(), "shuffled");
        assert_eq!(batch_indices(10, 3, 7, 4), batch_indices(10, 3, 7, 4), "a function of (seed, step)");
        assert_ne!(batch_indices(10, 2, 7, 5), batch_indices(10, 2, 7, 0), "the next epoch is another permutation");
        assert_eq!(batch_indices(10, 3, 7, 3).len(), 3, "a batch may straddle two epochs");
    }
}
