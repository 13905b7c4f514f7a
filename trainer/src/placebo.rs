//! The placebo control of an RL run (`trainer.placebo`): each round's step advantages are permuted across the
//! batch's steps before the update. The update keeps its size, its number of steps and its advantage
//! distribution, but an advantage no longer belongs to the step that earned it, so an RL run that beats its
//! placebo learned from the reward signal, not from taking more optimizer steps.
use crate::batch::TrainItem;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Permutes the step advantages of `items` (one value per (item, step), spread over the step's tokens) with a
/// generator seeded by `seed` and `round`, so a run is reproducible. Tokens outside every step keep advantage 0.
/// Returns how many step advantages were permuted.
pub fn shuffle_step_advantages(items: &mut [TrainItem], seed: u64, round: u64) -> usize {
    // (item, step) slots and their advantage: every token of a step carries the step's A_j.
    let mut slots: Vec<(usize, i64)> = Vec::new();
    let mut values: Vec<f32> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let mut seen = std::collections::BTreeMap::new();
        for (p, &j) in it.step_ids.iter().enumerate() {
            if j >= 0 && it.mask[p] > 0.0 {
                seen.entry(j).or_insert(it.advantages[p]);
            }
        }
        for (j, a) in seen {
            slots.push((i, j));
            values.push(a);
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed ^ round.wrapping_mul(0x9e3779b97f4a7c15) ^ 0x0070_6c61_6365_626f,
    );
    values.shuffle(&mut rng);
    for (&(i, j), &a) in slots.iter().zip(&values) {
        let it = &mut items[i];
        for p in 0..it.step_ids.len() {
            if it.step_ids[p] == j && it.mask[p] > 0.0 {
                it.advantages[p] = a;
            }
        }
    }
    slots.len()
}
