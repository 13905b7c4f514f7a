// Fused decode-step kernels (appended to cuda.rs's SOURCE, which defines bf16_to_f32, f32_to_bf16, block_sum).
// Each reproduces the rounding of the torch op sequence it replaces: every intermediate that torch stores in
// the activation dtype is rounded to it here too, so eager and fused paths agree bit for bit in fp32 and to
// within summation order in bf16.
template <typename T> struct Io;
template <> struct Io<float> {
    static __device__ __forceinline__ float ld(const float* p) { return *p; }
    static __device__ __forceinline__ void st(float* p, float v) { *p = v; }
    static __device__ __forceinline__ float rnd(float v) { return v; }
};
template <> struct Io<unsigned short> {
    static __device__ __forceinline__ float ld(const unsigned short* p) { return bf16_to_f32(*p); }
    static __device__ __forceinline__ void st(unsigned short* p, float v) { *p = f32_to_bf16(v); }
    static __device__ __forceinline__ float rnd(float v) { return bf16_to_f32(f32_to_bf16(v)); }
};

// One block per (row, head) of q (nh heads) then k (nkv heads) of the fused projection qkv [rows, (nh + 2 nkv)
// * d]: per-head RMSNorm (q_norm / k_norm), RoPE with the row's cos/sin, q to q_out [rows, nh, d]; k and the
// row's v stored at flat cache row write_at[row] of k_cache / v_cache ([slots * width, nkv, d]). Replaces
// q_norm, k_norm, cat, neg, cat, mul, mul, add and two index_copy_ launches.
template <typename T>
__device__ void qk_norm_rope_store(const T* qkv, const T* qw, const T* kw, const T* cs,
                                   const T* sn, const long long* write_at, T* q_out, T* k_cache, T* v_cache,
                                   int nh, int nkv, int d, float eps) {
    __shared__ float shared[32];
    __shared__ float ybuf[1024];
    int heads = nh + nkv;
    int row = blockIdx.x / heads, hh = blockIdx.x % heads;
    int i = threadIdx.x;
    const T* base = qkv + (size_t)row * (nh + 2 * nkv) * d;
    const T* src; const T* w; T* dst;
    if (hh < nh) {
        src = base + (size_t)hh * d; w = qw; dst = q_out + ((size_t)row * nh + hh) * d;
    } else {
        int kh = hh - nh;
        size_t at = (size_t)write_at[row];
        src = base + (size_t)(nh + kh) * d; w = kw; dst = k_cache + (at * nkv + kh) * d;
        if (i < d) v_cache[(at * nkv + kh) * d + i] = base[(size_t)(nh + nkv + kh) * d + i];
    }
    float x = i < d ? Io<T>::ld(src + i) : 0.0f;
    float r = rsqrtf(block_sum(x * x, shared) / (float)d + eps);
    float y = 0.0f;
    if (i < d) {
        float n = Io<T>::rnd(x * r);
        y = Io<T>::rnd(Io<T>::ld(w + i) * n);
        ybuf[i] = y;
    }
    __syncthreads();
    if (i < d) {
        int half = d / 2;
        float rot = i < half ? -ybuf[i + half] : ybuf[i - half];
        float c = Io<T>::ld(cs + (size_t)row * d + i), s = Io<T>::ld(sn + (size_t)row * d + i);
        float a = Io<T>::rnd(__fmul_rn(y, c));
        float b = Io<T>::rnd(__fmul_rn(rot, s));
        Io<T>::st(dst + i, __fadd_rn(a, b));
    }
}

extern "C" __global__ void qk_norm_rope_store_f32(const float* qkv, const float* qw,
    const float* kw, const float* cs, const float* sn, const long long* at, float* qo, float* kc, float* vc,
    int nh, int nkv, int d, float eps) {
    qk_norm_rope_store<float>(qkv, qw, kw, cs, sn, at, qo, kc, vc, nh, nkv, d, eps);
}
extern "C" __global__ void qk_norm_rope_store_bf16(const unsigned short* qkv,
    const unsigned short* qw, const unsigned short* kw, const unsigned short* cs,
    const unsigned short* sn, const long long* at, unsigned short* qo, unsigned short* kc, unsigned short* vc,
    int nh, int nkv, int d, float eps) {
    qk_norm_rope_store<unsigned short>(qkv, qw, kw, cs, sn, at, qo, kc, vc, nh, nkv, d, eps);
}

// Residual add then RMSNorm, one block per row: s = x + y (stored to s_out), n = w * norm(s) (to n_out).
template <typename T>
__device__ void add_rms_norm(const T* x, const T* y, const T* w, T* s_out, T* n_out, int h, float eps) {
    __shared__ float shared[32];
    size_t base = (size_t)blockIdx.x * h;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < h; i += blockDim.x) {
        float s = Io<T>::rnd(Io<T>::ld(x + base + i) + Io<T>::ld(y + base + i));
        Io<T>::st(s_out + base + i, s);
        ss += s * s;
    }
    float r = rsqrtf(block_sum(ss, shared) / (float)h + eps);
    for (int i = threadIdx.x; i < h; i += blockDim.x) {
        // Re-read what this thread stored (same value, no cross-thread dependency).
        float s = Io<T>::ld(s_out + base + i);
        float n = Io<T>::rnd(s * r);
        Io<T>::st(n_out + base + i, Io<T>::ld(w + i) * n);
    }
}
extern "C" __global__ void add_rms_norm_f32(const float* x, const float* y, const float* w, float* s, float* n,
                                            int h, float eps) {
    add_rms_norm<float>(x, y, w, s, n, h, eps);
}
extern "C" __global__ void add_rms_norm_bf16(const unsigned short* x, const unsigned short* y,
    const unsigned short* w, unsigned short* s, unsigned short* n, int h, float eps) {
    add_rms_norm<unsigned short>(x, y, w, s, n, h, eps);
}

// SwiGLU activation: out = silu(g) * u over `n` = rows x cols values (torch: silu rounds, then mul rounds).
// g and u advance `stride` elements per row (a fused gate_up projection: g = gu, u = gu + cols, stride 2 cols).
template <typename T>
__device__ void silu_mul(const T* g, const T* u, T* out, long long n, int cols, int stride) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    long long off = (i / cols) * stride + (i % cols);
    float a = Io<T>::ld(g + off);
    float sl = Io<T>::rnd(a / (1.0f + expf(-a)));
    Io<T>::st(out + i, __fmul_rn(sl, Io<T>::ld(u + off)));
}
extern "C" __global__ void silu_mul_f32(const float* g, const float* u, float* o, long long n, int cols,
                                        int stride) {
    silu_mul<float>(g, u, o, n, cols, stride);
}
extern "C" __global__ void silu_mul_bf16(const unsigned short* g, const unsigned short* u, unsigned short* o,
                                         long long n, int cols, int stride) {
    silu_mul<unsigned short>(g, u, o, n, cols, stride);
}
