//! `spar review RUN_DIR`: a run's consultations on a local web page for human review. The page lists the
//! consultations (filtered, searched and paged on the server), shows one with its stage boundaries, each
//! step's violations, gamma and advantage, its claims marked in place with their labels, its rubric verdicts
//! and rewards per stage, and lets a reviewer override a claim's label or a rubric verdict. Overrides go to an
//! append-only audit log in the run folder (`audit.rs`), claim overrides to the claim cache's override table
//! (which the next scoring run's lookups answer from), and `--export-labels` writes them as a labelled set.
//!
//! `run.rs` loads the folder (`eval_report.rs` an evaluation report instead), `query.rs` filters and pages, `detail.rs` builds one consultation's view,
//! `overrides.rs` checks and records an override, `labels.rs` exports them, `server.rs` serves the page
//! (`assets/`, compiled in) and the JSON endpoints behind the access token. Docs: `docs/review.md`.
pub mod audit;
pub mod detail;
pub mod eval_report;
pub mod labels;
pub mod overrides;
pub mod query;
pub mod run;
pub mod server;

use anyhow::{Context, Result};
use spar_rewards::fact::{CacheBackend, SqliteBackend};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use server::{ReviewState, is_loopback, new_token, router};

/// What `spar review` is given.
#[derive(Clone, Debug)]
pub struct ReviewOptions {
    pub run_dir: PathBuf,
    /// Case id -> department, for the department filter.
    pub departments: HashMap<String, String>,
    /// The SQLite claim cache the run's scoring used (None: claim overrides reach the log and exports only).
    pub claim_cache: Option<PathBuf>,
    /// Who the audit log names.
    pub reviewer: String,
    pub token: String,
}

/// Loads the run folder, replays its audit log onto it and opens the claim cache; returns the server state and
/// how many logged overrides were replayed.
pub fn open(opts: ReviewOptions) -> Result<(Arc<ReviewState>, usize)> {
    let run = run::RunFolder::open(&opts.run_dir, &opts.departments)?;
    let log = audit::AuditLog::in_run(&run.dir);
    let entries = log.read()?;
    let mut consultations = run.consultations;
    let replayed = overrides::replay(&entries, &mut consultations);
    let cache = match &opts.claim_cache {
        Some(p) => Some(Arc::new(
            SqliteBackend::open(p)
                .with_context(|| format!("opening the claim cache {}", p.display()))?,
        ) as Arc<dyn CacheBackend>),
        None => None,
    };
    let title = opts
        .run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let state = ReviewState {
        run: tokio::sync::RwLock::new(consultations),
        overrides: overrides::Overrides {
            log,
            cache,
            reviewer: opts.reviewer,
        },
        token: opts.token,
        title,
    };
    Ok((Arc::new(state), replayed))
}

/// Serves `state` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ReviewState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the review page")
}

/// `--export-labels FILE`: the run's audit log as a labelled set (JSONL); returns how many labels.
pub fn export_labels(
    run_dir: &Path,
    departments: &HashMap<String, String>,
    out: &Path,
) -> Result<usize> {
    let run = run::RunFolder::open(run_dir, departments)?;
    let entries = audit::AuditLog::in_run(run_dir).read()?;
    labels::export(&entries, &run, out)
}
