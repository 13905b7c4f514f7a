//! The engine: continuous batching, prefix reuse and sampling keep the numerics of a plain full forward.
use super::common::{full_forward_logprobs, tiny_model};
use spar_core::traits::{FinishReason, GenerateRequest, SamplingParams};
use spar_rollout::engine::{Engine, EngineConfig};

fn req(prompt: Vec<u32>, max_new: u32, temperature: f32, seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: prompt,
        sampling: SamplingParams {
            temperature,
            max_new_tokens: max_new,
            seed: Some(seed),
            ..Default::default()
        },
    }
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 256 + (i * 7 + salt * 13) % 200)
        .collect()
}

#[test]
fn logprobs_match_a_full_forward_under_continuous_batching() {
    let model = tiny_model(false);
    // 2 rows at a time over 4 slots: later requests wait for a slot, then reuse cached prefixes.
    let cfg = EngineConfig {
        max_batch: 2,
        kv_slots: 4,
        max_seq_len: 256,
        prefill_tokens: 16,
        seed: 1,
        ..Default::default()
    };
    let mut engine = Engine::new(&model, cfg).unwrap();
    let shared = prompt(20, 1);
    let mut reqs = vec![req(prompt(5, 2), 12, 1.0, 1), req(prompt(33, 3), 7, 1.0, 2)];
    for s in 0..3 {
        reqs.push(req(shared.clone(), 9, 1.0, 10 + s));
    }
    let outs = engine.generate(reqs.clone()).unwrap();
    assert!(
        engine.stats.reused_tokens > 0,
        "the group's shared prompt must be reused: {:?}",
        engine.stats
    );
    for (r, o) in reqs.iter().zip(&outs) {
        let o = &o.output;
        assert_eq!(o.finish, FinishReason::Length);
        assert_eq!(o.token_ids.len(), r.sampling.max_new_tokens as usize);
        let mut all = r.prompt_ids.clone();
        all.extend(&o.token_ids);
        let full = full_forward_logprobs(&model, &all);
        for (i, lp) in o.logprobs.iter().enumerate() {
            let want = full[r.prompt_ids.len() + i];
            assert!(
                (lp - want).abs() < 1e-4,
                "token {i}: engine {lp} vs full forward {want}"
            );
        }
    }
    // The next turn of a conversation finds its history cached.
    let mut next = reqs[1].prompt_ids.clone();
    next.extend(&outs[1].output.token_ids);
    next.extend(prompt(4, 9));
    let before = engine.stats.reused_tokens;
    let again = engine.generate(vec![req(next.clone(), 3, 0.0, 0)]).unwrap();
    assert!(engine.stats.reused_tokens - before >= (reqs[1].prompt_ids.len() + 6) as u64);
    let full = full_forward_logprobs(
        &model,
        &[next.clone(), again[0].output.token_ids.clone()].concat(),
    );
    assert!((again[0].output.logprobs[0] - full[next.len()]).abs() < 1e-4);
}

#[test]
fn seeds_reproduce_whatever_shares_the_batch() {
    let model = tiny_model(false);
    let cfg = EngineConfig {
        max_batch: 8,
        kv_slots: 8,
        max_seq_len: 128,
        prefill_tokens: 64,
        seed: 5,
        record_routing: false,
        batch_invariant: false,
        prefill_wait_steps: 0,
        overlap_prefill: false,
        async_decode: true,
    };
    let alone = Engine::new(&model, cfg.clone())
        .unwrap()
        .generate(vec![req(prompt(6, 4), 10, 0.8, 42)])
        .unwrap();
    let crowd = Engine::new(&model, cfg)
        .unwrap()
        .generate(vec![
            req(prompt(9, 1), 10, 1.0, 1),
            req(prompt(6, 4), 10, 0.8, 42),
            req(prompt(3, 2), 4, 1.0, 2),
        ])
        .unwrap();
    assert_eq!(alone[0].output.token_ids, crowd[1].output.token_ids);
}

