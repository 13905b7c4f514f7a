//! Parity of the fused kernels with their torch fallbacks (GPU tests skip with a reason on CPU-only machines).

use spar_kernels::decode_ops::DecodeAttentionKernel;
use spar_kernels::rms_norm::rms_norm_aten;
use spar_kernels::{rms_norm, rms_norm_torch};
use tch::{Device, Kind, Tensor};

#[test]
fn rms_norm_cpu_matches_formula() {
    let _one_at_a_time = GPU.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(0);
    let x = Tensor::randn([3, 5, 64], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([64], (Kind::Float, Device::Cpu));
    let y = rms_norm(&x, &w, 1e-6).unwrap();
    let xd = x.to_kind(Kind::Double);
    let want = &w.to_kind(Kind::Double)
        * (&xd / (xd.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Double) + 1e-6).sqrt());
    let d = (y.to_kind(Kind::Double) - want)
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-5, "{d}");
}

/// Values and gradients (of x and of the weight) of `f(x, w)` under a fixed upstream gradient.
fn norm_with_grads(
    f: impl Fn(&Tensor, &Tensor) -> Tensor,
    x: &Tensor,
    w: &Tensor,
) -> (Tensor, Tensor, Tensor) {
    let x = x.detach().set_requires_grad(true);
    let w = w.detach().set_requires_grad(true);
    let y = f(&x, &w);
    let up = Tensor::randn(y.size(), (Kind::Float, y.device())).to_kind(y.kind());
    let g = Tensor::run_backward(&[(&y * &up).sum(Kind::Float)], &[&x, &w], false, false);
    (y.detach(), g[0].shallow_clone(), g[1].shallow_clone())
}

/// The max over the three outputs of |a - b| / max|b|.
fn worst_relative(a: &(Tensor, Tensor, Tensor), b: &(Tensor, Tensor, Tensor)) -> f64 {
    [(&a.0, &b.0), (&a.1, &b.1), (&a.2, &b.2)]
        .iter()
        .map(|(p, q)| {
            let (p, q) = (p.to_kind(Kind::Float), q.to_kind(Kind::Float));
            (p - &q).abs().max().double_value(&[]) / q.abs().max().double_value(&[]).max(1e-30)
        })
        .fold(0.0, f64::max)
}

#[test]
fn aten_rms_norm_is_the_composition_bit_for_bit_on_cpu() {
    let _one_at_a_time = GPU.lock().unwrap_or_else(|e| e.into_inner());
    for kind in [Kind::Float, Kind::BFloat16] {
        tch::manual_seed(0);
        let x = (Tensor::randn([3, 5, 64], (Kind::Float, Device::Cpu)) * 3.0).to_kind(kind);
        let w = (Tensor::randn([64], (Kind::Float, Device::Cpu)) * 0.1 + 1.0).to_kind(kind);
        tch::manual_seed(7);
        let aten = norm_with_grads(|x, w| rms_norm_aten(x, w, 1e-6).unwrap(), &x, &w);
        tch::manual_seed(7);
        let torch = norm_with_grads(|x, w| rms_norm_torch(x, w, 1e-6).unwrap(), &x, &w);
        assert_eq!(aten.0.kind(), kind);
        assert_eq!(worst_relative(&aten, &torch), 0.0, "{kind:?}");
    }
}

#[test]
fn aten_rms_norm_matches_the_composition_with_gradients_on_gpu() {
    let Some(_gpu) = gpu_or_skip("ATen's fused RMSNorm") else {
        return;
    };
    let dev = Device::Cuda(0);
    // fp32: summation order only; bf16: the inputs of the weight multiply may be one rounding step apart.
    for (kind, tol) in [(Kind::Float, 1e-5), (Kind::BFloat16, 2.0 / 128.0)] {
        for h in [128i64, 1024, 5120] {
            tch::manual_seed(0);
            let x = (Tensor::randn([7, 33, h], (Kind::Float, dev)) * 3.0).to_kind(kind);
            let w = (Tensor::randn([h], (Kind::Float, dev)) * 0.1 + 1.0).to_kind(kind);
            tch::manual_seed(7);
            let aten = norm_with_grads(|x, w| rms_norm(x, w, 1e-6).unwrap(), &x, &w);
            tch::manual_seed(7);
            let torch = norm_with_grads(|x, w| rms_norm_torch(x, w, 1e-6).unwrap(), &x, &w);
            let d = worst_relative(&aten, &torch);
            eprintln!("{kind:?} h={h}: worst relative difference (value, dx, dw) {d:.2e}");
            assert!(d <= tol, "{kind:?} h={h}: {d}");
        }
    }
}

/// Tests run one at a time under this lock: a CUDA-graph capture registers torch's global CUDA generator, so a
/// random op on another test thread during capture fails; and a test that seeds torch's global generator and then
/// draws would draw other numbers if another thread drew in between (CPU tests too: that flipped a bf16 argmax
/// now and then).
static GPU: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The file's GPU lock, or None where libtorch sees no CUDA device (after printing that `what` is tested on the
/// GPU machine).
fn gpu_or_skip(what: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    let guard = GPU.lock().unwrap_or_else(|e| e.into_inner());
    if !tch::Cuda::is_available() {
        eprintln!("SKIP: no CUDA device visible to libtorch; {what} is tested on the GPU machine");
        return None;
    }
    Some(guard)
}

#[test]
fn fused_rms_norm_matches_torch_on_gpu() {
    let Some(_gpu) = gpu_or_skip("the fused RMSNorm kernel") else {
        return;
    };
    let dev = Device::Cuda(0);
    let _g = tch::no_grad_guard();
    for (kind, rel) in [(Kind::Float, 1e-6), (Kind::BFloat16, 1.0 / 128.0)] {
        for h in [128i64, 1000, 2048, 5120] {
            let x = Tensor::randn([7, 33, h], (Kind::Float, dev)).to_kind(kind) * 3.0;
            let w = (Tensor::randn([h], (Kind::Float, dev)) * 0.1 + 1.0).to_kind(kind);
            let fused = spar_kernels::rms_norm::fused(&x, &w, 1e-6)
                .unwrap()
                .expect("fused kernel should apply on CUDA under no_grad");
            let torch = rms_norm_torch(&x, &w, 1e-6).unwrap();
            let d = (fused.to_kind(Kind::Float) - torch.to_kind(Kind::Float))
                .abs()
                .max()
                .double_value(&[]);
            let same = fused
                .eq_tensor(&torch)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[]);
            // fp32: summation order only; bf16: at most one rounding step (2^-7 relative) apart.
            let tol = rel * torch.to_kind(Kind::Float).abs().max().double_value(&[]);
            eprintln!("{kind:?} h={h}: max abs diff {d:.2e}, bit-identical fraction {same:.4}");
            assert!(d <= tol, "{kind:?} h={h}: fused differs by {d}");
        }
    }
}

