// segment_pool's CPU kernels (segment_pool.cpp), also used by segment_cosine.cpp.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "common.h"

namespace tga_fast {

// hidden [B, T, D] f32/f16/bf16/f64, spans int64 [B, S, 2] -> span means [B, S, D] in hidden's dtype.
at::Tensor segment_pool_cpu(const at::Tensor& hidden, const at::Tensor& spans);

// grad_pooled [B, S, D] -> grad_hidden [B, T = seq_len, D] in dtype.
at::Tensor segment_pool_backward_cpu(const at::Tensor& grad_pooled, const at::Tensor& spans, int64_t seq_len,
                                     at::ScalarType dtype);

// float64 hidden [B, T, D] -> float64 means [B, S, D], with ATen ops per span. Only for gradcheck in float64
// (the reference's accumulation dtype for float64 is float64); not a fast path.
at::Tensor span_means_float64(const at::Tensor& hidden, const std::vector<Span>& spans, int64_t n_spans_per_sample);

}  // namespace tga_fast
