//! CUDA-graph decode steps against eager decode (GPU only; skips with a printed reason elsewhere).

use crate::common::max_abs_diff;
use spar_model::temperature_sampling::sample_at_temperature;
use spar_model::{
    ForwardInput, GraphDecoder, KvCache, NextTokens, Pick, Qwen3Config, Qwen3Model, StepToken,
};
use tch::{Device, Kind, Tensor};

/// The GPU tests' tiny shapes: dense with 4 query heads a KV head, or MoE with a dense layer among sparse ones.
pub(crate) fn cfg(moe: bool) -> Qwen3Config {
    let s = if moe {
        r#"{"model_type":"qwen3_moe","vocab_size":128,"hidden_size":64,"intermediate_size":96,"num_hidden_layers":3,
            "num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,"num_experts":8,"num_experts_per_tok":2,
            "moe_intermediate_size":32,"norm_topk_prob":true,"decoder_sparse_step":1,"mlp_only_layers":[1]}"#
    } else {
        r#"{"model_type":"qwen3","vocab_size":128,"hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,
            "num_attention_heads":8,"num_key_value_heads":2,"head_dim":32,"tie_word_embeddings":true}"#
    };
    Qwen3Config::from_json_str(s, "test").unwrap()
}

fn model(moe: bool, kind: Kind) -> Qwen3Model {
    let m = Qwen3Model::random(cfg(moe), Device::Cuda(0), kind, 11).unwrap();
    // Larger than the 0.02 init so logits spread and greedy choices are not near-ties.
    tch::no_grad(|| {
        for (_, mut v) in m.vs.variables() {
            let _ = v.f_mul_scalar_(4.0).unwrap();
        }
    });
    m
}

fn prefill(m: &Qwen3Model, cache: &mut KvCache, slot: usize, prompt: &[i64]) -> i64 {
    cache.select_slots(&[slot]).unwrap();
    let ids = Tensor::from_slice(prompt)
        .view([1, -1])
        .to_device(m.device());
    let out = m.forward(ForwardInput::new(&ids).cache(cache)).unwrap();
    out.logits.select(1, -1).argmax(-1, false).int64_value(&[0])
}

