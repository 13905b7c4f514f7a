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
    pdl_prologue();
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
    pdl_prologue();
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

// 16 bytes of T as E = 16 / sizeof(T) floats: unpacked from a loaded uint4 (the skinny projections stream their
// own loads), or loaded from / stored to 16-byte-aligned memory.
template <typename T> struct Vec16;
template <> struct Vec16<float> {
    static constexpr int E = 4;
    static __device__ __forceinline__ void unpack(uint4 v, float* f) {
        f[0] = __uint_as_float(v.x); f[1] = __uint_as_float(v.y);
        f[2] = __uint_as_float(v.z); f[3] = __uint_as_float(v.w);
    }
    static __device__ __forceinline__ void ld(const float* p, float* f) {
        unpack(*reinterpret_cast<const uint4*>(p), f);
    }
    static __device__ __forceinline__ void st(float* p, const float* v) {
        *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    }
};
template <> struct Vec16<unsigned short> {
    static constexpr int E = 8;
    static __device__ __forceinline__ void unpack(uint4 v, float* f) {
        unsigned int w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
    static __device__ __forceinline__ void ld(const unsigned short* p, float* f) {
        unpack(*reinterpret_cast<const uint4*>(p), f);
    }
    static __device__ __forceinline__ void st(unsigned short* p, const float* v) {
        unsigned int u[4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
            u[i] = (unsigned int)f32_to_bf16(v[2 * i]) | ((unsigned int)f32_to_bf16(v[2 * i + 1]) << 16);
        *reinterpret_cast<uint4*>(p) = make_uint4(u[0], u[1], u[2], u[3]);
    }
};

// add_rms_norm with a warp per row of H = 32 x C x V elements (C 16-byte pieces of V values a lane, coalesced:
// piece c of lane l at (c 32 + l) V), a block a warp (a batch's rows spread over as many SMs). The sums stay in registers:
// one read of x, y and w, all in flight at once, one reduction by shuffles, no barrier (the block-per-row kernel
// reduced twice through shared memory and read its own stores back). Same roundings as add_rms_norm, the sum of
// squares in another order.
template <typename T, int C>
__device__ void add_rms_norm_warp(const T* x, const T* y, const T* w, T* s_out, T* n_out, int rows, float eps) {
    pdl_prologue();
    constexpr int V = Vec16<T>::E;
    constexpr int H = 32 * C * V;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;  // whole warps
    size_t base = (size_t)row * H;
    float s[C][V], wv[C][V];
    float ss = 0.0f;
#pragma unroll
    for (int c = 0; c < C; ++c) Vec16<T>::ld(w + (c * 32 + lane) * V, wv[c]);  // in flight with x and y
#pragma unroll
    for (int c = 0; c < C; ++c) {
        int at = (c * 32 + lane) * V;
        float a[V], b[V];
        Vec16<T>::ld(x + base + at, a);
        Vec16<T>::ld(y + base + at, b);
#pragma unroll
        for (int v = 0; v < V; ++v) {
            s[c][v] = Io<T>::rnd(a[v] + b[v]);
            ss += s[c][v] * s[c][v];
        }
        Vec16<T>::st(s_out + base + at, s[c]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    float r = rsqrtf(ss / (float)H + eps);
#pragma unroll
    for (int c = 0; c < C; ++c) {
        int at = (c * 32 + lane) * V;
        float n[V];
#pragma unroll
        for (int v = 0; v < V; ++v) n[v] = wv[c][v] * Io<T>::rnd(s[c][v] * r);
        Vec16<T>::st(n_out + base + at, n);
    }
}
#define ADD_RMS_NORM_WARP(T, SUF, C, H) \
    extern "C" __global__ void add_rms_norm_warp_##SUF##_h##H(const T* x, const T* y, const T* w, T* s, T* n, \
                                                            int rows, float eps) { \
        add_rms_norm_warp<T, C>(x, y, w, s, n, rows, eps); \
    }
ADD_RMS_NORM_WARP(float, f32, 2, 256)
ADD_RMS_NORM_WARP(float, f32, 4, 512)
ADD_RMS_NORM_WARP(float, f32, 8, 1024)
ADD_RMS_NORM_WARP(float, f32, 16, 2048)
ADD_RMS_NORM_WARP(unsigned short, bf16, 1, 256)
ADD_RMS_NORM_WARP(unsigned short, bf16, 2, 512)
ADD_RMS_NORM_WARP(unsigned short, bf16, 4, 1024)
ADD_RMS_NORM_WARP(unsigned short, bf16, 8, 2048)

// SwiGLU activation: out = silu(g) * u over `n` = rows x cols values (torch: silu rounds, then mul rounds).
// g and u advance `stride` elements per row (a fused gate_up projection: g = gu, u = gu + cols, stride 2 cols).
template <typename T>
__device__ void silu_mul(const T* g, const T* u, T* out, long long n, int cols, int stride) {
    pdl_prologue();
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

// Decode attention over the KV cache (one query position per row). One block of DA_WARPS warps per (row, KV head,
// group of up to H query heads sharing it, split of the keys); each warp walks every DA_WARPS-th run of U
// keys of its split with an online softmax: the loads of all U keys are issued before any is used (enough bytes
// in flight to stream the cache), their U dot products reduce across the warp together (independent shuffles
// overlap) and the running max rescales once per run, not once per key. The warps' partial (max, sum,
// accumulator) then merge through shared memory. Rows read only their own key_len keys, so a short row in a long key window costs nothing. Lane
// `l` owns elements [l E, (l + 1) E) of the head (D = 32 E), loaded as 8- or 16-byte vectors where E allows.
// Caches: [rows, width, nkv, D] contiguous from row 0 (graph row j = slot j); q and out: [rows, nh, D].
// With one split the block writes the output; with several (few rows over many keys: split-K, so that every SM
// has work) each block writes its unnormalised partial to ws_acc [rows, nh, splits, D] and (max, sum) to ws_ml
// [rows, nh, splits, 2]; the last split to finish merges them (attend_end, given arrival counters), or
// decode_attention_combine does in a second kernel.
#define DA_WARPS 8
#define DA_NEG_INF __int_as_float(0xff800000)
template <typename T, int E, bool V> struct Lane {
    static __device__ __forceinline__ void ld(const T* p, float* o) {
#pragma unroll
        for (int e = 0; e < E; ++e) o[e] = Io<T>::ld(p + e);
    }
};
template <int E> struct Lane<unsigned short, E, true> {
    static __device__ __forceinline__ void ld(const unsigned short* p, float* o) {
#pragma unroll
        for (int e = 0; e < E / 4; ++e) {
            uint2 w = __ldg(reinterpret_cast<const uint2*>(p) + e);
            o[4 * e] = bf16_to_f32((unsigned short)(w.x & 0xffffu));
            o[4 * e + 1] = bf16_to_f32((unsigned short)(w.x >> 16));
            o[4 * e + 2] = bf16_to_f32((unsigned short)(w.y & 0xffffu));
            o[4 * e + 3] = bf16_to_f32((unsigned short)(w.y >> 16));
        }
    }
};
template <int E> struct Lane<float, E, true> {
    static __device__ __forceinline__ void ld(const float* p, float* o) {
#pragma unroll
        for (int e = 0; e < E / 4; ++e) {
            float4 w = __ldg(reinterpret_cast<const float4*>(p) + e);
            o[4 * e] = w.x; o[4 * e + 1] = w.y; o[4 * e + 2] = w.z; o[4 * e + 3] = w.w;
        }
    }
};

// qk_norm_rope_store with a warp per head (heads of D = 32 E: 32, 64, 128 or 256), four heads a block: lane l
// holds elements [l E, (l + 1) E), the sum of squares reduces by shuffles and RoPE's partner element (i +- D/2)
// sits in lane l ^ 16, so no barrier and no shared memory (the block-per-head kernel synchronised its 128
// threads three times; 7 us a batch-64 step's layer on an H100). Same roundings, the sum in another order.
template <typename T, int E>
__device__ void qk_norm_rope_store_warp(const T* qkv, const T* qw, const T* kw, const T* cs, const T* sn,
                                        const long long* write_at, T* q_out, T* k_cache, T* v_cache, int nh,
                                        int nkv, int rows, float eps) {
    pdl_prologue();
    constexpr int D = 32 * E;
    typedef Lane<T, E, (E % 4) == 0> L;
    int heads = nh + nkv;
    int item = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (item >= rows * heads) return;  // whole warps: no barrier below
    int row = item / heads, hh = item % heads;
    const T* base = qkv + (size_t)row * (nh + 2 * nkv) * D;
    const T* src;
    const T* w;
    T* dst;
    if (hh < nh) {
        src = base + (size_t)hh * D; w = qw; dst = q_out + ((size_t)row * nh + hh) * D;
    } else {
        int kh = hh - nh;
        size_t at = (size_t)write_at[row];
        src = base + (size_t)(nh + kh) * D; w = kw; dst = k_cache + (at * nkv + kh) * D;
        const T* v = base + (size_t)(nh + nkv + kh) * D + lane * E;
        T* vd = v_cache + (at * nkv + kh) * D + lane * E;
#pragma unroll
        for (int e = 0; e < E; ++e) vd[e] = v[e];
    }
    float x[E], wv[E], c[E], sv[E];
    L::ld(src + lane * E, x);
    L::ld(w + lane * E, wv);
    L::ld(cs + (size_t)row * D + lane * E, c);
    L::ld(sn + (size_t)row * D + lane * E, sv);
    float ss = 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e) ss = fmaf(x[e], x[e], ss);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    float r = rsqrtf(ss / (float)D + eps);
#pragma unroll
    for (int e = 0; e < E; ++e) {
        float y = Io<T>::rnd(wv[e] * Io<T>::rnd(x[e] * r));
        float partner = __shfl_xor_sync(0xffffffffu, y, 16);
        float rot = lane < 16 ? -partner : partner;
        float a = Io<T>::rnd(__fmul_rn(y, c[e]));
        float b = Io<T>::rnd(__fmul_rn(rot, sv[e]));
        Io<T>::st(dst + lane * E + e, __fadd_rn(a, b));
    }
}
#define QK_NORM_ROPE_STORE_WARP(T, SUF, E, D) \
    extern "C" __global__ void qk_norm_rope_store_warp_##SUF##_d##D(const T* qkv, const T* qw, const T* kw, \
        const T* cs, const T* sn, const long long* at, T* qo, T* kc, T* vc, int nh, int nkv, int rows, \
        float eps) { \
        qk_norm_rope_store_warp<T, E>(qkv, qw, kw, cs, sn, at, qo, kc, vc, nh, nkv, rows, eps); \
    }
QK_NORM_ROPE_STORE_WARP(float, f32, 1, 32)
QK_NORM_ROPE_STORE_WARP(float, f32, 2, 64)
QK_NORM_ROPE_STORE_WARP(float, f32, 4, 128)
QK_NORM_ROPE_STORE_WARP(float, f32, 8, 256)
QK_NORM_ROPE_STORE_WARP(unsigned short, bf16, 1, 32)
QK_NORM_ROPE_STORE_WARP(unsigned short, bf16, 2, 64)
QK_NORM_ROPE_STORE_WARP(unsigned short, bf16, 4, 128)
QK_NORM_ROPE_STORE_WARP(unsigned short, bf16, 8, 256)

template <int E> __device__ __forceinline__ void copy_lane(const float (&from)[E], float* to) {
#pragma unroll
    for (int e = 0; e < E; ++e) to[e] = from[e];
}

// Folds a run of n <= U keys into the warp's online softmax state (m, l, acc) for H query heads: the dot
// products reduce across the warp together (independent shuffles overlap) and the running max rescales once per
// run, not once per key. key(u, k) and value(u, v) fill key u's and value u's E elements of this lane: the
// register kernel copies values it loaded ahead, the shared-memory kernel reads each just before its use, so that
// no more than one key or value is live in registers (64 registers a thread: four blocks an SM).
// G key groups: with G = 1 the whole warp takes one key at a time (lane l owns elements [l E, (l + 1) E) of a head
// of D = 32 E); with G = 2 each half-warp `group` (lane / 16, owning E elements of a head of D = 16 E) takes keys
// group, group + 2, .. into its own state (merge_halves joins them). A key's dot product then reduces over 16 lanes
// in four shuffles that each carry two keys, where one group spends five shuffles and five adds a key and head:
// in the batch-64 step the warps' instructions, not the cache's bytes, bound the kernel (sm_90 SASS,
// scripts/kernel-sass.py, a run of 4 keys x 2 heads: ~380 instructions with G = 1 and the per-key checks, 309
// without them, 230 with G = 2). n: keys in the warp's run (warp-uniform, >= 1; with G = 2 a group may have none).
// FULL: n == U (every run but a split's last), compiled without the per-key checks and their branches.
template <int E, int H, int U, int G, bool FULL, typename Key, typename Value>
__device__ __forceinline__ void attend_run(const float (&qv)[H][E], Key key, Value value, int n, int group,
                                           float (&m)[H], float (&l)[H], float (&acc)[H][E]) {
    constexpr int J = U / G;
    static_assert(U % G == 0, "whole keys a group");
    float sc[H][J];
    auto has = [&](int j) { return FULL || G * j + group < n; };
#pragma unroll
    for (int j = 0; j < J; ++j) {
        float kv[E];
        if (has(j)) key(G * j + group, kv);
#pragma unroll
        for (int h = 0; h < H; ++h) {
            float d = 0.0f;
            if (has(j)) {
#pragma unroll
                for (int e = 0; e < E; ++e) d = fmaf(qv[h][e], kv[e], d);
            }
            sc[h][j] = d;
        }
    }
#pragma unroll
    for (int o = 16 / G; o > 0; o >>= 1) {
#pragma unroll
        for (int h = 0; h < H; ++h) {
#pragma unroll
            for (int j = 0; j < J; ++j) sc[h][j] += __shfl_xor_sync(0xffffffffu, sc[h][j], o);
        }
    }
#pragma unroll
    for (int h = 0; h < H; ++h) {
        float mx = m[h];
#pragma unroll
        for (int j = 0; j < J; ++j) if (has(j)) mx = fmaxf(mx, sc[h][j]);
        // With G = 2, mx stays -inf only in a group that has had no key yet: its acc and l are 0 whatever corr is.
        float corr = G > 1 && !FULL && mx == DA_NEG_INF ? 0.0f : expf(m[h] - mx);
        l[h] *= corr;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[h][e] *= corr;
#pragma unroll
        for (int j = 0; j < J; ++j) {
            float p = has(j) ? expf(sc[h][j] - mx) : 0.0f;
            if (has(j)) l[h] += p;
            sc[h][j] = p;
        }
        m[h] = mx;
    }
    // Per (head, element) the values add in key order, as before the accessors: the same sums bit for bit.
#pragma unroll
    for (int j = 0; j < J; ++j) {
        if (has(j)) {
            float vv[E];
            value(G * j + group, vv);
#pragma unroll
            for (int h = 0; h < H; ++h) {
#pragma unroll
                for (int e = 0; e < E; ++e) acc[h][e] = fmaf(sc[h][j], vv[e], acc[h][e]);
            }
        }
    }
}

// Merges the two half-warps' online-softmax states (attend_run with G = 2): afterwards both halves hold the warp's.
template <int E, int H>
__device__ __forceinline__ void merge_halves(float (&m)[H], float (&l)[H], float (&acc)[H][E]) {
#pragma unroll
    for (int h = 0; h < H; ++h) {
        float mo = __shfl_xor_sync(0xffffffffu, m[h], 16);
        float lo = __shfl_xor_sync(0xffffffffu, l[h], 16);
        float mx = fmaxf(m[h], mo);
        float w = m[h] == DA_NEG_INF ? 0.0f : expf(m[h] - mx);
        float wo = mo == DA_NEG_INF ? 0.0f : expf(mo - mx);
        l[h] = l[h] * w + lo * wo;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            float ao = __shfl_xor_sync(0xffffffffu, acc[h][e], 16);
            acc[h][e] = acc[h][e] * w + ao * wo;
        }
        m[h] = mx;
    }
}

// Where a block's work lies: (row, KV head g, first query head h0, split) from blockIdx.x; keys [begin, end).
struct DaBlock {
    int row, g, h0, begin, end, split;
    __device__ DaBlock(const long long* key_len, int nh, int nkv, int splits, int span, int heads) {
        int n_rep = nh / nkv;
        int chunks = n_rep / heads;
        int blk = blockIdx.x;
        split = blk % splits; blk /= splits;
        int c = blk % chunks; blk /= chunks;
        g = blk % nkv;
        row = blk / nkv;
        h0 = g * n_rep + c * heads;
        // The row's own keys are split evenly (whole 32-key strides; `span` is the split of the whole window):
        // a row shorter than the window keeps every split busy instead of leaving the tail splits empty, so a
        // window padded past the longest row (CUDA graphs capture windows by octaves) costs no extra time.
        int len = (int)key_len[row];
        int own = min(span, ((len + splits - 1) / splits + 31) / 32 * 32);
        begin = split * own;
        end = min(len, begin + own);
    }
};

// Loads the block's H query rows (pre-scaled) and clears the softmax state. A head spans LANES lanes (D = LANES
// E): with 16, both half-warps hold the whole query.
template <typename T, int E, int H, int LANES = 32>
__device__ __forceinline__ void attend_begin(const T* q, const DaBlock& b, int nh, float scale, int lane,
                                             float (&qv)[H][E], float (&m)[H], float (&l)[H],
                                             float (&acc)[H][E]) {
    typedef Lane<T, E, (E % 4) == 0> L;
#pragma unroll
    for (int h = 0; h < H; ++h) {
        L::ld(q + ((size_t)b.row * nh + b.h0 + h) * (LANES * E) + (lane % LANES) * E, qv[h]);
#pragma unroll
        for (int e = 0; e < E; ++e) {
            qv[h][e] *= scale;
            acc[h][e] = 0.0f;
        }
        m[h] = DA_NEG_INF;
        l[h] = 0.0f;
    }
}

// Element j of query head `head`'s output from its `splits` partials (ws_acc [.., splits, d], ws_ml [.., splits,
// 2]): the partials rescaled to their common maximum. Loads bypass L1 (__ldcg): another block of this grid may
// have written them (the last-arriving block's merge below).
template <typename T>
__device__ __forceinline__ void merge_splits(const float* ws_acc, const float* ws_ml, T* out, size_t head,
                                             int splits, int d, int j) {
    float mx = DA_NEG_INF;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, __ldcg(ws_ml + 2 * (head * splits + s)));
    float num = 0.0f, den = 0.0f;
    for (int s = 0; s < splits; ++s) {
        size_t part = head * splits + s;
        float m = __ldcg(ws_ml + 2 * part);
        float wgt = m == DA_NEG_INF ? 0.0f : expf(m - mx);
        num = fmaf(__ldcg(ws_acc + part * d + j), wgt, num);
        den = fmaf(__ldcg(ws_ml + 2 * part + 1), wgt, den);
    }
    Io<T>::st(out + head * d + j, den > 0.0f ? num / den : 0.0f);
}