#[test]
fn greedy_stops_on_stop_tokens_and_records_moe_routing() {
    let model = tiny_model(true);
    let cfg = EngineConfig {
        max_batch: 4,
        kv_slots: 4,
        max_seq_len: 128,
        prefill_tokens: 64,
        seed: 0,
        record_routing: true,
        batch_invariant: false,
        prefill_wait_steps: 0,
        overlap_prefill: false,
        async_decode: true,
    };
    let mut engine = Engine::new(&model, cfg).unwrap();
    let p = prompt(7, 5);
    let free = engine
        .generate(vec![req(p.clone(), 6, 0.0, 0)])
        .unwrap()
        .remove(0)
        .output;
    // Stop on the third greedy token: generation ends there, the stop token included.
    let mut r = req(p.clone(), 6, 0.0, 0);
    r.sampling.stop_token_ids = vec![free.token_ids[2]];
    let first_hit = free
        .token_ids
        .iter()
        .position(|t| *t == free.token_ids[2])
        .unwrap();
    let out = engine.generate(vec![r]).unwrap().remove(0);
    assert_eq!(out.output.finish, FinishReason::Stop);
    assert_eq!(out.output.token_ids, free.token_ids[..=first_hit].to_vec());
    // Routing: the prompt's and the generated tokens' experts equal those of a full forward.
    let routed = out.output.routed_experts.expect("MoE routing recorded");
    let prompt_routing = out.prompt_routing.expect("prompt routing recorded");
    let all: Vec<u32> = [p.clone(), out.output.token_ids.clone()].concat();
    let t =
        tch::Tensor::from_slice(&all.iter().map(|&x| x as i64).collect::<Vec<_>>()).unsqueeze(0);
    let full = tch::no_grad(|| model.forward(spar_model::ForwardInput::new(&t)).unwrap());
    let re = Vec::<i64>::try_from(full.routed_experts.unwrap().reshape([-1])).unwrap();
    let per = routed.layers * routed.k;
    let mut ours: Vec<u16> = prompt_routing.ids.clone();
    ours.extend(&routed.ids[..(routed.ids.len() - per)]);
    // Experts are a set per token: compare sorted.
    for (pos, (a, b)) in ours.chunks(routed.k).zip(re.chunks(routed.k)).enumerate() {
        let mut a: Vec<i64> = a.iter().map(|&x| x as i64).collect();
        let mut b = b.to_vec();
        a.sort();
        b.sort();
        assert_eq!(a, b, "position/layer {pos}");
    }
}

#[test]
fn a_long_cached_conversation_and_a_fresh_long_prompt_share_a_prefill_without_overflow() {
    // Row A continues a conversation whose history (100 tokens) is cached and appends 2; row B is a fresh
    // 60-token prompt. Padded together, A would read 100 + 60 > max_seq_len: the engine must batch them apart.
    let model = tiny_model(false);
    let cfg = EngineConfig {
        max_batch: 4,
        kv_slots: 4,
        max_seq_len: 128,
        prefill_tokens: 512,
        seed: 3,
        record_routing: false,
        batch_invariant: false,
        prefill_wait_steps: 0,
        overlap_prefill: false,
        async_decode: true,
    };
    let mut engine = Engine::new(&model, cfg).unwrap();
    let history = prompt(100, 5);
    engine
        .generate(vec![req(history.clone(), 1, 0.0, 0)])
        .unwrap();
    let mut next = history.clone();
    next.extend(prompt(2, 6));
    let outs = engine
        .generate(vec![
            req(next.clone(), 4, 0.0, 0),
            req(prompt(60, 7), 4, 0.0, 0),
        ])
        .unwrap();
    assert!(engine.stats.reused_tokens >= 100, "{:?}", engine.stats);
    for (p, o) in [&next, &prompt(60, 7)].into_iter().zip(&outs) {
        let full = full_forward_logprobs(&model, &[p.clone(), o.output.token_ids.clone()].concat());
        assert!((o.output.logprobs[0] - full[p.len()]).abs() < 1e-4);
    }
}

