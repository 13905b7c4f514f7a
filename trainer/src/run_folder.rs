//! A fresh run (no `--resume`) starts in an empty run folder. A folder that holds another run, finished or
//! not, is refused naming it, because writing a new run over it mixes the two: the old run's checkpoints
//! outnumber the new one's, `latest` and `spar export` then name the wrong weights, old plots and `final/`
//! stay. `--overwrite` removes the old run's contents first. A run that failed before its first checkpoint (its
//! `audit.json` says `failed`: a typo in a path, a model that did not load) holds nothing to keep or resume, so a
//! fresh run replaces it without the flag, saying so. A non-empty folder that holds no run is never emptied
//! (`--out .` must not delete a project): it is refused with or without `--overwrite`.
use crate::run_lock::LOCK_FILE;
use anyhow::{Context, Result, bail};
use std::path::Path;

/// What only a run folder holds: any of these makes a folder a run.
const RUN_MARKERS: &[&str] = &[
    "checkpoints",
    "metrics.jsonl",
    "comparison.json",
    "final",
    "audit.json",
    "tb",
];

/// What a folder holds, as a fresh run sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contents {
    /// Missing, empty, or only this run's lock.
    Empty,
    /// Another run: finished (`comparison.json`) or not.
    Run { finished: bool },
    /// A run that failed before its first checkpoint (`outcome`: its audit manifest's).
    Failed { outcome: String },
    /// Files of something else (`example`: one of them).
    Foreign { example: String },
}

/// What `out` holds (its lock file aside).
pub fn inspect(out: &Path) -> Result<Contents> {
    let Ok(rd) = std::fs::read_dir(out) else {
        return Ok(Contents::Empty);
    };
    let mut names: Vec<String> = Vec::new();
    for e in rd {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name != LOCK_FILE {
            names.push(name);
        }
    }
    names.sort();
    if names.is_empty() {
        return Ok(Contents::Empty);
    }
    if names.iter().any(|n| RUN_MARKERS.contains(&n.as_str())) {
        if let Some(outcome) = failed_outcome(out)
            && !has_checkpoint(out)
        {
            return Ok(Contents::Failed { outcome });
        }
        return Ok(Contents::Run {
            finished: names.iter().any(|n| n == "comparison.json"),
        });
    }
    Ok(Contents::Foreign {
        example: names[0].clone(),
    })
}

/// The outcome its audit manifest records when the run in `out` failed (`failed: ...`).
fn failed_outcome(out: &Path) -> Option<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("audit.json")).ok()?).ok()?;
    let outcome = v.get("outcome")?.as_str()?;
    outcome.starts_with("failed").then(|| outcome.to_string())
}

fn has_checkpoint(out: &Path) -> bool {
    std::fs::read_dir(out.join("checkpoints")).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
    })
}

/// Makes `out` ready for a fresh run: refuses another run's folder unless `overwrite`, and then empties it
/// (this run's lock kept). Call it holding the folder's lock.
pub fn prepare_fresh(out: &Path, overwrite: bool) -> Result<()> {
    match inspect(out)? {
        Contents::Empty => Ok(()),
        Contents::Run { finished } if !overwrite => bail!(
            "run folder {} holds {} run: add --resume to continue it, --overwrite to delete it and start \
             afresh, or choose another --out",
            out.display(),
            if finished {
                "a finished"
            } else {
                "an unfinished"
            }
        ),
        Contents::Failed { outcome } if !overwrite => {
            eprintln!(
                "[train] {} holds a run that failed before its first checkpoint ({}); starting afresh",
                out.display(),
                outcome.lines().next().unwrap_or_default()
            );
            empty(out)
        }
        Contents::Run { .. } | Contents::Failed { .. } => {
            eprintln!(
                "[train] --overwrite: deleting the earlier run in {}",
                out.display()
            );
            empty(out)
        }
        Contents::Foreign { example } => bail!(
            "run folder {} is not empty and holds no spar run (it has {example}, ...): a run needs an empty or \
             new folder{}",
            out.display(),
            if overwrite {
                "; --overwrite deletes only an earlier run, never other files"
            } else {
                ""
            }
        ),
    }
}

/// Removes everything in `out` but the lock this run holds.
fn empty(out: &Path) -> Result<()> {
    for e in std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))? {
        let e = e?;
        if e.file_name() == LOCK_FILE {
            continue;
        }
        let p = e.path();
        let gone = if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        gone.with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_folder_is_refused_without_overwrite_and_emptied_with_it_other_files_never() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        assert_eq!(inspect(&out).unwrap(), Contents::Empty);
        prepare_fresh(&out, false).unwrap();
        std::fs::create_dir_all(out.join("checkpoints/step-00000004")).unwrap();
        std::fs::write(out.join("comparison.json"), "{}").unwrap();
        std::fs::write(out.join(LOCK_FILE), "{}").unwrap();
        let err = prepare_fresh(&out, false).unwrap_err().to_string();
        assert!(
            err.contains(&out.display().to_string()) && err.contains("a finished run"),
            "{err}"
        );
        assert!(
            err.contains("--resume") && err.contains("--overwrite"),
            "{err}"
        );
        prepare_fresh(&out, true).unwrap();
        let left: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(LOCK_FILE)]);

        // A run that failed before any checkpoint is replaced without the flag; one with a checkpoint is not.
        std::fs::write(
            out.join("audit.json"),
            r#"{"outcome": "failed: not found: /x/cases.jsonl"}"#,
        )
        .unwrap();
        std::fs::create_dir_all(out.join("tokenizer")).unwrap();
        assert!(matches!(inspect(&out).unwrap(), Contents::Failed { .. }));
        prepare_fresh(&out, false).unwrap();
        assert!(!out.join("audit.json").exists() && !out.join("tokenizer").exists());
        std::fs::write(out.join("audit.json"), r#"{"outcome": "failed: killed"}"#).unwrap();
        std::fs::create_dir_all(out.join("checkpoints/step-00000002")).unwrap();
        assert!(prepare_fresh(&out, false).is_err());
        std::fs::write(out.join("audit.json"), r#"{"outcome": "running"}"#).unwrap();
        std::fs::remove_dir_all(out.join("checkpoints")).unwrap();
        assert!(
            prepare_fresh(&out, false).is_err(),
            "a run that may be alive elsewhere is kept"
        );
        prepare_fresh(&out, true).unwrap();

        let other = dir.path().join("project");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("notes.txt"), "mine").unwrap();
        for overwrite in [false, true] {
            let err = prepare_fresh(&other, overwrite).unwrap_err().to_string();
            assert!(err.contains("holds no spar run (it has notes.txt"), "{err}");
        }
        assert!(other.join("notes.txt").exists());
    }
}