#[test]
fn graph_decode_matches_eager_decode_on_gpu() {
    if !tch::Cuda::is_available() || !spar_kernels::cuda_graph::available() {
        eprintln!(
            "SKIP: graph decode needs a CUDA device and a build with the CUDA-graph shim (cuda {}, shim {})",
            tch::Cuda::is_available(),
            spar_kernels::cuda_graph::available()
        );
        return;
    }
    let _g = tch::no_grad_guard();
    // (moe, dtype, tolerance on logits relative to their largest magnitude, on chosen-token log-probs). fp32:
    // summation order only. bf16: the attention kernel differs (folded GQA, longer masked key window) and
    // rounding differences grow through the x4 random layers (and can flip a near-tied expert choice).
    for (moe, kind, tol, lp_tol) in [
        (false, Kind::Float, 1e-4, 1e-3),
        (true, Kind::Float, 1e-4, 1e-3),
        (false, Kind::BFloat16, 1e-1, 0.25),
        (true, Kind::BFloat16, 1e-1, 0.25),
    ] {
        let m = model(moe, kind);
        let (slots, max_len) = (8, 160);
        let mut eager = KvCache::new(&m.config, slots, max_len, m.device(), kind);
        let mut graph = KvCache::new(&m.config, slots, max_len, m.device(), kind);
        let mut dec = GraphDecoder::new(&m, &graph, 4).expect("graph decoder on CUDA");
        // Scattered slots (the decoder must move them to rows 0..R) and ragged prompt lengths; a sequence
        // leaves half-way so the batch changes bucket, and lengths cross a key block (128).
        let mut rows: Vec<(usize, i64)> = Vec::new();
        for (slot, len) in [(5usize, 124usize), (2, 9), (7, 3)] {
            let prompt: Vec<i64> = (0..len as i64)
                .map(|i| (i * 37 + slot as i64) % 128)
                .collect();
            let a = prefill(&m, &mut eager, slot, &prompt);
            let b = prefill(&m, &mut graph, slot, &prompt);
            assert_eq!(a, b);
            rows.push((slot, a));
        }
        let mut worst = 0.0f64;
        for step in 0..16 {
            if step == 8 {
                rows.remove(1);
            }
            let slot_list: Vec<usize> = rows.iter().map(|r| r.0).collect();
            eager.select_slots(&slot_list).unwrap();
            let ids = Tensor::from_slice(&rows.iter().map(|r| r.1).collect::<Vec<_>>())
                .view([-1, 1])
                .to_device(m.device());
            let e = m
                .forward(ForwardInput::new(&ids).cache(&mut eager))
                .unwrap();
            let el = e.logits.squeeze_dim(1).to_kind(Kind::Float);
            let feed: Vec<(usize, u32)> = rows.iter().map(|r| (r.0, r.1 as u32)).collect();
            // Every third step asks for the in-graph greedy choices only (what a greedy batch uses), every
            // third from the second for tokens sampled in the graph (a sampled batch without filters).
            let greedy_only = step % 3 == 2;
            let b = feed.len();
            let mut params = vec![0f32; 3 * b];
            for r in 0..b {
                params[r] = if r % 2 == 0 { 0.8 } else { 0.0 };
                params[b + r] = if r == 0 { 0.8 } else { 1.0 };
                params[2 * b + r] = 0.1 + 0.8 * ((step as f32 * 0.37 + r as f32 * 0.23) % 1.0);
            }
            let pick = match step % 3 {
                2 => Pick::Greedy,
                1 => Pick::Sample(Box::new({
                    let p = params.clone();
                    move || p
                })),
                _ => Pick::Logits,
            };
            let g = dec
                .decode(&m, &mut graph, &feed, pick)
                .unwrap()
                .expect("graph path should take this step");
            if step % 3 == 1 {
                let NextTokens::Chosen(picked) = &g.next else {
                    panic!("sampled tokens, not logits, when sampling is asked");
                };
                // The sampler's math on the eager logits: the same tokens (fp32: logits within 1e-4).
                let want = sample_at_temperature(
                    &el,
                    &Tensor::from_slice(&params)
                        .view([3, b as i64])
                        .to_device(m.device()),
                )
                .unwrap();
                let tokens = Vec::<i64>::try_from(want.tokens.to_device(Device::Cpu)).unwrap();
                let lps = Vec::<f32>::try_from(want.logprobs.to_device(Device::Cpu)).unwrap();
                for (r, (tok, lp)) in picked.iter().enumerate() {
                    if kind == Kind::Float {
                        assert_eq!(
                            *tok as i64, tokens[r],
                            "moe {moe} step {step} row {r}: sampled token"
                        );
                    }
                    if *tok as i64 == tokens[r] {
                        assert!(
                            (lp - lps[r]).abs() as f64 <= lp_tol,
                            "moe {moe} {kind:?} step {step} row {r}: sampled logprob {lp} vs {}",
                            lps[r]
                        );
                    }
                }
                // Both caches go on with the eager greedy tokens.
                let next =
                    Vec::<i64>::try_from(el.argmax(-1, false).to_device(Device::Cpu)).unwrap();
                for (r, t) in rows.iter_mut().zip(next) {
                    r.1 = t;
                }
                continue;
            }
            if greedy_only {
                let NextTokens::Chosen(picked) = &g.next else {
                    panic!("greedy choices, not logits, when no logits are asked");
                };
                let le = el.log_softmax(-1, Kind::Float);
                let next = el.argmax(-1, false);
                let want_lp = le.gather(-1, &next.unsqueeze(-1), false).squeeze_dim(-1);
                let want: Vec<i64> = Vec::<i64>::try_from(next.to_device(Device::Cpu)).unwrap();
                let want_lp: Vec<f32> =
                    Vec::<f32>::try_from(want_lp.to_device(Device::Cpu)).unwrap();
                for (r, ((tok, lp), (wt, wlp))) in
                    picked.iter().zip(want.iter().zip(&want_lp)).enumerate()
                {
                    if kind == Kind::Float {
                        assert_eq!(
                            *tok as i64, *wt,
                            "moe {moe} step {step} row {r}: greedy token"
                        );
                    }
                    if *tok as i64 == *wt {
                        assert!(
                            (lp - wlp).abs() as f64 <= lp_tol,
                            "moe {moe} {kind:?} step {step} row {r}: greedy logprob {lp} vs {wlp}"
                        );
                    }
                }
                if moe {
                    // A step that chose its tokens hands its experts back on the host.
                    let ge = g.routed_experts.unwrap();
                    assert_eq!(ge.device(), Device::Cpu);
                    let ee = e.routed_experts.unwrap().to_device(Device::Cpu);
                    if kind == Kind::Float {
                        assert!(ge.equal(&ee), "moe step {step}: graph chose other experts");
                    }
                }
                for (r, t) in rows.iter_mut().zip(want) {
                    r.1 = t;
                }
                continue;
            }
            let NextTokens::Logits(gl) = &g.next else {
                panic!("logits when asked");
            };
            let gl = gl.to_kind(Kind::Float);
            let scale = el.abs().max().double_value(&[]);
            let rel = max_abs_diff(&gl, &el) / scale;
            worst = worst.max(rel);
            assert!(
                rel <= tol,
                "moe {moe} {kind:?} step {step}: graph logits differ from eager by {rel:.2e} (relative)"
            );
            let le = el.log_softmax(-1, Kind::Float);
            let lg = gl.log_softmax(-1, Kind::Float);
            let next = el.argmax(-1, false);
            if kind == Kind::Float {
                assert!(
                    next.equal(&gl.argmax(-1, false)),
                    "moe {moe} step {step}: greedy tokens differ"
                );
            }
            let lp_diff = max_abs_diff(
                &le.gather(-1, &next.unsqueeze(-1), false),
                &lg.gather(-1, &next.unsqueeze(-1), false),
            );
            assert!(
                lp_diff <= lp_tol,
                "moe {moe} {kind:?} step {step}: logprob diff {lp_diff}"
            );
            if moe {
                let (ge, ee) = (g.routed_experts.unwrap(), e.routed_experts.unwrap());
                if kind == Kind::Float {
                    assert!(ge.equal(&ee), "moe step {step}: graph chose other experts");
                }
            }
            let next: Vec<i64> = Vec::<i64>::try_from(next.to_device(Device::Cpu)).unwrap();
            for (r, t) in rows.iter_mut().zip(next) {
                r.1 = t;
            }
            for r in &rows {
                assert_eq!(eager.len(r.0), graph.len(r.0), "lengths diverged");
            }
        }
        eprintln!(
            "moe {moe} {kind:?}: worst relative logits diff {worst:.2e}; stats {:?}",
            dec.stats
        );
        assert_eq!(dec.stats.replays, 16);
        assert!(
            dec.stats.captures >= 3,
            "buckets 4 and 2 and two key windows"
        );
    }
}

