//! The Fact-Aware side: claim cache levels and guards, persistence, R_fact and the gate through the pipeline.
use super::fixtures::{case, close, sample};
use async_trait::async_trait;
use spar_core::Stage;
use spar_core::recipe::{ClaimCacheKind, FactMode, OnFailure, RewardsSection, VerifierKind};
use spar_core::sample::{ClaimLabel, Role};
use spar_core::traits::{ClaimVerdict, FactVerifier};
use spar_rewards::fact::{ClaimCache, Hit, MemoryBackend, SqliteBackend, gate_lambda};
use spar_rewards::{Injected, RewardPipeline};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Labels by keyword and counts its calls.
#[derive(Default)]
pub struct CountingVerifier {
    pub calls: AtomicUsize,
}

#[async_trait]
impl FactVerifier for CountingVerifier {
    fn id(&self) -> String {
        "counting/v1".into()
    }
    async fn verify(&self, claim: &str) -> spar_core::Result<ClaimVerdict> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let c = claim.to_lowercase();
        let label = if c.contains("cures") {
            ClaimLabel::Refuted
        } else if c.contains("amoxicillin") || c.contains("pneumonia causes") {
            ClaimLabel::Supported
        } else {
            ClaimLabel::Uncertain
        };
        Ok(ClaimVerdict {
            label,
            evidence: String::new(),
            source: Some("test".into()),
        })
    }
}

fn verdict(label: ClaimLabel) -> ClaimVerdict {
    ClaimVerdict {
        label,
        evidence: String::new(),
        source: None,
    }
}

#[tokio::test]
async fn cache_levels_and_semantic_guards() {
    let cache = ClaimCache::open(Arc::new(MemoryBackend::default()), "v1", "enc", 0.9)
        .await
        .unwrap();
    let e = vec![0.6f32, 0.8];
    cache
        .insert(
            "Give 5 mg of warfarin daily",
            &e,
            &verdict(ClaimLabel::Supported),
        )
        .await;
    assert_eq!(
        cache
            .lookup("give 5 mg of warfarin daily.", &[0.0, 1.0])
            .await
            .map(|x| x.1),
        Some(Hit::Exact)
    );
    assert_eq!(
        cache
            .lookup("Give 5 mg warfarin every day", &[0.6, 0.8])
            .await
            .map(|x| x.1),
        Some(Hit::Semantic)
    );
    assert!(
        cache
            .lookup("Give 50 mg of warfarin daily", &e)
            .await
            .is_none(),
        "numbers must match"
    );
    assert!(
        cache
            .lookup("Do not give 5 mg of warfarin daily", &e)
            .await
            .is_none(),
        "negations must match"
    );
    assert!(
        cache
            .lookup("Give 5 mg warfarin every day", &[1.0, 0.0])
            .await
            .is_none(),
        "below the threshold"
    );
    let s = cache.stats();
    assert_eq!(
        (s.lookups, s.exact_hits, s.semantic_hits, s.misses),
        (5, 1, 1, 3)
    );
    close(s.hit_rate(), 0.4);
}

/// The claim cache stores no raw patient text: keys and claims are redacted before any backend sees them, and a
/// lookup of the raw claim still finds its verdict. The SQLite file and the folders made for it are owner-only.
#[tokio::test]
async fn claim_cache_stores_no_patient_text_and_is_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/c/claims.sqlite");
    let claim = "Margaret Okonkwo (MRN: A-7782341, born 03/14/1962) has type 2 diabetes";
    {
        let b = Arc::new(SqliteBackend::open(&path).unwrap());
        let cache = ClaimCache::open(b, "kb-1", "enc", 0.9).await.unwrap();
        cache
            .insert(claim, &[1.0, 0.0], &verdict(ClaimLabel::Supported))
            .await;
        let (v, hit) = cache.lookup(claim, &[0.0, 1.0]).await.unwrap();
        assert_eq!((v.label, hit), (ClaimLabel::Supported, Hit::Exact));
    }
    let mut bytes = Vec::new();
    for f in std::fs::read_dir(path.parent().unwrap()).unwrap() {
        bytes.extend(std::fs::read(f.unwrap().path()).unwrap());
    }
    for ident in ["Okonkwo", "Margaret", "7782341", "03/14/1962"] {
        assert!(
            !bytes.windows(ident.len()).any(|w| w == ident.as_bytes()),
            "{ident} stored in the claim cache"
        );
    }
    assert!(
        bytes.windows(6).any(|w| w == b"[NAME]"),
        "the redacted claim is stored"
    );
    let mem = Arc::new(MemoryBackend::default());
    let cache = ClaimCache::open(mem.clone(), "kb-1", "enc", 0.9)
        .await
        .unwrap();
    cache
        .insert(claim, &[1.0, 0.0], &verdict(ClaimLabel::Supported))
        .await;
    let stored = spar_rewards::fact::CacheBackend::load_all(mem.as_ref(), cache.namespace())
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(
        !stored[0].0.contains("okonkwo") && !stored[0].1.claim.contains("Okonkwo"),
        "{stored:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("new")), 0o700);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // An existing world-readable cache is tightened when opened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(SqliteBackend::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
    }
}