// Merges the warps' states through shared memory (s_acc: DA_WARPS x H x D floats) and writes the output (one
// split) or the split's unnormalised partial (several). With several splits and `arrivals` (zeroed, one counter
// per (row, KV head, head group), used once), the block that arrives last merges the splits and writes the
// output, as decode_attention_combine would, so that no second kernel is launched (a decode step at batch 1
// launches ~10 kernels a layer; each costs ~2.5 us of launch and ramp whatever its work). A head spans LANES
// lanes (D = LANES E); with 16 the warp's two halves hold the same merged state (merge_halves) and the first
// writes it.
template <typename T, int E, int H, int LANES = 32>
__device__ __forceinline__ void attend_end(const DaBlock& b, int nh, int splits, T* out, float* ws_acc,
                                           float* ws_ml, unsigned int* arrivals, float* s_acc,
                                           const float (&m)[H], const float (&l)[H], const float (&acc)[H][E]) {
    constexpr int D = LANES * E;
    __shared__ float s_m[DA_WARPS][H];
    __shared__ float s_l[DA_WARPS][H];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int h = 0; h < H; ++h) {
        if (lane < LANES) {
#pragma unroll
            for (int e = 0; e < E; ++e) s_acc[(warp * H + h) * D + lane * E + e] = acc[h][e];
        }
        if (lane == 0) { s_m[warp][h] = m[h]; s_l[warp][h] = l[h]; }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < H * D; i += blockDim.x) {
        int h = i / D, j = i % D;
        float mx = DA_NEG_INF;
        for (int w = 0; w < DA_WARPS; ++w) mx = fmaxf(mx, s_m[w][h]);
        float num = 0.0f, den = 0.0f;
        for (int w = 0; w < DA_WARPS; ++w) {
            float wgt = s_m[w][h] == DA_NEG_INF ? 0.0f : expf(s_m[w][h] - mx);
            num = fmaf(s_acc[(w * H + h) * D + j], wgt, num);
            den = fmaf(s_l[w][h], wgt, den);
        }
        size_t head = (size_t)b.row * nh + b.h0 + h;
        if (splits == 1) {
            Io<T>::st(out + head * D + j, den > 0.0f ? num / den : 0.0f);
        } else {
            size_t part = head * splits + b.split;
            ws_acc[part * D + j] = num;
            if (j == 0) { ws_ml[2 * part] = mx; ws_ml[2 * part + 1] = den; }
        }
    }
    if (splits == 1 || arrivals == nullptr) return;
    __shared__ bool s_last;
    __threadfence();  // this block's partials reach device scope before its arrival counts
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(arrivals + blockIdx.x / splits, 1u) == (unsigned int)(splits - 1);
    __syncthreads();
    if (!s_last) return;
    __threadfence();  // every split's partials are visible: each arrived after its fence
    for (int i = threadIdx.x; i < H * D; i += blockDim.x)
        merge_splits<T>(ws_acc, ws_ml, out, (size_t)b.row * nh + b.h0 + i / D, splits, D, i % D);
}

