//! The cases a recipe's `[data]` section names: the training split, the fresh RL-only patients and the
//! evaluation split (at most `[eval] max_cases` of them).
use anyhow::{Result, bail};
use spar_core::Case;
use spar_core::recipe::Recipe;
use std::collections::HashMap;
use std::path::Path;

/// Training, RL-only and evaluation cases of one run.
#[derive(Clone, Debug, Default)]
pub struct CaseSet {
    /// `data.train_split`: SFT and RL play these.
    pub train: Vec<Case>,
    /// `data.rl_extra_per_diagnosis` fresh synthetic patients: RL plays them too, SFT never sees them.
    pub rl_extra: Vec<Case>,
    /// `data.eval_split`, truncated to `eval.max_cases` (0: all): the held-out evaluation.
    pub eval: Vec<Case>,
}

impl CaseSet {
    /// Reads the cases of `recipe`; `base` resolves the recipe's relative paths.
    pub fn load(recipe: &Recipe, base: Option<&Path>) -> Result<CaseSet> {
        let data = recipe.data.clone().unwrap_or_default();
        let train = spar_data::recipe::train_cases(&data, base)?;
        let mut eval = spar_data::recipe::eval_cases(&data, base)?;
        let max_eval = recipe.eval.as_ref().map_or(0, |e| e.max_cases);
        if max_eval > 0 {
            eval.truncate(max_eval);
        }
        let rl_extra = spar_data::recipe::rl_extra_cases(&data, &train)?;
        Ok(CaseSet {
            train,
            rl_extra,
            eval,
        })
    }

    /// An error naming the counts when either the training or the evaluation set is empty.
    pub fn require_train_and_eval(&self) -> Result<()> {
        if self.train.is_empty() || self.eval.is_empty() {
            bail!(
                "the recipe's [data] gives {} training and {} evaluation cases; both must be > 0",
                self.train.len(),
                self.eval.len()
            );
        }
        Ok(())
    }

    /// Every case RL plays: the training split, then the fresh patients.
    pub fn rl_cases(&self) -> Vec<Case> {
        self.train.iter().chain(&self.rl_extra).cloned().collect()
    }

    /// Every case of the run by id (the reward pipeline scores a group against its case).
    pub fn by_id(&self) -> HashMap<String, Case> {
        self.train
            .iter()
            .chain(&self.rl_extra)
            .chain(&self.eval)
            .map(|c| (c.id.clone(), c.clone()))
            .collect()
    }
}