/// A step launched before the previous one is read, its tokens taken from that step's choices on the device
/// (`launch_after` with `StepToken::Chosen`), decodes what host-fed steps decode, bit for bit: the same graphs
/// see the same inputs. Rows leave (the bucket shrinks from 4 to 2 rows) and join with a host token (back to 4),
/// greedy and sampled steps alternate (the earlier step's choices come from either output), and MoE experts are
/// copied out with the tokens.
#[test]
fn chained_graph_steps_match_host_fed_steps_on_gpu() {
    if !tch::Cuda::is_available() || !spar_kernels::cuda_graph::available() {
        eprintln!("SKIP: graph decode needs a CUDA device and a build with the CUDA-graph shim");
        return;
    }
    let _g = tch::no_grad_guard();
    for (moe, kind) in [(false, Kind::Float), (true, Kind::BFloat16)] {
        let m = model(moe, kind);
        let (slots, max_len) = (8, 160);
        let mut host_cache = KvCache::new(&m.config, slots, max_len, m.device(), kind);
        let mut chained_cache = KvCache::new(&m.config, slots, max_len, m.device(), kind);
        let mut host_dec = GraphDecoder::new(&m, &host_cache, 4).expect("graph decoder on CUDA");
        let mut chained_dec =
            GraphDecoder::new(&m, &chained_cache, 4).expect("graph decoder on CUDA");
        let mut first = Vec::new();
        for (slot, len) in [(5usize, 40usize), (2, 9), (7, 3), (0, 17)] {
            let prompt: Vec<i64> = (0..len as i64)
                .map(|i| (i * 37 + slot as i64) % 128)
                .collect();
            let a = prefill(&m, &mut host_cache, slot, &prompt);
            let b = prefill(&m, &mut chained_cache, slot, &prompt);
            assert_eq!(a, b);
            first.push((slot, a as u32));
        }
        // Slots decoding at each step: slot 2 leaves after step 4, slot 0 joins at step 7.
        let active = |step: usize| -> Vec<usize> {
            [5usize, 2, 7, 0]
                .into_iter()
                .filter(|&s| (s != 2 || step <= 4) && (s != 0 || step >= 7))
                .collect()
        };
        let params = |step: usize, b: usize| -> Vec<f32> {
            let mut p = vec![0f32; 3 * b];
            for r in 0..b {
                p[r] = 0.9;
                p[b + r] = 1.0;
                p[2 * b + r] = 0.05 + 0.9 * ((step as f32 * 0.61 + r as f32 * 0.29) % 1.0);
            }
            p
        };
        let pick = |step: usize, b: usize| -> Pick<'static> {
            if step % 2 == 1 {
                let p = params(step, b);
                Pick::Sample(Box::new(move || p))
            } else {
                Pick::Greedy
            }
        };
        let steps = 12;
        // Host-fed: each step read before the next, its tokens fed back from the host.
        let mut token: std::collections::HashMap<usize, u32> = first.iter().copied().collect();
        let mut want = Vec::new();
        for step in 0..steps {
            let rows: Vec<(usize, u32)> = active(step).iter().map(|s| (*s, token[s])).collect();
            let out = host_dec
                .decode(&m, &mut host_cache, &rows, pick(step, rows.len()))
                .unwrap()
                .expect("graph path");
            let NextTokens::Chosen(picked) = out.next else {
                panic!("chosen tokens when asked for no logits");
            };
            for ((s, _), (t, _)) in rows.iter().zip(&picked) {
                token.insert(*s, *t);
            }
            want.push((picked, out.routed_experts));
        }
        // Chained: step k+1 is launched before step k is read; rows that were in step k take its choice.
        let mut got = Vec::new();
        let mut in_flight: Option<spar_model::LaunchedStep> = None;
        for step in 0..=steps {
            let next = if step < steps {
                let rows: Vec<(usize, StepToken)> = active(step)
                    .iter()
                    .map(|s| {
                        let earlier = in_flight.as_ref().is_some_and(|e| e.slots().contains(s));
                        let t = if earlier {
                            StepToken::Chosen
                        } else {
                            StepToken::Host(first.iter().find(|f| f.0 == *s).unwrap().1)
                        };
                        (*s, t)
                    })
                    .collect();
                let b = rows.len();
                Some(
                    chained_dec
                        .launch_after(
                            &m,
                            &mut chained_cache,
                            &rows,
                            in_flight.as_ref(),
                            pick(step, b),
                        )
                        .unwrap()
                        .expect("graph path"),
                )
            } else {
                None
            };
            if let Some(prev) = in_flight.take() {
                let out = chained_dec.finish(&m, prev).unwrap();
                let NextTokens::Chosen(picked) = out.next else {
                    panic!("chosen tokens when asked for no logits");
                };
                got.push((picked, out.routed_experts));
            }
            in_flight = next;
        }
        assert_eq!(got.len(), want.len());
        for (step, ((gp, ge), (wp, we))) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                gp, wp,
                "moe {moe} {kind:?} step {step}: chained tokens differ"
            );
            match (ge, we) {
                (Some(g), Some(w)) => assert!(g.equal(w), "moe step {step}: experts differ"),
                (None, None) => {}
                _ => panic!("experts handed back by one path only"),
            }
        }
        for s in [5usize, 2, 7, 0] {
            assert_eq!(
                host_cache.len(s),
                chained_cache.len(s),
                "slot {s}: lengths diverged"
            );
        }
        eprintln!(
            "moe {moe} {kind:?}: {steps} chained steps match; stats {:?}",
            chained_dec.stats
        );
    }
}

