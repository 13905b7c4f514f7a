//! The scripted expert: gold transcripts follow the stage grammar, cover every critical item and red flag, and the
//! turn-by-turn API reproduces the transcript.
use spar_core::grammar::{inquiry_done, parse_ddx, parse_diagnosis, parse_tests};
use spar_core::sample::{Role, Turn};
use spar_core::{Case, Stage};
use spar_data::expert::{Expert, READY_REPLY, infer_stage};

fn doctor_turns(t: &[Turn], stage: Stage) -> Vec<&str> {
    t.iter()
        .filter(|x| x.role == Role::Assistant && x.stage == Some(stage))
        .map(|x| x.text.as_str())
        .collect()
}

fn covered(turns: &[&str], keywords: &[String]) -> bool {
    turns.iter().any(|t| {
        keywords
            .iter()
            .any(|k| t.to_lowercase().contains(k.as_str()))
    })
}

fn check_transcript(c: &Case) {
    let t = Expert::new(c).transcript();
    let inq = doctor_turns(&t, Stage::Inquiry);
    assert!(
        inq.len() <= Stage::Inquiry.default_turn_limit() as usize,
        "{}: {} inquiry turns",
        c.id,
        inq.len()
    );
    assert!(
        inquiry_done(inq.last().unwrap()),
        "{}: inquiry does not end with <ready/>",
        c.id
    );
    let questions = &inq[..inq.len() - 1];
    assert!(questions.iter().all(|q| !inquiry_done(q)), "{}", c.id);
    let mut seen = std::collections::HashSet::new();
    for q in questions {
        assert!(seen.insert(*q), "{}: `{q}` asked twice", c.id);
        assert!(
            q.split_whitespace().count() <= 15,
            "{}: `{q}` is long",
            c.id
        );
    }
    for it in c.inquiry_items.iter().filter(|i| i.critical) {
        assert!(
            covered(questions, &it.keywords),
            "{}: critical item `{}` not asked",
            c.id,
            it.id
        );
    }
    for rf in &c.red_flags {
        assert!(
            covered(questions, &rf.keywords),
            "{}: red flag `{}` not screened",
            c.id,
            rf.id
        );
    }
    assert!(
        covered(questions, &["allerg".to_string()]),
        "{}: allergies not asked",
        c.id
    );

    let ddx = parse_ddx(doctor_turns(&t, Stage::Ddx)[0]).unwrap();
    assert_eq!(
        ddx[0].icd10.as_deref(),
        Some(c.diagnosis.icd10.as_str()),
        "{}",
        c.id
    );
    assert!(ddx.len() >= 2);
    let tests = parse_tests(doctor_turns(&t, Stage::Lab)[0]).unwrap();
    for e in &c.tests.essential {
        assert!(
            tests.contains(&e.name),
            "{}: essential test {} missing",
            c.id,
            e.name
        );
    }
    let dx = parse_diagnosis(doctor_turns(&t, Stage::Diag)[0]).unwrap();
    assert_eq!(dx.icd10.as_deref(), Some(c.diagnosis.icd10.as_str()));
    assert_eq!(dx.name, c.diagnosis.name);
    // Turns alternate patient / doctor and every turn has its stage.
    assert_eq!(t[0].role, Role::User);
    for w in t.windows(2) {
        assert_ne!(w[0].role, w[1].role, "{}: roles do not alternate", c.id);
    }
    assert!(t.iter().all(|x| x.stage.is_some()));
}

#[test]
fn gold_transcripts_of_all_shipped_cases() {
    let cases = spar_data::load_cases(&super::common::source_cases_dir()).unwrap();
    for c in &cases {
        check_transcript(c);
    }
}

