// Fused LM head + log-softmax + gather + entropy, forward and backward, chunked over tokens so that the
// [tokens x vocab] logits never exist whole (the idea of Liger-kernel's fused linear cross-entropy).
//
// A torch::autograd::Function in libtorch itself, so tch's backward (and autograd.grad) runs its backward like
// any other op. Inputs: hidden [N, H], weight [V, H] (same dtype), targets [N] int64, temperature. Per chunk of
// tokens: logits = hidden_c @ weight^T in the model dtype (what the plain head computes), log_softmax(logits / T)
// in float32 (float64 for double models), the target's log-prob, the entropy, the argmax. Saved for backward:
// hidden, weight, targets and the [N] entropy, nothing of size vocab. The backward recomputes each chunk's
// log-softmax and forms
//   d/dz_j [ g_lp * log p_target + g_H * H ] = g_lp * (1[j = target] - p_j) - g_H * p_j * (log p_j + H)
// (z = logits / T; dH/dz_j = -p_j (log p_j + H)), divided by T, then grad_hidden_c = dz @ W and
// grad_W += dz^T @ hidden_c (accumulated in float32).
//
// On CUDA, for float32 / bf16, the per-chunk work after the matmul (log-softmax, gather, entropy, argmax in the
// forward; the gradient of the logits, written over them in place, in the backward) can run as two NVRTC kernels
// of spar-kernels (src/logprob_kernels.cu), handed in as callbacks by `spar_fused_logprob_set_kernels`: one read
// of the chunk's logits forward, one read and write backward, and no float32 copy of the chunk at all. The
// forward then also saves the [N] log-sum-exp for the backward kernel.
//
// Every entry point catches C++ exceptions and reports them through `err` (a NUL-terminated message).
#include "shim_errors.h"
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <string>

