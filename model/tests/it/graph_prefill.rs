//! Prefills replayed from CUDA graphs ([`spar_model::graph_prefill`]) against the eager packed prefill (GPU
//! only; skips with a printed reason elsewhere): the same logits, KV cache contents and routed experts over
//! scattered slots and ragged turns, a graph replayed with another layout of its shape, and a prefill too long
//! for the graphs taking the eager path.

use crate::common::max_abs_diff;
use crate::graph_decode::cfg;
use spar_model::fused_layers::FusedLayers;
use spar_model::fused_prefill::{packs, prefill_with};
use spar_model::graph_prefill::{max_tokens, prefill_shape};
use spar_model::{ForwardInput, GraphDecoder, KvCache, Qwen3Model};
use tch::{Device, Kind, Tensor};

fn turn(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 29 + seed * 13) % 128)
        .collect()
}

/// One more token for each of `slots` through the plain cached forward: its logits read every key and value the
/// prefills wrote into those slots (a padding token writing anywhere but its scratch column would show here).
fn probe(m: &Qwen3Model, cache: &mut KvCache, slots: &[usize]) -> Tensor {
    let ids = Tensor::full([slots.len() as i64, 1], 5, (Kind::Int64, m.device()));
    cache.select_slots(slots).unwrap();
    let out = m.forward(ForwardInput::new(&ids).cache(cache)).unwrap();
    out.logits.select(1, 0).to_kind(Kind::Float)
}

#[test]
fn graph_prefill_matches_the_eager_packed_prefill_on_gpu() {
    if !tch::Cuda::is_available() || !spar_kernels::cuda_graph::available() {
        eprintln!(
            "SKIP: graph prefill needs a CUDA device and a build with the CUDA-graph shim (cuda {}, shim {})",
            tch::Cuda::is_available(),
            spar_kernels::cuda_graph::available()
        );
        return;
    }
    let _g = tch::no_grad_guard();
    let (device, kind) = (Device::Cuda(0), Kind::BFloat16);
    for moe in [false, true] {
        let m = Qwen3Model::random(cfg(moe), device, kind, 13).unwrap();
        tch::no_grad(|| {
            for (_, mut v) in m.vs.variables() {
                let _ = v.f_mul_scalar_(4.0).unwrap();
            }
        });
        assert!(
            packs(&m),
            "flash attention's varlen kernel refused a bf16 prefill"
        );
        let (slots, max_len) = (6, 1024);
        let mut eager = KvCache::new(&m.config, slots, max_len, device, kind);
        let mut graphed = KvCache::new(&m.config, slots, max_len, device, kind);
        let mut dec = GraphDecoder::new(&m, &graphed, slots).expect("graph decoder on a GPU");
        // Prompts into scattered slots (16 tokens: one bucket, its padding row empty); ragged turns appended to
        // two histories next to a fresh sequence (21 tokens: 32); the same shape again with another layout
        // (replayed, not captured); one row (16); a prefill past the graphs' largest bucket (eager).
        let waves: Vec<Vec<(usize, Vec<u32>)>> = vec![
            vec![(4, turn(1, 9)), (1, turn(2, 7))],
            vec![(1, turn(3, 3)), (4, turn(4, 7)), (2, turn(5, 11))],
            vec![(2, turn(6, 2)), (5, turn(7, 20)), (1, turn(8, 5))],
            vec![(4, turn(9, 13))],
            vec![(0, turn(10, max_tokens() + 1))],
        ];
        let shapes: Vec<_> = waves
            .iter()
            .map(|rows| prefill_shape(rows.iter().map(|(_, p)| p.len()).sum(), rows.len()))
            .collect();
        assert_eq!(
            shapes,
            [
                Some((16, 3)),
                Some((32, 5)),
                Some((32, 5)),
                Some((16, 2)),
                None
            ]
        );
        let fused = FusedLayers::new(&m).unwrap();
        for (w, rows) in waves.iter().enumerate() {
            let spec: Vec<(usize, &[u32])> = rows.iter().map(|(s, p)| (*s, p.as_slice())).collect();
            let want = prefill_with(&m, &fused, &mut eager, &spec, true).unwrap();
            let got = dec.prefill(&m, &mut graphed, &spec).unwrap();
            let scale = want.logits.abs().max().double_value(&[]).max(1.0);
            let diff = max_abs_diff(
                &want.logits.to_kind(Kind::Float),
                &got.logits.to_kind(Kind::Float),
            ) / scale;
            // bf16: the GEMMs see more token rows in the graph (another kernel may run them); rounding
            // differences grow through the x4 random layers.
            assert!(diff <= 5e-2, "moe {moe} wave {w}: logits differ by {diff}");
            assert_eq!(got.logits.size(), [rows.len() as i64, 128], "wave {w}");
            for (s, _) in rows {
                assert_eq!(eager.len(*s), graphed.len(*s), "wave {w}: slot {s} length");
            }
            let all: Vec<usize> = (0..slots).filter(|s| eager.len(*s) > 0).collect();
            let (pa, pb) = (probe(&m, &mut eager, &all), probe(&m, &mut graphed, &all));
            let kv = max_abs_diff(&pa, &pb) / pa.abs().max().double_value(&[]).max(1.0);
            assert!(
                kv <= 5e-2,
                "moe {moe} wave {w}: the next token's logits differ by {kv}"
            );
            match (&want.routed_experts, &got.routed_experts) {
                (Some(x), Some(y)) => {
                    assert_eq!(x.size(), y.size(), "wave {w}: experts' shape");
                    let same = x.eq_tensor(y).to_kind(Kind::Float).mean(Kind::Float);
                    let same = same.double_value(&[]);
                    // A near-tied expert choice may flip in bf16; padding positions are 0 in both.
                    assert!(
                        same >= 0.95,
                        "moe {moe} wave {w}: {same} of the experts agree"
                    );
                }
                (None, None) => assert!(!moe, "an MoE prefill without experts"),
                _ => panic!("wave {w}: routed experts on one path only"),
            }
        }
        let stats = dec.prefill_stats();
        assert_eq!(
            (stats.captures, stats.replays),
            (3, 4),
            "moe {moe}: three shapes captured, four prefills replayed, the long one eager"
        );
    }
}