// Register-streaming variant (any dtype, D = 32 E): each warp loads its runs of U keys straight into registers.
template <typename T, int E, int H>
__device__ void decode_attention(const T* q, const T* kc, const T* vc, const long long* key_len, T* out,
                                 int nh, int nkv, int width, float scale, int splits, int span, float* ws_acc,
                                 float* ws_ml, unsigned int* arrivals) {
    pdl_prologue();
    constexpr int D = 32 * E;
    // Keys per run: 4, or 2 for the widest heads (registers: U x E floats each of keys and values).
    constexpr int U = E >= 8 ? 2 : 4;
    typedef Lane<T, E, (E % 4) == 0> L;
    __shared__ float s_acc[DA_WARPS * H * D];
    DaBlock b(key_len, nh, nkv, splits, span, H);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float qv[H][E], acc[H][E], m[H], l[H];
    attend_begin<T, E, H>(q, b, nh, scale, lane, qv, m, l, acc);
    size_t base = (size_t)b.row * width;
    for (int t0 = b.begin + warp * U; t0 < b.end; t0 += DA_WARPS * U) {
        int n = min(U, b.end - t0);  // warp-uniform
        float kv[U][E], vv[U][E];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (u < n) {
                size_t at = ((base + t0 + u) * nkv + b.g) * D + lane * E;
                L::ld(kc + at, kv[u]);
                L::ld(vc + at, vv[u]);
            }
        }
        attend_run<E, H, U, 1, false>(
            qv, [&](int u, float* o) { copy_lane<E>(kv[u], o); }, [&](int u, float* o) { copy_lane<E>(vv[u], o); },
            n, 0, m, l, acc);
    }
    attend_end<T, E, H>(b, nh, splits, out, ws_acc, ws_ml, arrivals, s_acc, m, l, acc);
}

