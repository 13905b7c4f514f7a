//! The partial expert is a good but imperfect teacher: on the held-out (validation) cases its stage scores, by
//! the clinical stage scorer RL optimises, are below the full expert's and well above zero.
use spar_core::Stage;
use spar_core::traits::StageScorer;
use spar_data::expert::{Expert, ExpertOptions, PartialExpert, PartialExpertOptions};
use spar_data::splits::{Split, Splits};
use spar_rewards::ClinicalStageScorer;
use spar_rollout::env::stage_replies;

#[test]
fn partial_expert_scores_below_the_full_expert_and_well_above_zero_on_held_out_cases() {
    let cases = spar_data::load_cases(&spar_data::shipped::cases_dir().unwrap()).unwrap();
    let splits =
        Splits::load(&spar_data::shipped::cases_dir().unwrap().join("splits.json")).unwrap();
    let held_out: Vec<_> = cases
        .iter()
        .filter(|c| splits.split_of(&c.id) == Some(Split::Validation))
        .collect();
    assert!(held_out.len() >= 20, "{} validation cases", held_out.len());
    let scorer = ClinicalStageScorer::new(Default::default());
    let mut full = [0.0f64; 4];
    let mut part = [0.0f64; 4];
    for c in &held_out {
        let partial = PartialExpert::new(
            c,
            ExpertOptions::default(),
            &PartialExpertOptions {
                seed: 3,
                ..Default::default()
            },
        );
        for (sums, turns) in [
            (&mut full, Expert::new(c).transcript()),
            (&mut part, partial.transcript()),
        ] {
            for st in Stage::ALL {
                let s = scorer.score(c, st, &stage_replies(&turns, st), &turns);
                assert!(s.parsed, "{} {}: unparsed", c.id, st.name());
                sums[st.index()] += s.score / held_out.len() as f64;
            }
        }
    }
    let mean = |g: &[f64; 4]| g.iter().sum::<f64>() / 4.0;
    eprintln!("held-out stage means: full expert {full:.3?}, partial expert {part:.3?}");
    // Inquiry, DDX and Lab lose what the partial expert leaves out; its final diagnosis stays right.
    for st in [Stage::Inquiry, Stage::Ddx, Stage::Lab] {
        let i = st.index();
        assert!(
            part[i] < full[i] - 0.03,
            "{}: partial {} vs full {}",
            st.name(),
            part[i],
            full[i]
        );
    }
    assert!((part[Stage::Diag.index()] - full[Stage::Diag.index()]).abs() < 1e-9);
    assert!(mean(&part) < mean(&full) - 0.05, "{part:?} vs {full:?}");
    assert!(mean(&part) > 0.5 * mean(&full), "{part:?} vs {full:?}");
    for (st, g) in Stage::ALL.iter().zip(part) {
        assert!(g > 0.2, "{}: partial expert scores {g}", st.name());
    }
}
