//! The partial expert: reproducible per seed and case, and its omission rates are the configured ones over the
//! shipped cases.
use super::common::source_cases_dir as shipped_dir;
use spar_core::Stage;
use spar_core::grammar;
use spar_core::sample::Role;
use spar_data::expert::{Expert, ExpertOptions, PartialExpert, PartialExpertOptions};

fn shipped() -> Vec<spar_core::Case> {
    spar_data::load_cases(&shipped_dir()).expect("shipped cases")
}

fn partial(seed: u64) -> PartialExpertOptions {
    PartialExpertOptions {
        seed,
        ..PartialExpertOptions::default()
    }
}

#[test]
fn the_same_seed_gives_the_same_consultations_and_another_seed_other_ones() {
    let cases = shipped();
    let mut differs = 0;
    for c in cases.iter().take(60) {
        let a = PartialExpert::new(c, ExpertOptions::default(), &partial(7));
        let b = PartialExpert::new(c, ExpertOptions::default(), &partial(7));
        assert_eq!(a.choices(), b.choices(), "{}", c.id);
        assert_eq!(a.transcript(), b.transcript(), "{}", c.id);
        let other = PartialExpert::new(c, ExpertOptions::default(), &partial(8));
        differs += (other.choices() != a.choices()) as usize;
    }
    assert!(
        differs > 40,
        "only {differs} of 60 cases changed with the seed"
    );
}

#[test]
fn omission_rates_are_the_configured_ones_over_the_shipped_cases() {
    let cases = shipped();
    let (mut ranks, mut ranked) = ([0usize; 3], 0usize);
    let (mut optional, mut with_three) = ([0usize; 4], 0usize);
    let (mut dropped, mut essential) = (0usize, 0usize);
    let (mut skipped, mut skippable) = (0usize, 0usize);
    for seed in 0..5 {
        for c in &cases {
            let p = PartialExpert::new(c, ExpertOptions::default(), &partial(seed));
            let ch = p.choices();
            // The rank is uniform over 1..=3 where the differential is long enough (every shipped case).
            assert!((1..=3).contains(&ch.diagnosis_rank));
            ranks[ch.diagnosis_rank - 1] += 1;
            ranked += 1;
            if c.tests.optional.len() >= 3 {
                optional[ch.optional_tests] += 1;
                with_three += 1;
            }
            dropped += ch.dropped_essential.len();
            essential += c.tests.essential.len();
            skipped += ch.skipped_questions.len();
            skippable += ch.skippable_questions;
            // What it says is what it drew.
            assert_eq!(
                p.ddx()[ch.diagnosis_rank - 1].icd10.as_deref(),
                Some(c.diagnosis.icd10.as_str()),
                "{}",
                c.id
            );
            assert!(!p.tests().is_empty(), "{}: an empty test list", c.id);
            for d in &ch.dropped_essential {
                assert!(
                    !p.tests().contains(d),
                    "{}: dropped {d} still ordered",
                    c.id
                );
            }
            let full = Expert::new(c);
            for q in full.questions().iter().filter(|q| q.critical) {
                assert!(
                    p.questions().iter().any(|x| x.item_id == q.item_id),
                    "{}: critical item {} skipped",
                    c.id,
                    q.item_id
                );
            }
        }
    }
    let share = |n: usize, of: usize| n as f64 / of.max(1) as f64;
    for (r, n) in ranks.iter().enumerate() {
        let f = share(*n, ranked);
        assert!((f - 1.0 / 3.0).abs() < 0.04, "rank {}: {f}", r + 1);
    }
    for (k, n) in optional.iter().enumerate() {
        let f = share(*n, with_three);
        assert!((f - 0.25).abs() < 0.05, "{k} optional tests: {f}");
    }
    // Slightly below 0.25: when every essential test and every optional one would go, one essential stays.
    let f = share(dropped, essential);
    assert!((0.19..=0.27).contains(&f), "essential tests dropped: {f}");
    let f = share(skipped, skippable);
    assert!(
        (f - 0.4).abs() < 0.03,
        "non-critical questions skipped: {f}"
    );
}

#[test]
fn its_transcript_follows_the_stage_grammar_and_skips_what_it_drew() {
    let c = &shipped()[3];
    let p = PartialExpert::new(c, ExpertOptions::default(), &partial(1));
    let t = p.transcript();
    let reply = |st: Stage| {
        t.iter()
            .rfind(|x| x.role == Role::Assistant && x.stage == Some(st))
            .map(|x| x.text.clone())
            .unwrap()
    };
    let ddx = grammar::parse_ddx(&reply(Stage::Ddx)).unwrap();
    assert_eq!(
        ddx[p.choices().diagnosis_rank - 1].icd10,
        Some(c.diagnosis.icd10.clone())
    );
    assert_eq!(grammar::parse_tests(&reply(Stage::Lab)).unwrap(), p.tests());
    assert_eq!(
        grammar::parse_diagnosis(&reply(Stage::Diag)).unwrap().icd10,
        Some(c.diagnosis.icd10.clone())
    );
    let asked: Vec<&str> = t
        .iter()
        .filter(|x| x.role == Role::Assistant && x.stage == Some(Stage::Inquiry))
        .map(|x| x.text.as_str())
        .collect();
    // At most one turn per question it kept, never a skipped one, then `<ready/>`.
    assert!(asked.len() <= p.questions().len() + 1);
    assert!(grammar::inquiry_done(asked.last().unwrap()));
    let full = Expert::new(c);
    for id in &p.choices().skipped_questions {
        let q = full.questions().iter().find(|q| &q.item_id == id).unwrap();
        assert!(!asked.contains(&q.text.as_str()), "skipped {id} was asked");
    }
}
