// sum_rows for AVX-512F (compiled with -mavx512f -mf16c; called only when cpuid reports both).
#include <immintrin.h>

#include "row_kernels.h"
#include "row_kernels_impl.h"

namespace {

struct Avx512 {
  static constexpr int64_t kWidth = 16;  // fp32 lanes of a zmm register

  static __m512 load(F32, const float* p) { return _mm512_loadu_ps(p); }
  static __m512 load(F16, const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static __m512 load(BF16, const uint16_t* p) {  // widen 16 -> 32 bits, shift into the high half
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static __m512 add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
  static void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }

  static float one(F32, float v) { return v; }
  static float one(F16, uint16_t v) { return _cvtsh_ss(v); }
  static float one(BF16, uint16_t v) { return bf16_to_float(v); }
};

}  // namespace

namespace tga_fast::rows::avx512 {
const SumRowsTable kSumRows = {
    &sum_rows_impl<Avx512, F32>,
    &sum_rows_impl<Avx512, F16>,
    &sum_rows_impl<Avx512, BF16>,
};
}  // namespace tga_fast::rows::avx512