// Asynchronous-copy variant (bf16, D = 64 or 128): the block copies tiles of DA_TILE keys (K and V) into
// shared memory with cp.async, two tiles in flight, and its warps attend from there. No registers hold data
// in flight, so the copies of a whole tile are outstanding at once: the cache streams near bandwidth where the
// register variant stalls on each warp's loads.
#define DA_TILE 32
// Blocks an SM must hold at once (__launch_bounds__): 4 (64 registers a thread) for one or two query heads a
// block, so that a batch of 64 rows x 8 KV heads (512 blocks) is resident in one wave on a 132-SM GPU instead of
// 1.3 waves at the 80 registers the compiler picks unbounded; 3 (80 registers) for four, which spill at 64.
#define DA_MIN_BLOCKS(H) ((H) >= 4 ? 3 : 4)
// cp.async needs sm_80; PTX for older targets copies synchronously (same results, no overlap).
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
#if __CUDA_ARCH__ >= 800
    unsigned int d = (unsigned int)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
#else
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// E bf16 values from shared memory (8-byte loads; __ldg is for global memory only).
template <int E> __device__ __forceinline__ void lds_bf16(const unsigned short* p, float* o) {
#pragma unroll
    for (int e = 0; e < E / 2; ++e) {
        unsigned int w = reinterpret_cast<const unsigned int*>(p)[e];
        o[2 * e] = bf16_to_f32((unsigned short)(w & 0xffffu));
        o[2 * e + 1] = bf16_to_f32((unsigned short)(w >> 16));
    }
}
// The same with 16-byte loads where E is a multiple of 8 (the run 16-byte aligned).
template <int E> __device__ __forceinline__ void lds_bf16_vec(const unsigned short* p, float* o) {
    if constexpr (E % 8 == 0) {
#pragma unroll
        for (int e = 0; e < E / 8; ++e) Vec16<unsigned short>::ld(p + 8 * e, o + 8 * e);
    } else {
        lds_bf16<E>(p, o);
    }
}

