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

// One element's step (the fp32 kernel and the bf16 ones below share it): t the weight, gi its gradient, *m and *v
// its moments (updated); returns the new weight and adds to the two sums.
__device__ __forceinline__ float adamw_elem(float t, float gi, float* m, float* v, int has_decay,
                                            float decay_factor, float lr_wd, float beta1, float one_minus_beta1,
                                            float beta2, float one_minus_beta2, float inv_bc2_sqrt, float eps,
                                            float step_size, double* before, double* delta) {
    *before += (double)__fmul_rn(t, t);
    float d = 0.0f;
    if (has_decay) {
        d = __fmul_rn(t, lr_wd);
        t = __fmul_rn(t, decay_factor);
    }
    float mi = __fadd_rn(__fmul_rn(*m, beta1), __fmul_rn(gi, one_minus_beta1));
    float vi = __fadd_rn(__fmul_rn(*v, beta2), __fmul_rn(__fmul_rn(gi, gi), one_minus_beta2));
    float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), inv_bc2_sqrt), eps);
    float upd = __fmul_rn(__fdiv_rn(mi, denom), step_size);
    float change = has_decay ? __fadd_rn(d, upd) : upd;
    *delta += (double)__fmul_rn(change, change);
    *m = mi;
    *v = vi;
    return __fsub_rn(t, upd);
}

__device__ __forceinline__ void adamw_add_sums(double before, double delta, double* sums) {
    __shared__ double shared[32];
    before = block_sum_f64(before, shared);
    __syncthreads();
    delta = block_sum_f64(delta, shared);
    if (threadIdx.x == 0) {
        atomicAdd(&sums[0], before);
        atomicAdd(&sums[1], delta);
    }
}

extern "C" __global__ void adamw_flat_f32(float* w, float* m, float* v, const float* g, long long n,
                                          float decay_factor, float lr_wd, int has_decay,
                                          float beta1, float one_minus_beta1, float beta2, float one_minus_beta2,
                                          float inv_bc2_sqrt, float eps, float step_size, double* sums) {
    double before = 0.0, delta = 0.0;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float mi = m[i], vi = v[i];
        w[i] = adamw_elem(w[i], g[i], &mi, &vi, has_decay, decay_factor, lr_wd, beta1, one_minus_beta1, beta2,
                          one_minus_beta2, inv_bc2_sqrt, eps, step_size, &before, &delta);
        m[i] = mi;
        v[i] = vi;
    }
    adamw_add_sums(before, delta, sums);
}

// One AdamW step over the bf16 weights of one parameter in place, with the state of spar_trainer::adamw's compact
// and packed formats (optimizer_ops::adamw_bf16_composition is the reference: the same float operations in the
// same order, each rounded on its own, so the bits agree). The weight the update sees is the bf16 weight plus its
// compensation: a bf16 value (compact) or an int8 count of 1/256ths of the weight's bf16 ulp (packed; comp_scale
// below). The first moment is bf16; the second fp32 (compact) or 24 bits (packed: the fp32 bits but the sign,
// which is always 0, rounded to their top 24, kept as a 16-bit high and an 8-bit low part). g may be null: a
// parameter that got no gradient.
//
// The power of two 1/256 of the bf16 ulp of a weight whose fp32 bits are `bits` (scale) and its inverse: exponent
// fields clamped to [16, 254] keep both normal (weights under 2^-111 share the scale of 2^-111).
__device__ __forceinline__ void comp_scale(unsigned int bits, float* scale, float* inverse) {
    int e = (int)((bits >> 23) & 0xffu);
    e = e < 16 ? 16 : (e > 254 ? 254 : e);
    *scale = __uint_as_float((unsigned int)(e - 15) << 23);
    *inverse = __uint_as_float((unsigned int)(269 - e) << 23);
}

#define ADAMW_BF16_ARGS                                                                                     \
    long long n, float decay_factor, float lr_wd, int has_decay, float beta1, float one_minus_beta1,        \
        float beta2, float one_minus_beta2, float inv_bc2_sqrt, float eps, float step_size, double* sums
#define ADAMW_BF16_CALL(t, gi, m, v)                                                                        \
    adamw_elem(t, gi, m, v, has_decay, decay_factor, lr_wd, beta1, one_minus_beta1, beta2,             \
                    one_minus_beta2, inv_bc2_sqrt, eps, step_size, &before, &delta)

extern "C" __global__ void adamw_compact_bf16(unsigned short* w, unsigned short* comp, const unsigned short* g,
                                              unsigned short* m, float* v, ADAMW_BF16_ARGS) {
    double before = 0.0, delta = 0.0;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float t = __fadd_rn(bf16_to_f32(w[i]), bf16_to_f32(comp[i]));
        float mi = bf16_to_f32(m[i]), vi = v[i];
        t = ADAMW_BF16_CALL(t, g ? bf16_to_f32(g[i]) : 0.0f, &mi, &vi);
        unsigned short rounded = f32_to_bf16(t);
        w[i] = rounded;
        comp[i] = f32_to_bf16(__fsub_rn(t, bf16_to_f32(rounded)));
        m[i] = f32_to_bf16(mi);
        v[i] = vi;
    }
    adamw_add_sums(before, delta, sums);
}

extern "C" __global__ void adamw_packed_bf16(unsigned short* w, signed char* comp, const unsigned short* g,
                                             unsigned short* m, unsigned short* v_hi, unsigned char* v_lo,
                                             ADAMW_BF16_ARGS) {
    double before = 0.0, delta = 0.0;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float scale, inverse;
        float wi = bf16_to_f32(w[i]);
        comp_scale(__float_as_uint(wi), &scale, &inverse);
        float t = __fadd_rn(wi, __fmul_rn((float)comp[i], scale));
        float mi = bf16_to_f32(m[i]);
        float vi = __uint_as_float((((unsigned int)v_hi[i] << 8) | (unsigned int)v_lo[i]) << 7);
        t = ADAMW_BF16_CALL(t, g ? bf16_to_f32(g[i]) : 0.0f, &mi, &vi);
        unsigned short rounded = f32_to_bf16(t);
        float r = bf16_to_f32(rounded);
        comp_scale(__float_as_uint(r), &scale, &inverse);
        float q = rintf(__fmul_rn(__fsub_rn(t, r), inverse));
        q = q < -128.0f ? -128.0f : (q > 127.0f ? 127.0f : q);
        w[i] = rounded;
        comp[i] = (signed char)(int)q;
        m[i] = f32_to_bf16(mi);
        unsigned int u = (__float_as_uint(vi) + 0x40u) >> 7;
        v_hi[i] = (unsigned short)(u >> 8);
        v_lo[i] = (unsigned char)(u & 0xffu);
    }
    adamw_add_sums(before, delta, sums);
}
