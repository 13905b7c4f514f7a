//! Self-consistency of the forward without an oracle: padding, packing, KV cache, routing replay,
//! activation checkpointing.

use crate::common::{max_abs_diff, rel_diff};
use spar_model::{ForwardInput, KvCache, Qwen3Config, Qwen3Model, token_logprobs};
use tch::{Device, Kind, Tensor};

fn cfg(moe: bool) -> Qwen3Config {
    let s = if moe {
        r#"{"model_type":"qwen3_moe","vocab_size":64,"hidden_size":32,"intermediate_size":48,"num_hidden_layers":3,
            "num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,"num_experts":6,"num_experts_per_tok":2,
            "moe_intermediate_size":16,"norm_topk_prob":true,"decoder_sparse_step":1,"mlp_only_layers":[1]}"#
    } else {
        r#"{"model_type":"qwen3","vocab_size":64,"hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":1,"head_dim":8,"tie_word_embeddings":true}"#
    };
    Qwen3Config::from_json_str(s, "test").unwrap()
}

fn model(moe: bool) -> Qwen3Model {
    let m = Qwen3Model::random(cfg(moe), Device::Cpu, Kind::Float, 7).unwrap();
    // Bigger weights than the 0.02 default so differences are visible.
    tch::no_grad(|| {
        for (_, mut v) in m.vs.variables() {
            let _ = v.f_mul_scalar_(4.0).unwrap();
        }
    });
    m
}

fn ids(v: &[i64]) -> Tensor {
    Tensor::from_slice(v).view([1, -1])
}

fn logits(m: &Qwen3Model, x: &Tensor) -> Tensor {
    tch::no_grad(|| m.forward(ForwardInput::new(x)).unwrap().logits)
}

#[test]
fn left_and_right_padding_equal_separate_forwards() {
    for moe in [false, true] {
        let m = model(moe);
        let a = [3i64, 9, 20, 41, 5, 6];
        let b = [7i64, 1, 33];
        let la = logits(&m, &ids(&a));
        let lb = logits(&m, &ids(&b));
        // right padding
        let x = Tensor::from_slice(&[3i64, 9, 20, 41, 5, 6, 7, 1, 33, 0, 0, 0]).view([2, 6]);
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]).view([2, 6]);
        let out = tch::no_grad(|| m.forward(ForwardInput::new(&x).mask(&mask)).unwrap());
        assert!(max_abs_diff(&out.logits.get(0), &la.get(0)) <= 1e-4);
        assert!(
            max_abs_diff(&out.logits.get(1).narrow(0, 0, 3), &lb.get(0)) <= 1e-4,
            "right padding (moe {moe})"
        );
        // left padding
        let x = Tensor::from_slice(&[3i64, 9, 20, 41, 5, 6, 0, 0, 0, 7, 1, 33]).view([2, 6]);
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1]).view([2, 6]);
        let out = tch::no_grad(|| m.forward(ForwardInput::new(&x).mask(&mask)).unwrap());
        assert!(
            out.logits.isfinite().all().int64_value(&[]) == 1,
            "padding rows must stay finite"
        );
        assert!(
            max_abs_diff(&out.logits.get(1).narrow(0, 3, 3), &lb.get(0)) <= 1e-4,
            "left padding (moe {moe})"
        );
    }
}

#[test]
fn packed_sequences_equal_separate_forwards() {
    for moe in [false, true] {
        let m = model(moe);
        let seqs: [&[i64]; 3] = [&[3, 9, 20, 41], &[7, 1], &[5, 5, 6]];
        let packed: Vec<i64> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let sid: Vec<i64> = seqs
            .iter()
            .enumerate()
            .flat_map(|(i, s)| std::iter::repeat_n(i as i64, s.len()))
            .collect();
        let (x, s) = (ids(&packed), ids(&sid));
        let out = tch::no_grad(|| m.forward(ForwardInput::new(&x).seq_ids(&s)).unwrap());
        let mut off = 0;
        for seq in seqs {
            let l = logits(&m, &ids(seq));
            let d = max_abs_diff(
                &out.logits.get(0).narrow(0, off, seq.len() as i64),
                &l.get(0),
            );
            assert!(
                d <= 1e-4,
                "packed sequence at {off} differs by {d} (moe {moe})"
            );
            off += seq.len() as i64;
        }
    }
}

