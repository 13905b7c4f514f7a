//! Dynamic rubrics (method.md section 5): a core set per case plus a global dynamic set of failure modes.
//! A candidate failure mode (a rubric item with negative points) is watched on high-scoring responses; it is
//! admitted when its violation rate in an epoch exceeds `admit_rate`, and retired when its rate stays at or
//! below `exit_rate` for `exit_epochs` consecutive epochs. The state is serialisable and saved with checkpoints.
use serde::{Deserialize, Serialize};
use spar_core::case::RubricItem;
use spar_core::recipe::DynamicRubricConfig;
use spar_core::{Error, Result};
use std::path::Path;

/// Version of the saved state; `load` rejects any other.
pub const STATE_VERSION: u32 = 1;

/// One epoch's observation of a failure mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRate {
    pub epoch: u32,
    pub observed: u32,
    pub violated: u32,
}

/// A failure mode and its life so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DynamicItem {
    pub item: RubricItem,
    /// In the dynamic set: judged with the case rubric and counted in R_task.
    pub active: bool,
    #[serde(default)]
    pub admitted_epoch: Option<u32>,
    #[serde(default)]
    pub retired_epoch: Option<u32>,
    /// Consecutive trusted epochs at or below `exit_rate` while active.
    pub quiet_epochs: u32,
    /// Counts of the epoch in progress (saved too: a checkpoint can fall mid-epoch).
    pub observed: u32,
    pub violated: u32,
    pub history: Vec<EpochRate>,
}

/// A change of the dynamic set at an epoch boundary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transition {
    Admitted { criterion: String, epoch: u32 },
    Retired { criterion: String, epoch: u32 },
}

/// The dynamic rubric state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DynamicRubrics {
    pub version: u32,
    /// Epochs completed.
    pub epoch: u32,
    pub items: Vec<DynamicItem>,
}

impl DynamicRubrics {
    /// A fresh state watching `candidates` (none active). Candidates must carry negative points: they are
    /// failure modes, met when the response shows the failure.
    pub fn new(candidates: Vec<RubricItem>) -> Result<Self> {
        for (i, c) in candidates.iter().enumerate() {
            if c.points >= 0 || c.points < -10 {
                return Err(Error::Other(format!(
                    "dynamic rubric candidate {i} (`{}`): points {} must be in [-10, -1]",
                    c.criterion, c.points
                )));
            }
        }
        let items = candidates
            .into_iter()
            .map(|item| DynamicItem {
                item,
                active: false,
                admitted_epoch: None,
                retired_epoch: None,
                quiet_epochs: 0,
                observed: 0,
                violated: 0,
                history: vec![],
            })
            .collect();
        Ok(DynamicRubrics {
            version: STATE_VERSION,
            epoch: 0,
            items,
        })
    }

    /// Reads candidates from a JSONL file of rubric items (errors name the line).
    pub fn from_candidates_file(path: &Path) -> Result<Self> {
        let items: Vec<RubricItem> = spar_core::fsio::read_jsonl_strict(path, None)?;
        DynamicRubrics::new(items)
    }

    /// The items in the dynamic set now.
    pub fn active_items(&self) -> Vec<RubricItem> {
        self.items
            .iter()
            .filter(|d| d.active)
            .map(|d| d.item.clone())
            .collect()
    }

    /// Every watched item (active or not): what is judged on a high-scoring response.
    pub fn watched_items(&self) -> Vec<RubricItem> {
        self.items.iter().map(|d| d.item.clone()).collect()
    }

    /// Records one high-scoring response's verdict on the item with this criterion (`violated`: the failure
    /// mode was present). Unknown criteria are ignored.
    pub fn observe(&mut self, criterion: &str, violated: bool) {
        if let Some(d) = self
            .items
            .iter_mut()
            .find(|d| d.item.criterion == criterion)
        {
            d.observed += 1;
            d.violated += u32::from(violated);
        }
    }

