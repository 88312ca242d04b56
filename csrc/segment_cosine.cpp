// tga_fast::segment_cosine on the CPU: span means and their cosine with the sample's target, in one pass.
//
//   hidden [B, T, D], spans [B, S, 2], target [B, D] -> cos [B, S] fp32, mean [B, S, D] fp32
//   cos = x.y / (max(|x|, eps) * max(|y|, eps)), x the span mean, y the target (cosine_similarity's eps rule)
//
// Each (b, s, column range) tile sums its span rows, divides, writes its part of the mean and, while the values
// are in registers, its partial x.y and x.x (in double). The partials of a span are then added in tile order,
// so the result does not depend on the number of threads. Nothing of size [B, T, D] is allocated.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "common.h"
#include "segment_pool.h"
#include "span_tiles.h"

namespace tga_fast {
namespace {

constexpr const char* kOp = "segment_cosine";

double clamped_norm(double squared_norm, double eps) { return std::max(std::sqrt(squared_norm), eps); }

std::tuple<at::Tensor, at::Tensor> segment_cosine_float64(const at::Tensor& hidden, const std::vector<Span>& spans,
                                                          int64_t n_spans, const at::Tensor& target, double eps) {
  // gradcheck only: the reference keeps float64 for float64 inputs (mean and cos in float64).
  at::Tensor mean = span_means_float64(hidden, spans, n_spans);
  at::Tensor cos = at::cosine_similarity(mean, target.to(at::kDouble).unsqueeze(1), -1, eps);
  return {cos, mean};
}

std::tuple<at::Tensor, at::Tensor> segment_cosine_cpu(const at::Tensor& hidden_arg, const at::Tensor& spans,
                                                      const at::Tensor& target_arg, double eps) {
  check_float_tensor(hidden_arg, 3, "[B, T, D]", kOp, "hidden");
  check_float_tensor(target_arg, 2, "[B, D]", kOp, "target");
  const int64_t batch = hidden_arg.size(0), seq_len = hidden_arg.size(1), dim = hidden_arg.size(2);
  TORCH_CHECK(target_arg.size(0) == batch && target_arg.size(1) == dim, "tga_fast::", kOp,
              ": target must have shape [B, D] = [", batch, ", ", dim, "], got ", target_arg.sizes());
  const std::vector<Span> span_list = read_spans(spans, batch, seq_len, kOp);
  const int64_t n_spans = spans.size(1);
  if (hidden_arg.scalar_type() == at::kDouble) {
    return segment_cosine_float64(hidden_arg, span_list, n_spans, target_arg, eps);
  }

  const at::Tensor hidden = rows_contiguous(hidden_arg);
  const at::Tensor target32 = to_float_contiguous(target_arg);  // [B, D] fp32, converted once
  const float* target = target32.data_ptr<float>();
  at::Tensor mean = at::empty({batch, n_spans, dim}, hidden.options().dtype(at::kFloat));  // [B, S, D]
  at::Tensor cos = at::empty({batch, n_spans}, mean.options());                             // [B, S]
  float* mean_out = mean.data_ptr<float>();

  const std::vector<SpanTile> tiles = make_span_tiles(span_list, n_spans, dim, hidden.element_size());
  std::vector<double> partial_dot(tiles.size()), partial_xx(tiles.size());  // per tile
  const HiddenRows rows(hidden);
  for_each_tile(tiles, [&](int64_t i, float* acc) {
    const SpanTile& tile = tiles[static_cast<size_t>(i)];
    const int64_t width = tile.d1 - tile.d0;
    rows.sum(tile, acc);
    const float divisor = tile.span.divisor();
    const float* y = target + tile.b * dim + tile.d0;
    float* x = mean_out + (tile.b * n_spans + tile.s) * dim + tile.d0;
    double dot = 0.0, xx = 0.0;
    for (int64_t j = 0; j < width; ++j) {
      const float value = acc[j] / divisor;
      x[j] = value;
      dot += double{value} * y[j];
      xx += double{value} * value;
    }
    partial_dot[static_cast<size_t>(i)] = dot;
    partial_xx[static_cast<size_t>(i)] = xx;
  });

  // Per sample |y|^2, then per span the sum of its tiles' partials (adjacent, in column order).
  std::vector<double> yy(static_cast<size_t>(batch), 0.0);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t j = 0; j < dim; ++j) yy[static_cast<size_t>(b)] += double{target[b * dim + j]} * target[b * dim + j];
  }
  std::vector<double> dot(static_cast<size_t>(batch * n_spans), 0.0), xx(dot.size(), 0.0);
  for (size_t i = 0; i < tiles.size(); ++i) {
    const size_t k = static_cast<size_t>(tiles[i].b * n_spans + tiles[i].s);
    dot[k] += partial_dot[i];
    xx[k] += partial_xx[i];
  }
  float* cos_out = cos.data_ptr<float>();
  for (int64_t k = 0; k < batch * n_spans; ++k) {
    const double norms =
        clamped_norm(xx[static_cast<size_t>(k)], eps) * clamped_norm(yy[static_cast<size_t>(k / n_spans)], eps);
    cos_out[k] = static_cast<float>(dot[static_cast<size_t>(k)] / norms);
  }
  return {cos, mean};
}

}  // namespace

TORCH_LIBRARY_IMPL(tga_fast, CPU, m) { m.impl("segment_cosine", &segment_cosine_cpu); }

}  // namespace tga_fast
