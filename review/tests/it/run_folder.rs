//! Loading a run folder (and the errors that name the file and field), filters and paging, the detail view.
use super::fixtures::{sample, scored, write_run};
use spar_core::Stage;
use spar_review::detail::Detail;
use spar_review::query::ListQuery;
use spar_review::run::RunFolder;
use std::collections::HashMap;

fn err(dir: &std::path::Path) -> String {
    format!("{:#}", RunFolder::open(dir, &HashMap::new()).unwrap_err())
}

#[test]
fn missing_and_malformed_folders_name_the_file_and_field() {
    let d = tempfile::tempdir().unwrap();
    assert!(err(&d.path().join("nope")).contains("not a run folder"));
    let e = err(d.path());
    assert!(
        e.contains("samples.parquet") && e.contains("samples.jsonl"),
        "{e}"
    );

    write_run(d.path(), 4);
    // A scored line missing a field.
    let scored = d.path().join("scored.jsonl");
    let text = std::fs::read_to_string(&scored).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[2] = lines[2].replace("\"lambda\":1.0,", "");
    std::fs::write(&scored, lines.join("\n")).unwrap();
    let e = err(d.path());
    assert!(e.contains("scored.jsonl:3") && e.contains("lambda"), "{e}");

    // A scored record with no sample.
    let extra = scored_of(9);
    spar_data::wire::write_scored(
        &scored,
        &(0..4).map(scored_of).chain([extra]).collect::<Vec<_>>(),
    )
    .unwrap();
    let e = err(d.path());
    assert!(e.contains("has no sample"), "{e}");

    // Steps that do not match the sample's.
    let mut bad = scored_of(1);
    bad.steps.pop();
    spar_data::wire::write_scored(&scored, &[scored_of(0), bad, scored_of(2), scored_of(3)])
        .unwrap();
    let e = err(d.path());
    assert!(e.contains("field `steps`") && e.contains("2 steps"), "{e}");
}

fn scored_of(i: usize) -> spar_core::Scored {
    scored(&sample(i), i)
}

#[test]
fn filters_search_and_pages_on_the_server() {
    let d = tempfile::tempdir().unwrap();
    let deps = write_run(d.path(), 1000);
    let run = RunFolder::open(d.path(), &deps).unwrap();
    assert!(run.scored_file.is_some());
    let all = &run.consultations;
    let q = |f: &dyn Fn(&mut ListQuery)| {
        let mut q = ListQuery::default();
        f(&mut q);
        q.page(all)
    };
    let p = q(&|_| {});
    assert_eq!((p.total, p.rows.len(), p.rows[0].id), (1000, 50, 0));
    let p = q(&|q| {
        q.offset = Some(990);
        q.limit = Some(50);
    });
    assert_eq!((p.total, p.rows.len(), p.rows[0].id), (1000, 10, 990));
    assert_eq!(q(&|q| q.limit = Some(100_000)).rows.len(), 500);
    assert_eq!(q(&|q| q.hallucinated = true).total, 500);
    assert!(
        q(&|q| q.hallucinated = true)
            .rows
            .iter()
            .all(|r| r.refuted == 1)
    );
    assert_eq!(q(&|q| q.department = Some("cardiology".into())).total, 500);
    assert_eq!(
        q(&|q| q.violation = Some("repeated_question".into())).total,
        500
    );
    assert_eq!(q(&|q| q.violation = Some("other".into())).total, 0);
    assert_eq!(q(&|q| q.stage = Some(Stage::Diag)).total, 1000);
    assert_eq!(q(&|q| q.stage = Some(Stage::Lab)).total, 0);
    // R = i / 10: 5.0 <= R <= 10.0 is i in 50..=100.
    let p = q(&|q| {
        q.min_reward = Some(5.0);
        q.max_reward = Some(10.0);
    });
    assert_eq!(p.total, 51);
    assert_eq!(q(&|q| q.q = Some("GARLIC cures".into())).total, 500);
    assert_eq!(q(&|q| q.q = Some("t/g123/".into())).total, 2);
    let p = q(&|q| {
        q.q = Some("garlic".into());
        q.department = Some("respiratory".into());
    });
    assert_eq!(p.total, 250);
    let f = spar_review::query::Facets::of(all);
    assert_eq!(f.departments, ["cardiology", "respiratory"]);
    assert_eq!(f.violations, ["repeated_question"]);
    assert_eq!((f.min_reward, f.max_reward), (Some(0.0), Some(99.9)));
}

