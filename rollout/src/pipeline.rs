//! The segmented pipeline (method.md section 2): (case, stage) segments, one pool per stage, the gated
//! transition, and the choice of which segments the next batch plays (mixing stages of different cases).
//! [`StagePools`] is plain data: a checkpoint saves it and a resumed run continues the same curriculum.
use crate::env::Consultation;
use serde::{Deserialize, Serialize};
use spar_core::Stage;
use std::collections::VecDeque;

/// A (case, stage) unit waiting to be played: the pooled prefix x_k (the consultation so far, its earlier
/// stages' outputs included) and the stage to play next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub case_id: String,
    pub stage: Stage,
    pub prefix: Consultation,
    /// The group whose sample this segment continues (None for a fresh case).
    pub parent_group: Option<String>,
    /// Gate score V_{k-1} of the parent sample.
    pub parent_score: Option<f64>,
}

/// Counters of the pipeline, per stage (index = `Stage::index`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PipelineStats {
    pub groups_played: [u64; 4],
    pub promoted: [u64; 4],
    pub gated_out: [u64; 4],
    pub failed: [u64; 4],
}

impl PipelineStats {
    /// Adds `other`'s counters, stage by stage.
    pub fn add(&mut self, other: &PipelineStats) {
        for i in 0..4 {
            self.groups_played[i] += other.groups_played[i];
            self.promoted[i] += other.promoted[i];
            self.gated_out[i] += other.gated_out[i];
            self.failed[i] += other.failed[i];
        }
    }
}

/// The per-stage pools D_k (Inquiry's pool holds nothing: fresh cases start there on demand) and the position
/// in the case list.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StagePools {
    pub pools: [VecDeque<Segment>; 4],
    /// Index of the next case to open, counted over epochs (case = cases[next_case % n]).
    pub next_case: u64,
    /// Collection rounds played so far.
    pub round: u64,
    pub stats: PipelineStats,
}

impl StagePools {
    /// Segments waiting per stage.
    pub fn sizes(&self) -> [usize; 4] {
        [0, 1, 2, 3].map(|i| self.pools[i].len())
    }

    pub fn push(&mut self, seg: Segment) {
        self.pools[seg.stage.index()].push_back(seg);
    }

    /// Takes up to `n` pooled segments for the next batch, latest stage first (so a case's pipeline drains
    /// and batch t mixes Inq(T_t) with DDX(T_{t-1}), ...). The caller opens fresh cases for the rest.
    pub fn take(&mut self, n: usize) -> Vec<Segment> {
        let mut out = Vec::new();
        for stage in [Stage::Diag, Stage::Lab, Stage::Ddx] {
            while out.len() < n {
                match self.pools[stage.index()].pop_front() {
                    Some(s) => out.push(s),
                    None => break,
                }
            }
        }
        out
    }

    /// The pools of rank `rank` of `world` from the pools `saved` ranks checkpointed (a resume on another world
    /// size): each rank keeps the pooled segments of its own cases (`owns`; case shards partition the cases, so
    /// every segment lands on exactly one rank, in the saved order), continues the case position at its share of
    /// the cases opened so far, and the round count at the furthest rank's; rank 0 carries the summed counters.
    pub fn reshard(
        saved: Vec<StagePools>,
        owns: impl Fn(&str) -> bool,
        rank: usize,
        world: usize,
    ) -> StagePools {
        let world = world.max(1) as u64;
        let opened: u64 = saved.iter().map(|p| p.next_case).sum();
        let mut out = StagePools {
            next_case: opened / world + u64::from((rank as u64) < opened % world),
            round: saved.iter().map(|p| p.round).max().unwrap_or(0),
            ..Default::default()
        };
        for part in saved {
            if rank == 0 {
                out.stats.add(&part.stats);
            }
            for seg in part.pools.into_iter().flatten() {
                if owns(&seg.case_id) {
                    out.push(seg);
                }
            }
        }
        out
    }
}

/// The gate of Eqs. 5-6 with top-m promotion: of the samples whose score reaches `tau`, the `top_m` best
/// (ties: lowest sample index) go on. `scores[i]` is sample i's V_k, None for a sample that failed.
pub fn promote(scores: &[Option<f64>], tau: f64, top_m: usize) -> Vec<usize> {
    let mut passing: Vec<(usize, f64)> = scores
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.filter(|v| *v >= tau).map(|v| (i, v)))
        .collect();
    passing.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    passing.into_iter().take(top_m).map(|(i, _)| i).collect()
}

