//! Reviewer overrides in the claim cache (`spar review`): a lookup returns the override before any cached or
//! fresh verdict, under every verifier, and the next scoring run labels the claim as the reviewer said; a
//! reviewer's rubric verdict answers for its criterion and reply in the next scoring run.
use super::fact::CountingVerifier;
use super::fixtures::{case, sample};
use spar_core::Stage;
use spar_core::recipe::{ClaimCacheKind, FactMode, RewardsSection};
use spar_core::sample::{ClaimLabel, Role};
use spar_core::traits::ClaimVerdict;
use spar_rewards::fact::{
    CacheBackend, ClaimCache, Hit, MemoryBackend, SqliteBackend, get_override, put_override,
};
use spar_rewards::rubric::{RubricOverride, get_rubric_override, put_rubric_override};
use spar_rewards::{Injected, RewardPipeline};
use std::sync::Arc;
use std::sync::atomic::Ordering;

fn verdict(label: ClaimLabel, evidence: &str) -> ClaimVerdict {
    ClaimVerdict {
        label,
        evidence: evidence.into(),
        source: Some("reviewer".into()),
    }
}

#[tokio::test]
async fn an_override_wins_over_cached_verdicts_under_any_verifier_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claims.sqlite");
    let b: Arc<dyn CacheBackend> = Arc::new(SqliteBackend::open(&path).unwrap());
    let cache = ClaimCache::open(b.clone(), "kb|v1", "enc", 0.9)
        .await
        .unwrap();
    let e = [1.0f32, 0.0];
    cache
        .insert(
            "Lithium with NSAIDs is safe",
            &e,
            &verdict(ClaimLabel::Supported, ""),
        )
        .await;
    assert_eq!(
        cache
            .lookup("Lithium with NSAIDs is safe", &e)
            .await
            .unwrap()
            .0
            .label,
        ClaimLabel::Supported
    );
    put_override(
        b.as_ref(),
        "Lithium with NSAIDs is safe",
        &verdict(ClaimLabel::Refuted, "NSAIDs raise lithium levels"),
    )
    .await
    .unwrap();
    // Normalised like every key: case and the final full stop do not matter.
    let (v, hit) = cache
        .lookup("lithium with NSAIDs is safe.", &e)
        .await
        .unwrap();
    assert_eq!((v.label, hit), (ClaimLabel::Refuted, Hit::Override));
    assert_eq!(v.evidence, "NSAIDs raise lithium levels");
    assert_eq!(cache.stats().override_hits, 1);
    drop(cache);
    drop(b);
    // Another process, another verifier version: the override still holds.
    let b: Arc<dyn CacheBackend> = Arc::new(SqliteBackend::open(&path).unwrap());
    let other = ClaimCache::open(b.clone(), "kb|v2", "enc", 0.9)
        .await
        .unwrap();
    let (v, hit) = other
        .lookup("Lithium with NSAIDs is safe", &e)
        .await
        .unwrap();
    assert_eq!((v.label, hit), (ClaimLabel::Refuted, Hit::Override));
    assert_eq!(
        get_override(b.as_ref(), "Lithium with NSAIDs is safe")
            .await
            .unwrap()
            .map(|v| v.label),
        Some(ClaimLabel::Refuted)
    );
    // A later override replaces an earlier one; other claims are untouched.
    put_override(
        b.as_ref(),
        "Lithium with NSAIDs is safe",
        &verdict(ClaimLabel::Uncertain, ""),
    )
    .await
    .unwrap();
    assert_eq!(
        other
            .lookup("Lithium with NSAIDs is safe", &e)
            .await
            .unwrap()
            .0
            .label,
        ClaimLabel::Uncertain
    );
    assert!(
        other
            .lookup("Aspirin is safe in children", &e)
            .await
            .is_none()
    );
}

