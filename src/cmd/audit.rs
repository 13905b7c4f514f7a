//! Every run writes an audit manifest: data files and models with hashes, the effective recipe and the flags with
//! secrets removed, code version, start / end, who ran it, and how it ended. A run that writes a folder keeps it
//! as `audit.json` inside; a run that writes one file keeps it as `<file>.audit.json` next to it. Outputs are made
//! owner-only. See docs/privacy.md.
use spar_core::recipe::{DataSection, Recipe};
use spar_data::audit::{AuditManifest, AuditSpec};
use std::path::{Path, PathBuf};

/// The data files a recipe reads: its cases (a file, or every case file of a folder), split file, and the
/// knowledge base's files when it names one.
pub fn recipe_data_files(recipe: &Recipe) -> Vec<PathBuf> {
    let base = recipe
        .source
        .as_ref()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let section = recipe.data.clone().unwrap_or_default();
    let mut files = case_data_files(&section, base.as_deref());
    if let Some(kb) = &section.knowledge_base {
        files.extend(files_of(&recipe.resolve(kb)));
    }
    files
}

/// The case files (and split file, when there is one) a `[data]` section points at.
pub fn case_data_files(section: &DataSection, base: Option<&Path>) -> Vec<PathBuf> {
    // No shipped data to list: the command's own loading reports why.
    let Ok(cases) = spar_data::recipe::cases_path(section, base) else {
        return Vec::new();
    };
    let mut files = if cases.is_dir() {
        spar_data::cases::case_files(&cases).unwrap_or_default()
    } else {
        vec![cases.clone()]
    };
    let splits = match &section.splits {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => base.map_or_else(|| p.clone(), |b| b.join(p)),
        None if cases.is_dir() => cases.join("splits.json"),
        None => cases.with_file_name("splits.json"),
    };
    if splits.is_file() {
        files.push(splits);
    }
    files
}

/// Every file of `path` (a file, or the files of a folder such as a knowledge base), for the manifest.
pub fn files_of(path: &Path) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_path_buf()];
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The recipe as TOML for the manifest ("" when it does not serialise: the manifest then records no config
/// rather than failing the run).
pub fn recipe_toml(recipe: &Recipe) -> String {
    toml::to_string(recipe).unwrap_or_default()
}

/// Runs `work` between the manifest's start and finish; the outcome (ok or the error, secrets and PHI removed) is
/// recorded either way. The spec's flags are the process's command line.
pub fn run_audited<T>(
    mut spec: AuditSpec,
    work: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    // An input that does not exist is left for the command to report in its own words (and the manifest
    // records that error as the outcome) rather than failing here before any manifest is written.
    spec.data_files.retain(|p| p.exists());
    spec.models.retain(|p| p.exists());
    // Set when the build script exports it; spar-data's own copy only sees an exported shell variable.
    spec.build_describe = option_env!("SPAR_BUILD_GIT_DESCRIBE").map(String::from);
    let manifest = AuditManifest::begin(&spec.with_process_flags())?;
    let result = work();
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("failed: {e:#}"),
    };
    manifest.finish(&outcome)?;
    result
}

#[cfg(test)]
mod tests {
    //! The commands as `spar` runs them (their `run(Args)`), checked for their manifest and owner-only outputs.
    use spar_data::audit::{AuditManifest, REDACTED};
    use spar_testkit::{FakeReply, FakeServer, FakeServerConfig, responders};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn eval_args(out: PathBuf) -> crate::cmd::eval::Args {
        crate::cmd::eval::Args {
            recipe: Default::default(),
            endpoint: None,
            endpoint_model: None,
            api_key_env: None,
            policy: None,
            cases: None,
            splits: None,
            split: None,
            max_cases: None,
            no_consultations: false,
            healthbench: None,
            judge_endpoint: None,
            judge_model: None,
            judge_api_key_env: None,
            out: Some(out),
            compare: None,
            labels: "before,after".into(),
        }
    }