#[test]
fn kv_cache_decode_matches_full_forward() {
    for moe in [false, true] {
        let m = model(moe);
        let seq = [4i64, 8, 15, 16, 23, 42, 7, 9, 11, 3];
        let full = logits(&m, &ids(&seq));
        let mut cache = KvCache::new(&m.config, 3, 32, Device::Cpu, Kind::Float);
        cache.select_slots(&[2]).unwrap();
        let _g = tch::no_grad_guard();
        let pre = m
            .forward(ForwardInput::new(&ids(&seq[..4])).cache(&mut cache))
            .unwrap();
        assert!(max_abs_diff(&pre.logits.get(0), &full.get(0).narrow(0, 0, 4)) <= 1e-4);
        for (i, t) in seq.iter().enumerate().skip(4) {
            let o = m
                .forward(ForwardInput::new(&ids(&[*t])).cache(&mut cache))
                .unwrap();
            let d = max_abs_diff(&o.logits.get(0).get(0), &full.get(0).get(i as i64));
            assert!(d <= 1e-4, "decode step {i}: {d} (moe {moe})");
        }
        assert_eq!(cache.len(2), seq.len());
        assert_eq!(cache.len(0), 0);
    }
}

#[test]
fn batched_cache_with_ragged_prefill_and_prefix_copy() {
    let m = model(true);
    let a = [4i64, 8, 15, 16, 23];
    let b = [42i64, 7];
    let fa = logits(&m, &ids(&[4, 8, 15, 16, 23, 30, 31]));
    let fb = logits(&m, &ids(&[42, 7, 30, 31]));
    let _g = tch::no_grad_guard();
    let mut cache = KvCache::new(&m.config, 4, 16, Device::Cpu, Kind::Float);
    cache.select_slots(&[1, 3]).unwrap();
    let x = Tensor::from_slice(&[4i64, 8, 15, 16, 23, 42, 7, 0, 0, 0]).view([2, 5]);
    let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 0, 0, 0]).view([2, 5]);
    m.forward(ForwardInput::new(&x).mask(&mask).cache(&mut cache))
        .unwrap();
    assert_eq!((cache.len(1), cache.len(3)), (a.len(), b.len()));
    // GRPO-style prefix reuse: slot 0 starts from slot 3's prompt.
    cache.copy_prefix(3, 0, 2).unwrap();
    cache.select_slots(&[1, 3, 0]).unwrap();
    for (step, tok) in [30i64, 31].iter().enumerate() {
        let x = Tensor::from_slice(&[*tok, *tok, *tok]).view([3, 1]);
        let o = m.forward(ForwardInput::new(&x).cache(&mut cache)).unwrap();
        let da = max_abs_diff(&o.logits.get(0).get(0), &fa.get(0).get(5 + step as i64));
        let db = max_abs_diff(&o.logits.get(1).get(0), &fb.get(0).get(2 + step as i64));
        let dc = max_abs_diff(&o.logits.get(2).get(0), &fb.get(0).get(2 + step as i64));
        assert!(
            da <= 1e-4 && db <= 1e-4 && dc <= 1e-4,
            "step {step}: {da} {db} {dc}"
        );
    }
}

