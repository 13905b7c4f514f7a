//! Metrics JSONL, TensorBoard event framing, plots.
use spar_trainer::metrics::{CutBack, MetricsLogger, read_series};
use spar_trainer::tfevent::crc32c;

fn masked(c: u32) -> u32 {
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[test]
fn jsonl_tensorboard_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = MetricsLogger::open(dir.path(), None).unwrap();
    for s in 0..5 {
        m.log(
            s,
            &[
                ("train/loss".into(), 1.0 / (s as f64 + 1.0)),
                ("eval/reward".into(), s as f64 * 0.1),
            ],
        )
        .unwrap();
    }
    drop(m);
    let series = read_series(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(series["train/loss"].len(), 5);
    // Every TFRecord frame's two checksums verify, and the scalar tags are in the payloads.
    let tb = std::fs::read_dir(dir.path().join("tb"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&tb).unwrap();
    let (mut off, mut records, mut saw_tag) = (0, 0, false);
    while off < bytes.len() {
        let len = u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap()) as usize;
        assert_eq!(
            u32::from_le_bytes(bytes[off + 8..off + 12].try_into().unwrap()),
            masked(crc32c(&bytes[off..off + 8]))
        );
        let data = &bytes[off + 12..off + 12 + len];
        assert_eq!(
            u32::from_le_bytes(bytes[off + 12 + len..off + 16 + len].try_into().unwrap()),
            masked(crc32c(data))
        );
        saw_tag |= data.windows(10).any(|w| w == b"train/loss");
        off += 16 + len;
        records += 1;
    }
    assert_eq!(records, 6, "file_version event + 5 scalar events");
    assert!(saw_tag);
    // Resuming at step 2 drops later lines, and later TensorBoard events (cut in place; the resumed run writes a
    // new event file), so the steps a killed run logged after its checkpoint are not shown twice.
    let mut resumed = MetricsLogger::open(
        dir.path(),
        Some(CutBack {
            step: 2,
            at_step: None,
        }),
    )
    .unwrap();
    assert_eq!(
        read_series(&dir.path().join("metrics.jsonl")).unwrap()["train/loss"].len(),
        3
    );
    resumed.log(3, &[("train/loss".into(), 0.5)]).unwrap();
    drop(resumed);
    let mut steps = Vec::new();
    for e in std::fs::read_dir(dir.path().join("tb")).unwrap() {
        steps.extend(spar_trainer::tfevent::read_steps(&e.unwrap().path()).unwrap());
    }
    steps.retain(|&s| s > 0);
    steps.sort();
    assert_eq!(
        steps,
        vec![1, 2, 3],
        "each step once in TensorBoard after the resume"
    );
    let files = spar_trainer::plot::plot_run(dir.path(), &[]).unwrap();
    // Two metrics (PNG + SVG each) and the dashboard, whose held-out panel has eval/reward.
    assert_eq!(files.len(), 6);
    assert!(files.iter().any(|f| f.ends_with("plots/dashboard.png")));
    assert!(files.iter().any(|f| f.ends_with("plots/dashboard.svg")));
    // A chosen subset draws no dashboard.
    let only = spar_trainer::plot::plot_run(dir.path(), &["train/".into()]).unwrap();
    assert_eq!(only.len(), 2);
    for f in files {
        // SPAR_KEEP_PLOTS=DIR keeps the drawings for a human to look at.
        if let Ok(keep) = std::env::var("SPAR_KEEP_PLOTS") {
            std::fs::create_dir_all(&keep).unwrap();
            std::fs::copy(&f, std::path::Path::new(&keep).join(f.file_name().unwrap())).unwrap();
        }
        assert!(
            std::fs::metadata(&f).unwrap().len() > 500,
            "{}",
            f.display()
        );
    }
}

#[test]
fn a_run_without_metrics_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("metrics.jsonl");
    let e = read_series(&p).unwrap_err().to_string();
    assert_eq!(e, format!("not found: {}", p.display()));
}

/// Two logs at one step (the last SFT step's losses, then the evaluation before RL) with a checkpoint between
/// them: a resume from that checkpoint keeps the first log only, in `metrics.jsonl` and in TensorBoard, so the
/// evaluation the resumed run logs again is there once.
#[test]
fn a_resume_keeps_only_the_logs_its_checkpoint_had_seen_at_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = MetricsLogger::open(dir.path(), None).unwrap();
    m.log(1, &[("sft/loss".into(), 2.0)]).unwrap();
    m.log(2, &[("sft/loss".into(), 1.0)]).unwrap();
    assert_eq!(m.logged_at(2), 1);
    // The checkpoint is taken here (it records 1 log at step 2), then the evaluation is logged and the run killed.
    m.log(2, &[("eval/reward".into(), 0.5)]).unwrap();
    m.log(3, &[("rl/loss".into(), 0.1)]).unwrap();
    assert_eq!((m.logged_at(2), m.logged_at(3)), (0, 1));
    drop(m);
    let mut resumed = MetricsLogger::open(
        dir.path(),
        Some(CutBack {
            step: 2,
            at_step: Some(1),
        }),
    )
    .unwrap();
    assert_eq!(resumed.logged_at(2), 1);
    resumed.log(2, &[("eval/reward".into(), 0.5)]).unwrap();
    drop(resumed);
    let series = read_series(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(series["sft/loss"].len(), 2);
    assert_eq!(series["eval/reward"].len(), 1, "{series:?}");
    assert!(!series.contains_key("rl/loss"));
    let mut steps = Vec::new();
    for e in std::fs::read_dir(dir.path().join("tb")).unwrap() {
        steps.extend(spar_trainer::tfevent::read_steps(&e.unwrap().path()).unwrap());
    }
    steps.retain(|&s| s > 0);
    steps.sort();
    assert_eq!(
        steps,
        vec![1, 2, 2],
        "sft step 1, sft step 2, the evaluation once"
    );
}
