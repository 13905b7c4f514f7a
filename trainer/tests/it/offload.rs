//! `trainer.offload_optimizer` (GPU only; skips with a printed reason elsewhere): a learner that parks its
//! optimizer state in host memory after every step takes the same steps as one that keeps it on the GPU,
//! plain (bf16 weights, fp32 masters and moments) and fully sharded on one rank (fp32 master chunks with their
//! gradients), and while parked the state is on the CPU. Two model instances on one GPU already differ in the
//! last float bits (kernel choices and reduction order: losses 6e-8 relative apart at step 0 on an H100), so the
//! comparison allows float noise: a lost or reset state would move the weights by a whole step.
use spar_model::{Qwen3Config, Qwen3Model};
use spar_trainer::learner::{Learner, sft_update};
use tch::{Device, Kind};

const VOCAB: i64 = 61;

fn model(device: Device) -> Qwen3Model {
    let c = Qwen3Config::from_json_str(
        &format!(
            r#"{{"model_type":"qwen3","vocab_size":{VOCAB},"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,
            "num_attention_heads":2,"num_key_value_heads":1,"head_dim":8}}"#
        ),
        "test",
    )
    .unwrap();
    Qwen3Model::random(c, device, Kind::BFloat16, 11).unwrap()
}

fn learner(m: &mut Qwen3Model, sharded: bool, offload: bool) -> Learner {
    let mut l = super::common::learner(&m.vs, 1e-2);
    l.offload_optimizer = offload;
    if sharded {
        l.shard(m).unwrap();
    }
    l
}

#[test]
fn a_parked_optimizer_state_steps_as_one_that_stayed_on_the_gpu() {
    if !tch::Cuda::is_available() {
        eprintln!(
            "skipped: no CUDA device (trainer.offload_optimizer parks GPU state in host memory)"
        );
        return;
    }
    let device = Device::Cuda(0);
    let (items, batching) = super::common::four_items(VOCAB as u32, 40);
    for sharded in [false, true] {
        let (mut kept, mut parked) = (model(device), model(device));
        let start = model(device);
        let mut lk = learner(&mut kept, sharded, false);
        let mut lp = learner(&mut parked, sharded, true);
        for step in 0..3 {
            let rk = sft_update(&kept, &mut lk, &items, &batching, device).unwrap();
            let rp = sft_update(&parked, &mut lp, &items, &batching, device).unwrap();
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * a.abs().max(b.abs());
            assert!(
                close(rk.loss, rp.loss),
                "sharded {sharded}, step {step}: loss {} vs {}",
                rk.loss,
                rp.loss
            );
            assert!(
                close(rk.grad_norm, rp.grad_norm),
                "sharded {sharded}, step {step}: grad norm {} vs {}",
                rk.grad_norm,
                rp.grad_norm
            );
            assert_eq!(lk.adamw.device(), Some(device));
            lp.park_optimizer().unwrap();
            assert!(lp.optimizer_parked);
            assert_eq!(lp.adamw.device(), Some(Device::Cpu), "sharded {sharded}");
            lk.park_optimizer().unwrap(); // without the knob: a no-op
            assert_eq!(lk.adamw.device(), Some(device));
        }
        let (a, b, s0) = (
            kept.vs.variables(),
            parked.vs.variables(),
            start.vs.variables(),
        );
        for (name, x) in &a {
            let gap = (x - &b[name]).abs().max().double_value(&[]);
            let moved = (x - &s0[name]).abs().max().double_value(&[]);
            assert!(
                gap <= 0.05 * moved,
                "sharded {sharded}: {name} differs by {gap} after steps of {moved}"
            );
        }
    }
}
