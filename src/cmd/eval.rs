//! `spar eval`: evaluates a policy (local checkpoint, OpenAI-compatible endpoint, or the scripted expert) with
//! consultations on held-out cases, the hallucination rate and, given a file, HealthBench; writes `report.md`,
//! `report.json` and charts. `spar eval --compare A B` compares two reports. See docs/eval.md.
use anyhow::{Context, Result, bail};
use spar_core::recipe::{
    EndpointConfig, EvalSection, JudgeConfig, JudgeKind, Recipe, VerifierKind,
};
use spar_core::traits::SamplingParams;
use spar_data::splits::Split;
use spar_eval::run::{EvalPlan, diagnoses, eval_models, run_eval};
use spar_eval::{
    ConsultationConfig, EndpointPolicy, EvalReport, EvalSetup, ExpertPolicy, LocalPolicyConfig,
};
use spar_model::{Qwen3Config, Qwen3Model, Tokenizer, parse_device};
use spar_rollout::engine::EngineConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// Recipe (its `[eval]`, `[data]`, `[model]`, `[rollout]` and `[rewards.stages]` sections are used).
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Recipe override `key.path=value` (repeatable), e.g. `--set eval.max_cases=20`.
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Local checkpoint (HF folder) to evaluate on the built-in engine (overrides `[model] path`).
    #[arg(long)]
    pub model: Option<PathBuf>,
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
    /// Output folder (default runs/eval/<time>).
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
    let recipe = match &args.recipe {
        Some(p) => Recipe::load(p, &args.set)?,
        None => Recipe::from_toml_str("", "(no recipe)", &args.set)?,
    };
    let base = recipe
        .source
        .as_ref()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf);
    let mut eval: EvalSection = recipe.eval.clone().unwrap_or_default();
    let mut data = recipe.data.clone().unwrap_or_default();
    if let Some(c) = &args.cases {
        data.cases = Some(c.clone());
    }
    if let Some(s) = &args.splits {
        data.splits = Some(s.clone());
    }
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
                spar_data::recipe::cases_path(&data, base.as_deref()).display()
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
    let models = eval_models(&recipe, &eval, !healthbench.is_empty())?;
    let rollout = recipe.rollout.clone().unwrap_or_default();
    let mut consultation = ConsultationConfig::from_rollout(&rollout);
    consultation.samples_per_case = eval.samples_per_case;
    consultation.concurrency = eval.concurrency;
    if !eval.escalation_terms.is_empty() {
        consultation.escalation_terms = eval.escalation_terms.clone();
    }
    let plan = EvalPlan {
        setup: EvalSetup {
            split: (!cases.is_empty()).then(|| split.name().to_string()),
            cases: (!cases.is_empty()).then(|| {
                spar_data::recipe::cases_path(&data, base.as_deref())
                    .display()
                    .to_string()
            }),
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
        data_files.extend(super::audit::case_data_files(&data, base.as_deref()));
    }
    if let Some(h) = &eval.healthbench {
        data_files.push(h.clone());
    }
    // The knowledge base H is verified against: the recipe's, else the shipped one (when the verifier reads one).
    let uses_kb = match eval.facts.clone().unwrap_or_default().verifier {
        VerifierKind::Kb | VerifierKind::KbLlm => true,
        VerifierKind::Llm => false,
    };
    if eval.hallucination && !plan.cases.is_empty() && uses_kb {
        let kb = match recipe.data.as_ref().and_then(|d| d.knowledge_base.as_ref()) {
            Some(kb) => recipe.resolve(kb),
            None => spar_data::kb::KnowledgeBase::default_dir(),
        };
        data_files.extend(super::audit::files_of(&kb));
    }
    let mut spec = spar_data::audit::AuditSpec::for_dir("spar eval", &out)
        .with_recipe(super::audit::recipe_toml(&recipe))
        .with_data(data_files);
    if which == "model"
        && let Some(dir) = args.model.clone().or_else(|| {
            recipe
                .model
                .as_ref()
                .and_then(|m| m.path.as_ref())
                .map(|p| recipe.resolve(p))
        })
        && dir.exists()
    {
        spec = spec.with_model(&dir);
    }
    super::audit::run_audited(spec, || {
        evaluate(&args, &recipe, &eval, &plan, &models, &which, &out)
    })
}

