//! A run stopped at step k and resumed from its checkpoint gives exactly the losses and weights of the
//! uninterrupted run (CPU).
use super::common::{TinyLm, sample_with_steps, scored_for};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use spar_trainer::adamw::{AdamW, AdamWConfig};
use spar_trainer::agg::AggMode;
use spar_trainer::batch::{TrainItem, assemble};
use spar_trainer::checkpoint::{self, TrainerState};
use spar_trainer::learner::{BatchingConfig, Learner, rl_update};
use spar_trainer::policy::Policy;
use spar_trainer::policy_loss::*;
use spar_trainer::rng::{new_rng, restore_rng, save_rng};
use spar_trainer::schedule::LrSchedule;
use tch::{Device, Kind};

fn pool() -> Vec<TrainItem> {
    let samples: Vec<_> = (0..8)
        .map(|i| sample_with_steps("g", i, 17, 2, 3, 2, i as u64 + 100))
        .collect();
    let scored: Vec<_> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| scored_for(s, &[0.3 * i as f64 - 1.0, 1.0 - 0.2 * i as f64]))
        .collect();
    assemble(&samples, &scored, "pool").unwrap().0
}

fn learner(model: &TinyLm) -> Learner {
    Learner {
        adamw: AdamW::new(
            &model.vs,
            AdamWConfig {
                weight_decay: 0.01,
                ..Default::default()
            },
        ),
        schedule: LrSchedule::new(1e-2, 2, 6, spar_trainer::schedule::Decay::Cosine),
        step: 0,
        grad_clip: 1.0,
        max_bad_steps: 3,
        bad_in_a_row: 0,
        bad_total: 0,
        aux_loss_coef: 0.0,
        group: std::sync::Arc::new(spar_dist::Local),
        sharded: None,
        grad_sum: None,
        expert_parallel: false,
        offload_optimizer: false,
        optimizer_parked: false,
        at_rest: spar_trainer::sharded::AtRest::Whole,
        cuda_graphs: None,
    }
}

fn run_steps(
    model: &TinyLm,
    l: &mut Learner,
    rng: &mut ChaCha8Rng,
    items: &[TrainItem],
    n: usize,
) -> Vec<f64> {
    let cfg = PolicyLossConfig {
        dual_clip: 3.0,
        tis_cap: 2.0,
        entropy_coef: 0.001,
        ..PolicyLossConfig::clipped(RatioLevel::Segment, 0.2, 0.28)
    };
    let batching = BatchingConfig {
        micro_batch: 2,
        token_budget: 0,
        pack: false,
        agg: AggMode::SeqMeanTokenMean,
        l_max: 32,
    };
    let mut losses = Vec::new();
    for _ in 0..n {
        let mut idx: Vec<usize> = (0..items.len()).collect();
        idx.shuffle(rng);
        let batch: Vec<TrainItem> = idx[..4].iter().map(|&i| items[i].clone()).collect();
        for r in rl_update(model, None, l, &batch, &cfg, &batching, 2, Device::Cpu).unwrap() {
            losses.push(r.loss);
        }
    }
    losses
}

#[test]
fn killed_and_resumed_run_matches_uninterrupted() {
    let items = pool();
    let seed = 42;
    let full_model = TinyLm::new(17, 8, Kind::Float, 3);
    let mut l = learner(&full_model);
    let mut rng = new_rng(seed);
    let full = run_steps(&full_model, &mut l, &mut rng, &items, 6);

    let dir = tempfile::tempdir().unwrap();
    let ckpt = {
        let model = TinyLm::new(17, 8, Kind::Float, 3);
        let mut l = learner(&model);
        let mut rng = new_rng(seed);
        let first = run_steps(&model, &mut l, &mut rng, &items, 3);
        assert_eq!(first, full[..6].to_vec());
        let st = TrainerState {
            step: l.step,
            phase: "rl".into(),
            phase_step: 3,
            rng: save_rng(seed, &rng),
            ..Default::default()
        };
        checkpoint::save(dir.path(), &model, &l.adamw, &st, 2).unwrap()
        // The "killed" process drops everything here.
    };
    assert_eq!(checkpoint::latest(dir.path()).unwrap().unwrap(), ckpt);
    let mut model = TinyLm::new(17, 8, Kind::Float, 99);
    let mut l = learner(&model);
    let st = checkpoint::load(&ckpt, &mut model, &mut l.adamw).unwrap();
    l.step = st.step;
    let mut rng = restore_rng(&st.rng).unwrap();
    let rest = run_steps(&model, &mut l, &mut rng, &items, 3);
    assert_eq!(rest, full[6..].to_vec(), "losses after resume");
    for (name, w) in full_model.var_store().variables() {
        assert!(
            w.equal(&model.var_store().variables()[&name]),
            "weight {name} differs"
        );
    }
}

