//! The four clinical stages of a consultation (method.md section 1).
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// History taking: the doctor asks, the simulated patient answers.
    Inquiry,
    /// Differential diagnosis: a ranked list of candidate diagnoses.
    Ddx,
    /// Exam / test recommendation.
    Lab,
    /// Final diagnosis with its ICD-10 code.
    Diag,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Inquiry, Stage::Ddx, Stage::Lab, Stage::Diag];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn next(self) -> Option<Stage> {
        Stage::ALL.get(self.index() + 1).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Stage::Inquiry => "inquiry",
            Stage::Ddx => "ddx",
            Stage::Lab => "lab",
            Stage::Diag => "diag",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL
            .into_iter()
            .find(|st| st.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Default turn limit of the stage (method.md section 9: Inquiry 12, others 2).
    pub fn default_turn_limit(self) -> u32 {
        match self {
            Stage::Inquiry => 12,
            _ => 2,
        }
    }

    /// Default stage instruction p_k, the user turn that opens stages after Inquiry. Recipes may override it.
    /// The tags it asks for are the grammar of [`crate::grammar`].
    pub fn default_instruction(self) -> &'static str {
        match self {
            Stage::Inquiry => "",
            Stage::Ddx => {
                "Now give your differential diagnosis, most likely first, as <ddx> with one numbered line per diagnosis: name (ICD-10 code) </ddx>."
            }
            Stage::Lab => {
                "Which examinations or tests do you recommend? List them as <tests> with one line per test starting with '- ' </tests>."
            }
            Stage::Diag => {
                "Give your final diagnosis as <diagnosis>name (ICD-10 code)</diagnosis>."
            }
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn order_and_names() {
        assert_eq!(Stage::Inquiry.next(), Some(Stage::Ddx));
        assert_eq!(Stage::Diag.next(), None);
        assert_eq!(Stage::parse(" DDX "), Some(Stage::Ddx));
        assert_eq!(serde_json::to_string(&Stage::Lab).unwrap(), "\"lab\"");
    }
}