#[tokio::test]
async fn sqlite_cache_persists_and_keys_on_verifier_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c/claims.sqlite");
    {
        let b = Arc::new(SqliteBackend::open(&path).unwrap());
        let cache = ClaimCache::open(b, "judge-A|tmpl-1|kb-1", "enc", 0.9)
            .await
            .unwrap();
        cache
            .insert(
                "Metformin lowers blood glucose",
                &[1.0, 0.0],
                &verdict(ClaimLabel::Supported),
            )
            .await;
    }
    let b = Arc::new(SqliteBackend::open(&path).unwrap());
    let cache = ClaimCache::open(b.clone(), "judge-A|tmpl-1|kb-1", "enc", 0.9)
        .await
        .unwrap();
    let (v, hit) = cache
        .lookup("metformin lowers blood glucose", &[0.0, 1.0])
        .await
        .unwrap();
    assert_eq!((v.label, hit), (ClaimLabel::Supported, Hit::Exact));
    assert_eq!(
        cache
            .lookup("Metformin lowers blood glucose levels", &[1.0, 0.0])
            .await
            .map(|x| x.1),
        Some(Hit::Semantic),
        "the semantic index is rebuilt from disk"
    );
    let other_kb = ClaimCache::open(b.clone(), "judge-A|tmpl-1|kb-2", "enc", 0.9)
        .await
        .unwrap();
    assert!(
        other_kb
            .lookup("Metformin lowers blood glucose", &[1.0, 0.0])
            .await
            .is_none(),
        "a new KB version invalidates verdicts"
    );
    let other_enc = ClaimCache::open(b, "judge-A|tmpl-1|kb-1", "enc2", 0.9)
        .await
        .unwrap();
    assert!(
        other_enc
            .lookup("Metformin lowers blood sugar", &[1.0, 0.0])
            .await
            .is_none(),
        "embeddings of another encoder are not compared"
    );
}

fn fact_cfg(mode: FactMode) -> RewardsSection {
    let mut c = RewardsSection::default();
    c.fact.mode = mode;
    c.fact.cache = ClaimCacheKind::Memory;
    c
}

const REPLY: &str = "<diagnosis>Pneumonia (J18.9)</diagnosis> Amoxicillin is a first-line treatment for pneumonia. \
                     Amoxicillin is a first-line treatment for pneumonia in adults. Garlic cures pneumonia. \
                     Pneumonia causes fever.";

fn group() -> Vec<spar_core::Sample> {
    let mk = |i, reply: &str| {
        sample(
            "f",
            i,
            &[Stage::Diag],
            &[(Role::User, "Final diagnosis?"), (Role::Assistant, reply)],
            0,
        )
    };
    vec![
        mk(0, REPLY),
        mk(
            1,
            "<think>Garlic cures pneumonia.</think><diagnosis>Pneumonia</diagnosis>",
        ),
    ]
}

#[tokio::test]
async fn gate_mode_denoises_weighs_and_gates() {
    let v = Arc::new(CountingVerifier::default());
    let inj = Injected {
        verifier: Some(v.clone()),
        ..Default::default()
    };
    let p = RewardPipeline::new(&fact_cfg(FactMode::Gate), inj)
        .await
        .unwrap();
    let out = p.score_group(&case(), &group()).await;
    let s = &out[0];
    let texts: Vec<&str> = s.claims.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "Amoxicillin is a first-line treatment for pneumonia",
            "Amoxicillin is a first-line treatment for pneumonia in adults",
            "Garlic cures pneumonia",
            "Pneumonia causes fever",
            // The coded item of the diagnosis block is a claim of its own.
            "J18.9 is the ICD-10 code for Pneumonia"
        ]
    );
    // Near-duplicates are one cluster: only the representative is verified and weighed.
    assert_eq!(v.calls.load(Ordering::SeqCst), 4);
    assert_eq!(s.claims[1].saliency, 0.0);
    assert_eq!(s.claims[1].label, ClaimLabel::Supported);
    assert_eq!(s.claims[2].label, ClaimLabel::Refuted);
    // Every prose claim is a sentence of the reply: saliency 1 for each representative (Eq. 11). The block's
    // claim (Uncertain here, so flawed) is no sentence of the prose and weighs less. Eq. 12:
    // -(1 + w) / (3 + w): the flawed "Garlic cures pneumonia" and the block claim over all representatives.
    for i in [0, 2, 3] {
        assert!(
            (s.claims[i].saliency - 1.0).abs() < 1e-6,
            "{:?}",
            s.claims[i]
        );
    }
    let w = s.claims[4].saliency;
    assert!(w > 0.0 && w < 1.0, "{:?}", s.claims[4]);
    assert_eq!(s.claims[4].label, ClaimLabel::Uncertain);
    let r_fact = -(1.0 + w) / (3.0 + w + 1e-8);
    assert!((s.r_fact - r_fact).abs() < 1e-6);
    // G_k = 1 is above the gate zone: lambda = sigmoid(10 * 0.15 / 0.2) = sigmoid(7.5).
    close(s.lambda, gate_lambda(1.0, 10.0, 0.75, 0.95));
    close(s.lambda, 1.0 / (1.0 + (-7.5f64).exp()));
    close(s.reward, 1.0 + s.lambda * s.r_fact);
    close(s.components["fact_term"], s.lambda * s.r_fact);
    // Thinking is not fact-checked: sample 1 has no claims.
    assert!(out[1].claims.is_empty());
    close(out[1].r_fact, 0.0);
    // Scoring again hits the cache for every claim.
    let before = v.calls.load(Ordering::SeqCst);
    let again = p.score_group(&case(), &group()).await;
    assert_eq!(v.calls.load(Ordering::SeqCst), before);
    assert_eq!(again[0].claims, s.claims);
    let st = p.cache_stats();
    assert_eq!((st.lookups, st.exact_hits), (8, 4));
    close(again[0].components["claims_cached"], 4.0);
}