#[test]
fn turn_by_turn_reproduces_the_transcript_with_any_patient() {
    let c = &spar_data::generate::generate(1, 9).unwrap()[0];
    let e = Expert::new(c);
    let gold: Vec<String> = e
        .transcript()
        .into_iter()
        .filter(|t| t.role == Role::Assistant)
        .map(|t| t.text)
        .collect();
    // A rollout environment: the patient answers vaguely, stage instructions carry no stage label.
    let mut d = vec![Turn::new(Role::User, "Hi, I don't feel well.")];
    let mut got = Vec::new();
    for _ in 0..30 {
        let (stage, reply) = e.next_utterance(&d);
        let done = stage == Stage::Diag;
        let ready = stage == Stage::Inquiry && inquiry_done(&reply);
        d.push(Turn::new(Role::Assistant, reply.clone()));
        got.push(reply);
        if done {
            break;
        }
        let next = match stage {
            Stage::Inquiry if !ready => "Not sure, really.".to_string(),
            Stage::Inquiry => Stage::Ddx.default_instruction().into(),
            s => s.next().unwrap().default_instruction().into(),
        };
        d.push(Turn::new(Role::User, next));
    }
    assert_eq!(got, gold);
    assert_eq!(infer_stage(&d[..d.len() - 1]), Stage::Diag);
    // Without stage labels the stage is read off the tag the instruction asks for.
    for stage in Stage::ALL {
        let asked = vec![Turn::new(Role::User, stage.default_instruction())];
        assert_eq!(infer_stage(&asked), stage);
    }
}

#[test]
fn turn_budget_and_a_doctor_that_already_asked() {
    let c = &spar_data::generate::generate(1, 2).unwrap()[0];
    let e = Expert::new(c);
    let first = e.questions()[0].clone();
    // The dialogue already covers the first item: the expert moves on instead of repeating it.
    let d = vec![
        Turn::new(Role::User, "Hello."),
        Turn::new(Role::Assistant, first.text.clone()),
        Turn::new(Role::User, "Yes."),
    ];
    assert_ne!(e.next_inquiry(&d), first.text);
    // With the budget spent, it says it is ready.
    let mut long = vec![Turn::new(Role::User, "Hello.")];
    for i in 0..11 {
        long.push(Turn::new(Role::Assistant, format!("Question {i}?")));
        long.push(Turn::new(Role::User, "No."));
    }
    assert_eq!(e.next_inquiry(&long), READY_REPLY);
    assert!(spar_core::grammar::completes(Stage::Inquiry, READY_REPLY));
}

#[test]
fn cases_from_elsewhere_get_keyword_questions() {
    let mut c = spar_data::generate::generate(1, 4).unwrap().remove(0);
    c.diagnosis.icd10 = "Z00.00".into();
    c.diagnosis.name = "Imported".into();
    for it in &mut c.inquiry_items {
        it.id = format!("x_{}", it.id);
    }
    check_transcript(&c);
}

#[test]
fn gold_transcripts_meet_the_generated_rubric_rules_and_no_negative_ones() {
    let cases = spar_data::load_cases(&super::common::source_cases_dir()).unwrap();
    for c in &cases {
        let t = Expert::new(c).transcript();
        let said = |stage: Option<Stage>| -> String {
            t.iter()
                .filter(|x| x.role == Role::Assistant && (stage.is_none() || x.stage == stage))
                .map(|x| x.text.to_lowercase())
                .collect::<Vec<_>>()
                .join("\n")
        };
        for item in &c.rubric {
            let Some(rule) = &item.rule else { continue };
            let text = said(rule.stage);
            let met = rule.any.iter().any(|k| text.contains(k.as_str()));
            if item.points < 0 {
                assert!(
                    !met,
                    "{}: the gold transcript meets the negative item `{}`",
                    c.id, item.criterion
                );
            }
        }
        // The generator's own three items: correct diagnosis, first essential test, allergy question.
        for item in &c.rubric[..3] {
            let rule = item.rule.as_ref().unwrap();
            let text = said(rule.stage);
            assert!(
                rule.any.iter().any(|k| text.contains(k.as_str())),
                "{}: gold misses `{}`",
                c.id,
                item.criterion
            );
        }
    }
}

/// `cargo test -p spar-data -- --ignored --nocapture show_a_transcript` prints one gold consultation.
#[test]
#[ignore = "prints a transcript for reading"]
fn show_a_transcript() {
    let cases = spar_data::load_cases(&super::common::source_cases_dir()).unwrap();
    let id = std::env::var("CASE").unwrap_or_else(|_| cases[0].id.clone());
    let c = cases.iter().find(|c| c.id == id).unwrap();
    for t in Expert::new(c).transcript() {
        println!("[{:?} {:?}] {}", t.stage.unwrap(), t.role, t.text);
    }
}
