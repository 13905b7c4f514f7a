//! The hallucination rate H (Refuted 1.0, Uncertain 0.5, Supported 0), per response and pooled.
use spar_core::sample::ClaimLabel::{Refuted, Supported, Uncertain};
use spar_eval::hallucination::{ClaimCounts, summarize};

#[test]
fn h_weighs_refuted_one_and_uncertain_half() {
    let c = ClaimCounts::of(&[
        Supported, Supported, Supported, Refuted, Uncertain, Uncertain,
    ]);
    assert_eq!(
        (c.supported, c.refuted, c.uncertain, c.total()),
        (3, 1, 2, 6)
    );
    // (1 + 0.5 + 0.5) / 6.
    assert!((c.rate().unwrap() - 2.0 / 6.0).abs() < 1e-12);
    assert_eq!(ClaimCounts::default().rate(), None);
    assert_eq!(ClaimCounts::of(&[Supported]).rate(), Some(0.0));
    assert_eq!(ClaimCounts::of(&[Refuted]).rate(), Some(1.0));
}

#[test]
fn pooled_and_per_response_rates() {
    let a = ClaimCounts::of(&[Refuted, Supported]); // 0.5
    let b = ClaimCounts::of(&[Uncertain, Uncertain, Supported, Supported]); // 0.25
    let s = summarize(&[a, b, ClaimCounts::default()], "x", "kb");
    // Pooled: (1 + 0.5 + 0.5) / 6; per response: mean(0.5, 0.25), the claim-less response left out.
    assert!((s.rate.unwrap() - 2.0 / 6.0).abs() < 1e-12);
    assert!((s.per_response_mean.unwrap() - 0.375).abs() < 1e-12);
    assert_eq!(
        (s.responses, s.responses_without_claims, s.counts.total()),
        (3, 1, 6)
    );
    assert_eq!(summarize(&[], "x", "kb").rate, None);
}