#[tokio::test]
async fn naive_mode_counts_every_claim() {
    let inj = Injected {
        verifier: Some(Arc::new(CountingVerifier::default())),
        ..Default::default()
    };
    let p = RewardPipeline::new(&fact_cfg(FactMode::Naive), inj)
        .await
        .unwrap();
    let out = p.score_group(&case(), &group()).await;
    // Eq. 9: 2 flawed (the refuted garlic claim, the uncertain block item) of 5 claims, alpha 0.5:
    // R = 1 - 0.5 * 2/5.
    close(out[0].r_fact, -0.4);
    close(out[0].lambda, 0.5);
    close(out[0].reward, 1.0 - 0.2);
}

#[tokio::test]
async fn verifier_failures_are_counted_not_scored() {
    struct Failing;
    #[async_trait]
    impl FactVerifier for Failing {
        fn id(&self) -> String {
            "failing".into()
        }
        async fn verify(&self, _: &str) -> spar_core::Result<ClaimVerdict> {
            Err(spar_core::Error::external("verifier", "HTTP 503", true))
        }
    }
    let mut c = fact_cfg(FactMode::Gate);
    c.judge.on_failure = OnFailure::Unmet;
    let p = RewardPipeline::new(
        &c,
        Injected {
            verifier: Some(Arc::new(Failing)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let out = p.score_group(&case(), &group()).await;
    assert!(out[0].drop_reason.is_none());
    close(out[0].r_fact, 0.0);
    close(out[0].components["fact_failures"], 4.0);
    assert!(out[0].claims.iter().all(|c| {
        c.source
            .as_deref()
            .is_some_and(|s| s.starts_with("verification failed"))
    }));
    c.judge.on_failure = OnFailure::FailSample;
    let p = RewardPipeline::new(
        &c,
        Injected {
            verifier: Some(Arc::new(Failing)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let out = p.score_group(&case(), &group()).await;
    assert!(
        out[0]
            .drop_reason
            .as_deref()
            .is_some_and(|d| d.starts_with("fact_check_failed"))
    );
    assert_eq!(p.metrics().fact_failures, 4);
}

#[tokio::test]
async fn kb_verifier_through_the_pipeline() {
    let kb = spar_rewards::kb::KbVerifier::new(Arc::new(
        spar_data::kb::KnowledgeBase::load_default().unwrap(),
    ));
    assert!(kb.id().contains("|kb-"), "{}", kb.id());
    let reply = "<diagnosis>Pneumonia (J18.9)</diagnosis> The maximum daily dose of paracetamol is 4 g. \
                 Adults can take 10 g of paracetamol per day. J18.9 is pneumonia, unspecified organism.";
    let mut cfg = fact_cfg(FactMode::Gate);
    cfg.fact.verifier = VerifierKind::Kb;
    let p = RewardPipeline::new(&cfg, Injected::default())
        .await
        .unwrap();
    let g = vec![
        sample(
            "k",
            0,
            &[Stage::Diag],
            &[(Role::User, "Final diagnosis?"), (Role::Assistant, reply)],
            0,
        ),
        sample(
            "k",
            1,
            &[Stage::Diag],
            &[
                (Role::User, "Final diagnosis?"),
                (Role::Assistant, "<diagnosis>Pneumonia (J18.9)</diagnosis>"),
            ],
            0,
        ),
    ];
    let out = p.score_group(&case(), &g).await;
    let labels: Vec<(String, ClaimLabel)> = out[0]
        .claims
        .iter()
        .map(|c| (c.text.clone(), c.label))
        .collect();
    eprintln!("{labels:?}");
    assert_eq!(
        labels.iter().map(|l| l.1).collect::<Vec<_>>(),
        // The three prose claims, then the diagnosis block's "J18.9 is the ICD-10 code for Pneumonia".
        vec![
            ClaimLabel::Supported,
            ClaimLabel::Refuted,
            ClaimLabel::Supported,
            ClaimLabel::Supported
        ]
    );
    assert!(out[0].claims.iter().all(|c| c.source.is_some()));
    assert!(out[0].r_fact < 0.0 && out[0].reward < 1.0);
}
