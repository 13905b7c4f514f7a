//! Antidotes and specific treatments of poisoning (`antidotes.toml`, hand-written; every pairing names its
//! source). Closed world per poison: the agents listed for a poison are all the specific treatments the
//! sources name for it, so a known agent not listed for a known poison is not its antidote.
use serde::Deserialize;
use spar_core::{Error, Result};
use std::path::Path;

/// A treatment agent (naloxone, acetylcysteine ...) and the names claims use for it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// One agent listed for a poison, with its source.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AntidoteRef {
    pub agent: String,
    pub source: String,
}

/// A poison (a drug, a drug class, a toxin or a toxic state) and its antidotes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Poison {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub antidotes: Vec<AntidoteRef>,
}

/// The parsed `antidotes.toml`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AntidoteTable {
    #[serde(default, rename = "agent")]
    pub agents: Vec<Agent>,
    #[serde(default, rename = "poison")]
    pub poisons: Vec<Poison>,
}

impl AntidoteTable {
    /// Reads and checks `antidotes.toml`; returns the raw bytes too (they enter the version hash).
    pub fn load(path: &Path) -> Result<(Self, Vec<u8>)> {
        let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = std::str::from_utf8(&raw)
            .map_err(|e| Error::invalid(path.display(), format!("not UTF-8: {e}")))?;
        let table: AntidoteTable =
            toml::from_str(text).map_err(|e| Error::invalid(path.display(), e.to_string()))?;
        table.check(path)?;
        Ok((table, raw))
    }

    /// Every pairing names a known agent and a source; ids are unique. Errors name the poison and field.
    fn check(&self, path: &Path) -> Result<()> {
        let bad = |field: String, msg: String| Error::Field {
            file: path.display().to_string(),
            line: 0,
            field,
            msg,
        };
        let mut ids = std::collections::HashSet::new();
        for a in &self.agents {
            if !ids.insert(("agent", a.id.as_str())) {
                return Err(bad(format!("agent.{}", a.id), "duplicate id".into()));
            }
        }
        for p in &self.poisons {
            if !ids.insert(("poison", p.id.as_str())) {
                return Err(bad(format!("poison.{}", p.id), "duplicate id".into()));
            }
            if p.antidotes.is_empty() {
                return Err(bad(
                    format!("poison.{}.antidotes", p.id),
                    "lists no antidote".into(),
                ));
            }
            for r in &p.antidotes {
                if !self.agents.iter().any(|a| a.id == r.agent) {
                    return Err(bad(
                        format!("poison.{}.antidotes", p.id),
                        format!("unknown agent `{}`", r.agent),
                    ));
                }
                if r.source.trim().is_empty() {
                    return Err(bad(
                        format!("poison.{}.antidotes.{}.source", p.id, r.agent),
                        "is empty".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The pairing of agent `agent` (index) with poison `poison` (index), if the table lists it.
    pub fn pairing(&self, agent: usize, poison: usize) -> Option<&AntidoteRef> {
        let id = &self.agents[agent].id;
        self.poisons[poison]
            .antidotes
            .iter()
            .find(|r| &r.agent == id)
    }
}