#[test]
fn forced_experts_replay_routing() {
    let m = model(true);
    let x = ids(&[3, 9, 20, 41, 5, 6, 7]);
    let _g = tch::no_grad_guard();
    let out = m.forward(ForwardInput::new(&x)).unwrap();
    let routed = out.routed_experts.as_ref().unwrap();
    assert_eq!(routed.size(), [1, 7, 2, 2]);
    assert_eq!(out.router_logits.len(), 2);
    let replay = m
        .forward(ForwardInput::new(&x).forced_experts(routed))
        .unwrap();
    assert_eq!(max_abs_diff(&replay.logits, &out.logits), 0.0);
    assert!(replay.routed_experts.as_ref().unwrap().equal(routed));
    // Different experts change the output: the forced choice is really used.
    let other = (routed + 1).remainder(6);
    let moved = m
        .forward(ForwardInput::new(&x).forced_experts(&other))
        .unwrap();
    assert!(max_abs_diff(&moved.logits, &out.logits) > 1e-3);
    let bad = routed + 100;
    assert!(
        m.forward(ForwardInput::new(&x).forced_experts(&bad))
            .is_err()
    );
}

/// Records the units a backward reports, and whether each parameter's gradient was already there.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<(String, bool)>>);

impl spar_model::GradsReady for Recorder {
    fn ready(&self, unit: spar_model::Unit, params: &[Tensor]) -> anyhow::Result<()> {
        let all = params.iter().all(|p| p.grad().defined());
        self.0.lock().unwrap().push((unit.name(), all));
        Ok(())
    }
}

/// Plain backward, activation-checkpointed backward and the staged backward of a model with a gradient hook
/// give the same gradients; the hook hears every unit once, last layer first and the root last, each with its
/// gradients in place.
#[test]
fn checkpointed_and_staged_backward_give_the_same_gradients() {
    for moe in [false, true] {
        let mut grads = Vec::new();
        // Random init draws from torch's global RNG, which other tests in this binary use concurrently: every
        // variant copies one model's weights instead of trusting seeded draws to agree.
        let base = model(moe);
        for variant in ["plain", "checkpointed", "staged", "checkpointed+hook"] {
            let mut m = model(moe);
            tch::no_grad(|| {
                let src = base.vs.variables();
                for (name, mut v) in m.vs.variables() {
                    v.copy_(&src[&name]);
                }
            });
            m.set_activation_checkpointing(variant.starts_with("checkpointed"));
            let hook = std::sync::Arc::new(Recorder::default());
            if variant.contains("staged") || variant.contains("hook") {
                m.set_grads_ready(Some(hook.clone()));
            }
            let x = Tensor::from_slice(&[3i64, 9, 20, 41, 5, 6, 7, 1]).view([2, 4]);
            let y = Tensor::from_slice(&[9i64, 20, 41, 5, 6, 7, 1, 2]).view([2, 4]);
            let out = m.forward(ForwardInput::new(&x)).unwrap();
            assert_eq!(out.is_checkpointed(), variant != "plain", "{variant}");
            let mut loss = -token_logprobs(&out.logits, &y).mean(Kind::Float);
            if moe {
                loss += spar_model::aux_load_balancing_loss(&out.router_logits, 6, 2) * 0.5;
            }
            m.backward(&loss, &out).unwrap();
            let heard = hook.0.lock().unwrap().clone();
            if variant == "plain" || variant == "checkpointed" {
                assert!(heard.is_empty());
            } else {
                let layers = m.config.num_hidden_layers;
                let mut want: Vec<String> =
                    (0..layers).rev().map(|l| format!("layers.{l}")).collect();
                want.push("root".into());
                let names: Vec<String> = heard.iter().map(|(n, _)| n.clone()).collect();
                assert_eq!(names, want, "{variant}");
                assert!(heard.iter().all(|(_, g)| *g), "{variant}: {heard:?}");
            }
            let mut v: Vec<(String, Tensor)> =
                m.vs.variables()
                    .into_iter()
                    .map(|(n, t)| (n, t.grad()))
                    .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            grads.push((variant, v));
        }
        let (_, reference) = &grads[0];
        for (variant, g) in &grads[1..] {
            for ((n, a), (_, b)) in reference.iter().zip(g) {
                assert!(a.defined() && b.defined(), "{n}: missing gradient");
                let r = rel_diff(b, a);
                assert!(
                    r <= 1e-4,
                    "{n}: {variant} gradient differs (rel {r}, moe {moe})"
                );
            }
        }
    }
}