#[test]
fn cuda_graph_replays_captured_torch_work_on_gpu() {
    use spar_kernels::cuda_graph::{self, CudaGraph};
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    if !tch::Cuda::is_available() || !cuda_graph::available() {
        eprintln!(
            "SKIP: CUDA graphs need a CUDA device and a build with the shim (cuda {}, shim {})",
            tch::Cuda::is_available(),
            cuda_graph::available()
        );
        return;
    }
    let dev = Device::Cuda(0);
    let _g = tch::no_grad_guard();
    let x = Tensor::zeros([4, 256], (Kind::Float, dev));
    let w = Tensor::randn([256, 256], (Kind::Float, dev));
    let body = || -> anyhow::Result<Tensor> { Ok(x.matmul(&w).relu() * 2.0 + 1.0) };
    let _ = cuda_graph::on_side_stream(0, body).unwrap();
    let (graph, y) = CudaGraph::capture(0, None, body).unwrap();
    // A second graph sharing the first one's pool, with its own output.
    let (graph2, y2) = CudaGraph::capture(0, Some(graph.pool().unwrap()), || Ok(&x + 5.0)).unwrap();
    for i in 0..3 {
        let input = Tensor::randn([4, 256], (Kind::Float, dev)) * (i + 1) as f64;
        x.shallow_clone().copy_(&input);
        graph.replay().unwrap();
        let want = input.matmul(&w).relu() * 2.0 + 1.0;
        let d = (&y - &want).abs().max().double_value(&[]);
        assert!(
            d < 1e-3,
            "replay {i}: graph output differs from eager by {d}"
        );
        graph2.replay().unwrap();
        let d2 = (&y2 - (&input + 5.0)).abs().max().double_value(&[]);
        assert!(d2 == 0.0, "replay {i}: second graph differs by {d2}");
    }
    // A body that torch refuses during capture (a copy from pageable host memory) is an error, and the
    // stream is usable afterwards. (Host syncs instead invalidate the capture, which torch does not recover
    // its CUDA generator from: see cuda_graph's module documentation.)
    let bad = CudaGraph::capture(0, None, || {
        let host = Tensor::from_slice(&[1.0f32, 2.0]);
        Ok(host.f_to_device(dev)?)
    });
    assert!(
        bad.is_err(),
        "a pageable host-to-device copy inside capture must fail"
    );
    let _ = Tensor::randn([4], (Kind::Float, dev)); // the CUDA generator still works
    let after = (&x * 1.0).sum(Kind::Float).double_value(&[]);
    assert!(after.is_finite());
}

/// The decode-attention kernel against SDPA with a key-length mask (its torch fallback), over head sizes,
/// grouped-query ratios that fill one, several and a partial group of four query heads, and rows of lengths
/// from 1 to the whole cache width.
#[test]
fn decode_attention_matches_masked_sdpa_on_gpu() {
    let Some(_gpu) = gpu_or_skip("decode attention") else {
        return;
    };
    let dev = Device::Cuda(0);
    let _g = tch::no_grad_guard();
    let (r, slots, width) = (5i64, 7i64, 300i64);
    let lens = [1i64, 300, 67, 130, 2];
    for (kind, tol) in [(Kind::Float, 2e-5), (Kind::BFloat16, 2e-2)] {
        for (nh, nkv, d) in [
            (16i64, 8i64, 128i64),
            (32, 4, 128),
            (64, 4, 64),
            (4, 4, 32),
            (12, 2, 256),
        ] {
            let q = Tensor::randn([r, nh, d], (Kind::Float, dev)).to_kind(kind);
            let kc = Tensor::randn([slots, width, nkv, d], (Kind::Float, dev)).to_kind(kind);
            let vc = Tensor::randn([slots, width, nkv, d], (Kind::Float, dev)).to_kind(kind);
            let key_len = Tensor::from_slice(&lens).to_device(dev);
            // One block per head group (the output written directly), and the keys split over 2 and 3 blocks.
            // Heads per block: 2 (16/8; 12/2 in three groups), 4 (32/4; 64/4 in four groups), 1 (4/4; 6/2 in three).
            // Every kernel: registers, asynchronous copies (bf16, d 64 / 128; the register kernel elsewhere), and
            // those copies folded two keys at a time (the same shapes but four heads of 128).
            let got: Vec<(i64, DecodeAttentionKernel, Tensor)> = [1, 2, 3]
                .iter()
                .flat_map(|&splits| {
                    [
                        DecodeAttentionKernel::Registers,
                        DecodeAttentionKernel::Async,
                        DecodeAttentionKernel::Halves,
                    ]
                    .map(|kernel| (splits, kernel))
                })
                .map(|(splits, kernel)| {
                    let out = spar_kernels::decode_ops::decode_attention_split(
                        &q, &kc, &vc, &key_len, nkv, width, splits, kernel, None,
                    )
                    .unwrap()
                    .expect("the kernel applies on CUDA under no_grad");
                    (splits, kernel, out)
                })
                .collect();
            // The splits merged by the last block to finish (arrival counters) equal the merge kernel's output
            // bit for bit (the same sums), and the counters were used.
            let arrivals_len = spar_kernels::decode_ops::decode_attention_arrivals(r, nh, nkv);
            for (splits, kernel, by_kernel) in got.iter().filter(|g| g.0 > 1) {
                let arrivals = Tensor::zeros([arrivals_len], (Kind::Int, dev));
                let merged = spar_kernels::decode_ops::decode_attention_split(
                    &q,
                    &kc,
                    &vc,
                    &key_len,
                    nkv,
                    width,
                    *splits,
                    *kernel,
                    Some(&arrivals),
                )
                .unwrap()
                .expect("the kernel applies");
                let what = format!("{kind:?} nh={nh} nkv={nkv} d={d} splits={splits} {kernel:?}");
                assert!(
                    merged.equal(by_kernel),
                    "{what}: the in-kernel merge differs from the merge kernel"
                );
                assert!(
                    arrivals.eq(*splits).all().int64_value(&[]) == 1,
                    "{what}: every (row, KV head, group) should count {splits} arrivals: {arrivals:?}"
                );
            }
            let n_rep = nh / nkv;
            let k = kc.narrow(0, 0, r).transpose(1, 2); // [r, nkv, width, d]
            let v = vc.narrow(0, 0, r).transpose(1, 2);
            let hidden = Tensor::arange(width, (Kind::Int64, dev))
                .view([1, 1, 1, width])
                .ge_tensor(&key_len.view([r, 1, 1, 1]));
            let mask = Tensor::zeros([r, 1, 1, width], (kind, dev))
                .masked_fill(&hidden, f64::NEG_INFINITY);
            let want = Tensor::scaled_dot_product_attention(
                &q.reshape([r, nkv, n_rep, d]),
                &k,
                &v,
                Some(&mask),
                0.0,
                false,
                None,
                false,
            )
            .reshape([r, nh, d]);
            for (splits, kernel, got) in &got {
                let diff = (got.to_kind(Kind::Float) - want.to_kind(Kind::Float))
                    .abs()
                    .max()
                    .double_value(&[]);
                let what = format!("{kind:?} nh={nh} nkv={nkv} d={d} splits={splits} {kernel:?}");
                eprintln!("{what}: max abs diff {diff:.2e}");
                assert!(diff <= tol, "{what}: kernel differs from SDPA by {diff}");
            }
            // A key window padded past the longest row (CUDA graphs capture windows by octaves) splits each
            // row's own keys the same way: the same result, bit for bit, as the tightest window.
            let short = Tensor::from_slice(&[1i64, 130, 67, 129, 2]).to_device(dev);
            for kernel in [DecodeAttentionKernel::Async, DecodeAttentionKernel::Halves] {
                let at = |window: i64| {
                    spar_kernels::decode_ops::decode_attention_split(
                        &q, &kc, &vc, &short, nkv, window, 2, kernel, None,
                    )
                    .unwrap()
                    .expect("the kernel applies")
                };
                let (tight, padded) = (at(160), at(width));
                assert!(
                    tight.equal(&padded),
                    "{kind:?} nh={nh} nkv={nkv} d={d} {kernel:?}: a padded key window changed the result"
                );
            }
        }
    }
}

