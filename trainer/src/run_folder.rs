//! A fresh run (no `--resume`) starts in an empty run folder. A folder that holds another run, finished or
//! not, is refused naming it, because writing a new run over it mixes the two: the old run's checkpoints
//! outnumber the new one's, `latest` and `spar export` then name the wrong weights, old plots and `final/`
//! stay. `--overwrite` removes the old run's contents first. A non-empty folder that holds no run is never
//! emptied (`--out .` must not delete a project): it is refused with or without `--overwrite`.
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
        return Ok(Contents::Run {
            finished: names.iter().any(|n| n == "comparison.json"),
        });
    }
    Ok(Contents::Foreign {
        example: names[0].clone(),
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
        Contents::Run { .. } => {
            eprintln!(
                "[train] --overwrite: deleting the earlier run in {}",
                out.display()
            );
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
                gone.with_context(|| format!("--overwrite: removing {}", p.display()))?;
            }
            Ok(())
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