#[test]
fn the_detail_marks_claims_in_place_and_aligns_steps_with_replies() {
    let d = tempfile::tempdir().unwrap();
    let deps = write_run(d.path(), 2);
    let run = RunFolder::open(d.path(), &deps).unwrap();
    let v = Detail::of(1, &run.consultations[1]);
    assert_eq!(v.department, "respiratory");
    let step_turns: Vec<Option<usize>> = v.steps.iter().map(|s| s.turn).collect();
    assert_eq!(step_turns, [Some(1), Some(3), Some(5)]);
    assert_eq!(v.turns[3].step, Some(1));
    assert_eq!(v.steps[1].violations, ["repeated_question: asked twice"]);
    assert_eq!(v.steps[1].gamma, Some(0.8));
    let marked: Vec<(&str, usize)> = v.turns[5]
        .pieces
        .iter()
        .filter_map(|p| p.claim.map(|c| (p.text.as_str(), c)))
        .collect();
    assert_eq!(
        marked,
        [
            ("Amoxicillin treats pneumonia", 0),
            ("Garlic cures pneumonia", 1)
        ]
    );
    assert_eq!(v.claims[1].turn, Some(5));
    // The pieces put the reply back together.
    let text: String = v.turns[5].pieces.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(text, run.consultations[1].turns[5].text);
    let inquiry = &v.stage_rewards[0];
    assert_eq!(
        (inquiry.stage, inquiry.steps, inquiry.violations),
        (Stage::Inquiry, 2, 1)
    );
    assert!((inquiry.mean_gamma.unwrap() - 0.9).abs() < 1e-12);
    assert!((inquiry.advantage_sum - 0.5).abs() < 1e-12);
}

#[test]
fn an_evaluation_report_folder_is_read_as_consultations() {
    let d = tempfile::tempdir().unwrap();
    let ep = |case: &str, idx: u32, flagged: serde_json::Value| {
        serde_json::json!({
            "case_id": case, "department": "neurology", "diagnosis": "G43.9", "seen_diagnosis": null,
            "sample_idx": idx, "end": "done", "inquiry_turns": 1, "truncated": false,
            "stages": {"inquiry": {"score": 0.5, "parsed": true, "details": null},
                       "diag": {"score": 0.9, "parsed": false, "details": null}},
            "critical_recall": null, "safety": {"acuity": "routine", "flags": [], "escalated": false},
            "flagged_claims": flagged,
        })
    };
    let report = serde_json::json!({
        "schema_version": 1, "created": "2026-12-05T00:00:00Z", "policy": "p", "setup": {},
        "consultation": null, "healthbench": null,
        "episodes": [
            ep("m1", 0, serde_json::json!([{"text": "Triptans are safe in pregnancy", "label": "refuted", "source": "kb:x"}])),
            ep("m2", 0, serde_json::json!([])),
        ],
    });
    std::fs::write(d.path().join("report.json"), report.to_string()).unwrap();
    let line = serde_json::json!({"case_id": "m1", "sample_idx": 0, "end": "done", "turns": [
        {"role": "user", "text": "Headache since Monday.", "stage": "inquiry"},
        {"role": "assistant", "text": "Triptans are safe in pregnancy. <diagnosis>Migraine (G43.9)</diagnosis>", "stage": "diag"},
    ]});
    std::fs::write(d.path().join("transcripts.jsonl"), format!("{line}\n")).unwrap();
    let run = RunFolder::open(d.path(), &HashMap::new()).unwrap();
    assert_eq!(run.consultations.len(), 2);
    let c = &run.consultations[0];
    assert_eq!(
        (c.department.as_str(), c.end.as_str()),
        ("neurology", "done")
    );
    // Unparsed Diag output scores 0: the composite is (0.5 + 0) / 2.
    let s = c.scored.as_ref().unwrap();
    assert!((s.reward - 0.25).abs() < 1e-12);
    let v = Detail::of(0, c);
    assert_eq!(v.stage_rewards[1].stage_score, Some(0.0));
    assert_eq!(v.claims[0].turn, Some(1));
    let json = serde_json::to_value(&v).unwrap();
    assert!(
        json["rewards"]["r_fact"].is_null(),
        "no R_fact in an evaluation"
    );
    let q = ListQuery {
        hallucinated: true,
        ..Default::default()
    };
    assert_eq!(q.page(&run.consultations).total, 1);
    let q = ListQuery {
        q: Some("headache".into()),
        ..Default::default()
    };
    assert_eq!(q.page(&run.consultations).total, 1);

    std::fs::write(d.path().join("report.json"), "{\"schema_version\": 2}").unwrap();
    let e = format!(
        "{:#}",
        RunFolder::open(d.path(), &HashMap::new()).unwrap_err()
    );
    assert!(
        e.contains("report.json") && e.contains("schema_version"),
        "{e}"
    );
}