/// MoE config only: the dense tiny config with x4 weights drifts by 0.3-0.4 relative in bf16, and so does
/// transformers on the same weights (0.31; spar's bf16 logits are bit-identical to transformers' given the
/// same bf16 weights: `DEVICE=cpu scripts/gpu-parity.sh`), a property of the tiny random model, not a spar bug.
#[test]
fn bf16_forward_is_close_to_fp32() {
    let m32 = model(true);
    let mut m16 = model(true);
    // Random init draws from torch's global RNG, which other tests in this binary use concurrently: copy the
    // weights instead of trusting two seeded draws to agree.
    tch::no_grad(|| {
        let src = m32.vs.variables();
        for (name, mut v) in m16.vs.variables() {
            v.copy_(&src[&name]);
        }
    });
    m16.vs.bfloat16();
    let m16 = Qwen3Model::from_var_store(m16.config.clone(), m16.vs, Kind::BFloat16).unwrap();
    let x = ids(&[3, 9, 20, 41, 5, 6, 7]);
    let a = logits(&m32, &x);
    let b = logits(&m16, &x);
    assert_eq!(b.kind(), Kind::BFloat16);
    let r = rel_diff(&b, &a);
    assert!(r < 0.1, "bf16 logits far from fp32: rel {r}");
}

/// The expert-parallel MoE block over a group of one (every exchange the identity) computes what the whole
/// block computes, values and gradients: the dispatch's sorting, counting and re-sorting lose nothing. The
/// multi-rank exchanges are checked on real processes (trainer `data_parallel` tests).
#[test]
fn expert_parallel_block_on_one_rank_equals_the_whole_block() {
    struct One;
    impl spar_model::ExpertExchange for One {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            1
        }
        fn exchange_counts(&self, counts: &Tensor) -> anyhow::Result<Tensor> {
            Ok(counts.copy())
        }
        fn exchange_rows(&self, x: &Tensor, o: &[i64], i: &[i64]) -> anyhow::Result<Tensor> {
            assert_eq!((o, i), (&[x.size()[0]][..], &[x.size()[0]][..]));
            Ok(x.shallow_clone())
        }
    }
    let m = model(true);
    let layer = 0;
    let w = spar_model::moe::MoeWeights {
        router: m.vs.variables()[&format!("model.layers.{layer}.mlp.gate.weight")].shallow_clone(),
        gate_up: m.vs.variables()[&format!("model.layers.{layer}.mlp.experts.gate_up_proj")]
            .shallow_clone(),
        down: m.vs.variables()[&format!("model.layers.{layer}.mlp.experts.down_proj")]
            .shallow_clone(),
    };
    let x = Tensor::randn([9, 32], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut outs = Vec::new();
    for ep in [false, true] {
        for t in [&x, &w.gate_up] {
            let _ = t.grad().f_zero_();
        }
        let o = if ep {
            spar_model::expert_parallel::moe_forward_expert_parallel(
                &w, &x, 2, true, None, true, &One,
            )
        } else {
            spar_model::moe::moe_forward(&w, &x, 2, true, None)
        }
        .unwrap();
        (&o.hidden * &o.hidden).sum(Kind::Float).backward();
        outs.push((o.hidden.detach(), x.grad().copy(), w.gate_up.grad().copy()));
    }
    let (a, b) = (&outs[0], &outs[1]);
    assert!(max_abs_diff(&a.0, &b.0) < 1e-6);
    assert!(max_abs_diff(&a.1, &b.1) < 1e-5);
    assert!(max_abs_diff(&a.2, &b.2) < 1e-5);
}