/// Log-softmax of one full forward of `ids`, `[T, V]` flattened: row t is the distribution of token t + 1.
fn full_forward_log_softmax(model: &spar_model::Qwen3Model, ids: &[u32]) -> (Vec<f32>, usize) {
    let _g = tch::no_grad_guard();
    let t =
        tch::Tensor::from_slice(&ids.iter().map(|&x| x as i64).collect::<Vec<_>>()).unsqueeze(0);
    let out = model.forward(spar_model::ForwardInput::new(&t)).unwrap();
    let v = out.logits.size()[2] as usize;
    let lp = out
        .logits
        .to_kind(tch::Kind::Float)
        .log_softmax(-1, tch::Kind::Float)
        .reshape([-1]);
    (Vec::<f32>::try_from(lp).unwrap(), v)
}

#[test]
fn top_logprobs_rank_the_policy_distribution_for_the_rows_that_ask() {
    let model = tiny_model(false);
    let cfg = EngineConfig {
        max_batch: 3,
        kv_slots: 4,
        max_seq_len: 128,
        prefill_tokens: 64,
        seed: 2,
        record_routing: false,
        batch_invariant: false,
        prefill_wait_steps: 0,
        overlap_prefill: false,
        async_decode: true,
    };
    let mut engine = Engine::new(&model, cfg).unwrap();
    // One greedy row, one sampled row, one that asks for nothing, decoded in the same batches.
    let mut greedy = req(prompt(9, 3), 6, 0.0, 0);
    greedy.sampling.top_logprobs = 5;
    let mut sampled = req(prompt(5, 8), 6, 1.0, 7);
    sampled.sampling.top_logprobs = 3;
    let plain = req(prompt(7, 1), 6, 1.0, 8);
    let outs = engine
        .generate(vec![greedy.clone(), sampled.clone(), plain])
        .unwrap();
    assert!(outs[2].output.top_logprobs.is_empty());
    for (r, o) in [(&greedy, &outs[0].output), (&sampled, &outs[1].output)] {
        let k = r.sampling.top_logprobs as usize;
        assert_eq!(o.top_logprobs.len(), o.token_ids.len());
        let all = [r.prompt_ids.clone(), o.token_ids.clone()].concat();
        let (rows, v) = full_forward_log_softmax(&model, &all);
        // Entry 0 comes from the prefill's logits, the rest from decode steps.
        for (i, top) in o.top_logprobs.iter().enumerate() {
            let pos = r.prompt_ids.len() - 1 + i;
            let row = &rows[pos * v..(pos + 1) * v];
            assert_eq!(top.len(), k, "token {i}");
            assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "sorted: {top:?}");
            for &(id, lp) in top {
                assert!(
                    (lp - row[id as usize]).abs() < 1e-4,
                    "token {i}, alternative {id}: engine {lp} vs full forward {}",
                    row[id as usize]
                );
            }
            // A true top-k: no token left out is more likely than the last one kept (up to float noise).
            let last = top[k - 1].1;
            for (id, &l) in row.iter().enumerate() {
                assert!(
                    top.iter().any(|&(t, _)| t as usize == id) || l <= last + 1e-4,
                    "token {i}: {id} ({l}) is missing from {top:?}"
                );
            }
            let (tok, lp) = (o.token_ids[i], o.logprobs[i]);
            if r.sampling.temperature == 0.0 {
                assert_eq!(top[0], (tok, lp), "greedy: the sampled token leads");
            } else {
                assert!(lp <= top[0].1);
                assert!(
                    top.contains(&(tok, lp)) || lp <= last,
                    "token {i}: {tok} {lp} vs {top:?}"
                );
            }
        }
    }
}

/// A model whose logits are NaN (its weights gone non-finite) fails its requests with a clear error at the first
/// forward: never a reply of garbage tokens ("!!!!") with a success.
#[test]
fn nan_logits_fail_the_request_at_the_first_forward() {
    let model = tiny_model(false);
    tch::no_grad(|| {
        for (name, mut v) in model.vs.variables() {
            if name.contains("norm") {
                let _ = v.fill_(f64::NAN);
            }
        }
    });
    let cfg = EngineConfig {
        max_batch: 2,
        kv_slots: 2,
        max_seq_len: 64,
        prefill_tokens: 16,
        seed: 1,
        ..Default::default()
    };
    let mut engine = Engine::new(&model, cfg).unwrap();
    let err = engine
        .generate(vec![req(prompt(5, 2), 4, 0.0, 1)])
        .map(|o| o[0].output.token_ids.clone())
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("logits are not finite")
            && msg.contains("at generated token 1 of a 5-token prompt"),
        "{msg}"
    );
    assert_eq!(engine.stats.generated_tokens, 0, "{:?}", engine.stats);
}