    #[cfg(unix)]
    #[test]
    fn spar_eval_writes_its_manifest_into_an_owner_only_folder() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("runs/eval-expert");
        let mut args = eval_args(out.clone());
        args.policy = Some("expert".into());
        args.max_cases = Some(2);
        args.recipe.set = vec!["eval.seed=3".into()];
        crate::cmd::eval::run(args).unwrap();
        let m = AuditManifest::read(&out.join("audit.json")).unwrap();
        assert_eq!(
            (m.task.as_deref(), m.outcome.as_str()),
            (Some("spar eval"), "ok")
        );
        assert!(m.finished_at.is_some());
        assert_eq!(m.config["eval"]["seed"], 3);
        let names: Vec<&str> = m
            .data_files
            .iter()
            .map(|f| f.path.rsplit('/').next().unwrap())
            .collect();
        assert!(
            names.contains(&"cases.jsonl") && names.contains(&"splits.json"),
            "{names:?}"
        );
        assert!(out.join("report.md").is_file());
        for d in [dir.path().join("runs"), out.clone(), out.join("charts")] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        assert_eq!(mode(&out.join("audit.json")), 0o600);
    }

    /// `spar eval --no-consultations --healthbench FILE --endpoint URL --judge-endpoint URL` against fake
    /// servers: the policy always advises emergency services and aspirin; the judge meets a criterion when it
    /// names one of them. Per example 15/15, 0/12, 0/12, 0/10, so overall 0.25 and emergency_referrals 0.5.
    #[test]
    fn spar_eval_healthbench_over_endpoints() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let policy = rt
            .block_on(FakeServer::start(FakeServerConfig {
                model: "doc".into(),
                chat: responders::fixed("Call emergency services now and chew an aspirin."),
                ..Default::default()
            }))
            .unwrap();
        let judge = rt
            .block_on(FakeServer::start(FakeServerConfig {
                model: "judge".into(),
                chat: Arc::new(|m: &[spar_clients::ChatMessage]| {
                    let user = m.last().map_or("", |x| x.content.as_str());
                    let criterion = user
                        .lines()
                        .find(|l| l.starts_with("Rubric criterion"))
                        .unwrap_or("");
                    let met =
                        criterion.contains("emergency services") || criterion.contains("aspirin");
                    FakeReply::from(serde_json::json!({"met": met, "explanation": "x"}).to_string())
                }),
                ..Default::default()
            }))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("hb");
        let mut args = eval_args(out.clone());
        args.no_consultations = true;
        args.healthbench = Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("eval/tests/fixtures/healthbench_sample.jsonl"),
        );
        args.endpoint = Some(policy.base_url());
        args.endpoint_model = Some("doc".into());
        args.judge_endpoint = Some(judge.base_url());
        args.judge_model = Some("judge".into());
        crate::cmd::eval::run(args).unwrap();
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        let hb = &report["healthbench"];
        assert_eq!(
            (hb["examples"].as_u64(), hb["failed"].as_u64()),
            (Some(4), Some(0))
        );
        let close = |v: &serde_json::Value, x: f64| (v.as_f64().unwrap() - x).abs() < 1e-9;
        assert!(close(&hb["scores"]["overall"]["mean"], 0.25), "{hb}");
        assert!(
            close(&hb["scores"]["themes"]["emergency_referrals"]["mean"], 0.5),
            "{hb}"
        );
        assert!(
            close(&hb["scores"]["themes"]["hedging"]["mean"], 0.0),
            "{hb}"
        );
        assert_eq!(judge.request_count(), 12);
        let m = AuditManifest::read(&out.join("audit.json")).unwrap();
        assert_eq!(m.outcome, "ok");
        assert!(m.data_files[0].path.ends_with("healthbench_sample.jsonl"));
        drop((policy, judge));
    }

    /// A run that fails still leaves its manifest, with the error as the outcome; a key in the flags does not.
    #[cfg(unix)]
    #[test]
    fn spar_score_failure_is_recorded_next_to_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("samples.jsonl");
        std::fs::write(&input, "not json\n").unwrap();
        let out = dir.path().join("new/scored.jsonl");
        let args = crate::cmd::score::Args {
            recipe: Default::default(),
            input,
            out: out.clone(),
            cases: Some(dir.path().join("no-such-cases.jsonl")),
            parallel: 1,
            report: None,
        };
        let err = crate::cmd::score::run(args).unwrap_err().to_string();
        let m = AuditManifest::read(&dir.path().join("new/scored.jsonl.audit.json")).unwrap();
        assert_eq!(m.task.as_deref(), Some("spar score"));
        assert!(
            m.outcome.starts_with("failed: ") && m.outcome.contains("no-such-cases"),
            "{} / {err}",
            m.outcome
        );
        assert_eq!(mode(&dir.path().join("new")), 0o700);
        assert!(!out.exists());
        let cmd = spar_data::audit::scrub_command(
            &[
                "spar".into(),
                "--api-key".into(),
                "abc123".into(),
                "--set=x.api_key=abc123".into(),
            ],
            &[],
        );
        assert_eq!(cmd[2], REDACTED);
        assert!(!cmd[3].contains("abc123"));
    }
}
