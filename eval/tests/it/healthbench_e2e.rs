//! HealthBench end to end over HTTP, the way `spar eval --healthbench FILE --endpoint URL --judge-endpoint URL`
//! runs it: the shipped sample file, a policy served by a fake OpenAI-compatible endpoint, the LLM judge of
//! `spar-clients` against a second fake endpoint, the `[eval]` recipe section, and the written report. The scores
//! are checked against numbers worked out by hand from HealthBench's definitions.
use super::common::eval_models;
use spar_clients::ChatMessage;
use spar_clients::OpenAiChatBackend;
use spar_core::recipe::Recipe;
use spar_eval::run::{EvalPlan, run_eval};
use spar_eval::{ConsultationConfig, EvalPolicy, EvalReport, EvalSetup, load_healthbench};
use spar_testkit::{FakeReply, FakeServer, FakeServerConfig};
use std::path::PathBuf;
use std::sync::Arc;

pub fn sample_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/healthbench_sample.jsonl")
}

/// The policy's answers, chosen by the last user message.
fn policy_answer(messages: &[ChatMessage]) -> FakeReply {
    let last = messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map_or("", |m| m.content.as_str());
    let text = if last.contains("chest pain") {
        "<think>Possible heart attack.</think>Call emergency services now. Chew an aspirin if you are not allergic."
    } else if last.contains("headache") {
        "You can probably sleep it off; take paracetamol if needed."
    } else if last.contains("antibiotics") {
        "Antibiotics do not help a viral cold. Rest and drink fluids."
    } else if last.contains("neither") {
        "For an adult the maximum is 4 g per day."
    } else {
        "I am not sure."
    };
    FakeReply::from(text)
}

/// Which phrase in the response meets each criterion (negative criteria: the behaviour is present).
const JUDGE_RULES: &[(&str, &str)] = &[
    (
        "Advises calling emergency services",
        "call emergency services",
    ),
    ("Mentions chewing aspirin", "aspirin"),
    ("Suggests waiting", "wait and see"),
    (
        "Recommends going to the emergency department",
        "emergency department",
    ),
    ("bleeding in the brain", "bleeding"),
    ("Tells the user to sleep it off", "sleep it off"),
    ("antibiotics do not help", "antibiotics do not help"),
    ("last more than 10 days", "10 days"),
    ("has a fever", "fever"),
    ("States a maximum of 4 g", "4 g per day"),
    ("combination products", "combination"),
    ("Recommends more than 4 g", "6 g"),
];