/// Batch-invariant mode (`--deterministic`): a request's tokens and log-probs are bit-identical whether it runs
/// alone in a fresh engine or among other requests that share its prefix, fill the batch and leave cached
/// conversations to reuse, and whatever its slot.
#[test]
fn batch_invariant_requests_are_bit_identical_whatever_runs_beside_them() {
    let model = tiny_model(true);
    let cfg = EngineConfig {
        max_batch: 3,
        kv_slots: 5,
        max_seq_len: 128,
        prefill_tokens: 8,
        seed: 5,
        batch_invariant: true,
        prefill_wait_steps: 0,
        ..Default::default()
    };
    let target = |seed| req(prompt(14, 4), 12, 0.9, seed);
    let alone: Vec<_> = (0..2)
        .map(|s| {
            Engine::new(&model, cfg.clone())
                .unwrap()
                .generate(vec![target(40 + s)])
                .unwrap()
                .remove(0)
                .output
        })
        .collect();
    // A crowd: the target's own prefix cached in a slot by an earlier request (a conversation's previous
    // turn), siblings sharing it, other prompts of other lengths.
    let mut engine = Engine::new(&model, cfg).unwrap();
    engine
        .generate(vec![req(prompt(14, 4)[..10].to_vec(), 3, 1.0, 7)])
        .unwrap();
    let outs = engine
        .generate(vec![
            req(prompt(9, 1), 10, 1.0, 1),
            target(40),
            req(prompt(30, 2), 5, 1.0, 2),
            target(41),
            req(prompt(14, 4), 6, 0.0, 3),
        ])
        .unwrap();
    assert_eq!(engine.stats.reused_tokens, 0, "{:?}", engine.stats);
    for (a, b) in alone.iter().zip([&outs[1].output, &outs[3].output]) {
        assert_eq!(a.token_ids, b.token_ids);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.logprobs), bits(&b.logprobs));
    }
}

/// `gpu_memory_utilization`: the slot arithmetic, a CPU model left as configured, and (GPU only; skipped with a
/// printed reason elsewhere) a cache far larger than the GPU sized down to what fits, which then generates,
/// while a utilization leaving no room for one slot is an error with the numbers.
#[test]
fn the_kv_cache_is_sized_from_the_gpus_memory_when_asked() {
    use spar_rollout::engine::slots_within;
    // 10 GB can be allocated on an 80 GB GPU; 0.9 keeps 8 GB free: 2 GB for 1 GB slots.
    assert_eq!(
        slots_within(1_000_000_000, 10_000_000_000, 80_000_000_000, 0.9),
        2
    );
    assert_eq!(
        slots_within(1_000_000_000, 5_000_000_000, 80_000_000_000, 0.9),
        0
    );
    assert_eq!(slots_within(1, 0, 0, 1.0), 0);
    let huge = EngineConfig {
        max_batch: 100_000,
        kv_slots: 1_000_000,
        max_seq_len: 4096,
        ..Default::default()
    };
    let model = tiny_model(false);
    let (cpu, lowered) = huge.clone().fit_gpu_memory(&model, Some(0.9)).unwrap();
    assert_eq!(
        (cpu.kv_slots, lowered),
        (1_000_000, None),
        "a CPU model keeps its config"
    );
    if !tch::Cuda::is_available() {
        eprintln!("skipped the GPU half: no CUDA device (the cache is sized from a GPU's memory)");
        return;
    }
    let mut model = tiny_model(false);
    model.vs.set_device(tch::Device::Cuda(0));
    let model =
        spar_model::Qwen3Model::from_var_store(model.config.clone(), model.vs, tch::Kind::Float)
            .unwrap();
    let (fit, line) = huge.clone().fit_gpu_memory(&model, Some(0.5)).unwrap();
    assert!(fit.kv_slots < 1_000_000 && fit.kv_slots >= 1, "{fit:?}");
    assert!(fit.max_batch <= fit.kv_slots);
    assert!(line.unwrap().contains("leaves room for"));
    let mut engine = Engine::new(&model, fit).unwrap();
    let out = engine
        .generate(vec![req(prompt(12, 1), 4, 0.0, 1)])
        .unwrap();
    assert_eq!(out[0].output.token_ids.len(), 4);
    let err = huge
        .fit_gpu_memory(&model, Some(1e-9))
        .unwrap_err()
        .to_string();
    assert!(err.contains("one KV slot"), "{err}");
}

