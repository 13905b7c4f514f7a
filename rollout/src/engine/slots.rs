//! What each KV-cache slot holds, and where a new prompt should go.
//!
//! A slot keeps the tokens whose keys and values it holds after its sequence finished. A new request reuses the
//! slot (or copies from the active slot) sharing the longest token prefix with its prompt: the next turn of a
//! consultation finds its whole history cached, and the samples of a GRPO group share one prefill.

/// Host-side mirror of one slot: the token ids whose KV it holds (and their expert choices, when recorded).
#[derive(Clone, Debug, Default)]
pub struct SlotState {
    pub tokens: Vec<u32>,
    /// `layers * k` expert ids per cached token (empty when routing is not recorded).
    pub routing: Vec<u16>,
    /// A running sequence owns this slot.
    pub busy: bool,
    /// Engine tick of the last use: least recently used slots are evicted first.
    pub last_used: u64,
}

/// Length of the common prefix of two token sequences.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Where a new prompt's cached prefix comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Use this idle slot, truncated to `keep` tokens (0: a fresh slot).
    InPlace { slot: usize, keep: usize },
    /// Take idle slot `slot` and copy the first `len` tokens of busy slot `from` into it.
    CopyFrom {
        slot: usize,
        from: usize,
        len: usize,
    },
}

/// Picks a slot for `prompt`. At most `prompt.len() - 1` tokens are reused: the last prompt token must be fed
/// to get the logits of the first new token. None when every slot is busy.
pub fn place(slots: &[SlotState], prompt: &[u32]) -> Option<Placement> {
    let cap = prompt.len().saturating_sub(1);
    let mut best_idle: Option<(usize, usize)> = None; // (slot, shared)
    let mut best_busy: Option<(usize, usize)> = None;
    for (i, s) in slots.iter().enumerate() {
        let shared = common_prefix(&s.tokens, prompt).min(cap);
        let best = if s.busy {
            &mut best_busy
        } else {
            &mut best_idle
        };
        if best.is_none_or(|(_, b)| shared > b) {
            *best = Some((i, shared));
        }
    }
    let (idle, idle_shared) = best_idle?;
    if let Some((from, len)) = best_busy.filter(|&(_, len)| len > idle_shared) {
        return Some(Placement::CopyFrom {
            slot: victim(slots),
            from,
            len,
        });
    }
    if idle_shared > 0 {
        return Some(Placement::InPlace {
            slot: idle,
            keep: idle_shared,
        });
    }
    Some(Placement::InPlace {
        slot: victim(slots),
        keep: 0,
    })
}

/// The idle slot to overwrite: empty first, then least recently used. Panics when every slot is busy (the engine
/// admits at most `max_batch <= kv_slots` sequences).
pub fn victim(slots: &[SlotState]) -> usize {
    slots
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.busy)
        .min_by_key(|(_, s)| (!s.tokens.is_empty(), s.last_used))
        .map(|(i, _)| i)
        .expect("kv_slots >= max_batch leaves an idle slot")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(tokens: &[u32], busy: bool, last_used: u64) -> SlotState {
        SlotState {
            tokens: tokens.to_vec(),
            routing: vec![],
            busy,
            last_used,
        }
    }

    #[test]
    fn next_turn_reuses_its_own_slot() {
        let slots = vec![
            slot(&[1, 2, 3], false, 5),
            slot(&[1, 2, 3, 4, 5], false, 1),
            slot(&[], false, 0),
        ];
        assert_eq!(
            place(&slots, &[1, 2, 3, 4, 5, 6, 7]),
            Some(Placement::InPlace { slot: 1, keep: 5 })
        );
        // The whole prompt cached: still feed its last token.
        assert_eq!(
            place(&slots, &[1, 2, 3, 4, 5]),
            Some(Placement::InPlace { slot: 1, keep: 4 })
        );
    }

    #[test]
    fn siblings_copy_from_a_running_slot_into_an_empty_one() {
        let slots = vec![
            slot(&[9, 9], false, 3),
            slot(&[1, 2, 3, 4, 5, 6], true, 9),
            slot(&[], false, 0),
        ];
        assert_eq!(
            place(&slots, &[1, 2, 3, 4, 7]),
            Some(Placement::CopyFrom {
                slot: 2,
                from: 1,
                len: 4
            })
        );
        // Nothing shared: a fresh slot, empty before least recently used.
        assert_eq!(
            place(&slots, &[5]),
            Some(Placement::InPlace { slot: 2, keep: 0 })
        );
        let all_busy = vec![slot(&[], true, 0)];
        assert_eq!(place(&all_busy, &[1]), None);
    }
}
