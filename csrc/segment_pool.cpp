// tga_fast::segment_pool and tga_fast::segment_pool_backward on the CPU.
//
//   forward:  hidden [B, T, D], spans [B, S, 2] -> pooled [B, S, D]  = mean of each span's rows (fp32 sums)
//   backward: grad_pooled [B, S, D] -> grad_hidden [B, T, D]: row t = sum over spans s containing t of
//             grad_pooled[b, s] / len(s); zeros outside every span.
#include "segment_pool.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common.h"
#include "row_kernels.h"
#include "span_tiles.h"

namespace tga_fast {
namespace {

// Outputs at least this big are written with non-temporal stores: they do not fit in the caches anyway, and
// streaming skips the read-for-ownership of every destination line (a third of the traffic of a plain write).
constexpr int64_t kStreamingBytes = int64_t{8} << 20;
// Below about this many elements of work a parallel region costs more than it saves.
constexpr int64_t kSerialElements = int64_t{1} << 15;

// float64 grad_pooled [B, S, D] -> [B, T, D]: accumulated with ATen ops per span (gradcheck only).
at::Tensor segment_pool_backward_float64(const at::Tensor& grad_pooled, const std::vector<Span>& spans,
                                         int64_t seq_len, at::ScalarType dtype) {
  const int64_t batch = grad_pooled.size(0), n_spans = grad_pooled.size(1), dim = grad_pooled.size(2);
  at::Tensor grad_hidden = at::zeros({batch, seq_len, dim}, grad_pooled.options());
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < n_spans; ++s) {
      const Span& span = spans[static_cast<size_t>(b * n_spans + s)];
      grad_hidden[b].narrow(0, span.start, span.length()).add_(grad_pooled[b][s] / double{span.divisor()});
    }
  }
  return grad_hidden.to(dtype);
}

}  // namespace

at::Tensor span_means_float64(const at::Tensor& hidden, const std::vector<Span>& spans,
                              int64_t n_spans_per_sample) {
  const int64_t batch = hidden.size(0), dim = hidden.size(2);
  at::Tensor means = at::empty({batch, n_spans_per_sample, dim}, hidden.options());
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < n_spans_per_sample; ++s) {
      const Span& span = spans[static_cast<size_t>(b * n_spans_per_sample + s)];
      means[b][s].copy_(hidden[b].narrow(0, span.start, span.length()).sum(0) / double{span.divisor()});
    }
  }
  return means;
}

at::Tensor segment_pool_cpu(const at::Tensor& hidden_arg, const at::Tensor& spans) {
  constexpr const char* kOp = "segment_pool";
  check_float_tensor(hidden_arg, 3, "[B, T, D]", kOp, "hidden");
  const int64_t batch = hidden_arg.size(0), seq_len = hidden_arg.size(1), dim = hidden_arg.size(2);
  const std::vector<Span> span_list = read_spans(spans, batch, seq_len, kOp);
  const int64_t n_spans = spans.size(1);
  if (hidden_arg.scalar_type() == at::kDouble) return span_means_float64(hidden_arg, span_list, n_spans);

  const at::Tensor hidden = rows_contiguous(hidden_arg);
  at::Tensor pooled = at::empty({batch, n_spans, dim}, hidden.options());  // [B, S, D]
  const std::vector<SpanTile> tiles = make_span_tiles(span_list, n_spans, dim, hidden.element_size());
  const HiddenRows rows(hidden);
  dispatch_float(hidden.scalar_type(), kOp, [&](auto tag) {
    using T = decltype(tag);
    T* out = pooled.data_ptr<T>();
    for_each_tile(tiles, [&](int64_t i, float* acc) {
      const SpanTile& tile = tiles[static_cast<size_t>(i)];
      const int64_t width = tile.d1 - tile.d0;
      rows.sum(tile, acc);
      const float divisor = tile.span.divisor();  // a true division, as the reference's sums / lengths
      for (int64_t j = 0; j < width; ++j) acc[j] /= divisor;
      store_from_float(acc, width, out + (tile.b * n_spans + tile.s) * dim + tile.d0);
    });
  });
  return pooled;
}

