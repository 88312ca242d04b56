// Work items of the forward kernels: (sample b, span s, column range [d0, d1)) tiles, run in parallel with the
// same amount of memory traffic per thread.
//
// A tile reads rows span.start .. span.end-1 of hidden[b] between columns d0 and d1, so its cost is
// (rows + 1) * width (the +1: the output row it writes, and what an empty span costs). Spans differ a lot in
// length (an image span of 576 rows, a text span of 60), so the tiles are not handed out in equal counts: the
// tile list is cut into one contiguous range per thread with equal total cost.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.h"

namespace tga_fast {

struct SpanTile {
  int64_t b, s;    // sample, span
  Span span;       // its rows
  int64_t d0, d1;  // its columns
};

// hidden [B, T, D] as the kernels read it: rows of contiguous columns, any batch and row strides.
struct HiddenRows {
  const char* data;
  int64_t batch_stride, row_stride, elem_size;  // strides in elements
  rows::Elem elem;

  // hidden [B, T, D] with hidden.stride(2) == 1 (see rows_contiguous)
  explicit HiddenRows(const at::Tensor& hidden)
      : data(static_cast<const char*>(hidden.data_ptr())),
        batch_stride(hidden.stride(0)),
        row_stride(hidden.stride(1)),
        elem_size(hidden.element_size()),
        elem(row_elem(hidden.scalar_type())) {}

  // acc [d1 - d0] (zeroed) += the tile's rows
  void sum(const SpanTile& tile, float* acc) const;
};

// hidden itself when its columns are contiguous (any batch/row strides: slices, expanded batches), else a copy.
inline at::Tensor rows_contiguous(const at::Tensor& hidden) {
  return hidden.size(2) <= 1 || hidden.stride(2) == 1 ? hidden : hidden.contiguous();
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline void HiddenRows::sum(const SpanTile& tile, float* acc) const {
  const int64_t first = tile.b * batch_stride + tile.span.start * row_stride + tile.d0;
  rows::sum_rows(elem, data + first * elem_size, row_stride, tile.span.length(), tile.d1 - tile.d0, acc);
}

// Tile width in elements: whole rows up to 4 KiB per row read (1024 fp32 or 2048 bf16 columns, a page: long
// runs for the prefetchers), narrower when there are too few spans to give every thread about 4 tiles. Multiples
// of 64 elements so that a tile starts on a cache line when the row does.
inline int64_t tile_width(int64_t n_spans, int64_t dim, int64_t elem_size) {
  constexpr int64_t kMaxRowBytes = 4096, kMinWidth = 64;
  const int64_t max_width = kMaxRowBytes / elem_size;
  const int64_t wanted_tiles = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t chunks = std::max<int64_t>(1, ceil_div(wanted_tiles, std::max<int64_t>(1, n_spans)));
  const int64_t width = ceil_div(ceil_div(dim, chunks), kMinWidth) * kMinWidth;
  return std::max<int64_t>(1, std::min({std::max(width, kMinWidth), max_width, dim}));
}

// spans [B * S] (row-major) -> tiles in (b, s, d0) order, so the tiles of one span are adjacent.
inline std::vector<SpanTile> make_span_tiles(const std::vector<Span>& spans, int64_t n_spans_per_sample,
                                             int64_t dim, int64_t elem_size) {
  std::vector<SpanTile> tiles;
  if (dim == 0) return tiles;
  const int64_t width = tile_width(static_cast<int64_t>(spans.size()), dim, elem_size);
  tiles.reserve(spans.size() * static_cast<size_t>(ceil_div(dim, width)));
  for (size_t i = 0; i < spans.size(); ++i) {
    const int64_t b = static_cast<int64_t>(i) / n_spans_per_sample, s = static_cast<int64_t>(i) % n_spans_per_sample;
    for (int64_t d0 = 0; d0 < dim; d0 += width) tiles.push_back({b, s, spans[i], d0, std::min(dim, d0 + width)});
  }
  return tiles;
}

// Runs fn(tile_index, acc) for every tile, acc a zeroed fp32 scratch row of the tile's width, splitting the
// tiles into at most one contiguous, equal-cost range per thread. Small problems run on the calling thread.
template <typename F>
void for_each_tile(const std::vector<SpanTile>& tiles, const F& fn) {
  constexpr int64_t kSerialCost = 1 << 15;  // below ~32K elements a thread start-up costs more than it saves
  const int64_t n_tiles = static_cast<int64_t>(tiles.size());
  std::vector<int64_t> before(tiles.size() + 1, 0);  // cost of the tiles before tile i
  int64_t max_width = 0;
  for (int64_t i = 0; i < n_tiles; ++i) {
    const SpanTile& t = tiles[static_cast<size_t>(i)];
    before[static_cast<size_t>(i) + 1] = before[static_cast<size_t>(i)] + (t.span.length() + 1) * (t.d1 - t.d0);
    max_width = std::max(max_width, t.d1 - t.d0);
  }
  const int64_t total = before.back();
  const int64_t parts = total < kSerialCost ? 1 : std::min<int64_t>(at::get_num_threads(), n_tiles);
  // First tile of part p: the first whose preceding cost reaches p / parts of the total.
  auto first_tile = [&](int64_t p) {
    return static_cast<int64_t>(std::lower_bound(before.begin(), before.end() - 1, (total * p + parts - 1) / parts) -
                                before.begin());
  };
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> acc(static_cast<size_t>(max_width));
    for (int64_t i = first_tile(p0), end = first_tile(p1); i < end; ++i) {
      const SpanTile& t = tiles[static_cast<size_t>(i)];
      std::fill(acc.begin(), acc.begin() + (t.d1 - t.d0), 0.0f);
      fn(i, acc.data());
    }
  });
}

}  // namespace tga_fast