fn evaluate(
    args: &Args,
    recipe: &Recipe,
    eval: &EvalSection,
    plan: &EvalPlan,
    models: &spar_eval::run::EvalModels,
    which: &str,
    out: &Path,
) -> Result<()> {
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
    };
    let report = match which {
        "expert" => rt()?.block_on(run_eval(&ExpertPolicy::default(), plan, models)),
        "endpoint" => {
            let ep = eval.policy_endpoint.as_ref().context("--policy endpoint needs --endpoint URL --endpoint-model NAME or [eval.policy_endpoint]")?;
            let rt = rt()?;
            // The client's connection pool lives in the runtime it was made in.
            rt.block_on(async {
                let policy = EndpointPolicy::from_endpoint(ep)?.with_sampling(
                    eval.temperature,
                    eval.max_new_tokens,
                    Some(eval.seed),
                );
                anyhow::Ok(run_eval(&policy, plan, models).await)
            })?
        }
        _ => local(args, recipe, eval, plan, models)?,
    };
    let files = report.write(out)?;
    print_summary(&report);
    eprintln!(
        "report: {} ({} charts)",
        files.markdown.display(),
        files.charts.len()
    );
    Ok(())
}

fn local(
    args: &Args,
    recipe: &Recipe,
    eval: &EvalSection,
    plan: &EvalPlan,
    models: &spar_eval::run::EvalModels,
) -> Result<EvalReport> {
    let model_sec = recipe.model.clone().unwrap_or_default();
    let dir = args
        .model
        .clone()
        .or_else(|| model_sec.path.as_ref().map(|p| recipe.resolve(p)))
        .context(
            "no policy: give --model DIR (a checkpoint), --endpoint URL, or --policy expert",
        )?;
    let device = parse_device(&model_sec.device)?;
    let kind = spar_model::dtype_kind(model_sec.dtype);
    let tokenizer = Arc::new(
        Tokenizer::from_dir(&dir).with_context(|| format!("tokenizer of {}", dir.display()))?,
    );
    let model = match &model_sec.init {
        Some(init) if !dir.join("config.json").exists() => Qwen3Model::random(
            Qwen3Config::from_toml_table(init, "[model] init")?,
            device,
            kind,
            0,
        )?,
        _ => Qwen3Model::load(&dir, device, kind)
            .with_context(|| format!("loading {}", dir.display()))?,
    };
    let rollout = recipe.rollout.clone().unwrap_or_default();
    let policy = LocalPolicyConfig {
        engine: EngineConfig {
            max_batch: rollout.max_batch,
            kv_slots: rollout.kv_slot_count(),
            max_seq_len: rollout.max_seq_len,
            seed: eval.seed,
            ..Default::default()
        },
        enable_thinking: rollout.enable_thinking,
        sampling: SamplingParams {
            temperature: eval.temperature,
            max_new_tokens: eval.max_new_tokens,
            seed: Some(eval.seed),
            ..Default::default()
        },
        id: dir.display().to_string(),
    };
    spar_eval::with_builtin_engine(
        &model,
        policy.engine.clone(),
        tokenizer.clone(),
        &policy.id,
        |client| -> Result<EvalReport> {
            let p = spar_eval::BackendPolicy::new(
                Arc::new(client),
                tokenizer.clone(),
                policy.enable_thinking,
                policy.sampling.clone(),
            )?
            .with_id(policy.id.clone());
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            Ok(rt.block_on(run_eval(&p, plan, models)))
        },
    )?
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