/// The gate scores [`promote`] chooses among: sample i's V_k when it can continue into the next stage
/// (`can_continue[i]`: it finished its stage and the consultation goes on), None otherwise. A sample that ended
/// the consultation early (a diagnosis given out of turn, the simulator ending it) cannot be promoted, so the gate
/// passes over it to the best passing sample that can continue (method.md section 9) instead of promoting
/// nothing.
pub fn promotion_candidates(scores: &[Option<f64>], can_continue: &[bool]) -> Vec<Option<f64>> {
    scores
        .iter()
        .zip(can_continue)
        .map(|(s, &ok)| if ok { *s } else { None })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(case_id: &str, stage: Stage) -> Segment {
        Segment {
            case_id: case_id.into(),
            stage,
            prefix: Consultation {
                case_id: case_id.into(),
                mode: spar_core::sample::EpisodeMode::Fresh,
                stream: Default::default(),
                turns: vec![],
                sim_dialogue: vec![],
                next_user: None,
                next_user_from_simulator: false,
                stage,
                truncated_replies: 0,
            },
            parent_group: None,
            parent_score: None,
        }
    }

    #[test]
    fn resharding_sends_each_segment_to_the_rank_that_owns_its_case_and_shares_the_case_position() {
        // Two saved ranks (cases c0 c2 on rank 0, c1 c3 on rank 1), resumed on three ranks owning c<r mod 3>.
        let mut a = StagePools {
            next_case: 5,
            round: 4,
            ..Default::default()
        };
        a.push(segment("c0", Stage::Ddx));
        a.push(segment("c2", Stage::Lab));
        a.stats.groups_played = [1, 2, 3, 4];
        let mut b = StagePools {
            next_case: 3,
            round: 4,
            ..Default::default()
        };
        b.push(segment("c1", Stage::Ddx));
        b.push(segment("c3", Stage::Diag));
        b.stats.groups_played = [10, 20, 30, 40];
        let owner = |id: &str| id[1..].parse::<usize>().unwrap() % 3;
        let parts: Vec<StagePools> = (0..3)
            .map(|r| StagePools::reshard(vec![a.clone(), b.clone()], |id| owner(id) == r, r, 3))
            .collect();
        let ids = |p: &StagePools| -> Vec<String> {
            p.pools
                .iter()
                .flatten()
                .map(|s| s.case_id.clone())
                .collect()
        };
        assert_eq!(ids(&parts[0]), ["c0", "c3"]);
        assert_eq!(ids(&parts[1]), ["c1"]);
        assert_eq!(ids(&parts[2]), ["c2"]);
        // Every segment kept its stage; 8 cases opened split 3 / 3 / 2; the counters only on rank 0.
        assert_eq!(parts[0].sizes(), [0, 1, 0, 1]);
        assert_eq!(
            parts.iter().map(|p| p.next_case).collect::<Vec<_>>(),
            [3, 3, 2]
        );
        assert!(parts.iter().all(|p| p.round == 4));
        assert_eq!(parts[0].stats.groups_played, [11, 22, 33, 44]);
        assert_eq!(parts[1].stats, PipelineStats::default());
        // One rank (resume in one process) keeps everything.
        let one = StagePools::reshard(vec![a, b], |_| true, 0, 1);
        assert_eq!(one.sizes(), [0, 2, 1, 1]);
        assert_eq!(one.next_case, 8);
    }

    #[test]
    fn a_best_sample_that_cannot_continue_gives_way_to_the_next_passing_one() {
        let scores = [Some(0.7), Some(1.0), Some(0.9), Some(0.2)];
        // Sample 1 scored best but ended the consultation: sample 2 is promoted in its place.
        let eligible = promotion_candidates(&scores, &[true, false, true, true]);
        assert_eq!(promote(&eligible, 0.6, 1), vec![2]);
        assert_eq!(promote(&eligible, 0.6, 2), vec![2, 0]);
        // No passing sample can continue: nothing is promoted.
        let eligible = promotion_candidates(&scores, &[false, false, false, true]);
        assert!(promote(&eligible, 0.6, 1).is_empty());
    }

    #[test]
    fn gate_keeps_the_best_passing_lowest_index_on_ties() {
        assert_eq!(
            promote(&[Some(0.5), Some(0.9), Some(0.9), None, Some(0.7)], 0.6, 1),
            vec![1]
        );
        assert_eq!(
            promote(&[Some(0.5), Some(0.9), Some(0.9), None, Some(0.7)], 0.6, 2),
            vec![1, 2]
        );
        assert_eq!(
            promote(&[Some(0.5), Some(0.59), None], 0.6, 1),
            Vec::<usize>::new()
        );
        assert_eq!(promote(&[Some(0.6)], 0.6, 3), vec![0]);
    }
}