// HALVES: each warp takes two keys at once, a half-warp each (attend_run with G = 2; E = D / 16), instead of one
// key on all 32 lanes (G = 1; E = D / 32).
template <int E, int H, bool HALVES>
__device__ void decode_attention_async(const unsigned short* q, const unsigned short* kc,
                                       const unsigned short* vc, const long long* key_len, unsigned short* out,
                                       int nh, int nkv, int width, float scale, int splits, int span,
                                       float* ws_acc, float* ws_ml, unsigned int* arrivals) {
    pdl_prologue();
    constexpr int LANES = HALVES ? 16 : 32;
    constexpr int D = LANES * E;
    constexpr int U = DA_TILE / DA_WARPS;
    constexpr int ROW_CHUNKS = D / 8;  // 16-byte pieces of one key's row
    // Two stages of (K, V) tiles; reused for the warps' merge once the keys are done.
    __shared__ __align__(16) unsigned short tiles[2][2][DA_TILE][D];
    static_assert(sizeof(tiles) >= DA_WARPS * H * D * sizeof(float), "merge buffer fits the tiles");
    DaBlock b(key_len, nh, nkv, splits, span, H);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float qv[H][E], acc[H][E], m[H], l[H];
    attend_begin<unsigned short, E, H, LANES>(q, b, nh, scale, lane, qv, m, l, acc);
    size_t base = (size_t)b.row * width;
    int ntiles = b.end > b.begin ? (b.end - b.begin + DA_TILE - 1) / DA_TILE : 0;
    // Each thread copies the same 16-byte piece `part` of keys key0, key0 + PASS_KEYS, .. of every tile, from K
    // and from V: the addresses are computed once, and a pass adds a constant stride (the loop over the tile's
    // pieces with a division and a 64-bit product per piece took ~45 instructions a piece: more than a quarter of
    // the warps' instructions a tile at batch 64).
    constexpr int PASS_KEYS = DA_WARPS * 32 / ROW_CHUNKS;
    static_assert((DA_WARPS * 32) % ROW_CHUNKS == 0 && DA_TILE % PASS_KEYS == 0, "whole passes a tile");
    int key0 = threadIdx.x / ROW_CHUNKS, part = threadIdx.x % ROW_CHUNKS;
    size_t key_stride = (size_t)nkv * D;
    size_t first_piece = ((base + b.begin + key0) * nkv + b.g) * D + part * 8;
    auto issue = [&](int tile, int stage) {
        int t0 = b.begin + tile * DA_TILE;
        size_t at = first_piece + (size_t)tile * DA_TILE * key_stride;
#pragma unroll
        for (int p = 0; p < DA_TILE / PASS_KEYS; ++p) {
            int key = key0 + p * PASS_KEYS;
            if (t0 + key < b.end) {
                size_t o = at + (size_t)p * PASS_KEYS * key_stride;
                cp_async16(&tiles[stage][0][key][part * 8], kc + o);
                cp_async16(&tiles[stage][1][key][part * 8], vc + o);
            }
        }
        cp_async_commit();
    };
    if (ntiles > 0) issue(0, 0);
    for (int i = 0; i < ntiles; ++i) {
        int stage = i & 1;
        if (i + 1 < ntiles) {
            issue(i + 1, stage ^ 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        int first = warp * U;
        int n = min(U, b.end - (b.begin + i * DA_TILE + first));  // warp-uniform, may be <= 0
        if (n > 0) {
            if constexpr (HALVES) {
                int sl = lane % 16;
                auto key = [&](int u, float* o) { lds_bf16_vec<E>(&tiles[stage][0][first + u][sl * E], o); };
                auto value = [&](int u, float* o) { lds_bf16_vec<E>(&tiles[stage][1][first + u][sl * E], o); };
                if (n == U)
                    attend_run<E, H, U, 2, true>(qv, key, value, n, lane / 16, m, l, acc);
                else
                    attend_run<E, H, U, 2, false>(qv, key, value, n, lane / 16, m, l, acc);
            } else {
                auto key = [&](int u, float* o) { lds_bf16<E>(&tiles[stage][0][first + u][lane * E], o); };
                auto value = [&](int u, float* o) { lds_bf16<E>(&tiles[stage][1][first + u][lane * E], o); };
                if (n == U)
                    attend_run<E, H, U, 1, true>(qv, key, value, n, 0, m, l, acc);
                else
                    attend_run<E, H, U, 1, false>(qv, key, value, n, 0, m, l, acc);
            }
        }
        __syncthreads();  // the next issue overwrites this stage
    }
    if constexpr (HALVES) merge_halves<E, H>(m, l, acc);
    attend_end<unsigned short, E, H, LANES>(b, nh, splits, out, ws_acc, ws_ml, arrivals,
                                            reinterpret_cast<float*>(tiles), m, l, acc);
}

// Merges the splits of decode_attention: one block per (row, head), one thread per element.
template <typename T>
__device__ void decode_attention_combine(const float* ws_acc, const float* ws_ml, T* out, int splits, int d) {
    pdl_prologue();
    int j = threadIdx.x;
    if (j >= d) return;
    merge_splits<T>(ws_acc, ws_ml, out, blockIdx.x, splits, d, j);
}

#define DECODE_ATTENTION(NAME, T, E, H) \
    extern "C" __global__ void NAME(const T* q, const T* kc, const T* vc, const long long* kl, T* o, int nh, \
                                    int nkv, int width, float scale, int splits, int span, float* wa, \
                                    float* wm, unsigned int* arr) { \
        decode_attention<T, E, H>(q, kc, vc, kl, o, nh, nkv, width, scale, splits, span, wa, wm, arr); \
    }
// Query heads per block H = 1, 2 or 4 (the largest that divides the group, up to 4: no idle head lanes).
#define DECODE_ATTENTION_HEADS(T, SUF, E, D) \
    DECODE_ATTENTION(decode_attention_##SUF##_d##D##_h1, T, E, 1) \
    DECODE_ATTENTION(decode_attention_##SUF##_d##D##_h2, T, E, 2) \
    DECODE_ATTENTION(decode_attention_##SUF##_d##D##_h4, T, E, 4)
DECODE_ATTENTION_HEADS(float, f32, 1, 32)
DECODE_ATTENTION_HEADS(float, f32, 2, 64)
DECODE_ATTENTION_HEADS(float, f32, 4, 128)
DECODE_ATTENTION_HEADS(float, f32, 8, 256)
DECODE_ATTENTION_HEADS(unsigned short, bf16, 1, 32)
DECODE_ATTENTION_HEADS(unsigned short, bf16, 2, 64)
DECODE_ATTENTION_HEADS(unsigned short, bf16, 4, 128)
DECODE_ATTENTION_HEADS(unsigned short, bf16, 8, 256)
#define DECODE_ATTENTION_ASYNC(NAME, E, H, HALVES) \
    extern "C" __global__ void __launch_bounds__(DA_WARPS * 32, DA_MIN_BLOCKS(H)) \
        NAME(const unsigned short* q, const unsigned short* kc, const unsigned short* vc, const long long* kl, \
             unsigned short* o, int nh, int nkv, int width, float scale, int splits, int span, float* wa, \
             float* wm, unsigned int* arr) { \
        decode_attention_async<E, H, HALVES>(q, kc, vc, kl, o, nh, nkv, width, scale, splits, span, wa, wm, \
                                             arr); \
    }
#define DECODE_ATTENTION_ASYNC_HEADS(KIND, E, D, HALVES) \
    DECODE_ATTENTION_ASYNC(decode_attention_##KIND##_bf16_d##D##_h1, E, 1, HALVES) \
    DECODE_ATTENTION_ASYNC(decode_attention_##KIND##_bf16_d##D##_h2, E, 2, HALVES) \
    DECODE_ATTENTION_ASYNC(decode_attention_##KIND##_bf16_d##D##_h4, E, 4, HALVES)
DECODE_ATTENTION_ASYNC_HEADS(async, 2, 64, false)
DECODE_ATTENTION_ASYNC_HEADS(async, 4, 128, false)
DECODE_ATTENTION_ASYNC_HEADS(halves, 4, 64, true)
// No halves kernel for four heads of 128: its 32 floats each of queries and accumulators a lane spill at 80
// registers; decode_ops.rs runs the async kernel there.
DECODE_ATTENTION_ASYNC(decode_attention_halves_bf16_d128_h1, 8, 1, true)
DECODE_ATTENTION_ASYNC(decode_attention_halves_bf16_d128_h2, 8, 2, true)
extern "C" __global__ void decode_attention_combine_f32(const float* wa, const float* wm, float* o, int splits,
                                                        int d) {
    decode_attention_combine<float>(wa, wm, o, splits, d);
}
extern "C" __global__ void decode_attention_combine_bf16(const float* wa, const float* wm, unsigned short* o,
                                                         int splits, int d) {
    decode_attention_combine<unsigned short>(wa, wm, o, splits, d);
}

// The warp's largest `best` and, among equal ones, the smallest index `bi`, in every lane.
__device__ __forceinline__ void warp_max_first(float& best_io, int& bi_io) {
    float best = best_io;
    int bi = bi_io;
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ob > best || (ob == best && oi < bi)) { best = ob; bi = oi; }
    }
    best_io = best;
    bi_io = bi;
}

// The first index of the maximum of x[0..v) (as argmax), and the maximum, in every thread of the block.
template <typename T>
__device__ void row_argmax(const T* x, int v, float* best_out, int* idx_out) {
    __shared__ float s_val[32];
    __shared__ int s_idx[32];
    float best = DA_NEG_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        float a = Io<T>::ld(x + i);
        if (a > best) { best = a; bi = i; }  // i grows: the first maximum of this thread's stripe
    }
    warp_max_first(best, bi);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { s_val[warp] = best; s_idx[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        int nw = (blockDim.x + 31) >> 5;
        best = lane < nw ? s_val[lane] : DA_NEG_INF;
        bi = lane < nw ? s_idx[lane] : 0x7fffffff;
        warp_max_first(best, bi);
        if (lane == 0) { s_val[0] = best; s_idx[0] = bi; }
    }
    __syncthreads();
    *best_out = s_val[0];
    // A row without a number above -inf (all NaN or -inf: a diverged model) has no maximum; index 0 keeps the
    // callers' reads of x[index] in the row.
    *idx_out = s_idx[0] == 0x7fffffff ? 0 : s_idx[0];
}

// Greedy pick per row of logits [rows, v]: out[row] = the first index of the row's maximum, out[rows + row] =
// its log-prob, -log(sum exp(x - max)) (torch's log_softmax of the maximum, fp32). One block per row; the
// second pass re-reads the row from L2.
template <typename T>
__device__ void greedy_pick(const T* logits, int v, double* out) {
    pdl_prologue();
    __shared__ float shared[32];
    const T* x = logits + (size_t)blockIdx.x * v;
    float best;
    int bi;
    row_argmax<T>(x, v, &best, &bi);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < v; i += blockDim.x) sum += expf(Io<T>::ld(x + i) - best);
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) {
        out[blockIdx.x] = (double)bi;
        out[gridDim.x + blockIdx.x] = (double)(-logf(sum));
    }
}
extern "C" __global__ void greedy_pick_f32(const float* x, int v, double* out) { greedy_pick<float>(x, v, out); }
extern "C" __global__ void greedy_pick_bf16(const unsigned short* x, int v, double* out) {
    greedy_pick<unsigned short>(x, v, out);
}

// Scans each thread's `own` across the block in thread order: the thread's interval [before, end) of the
// running sum and the block's total. A thread's `before` is its left neighbour's `end`, the same float (a warp's
// last thread ends at the block scan's value, where the next warp begins, not at a re-rounded sum), so
// consecutive threads' intervals meet exactly: one owner per target. s_warp: 32 floats of shared memory.
__device__ __forceinline__ void block_scan_interval(float own, float* s_warp, float* before, float* end,
                                                    float* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    float inc = own;
    for (int o = 1; o < 32; o <<= 1) {
        float n = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += n;
    }
    if (lane == 31) s_warp[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        float w = lane < nw ? s_warp[lane] : 0.0f;
        for (int o = 1; o < 32; o <<= 1) {
            float n = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += n;
        }
        if (lane < nw) s_warp[lane] = w;  // inclusive totals of warps 0..lane
    }
    __syncthreads();
    const float offset = warp > 0 ? s_warp[warp - 1] : 0.0f;
    const float left = __shfl_up_sync(0xffffffffu, inc, 1);
    *before = offset + (lane > 0 ? left : 0.0f);
    *end = lane == 31 ? s_warp[warp] : inc + offset;
    *total = s_warp[nw - 1];
}

// Temperature sampling per row of logits [rows, v] (model/src/temperature_sampling.rs's composition in one
// kernel): params [3, rows] f32 hold each row's temperature t (<= 0: greedy), log-prob temperature tl and uniform
// u in [0, 1). A sampling row takes the first token whose running sum of exp(x / t - max / t) exceeds u times the
// row's total (the inverse CDF of softmax(x / t)), a greedy row the first maximum; out[row] = the token,
// out[rows + row] = its log_softmax(x / tl) in fp32. One block per row: thread k owns the contiguous chunk k of
// the row, the chunks' sums are scanned across the block in thread order, and the one thread whose chunk holds
// the target walks it. Replaces ~12 full passes over [rows, v] fp32 (a cast, two softmaxes, a cumsum, ...).
template <typename T>
__device__ void temperature_pick(const T* logits, int v, const float* params, double* out) {
    pdl_prologue();
    __shared__ float s_warp[32];
    __shared__ float s_lsum[32];
    __shared__ int s_pick;
    const int rows = gridDim.x, row = blockIdx.x;
    const T* x = logits + (size_t)row * v;
    const float t = params[row], tl = params[rows + row], u = params[2 * rows + row];
    const bool sampling = t > 0.0f;
    float best;
    int bi;
    row_argmax<T>(x, v, &best, &bi);
    // Division, not a reciprocal's product, as torch's logits / t: the same rounded terms as the composition.
    const float mt = sampling ? best / t : 0.0f, ml = best / tl;
    const int chunk = (v + (int)blockDim.x - 1) / (int)blockDim.x;
    const int lo = min(v, (int)threadIdx.x * chunk), hi = min(v, lo + chunk);
    float own = 0.0f, lsum = 0.0f;
    for (int i = lo; i < hi; ++i) {
        float a = Io<T>::ld(x + i);
        if (sampling) own += expf(a / t - mt);
        lsum += expf(a / tl - ml);
    }
    lsum = block_sum(lsum, s_lsum);
    if (threadIdx.x == 0) s_pick = v - 1;  // u * total rounding up to the total: the composition's clamp
    int tok = bi;
    if (sampling) {
        // Each thread's chunk of the row is an interval of the cumulative mass; the one holding the target walks.
        float before, inc, total;
        block_scan_interval(own, s_warp, &before, &inc, &total);
        const float target = u * total;
        if (before <= target && target < inc) {
            // This chunk holds the target: walk it. Summed from `before` the chunk may round short of `inc`;
            // then its last token with mass is the pick.
            float acc = before;
            int pick = -1, last = -1;
            for (int i = lo; i < hi; ++i) {
                float e = expf(Io<T>::ld(x + i) / t - mt);
                if (e > 0.0f) last = i;
                acc += e;
                if (acc > target) { pick = i; break; }
            }
            s_pick = pick >= 0 ? pick : last;
        }
        __syncthreads();
        tok = s_pick;
    }
    if (threadIdx.x == 0) {
        out[row] = (double)tok;
        out[rows + row] = (double)(Io<T>::ld(x + tok) / tl - ml - logf(lsum));
    }
}
extern "C" __global__ void temperature_pick_f32(const float* x, int v, const float* params, double* out) {
    temperature_pick<float>(x, v, params, out);
}
extern "C" __global__ void temperature_pick_bf16(const unsigned short* x, int v, const float* params, double* out) {
    temperature_pick<unsigned short>(x, v, params, out);
}

// temperature_pick for many rows, in two kernels: a block a row leaves most SMs idle at 64 rows and walks the
// vocabulary three times, each thread's loads one after another (~90 us a step on an H100). Part p of `parts` of
// a row covers [p chunk, (p + 1) chunk) (chunk = ceil(v / parts)); temperature_pick_part writes ws[row, p] =
// (its maximum, the first index of it, sum exp(x / t - max / t) when sampling, sum exp(x / tl - max / tl)),
// the sums relative to the part's own maximum. temperature_pick_select (a block a row) rescales them to the
// row's maximum, finds the part whose cumulative interval holds u x total, and walks only that part as
// temperature_pick walks the row. Same pick and log-prob, summed in another order.
template <typename T>
__device__ void temperature_pick_part(const T* logits, int v, int parts, const float* params, float* ws) {
    pdl_prologue();
    __shared__ float s_own[32];
    __shared__ float s_lsum[32];
    const int rows = gridDim.x / parts, row = blockIdx.x / parts, p = blockIdx.x % parts;
    const int chunk = (v + parts - 1) / parts;
    const int lo = min(v, p * chunk), hi = min(v, lo + chunk);
    const T* x = logits + (size_t)row * v + lo;
    const float t = params[row], tl = params[rows + row];
    const bool sampling = t > 0.0f;
    float best;
    int bi;
    row_argmax<T>(x, hi - lo, &best, &bi);
    float own = 0.0f, lsum = 0.0f;
    if (best > DA_NEG_INF) {  // an empty part, or one all -inf, has no mass
        const float mt = sampling ? best / t : 0.0f, ml = best / tl;
        for (int i = threadIdx.x; i < hi - lo; i += blockDim.x) {
            float a = Io<T>::ld(x + i);
            if (sampling) own += expf(a / t - mt);
            lsum += expf(a / tl - ml);
        }
    }
    own = block_sum(own, s_own);
    lsum = block_sum(lsum, s_lsum);
    if (threadIdx.x == 0) {
        float* w = ws + 4 * (size_t)blockIdx.x;
        w[0] = best;
        w[1] = __int_as_float(lo + bi);
        w[2] = own;
        w[3] = lsum;
    }
}

// One block a row (parts <= 32). Warp 0 merges the parts; then the block walks the chosen part.
template <typename T>
__device__ void temperature_pick_select(const T* logits, int v, int parts, const float* params, const float* ws,
                                        double* out) {
    pdl_prologue();
    __shared__ float s_warp[32];
    __shared__ int s_pick, s_part, s_last;
    __shared__ float s_before, s_target, s_best, s_lsum;
    __shared__ int s_bi;
    const int rows = gridDim.x, row = blockIdx.x;
    const T* x = logits + (size_t)row * v;
    const float t = params[row], tl = params[rows + row], u = params[2 * rows + row];
    const bool sampling = t > 0.0f;
    const int chunk = (v + parts - 1) / parts;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (warp == 0) {
        const float* w = ws + 4 * ((size_t)row * parts + lane);
        const float pm = lane < parts ? w[0] : DA_NEG_INF;
        float best = pm;
        int bi = pm > DA_NEG_INF ? __float_as_int(w[1]) : 0x7fffffff;
        warp_max_first(best, bi);
        const float mt = sampling ? best / t : 0.0f, ml = best / tl;
        const bool mass = pm > DA_NEG_INF;
        float st = mass && sampling ? w[2] * expf(pm / t - mt) : 0.0f;
        float sl = mass ? w[3] * expf(pm / tl - ml) : 0.0f;
        for (int o = 16; o > 0; o >>= 1) sl += __shfl_xor_sync(0xffffffffu, sl, o);
        // Inclusive scan of the parts' sums in part order; a part's interval starts at its left neighbour's end
        // (the same float), so one part owns the target.
        float inc = st;
        for (int o = 1; o < 32; o <<= 1) {
            float n = __shfl_up_sync(0xffffffffu, inc, o);
            if (lane >= o) inc += n;
        }
        const float total = __shfl_sync(0xffffffffu, inc, 31);
        const float left = __shfl_up_sync(0xffffffffu, inc, 1);
        const float before = lane > 0 ? left : 0.0f;
        const float target = u * total;
        if (lane == 0) {
            s_pick = v - 1;  // u * total rounding up to the total: the composition's clamp
            s_part = -1;
            s_last = -1;
            s_best = best;
            s_bi = bi == 0x7fffffff ? 0 : bi;
            s_lsum = sl;
            s_target = target;
        }
        __syncwarp();
        if (sampling && lane < parts && before <= target && target < inc) {
            s_part = lane;
            s_before = before;
        }
    }
    __syncthreads();
    int tok = s_bi;
    const float ml = s_best / tl;
    if (sampling && s_part >= 0) {
        const float mt = s_best / t, target = s_target;
        const int plo = min(v, s_part * chunk), phi = min(v, plo + chunk);
        const int sub = (phi - plo + (int)blockDim.x - 1) / (int)blockDim.x;
        const int lo = min(phi, plo + (int)threadIdx.x * sub), hi = min(phi, lo + sub);
        float own = 0.0f;
        int last = -1;
        for (int i = lo; i < hi; ++i) {
            float e = expf(Io<T>::ld(x + i) / t - mt);
            if (e > 0.0f) last = i;
            own += e;
        }
        if (last >= 0) atomicMax(&s_last, last);
        // The block's scan from the part's start, as temperature_pick's over the row.
        float from, to, total;
        block_scan_interval(own, s_warp, &from, &to, &total);
        const float before = s_before + from;
        const float end = s_before + to;
        // The part's sum here may round short of its merged sum: a target past this part's end then takes the
        // part's last token with mass (the clamp of temperature_pick's walk).
        if (before <= target && target < end) {
            // Summed from `before` the chunk may round short of `end`; then its last token with mass is the pick.
            float acc = before;
            int pick = -1;
            for (int i = lo; i < hi; ++i) {
                acc += expf(Io<T>::ld(x + i) / t - mt);
                if (acc > target) { pick = i; break; }
            }
            s_pick = pick >= 0 ? pick : last;
        } else if (threadIdx.x == blockDim.x - 1 && target >= end) {
            s_part = -2;
        }
        __syncthreads();
        tok = s_part == -2 && s_last >= 0 ? s_last : s_pick;
    }
    if (threadIdx.x == 0) {
        out[row] = (double)tok;
        out[rows + row] = (double)(Io<T>::ld(x + tok) / tl - ml - logf(s_lsum));
    }
}
extern "C" __global__ void temperature_pick_part_f32(const float* x, int v, int parts, const float* params,
                                                     float* ws) {
    temperature_pick_part<float>(x, v, parts, params, ws);
}
extern "C" __global__ void temperature_pick_part_bf16(const unsigned short* x, int v, int parts,
                                                      const float* params, float* ws) {
    temperature_pick_part<unsigned short>(x, v, parts, params, ws);
}
extern "C" __global__ void temperature_pick_select_f32(const float* x, int v, int parts, const float* params,
                                                       const float* ws, double* out) {
    temperature_pick_select<float>(x, v, parts, params, ws, out);
}
extern "C" __global__ void temperature_pick_select_bf16(const unsigned short* x, int v, int parts,
                                                        const float* params, const float* ws, double* out) {
    temperature_pick_select<unsigned short>(x, v, parts, params, ws, out);
}

// Skinny linear layer y = x W^T for the one or two rows of a small decode batch (x [R, k]; W [n, k] row-major, as
// torch's Linear stores it; y [R, n]). cuBLAS tiles such a product by output columns, so at batch 1 a
// [1, 1024] x [1024, 4096] projection is a few dozen tiles on 132 SMs and streams its weights below the memory
// bandwidth. Here each warp owns one output column: its lanes stream that row of W as 16-byte vectors,
// SL_INFLIGHT of them in flight before any is used (W is read once, bypassing L1, so L1 keeps x, which every warp
// of the SM reads), multiply them by every row of x, accumulate in fp32 and reduce across the warp. The sum rounds
// once to T, as cuBLAS's fp32 accumulation does; only the summation order differs. From 3 rows on, x's reads
// through L1 (one per row and weight vector) cost more than cuBLAS's idle SMs (measured up to 8 rows, also with
// 2 and 4 columns a warp sharing each x vector: docs/benchmarks.md), so decode_ops.rs stops at 2.
#define SL_WARPS 4
#define SL_INFLIGHT 8
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
#if __CUDA_ARCH__ >= 700
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
#else
    return __ldg(p);
#endif
}
// EARLY (the `skinny_linear_early_*` kernels, which PDL launches run): a lane's first SL_INFLIGHT weight vectors
// (its whole row of W for k <= 2048 in bf16) are loaded before the PDL wait. No kernel writes weights, so they may
// be read while the kernel ahead still runs: the projection's first DRAM round trip then overlaps that kernel
// instead of following it. x and y are touched only after the wait. Without PDL the wait is a no-op and both
// variants compute the same sums in the same order.
template <typename T, int R, bool EARLY>
__device__ void skinny_linear(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, int n, int k) {
    if (!EARLY) pdl_prologue();
    constexpr int E = Vec16<T>::E;
    int lane = threadIdx.x & 31;
    int col = blockIdx.x * SL_WARPS + (threadIdx.x >> 5);
    if (col >= n) return;
    const uint4* wr = reinterpret_cast<const uint4*>(w + (size_t)col * k);
    const uint4* xr = reinterpret_cast<const uint4*>(x);
    int vecs = k / E;  // per row of W and of x
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    for (int base = lane; base < vecs; base += 32 * SL_INFLIGHT) {
        uint4 wv[SL_INFLIGHT];
#pragma unroll
        for (int u = 0; u < SL_INFLIGHT; ++u) {
            int v = base + u * 32;
            wv[u] = v < vecs ? ld_stream(wr + v) : make_uint4(0u, 0u, 0u, 0u);
        }
        if (EARLY && base == lane) pdl_prologue();
#pragma unroll
        for (int u = 0; u < SL_INFLIGHT; ++u) {
            int v = base + u * 32;
            if (v >= vecs) break;
            float wf[E];
            Vec16<T>::unpack(wv[u], wf);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                float xf[E];
                Vec16<T>::unpack(__ldg(xr + (size_t)r * vecs + v), xf);
#pragma unroll
                for (int e = 0; e < E; ++e) acc[r] = fmaf(xf[e], wf[e], acc[r]);
            }
        }
    }
    // A lane past the row's last vector (k below 32 vectors) skipped the loop, and with it the wait.
    if (EARLY && lane >= vecs) pdl_prologue();
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float s = acc[r];
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == r) Io<T>::st(y + (size_t)r * n + col, s);
    }
}
#define SKINNY_LINEAR(SUF, T, R) \
    extern "C" __global__ void skinny_linear_##SUF##_r##R(const T* x, const T* w, T* y, int n, int k) { \
        skinny_linear<T, R, false>(x, w, y, n, k); \
    } \
    extern "C" __global__ void skinny_linear_early_##SUF##_r##R(const T* x, const T* w, T* y, int n, int k) { \
        skinny_linear<T, R, true>(x, w, y, n, k); \
    }
