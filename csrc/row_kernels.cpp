// The portable row loops, the run-time choice of ISA, and the (streaming) row broadcast of the backward.
#include "row_kernels.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(TGA_FAST_X86_KERNELS)
#include <emmintrin.h>  // SSE2 (part of x86-64 itself): _mm_stream_si128, _mm_sfence
#endif

#include "row_kernels_impl.h"

namespace {

struct Scalar {  // one lane; the compiler may still auto-vectorise it for the baseline ISA
  static constexpr int64_t kWidth = 1;

  static float load(F32, const float* p) { return *p; }
  static float load(F16, const uint16_t* p) { return f16_to_float(*p); }
  static float load(BF16, const uint16_t* p) { return bf16_to_float(*p); }
  static float add(float a, float b) { return a + b; }
  static void store(float* p, float v) { *p = v; }

  static float one(F32, float v) { return v; }
  static float one(F16, uint16_t v) { return f16_to_float(v); }
  static float one(BF16, uint16_t v) { return bf16_to_float(v); }
};

const tga_fast::rows::SumRowsTable kScalarSumRows = {
    &sum_rows_impl<Scalar, F32>,
    &sum_rows_impl<Scalar, F16>,
    &sum_rows_impl<Scalar, BF16>,
};

using tga_fast::rows::Isa;

Isa best_supported_isa() {
#if defined(TGA_FAST_X86_KERNELS)
  __builtin_cpu_init();
  const bool v3 = __builtin_cpu_supports("x86-64-v3");  // AVX2, FMA, F16C (checks OS support for ymm state)
  if (v3 && __builtin_cpu_supports("avx512f")) return Isa::kAvx512;
  if (v3) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

Isa choose_isa() {
  const Isa best = best_supported_isa();
  const char* request = std::getenv("TGA_FAST_CPU_ISA");  // for tests and benchmarks of the slower variants
  if (request == nullptr) return best;
  const std::string name(request);
  const Isa wanted = name == "scalar" ? Isa::kScalar : name == "avx2" ? Isa::kAvx2 : Isa::kAvx512;
  return static_cast<int>(wanted) <= static_cast<int>(best) ? wanted : best;
}

const tga_fast::rows::SumRowsTable& sum_rows_table() {
  static const tga_fast::rows::SumRowsTable* table = [] {
    switch (tga_fast::rows::active_isa()) {
#if defined(TGA_FAST_X86_KERNELS)
      case Isa::kAvx512:
        return &tga_fast::rows::avx512::kSumRows;
      case Isa::kAvx2:
        return &tga_fast::rows::avx2::kSumRows;
#endif
      default:
        return &kScalarSumRows;
    }
  }();
  return *table;
}

// dst [bytes] = src [bytes] (zeros if src is null) with 16-byte non-temporal stores for the aligned middle.
void stream_copy(char* dst, const char* src, size_t bytes) {
#if defined(TGA_FAST_X86_KERNELS)
  const size_t head = std::min(bytes, (16 - reinterpret_cast<uintptr_t>(dst) % 16) % 16);
  if (src) {
    std::memcpy(dst, src, head);
  } else {
    std::memset(dst, 0, head);
  }
  size_t i = head;
  const __m128i zero = _mm_setzero_si128();
  for (; i + 16 <= bytes; i += 16) {
    const __m128i v = src ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)) : zero;
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), v);
  }
  if (src) {
    std::memcpy(dst + i, src + i, bytes - i);
  } else {
    std::memset(dst + i, 0, bytes - i);
  }
#else
  if (src) {
    std::memcpy(dst, src, bytes);
  } else {
    std::memset(dst, 0, bytes);
  }
#endif
}

}  // namespace

namespace tga_fast::rows {

Isa active_isa() {
  static const Isa isa = choose_isa();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

void sum_rows(Elem elem, const void* x, int64_t row_stride, int64_t rows, int64_t n, float* acc) {
  const SumRowsTable& table = sum_rows_table();
  const SumRowsFn fn = elem == Elem::kF32 ? table.f32 : elem == Elem::kF16 ? table.f16 : table.bf16;
  fn(x, row_stride, rows, n, acc);
}

void fill_rows(void* dst_void, const void* row, size_t row_bytes, int64_t rows, bool streaming) {
  char* dst = static_cast<char*>(dst_void);
  if (row == nullptr) {  // zeros: the rows are one contiguous block
    const size_t bytes = row_bytes * static_cast<size_t>(rows);
    if (streaming) {
      stream_copy(dst, nullptr, bytes);
    } else {
      std::memset(dst, 0, bytes);
    }
    return;
  }
  const char* src = static_cast<const char*>(row);
  for (int64_t r = 0; r < rows; ++r, dst += row_bytes) {
    if (streaming) {
      stream_copy(dst, src, row_bytes);
    } else {
      std::memcpy(dst, src, row_bytes);
    }
  }
}

void store_fence() {
#if defined(TGA_FAST_X86_KERNELS)
  _mm_sfence();
#endif
}

}  // namespace tga_fast::rows
