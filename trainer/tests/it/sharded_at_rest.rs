//! A fully sharded learner that keeps the weights sharded at rest (`AtRest::Sharded`), on one rank: started
//! from a stand-in of an HF folder (its chunks read from the files), it takes exactly the steps of a learner
//! loaded whole, its parameters are one-element stand-ins between updates, its streamed save equals the whole
//! one, and a learner restored from its optimizer shard takes the next step identically. (Several ranks: the
//! e2e test `sharded_at_rest`.)
use spar_model::{Qwen3Config, Qwen3Model};
use spar_trainer::learner::{Learner, sft_update};
use spar_trainer::sharded::{AtRest, save_policy};
use std::path::Path;
use tch::{Device, Kind};

const VOCAB: i64 = 61;

fn config() -> Qwen3Config {
    Qwen3Config::from_json_str(
        &format!(
            r#"{{"model_type":"qwen3_moe","vocab_size":{VOCAB},"hidden_size":16,"intermediate_size":24,
            "moe_intermediate_size":8,"num_hidden_layers":2,"num_attention_heads":2,"num_key_value_heads":1,
            "head_dim":8,"num_experts":4,"num_experts_per_tok":2,"decoder_sparse_step":1,"mlp_only_layers":[1]}}"#
        ),
        "test",
    )
    .unwrap()
}

fn learner(m: &mut Qwen3Model, at_rest: AtRest) -> Learner {
    let mut l = super::common::learner(&m.vs, 1e-2);
    l.at_rest = at_rest;
    l.shard(m).unwrap();
    l
}

/// Every parameter is a zero-stride stand-in (no whole copy held).
fn all_stand_ins(m: &Qwen3Model) -> bool {
    m.vs.variables()
        .values()
        .all(|t| t.stride().iter().all(|&s| s == 0))
}

fn variables(dir: &Path) -> Vec<(String, tch::Tensor)> {
    let m = Qwen3Model::load(dir, Device::Cpu, Kind::Float).unwrap();
    let mut v: Vec<_> = m.vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn sharded_at_rest_steps_as_whole_and_holds_nothing_whole_between_updates() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    Qwen3Model::random(config(), Device::Cpu, Kind::Float, 5)
        .unwrap()
        .save_hf(&hf)
        .unwrap();
    let (items, batching) = super::common::four_items(VOCAB as u32, 60);

    let mut whole = Qwen3Model::load(&hf, Device::Cpu, Kind::Float).unwrap();
    let mut rest = Qwen3Model::stand_in(&hf, Device::Cpu, Kind::Float).unwrap();
    assert!(all_stand_ins(&rest));
    // Stand-ins nothing gathers cannot be run or saved.
    let ids = tch::Tensor::from_slice(&[1i64, 2, 3]).view([1, 3]);
    let err = rest
        .forward(spar_model::ForwardInput::new(&ids))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("stand-ins"), "{err}");
    assert!(rest.save_hf(&dir.path().join("x")).is_err());

    let mut lw = learner(&mut whole, AtRest::Whole);
    let mut lr = learner(&mut rest, AtRest::Sharded);
    assert!(
        all_stand_ins(&rest),
        "the sharder holds the weights, not the model"
    );
    for step in 0..3 {
        let a = sft_update(&whole, &mut lw, &items, &batching, Device::Cpu).unwrap();
        let b = sft_update(&rest, &mut lr, &items, &batching, Device::Cpu).unwrap();
        assert_eq!(a.loss, b.loss, "step {step}");
        assert_eq!(a.grad_norm, b.grad_norm, "step {step}");
        assert!(
            all_stand_ins(&rest),
            "step {step}: whole weights left behind"
        );
        assert!(!all_stand_ins(&whole));
    }
    let (dw, dr) = (dir.path().join("whole"), dir.path().join("rest"));
    save_policy(&whole, &dw, true, lw.sharded.as_deref()).unwrap();
    save_policy(&rest, &dr, true, lr.sharded.as_deref()).unwrap();
    assert!(dr.join("model-00003-of-00003.safetensors").exists());
    assert!(
        all_stand_ins(&rest),
        "the streamed save released every unit"
    );
    for ((n, x), (m, y)) in variables(&dw).iter().zip(&variables(&dr)) {
        assert_eq!(n, m);
        assert!(x.equal(y), "{n}");
    }

    // Resume from this rank's optimizer shard alone: a new stand-in learner takes the next step as the first.
    let ckpt = dir.path().join("ckpt");
    let sh = lr.sharded.clone().unwrap();
    sh.save_shard(&ckpt.join("optimizer"), &lr.adamw).unwrap();
    let mut again = Qwen3Model::stand_in(&hf, Device::Cpu, Kind::Float).unwrap();
    let mut la = learner(&mut again, AtRest::Sharded);
    let restored = la.sharded.clone().unwrap();
    assert!(restored.load_chunks(&mut la.adamw, &ckpt).unwrap());
    la.step = lr.step;
    let a = sft_update(&rest, &mut lr, &items, &batching, Device::Cpu).unwrap();
    let b = sft_update(&again, &mut la, &items, &batching, Device::Cpu).unwrap();
    assert_eq!(a.loss, b.loss);
    assert_eq!(a.grad_norm, b.grad_norm);
    let (d1, d2) = (dir.path().join("next1"), dir.path().join("next2"));
    save_policy(&rest, &d1, true, lr.sharded.as_deref()).unwrap();
    save_policy(&again, &d2, true, la.sharded.as_deref()).unwrap();
    for ((n, x), (_, y)) in variables(&d1).iter().zip(&variables(&d2)) {
        assert!(x.equal(y), "{n} after the resumed step");
    }
}

/// `trainer.optimizer_state = "compact"` is for plain learners: sharding one says so instead of silently keeping
/// fp32 chunks as masters.
#[test]
fn a_sharded_learner_refuses_the_compact_state() {
    let mut m = Qwen3Model::random(config(), Device::Cpu, Kind::BFloat16, 5).unwrap();
    let mut l = super::common::learner(&m.vs, 1e-2);
    l.adamw = spar_trainer::adamw::AdamW::new(
        &m.vs,
        spar_trainer::adamw::AdamWConfig {
            state: spar_trainer::adamw::OptimizerState::Compact,
            ..Default::default()
        },
    );
    let err = l.shard(&mut m).expect_err("refused").to_string();
    assert!(err.contains("optimizer_state"), "{err}");
}
