//! The fused prefill ([`spar_model::fused_prefill`]) against the plain cached forward: the same logits, cache
//! contents and routed experts over scattered slots, ragged turns appended to cached histories and a fresh
//! sequence beside them. On the CPU every fused kernel takes its torch fallback; on a GPU (when present) the
//! kernels run, and in bf16 both paths: the new tokens packed through flash attention and right-padded through
//! SDPA.

use crate::common::max_abs_diff;
use crate::graph_decode::cfg;
use spar_model::fused_layers::FusedLayers;
use spar_model::fused_prefill::{packs, prefill, prefill_with};
use spar_model::{ForwardInput, KvCache, Qwen3Model};
use tch::{Device, Kind, Tensor};

/// The plain cached forward of right-padded `rows` (slot, tokens): each row's last-token logits and the experts.
fn plain(
    m: &Qwen3Model,
    cache: &mut KvCache,
    rows: &[(usize, Vec<u32>)],
) -> (Tensor, Option<Tensor>) {
    let t = rows.iter().map(|(_, p)| p.len()).max().unwrap();
    let mut ids = vec![0i64; rows.len() * t];
    let mut mask = vec![0i64; rows.len() * t];
    for (i, (_, p)) in rows.iter().enumerate() {
        for (j, &tok) in p.iter().enumerate() {
            ids[i * t + j] = tok as i64;
            mask[i * t + j] = 1;
        }
    }
    let shape = [rows.len() as i64, t as i64];
    let ids = Tensor::from_slice(&ids).view(shape).to_device(m.device());
    let mask = Tensor::from_slice(&mask).view(shape).to_device(m.device());
    let slots: Vec<usize> = rows.iter().map(|(s, _)| *s).collect();
    cache.select_slots(&slots).unwrap();
    let out = m
        .forward(ForwardInput::new(&ids).mask(&mask).cache(cache))
        .unwrap();
    let last: Vec<Tensor> = rows
        .iter()
        .enumerate()
        .map(|(i, (_, p))| out.logits.get(i as i64).get(p.len() as i64 - 1))
        .collect();
    (Tensor::stack(&last, 0), out.routed_experts)
}

fn turn(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 37 + seed * 11) % 128)
        .collect()
}

/// The experts each row's own tokens chose (`[b, t, layers, k]`, rows right-padded to `t`).
fn row_experts(e: &Tensor, rows: &[(usize, Vec<u32>)]) -> Vec<Tensor> {
    rows.iter()
        .enumerate()
        .map(|(i, (_, p))| e.get(i as i64).narrow(0, 0, p.len() as i64))
        .collect()
}

fn check(device: Device, kind: Kind, tol: f64, packed: bool) {
    let _g = tch::no_grad_guard();
    for moe in [false, true] {
        let m = Qwen3Model::random(cfg(moe), device, kind, 5).unwrap();
        tch::no_grad(|| {
            for (_, mut v) in m.vs.variables() {
                let _ = v.f_mul_scalar_(4.0).unwrap();
            }
        });
        let fused = FusedLayers::new(&m).unwrap();
        let (slots, max_len) = (6, 64);
        let mut a = KvCache::new(&m.config, slots, max_len, device, kind);
        let mut b = KvCache::new(&m.config, slots, max_len, device, kind);
        // Prompts into scattered, unordered slots; then turns of ragged lengths appended to two of them next to
        // a fresh sequence; then one token each.
        let waves: [Vec<(usize, Vec<u32>)>; 3] = [
            vec![(4, turn(1, 9)), (1, turn(2, 5))],
            vec![(1, turn(3, 3)), (4, turn(4, 7)), (2, turn(5, 11))],
            vec![(2, turn(6, 1)), (4, turn(7, 1)), (1, turn(8, 1))],
        ];
        for (w, rows) in waves.iter().enumerate() {
            let (want, want_experts) = plain(&m, &mut a, rows);
            let spec: Vec<(usize, &[u32])> = rows.iter().map(|(s, p)| (*s, p.as_slice())).collect();
            let got = if rows[0].1.len() == 1 {
                // Decode (t = 1) reads what both prefills wrote: the plain forward over each cache.
                plain(&m, &mut b, rows).0
            } else {
                let out = prefill_with(&m, &fused, &mut b, &spec, packed).unwrap();
                match (&want_experts, &out.routed_experts) {
                    (Some(x), Some(y)) => {
                        for (i, (x, y)) in row_experts(x, rows)
                            .iter()
                            .zip(row_experts(y, rows))
                            .enumerate()
                        {
                            assert!(x.equal(&y), "wave {w} row {i}: routed experts differ");
                        }
                    }
                    (None, None) => {}
                    _ => panic!("wave {w}: routed experts on one path only"),
                }
                out.logits
            };
            let scale = want.abs().max().double_value(&[]).max(1.0);
            let diff = max_abs_diff(&want.to_kind(Kind::Float), &got.to_kind(Kind::Float)) / scale;
            assert!(
                diff <= tol,
                "{device:?} {kind:?} moe {moe} wave {w}: relative difference {diff}"
            );
            for (s, _) in rows {
                assert_eq!(a.len(*s), b.len(*s), "slot {s} length");
            }
        }
        // Errors a caller can make are refused with a message, not a panic.
        let long = turn(9, max_len);
        let e = prefill(&m, &fused, &mut b, &[(4, long.as_slice())])
            .err()
            .unwrap();
        assert!(format!("{e}").contains("KV cache overflow"), "{e}");
        let e = prefill(&m, &fused, &mut b, &[(0, &[1u32][..]), (0, &[2u32][..])])
            .err()
            .unwrap();
        assert!(format!("{e}").contains("listed twice"), "{e}");
    }
}

