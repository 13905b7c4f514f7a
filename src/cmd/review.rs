//! `spar review RUN_DIR`: the run's consultations on a local web page (spar-review), on loopback unless
//! `--host` says otherwise, behind a random access token printed at start; or, with `--export-labels FILE`,
//! the reviewers' overrides as a labelled set. This file only resolves the recipe's cases (for departments)
//! and claim cache and starts the server; docs/review.md.
use super::common::RecipeArgs;
use anyhow::{Context, Result, bail};
use spar_review::{ReviewOptions, is_loopback, new_token};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// The run folder: samples.parquet / samples.jsonl (`spar rollout --out`) and scored.jsonl /
    /// scored.parquet (`spar score --out RUN_DIR/scored.jsonl`); or an evaluation's folder (`spar eval --out`:
    /// report.json, transcripts.jsonl).
    pub run_dir: PathBuf,
    /// `--recipe` (its `[data]` cases give departments; its `[rewards.fact]` the claim cache), `--set`.
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Cases the run played (file or folder; replaces `[data] cases`).
    #[arg(long)]
    pub cases: Option<PathBuf>,
    /// The SQLite claim cache overrides go to (default: where `spar score` put it for this folder, the
    /// recipe's `cache_path` or RUN_DIR/claims.sqlite).
    #[arg(long)]
    pub claim_cache: Option<PathBuf>,
    /// Address to listen on. Anything but loopback exposes the page to the network (plain HTTP, still behind
    /// the token).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the address printed says which).
    #[arg(long, default_value_t = 8377)]
    pub port: u16,
    /// Who the audit log names (default: $USER).
    #[arg(long)]
    pub reviewer: Option<String>,
    /// Write the overrides as a labelled set (JSONL) to FILE and exit, serving nothing.
    #[arg(long, value_name = "FILE")]
    pub export_labels: Option<PathBuf>,
}

pub fn run(mut args: Args) -> Result<()> {
    if let Some(c) = &args.cases {
        let p = super::common::absolute(c)?;
        args.recipe.set.push(format!(
            "data.cases={}",
            super::common::toml_string(&p.display().to_string())
        ));
    }
    let builder = args.recipe.builder()?;
    let departments = departments(&builder)?;
    if let Some(out) = &args.export_labels {
        // The labelled set quotes dialogue (redacted): like every file spar writes from patient data, it gets a
        // manifest of what it was made from (OUT.audit.json).
        let inputs = spar_review::run::SAMPLE_FILES
            .iter()
            .chain(&spar_review::run::SCORED_FILES)
            .chain(&[
                spar_review::audit::AUDIT_FILE,
                spar_review::eval_report::REPORT_FILE,
                spar_review::eval_report::TRANSCRIPTS_FILE,
            ])
            .map(|f| args.run_dir.join(f));
        let spec = spar_data::audit::AuditSpec::for_file("spar review --export-labels", out)
            .with_data(inputs);
        return super::audit::run_audited(spec, || {
            let n = spar_review::export_labels(&args.run_dir, &departments, out)?;
            println!(
                "spar review: {n} labels from {} written to {}",
                spar_review::audit::AUDIT_FILE,
                out.display()
            );
            Ok(())
        });
    }
    let claim_cache = match &args.claim_cache {
        Some(p) => Some(super::common::absolute(p)?),
        None => builder.recipe_claim_cache(Some(&args.run_dir)),
    };
    let reviewer = args
        .reviewer
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "unknown".into());
    let token = new_token();
    let (state, replayed) = spar_review::open(ReviewOptions {
        run_dir: args.run_dir.clone(),
        departments,
        claim_cache: claim_cache.clone(),
        reviewer,
        token: token.clone(),
    })?;
    let n = state.run.blocking_read().len();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("--host {} --port {}: cannot listen", args.host, args.port))?;
        let addr = listener.local_addr()?;
        if !is_loopback(&args.host) {
            eprintln!(
                "spar review: listening on {addr}, reachable from the network over plain HTTP; anyone with the \
                 token can read these consultations"
            );
        }
        eprintln!(
            "spar review: {n} consultations from {}, {replayed} logged overrides replayed; claim overrides go \
             to {}",
            args.run_dir.display(),
            claim_cache
                .as_deref()
                .map_or("no claim cache (log only)".into(), |p: &Path| p
                    .display()
                    .to_string())
        );
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        // The one line a script reads: stdout, flushed, with the token.
        println!("spar review: http://{host}:{}/?token={token}", addr.port());
        use std::io::Write;
        std::io::stdout().flush()?;
        spar_review::serve(listener, state, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    })
}

/// Case id -> department of the recipe's cases (`--cases`, `[data] cases`, else the shipped ones).
fn departments(builder: &spar_app::Builder) -> Result<HashMap<String, String>> {
    let data = builder.recipe().data.clone().unwrap_or_default();
    let path = spar_data::recipe::cases_path(&data, builder.base().as_deref())?;
    if !path.exists() {
        bail!(
            "cases: {} not found (--cases names the cases the run played)",
            path.display()
        );
    }
    let cases = spar_data::cases::load_cases(&path)
        .with_context(|| format!("reading the cases {}", path.display()))?;
    Ok(cases.into_iter().map(|c| (c.id, c.department)).collect())
}