#[test]
fn keep_last_prunes_old_checkpoints() {
    let model = TinyLm::new(5, 4, Kind::Float, 1);
    let l = learner(&model);
    let dir = tempfile::tempdir().unwrap();
    for step in 1..=4 {
        let st = TrainerState {
            step,
            ..Default::default()
        };
        checkpoint::save(dir.path(), &model, &l.adamw, &st, 2).unwrap();
    }
    let left: Vec<usize> = checkpoint::list(dir.path())
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(left, vec![3, 4]);
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp"))
    );
}

/// `latest` names a checkpoint that exists even when the folder holds a higher-numbered one (a stale or
/// damaged one): pruning keeps the checkpoint just written.
#[test]
fn pruning_never_takes_the_checkpoint_latest_names() {
    let model = TinyLm::new(5, 4, Kind::Float, 1);
    let l = learner(&model);
    let dir = tempfile::tempdir().unwrap();
    let st = |step| TrainerState {
        step,
        ..Default::default()
    };
    checkpoint::save(dir.path(), &model, &l.adamw, &st(9), 1).unwrap();
    let ckpt = checkpoint::save(dir.path(), &model, &l.adamw, &st(2), 1).unwrap();
    let latest = std::fs::read_to_string(dir.path().join("latest")).unwrap();
    assert_eq!(dir.path().join(latest.trim()), ckpt);
    assert!(ckpt.join("trainer_state.json").exists());
}

/// A damaged newest checkpoint is passed over for the newest intact one, which a resume then continues (the
/// damaged one moved aside); when none is intact the error names each.
#[test]
fn resume_falls_back_from_a_damaged_checkpoint_to_the_newest_intact_one() {
    use spar_trainer::resume_point::{newest_intact, set_aside_newer};
    let model = TinyLm::new(5, 4, Kind::Float, 1);
    let l = learner(&model);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut saved = Vec::new();
    for step in [2, 4] {
        let st = TrainerState {
            step,
            phase: "rl".into(),
            ..Default::default()
        };
        saved.push(checkpoint::save(root, &model, &l.adamw, &st, 3).unwrap());
    }
    assert!(saved[1].join(spar_trainer::checksums::MANIFEST).exists());
    let (found, st) = newest_intact(root).unwrap().unwrap();
    assert_eq!((found, st.step), (saved[1].clone(), 4));

    // One byte of step 4's optimizer state flipped: step 2 is taken.
    let opt = saved[1].join("optimizer.safetensors");
    let mut bytes = std::fs::read(&opt).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&opt, &bytes).unwrap();
    let (found, st) = newest_intact(root).unwrap().unwrap();
    assert_eq!((found.clone(), st.step), (saved[0].clone(), 2));
    set_aside_newer(root, &found).unwrap();
    assert!(!saved[1].exists() && root.join(".damaged-step-00000004").is_dir());
    assert_eq!(
        std::fs::read_to_string(root.join("latest")).unwrap(),
        "step-00000002"
    );

    // Step 2 missing its weights too: no intact checkpoint, an error naming it.
    std::fs::remove_file(saved[0].join("model/model.safetensors")).unwrap();
    let err = newest_intact(root).unwrap_err().to_string();
    assert!(
        err.contains("no intact checkpoint") && err.contains("step-00000002"),
        "{err}"
    );
}
