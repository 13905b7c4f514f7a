//! `spar score`'s library half: a trajectories file with bad lines in, one scored record per good sample out.
use super::fixtures::{case, sample};
use spar_core::Stage;
use spar_core::recipe::{FactMode, RewardsSection};
use spar_core::sample::Role;
use spar_rewards::score::{group_samples, read_samples, report, score_groups};
use spar_rewards::{Injected, RewardPipeline};
use std::collections::HashMap;
use std::io::Write;

#[tokio::test]
async fn bad_lines_are_reported_and_every_sample_is_scored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traj.jsonl");
    let mk = |g: &str, i, reply: &str| {
        sample(
            g,
            i,
            &[Stage::Diag],
            &[(Role::User, "Diagnosis?"), (Role::Assistant, reply)],
            0,
        )
    };
    let good = [
        mk("a", 0, "<diagnosis>Pneumonia (J18.9)</diagnosis>"),
        mk("a", 1, "<diagnosis>Asthma (J45.909)</diagnosis>"),
    ];
    let mut orphan = mk("b", 0, "<diagnosis>Pneumonia (J18.9)</diagnosis>");
    orphan.case_id = "nope-0001".into();
    let mut wrong_version = serde_json::to_value(&good[0]).unwrap();
    wrong_version["schema_version"] = 99.into();
    let write = |with_wrong_version: bool| {
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "{}", serde_json::to_string(&good[0]).unwrap()).unwrap();
        writeln!(f, "{{not json").unwrap();
        writeln!(f, "{}", serde_json::to_string(&good[1]).unwrap()).unwrap();
        if with_wrong_version {
            writeln!(f, "{wrong_version}").unwrap();
        }
        writeln!(f, "{}", serde_json::to_string(&orphan).unwrap()).unwrap();
    };
    // A line of another schema version is the file's error (as parquet's is), not a skipped line.
    write(true);
    let e = read_samples(&path).unwrap_err().to_string();
    assert!(
        e.contains("traj.jsonl: line 4: schema_version 99 is not the supported version"),
        "{e}"
    );
    write(false);
    let (samples, bad) = read_samples(&path).unwrap();
    assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![2]);
    assert!(bad[0].error.contains("not JSON"), "{}", bad[0].error);
    let groups = group_samples(samples);
    assert_eq!(groups.len(), 2);
    let mut cfg = RewardsSection::default();
    cfg.fact.mode = FactMode::Off;
    let p = RewardPipeline::new(&cfg, Injected::default())
        .await
        .unwrap();
    let cases: HashMap<_, _> = [(case().id.clone(), case())].into();
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let scored = score_groups(&p, &cases, groups, 4, |n| {
        seen.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    })
    .await;
    assert_eq!(seen.into_inner(), 3);
    assert_eq!(scored.len(), 3);
    assert!(
        scored[2]
            .drop_reason
            .as_deref()
            .unwrap()
            .starts_with("unknown_case")
    );
    assert!(scored[0].steps[0].advantage > 0.0 && scored[1].steps[0].advantage < 0.0);
    let rep = report(&p, &scored, 2, bad);
    assert_eq!((rep.samples, rep.dropped, rep.bad_records.len()), (3, 1, 1));

    // The written file reads back (data's wire IO) and feeds the trainer boundary.
    let out = dir.path().join("scored.jsonl");
    spar_data::wire::write_scored(&out, &scored).unwrap();
    let back = spar_data::wire::read_scored(&out).unwrap();
    assert_eq!(back.len(), scored.len());
    for (b, s) in back.iter().zip(&scored) {
        assert_eq!(
            (
                &b.group_id,
                b.sample_idx,
                &b.drop_reason,
                &b.components.keys().collect::<Vec<_>>()
            ),
            (
                &s.group_id,
                s.sample_idx,
                &s.drop_reason,
                &s.components.keys().collect::<Vec<_>>()
            )
        );
        // JSON text keeps f64 to within an ulp or so.
        assert!((b.steps[0].advantage - s.steps[0].advantage).abs() < 1e-12);
    }
}
