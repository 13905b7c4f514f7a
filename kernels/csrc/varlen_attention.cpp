// Causal attention of a prefill's packed new tokens over each row's keys where they sit in a slot KV cache:
// ATen's FlashAttention-2 varlen kernel (`at::_flash_attention_forward` with `seqused_k`), which tch does not
// bind. Row i's queries are q[cu_q[i] .. cu_q[i + 1]]; its keys are k[k_start[i] .. k_start[i] + k_used[i]] of
// the cache viewed as [slots x width, nkv, d] (k_start[i] = physical slot x width: with `seqused_k` the kernel
// reads each row's start from cu_seqlens_k and its length from seqused_k, so rows need not be adjacent, nor in
// order). The causal mask is bottom-right aligned: a row's new token j sees its first k_used - t + j + 1 keys.
//
// Every entry point catches C++ exceptions and reports them through `err` (a NUL-terminated message).
#include "shim_errors.h"
#include <ATen/ATen.h>
#include <ATen/ops/_flash_attention_forward.h>

extern "C" {

// q: [N, nh, d]; k, v: [rows, nkv, d]; cu_q, k_start: [b + 1] int32; k_used: [b] int32 (all on q's device);
// max_q / max_k: the longest row's new tokens / keys. Writes a new [N, nh, d] tensor (the caller owns it).
int spar_varlen_cached_attention(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                                 const at::Tensor* cu_q, const at::Tensor* k_start, const at::Tensor* k_used,
                                 int64_t max_q, int64_t max_k, double scale, at::Tensor** out, char* err,
                                 size_t len) {
  return spar_shim::guarded(err, len, [&] {
    TORCH_CHECK(q->dim() == 3 && k->dim() == 3 && v->sizes() == k->sizes(),
                "q must be [N, nh, d] and k, v [rows, nkv, d]; got ", q->sizes(), " and ", k->sizes());
    TORCH_CHECK(cu_q->numel() == k_start->numel() && k_used->numel() + 1 == cu_q->numel(),
                "cu_q and k_start must have b + 1 entries and k_used b");
    auto r = at::_flash_attention_forward(*q, *k, *v, *cu_q, *k_start, max_q, max_k, /*dropout_p=*/0.0,
                                          /*is_causal=*/true, /*return_debug_mask=*/false,
                                          std::optional<double>(scale), /*window_size_left=*/std::nullopt,
                                          /*window_size_right=*/std::nullopt, *k_used,
                                          /*alibi_slopes=*/std::nullopt);
    *out = new at::Tensor(std::get<0>(r));
  });
}

}  // extern "C"
