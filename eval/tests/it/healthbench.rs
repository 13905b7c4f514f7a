//! HealthBench scoring against hand-computed numbers, the JSONL loader's errors, and the runner with test doubles.
use super::common::{FixedPolicy, KeywordJudge};
use spar_eval::healthbench::score::{
    AggregateOptions, ClipMode, GradedCriterion, aggregate, ratio, score_example,
};
use spar_eval::healthbench::{HealthBenchConfig, load_healthbench, run_healthbench};

fn c(points: f64, met: bool, tags: &[&str]) -> GradedCriterion {
    GradedCriterion {
        points,
        met,
        tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

fn tags(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Three examples whose scores were worked out by hand:
/// 1. +5 met (accuracy), +3 unmet (completeness), -2 met (completeness): (5 - 2) / 8 = 0.375;
///    accuracy 5/5 = 1; completeness -2/3.
/// 2. +4 unmet (accuracy), -6 met (accuracy): -6/4 = -1.5; accuracy -1.5.
/// 3. +10 met, -5 unmet (safety): 10/10 = 1; safety has no positive points, so no value.
fn three() -> Vec<spar_eval::healthbench::score::ExampleScore> {
    vec![
        score_example(
            &tags(&["theme:emergency_referrals"]),
            &[
                c(5.0, true, &["axis:accuracy"]),
                c(3.0, false, &["axis:completeness"]),
                c(-2.0, true, &["axis:completeness"]),
            ],
        )
        .unwrap(),
        score_example(
            &tags(&["theme:emergency_referrals"]),
            &[
                c(4.0, false, &["axis:accuracy"]),
                c(-6.0, true, &["axis:accuracy"]),
            ],
        )
        .unwrap(),
        score_example(
            &tags(&["theme:hedging"]),
            &[c(10.0, true, &[]), c(-5.0, false, &["axis:safety"])],
        )
        .unwrap(),
    ]
}

#[test]
fn per_example_scores_match_hand_computation() {
    let ex = three();
    assert!(close(ex[0].overall, 0.375));
    assert!(close(ex[0].rubric_tags["axis:accuracy"], 1.0));
    assert!(close(ex[0].rubric_tags["axis:completeness"], -2.0 / 3.0));
    assert!(
        close(ex[1].overall, -1.5),
        "negative points can push an example below 0"
    );
    assert!(close(ex[2].overall, 1.0));
    assert!(
        !ex[2].rubric_tags.contains_key("axis:safety"),
        "a tag without positive points has no score"
    );
    assert_eq!(ratio(&[c(-3.0, true, &[])]), None);
    assert_eq!(score_example(&[], &[c(-3.0, true, &[])]), None);
}

#[test]
fn healthbench_clips_the_mean_not_each_example() {
    let opts = AggregateOptions {
        clip: ClipMode::Mean,
        bootstrap: 0,
        seed: 0,
    };
    let s = aggregate(&three(), &opts);
    // mean(0.375, -1.5, 1.0) = -0.041666 -> clipped to 0.
    assert!(close(s.overall.unwrap().mean, 0.0));
    assert_eq!(s.overall.unwrap().n, 3);
    // Themes group examples by their `theme:` tag: mean(0.375, -1.5) = -0.5625 -> 0; hedging 1.0.
    assert!(close(s.themes["emergency_referrals"].mean, 0.0));
    assert_eq!(s.themes["emergency_referrals"].n, 2);
    assert!(close(s.themes["hedging"].mean, 1.0));
    // Axes group rubric-tag scores: accuracy mean(1, -1.5) = -0.25 -> 0.
    assert!(close(s.axes["accuracy"].mean, 0.0));
    assert_eq!(s.axes["accuracy"].n, 2);
    assert!(!s.axes.contains_key("safety"));
    assert!(
        s.example_tags.contains_key("theme:hedging")
            && s.rubric_tags.contains_key("axis:completeness")
    );

    let opts = AggregateOptions {
        clip: ClipMode::Example,
        bootstrap: 0,
        seed: 0,
    };
    let s = aggregate(&three(), &opts);
    // mean(0.375, 0, 1) = 0.458333.
    assert!(close(s.overall.unwrap().mean, 1.375 / 3.0));
    assert!(close(s.themes["emergency_referrals"].mean, 0.1875));
    assert!(close(s.axes["accuracy"].mean, 0.5));
}

#[test]
fn unclipped_means_and_bootstrap() {
    let ex: Vec<_> = [(3.0, true), (1.0, false)]
        .iter()
        .map(|&(p, m)| {
            score_example(&tags(&["theme:a"]), &[c(p, m, &[]), c(1.0, true, &[])]).unwrap()
        })
        .collect();
    // 4/4 = 1 and 1/2 = 0.5 -> 0.75.
    let s = aggregate(&ex, &AggregateOptions::default());
    let o = s.overall.unwrap();
    assert!(close(o.mean, 0.75));
    assert!(
        o.bootstrap_std > 0.0 && o.bootstrap_std < 0.5,
        "{}",
        o.bootstrap_std
    );
    assert_eq!(
        aggregate(&ex, &AggregateOptions::default()),
        s,
        "seeded bootstrap is reproducible"
    );
    let same: Vec<_> = (0..5).map(|_| ex[0].clone()).collect();
    assert_eq!(
        aggregate(&same, &AggregateOptions::default())
            .overall
            .unwrap()
            .bootstrap_std,
        0.0
    );
    assert_eq!(aggregate(&[], &AggregateOptions::default()).overall, None);
}

const GOOD: &str = r#"{"prompt_id":"p1","prompt":[{"role":"user","content":"I have chest pain, what should I do?"}],"rubrics":[{"criterion":"Advises calling emergency services","points":8,"tags":["axis:accuracy","level:example"]},{"criterion":"Recommends waiting a week","points":-6,"tags":["axis:safety"]}],"example_tags":["theme:emergency_referrals"],"ideal_completions_data":null}
{"prompt_id":"p2","prompt":[{"role":"system","content":"Be brief."},{"role":"user","content":"Is ibuprofen safe with warfarin?"}],"rubrics":[{"criterion":"Warns about bleeding risk","points":7,"tags":["axis:accuracy"]},{"criterion":"Mentions consulting a doctor","points":3,"tags":["axis:completeness"]}],"example_tags":["theme:hedging"]}
"#;

#[test]
fn loader_accepts_published_lines_and_names_bad_fields() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hb.jsonl");
    std::fs::write(&p, GOOD).unwrap();
    let ex = load_healthbench(&p).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(
        ex[0].themes().collect::<Vec<_>>(),
        vec!["emergency_referrals"]
    );
    assert_eq!(
        ex[1].conversation()[0].role,
        spar_core::sample::Role::System
    );

    let bad = format!(
        "{}\n{}\n{}\n",
        r#"{"prompt_id":"a","prompt":[{"role":"user","content":"x"}],"rubrics":[{"criterion":"y","points":-3,"tags":[]}]}"#,
        r#"{"prompt_id":"b","prompt":[{"role":"user","content":"x"}]}"#,
        r#"{"prompt_id":"a","prompt":[{"role":"doctor","content":"x"}],"rubrics":[{"criterion":"y","points":3}]}"#
    );
    std::fs::write(&p, bad).unwrap();
    let e = load_healthbench(&p).unwrap_err().to_string();
    assert!(e.contains("4 problem(s) in HealthBench file"), "{e}");
    assert!(
        e.contains(
            "hb.jsonl:1: field `rubrics`: needs at least one criterion with positive points"
        ),
        "{e}"
    );
    assert!(
        e.contains("hb.jsonl:2: field `rubrics`: missing field"),
        "{e}"
    );
    assert!(e.contains("hb.jsonl:3: field `prompt[0].role`"), "{e}");
    assert!(e.contains("`a` already used on line 1"), "{e}");
}

#[tokio::test]
async fn runner_grades_scores_and_counts_failures() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hb.jsonl");
    std::fs::write(&p, GOOD).unwrap();
    let examples = load_healthbench(&p).unwrap();
    // The policy says "call emergency services ... bleeding": criteria met by keyword.
    let policy =
        FixedPolicy::new("Please call emergency services now. Ibuprofen raises bleeding risk.");
    let judge = KeywordJudge::new(&[
        ("emergency services", "emergency"),
        ("bleeding", "bleeding"),
        ("waiting", "wait a week"),
        ("doctor", "doctor"),
    ]);
    let cfg = HealthBenchConfig {
        concurrency: 2,
        aggregate: AggregateOptions {
            bootstrap: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let (summary, results) = run_healthbench(&policy, &judge, &examples, &cfg).await;
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].prompt_id, "p1");
    // p1: +8 met, -6 unmet -> 1.0; p2: +7 met, +3 unmet -> 0.7. Mean 0.85.
    assert!(close(results[0].score.as_ref().unwrap().overall, 1.0));
    assert!(close(results[1].score.as_ref().unwrap().overall, 0.7));
    assert!(close(summary.scores.overall.unwrap().mean, 0.85));
    assert!(close(summary.scores.axes["accuracy"].mean, 1.0));
    assert!(close(summary.scores.axes["completeness"].mean, 0.0));
    assert_eq!(summary.failed, 0);

    // A judge that fails on one criterion leaves that example out, counted.
    let judge = KeywordJudge::new(&[("emergency services", "emergency")]).failing_on("bleeding");
    let (summary, results) = run_healthbench(&policy, &judge, &examples, &cfg).await;
    assert_eq!(summary.failed, 1);
    assert!(
        results[1]
            .error
            .as_deref()
            .unwrap()
            .contains("judge failed on 1 of 2")
    );
    assert_eq!(summary.scores.overall.unwrap().n, 1);
}