/// The decode step's fused residual add + RMSNorm against `x + y` and the torch RMSNorm, a warp a row (h of 256 to
/// 2048) and a block a row (other sizes): the sum bit for bit, the norm within summation order.
#[test]
fn fused_add_rms_norm_matches_torch_on_gpu() {
    let Some(_gpu) = gpu_or_skip("the fused add + RMSNorm") else {
        return;
    };
    let dev = Device::Cuda(0);
    let _g = tch::no_grad_guard();
    for (kind, rel) in [(Kind::Float, 1e-6), (Kind::BFloat16, 1.0 / 128.0)] {
        // Rows of 256-2048 run a warp a row (a block a warp); other sizes a block a row.
        for (rows, h) in [
            (3i64, 64i64),
            (3, 1000),
            (3, 1024),
            (3, 2048),
            (3, 4096),
            (67, 256),
            (67, 512),
            (67, 1024),
        ] {
            let x = Tensor::randn([rows, 1, h], (Kind::Float, dev)).to_kind(kind);
            let y = Tensor::randn([rows, 1, h], (Kind::Float, dev)).to_kind(kind);
            let w = (Tensor::randn([h], (Kind::Float, dev)) * 0.1 + 1.0).to_kind(kind);
            let (sum, norm) = spar_kernels::decode_ops::add_rms_norm(&x, &y, &w, 1e-6).unwrap();
            let want_sum = &x + &y;
            assert!(
                sum.equal(&want_sum),
                "{kind:?} h={h}: the residual sum differs"
            );
            let want = rms_norm_torch(&want_sum, &w, 1e-6).unwrap();
            let d = (norm.to_kind(Kind::Float) - want.to_kind(Kind::Float))
                .abs()
                .max()
                .double_value(&[]);
            let tol = rel * want.to_kind(Kind::Float).abs().max().double_value(&[]);
            eprintln!("{kind:?} h={h}: norm max abs diff {d:.2e}");
            assert!(d <= tol, "{kind:?} h={h}: fused norm differs by {d}");
        }
    }
}

/// RoPE's rotate-half of the last dimension: `[-x2, x1]`.
fn rotate_half(x: &Tensor) -> Tensor {
    let d = *x.size().last().unwrap();
    let (a, b) = (x.narrow(-1, 0, d / 2), x.narrow(-1, d / 2, d / 2));
    Tensor::cat(&[&b.neg(), &a], -1)
}