at::Tensor segment_pool_backward_cpu(const at::Tensor& grad_pooled, const at::Tensor& spans, int64_t seq_len,
                                     at::ScalarType dtype) {
  constexpr const char* kOp = "segment_pool_backward";
  check_float_tensor(grad_pooled, 3, "[B, S, D]", kOp, "grad_pooled");
  TORCH_CHECK(seq_len >= 0, "tga_fast::", kOp, ": seq_len must be >= 0, got ", seq_len);
  TORCH_CHECK(is_supported_float(dtype), "tga_fast::", kOp,
              ": dtype must be float32, float16 or bfloat16 (float64 for gradcheck), got ", dtype);
  const int64_t batch = grad_pooled.size(0), n_spans = grad_pooled.size(1), dim = grad_pooled.size(2);
  const std::vector<Span> span_list = read_spans(spans, batch, seq_len, kOp);
  TORCH_CHECK(spans.size(1) == n_spans, "tga_fast::", kOp, ": spans has ", spans.size(1),
              " spans per sample but grad_pooled has ", n_spans);
  if (grad_pooled.scalar_type() == at::kDouble) {
    return segment_pool_backward_float64(grad_pooled, span_list, seq_len, dtype);
  }

  at::Tensor grad_hidden = at::empty({batch, seq_len, dim}, grad_pooled.options().dtype(dtype));  // [B, T, D]
  if (grad_hidden.numel() == 0) return grad_hidden;

  // scaled [B, S, D] fp32 = grad_pooled / len, as the reference scales before it sums over spans.
  const at::Tensor grad32 = to_float_contiguous(grad_pooled);
  const float* grad = grad32.data_ptr<float>();
  std::vector<float> scaled(static_cast<size_t>(batch * n_spans * dim));
  for (int64_t i = 0; i < batch * n_spans; ++i) {
    const float divisor = span_list[static_cast<size_t>(i)].divisor();
    for (int64_t j = 0; j < dim; ++j) scaled[static_cast<size_t>(i * dim + j)] = grad[i * dim + j] / divisor;
  }

  const size_t row_bytes = static_cast<size_t>(dim) * grad_hidden.element_size();
  const bool streaming = grad_hidden.nbytes() >= static_cast<size_t>(kStreamingBytes);
  char* out = static_cast<char*>(grad_hidden.data_ptr());
  const int64_t grain = std::max<int64_t>(1, kSerialElements / dim);  // rows

  // Each thread writes a contiguous range of the B * T rows. Rows covered by the same spans are equal, so the
  // range is walked in runs between span boundaries: one fp32 row per run (sum of its spans' scaled gradients,
  // rounded once to dtype), then broadcast; runs outside every span are zero-filled. Each row is written once.
  dispatch_float(dtype, kOp, [&](auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, batch * seq_len, grain, [&](int64_t r0, int64_t r1) {
      std::vector<float> row32(static_cast<size_t>(dim));
      std::vector<T> row(static_cast<size_t>(dim));
      for (int64_t r = r0; r < r1;) {
        const int64_t b = r / seq_len, t = r % seq_len;
        int64_t run_end = std::min(seq_len, r1 - b * seq_len);  // first row after the run, within sample b
        bool covered = false;
        for (int64_t s = 0; s < n_spans; ++s) {
          const Span& span = span_list[static_cast<size_t>(b * n_spans + s)];
          if (span.start <= t && t < span.end) {
            const float* g = scaled.data() + (b * n_spans + s) * dim;
            if (covered) {
              for (int64_t j = 0; j < dim; ++j) row32[static_cast<size_t>(j)] += g[j];
            } else {
              std::copy(g, g + dim, row32.begin());
            }
            covered = true;
            run_end = std::min(run_end, span.end);
          } else if (span.start > t) {
            run_end = std::min(run_end, span.start);
          }
        }
        const int64_t run = run_end - t;
        if (covered) {
          store_from_float(row32.data(), dim, row.data());
          rows::fill_rows(out + r * row_bytes, row.data(), row_bytes, run, streaming);
        } else {
          rows::fill_rows(out + r * row_bytes, nullptr, row_bytes, run, streaming);
        }
        r += run;
      }
      if (streaming) rows::store_fence();  // before the rows are handed back to the calling thread
    });
  });
  return grad_hidden;
}

TORCH_LIBRARY_IMPL(tga_fast, CPU, m) {
  m.impl("segment_pool", &segment_pool_cpu);
  m.impl("segment_pool_backward", &segment_pool_backward_cpu);
}

}  // namespace tga_fast