#[tokio::test]
async fn the_next_scoring_run_labels_an_overridden_claim_as_the_reviewer_said() {
    let backend: Arc<dyn CacheBackend> = Arc::new(MemoryBackend::default());
    let verifier = Arc::new(CountingVerifier::default());
    let mut cfg = RewardsSection::default();
    cfg.fact.mode = FactMode::Gate;
    cfg.fact.cache = ClaimCacheKind::Memory;
    let pipeline = |v: Arc<CountingVerifier>| {
        let cfg = cfg.clone();
        let backend = backend.clone();
        async move {
            RewardPipeline::new(
                &cfg,
                Injected {
                    verifier: Some(v),
                    cache_backend: Some(backend),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
        }
    };
    let reply = "<diagnosis>Pneumonia (J18.9)</diagnosis> Garlic cures pneumonia.";
    let group = vec![sample(
        "f",
        0,
        &[Stage::Diag],
        &[(Role::User, "Final diagnosis?"), (Role::Assistant, reply)],
        0,
    )];
    let label_of = |s: &spar_core::Scored| {
        s.claims
            .iter()
            .find(|c| c.text.contains("Garlic"))
            .map(|c| c.label)
    };
    let first = pipeline(verifier.clone())
        .await
        .score_group(&case(), &group)
        .await;
    assert_eq!(label_of(&first[0]), Some(ClaimLabel::Refuted));
    put_override(
        backend.as_ref(),
        "Garlic cures pneumonia",
        &verdict(ClaimLabel::Supported, "reviewer disagrees"),
    )
    .await
    .unwrap();
    let fresh = Arc::new(CountingVerifier::default());
    let second = pipeline(fresh.clone())
        .await
        .score_group(&case(), &group)
        .await;
    assert_eq!(label_of(&second[0]), Some(ClaimLabel::Supported));
    assert_eq!(
        fresh.calls.load(Ordering::SeqCst),
        0,
        "the override answers without the verifier"
    );
    assert!(second[0].r_fact > first[0].r_fact);
}

#[tokio::test]
async fn the_next_scoring_run_takes_a_reviewers_rubric_verdict_for_that_reply_only() {
    let backend: Arc<dyn CacheBackend> = Arc::new(MemoryBackend::default());
    let mut cfg = RewardsSection::default();
    cfg.fact.cache = ClaimCacheKind::Memory;
    let pipeline = || {
        let cfg = cfg.clone();
        let backend = backend.clone();
        async move {
            RewardPipeline::new(
                &cfg,
                Injected {
                    cache_backend: Some(backend),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
        }
    };
    let asks = "Are you allergic to penicillin? Do you smoke?";
    let other = "Do you smoke? Any allergy to drugs?";
    let dx = "<diagnosis>Pneumonia (J18.9)</diagnosis>";
    let st = [Stage::Inquiry, Stage::Diag];
    // What the judge reads: the sampled replies joined by blank lines.
    let judged = format!("{asks}\n\n{dx}");
    let group = vec![
        sample(
            "r",
            0,
            &st,
            &[
                (Role::User, "I cough."),
                (Role::Assistant, asks),
                (Role::User, "No."),
                (Role::Assistant, dx),
            ],
            0,
        ),
        sample(
            "r",
            1,
            &st,
            &[
                (Role::User, "I cough."),
                (Role::Assistant, other),
                (Role::User, "No."),
                (Role::Assistant, dx),
            ],
            0,
        ),
    ];
    let allergy = |s: &spar_core::Scored| {
        s.rubric
            .iter()
            .find(|v| v.criterion == "Asks about penicillin allergy")
            .unwrap()
            .clone()
    };
    let first = pipeline().await.score_group(&case(), &group).await;
    assert_eq!(allergy(&first[0]).met, Some(true));
    assert_eq!(allergy(&first[1]).met, Some(true));

    // The reviewer says the first reply does not meet it (the store keys criterion and judged text).
    put_rubric_override(
        backend.as_ref(),
        "Asks about penicillin allergy",
        &judged,
        &RubricOverride {
            met: Some(false),
            note: "asks, but about penicillin only in passing".into(),
            source: Some("review:tester".into()),
        },
    )
    .await
    .unwrap();
    let p = pipeline().await;
    let second = p.score_group(&case(), &group).await;
    let v = allergy(&second[0]);
    assert_eq!(v.met, Some(false));
    assert!(v.explanation.contains("review:tester"), "{v:?}");
    assert!(second[0].r_task < first[0].r_task);
    // Another reply, the same criterion: judged as before.
    assert_eq!(allergy(&second[1]), allergy(&first[1]));
    assert_eq!(p.rubric_override_hits(), 1);

    // Cleared: the judge decides again.
    put_rubric_override(
        backend.as_ref(),
        "Asks about penicillin allergy",
        &judged,
        &RubricOverride {
            met: None,
            note: String::new(),
            source: Some("review:tester".into()),
        },
    )
    .await
    .unwrap();
    let third = pipeline().await.score_group(&case(), &group).await;
    assert_eq!(allergy(&third[0]), allergy(&first[0]));
    assert_eq!(
        get_rubric_override(backend.as_ref(), "asks about penicillin allergy.", &judged)
            .await
            .unwrap()
            .unwrap()
            .met,
        None,
        "keys are normalised like claim keys"
    );
}
