//! `spar eval`: evaluates a policy (local checkpoint, OpenAI-compatible endpoint, or the scripted expert) with
//! consultations on held-out cases, the hallucination rate and, given a file, HealthBench; writes `report.md`,
//! `report.json` and charts. `spar eval --compare A B` compares two reports. See docs/eval.md.
use super::common::{RecipeArgs, absolute, toml_string};
use anyhow::{Context, Result, bail};
use spar_app::Builder;
use spar_core::recipe::{
    EndpointConfig, EvalSection, JudgeConfig, JudgeKind, RolloutBackendKind, VerifierKind,
};
use spar_data::splits::Split;
use spar_eval::run::{EvalPlan, diagnoses, run_eval};
use spar_eval::{ConsultationConfig, EvalPolicy, EvalReport, EvalSetup};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// `--recipe` (its `[eval]`, `[data]`, `[model]`, `[rollout]` and `[rewards.stages]` sections are used),
    /// `--set`, and `--model`: a local checkpoint (HF folder) played by the built-in engine, or through the
    /// recipe's rollout backend when `[rollout] backend = "openai"`.
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Evaluate an OpenAI-compatible chat endpoint instead (base URL, e.g. http://127.0.0.1:8000/v1).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Model name sent to `--endpoint`.
    #[arg(long, value_name = "NAME")]
    pub endpoint_model: Option<String>,
    /// Environment variable holding the endpoint's API key.
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Which policy: `model` (local checkpoint), `endpoint`, or `expert` (the scripted expert: the evaluation's
    /// ceiling). Default: endpoint when one is given, else model.
    #[arg(long, value_parser = ["model", "endpoint", "expert"])]
    pub policy: Option<String>,
    /// Case file or folder (overrides `[data] cases`).
    #[arg(long = "cases", alias = "in", alias = "input")]
    pub cases: Option<PathBuf>,
    /// Split file (overrides `[data] splits`; default `splits.json` next to the cases).
    #[arg(long)]
    pub splits: Option<PathBuf>,
    /// train | validation | test (overrides `[eval] split`).
    #[arg(long)]
    pub split: Option<String>,
    /// Evaluate at most this many cases.
    #[arg(long)]
    pub max_cases: Option<usize>,
    /// Skip the consultation evaluation (e.g. HealthBench only).
    #[arg(long)]
    pub no_consultations: bool,
    /// HealthBench JSONL to run (overrides `[eval] healthbench`).
    #[arg(long, value_name = "FILE")]
    pub healthbench: Option<PathBuf>,
    /// HealthBench judge endpoint (overrides `[eval.judge]`).
    #[arg(long, value_name = "URL")]
    pub judge_endpoint: Option<String>,
    #[arg(long, value_name = "NAME")]
    pub judge_model: Option<String>,
    #[arg(long, value_name = "VAR")]
    pub judge_api_key_env: Option<String>,
    /// Output folder (default `runs/eval/<time>`).
    #[arg(long, alias = "output")]
    pub out: Option<PathBuf>,
    /// Compare two reports (report.json files or their folders) instead of evaluating.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub compare: Option<Vec<PathBuf>>,
    /// Names of the two compared reports, comma separated.
    #[arg(long, default_value = "before,after")]
    pub labels: String,
}

fn endpoint(
    url: &str,
    model: Option<&str>,
    key_env: Option<&str>,
    what: &str,
) -> Result<EndpointConfig> {
    let model = model.with_context(|| format!("{what} needs a model name"))?;
    Ok(EndpointConfig {
        base_url: url.trim_end_matches('/').to_string(),
        model: model.to_string(),
        api_key_env: key_env.map(String::from),
        ..Default::default()
    })
}

pub fn run(args: Args) -> Result<()> {
    if let Some(files) = &args.compare {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| spar_eval::report::default_out_dir("compare"));
        let reports = files.iter().map(|f| {
            if f.is_dir() {
                f.join("report.json")
            } else {
                f.clone()
            }
        });
        let spec =
            spar_data::audit::AuditSpec::for_dir("spar eval --compare", &out).with_data(reports);
        return super::audit::run_audited(spec, || {
            compare(&files[0], &files[1], &args.labels, out.clone())
        });
    }
    let mut flags = args.recipe.clone();
    for (key, path) in [("data.cases", &args.cases), ("data.splits", &args.splits)] {
        if let Some(p) = path {
            let p = absolute(p)?;
            flags
                .set
                .push(format!("{key}={}", toml_string(&p.display().to_string())));
        }
    }
    let builder = flags.builder()?;
    let recipe = builder.recipe();
    let base = builder.base();
    let mut eval: EvalSection = recipe.eval.clone().unwrap_or_default();
    let data = recipe.data.clone().unwrap_or_default();
    let split = match &args.split {
        Some(name) => Split::parse(name)
            .with_context(|| format!("--split `{name}` is not train, validation or test"))?,
        None if recipe.eval.is_some() => eval.split,
        None => data.eval_split,
    };
    eval.split = split;
    if let Some(n) = args.max_cases {
        eval.max_cases = n;
    }
    if let Some(h) = &args.healthbench {
        eval.healthbench = Some(h.clone());
    } else if let Some(h) = &eval.healthbench {
        eval.healthbench = Some(recipe.resolve(h));
    }
    if let Some(url) = &args.judge_endpoint {
        let ep = endpoint(
            url,
            args.judge_model.as_deref(),
            args.judge_api_key_env.as_deref(),
            "--judge-endpoint",
        )?;
        eval.judge = Some(JudgeConfig {
            kind: JudgeKind::Llm,
            endpoint: Some(ep),
            ..Default::default()
        });
    }
    if let Some(url) = &args.endpoint {
        eval.policy_endpoint = Some(endpoint(
            url,
            args.endpoint_model.as_deref(),
            args.api_key_env.as_deref(),
            "--endpoint",
        )?);
    }
    eval.validate()
        .map_err(|(k, m)| anyhow::anyhow!("eval.{k}: {m}"))?;

    let cases = if args.no_consultations {
        Vec::new()
    } else {
        let mut d = data.clone();
        d.max_cases = 0;
        let mut cases = spar_data::recipe::split_cases(&d, base.as_deref(), split)?;
        if eval.max_cases > 0 {
            cases.truncate(eval.max_cases);
        }
        if cases.is_empty() {
            bail!(
                "no cases in the {} split of {}",
                split.name(),
                spar_data::recipe::cases_path(&data, base.as_deref())?.display()
            );
        }
        cases
    };
    // Seen / unseen diagnosis needs the training split; without a split file there is none.
    let seen = if split == Split::Train {
        None
    } else {
        spar_data::recipe::split_cases(&data, base.as_deref(), Split::Train)
            .ok()
            .map(|t| diagnoses(&t))
    };
    let healthbench = match &eval.healthbench {
        Some(p) => spar_eval::load_healthbench(p)?,
        None => Vec::new(),
    };
    if cases.is_empty() && healthbench.is_empty() {
        bail!("nothing to evaluate: --no-consultations without --healthbench");
    }
    let models = builder.eval_models(&eval, !healthbench.is_empty())?;
    let rollout = recipe.rollout.clone().unwrap_or_default();
    let consultation = ConsultationConfig::new(&rollout, &eval);
    let plan = EvalPlan {
        setup: EvalSetup {
            split: (!cases.is_empty()).then(|| split.name().to_string()),
            cases: if cases.is_empty() {
                None
            } else {
                Some(
                    spar_data::recipe::cases_path(&data, base.as_deref())?
                        .display()
                        .to_string(),
                )
            },
            healthbench_file: eval.healthbench.as_ref().map(|p| p.display().to_string()),
            ..Default::default()
        },
        cases,
        seen,
        consultation,
        healthbench,
        healthbench_cfg: EvalPlan::healthbench_config(&eval),
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| spar_eval::report::default_out_dir("eval"));
    let which = args.policy.clone().unwrap_or_else(|| {
        if eval.policy_endpoint.is_some() {
            "endpoint".into()
        } else {
            "model".into()
        }
    });
    let mut data_files = Vec::new();
    if !plan.cases.is_empty() {
        // Cases, split file, and the recipe's knowledge base when it names one.
        data_files.extend(super::audit::recipe_data_files(recipe));
    }
    if let Some(h) = &eval.healthbench {
        data_files.push(h.clone());
    }
    // The knowledge base H is verified against when the recipe names none: the shipped one.
    let verifier = eval.facts.clone().unwrap_or_default().verifier;
    let recipe_kb = data.knowledge_base.is_some();
    if eval.hallucination
        && !plan.cases.is_empty()
        && matches!(verifier, VerifierKind::Kb | VerifierKind::KbLlm)
        && !recipe_kb
    {
        data_files.extend(super::audit::files_of(
            &spar_data::kb::KnowledgeBase::default_dir()?,
        ));
    }
    let mut spec = spar_data::audit::AuditSpec::for_dir("spar eval", &out)
        .with_recipe(super::audit::recipe_toml(recipe))
        .with_data(data_files);
    if which == "model"
        && let Some(dir) = recipe
            .model
            .as_ref()
            .and_then(|m| m.path.as_ref())
            .map(|p| recipe.resolve(p))
        && dir.exists()
    {
        spec = spec.with_model(&dir);
    }
    super::audit::run_audited(spec, || {
        evaluate(&builder, &eval, &plan, &models, &which, &out)
    })
}