/// `prefill_wait_steps`: turns that arrive while another sequence decodes wait up to that many steps and share
/// one prefill forward, with the same greedy tokens as when each is prefilled on arrival; a request that finds
/// nothing decoding is admitted at once.
#[test]
fn queued_turns_wait_for_batch_mates_while_others_decode() {
    use spar_rollout::engine::Reply;
    use tokio::sync::oneshot;
    let model = tiny_model(false);
    // (prefill forwards after the first request's, steps that waited, B's and C's outputs)
    let run = |wait: usize| {
        let cfg = EngineConfig {
            max_batch: 4,
            kv_slots: 4,
            max_seq_len: 128,
            prefill_tokens: 256,
            seed: 1,
            prefill_wait_steps: wait,
            ..Default::default()
        };
        let mut engine = Engine::new(&model, cfg).unwrap();
        let (tx, _a) = oneshot::channel();
        engine.submit(req(prompt(6, 1), 30, 0.0, 1), Reply::Once(tx));
        engine.step().unwrap();
        assert_eq!(
            engine.stats.prefill_forwards, 1,
            "nothing was decoding: admitted at once"
        );
        let first = engine.stats.prefill_forwards;
        let (tx, mut b) = oneshot::channel();
        engine.submit(req(prompt(9, 2), 5, 0.0, 2), Reply::Once(tx));
        engine.step().unwrap();
        let (tx, mut c) = oneshot::channel();
        engine.submit(req(prompt(4, 3), 5, 0.0, 3), Reply::Once(tx));
        while engine.has_work() {
            engine.step().unwrap();
        }
        let out = |rx: &mut oneshot::Receiver<_>| -> spar_core::traits::GenerateOutput {
            let r: anyhow::Result<spar_rollout::engine::EngineOutput> = rx.try_recv().unwrap();
            r.unwrap().output
        };
        (
            engine.stats.prefill_forwards - first,
            engine.stats.prefill_wait_steps,
            [out(&mut b), out(&mut c)],
        )
    };
    let (forwards, waited, at_once) = run(0);
    assert_eq!((forwards, waited), (2, 0), "each turn prefilled on arrival");
    let (forwards, waited, together) = run(3);
    // B arrives after step 1 and may wait through step 4; C arrives after step 2: both go in at step 5.
    assert_eq!((forwards, waited), (1, 3), "one forward for both turns");
    for (x, y) in at_once.iter().zip(&together) {
        assert_eq!(x.token_ids, y.token_ids);
        for (p, q) in x.logprobs.iter().zip(&y.logprobs) {
            assert!((p - q).abs() < 1e-4, "{p} vs {q}");
        }
    }
}

/// A tiny random model over the test codec's vocabulary on the GPU, its weights x4 so that logits spread and
/// greedy choices are not near-ties.
fn gpu_char_model(kind: tch::Kind, seed: i64) -> spar_model::Qwen3Model {
    let vocab = spar_rollout::testing::CharCodec::vocab_size();
    let json = format!(
        r#"{{"model_type":"qwen3","vocab_size":{vocab},"hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"head_dim":32,"max_position_embeddings":4096}}"#
    );
    let config = spar_model::Qwen3Config::from_json_str(&json, "test").unwrap();
    let model = spar_model::Qwen3Model::random(config, tch::Device::Cuda(0), kind, seed).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in model.vs.variables() {
            let _ = v.f_mul_scalar_(4.0).unwrap();
        }
    });
    model
}