    /// Closes the epoch: applies the admission and exit rules and starts new counts. Epochs with fewer than
    /// `min_observations` high-scoring responses for an item change nothing for it.
    pub fn end_epoch(&mut self, cfg: &DynamicRubricConfig) -> Vec<Transition> {
        let epoch = self.epoch + 1;
        let mut out = Vec::new();
        for d in &mut self.items {
            d.history.push(EpochRate {
                epoch,
                observed: d.observed,
                violated: d.violated,
            });
            if d.observed >= cfg.min_observations.max(1) {
                let rate = d.violated as f64 / d.observed as f64;
                if !d.active && rate > cfg.admit_rate {
                    d.active = true;
                    d.admitted_epoch = Some(epoch);
                    d.quiet_epochs = 0;
                    out.push(Transition::Admitted {
                        criterion: d.item.criterion.clone(),
                        epoch,
                    });
                } else if d.active {
                    d.quiet_epochs = if rate <= cfg.exit_rate {
                        d.quiet_epochs + 1
                    } else {
                        0
                    };
                    if d.quiet_epochs >= cfg.exit_epochs {
                        d.active = false;
                        d.retired_epoch = Some(epoch);
                        d.quiet_epochs = 0;
                        out.push(Transition::Retired {
                            criterion: d.item.criterion.clone(),
                            epoch,
                        });
                    }
                }
            }
            d.observed = 0;
            d.violated = 0;
        }
        self.epoch = epoch;
        out
    }

    /// Saves the state as JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Other(e.to_string()))?;
        spar_core::fsio::write_atomic(path, &bytes)
    }

    /// Loads a saved state; rejects another version.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let s: DynamicRubrics = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(path.display(), e.to_string()))?;
        if s.version != STATE_VERSION {
            return Err(Error::invalid(
                path.display(),
                format!(
                    "dynamic rubric state version {} is not {STATE_VERSION}",
                    s.version
                ),
            ));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(c: &str) -> RubricItem {
        RubricItem {
            criterion: c.into(),
            points: -3,
            tags: vec![],
            rule: None,
        }
    }

    #[test]
    fn admission_exit_and_round_trip() {
        let cfg = DynamicRubricConfig {
            enabled: true,
            admit_rate: 0.2,
            exit_rate: 0.01,
            exit_epochs: 2,
            candidates: None,
            high_score: 0.8,
            min_observations: 5,
        };
        let mut s =
            DynamicRubrics::new(vec![item("repeats questions"), item("templated")]).unwrap();
        for i in 0..10 {
            s.observe("repeats questions", i < 3); // 30% > 20%
            s.observe("templated", i < 2); // 20%, not above
        }
        let t = s.end_epoch(&cfg);
        assert_eq!(
            t,
            vec![Transition::Admitted {
                criterion: "repeats questions".into(),
                epoch: 1
            }]
        );
        assert_eq!(s.active_items().len(), 1);
        // Too few observations: nothing changes, the quiet streak does not grow.
        s.observe("repeats questions", false);
        assert!(s.end_epoch(&cfg).is_empty());
        for _ in 0..2 {
            for _ in 0..5 {
                s.observe("repeats questions", false);
            }
        }
        // first quiet epoch (10 observations, rate 0)
        assert!(s.end_epoch(&cfg).is_empty());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dyn.json");
        s.observe("repeats questions", false);
        s.save(&p).unwrap();
        let mut s = DynamicRubrics::load(&p).unwrap();
        assert_eq!(
            s.items[0].observed, 1,
            "mid-epoch counts survive a checkpoint"
        );
        for _ in 0..4 {
            s.observe("repeats questions", false);
        }
        assert_eq!(
            s.end_epoch(&cfg),
            vec![Transition::Retired {
                criterion: "repeats questions".into(),
                epoch: 4
            }]
        );
        assert!(s.active_items().is_empty());
        assert!(
            DynamicRubrics::new(vec![RubricItem {
                points: 2,
                ..item("x")
            }])
            .is_err()
        );
    }
}
