//! The reviewers' audit log: one JSON line per override (who, when, what, before, after), appended to
//! `RUN_DIR/review-audit.jsonl`, owner-only. Append-only by construction: the file is opened with `O_APPEND`
//! and never rewritten, each line written in one `write` and synced before the override is acknowledged, so a
//! crash loses at most the override being made and never an earlier one. (A whole-file atomic rewrite would
//! make every override cost the whole log.) Claim text in the log is PHI-redacted like the claim cache's.
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use spar_core::sample::ClaimLabel;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// File name of the audit log inside the run folder.
pub const AUDIT_FILE: &str = "review-audit.jsonl";
/// Version of an audit line; readers reject any other.
pub const AUDIT_VERSION: u32 = 1;

/// What an override changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Change {
    /// A claim's label.
    Claim {
        before: ClaimLabel,
        after: ClaimLabel,
    },
    /// A rubric item's verdict (None: the judge gave none).
    Rubric {
        before: Option<bool>,
        after: Option<bool>,
    },
}

/// One line of the audit log.
// No `deny_unknown_fields`: serde does not support it next to `flatten`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub schema_version: u32,
    /// RFC 3339, UTC.
    pub at: String,
    pub reviewer: String,
    pub case_id: String,
    pub group_id: String,
    pub sample_idx: u32,
    /// Index of the claim or rubric item in the consultation's scored record.
    pub index: usize,
    /// The claim (PHI-redacted) or the rubric criterion.
    pub target: String,
    #[serde(flatten)]
    pub change: Change,
    /// The reviewer's reason, if given (PHI-redacted).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// The audit log of one run folder.
#[derive(Clone, Debug)]
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The log in `run_dir` (the file is created by the first override).
    pub fn in_run(run_dir: &Path) -> AuditLog {
        AuditLog {
            path: run_dir.join(AUDIT_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` and syncs it to disk.
    pub fn append(&self, entry: &AuditEntry) -> Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        let mut opts = std::fs::OpenOptions::new();
        opts.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&self.path)
            .with_context(|| format!("opening the audit log {}", self.path.display()))?;
        // A log created by an older umask or copied in keeps no group or world access: it names claims.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("{}: setting owner-only mode", self.path.display()))?;
        }
        f.write_all(&line)
            .and_then(|_| f.sync_data())
            .with_context(|| format!("appending to the audit log {}", self.path.display()))
    }

    /// Every entry, in order (none when the file does not exist). A bad line is an error naming the file,
    /// the line and the field: overrides replayed from a damaged log would be silently wrong.
    pub fn read(&self) -> Result<Vec<AuditEntry>> {
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let mut out = Vec::new();
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", self.path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let e: AuditEntry = serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{}: line {}: {e}", self.path.display(), i + 1))?;
            if e.schema_version != AUDIT_VERSION {
                bail!(
                    "{}: line {}: field `schema_version`: {} is not the supported version {AUDIT_VERSION}",
                    self.path.display(),
                    i + 1,
                    e.schema_version
                );
            }
            out.push(e);
        }
        Ok(out)
    }
}

/// The current time as the log writes it.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> AuditEntry {
        AuditEntry {
            schema_version: AUDIT_VERSION,
            at: now(),
            reviewer: "ana".into(),
            case_id: "c1".into(),
            group_id: "g".into(),
            sample_idx: 0,
            index: i,
            target: "Garlic cures pneumonia".into(),
            change: Change::Claim {
                before: ClaimLabel::Refuted,
                after: ClaimLabel::Supported,
            },
            note: String::new(),
        }
    }

    #[test]
    fn appends_owner_only_and_reads_back_in_order() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::in_run(d.path());
        assert!(log.read().unwrap().is_empty());
        log.append(&entry(0)).unwrap();
        log.append(&entry(1)).unwrap();
        let got = log.read().unwrap();
        assert_eq!(
            got,
            [entry(0), entry(1)].map(|mut e| {
                e.at = got[e.index].at.clone();
                e
            })
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(log.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(text.contains("\"kind\":\"claim\""), "{text}");
        assert!(text.contains("\"before\":\"refuted\""), "{text}");
    }

    #[test]
    fn a_damaged_line_names_the_file_line_and_field() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::in_run(d.path());
        log.append(&entry(0)).unwrap();
        let mut text = std::fs::read_to_string(log.path()).unwrap();
        text.push_str(&text.replace("\"reviewer\":\"ana\",", ""));
        std::fs::write(log.path(), text).unwrap();
        let e = log.read().unwrap_err().to_string();
        assert!(e.contains("review-audit.jsonl: line 2"), "{e}");
        assert!(e.contains("reviewer"), "{e}");
    }
}