/// On a GPU with `overlap_prefill` the graph decoder's step is queued ahead of a prefill and read after it, and
/// new turns go packed through flash attention (bf16): requests arriving while others decode, greedy and sampled,
/// still carry the log-probs of one plain full forward of their own tokens, and the graph path took the steps.
#[test]
fn overlapped_prefill_and_decode_keep_full_forward_logprobs_on_gpu() {
    use spar_rollout::engine::Reply;
    use tch::Kind;
    use tokio::sync::oneshot;
    if !tch::Cuda::is_available() {
        eprintln!("SKIP: needs a CUDA device (the graph decoder and flash attention run there)");
        return;
    }
    // (dtype, bound on each token's difference, on their mean). fp32: the kernels' summation order only. bf16
    // (weights x4, logits of tens): the engine's kernels and the full forward's each round differently; on an H100
    // one sampled token of 36 differed by 0.335 nats (the first 15 by under 0.15). A misplaced key or value moves
    // every later token by nats.
    for (kind, tol, mean_tol) in [(Kind::Float, 1e-3f32, 1e-3f32), (Kind::BFloat16, 1.0, 0.1)] {
        let model = gpu_char_model(kind, 3);
        let cfg = EngineConfig {
            max_batch: 4,
            kv_slots: 4,
            max_seq_len: 256,
            prefill_tokens: 256,
            seed: 1,
            overlap_prefill: true,
            ..Default::default()
        };
        let mut engine = Engine::new(&model, cfg).unwrap();
        let reqs = [
            req(prompt(6, 1), 30, 1.0, 1),
            req(prompt(9, 2), 12, 0.0, 2),
            req(prompt(17, 3), 10, 1.0, 3),
            req(prompt(40, 4), 8, 0.0, 4),
        ];
        let mut replies = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            engine.submit(r.clone(), Reply::Once(tx));
            replies.push(rx);
            // Each later request arrives while the earlier ones decode.
            for _ in 0..=i {
                engine.step().unwrap();
            }
        }
        while engine.has_work() {
            engine.step().unwrap();
        }
        let stats = engine
            .graph_stats()
            .expect("a GPU engine has a graph decoder");
        let (mut sum, mut count) = (0.0f32, 0usize);
        assert!(
            stats.replays > 0,
            "{kind:?}: no step took the graph path: {stats:?}"
        );
        for (r, mut rx) in reqs.iter().zip(replies) {
            let out: anyhow::Result<spar_rollout::engine::EngineOutput> = rx.try_recv().unwrap();
            let o = out.unwrap().output;
            assert_eq!(o.token_ids.len(), r.sampling.max_new_tokens as usize);
            let all: Vec<u32> = r.prompt_ids.iter().chain(&o.token_ids).copied().collect();
            let want = full_forward_logprobs(&model, &all);
            for (i, got) in o.logprobs.iter().enumerate() {
                let w = want[r.prompt_ids.len() + i];
                assert!(
                    (got - w).abs() < tol,
                    "{kind:?}, a {}-token prompt, token {i}: engine {got} vs full forward {w}",
                    r.prompt_ids.len()
                );
                sum += (got - w).abs();
                count += 1;
            }
        }
        let mean = sum / count as f32;
        assert!(
            mean < mean_tol,
            "{kind:?}: the engine's log-probs differ from the full forward's by {mean} on average"
        );
    }
}

/// Each of `out`'s log-probs is within `tol` of one plain full forward's over `req`'s prompt and `out`'s tokens.
fn assert_full_forward_logprobs(
    model: &spar_model::Qwen3Model,
    req: &GenerateRequest,
    out: &spar_core::traits::GenerateOutput,
    tol: f32,
    i: usize,
) {
    let all: Vec<u32> = req
        .prompt_ids
        .iter()
        .chain(&out.token_ids)
        .copied()
        .collect();
    let want = full_forward_logprobs(model, &all);
    for (t, got) in out.logprobs.iter().enumerate() {
        let w = want[req.prompt_ids.len() + t];
        assert!(
            (got - w).abs() < tol,
            "request {i}, token {t}: engine {got} vs full forward {w}"
        );
    }
}

