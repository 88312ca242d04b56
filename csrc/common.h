// Shared by the kernels: argument checks (messages name the op and the argument), dtype dispatch, spans,
// and the scalar fp32 conversions of the (small) per-span finalisation. The hot loops are in row_kernels.h.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "row_kernels.h"

namespace tga_fast {

// --- checks -----------------------------------------------------------------------------------------------

inline bool is_kernel_float(at::ScalarType t) {  // the dtypes of the SIMD paths
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline bool is_supported_float(at::ScalarType t) { return is_kernel_float(t) || t == at::kDouble; }

inline void check_cpu_tensor(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "tga_fast::", op, ": ", name, " must be a CPU tensor for the C++ kernel, got ",
              t.device());
}

inline void check_float_tensor(const at::Tensor& t, int64_t dim, const char* shape, const char* op,
                               const char* name) {
  check_cpu_tensor(t, op, name);
  TORCH_CHECK(t.dim() == dim, "tga_fast::", op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(is_supported_float(t.scalar_type()), "tga_fast::", op, ": ", name,
              " must be float32, float16 or bfloat16 (float64 for gradcheck), got ", t.scalar_type());
}

// --- spans ------------------------------------------------------------------------------------------------

struct Span {
  int64_t start;
  int64_t end;
  int64_t length() const { return end - start; }
  float divisor() const { return static_cast<float>(end > start ? end - start : 1); }  // empty: 0 / 1
};

// spans int64 [B, S, 2] -> B * S half-open row ranges (row-major [b][s]), each checked against [0, seq_len].
inline std::vector<Span> read_spans(const at::Tensor& spans, int64_t batch, int64_t seq_len, const char* op) {
  check_cpu_tensor(spans, op, "spans");
  TORCH_CHECK(spans.scalar_type() == at::kLong, "tga_fast::", op, ": spans must be int64, got ",
              spans.scalar_type());
  TORCH_CHECK(spans.dim() == 3 && spans.size(2) == 2, "tga_fast::", op,
              ": spans must have shape [B, S, 2] (half-open [start, end)), got ", spans.sizes());
  TORCH_CHECK(spans.size(0) == batch, "tga_fast::", op, ": spans has batch size ", spans.size(0), " but ",
              batch, " was expected");
  const at::Tensor flat = spans.contiguous();
  const int64_t* data = flat.data_ptr<int64_t>();
  const int64_t count = spans.size(0) * spans.size(1);
  std::vector<Span> out(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const Span span{data[2 * i], data[2 * i + 1]};
    TORCH_CHECK(0 <= span.start && span.start <= span.end && span.end <= seq_len, "tga_fast::", op, ": spans[",
                i / spans.size(1), ", ", i % spans.size(1), "] = [", span.start, ", ", span.end,
                ") is invalid: it must satisfy 0 <= start <= end <= ", seq_len, " (the sequence length)");
    out[static_cast<size_t>(i)] = span;
  }
  return out;
}

// --- dtypes -----------------------------------------------------------------------------------------------

inline rows::Elem row_elem(at::ScalarType t) {
  switch (t) {
    case at::kHalf:
      return rows::Elem::kF16;
    case at::kBFloat16:
      return rows::Elem::kBF16;
    default:
      return rows::Elem::kF32;
  }
}

// Calls f(T{}) with T the C++ type of a float dtype (float, double, c10::Half, c10::BFloat16).
template <typename F>
void dispatch_float(at::ScalarType t, const char* op, F&& f) {
  switch (t) {
    case at::kFloat:
      return std::forward<F>(f)(float{});
    case at::kDouble:
      return std::forward<F>(f)(double{});
    case at::kHalf:
      return std::forward<F>(f)(c10::Half{});
    case at::kBFloat16:
      return std::forward<F>(f)(c10::BFloat16{});
    default:
      TORCH_CHECK(false, "tga_fast::", op, ": unsupported dtype ", t);
  }
}

// fp32 -> T, rounding to nearest even (c10's conversions), for the D values of a span's result.
template <typename T>
void store_from_float(const float* src, int64_t n, T* dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
}

// T -> fp32 for a small [.., D] tensor (targets, pooled gradients): one conversion, done by ATen.
inline at::Tensor to_float_contiguous(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

}  // namespace tga_fast