#[test]
fn fused_prefill_matches_the_plain_cached_forward_on_cpu() {
    check(Device::Cpu, Kind::Float, 1e-5, true);
}

#[test]
fn fused_prefill_matches_the_plain_cached_forward_on_gpu() {
    if !tch::Cuda::is_available() {
        eprintln!(
            "SKIP: needs a CUDA device (the fused kernels run there; the CPU test covers the fallbacks)"
        );
        return;
    }
    check(Device::Cuda(0), Kind::Float, 1e-4, true);
    // bf16: the fused norm/RoPE kernel rounds once where the composition rounds per op. Packed through flash
    // attention, then right-padded through SDPA.
    check(Device::Cuda(0), Kind::BFloat16, 5e-2, true);
    let m = Qwen3Model::random(cfg(false), Device::Cuda(0), Kind::BFloat16, 5).unwrap();
    assert!(
        packs(&m),
        "flash attention's varlen kernel refused a bf16 prefill on this GPU (see stderr)"
    );
    check(Device::Cuda(0), Kind::BFloat16, 5e-2, false);
}

/// The packed path over histories longer than flash attention's key and query tiles, slots out of order, a fresh
/// sequence beside them: the plain forward's logits.
#[test]
fn packed_prefill_over_long_histories_matches_the_plain_forward_on_gpu() {
    if !tch::Cuda::is_available() {
        eprintln!("SKIP: needs a CUDA device (flash attention's varlen kernel runs there only)");
        return;
    }
    let _g = tch::no_grad_guard();
    let (device, kind) = (Device::Cuda(0), Kind::BFloat16);
    let m = Qwen3Model::random(cfg(false), device, kind, 7).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in m.vs.variables() {
            let _ = v.f_mul_scalar_(4.0).unwrap();
        }
    });
    let fused = FusedLayers::new(&m).unwrap();
    let (slots, max_len) = (8, 1024);
    let mut a = KvCache::new(&m.config, slots, max_len, device, kind);
    let mut b = KvCache::new(&m.config, slots, max_len, device, kind);
    let waves: [Vec<(usize, Vec<u32>)>; 2] = [
        vec![(6, turn(1, 300)), (2, turn(2, 200))],
        vec![
            (2, turn(3, 150)),
            (6, turn(4, 90)),
            (5, turn(5, 400)),
            (0, turn(6, 1)),
        ],
    ];
    for (w, rows) in waves.iter().enumerate() {
        let (want, _) = plain(&m, &mut a, rows);
        let spec: Vec<(usize, &[u32])> = rows.iter().map(|(s, p)| (*s, p.as_slice())).collect();
        let got = prefill_with(&m, &fused, &mut b, &spec, true)
            .unwrap()
            .logits;
        let scale = want.abs().max().double_value(&[]).max(1.0);
        let diff = max_abs_diff(&want.to_kind(Kind::Float), &got.to_kind(Kind::Float)) / scale;
        assert!(diff <= 5e-2, "wave {w}: relative difference {diff}");
    }
    assert!(
        packs(&m),
        "flash attention's varlen kernel refused the prefill"
    );
}