/// The decode step's q/k norm + RoPE + cache store, warp a head and block a head, against the torch composition
/// (per-head RMSNorm, `y cos + rotate_half(y) sin`, the keys and values at their cache rows): queries and keys
/// within summation order (fp32) or one rounding (bf16), values bit for bit, other cache rows untouched.
#[test]
fn qk_norm_rope_store_matches_the_composition_on_gpu() {
    let Some(_gpu) = gpu_or_skip("the fused q/k norm + RoPE + KV store") else {
        return;
    };
    let dev = Device::Cuda(0);
    let _g = tch::no_grad_guard();
    for (kind, rel) in [(Kind::Float, 2e-6), (Kind::BFloat16, 1.0 / 64.0)] {
        for (nh, nkv, d) in [
            (16i64, 8i64, 128i64),
            (4, 2, 32),
            (8, 2, 64),
            (4, 4, 256),
            (2, 1, 48),
        ] {
            let r = 37i64;
            let (slots, width) = (r + 3, 5i64);
            let qkv =
                (Tensor::randn([r, (nh + 2 * nkv) * d], (Kind::Float, dev)) * 2.0).to_kind(kind);
            let qw = (Tensor::randn([d], (Kind::Float, dev)) * 0.1 + 1.0).to_kind(kind);
            let kw = (Tensor::randn([d], (Kind::Float, dev)) * 0.1 + 1.0).to_kind(kind);
            let angle = Tensor::rand([r, d / 2], (Kind::Float, dev)) * 50.0;
            let angle = Tensor::cat(&[&angle, &angle], -1);
            let (cos, sin) = (angle.cos().to_kind(kind), angle.sin().to_kind(kind));
            // Row i writes flat cache row (i + 2) * width + 1 of [slots * width, nkv, d].
            let write_at = (Tensor::arange(r, (Kind::Int64, dev)) + 2) * width + 1;
            let norm_rope = |x: &Tensor, w: &Tensor| {
                let y = rms_norm_torch(x, w, 1e-6).unwrap();
                y.shallow_clone() * cos.unsqueeze(1) + rotate_half(&y) * sin.unsqueeze(1)
            };
            let want_q = norm_rope(&qkv.narrow(1, 0, nh * d).reshape([r, nh, d]), &qw);
            let want_k = norm_rope(&qkv.narrow(1, nh * d, nkv * d).reshape([r, nkv, d]), &kw);
            let want_v = qkv.narrow(1, (nh + nkv) * d, nkv * d).reshape([r, nkv, d]);
            let tol = |want: &Tensor| rel * want.to_kind(Kind::Float).abs().max().double_value(&[]);
            let diff = |a: &Tensor, b: &Tensor| {
                (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
                    .abs()
                    .max()
                    .double_value(&[])
            };
            let mut outs = Vec::new();
            for per_warp in [true, false] {
                let kc = Tensor::full([slots, width, nkv, d], 7.0, (kind, dev));
                let vc = Tensor::full([slots, width, nkv, d], 7.0, (kind, dev));
                let q = spar_kernels::decode_ops::qk_norm_rope_store_with(
                    &qkv,
                    (&qw, &kw),
                    (&cos, &sin),
                    &write_at,
                    (&kc, &vc),
                    (nh, nkv, d),
                    1e-6,
                    per_warp,
                )
                .unwrap()
                .expect("the fused kernel should apply on CUDA under no_grad");
                let flat = |c: &Tensor| c.view([slots * width, nkv, d]).index_select(0, &write_at);
                let (k, v) = (flat(&kc), flat(&vc));
                let (dq, dk) = (diff(&q, &want_q), diff(&k, &want_k));
                eprintln!(
                    "{kind:?} ({nh}, {nkv}, {d}) per_warp={per_warp}: q {dq:.2e}, k {dk:.2e}"
                );
                assert!(
                    dq <= tol(&want_q),
                    "{kind:?} d={d} per_warp={per_warp}: q differs by {dq}"
                );
                assert!(
                    dk <= tol(&want_k),
                    "{kind:?} d={d} per_warp={per_warp}: k differs by {dk}"
                );
                assert!(
                    v.equal(&want_v),
                    "{kind:?} d={d} per_warp={per_warp}: v differs"
                );
                // Every other cache row still holds its fill.
                let written = kc
                    .view([slots * width, nkv, d])
                    .ne(7.0)
                    .any_dim(-1, false)
                    .any_dim(-1, false);
                assert_eq!(
                    written.sum(Kind::Int64).int64_value(&[]),
                    r,
                    "{kind:?} d={d}: rows outside write_at were written"
                );
                outs.push(q);
            }
            let dwb = diff(&outs[0], &outs[1]);
            eprintln!("{kind:?} ({nh}, {nkv}, {d}): warp vs block {dwb:.2e}");
        }
    }
}

#[test]
fn skinny_linear_declines_cpu_and_linear_falls_back() {
    let _one_at_a_time = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let _g = tch::no_grad_guard();
    let x = Tensor::randn([2, 1, 64], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([48, 64], (Kind::Float, Device::Cpu));
    assert!(
        spar_kernels::decode_ops::skinny_linear(&x, &w)
            .unwrap()
            .is_none()
    );
    let y = spar_kernels::decode_ops::linear(&x, &w).unwrap();
    assert!(y.equal(&x.linear(&w, None::<Tensor>)));
}

/// The skinny decode projection against cuBLAS's `linear` and an fp64 reference, at every row count it takes,
/// on the 0.6B shape's projections (qkv, o, gate_up, down, the tied LM head) and odd small ones; and it declines
/// what it does not take.
#[test]
fn skinny_linear_matches_linear_on_gpu() {
    let Some(_gpu) = gpu_or_skip("the skinny linear kernel") else {
        return;
    };
    use spar_kernels::decode_ops::{SKINNY_MAX_ROWS, skinny_linear};
    let dev = Device::Cuda(0);
    let _g = tch::no_grad_guard();
    let shapes = [
        (4096i64, 1024i64),
        (1024, 2048),
        (6144, 1024),
        (1024, 3072),
        (151_936, 1024),
        (5, 16),
        (37, 264),
    ];
    for kind in [Kind::Float, Kind::BFloat16] {
        for &(n, k) in &shapes {
            let w = (Tensor::randn([n, k], (Kind::Float, dev)) * 0.05).to_kind(kind);
            let w64 = w.to_kind(Kind::Double);
            for rows in 1..=SKINNY_MAX_ROWS {
                let x = Tensor::randn([rows, 1, k], (Kind::Float, dev)).to_kind(kind);
                let got = skinny_linear(&x, &w).unwrap().unwrap_or_else(|| {
                    panic!("{kind:?} {rows}x{k} by {n}: the kernel should apply")
                });
                assert_eq!(got.size(), [rows, 1, n]);
                let cublas = x.linear(&w, None::<Tensor>);
                let exact = x.to_kind(Kind::Double).linear(&w64, None::<Tensor>);
                let err = |t: &Tensor| {
                    (t.to_kind(Kind::Double) - &exact)
                        .abs()
                        .max()
                        .double_value(&[])
                };
                let (e_got, e_cublas) = (err(&got), err(&cublas));
                let scale = exact.abs().max().double_value(&[]);
                // fp32: summation order only. bf16: one rounding of the fp32 sum to bf16 (2^-8 relative), as
                // cuBLAS rounds; both are measured against the fp64 product.
                let tol = match kind {
                    Kind::Float => 1e-5 * scale + 2.0 * e_cublas,
                    _ => scale / 256.0 + e_cublas,
                };
                if rows == 1 || rows == SKINNY_MAX_ROWS {
                    eprintln!(
                        "{kind:?} {rows}x{k} by {n}: max error {e_got:.2e} (cuBLAS {e_cublas:.2e}, scale {scale:.2e})"
                    );
                }
                assert!(
                    e_got <= tol,
                    "{kind:?} {rows}x{k} by {n}: error {e_got} vs cuBLAS {e_cublas}"
                );
            }
        }
        // Declined: too many rows, a width not a multiple of 16 bytes, a transposed (non-contiguous) weight.
        let w = Tensor::randn([64, 64], (Kind::Float, dev)).to_kind(kind);
        let many = Tensor::randn([SKINNY_MAX_ROWS + 1, 64], (Kind::Float, dev)).to_kind(kind);
        assert!(skinny_linear(&many, &w).unwrap().is_none());
        let odd = Tensor::randn([2, 6], (Kind::Float, dev)).to_kind(kind);
        let w_odd = Tensor::randn([64, 6], (Kind::Float, dev)).to_kind(kind);
        assert!(skinny_linear(&odd, &w_odd).unwrap().is_none());
        let x = Tensor::randn([2, 64], (Kind::Float, dev)).to_kind(kind);
        assert!(skinny_linear(&x, &w.tr()).unwrap().is_none());
    }
}

#[test]
fn skinny_linear_early_weights_variant_equals_the_plain_kernel_bit_for_bit_on_gpu() {
    let Some(_gpu) = gpu_or_skip("the skinny linear kernel") else {
        return;
    };
    use spar_kernels::decode_ops::{SKINNY_MAX_ROWS, skinny_linear_with};
    let dev = Device::Cuda(0);
    let _g = tch::no_grad_guard();
    // The 0.6B shape's projections (k = 3072 takes two rounds of weight loads, the first before the wait), a
    // row narrower than one vector a lane (k = 16: lanes past it skip the loop), and an odd width.
    for kind in [Kind::Float, Kind::BFloat16] {
        for &(n, k) in &[
            (4096i64, 1024i64),
            (1024, 2048),
            (1024, 3072),
            (5, 16),
            (37, 264),
        ] {
            let w = (Tensor::randn([n, k], (Kind::Float, dev)) * 0.05).to_kind(kind);
            for rows in 1..=SKINNY_MAX_ROWS {
                let x = Tensor::randn([rows, 1, k], (Kind::Float, dev)).to_kind(kind);
                let plain = skinny_linear_with(&x, &w, false).unwrap().unwrap();
                let early = skinny_linear_with(&x, &w, true).unwrap().unwrap();
                assert!(
                    plain.equal(&early),
                    "{kind:?} {rows}x{k} by {n}: the variants differ by {}",
                    (plain.to_kind(Kind::Double) - early.to_kind(Kind::Double))
                        .abs()
                        .max()
                        .double_value(&[])
                );
            }
        }
    }
}

/// The in-graph greedy pick against torch: the first maximum (as `argmax`, ties included) and its fp32
/// log-softmax log-prob.
#[test]
fn greedy_pick_matches_argmax_and_log_softmax_on_gpu() {
    let Some(_gpu) = gpu_or_skip("the greedy pick") else {
        return;
    };
    let dev = Device::Cuda(0);
    let _g = tch::no_grad_guard();
    // 1 and 6 rows: each row split over blocks, then merged (the tie below spans two blocks); 40: a block a row.
    for (kind, r) in [Kind::Float, Kind::BFloat16]
        .into_iter()
        .flat_map(|k| [(k, 1i64), (k, 6), (k, 40)])
    {
        let v = 151_936i64;
        let x = (Tensor::randn([r, v], (Kind::Float, dev)) * 3.0).to_kind(kind);
        // Row 1 (row 0 when alone): two equal maxima; the first one wins, as with argmax.
        let tied = r.min(2) - 1;
        let _ = x.get(tied).narrow(0, 70_000, 1).fill_(50.0);
        let _ = x.get(tied).narrow(0, 90_000, 1).fill_(50.0);
        let out = Tensor::zeros([2, r], (Kind::Double, dev));
        assert!(spar_kernels::decode_ops::greedy_pick_into(&x, &out).unwrap());
        let xf = x.to_kind(Kind::Float);
        let ids = xf.argmax(-1, false);
        let lp = xf
            .log_softmax(-1, Kind::Float)
            .gather(-1, &ids.unsqueeze(-1), false)
            .squeeze_dim(-1);
        let got_ids = out.get(0).to_kind(Kind::Int64);
        assert!(got_ids.equal(&ids), "{kind:?}: {got_ids:?} vs {ids:?}");
        assert_eq!(got_ids.int64_value(&[tied]), 70_000);
        let d = (out.get(1).to_kind(Kind::Float) - lp)
            .abs()
            .max()
            .double_value(&[]);
        eprintln!("{kind:?}, {r} rows: greedy log-prob max abs diff {d:.2e}");
        assert!(d < 1e-4, "{kind:?}, {r} rows: log-probs differ by {d}");
    }
}

/// The fused temperature pick against an fp64 inverse CDF of `softmax(x / t)`: each sampled token is a valid pick
/// for its uniform up to the fp32 sums' rounding (the target lies within its token's cumulative interval, 1e-5 of
/// the total), the token has mass, greedy rows take the first maximum, and the log-prob is `log_softmax(x / tl)`
/// at the token. Where the target lies more than that tolerance inside the composition's token's interval, both
/// summation orders must take the same token (most rows of peaked logits, as in a trained model); nearer a
/// boundary (flat logits: ~150k comparable tokens, or a uniform near 0 or 1) the pick may step to a neighbour.
#[test]
fn temperature_pick_is_an_inverse_cdf_pick_on_gpu() {
    let Some(_gpu) = gpu_or_skip("the temperature pick") else {
        return;
    };
    let dev = Device::Cuda(0);
    let _g = tch::no_grad_guard();
    tch::manual_seed(7);
    let v = 151_936i64;
    let temps = [1.0f32, 0.7, 1.3, 0.0, 1.0, 1.0, 0.5, 2.0];
    let lp_temps = [1.0f32, 0.7, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0];
    let r = temps.len() as i64;
    let mut exact_rows = 0;
    let mut neighbours = 0;
    for kind in [Kind::Float, Kind::BFloat16] {
        for (trial, scale) in [3.0, 3.0, 12.0, 12.0, 12.0].into_iter().enumerate() {
            let x = (Tensor::randn([r, v], (Kind::Float, dev)) * scale).to_kind(kind);
            let mut uniforms: Vec<f32> = (0..r)
                .map(|i| ((i * 7 + trial as i64 * 13) % 97) as f32 / 97.0)
                .collect();
            uniforms[0] = 0.0;
            uniforms[1] = 0.999_999_9;
            let params: Vec<f32> = temps
                .iter()
                .chain(&lp_temps)
                .chain(&uniforms)
                .copied()
                .collect();
            let params = Tensor::from_slice(&params).view([3, r]).to_device(dev);
            // A block a row (as below 32 rows), and each row split over 4 or 16 blocks (as from 32 rows).
            let parts = [1i64, 4, 16][trial % 3];
            let out = Tensor::zeros([2, r], (Kind::Double, dev));
            assert!(
                spar_kernels::decode_ops::temperature_pick_into_parts(&x, &params, &out, parts)
                    .unwrap()
            );
            let got = out.get(0).to_kind(Kind::Int64);
            let xf = x.to_kind(Kind::Float);
            // The composition (model/src/temperature_sampling.rs), for the exact comparison of peaked rows.
            let t_col = params.get(0).unsqueeze(-1);
            let safe_t = t_col.where_scalarother(&t_col.gt(0.0), 1.0);
            let cum32 = (&xf / &safe_t)
                .softmax(-1, Kind::Float)
                .cumsum(-1, Kind::Float);
            let target32 = cum32.select(-1, v - 1).unsqueeze(-1) * params.get(2).unsqueeze(-1);
            let composed = cum32
                .le_tensor(&target32)
                .sum_dim_intlist([-1i64].as_slice(), false, Kind::Int64)
                .clamp_max(v - 1);
            // fp64 cumulative mass of the same fp32 quotients.
            let p64 = (&xf / &safe_t)
                .to_kind(Kind::Double)
                .softmax(-1, Kind::Double);
            let cum64 = p64.cumsum(-1, Kind::Double);
            let lp = (&xf / params.get(1).unsqueeze(-1)).log_softmax(-1, Kind::Float);
            let argmax = xf.argmax(-1, false);
            for i in 0..r {
                let tok = got.int64_value(&[i]);
                let want_lp = lp.double_value(&[i, tok]);
                let got_lp = out.double_value(&[1, i]);
                assert!(
                    (got_lp - want_lp).abs() < 1e-4,
                    "{kind:?} trial {trial} parts {parts} row {i}: log-prob {got_lp} vs {want_lp}"
                );
                if temps[i as usize] <= 0.0 {
                    assert_eq!(
                        tok,
                        argmax.int64_value(&[i]),
                        "{kind:?} row {i}: greedy must take the argmax"
                    );
                    continue;
                }
                let u = uniforms[i as usize] as f64;
                let incl = cum64.double_value(&[i, tok]);
                let excl = incl - p64.double_value(&[i, tok]);
                assert!(
                    p64.double_value(&[i, tok]) > 0.0,
                    "{kind:?} row {i}: token {tok} has no mass"
                );
                assert!(
                    excl <= u + 1e-5 && u - 1e-5 < incl,
                    "{kind:?} trial {trial} parts {parts} row {i} u={u}: token {tok} covers [{excl}, {incl})"
                );
                let want = composed.int64_value(&[i]);
                let want_incl = cum64.double_value(&[i, want]);
                let want_excl = want_incl - p64.double_value(&[i, want]);
                if u - want_excl > 1e-5 && want_incl - u > 1e-5 {
                    assert_eq!(
                        tok, want,
                        "{kind:?} trial {trial} parts {parts} row {i} u={u}: the target is inside token {want}'s interval"
                    );
                    exact_rows += 1;
                } else if tok != want {
                    neighbours += 1;
                }
            }
        }
    }
    eprintln!(
        "temperature pick: {exact_rows} rows away from a boundary matched exactly, {neighbours} near one took a \
         neighbour"
    );
    // 70 sampling rows; the peaked trials' 30 with a uniform away from 0 and 1 mostly land well inside a
    // token's interval, the flat trials' rarely (an interval there is ~7e-6 of the mass).
    assert!(
        exact_rows >= 20,
        "only {exact_rows} rows were compared exactly"
    );
}

/// The fused LM-head log-prob at the real vocabulary: the CUDA epilogue kernels against the ATen epilogue and
/// against the whole-logits composition (log-probs, entropy, argmax, gradients w.r.t. hidden and weight through
/// both outputs), float32 and bf16, temperature 0.7, chunks that do not divide the tokens. On the CPU the ATen
/// epilogue alone runs (the kernels need CUDA), checked against the composition.
#[test]
fn fused_logprob_kernels_match_aten_and_whole_logits() {
    use spar_kernels::fused_logprob::{available, fused_linear_logprob};
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    if !available() {
        eprintln!("SKIP: no fused log-prob shim in this build");
        return;
    }
    let cuda = tch::Cuda::is_available();
    let dev = if cuda { Device::Cuda(0) } else { Device::Cpu };
    let chunk = if cuda { 128 } else { 7 };
    let (n, h, v) = if cuda {
        (300, 256, 151_936)
    } else {
        (45, 16, 301)
    };
    let temp = 0.7;
    for kind in [Kind::Float, Kind::BFloat16] {
        tch::manual_seed(5);
        let hidden0 = (Tensor::randn([n, h], (Kind::Float, dev)) * 2.0).to_kind(kind);
        let weight0 = (Tensor::randn([v, h], (Kind::Float, dev)) / (h as f64).sqrt()).to_kind(kind);
        let targets = Tensor::randint(v, [n], (Kind::Int64, dev));
        let w1 = Tensor::linspace(-1.0, 2.0, n, (Kind::Float, dev));
        let w2 = Tensor::linspace(0.5, -0.7, n, (Kind::Float, dev));
        // (logp, entropy, argmax, grad hidden, grad weight) of one path.
        let run = |path: &str| -> Vec<Tensor> {
            let hd = hidden0.detach().copy().set_requires_grad(true);
            let wt = weight0.detach().copy().set_requires_grad(true);
            let (lp, ent, am) = if path == "whole" {
                let z = hd.linear(&wt, None::<Tensor>).to_kind(Kind::Float) / temp;
                let all = z.log_softmax(-1, Kind::Float);
                let lp = all
                    .gather(-1, &targets.unsqueeze(-1), false)
                    .squeeze_dim(-1);
                let ent =
                    -(all.exp() * &all).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
                (lp, ent, all.argmax(-1, false))
            } else {
                let o = fused_linear_logprob(
                    &hd,
                    &wt,
                    &targets,
                    temp,
                    chunk,
                    true,
                    true,
                    path == "kernels",
                )
                .unwrap();
                (o.logp, o.entropy.unwrap(), o.argmax.unwrap())
            };
            ((&lp * &w1).sum(Kind::Float) + (&ent * &w2).sum(Kind::Float)).backward();
            vec![lp.detach(), ent.detach(), am, hd.grad(), wt.grad()]
        };
        let rel = |a: &Tensor, b: &Tensor| {
            let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
            (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-30)
        };
        let whole = run("whole");
        let mut paths = vec!["aten"];
        if cuda {
            paths.push("kernels");
        }
        // bf16: the gradients are rounded to bf16 (dz, then the products); the fused weight gradient sums the
        // chunks in float32.
        let (tol_out, tol_grad) = if kind == Kind::Float {
            (1e-5, 1e-4)
        } else {
            (1e-3, 3e-2)
        };
        for p in paths {
            let got = run(p);
            let names = ["logp", "entropy", "grad hidden", "grad weight"];
            for (i, what) in [(0, names[0]), (1, names[1]), (3, names[2]), (4, names[3])] {
                let r = rel(&got[i], &whole[i]);
                eprintln!("{kind:?} {p}: {what} relative difference {r:.3e}");
                let tol = if i < 3 { tol_out } else { tol_grad };
                assert!(
                    r <= tol,
                    "{kind:?} {p}: {what} differs by {r:e} (tolerance {tol:e})"
                );
            }
            let same = got[2]
                .eq_tensor(&whole[2])
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[]);
            assert!(
                same >= 0.99,
                "{kind:?} {p}: argmax agrees on {same} of the tokens"
            );
        }
    }
}

/// The profiler records this thread's aten ops inside a named span, writes torch's Chrome trace, and drops a
/// recording abandoned without `finish`; a second recording at once is refused.
#[test]
fn torch_profiler_writes_a_chrome_trace_with_ops_inside_spans() {
    let _one_at_a_time = GPU.lock().unwrap_or_else(|e| e.into_inner());
    use spar_kernels::torch_profiler::{ProfileOptions, Recording, range};
    if !spar_kernels::torch_profiler::available() {
        eprintln!("skipped: built without libtorch's C++ headers (no profiler shim)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.json");
    let rec = Recording::start(ProfileOptions {
        record_shapes: true,
        ..ProfileOptions::default()
    })
    .unwrap();
    let again = Recording::start(ProfileOptions::default()).err().unwrap();
    assert!(format!("{again}").contains("already recording"), "{again}");
    {
        let _span = range("test/matmul");
        let x = Tensor::randn([32, 32], (Kind::Float, Device::Cpu));
        let _ = x.matmul(&x).relu();
    }
    rec.finish(&trace).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    let find = |cat: &str, name: &str| {
        events
            .iter()
            .find(|e| e["cat"] == cat && e["name"] == name)
            .cloned()
    };
    let span = find("user_annotation", "test/matmul").expect("the span is in the trace");
    let mm = find("cpu_op", "aten::mm").expect("the matmul's aten::mm is in the trace");
    let (s0, s1) = (span["ts"].as_f64().unwrap(), span["dur"].as_f64().unwrap());
    let m0 = mm["ts"].as_f64().unwrap();
    assert!(m0 >= s0 && m0 <= s0 + s1, "aten::mm inside the span");
    assert!(mm["args"]["Input Dims"].is_array(), "record_shapes: {mm}");
    // After finish nothing records: a span is a no-op, and a new recording may start and be dropped.
    let _nothing = range("test/after");
    let rec = Recording::start(ProfileOptions::default()).unwrap();
    drop(rec);
    Recording::start(ProfileOptions::default()).unwrap();
}

/// The cuDNN attention switch is torch's own global flag: what is set reads back, and the default is restored.
#[test]
fn sdpa_cudnn_switch_reads_back() {
    use spar_kernels::sdpa_backends::{available, cudnn_enabled, set_cudnn_enabled};
    if !available() {
        println!("skipped: built without the libtorch shim");
        return;
    }
    let before = cudnn_enabled();
    set_cudnn_enabled(false).unwrap();
    assert!(!cudnn_enabled());
    set_cudnn_enabled(true).unwrap();
    assert!(cudnn_enabled());
    set_cudnn_enabled(before).unwrap();
}

/// The fused AdamW kernel against its torch composition on the GPU: three steps (growing bias corrections), with
/// and without weight decay, over a length that no block size divides, moments starting at zero and at random
/// values, gradients spanning magnitudes from 1e-8 to 1e2. Weights and moments must agree bit for bit (the kernel
/// replays the composition's roundings); the squared-norm sums only to double rounding (their order differs).
#[test]
fn fused_adamw_step_matches_the_composition_bit_for_bit_on_gpu() {
    use spar_kernels::optimizer_ops::{adamw_composition, adamw_flat_step};
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    if !tch::Cuda::is_available() || spar_kernels::cuda::kernels(0).is_none() {
        eprintln!("skipped: no CUDA device or no NVRTC (the fused AdamW step is a CUDA kernel)");
        return;
    }
    let dev = Device::Cuda(0);
    tch::manual_seed(7);
    let n = 1_000_003;
    for weight_decay in [0.0, 0.1] {
        let w0 = Tensor::randn([n], (Kind::Float, dev));
        let m0 = Tensor::randn([n], (Kind::Float, dev)) * 1e-3;
        let v0 = Tensor::rand([n], (Kind::Float, dev)) * 1e-4;
        let (wa, ma, va) = (w0.copy(), m0.copy(), v0.copy());
        let (mut wb, mut mb, mut vb) = (w0.copy(), m0.copy(), v0.copy());
        for t in 1..=3 {
            let scale = (Tensor::rand([n], (Kind::Float, dev)) * 10.0 - 8.0).exp2();
            let g = Tensor::randn([n], (Kind::Float, dev)) * scale;
            let step = adamw_step_at(t, 3e-4, weight_decay);
            let sums = Tensor::zeros([2], (Kind::Double, dev));
            assert!(
                adamw_flat_step(&wa, &ma, &va, &g, &step, &sums).unwrap(),
                "the kernel must run"
            );
            let (before, delta) = adamw_composition(&mut wb, &mut mb, &mut vb, &g, &step);
            let mut report = Vec::new();
            for (name, a, b) in [("weights", &wa, &wb), ("m", &ma, &mb), ("v", &va, &vb)] {
                let differ = a.ne_tensor(b).sum(Kind::Int64).int64_value(&[]);
                // Distance in units in the last place (same-sign floats: their bit patterns differ by it).
                let ulps = (a.view_dtype(Kind::Int) - b.view_dtype(Kind::Int))
                    .abs()
                    .max()
                    .int64_value(&[]);
                report.push(format!("{name}: {differ} differ, at most {ulps} ulp"));
            }
            eprintln!("decay {weight_decay}, step {t}: {}", report.join("; "));
            let all = wa
                .ne_tensor(&wb)
                .logical_or(&ma.ne_tensor(&mb))
                .logical_or(&va.ne_tensor(&vb));
            assert_eq!(
                all.sum(Kind::Int64).int64_value(&[]),
                0,
                "decay {weight_decay}, step {t}: {}",
                report.join("; ")
            );
            assert_sums_agree(
                &sums,
                &before,
                &delta,
                &format!("decay {weight_decay}, step {t}"),
            );
        }
    }
}

/// The fused compact and packed bf16 AdamW kernels against their torch composition on the GPU: three steps with
/// and without weight decay, over a length no block size divides, weights spanning magnitudes 2^-20 to 2^4 with
/// compensations and moments carried from step to step, gradients from 1e-8 to 1e2, and once with no gradient.
/// Weights, compensations and moments must agree bit for bit; the sums to double rounding.
#[test]
fn fused_bf16_adamw_steps_match_the_composition_bit_for_bit_on_gpu() {
    use spar_kernels::optimizer_ops::{Bf16State, adamw_bf16_composition, adamw_bf16_fused};
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    if !tch::Cuda::is_available() || spar_kernels::cuda::kernels(0).is_none() {
        eprintln!(
            "skipped: no CUDA device or no NVRTC (the fused bf16 AdamW steps are CUDA kernels)"
        );
        return;
    }
    let dev = Device::Cuda(0);
    tch::manual_seed(11);
    let n = 1_000_003;
    let bits = |t: &Tensor| match t.kind() {
        Kind::BFloat16 => t.view_dtype(Kind::Int16),
        _ => t.shallow_clone(),
    };
    for packed in [false, true] {
        for weight_decay in [0.0, 0.1] {
            let magnitude = (Tensor::rand([n], (Kind::Float, dev)) * 24.0 - 20.0).exp2();
            let w0 = (Tensor::randn([n], (Kind::Float, dev)) * magnitude).to_kind(Kind::BFloat16);
            let (comp_kind, v_kind) = if packed {
                (Kind::Int8, Kind::Int16)
            } else {
                (Kind::BFloat16, Kind::Float)
            };
            let make = || {
                (
                    w0.copy(),
                    Tensor::zeros([n], (comp_kind, dev)),
                    Tensor::zeros([n], (Kind::BFloat16, dev)),
                    Tensor::zeros([n], (v_kind, dev)),
                    packed.then(|| Tensor::zeros([n], (Kind::Uint8, dev))),
                )
            };
            let (wa, ca, ma, va, la) = make();
            let (wb, cb, mb, vb, lb) = make();
            for t in 1..=4 {
                let scale = (Tensor::rand([n], (Kind::Float, dev)) * 10.0 - 8.0).exp2();
                let g = (Tensor::randn([n], (Kind::Float, dev)) * scale).to_kind(Kind::BFloat16);
                let g = (t != 3).then_some(g);
                let step = adamw_step_at(t, 3e-3, weight_decay);
                let sums = Tensor::zeros([2], (Kind::Double, dev));
                let state_a = Bf16State {
                    comp: &ca,
                    m: &ma,
                    v: &va,
                    v_lo: la.as_ref(),
                };
                assert!(
                    adamw_bf16_fused(&wa, g.as_ref(), &state_a, &step, &sums).unwrap(),
                    "the kernel must run"
                );
                let state_b = Bf16State {
                    comp: &cb,
                    m: &mb,
                    v: &vb,
                    v_lo: lb.as_ref(),
                };
                let g32 = g.as_ref().map_or_else(
                    || Tensor::zeros([n], (Kind::Float, dev)),
                    |g| g.to_kind(Kind::Float),
                );
                let (rounded, before, delta) =
                    adamw_bf16_composition(&wb.to_kind(Kind::Float), &g32, &state_b, &step);
                wb.shallow_clone().copy_(&rounded);
                let mut pairs = vec![
                    ("weights", &wa, &wb),
                    ("comp", &ca, &cb),
                    ("m", &ma, &mb),
                    ("v", &va, &vb),
                ];
                if let (Some(x), Some(y)) = (&la, &lb) {
                    pairs.push(("v_lo", x, y));
                }
                for (name, x, y) in pairs {
                    let differ = bits(x)
                        .ne_tensor(&bits(y))
                        .sum(Kind::Int64)
                        .int64_value(&[]);
                    assert_eq!(
                        differ, 0,
                        "packed {packed}, decay {weight_decay}, step {t}: {name}"
                    );
                }
                let what = format!("packed {packed}, decay {weight_decay}, step {t}");
                assert_sums_agree(&sums, &before, &delta, &what);
            }
            // The compensation is not idle: the steps move weights by less than their half ulp.
            let used = ca
                .to_kind(Kind::Float)
                .abs()
                .sum(Kind::Float)
                .double_value(&[]);
            assert!(used > 0.0, "packed {packed}: every compensation is zero");
        }
    }
}

/// AdamW's numbers at step `t` (1-based) of the GPU tests: betas 0.9 / 0.999, eps 1e-8.
fn adamw_step_at(t: i32, lr: f64, weight_decay: f64) -> spar_kernels::optimizer_ops::AdamWStep {
    spar_kernels::optimizer_ops::AdamWStep {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay,
        bias1: 1.0 - 0.9f64.powi(t),
        bias2: 1.0 - 0.999f64.powi(t),
    }
}

/// A kernel's two squared-norm sums (`sums`, float64 [2]) against the composition's, to double rounding (their
/// order differs).
fn assert_sums_agree(sums: &Tensor, before: &Tensor, delta: &Tensor, what: &str) {
    let got = Vec::<f64>::try_from(sums).unwrap();
    for (name, x, want) in [
        ("before", got[0], before.double_value(&[])),
        ("delta", got[1], delta.double_value(&[])),
    ] {
        assert!(
            (x - want).abs() <= 1e-9 * want.abs(),
            "{what}: {name} sum {x} against {want}"
        );
    }
}

/// A fixed address range maps new physical memory at the same addresses every time, torch kernels read and
/// write it through `from_blob`, a second mapping at once is refused, and unmapping gives the memory back to
/// the driver.
#[test]
fn fixed_address_range_maps_again_at_the_same_addresses_on_gpu() {
    use spar_kernels::cuda_memory::memory_now;
    use spar_kernels::fixed_address::FixedAddressRange;
    let Some(_gpu) = gpu_or_skip("CUDA virtual memory management") else {
        return;
    };
    let bytes = 64 << 20;
    let range = FixedAddressRange::reserve(0, bytes).unwrap();
    assert!(range.bytes() >= bytes);
    let view = |base: u64| unsafe {
        Tensor::from_blob(
            base as *const u8,
            &[(bytes / 4) as i64],
            &[],
            Kind::Float,
            Device::Cuda(0),
        )
    };
    let free_before = memory_now(0).unwrap().free;
    let backing = range.map().unwrap();
    assert!(range.map().is_err(), "a second mapping at once");
    let mapped_free = memory_now(0).unwrap().free;
    assert!(
        free_before - mapped_free >= bytes as u64,
        "mapping took {} bytes from the driver",
        free_before - mapped_free
    );
    let mut t = view(range.base());
    let _ = t.fill_(2.5);
    assert_eq!(
        t.sum(Kind::Double).double_value(&[]),
        2.5 * (bytes / 4) as f64
    );
    drop(t);
    let free_mapped = memory_now(0).unwrap().free;
    drop(backing);
    assert!(!range.is_mapped());
    let given_back = memory_now(0).unwrap().free - free_mapped;
    assert!(
        given_back >= bytes as u64,
        "unmapping gave {given_back} bytes back to the driver"
    );
    let _again = range.map().unwrap();
    let mut t = view(range.base());
    let _ = t.fill_(1.0);
    assert_eq!(t.sum(Kind::Double).double_value(&[]), (bytes / 4) as f64);
}
