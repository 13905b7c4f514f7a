// The per-chunk epilogues of the fused LM-head log-prob (csrc/fused_logprob.cpp), one block per token row of a
// chunk's logits [rows, v] (model dtype, contiguous): they replace log_softmax, gather, exp, mul, sum (forward)
// and log_softmax, exp, the gradient's mul / add / scatter and the cast (backward) with one pass each.
// Appended to the module after decode_kernels.cu (uses Io<T>, block_sum and DA_NEG_INF).

// Running (max m, s = sum e^(z - m), u = sum e^(z - m) (z - m)) of a stripe of z, rescaled to a new max.
struct LpAcc {
    float m, s, u;
};

__device__ __forceinline__ LpAcc lp_merge(LpAcc a, LpAcc b) {
    if (b.s == 0.0f) return a;
    if (a.s == 0.0f) return b;
    if (b.m > a.m) { LpAcc t = a; a = b; b = t; }
    // a.m >= b.m: bring b to a's max.
    float d = b.m - a.m;
    float e = expf(d);
    LpAcc r;
    r.m = a.m;
    r.s = a.s + b.s * e;
    r.u = a.u + e * (b.u + b.s * d);
    return r;
}

// Forward: logp[row] = z_t - lse, lse[row], ent[row] = log s - u / s (z = logits / temp), argmax[row] (first
// maximum). `ent` / `argmax` may be null.
template <typename T>
__device__ void lp_fwd(const T* logits, const long long* targets, int v, float temp, float* logp, float* lse,
                       float* ent, long long* argmax) {
    __shared__ float s_m[32], s_s[32], s_u[32], s_b[32];
    __shared__ int s_i[32];
    const T* x = logits + (size_t)blockIdx.x * v;
    LpAcc acc = {DA_NEG_INF, 0.0f, 0.0f};
    float best = DA_NEG_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        float a = Io<T>::ld(x + i);
        if (a > best) { best = a; bi = i; }
        float z = temp == 1.0f ? a : a / temp;
        if (z == DA_NEG_INF) continue;
        if (acc.s == 0.0f) {
            acc.m = z;
            acc.s = 1.0f;
            acc.u = 0.0f;
        } else if (z > acc.m) {
            float d = acc.m - z;  // < 0
            float e = expf(d);
            acc.u = e * (acc.u + acc.s * d);
            acc.s = acc.s * e + 1.0f;
            acc.m = z;
        } else {
            float d = z - acc.m;
            float e = expf(d);
            acc.s += e;
            acc.u += e * d;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        LpAcc b;
        b.m = __shfl_xor_sync(0xffffffffu, acc.m, o);
        b.s = __shfl_xor_sync(0xffffffffu, acc.s, o);
        b.u = __shfl_xor_sync(0xffffffffu, acc.u, o);
        acc = lp_merge(acc, b);
        float ob = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ob > best || (ob == best && oi < bi)) { best = ob; bi = oi; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { s_m[warp] = acc.m; s_s[warp] = acc.s; s_u[warp] = acc.u; s_b[warp] = best; s_i[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        int nw = (blockDim.x + 31) >> 5;
        if (lane < nw) {
            acc.m = s_m[lane]; acc.s = s_s[lane]; acc.u = s_u[lane]; best = s_b[lane]; bi = s_i[lane];
        } else {
            acc.m = DA_NEG_INF; acc.s = 0.0f; acc.u = 0.0f; best = DA_NEG_INF; bi = 0x7fffffff;
        }
        for (int o = 16; o > 0; o >>= 1) {
            LpAcc b;
            b.m = __shfl_xor_sync(0xffffffffu, acc.m, o);
            b.s = __shfl_xor_sync(0xffffffffu, acc.s, o);
            b.u = __shfl_xor_sync(0xffffffffu, acc.u, o);
            acc = lp_merge(acc, b);
            float ob = __shfl_xor_sync(0xffffffffu, best, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ob > best || (ob == best && oi < bi)) { best = ob; bi = oi; }
        }
        if (lane == 0) {
            const int row = blockIdx.x;
            float ls = logf(acc.s);
            float l = acc.m + ls;
            long long t = targets[row];
            // A target outside the vocabulary reads nothing and gives NaN (ATen's gather would raise).
            float zt = (t >= 0 && t < v) ? Io<T>::ld(x + t) : __int_as_float(0x7fc00000);
            if (temp != 1.0f) zt = zt / temp;
            logp[row] = (zt - acc.m) - ls;
            lse[row] = l;
            if (ent != 0) ent[row] = ls - acc.u / acc.s;
            if (argmax != 0) argmax[row] = (long long)bi;
        }
    }
}

// Backward, in place: logits[row, j] becomes d/dlogits of g_lp * logp_t + g_ent * H,
//   (g_lp [j = t] - p_j (g_lp + g_ent (log p_j + H))) / temp,  p_j = exp(z_j - lse), z = logits / temp.
// `ent` / `g_ent` may be null (no entropy term).
template <typename T>
__device__ void lp_bwd(T* logits, const long long* targets, int v, float temp, const float* lse, const float* ent,
                       const float* g_lp, const float* g_ent) {
    const int row = blockIdx.x;
    T* x = logits + (size_t)row * v;
    const float l = lse[row];
    const float gl = g_lp != 0 ? g_lp[row] : 0.0f;
    const float gh = g_ent != 0 ? g_ent[row] : 0.0f;
    const float h = ent != 0 ? ent[row] : 0.0f;
    const long long t = targets[row];
    const float inv = 1.0f / temp;
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        float a = Io<T>::ld(x + i);
        float z = temp == 1.0f ? a : a / temp;
        float lp = z - l;
        float p = expf(lp);
        float g = p == 0.0f ? 0.0f : -p * (gl + gh * (lp + h));
        if (i == t) g += gl;
        Io<T>::st(x + i, g * inv);
    }
}

extern "C" __global__ void lp_fwd_f32(const float* x, const long long* tg, int v, float temp, float* logp,
                                      float* lse, float* ent, long long* am) {
    lp_fwd<float>(x, tg, v, temp, logp, lse, ent, am);
}
extern "C" __global__ void lp_fwd_bf16(const unsigned short* x, const long long* tg, int v, float temp,
                                       float* logp, float* lse, float* ent, long long* am) {
    lp_fwd<unsigned short>(x, tg, v, temp, logp, lse, ent, am);
}
extern "C" __global__ void lp_bwd_f32(float* x, const long long* tg, int v, float temp, const float* lse,
                                      const float* ent, const float* g_lp, const float* g_ent) {
    lp_bwd<float>(x, tg, v, temp, lse, ent, g_lp, g_ent);
}
extern "C" __global__ void lp_bwd_bf16(unsigned short* x, const long long* tg, int v, float temp,
                                       const float* lse, const float* ent, const float* g_lp,
                                       const float* g_ent) {
    lp_bwd<unsigned short>(x, tg, v, temp, lse, ent, g_lp, g_ent);
}