/// A grader that reads the judge prompt the way a model would: the response from the quoted data block, the
/// criterion from the rubric line, and answers the strict verdict JSON.
fn judge_answer(messages: &[ChatMessage]) -> FakeReply {
    let user = &messages.last().expect("judge prompt").content;
    let data_start = user.find(">>>\n").expect("data block") + 4;
    let data_end = user.find("\n<<<END DATA").expect("data block end");
    let data: serde_json::Value =
        serde_json::from_str(&user[data_start..data_end]).expect("data block is JSON");
    let response = data["response"].as_str().unwrap_or("").to_lowercase();
    let line = user
        .lines()
        .find(|l| l.starts_with("Rubric criterion"))
        .expect("criterion line");
    let criterion: String = serde_json::from_str(line.split_once("): ").expect("criterion").1)
        .expect("quoted criterion");
    let phrase = JUDGE_RULES
        .iter()
        .find(|(c, _)| criterion.contains(c))
        .unwrap_or_else(|| panic!("no rule for criterion {criterion:?}"))
        .1;
    let met = response.contains(phrase);
    FakeReply::from(
        serde_json::json!({"met": met, "explanation": format!("looked for {phrase:?}")})
            .to_string(),
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// A chat policy over the fake endpoint (built outside any runtime: `run_eval` runs its own).
fn endpoint_policy(srv: &FakeServer) -> EvalPolicy<'static> {
    EvalPolicy::chat(Arc::new(
        OpenAiChatBackend::from_endpoint(&srv.endpoint()).unwrap(),
    ))
}

// `run_eval` is called from a plain thread (it runs rollout's runtime); the fake servers run on `rt`.
#[test]
fn healthbench_over_endpoints_scores_as_healthbench_defines() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let policy_srv = rt
        .block_on(FakeServer::start(FakeServerConfig {
            model: "fake-doctor".into(),
            chat: Arc::new(policy_answer),
            ..Default::default()
        }))
        .unwrap();
    let judge_srv = rt
        .block_on(FakeServer::start(FakeServerConfig {
            model: "fake-judge".into(),
            chat: Arc::new(judge_answer),
            ..Default::default()
        }))
        .unwrap();
    let examples = load_healthbench(&sample_file()).unwrap();
    assert_eq!(examples.len(), 4);

    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for clip in ["mean", "example"] {
        let recipe = Recipe::from_toml_str(
            &format!(
                "[eval]\nhallucination = false\nbootstrap = 200\nconcurrency = 2\nhealthbench_clip = \"{clip}\"\n\
                 [eval.judge]\nkind = \"llm\"\nendpoint = {{ base_url = \"{}\", model = \"fake-judge\", max_retries = 0 }}\n",
                judge_srv.base_url()
            ),
            "(test)",
            &[],
        )
        .unwrap();
        let eval = recipe.eval.clone().unwrap();
        let models = eval_models(&eval, true);
        let plan = EvalPlan {
            cases: vec![],
            seen: None,
            consultation: ConsultationConfig::default(),
            healthbench: examples.clone(),
            healthbench_cfg: EvalPlan::healthbench_config(&eval),
            setup: EvalSetup {
                healthbench_file: Some(sample_file().display().to_string()),
                ..Default::default()
            },
        };
        let report = run_eval(&endpoint_policy(&policy_srv), &plan, &models).unwrap();
        let out = dir.path().join(clip);
        let files = report.write(&out).unwrap();
        results.push((report, files, out));
    }

    // Per example (points of criteria met, negative ones included, over the positive points):
    //   hb-chest    +10 met, +5 met, -8 unmet           15/15 =  1
    //   hb-headache +9 unmet, +3 unmet, -7 met          -7/12 = -0.583333
    //   hb-cold     +6 met, +4 unmet, +2 unmet           6/12 =  0.5
    //   hb-dose     +7 met, +3 unmet, -9 unmet           7/10 =  0.7
    let (report, files, out) = &results[0];
    let hb = report.healthbench.as_ref().unwrap();
    assert_eq!((hb.examples, hb.failed), (4, 0));
    assert!(
        hb.judge.starts_with("llm-judge/fake-judge/"),
        "{}",
        hb.judge
    );
    let per_example: Vec<f64> = report
        .healthbench_results
        .iter()
        .map(|r| r.score.as_ref().unwrap().overall)
        .collect();
    for (got, want) in per_example.iter().zip([1.0, -7.0 / 12.0, 0.5, 0.7]) {
        assert!(close(*got, want), "{per_example:?}");
    }
    // HealthBench clips the mean: mean(1, -0.583333, 0.5, 0.7) = 0.404167.
    let s = &hb.scores;
    let overall = s.overall.unwrap();
    assert!(
        close(overall.mean, (1.0 - 7.0 / 12.0 + 0.5 + 0.7) / 4.0),
        "{overall:?}"
    );
    assert_eq!(overall.n, 4);
    assert!(overall.bootstrap_std > 0.0);
    // Themes group the example scores by `theme:` tag.
    assert!(close(
        s.themes["emergency_referrals"].mean,
        (1.0 - 7.0 / 12.0) / 2.0
    ));
    assert_eq!(s.themes["emergency_referrals"].n, 2);
    assert!(close(s.themes["hedging"].mean, 0.5));
    assert!(close(s.themes["communication"].mean, 0.7));
    assert!(
        s.example_tags
            .contains_key("physician_agreed_category:emergent")
    );
    // Axes: the same ratio over the criteria with the tag. accuracy: 10/10, -7/9, 6/6, 7/7.
    assert!(close(s.axes["accuracy"].mean, (3.0 - 7.0 / 9.0) / 4.0));
    assert!(close(s.axes["completeness"].mean, 0.25));
    assert!(close(s.axes["context_awareness"].mean, 0.0));

    // Clipping each example first (a reading some tools use): mean(1, 0, 0.5, 0.7) = 0.55.
    let ex = &results[1].0.healthbench.as_ref().unwrap().scores;
    assert!(close(ex.overall.unwrap().mean, 0.55));
    assert!(close(ex.themes["emergency_referrals"].mean, 0.5));

    // What went over the wire: every criterion graded once, negative ones with the penalty template, the policy
    // saw the whole conversation (system prompt and earlier assistant turn included), thinking never graded.
    let judged = judge_srv.requests();
    assert_eq!(judged.len(), 2 * 12);
    let prompt = |r: &spar_testkit::RecordedRequest| {
        r.body["messages"][1]["content"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let negatives: Vec<String> = judged
        .iter()
        .map(prompt)
        .filter(|p| p.contains("undesirable behaviour"))
        .collect();
    assert_eq!(negatives.len(), 2 * 3);
    assert!(negatives.iter().all(|p| p.contains("penalty of")));
    assert!(
        judged
            .iter()
            .map(prompt)
            .all(|p| !p.contains("Possible heart attack"))
    );
    let dose = policy_srv
        .requests()
        .into_iter()
        .find(|r| r.body.to_string().contains("neither"))
        .unwrap();
    let roles: Vec<&str> = dose.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);

    // The written report: JSON for machines, markdown with the theme and axis tables, per-example verdicts.
    let back = EvalReport::read(out).unwrap();
    assert_eq!(back.healthbench, report.healthbench);
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    assert!(md.contains("**Overall: 0.404 ±"), "{md}");
    assert!(md.contains("| emergency_referrals | 0.208 ±"), "{md}");
    assert!(md.contains("| accuracy | 0.556 ±"), "{md}");
    assert!(
        md.contains("| context_awareness | 0.000 ±"),
        "no criterion met is 0, not -0: {md}"
    );
    let lines = std::fs::read_to_string(files.healthbench_results.as_ref().unwrap()).unwrap();
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["prompt_id"], "hb-chest");
    assert_eq!(first["criteria"][2]["met"], false);
    assert!(
        files
            .charts
            .iter()
            .any(|p| p.ends_with("charts/healthbench_themes.png")),
        "{:?}",
        files.charts
    );
}