namespace {

using spar_shim::guarded;

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kEntropy = 1;
constexpr int64_t kArgmax = 2;
constexpr int64_t kKernels = 4;

// Callbacks into spar-kernels (pointers already offset to the chunk; null = absent). Return 0 on success, 2 when
// the kernels are unavailable on this device (then the ATen ops run), anything else on a launch failure.
// dtype: 0 float32, 1 bf16.
using LpFwdFn = int (*)(int dtype, int device, int64_t rows, int64_t v, const void* logits, const void* targets,
                        float temperature, void* logp, void* lse, void* ent, void* argmax);
using LpBwdFn = int (*)(int dtype, int device, int64_t rows, int64_t v, void* logits, const void* targets,
                        float temperature, const void* lse, const void* ent, const void* g_lp, const void* g_ent);
LpFwdFn g_lp_fwd = nullptr;
LpBwdFn g_lp_bwd = nullptr;

// Whether the kernels may run on these inputs (flag set, callbacks registered, CUDA, float32 or bf16).
bool kernels_apply(int64_t flags, const Tensor& hidden, const Tensor& weight) {
  const auto t = hidden.scalar_type();
  return (flags & kKernels) != 0 && g_lp_fwd != nullptr && g_lp_bwd != nullptr && hidden.is_cuda() &&
         (t == at::kFloat || t == at::kBFloat16) && weight.size(0) < (int64_t(1) << 31);
}

int dtype_code(const Tensor& t) { return t.scalar_type() == at::kBFloat16 ? 1 : 0; }

template <typename T>
void* ptr_at(const Tensor& t, int64_t offset) {
  return t.numel() == 0 ? nullptr : static_cast<void*>(t.data_ptr<T>() + offset);
}

at::ScalarType acc_type(const Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// log_softmax(h_c @ w^T / T) in `acc`: [c, V]. The logits are rounded to the model dtype first, as the plain
// head's are; the temperature divides them in `acc`.
Tensor chunk_logp(const Tensor& h, const Tensor& w, double temperature, at::ScalarType acc) {
  Tensor logits = at::mm(h, w.t());
  if (temperature == 1.0) return at::log_softmax(logits, 1, acc);
  Tensor z = logits.to(acc);
  logits.reset();
  z.div_(temperature);
  return at::log_softmax(z, 1);
}

struct FusedLinearLogprob : public torch::autograd::Function<FusedLinearLogprob> {
  static variable_list forward(AutogradContext* ctx, Tensor hidden, Tensor weight, Tensor targets,
                               double temperature, int64_t chunk, int64_t flags) {
    const bool want_ent = (flags & kEntropy) != 0;
    const bool want_arg = (flags & kArgmax) != 0;
    const int64_t n = hidden.size(0);
    const int64_t v = weight.size(0);
    const auto acc = acc_type(hidden);
    const auto fopt = hidden.options().dtype(acc);
    Tensor logp = at::empty({n}, fopt);
    Tensor ent = at::empty({want_ent ? n : 0}, fopt);
    Tensor arg = at::empty({want_arg ? n : 0}, hidden.options().dtype(at::kLong));
    bool kern = kernels_apply(flags, hidden, weight);
    targets = targets.contiguous();
    Tensor lse = at::empty({kern ? n : 0}, fopt);
    for (int64_t s = 0; s < n; s += chunk) {
      const int64_t c = std::min(chunk, n - s);
      if (kern) {
        Tensor logits = at::mm(hidden.narrow(0, s, c), weight.t());
        int rc = g_lp_fwd(dtype_code(logits), hidden.get_device(), c, v, logits.data_ptr(),
                          ptr_at<int64_t>(targets, s), static_cast<float>(temperature), ptr_at<float>(logp, s),
                          ptr_at<float>(lse, s), want_ent ? ptr_at<float>(ent, s) : nullptr,
                          want_arg ? ptr_at<int64_t>(arg, s) : nullptr);
        if (rc == 0) continue;
        TORCH_CHECK(rc == 2 && s == 0, "fused log-prob: the forward kernel failed (", rc, ")");
        kern = false;  // unavailable on this device: the ATen ops from the first chunk on
        lse = at::empty({0}, fopt);
      }
      Tensor lp = chunk_logp(hidden.narrow(0, s, c), weight, temperature, acc);
      logp.narrow(0, s, c).copy_(lp.gather(1, targets.narrow(0, s, c).unsqueeze(1)).squeeze(1));
      if (want_arg) arg.narrow(0, s, c).copy_(lp.argmax(1));
      if (want_ent) {
        Tensor p = lp.exp();
        p.mul_(lp);
        Tensor dst = ent.narrow(0, s, c);
        at::sum_out(dst, p, {1});
        dst.neg_();
      }
    }
    ctx->save_for_backward({hidden, weight, targets, ent, lse});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["chunk"] = chunk;
    ctx->set_materialize_grads(false);
    if (want_ent) {
      ctx->mark_non_differentiable({arg});
    } else {
      ctx->mark_non_differentiable({ent, arg});
    }
    return {logp, ent, arg};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor hidden = saved[0];
    const Tensor weight = saved[1];
    const Tensor targets = saved[2];
    const Tensor ent = saved[3];
    const Tensor lse = saved[4];  // [N] when the forward ran the kernels, else empty
    const double temperature = ctx->saved_data["temperature"].toDouble();
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const bool need_h = ctx->needs_input_grad(0);
    const bool need_w = ctx->needs_input_grad(1);
    variable_list out(6);
    const Tensor& g_lp_in = grads[0];
    const Tensor& g_ent_in = grads[1];
    const bool with_ent = g_ent_in.defined() && ent.numel() > 0;
    if ((!need_h && !need_w) || (!g_lp_in.defined() && !with_ent)) return out;
    const int64_t n = hidden.size(0);
    const int64_t v = weight.size(0);
    const auto acc = acc_type(hidden);
    const auto fopt = hidden.options().dtype(acc);
    const bool kern = lse.numel() == n && n > 0;
    // The 1/T of dz/dlogits and the minus sign of the softmax term folded into per-token coefficients.
    const Tensor g_lp = g_lp_in.defined() ? g_lp_in.to(acc) : at::zeros({n}, fopt);
    const Tensor a = g_lp.neg().div_(temperature).unsqueeze(1);            // -g_lp / T
    const Tensor onehot = g_lp.div(temperature).unsqueeze(1);              // +g_lp / T at the target
    Tensor b;                                                               // -g_H / T
    if (with_ent) b = g_ent_in.to(acc).neg().div_(temperature).unsqueeze(1);
    Tensor grad_h = need_h ? at::empty_like(hidden, at::MemoryFormat::Contiguous) : Tensor();
    Tensor grad_w = need_w ? at::zeros(weight.sizes(), weight.options().dtype(acc)) : Tensor();
    const bool low = weight.scalar_type() != acc;
    // bf16/fp16 on CUDA: grad_W accumulates straight into float32 (addmm with out_dtype); elsewhere each
    // chunk's product is added to the float32 sum.
    bool mixed_addmm = low && weight.is_cuda();
    const Tensor tgt = targets.unsqueeze(1);
    // The kernel's per-token inputs: float32, contiguous.
    const Tensor g_lp_k = kern ? g_lp.contiguous() : Tensor();
    const Tensor g_ent_k = kern && with_ent ? g_ent_in.to(acc).contiguous() : Tensor();
    for (int64_t s = 0; s < n; s += chunk) {
      const int64_t c = std::min(chunk, n - s);
      const Tensor h_c = hidden.narrow(0, s, c);
      Tensor dz;
      if (kern) {
        dz = at::mm(h_c, weight.t());
        int rc = g_lp_bwd(dtype_code(dz), hidden.get_device(), c, v, dz.data_ptr(), ptr_at<int64_t>(targets, s),
                          static_cast<float>(temperature), ptr_at<float>(lse, s),
                          with_ent ? ptr_at<float>(ent, s) : nullptr, ptr_at<float>(g_lp_k, s),
                          with_ent ? ptr_at<float>(g_ent_k, s) : nullptr);
        TORCH_CHECK(rc == 0, "fused log-prob: the backward kernel failed (", rc, ")");
      } else {
        Tensor lp = chunk_logp(h_c, weight, temperature, acc);
        Tensor p = lp.exp();
        if (with_ent) {
          // -(g_lp + g_H (log p + H)) / T, times p.
          lp.add_(ent.narrow(0, s, c).unsqueeze(1)).mul_(b.narrow(0, s, c)).add_(a.narrow(0, s, c));
          p.mul_(lp);
        } else {
          p.mul_(a.narrow(0, s, c));
        }
        lp.reset();
        p.scatter_add_(1, tgt.narrow(0, s, c), onehot.narrow(0, s, c));
        dz = low ? p.to(weight.scalar_type()) : p;
      }
      if (need_h) {
        Tensor dst = grad_h.narrow(0, s, c);
        at::mm_out(dst, dz, weight);
      }
      if (need_w) {
        const Tensor dz_t = dz.t();
        if (mixed_addmm) {
          try {
            at::addmm_out(grad_w, grad_w, dz_t, h_c, acc);
          } catch (const std::exception&) {
            mixed_addmm = false;
            grad_w.add_(at::mm(dz_t, h_c));
          }
        } else if (low) {
          grad_w.add_(at::mm(dz_t, h_c));
        } else {
          grad_w.addmm_(dz_t, h_c);
        }
      }
    }
    out[0] = grad_h;
    out[1] = need_w && low ? grad_w.to(weight.scalar_type()) : grad_w;
    return out;
  }
};

}  // namespace

extern "C" {

// Registers the CUDA epilogue kernels (see the top of this file); null pointers unregister them.
void spar_fused_logprob_set_kernels(LpFwdFn fwd, LpBwdFn bwd) {
  g_lp_fwd = fwd;
  g_lp_bwd = bwd;
}

// Log-probs of `targets` under softmax(hidden @ weight^T / temperature), chunked by `chunk` tokens; flags bit 0:
// entropy, bit 1: argmax, bit 2: the CUDA epilogue kernels when registered and applicable. Writes three new tensors (the caller owns them): logp [N], entropy ([N] or [0]),
// argmax ([N] int64 or [0]). Differentiable w.r.t. hidden and weight (and through the entropy).
int spar_fused_linear_logprob(const at::Tensor* hidden, const at::Tensor* weight, const at::Tensor* targets,
                              double temperature, int64_t chunk, int64_t flags, at::Tensor** logp,
                              at::Tensor** entropy, at::Tensor** argmax, char* err, size_t len) {
  return guarded(err, len, [&] {
    TORCH_CHECK(hidden->dim() == 2, "hidden must be [N, H], got ", hidden->sizes());
    TORCH_CHECK(weight->dim() == 2 && weight->size(1) == hidden->size(1), "weight must be [V, H] with H = ",
                hidden->size(1), ", got ", weight->sizes());
    TORCH_CHECK(targets->dim() == 1 && targets->size(0) == hidden->size(0), "targets must be [N] with N = ",
                hidden->size(0), ", got ", targets->sizes());
    TORCH_CHECK(targets->scalar_type() == at::kLong, "targets must be int64");
    TORCH_CHECK(hidden->scalar_type() == weight->scalar_type(), "hidden (", hidden->scalar_type(),
                ") and weight (", weight->scalar_type(), ") must have one dtype");
    TORCH_CHECK(hidden->device() == weight->device() && targets->device() == weight->device(),
                "hidden, weight and targets must be on one device");
    TORCH_CHECK(temperature > 0.0, "temperature must be positive, got ", temperature);
    TORCH_CHECK(chunk > 0, "chunk must be positive, got ", chunk);
    auto outs = FusedLinearLogprob::apply(*hidden, *weight, *targets, temperature, chunk, flags);
    *logp = new at::Tensor(outs[0]);
    *entropy = new at::Tensor(outs[1]);
    *argmax = new at::Tensor(outs[2]);
  });
}

}  // extern "C"
