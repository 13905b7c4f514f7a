// One AdamW step over a chunk of flat fp32 optimizer state (spar_trainer::adamw's fp32 masters): weights w,
// moments m and v, gradient g (fp32, gathered), n elements. Each value goes through the float operations of the
// torch composition it replaces (optimizer_ops::adamw_composition), in the same order and each rounded on its
// own (the _rn intrinsics: no contraction into fused multiply-adds), so weights and moments come out
// bit-identical; both multiply by the float inv_bc2_sqrt. Also adds the chunk's sum of squared weights before
// the step and of squared changes into sums[0] and sums[1] (double; each square is rounded to float first, as
// torch's square().sum(Double) does).
__device__ __forceinline__ double block_sum_f64(double v, double* shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < nw) ? shared[threadIdx.x] : 0.0;
    if (warp == 0) for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

extern "C" __global__ void adamw_flat_f32(float* w, float* m, float* v, const float* g, long long n,
                                          float decay_factor, float lr_wd, int has_decay,
                                          float beta1, float one_minus_beta1, float beta2, float one_minus_beta2,
                                          float inv_bc2_sqrt, float eps, float step_size, double* sums) {
    __shared__ double shared[32];
    double before = 0.0, delta = 0.0;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float t = w[i];
        before += (double)__fmul_rn(t, t);
        float d = 0.0f;
        if (has_decay) {
            d = __fmul_rn(t, lr_wd);
            t = __fmul_rn(t, decay_factor);
        }
        float gi = g[i];
        float mi = __fadd_rn(__fmul_rn(m[i], beta1), __fmul_rn(gi, one_minus_beta1));
        float vi = __fadd_rn(__fmul_rn(v[i], beta2), __fmul_rn(__fmul_rn(gi, gi), one_minus_beta2));
        float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), inv_bc2_sqrt), eps);
        float upd = __fmul_rn(__fdiv_rn(mi, denom), step_size);
        float change = has_decay ? __fadd_rn(d, upd) : upd;
        delta += (double)__fmul_rn(change, change);
        m[i] = mi;
        v[i] = vi;
        w[i] = __fsub_rn(t, upd);
    }
    before = block_sum_f64(before, shared);
    __syncthreads();
    delta = block_sum_f64(delta, shared);
    if (threadIdx.x == 0) {
        atomicAdd(&sums[0], before);
        atomicAdd(&sums[1], delta);
    }
}