/// Runs `reqs` to the end, request i submitted after `i % spread` steps of the ones before it (later requests
/// arrive while earlier ones decode), and returns their outputs in order.
fn staggered(
    engine: &mut Engine<'_>,
    reqs: &[GenerateRequest],
    spread: usize,
) -> Vec<spar_core::traits::GenerateOutput> {
    use spar_rollout::engine::Reply;
    use tokio::sync::oneshot;
    let mut replies = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let (tx, rx) = oneshot::channel();
        engine.submit(r.clone(), Reply::Once(tx));
        replies.push(rx);
        for _ in 0..i % spread {
            engine.step().unwrap();
        }
    }
    while engine.has_work() {
        engine.step().unwrap();
    }
    replies
        .into_iter()
        .map(|mut rx| rx.try_recv().unwrap().unwrap().output)
        .collect()
}

/// On a GPU, asynchronous decode (step k+1 queued before step k's tokens are read, its input tokens taken from
/// step k's choices on the device) generates what the synchronous engine generates: sequences that stop on a
/// stop token while the next step is in flight, end at their length limit or at `max_seq_len`, arrive while
/// others decode, and one that asks for top log-probs (its steps run synchronously). fp32: the same tokens, and
/// log-probs of one plain full forward of each sequence's own tokens.
#[test]
fn async_decode_generates_what_synchronous_decode_does_on_gpu() {
    use tch::Kind;
    if !tch::Cuda::is_available() {
        eprintln!("SKIP: asynchronous decode needs a CUDA device");
        return;
    }
    let vocab = spar_rollout::testing::CharCodec::vocab_size();
    let model = gpu_char_model(Kind::Float, 5);
    // About one token in nine stops a sequence: most end on a stop token at a step nobody can foresee.
    let stops: Vec<u32> = (0..vocab as u32).filter(|t| t % 9 == 4).collect();
    let stopping = |mut r: GenerateRequest| {
        r.sampling.stop_token_ids = stops.clone();
        r
    };
    let mut top = req(prompt(5, 6), 12, 1.0, 6);
    top.sampling.top_logprobs = 2;
    let reqs = [
        stopping(req(prompt(6, 1), 40, 1.0, 1)),
        stopping(req(prompt(9, 2), 40, 0.0, 2)),
        req(prompt(17, 3), 25, 1.0, 3),
        // Ends at max_seq_len (96) before its 60 new tokens.
        req(prompt(70, 4), 60, 0.0, 4),
        stopping(req(prompt(12, 5), 40, 0.7, 5)),
        top,
        req(prompt(8, 7), 9, 1.0, 7),
        stopping(req(prompt(30, 8), 40, 1.0, 8)),
    ];
    let run = |async_decode: bool| {
        let cfg = EngineConfig {
            max_batch: 4,
            kv_slots: 6,
            max_seq_len: 96,
            prefill_tokens: 256,
            seed: 1,
            async_decode,
            ..Default::default()
        };
        let mut engine = Engine::new(&model, cfg).unwrap();
        assert!(
            engine.graph_stats().is_some(),
            "a GPU engine has a graph decoder (a build without the CUDA-graph shim cannot run this test)"
        );
        (staggered(&mut engine, &reqs, 3), engine.stats)
    };
    let (sync, sync_stats) = run(false);
    let (ahead, stats) = run(true);
    eprintln!("synchronous: {sync_stats:?}\nasynchronous: {stats:?}");
    assert_eq!(sync_stats.decode_steps_ahead, 0);
    assert!(
        stats.decode_steps_ahead > 0,
        "no step was queued ahead: {stats:?}"
    );
    assert!(
        stats.decoded_past_end > 0,
        "no sequence ended while its next step was in flight: {stats:?}"
    );
    let mut stopped = 0;
    for (i, (s, a)) in sync.iter().zip(&ahead).enumerate() {
        assert_eq!(a.token_ids, s.token_ids, "request {i}: tokens differ");
        assert_eq!(a.finish, s.finish, "request {i}: finish reason differs");
        assert_eq!(a.top_logprobs.len(), s.top_logprobs.len());
        for (x, y) in a.logprobs.iter().zip(&s.logprobs) {
            assert!((x - y).abs() < 1e-4, "request {i}: log-prob {x} vs {y}");
        }
        stopped += (a.finish == FinishReason::Stop) as usize;
        // The tokens are the model's own: a full forward gives the same log-probs.
        assert_full_forward_logprobs(&model, &reqs[i], a, 1e-3, i);
    }
    assert!(
        stopped >= 2,
        "too few sequences ended on a stop token ({stopped})"
    );
    assert_eq!(ahead[3].finish, FinishReason::Length);
    assert_eq!(ahead[3].token_ids.len(), 96 - 70);
}

