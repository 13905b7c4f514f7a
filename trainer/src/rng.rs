//! The run's random stream (sampling, shuffling), saved in checkpoints as seed + word position so a resumed run
//! draws exactly the numbers the uninterrupted run would have.
use crate::checkpoint::RngState;
use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub fn new_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn save_rng(seed: u64, rng: &ChaCha8Rng) -> RngState {
    RngState {
        seed,
        word_pos: rng.get_word_pos().to_string(),
    }
}

pub fn restore_rng(st: &RngState) -> Result<ChaCha8Rng> {
    let mut rng = ChaCha8Rng::seed_from_u64(st.seed);
    let pos: u128 = st
        .word_pos
        .parse()
        .with_context(|| format!("rng word_pos `{}` is not a number", st.word_pos))?;
    rng.set_word_pos(pos);
    Ok(rng)
}