#[test]
fn a_judge_that_answers_garbage_leaves_the_example_out() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let policy_srv = rt
        .block_on(FakeServer::start(FakeServerConfig {
            chat: Arc::new(policy_answer),
            ..Default::default()
        }))
        .unwrap();
    // Grades everything except the chest-pain example, whose verdicts are not JSON.
    let judge_srv = rt
        .block_on(FakeServer::start(FakeServerConfig {
            chat: Arc::new(|m: &[ChatMessage]| {
                if m.last().is_some_and(|x| x.content.contains("chest pain")) {
                    FakeReply::from("Sure! The criterion is met.")
                } else {
                    judge_answer(m)
                }
            }),
            ..Default::default()
        }))
        .unwrap();
    let mut judge_ep = judge_srv.endpoint();
    judge_ep.max_retries = 0;
    let recipe = Recipe::from_toml_str(
        &format!(
            "[eval]\nhallucination = false\nbootstrap = 0\n[eval.judge]\nkind = \"llm\"\n\
             endpoint = {{ base_url = \"{}\", model = \"j\", max_retries = 0 }}\n",
            judge_srv.base_url()
        ),
        "(test)",
        &[],
    )
    .unwrap();
    let eval = recipe.eval.clone().unwrap();
    let models = eval_models(&eval, true);
    let plan = EvalPlan {
        cases: vec![],
        seen: None,
        consultation: ConsultationConfig::default(),
        healthbench: load_healthbench(&sample_file()).unwrap(),
        healthbench_cfg: EvalPlan::healthbench_config(&eval),
        setup: EvalSetup::default(),
    };
    let report = run_eval(&endpoint_policy(&policy_srv), &plan, &models).unwrap();
    let hb = report.healthbench.as_ref().unwrap();
    assert_eq!((hb.examples, hb.failed), (4, 1));
    let chest = &report.healthbench_results[0];
    assert!(chest.score.is_none());
    assert!(
        chest
            .error
            .as_deref()
            .unwrap_or("")
            .contains("judge failed on 3 of 3"),
        "{:?}",
        chest.error
    );
    // The mean covers the three graded examples: mean(-0.583333, 0.5, 0.7).
    assert!(close(
        hb.scores.overall.unwrap().mean,
        (-7.0 / 12.0 + 0.5 + 0.7) / 3.0
    ));
}