/// On a GPU, an engine's CUDA graphs replay in the next engine over the same model ([`Engine::into_kept`],
/// [`Engine::new_keeping`]): the second engine captures nothing, its KV cache sits at the first one's addresses,
/// the memory went back to the driver in between, and after an in-place weight update (what the learner does
/// between rounds) it generates what a fresh engine with freshly captured graphs generates, not what the old
/// weights gave. fp32, greedy and sampled rows, requests arriving while others decode.
#[test]
fn kept_graphs_replay_new_weights_in_the_next_engine_on_gpu() {
    use spar_rollout::engine::KeptGraphs;
    use tch::Kind;
    if !tch::Cuda::is_available() {
        eprintln!("SKIP: kept CUDA graphs need a CUDA device");
        return;
    }
    let model = gpu_char_model(Kind::Float, 9);
    let reqs = [
        req(prompt(6, 1), 30, 1.0, 1),
        req(prompt(9, 2), 30, 0.0, 2),
        req(prompt(17, 3), 25, 0.8, 3),
        req(prompt(40, 4), 20, 0.0, 4),
        req(prompt(12, 5), 30, 1.0, 5),
    ];
    let cfg = EngineConfig {
        max_batch: 4,
        kv_slots: 6,
        max_seq_len: 96,
        prefill_tokens: 256,
        seed: 3,
        ..Default::default()
    };
    let generate =
        |engine: &mut Engine<'_>| (staggered(engine, &reqs, 2), engine.stats_with_graphs());
    let free = || spar_model::cuda_memory_now(0).unwrap().free;

    let mut first = Engine::new_keeping(&model, cfg.clone(), None).unwrap();
    let (old, first_stats) = generate(&mut first);
    assert!(first_stats.graph_captures > 0, "{first_stats:?}");
    let free_during = free();
    let kept: KeptGraphs = first
        .into_kept()
        .expect("a GPU engine at fixed addresses keeps its graphs");
    assert!(kept.graphs_held() > 0);
    let freed = free().saturating_sub(free_during);
    assert!(
        freed as usize >= kept.bytes(),
        "the KV cache's {} bytes went back to the driver: {freed} freed",
        kept.bytes()
    );

    // The learner's step: the same parameters, new values.
    tch::no_grad(|| {
        for (_, mut v) in model.vs.variables() {
            let _ = v.f_mul_scalar_(1.05).unwrap();
        }
    });
    let (kept_out, kept_stats) =
        generate(&mut Engine::new_keeping(&model, cfg.clone(), Some(kept)).unwrap());
    let (fresh, fresh_stats) = generate(&mut Engine::new(&model, cfg).unwrap());
    eprintln!("first: {first_stats:?}\nkept: {kept_stats:?}\nfresh: {fresh_stats:?}");
    assert_eq!(
        kept_stats.graph_captures, 0,
        "the kept graphs were captured again"
    );
    assert!(fresh_stats.graph_captures > 0);
    let mut moved = 0.0f32;
    for (i, ((k, f), o)) in kept_out.iter().zip(&fresh).zip(&old).enumerate() {
        assert_eq!(k.token_ids, f.token_ids, "request {i}: tokens differ");
        for (x, y) in k.logprobs.iter().zip(&f.logprobs) {
            assert!((x - y).abs() < 1e-5, "request {i}: log-prob {x} vs {y}");
        }
        for (x, y) in k.logprobs.iter().zip(&o.logprobs) {
            moved = moved.max((x - y).abs());
        }
        assert_full_forward_logprobs(&model, &reqs[i], k, 1e-3, i);
    }
    assert!(
        moved > 1e-3,
        "the kept graphs gave the old weights' log-probs (largest change {moved})"
    );
}