SKINNY_LINEAR(f32, float, 1)
SKINNY_LINEAR(f32, float, 2)
SKINNY_LINEAR(bf16, unsigned short, 1)
SKINNY_LINEAR(bf16, unsigned short, 2)

// greedy_pick for few rows, split over `parts` blocks a row (one block a row leaves all but a few SMs idle: a
// 151,936-token row took one block ~57 us). Block (row, p) takes chunk p of the row and writes its maximum, the
// maximum's first index and sum exp(x - max) over the chunk to ws [rows, parts, 3] (the index as float bits);
// greedy_pick_merge merges a row's parts: the largest maximum (the first index on ties: chunks are in order), and
// the sum rescaled to it. Same output as greedy_pick, summed in another order.
template <typename T>
__device__ void greedy_pick_part(const T* logits, int v, int parts, float* ws) {
    pdl_prologue();
    __shared__ float shared[32];
    int row = blockIdx.x / parts, p = blockIdx.x % parts;
    int chunk = (v + parts - 1) / parts;
    int lo = min(v, p * chunk), hi = min(v, lo + chunk);
    const T* x = logits + (size_t)row * v + lo;
    float best;
    int bi;
    row_argmax<T>(x, hi - lo, &best, &bi);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < hi - lo; i += blockDim.x) sum += expf(Io<T>::ld(x + i) - best);
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) {
        ws[3 * blockIdx.x] = best;
        ws[3 * blockIdx.x + 1] = __int_as_float(lo + bi);
        ws[3 * blockIdx.x + 2] = sum;
    }
}
extern "C" __global__ void greedy_pick_part_f32(const float* x, int v, int parts, float* ws) {
    greedy_pick_part<float>(x, v, parts, ws);
}
extern "C" __global__ void greedy_pick_part_bf16(const unsigned short* x, int v, int parts, float* ws) {
    greedy_pick_part<unsigned short>(x, v, parts, ws);
}
// One warp a row, parts <= 32.
extern "C" __global__ void greedy_pick_merge(const float* ws, int parts, double* out) {
    pdl_prologue();
    int row = blockIdx.x, lane = threadIdx.x;
    const float* part = ws + 3 * ((size_t)row * parts + lane);
    float m = lane < parts ? part[0] : DA_NEG_INF;
    int idx = lane < parts ? __float_as_int(part[1]) : 0x7fffffff;
    float best = m;
    int bi = m > DA_NEG_INF ? idx : 0x7fffffff;
    warp_max_first(best, bi);
    float s = lane < parts && m > DA_NEG_INF ? part[2] * expf(m - best) : 0.0f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) {
        out[row] = (double)(bi == 0x7fffffff ? 0 : bi);
        out[gridDim.x + row] = (double)(-logf(s));
    }
}