fn evaluate(
    builder: &Builder,
    eval: &EvalSection,
    plan: &EvalPlan,
    models: &spar_eval::run::EvalModels,
    which: &str,
    out: &Path,
) -> Result<()> {
    let report = match which {
        "expert" => {
            let inquiry_turns = plan.consultation.rollout.turn_limits[0] as usize;
            run_eval(&EvalPolicy::expert(inquiry_turns), plan, models)?
        }
        "endpoint" => {
            let ep = eval.policy_endpoint.as_ref().context("--policy endpoint needs --endpoint URL --endpoint-model NAME or [eval.policy_endpoint]")?;
            run_eval(
                &EvalPolicy::chat(spar_app::external::chat_policy(ep)?),
                plan,
                models,
            )?
        }
        _ => local(builder, plan, models)?,
    };
    let files = report.write(out)?;
    print_summary(&report);
    eprintln!(
        "report: {} ({} charts)",
        files.markdown.display(),
        files.charts.len()
    );
    if let Some(why) = report.nothing_scored() {
        bail!(
            "{why}: nothing was scored (each failure is recorded in {})",
            files.json.display()
        );
    }
    Ok(())
}

/// The local checkpoint (`--model`, else `[model] path`): played by the built-in engine, or through the recipe's
/// rollout backend (`[rollout] backend = "openai"`, which serves those weights) with its tokenizer.
fn local(
    builder: &Builder,
    plan: &EvalPlan,
    models: &spar_eval::run::EvalModels,
) -> Result<EvalReport> {
    let recipe = builder.recipe();
    let dir = recipe
        .model
        .as_ref()
        .and_then(|m| m.path.as_ref())
        .map(|p| recipe.resolve(p))
        .context(
            "no policy: give --model DIR (a checkpoint), --endpoint URL, or --policy expert",
        )?;
    let tokenizer = builder.tokenizer(&dir)?;
    let rollout = builder.rollout_section();
    if rollout.backend == RolloutBackendKind::Openai {
        // An evaluation trains on nothing: no expert choices are asked for.
        let backend = spar_app::external::rollout_backend(&rollout, None)?
            .context("rollout.backend = \"openai\" needs rollout.endpoint")?;
        let policy = EvalPolicy::tokens(backend.id(), spar_rollout::Policy::External, tokenizer)
            .with_backend(backend);
        return run_eval(&policy, plan, models);
    }
    let model = builder
        .saved_model(&dir)
        .with_context(|| format!("loading {}", dir.display()))?;
    spar_app::check_vocabulary(&tokenizer, &model, &dir)?;
    let policy = EvalPolicy::tokens(
        dir.display().to_string(),
        spar_rollout::Policy::Builtin(&model),
        tokenizer,
    );
    run_eval(&policy, plan, models)
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

fn print_summary(r: &EvalReport) {
    eprintln!("policy: {}", r.policy);
    if let Some(c) = &r.consultation {
        let g = &c.overall;
        eprintln!(
            "consultations: {} ({} failed)  inquiry {}  ddx {}  lab {}  diagnosis {}  composite {}",
            g.episodes,
            g.failed,
            fmt(g.stages.inquiry),
            fmt(g.stages.ddx),
            fmt(g.stages.lab),
            fmt(g.stages.diag),
            fmt(g.composite)
        );
        eprintln!(
            "safety: red flags screened {}  acted on {}  critical items {}  hallucination H {}",
            fmt(g.red_flag_screening),
            fmt(g.red_flag_acted),
            fmt(g.critical_recall),
            fmt(g.hallucination)
        );
        for (k, v) in &c.by_diagnosis {
            eprintln!(
                "  {k} diagnoses: {} consultations, composite {}",
                v.episodes,
                fmt(v.composite)
            );
        }
    }
    if let Some(h) = &r.healthbench {
        eprintln!(
            "healthbench: {} examples ({} failed)  score {}",
            h.examples,
            h.failed,
            fmt(h.scores.overall.map(|s| s.mean))
        );
    }
}

fn compare(a: &Path, b: &Path, labels: &str, out: PathBuf) -> Result<()> {
    let names: Vec<&str> = labels.split(',').map(str::trim).collect();
    if names.len() != 2 || names.iter().any(|n| n.is_empty()) {
        bail!("--labels `{labels}`: give two names separated by a comma, e.g. before,after");
    }
    let (ra, rb) = (EvalReport::read(a)?, EvalReport::read(b)?);
    let cmp = spar_eval::compare(&ra, &rb, [names[0], names[1]], &out)?;
    for w in &cmp.warnings {
        eprintln!("warning: {w}");
    }
    for m in cmp.consultation.iter().chain(&cmp.healthbench) {
        eprintln!(
            "{:<28} {:>7} {:>7} {:>8}",
            m.metric,
            fmt(m.a),
            fmt(m.b),
            m.delta.map_or("-".into(), |d| format!("{d:+.3}"))
        );
    }
    eprintln!("comparison: {}", out.join("compare.md").display());
    Ok(())
}
