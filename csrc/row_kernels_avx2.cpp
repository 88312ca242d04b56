// sum_rows for AVX2 + F16C (compiled with -mavx2 -mfma -mf16c; called only when cpuid reports x86-64-v3).
#include <immintrin.h>

#include "row_kernels.h"
#include "row_kernels_impl.h"

namespace {

struct Avx2 {
  static constexpr int64_t kWidth = 8;  // fp32 lanes of a ymm register

  static __m256 load(F32, const float* p) { return _mm256_loadu_ps(p); }
  static __m256 load(F16, const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static __m256 load(BF16, const uint16_t* p) {  // widen 16 -> 32 bits, shift into the high half
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static __m256 add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
  static void store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }

  static float one(F32, float v) { return v; }
  static float one(F16, uint16_t v) { return _cvtsh_ss(v); }
  static float one(BF16, uint16_t v) { return bf16_to_float(v); }
};

}  // namespace

namespace tga_fast::rows::avx2 {
const SumRowsTable kSumRows = {
    &sum_rows_impl<Avx2, F32>,
    &sum_rows_impl<Avx2, F16>,
    &sum_rows_impl<Avx2, BF16>,
};
}  // namespace tga_fast::rows::avx2