/// One graph decoder a round (each RL round builds a new engine) must not grow the device memory torch's caching
/// allocator holds: a destroyed decoder's graph pool keeps its blocks, which no other allocation may use and a
/// malloc inside a capture may not free, so without `empty_cache` at a decoder's first capture every round took
/// fresh memory until a capture ran out of it (an H100 after 12 rounds of the single-GPU recipe, 2026-12-06).
#[test]
fn successive_graph_decoders_do_not_grow_reserved_memory_on_gpu() {
    if !tch::Cuda::is_available() || !spar_kernels::cuda_graph::available() {
        eprintln!("SKIP: graph decode needs a CUDA device and a build with the CUDA-graph shim");
        return;
    }
    let _g = tch::no_grad_guard();
    let kind = Kind::BFloat16;
    let m = model(false, kind);
    let mut reserved = Vec::new();
    for round in 0..6 {
        let mut cache = KvCache::new(&m.config, 8, 160, m.device(), kind);
        let mut dec = GraphDecoder::new(&m, &cache, 4).expect("graph decoder on CUDA");
        let mut feed: Vec<(usize, u32)> = [(1usize, 20usize), (4, 7)]
            .into_iter()
            .map(|(slot, len)| {
                let prompt: Vec<i64> = (0..len as i64)
                    .map(|i| (i * 11 + slot as i64) % 128)
                    .collect();
                (slot, prefill(&m, &mut cache, slot, &prompt) as u32)
            })
            .collect();
        for step in 0..3 {
            let b = feed.len();
            let params: Vec<f32> =
                [vec![1.0; b], vec![1.0; b], vec![0.3 + 0.1 * step as f32; b]].concat();
            let out = dec
                .decode(
                    &m,
                    &mut cache,
                    &feed,
                    Pick::Sample(Box::new(move || params)),
                )
                .unwrap()
                .expect("graph path should take this step");
            let NextTokens::Chosen(picked) = &out.next else {
                panic!("sampled tokens when sampling is asked");
            };
            for (f, (tok, _)) in feed.iter_mut().zip(picked) {
                f.1 = *tok;
            }
        }
        assert!(
            dec.stats.captures > 0,
            "round {round}: no graph was captured"
        );
        drop(dec);
        drop(cache);
        reserved.push(spar_kernels::cuda_memory::memory_now(0).unwrap().reserved);
    }
    eprintln!(
        "reserved after each round (MiB): {:?}",
        reserved.iter().map(|r| r >> 20).collect::<Vec<_>>()
    );
    // The first rounds settle the caching allocator's own blocks; after that a round may not add a pool's worth.
    assert!(
        reserved[5] <= reserved[2] + (2 << 20),
        "reserved memory grew from {} to {} MiB over three rounds",
        reserved[2] >> 20,
        reserved[5] >> 20
    );
}
