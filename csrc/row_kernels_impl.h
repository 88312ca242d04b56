// The sum_rows loop, written once over an `Ops` policy (vector width, loads with conversion to fp32, add).
// Included by row_kernels.cpp (portable), row_kernels_avx2.cpp and row_kernels_avx512.cpp, each compiled for
// its own ISA. Everything here sits in an unnamed namespace and includes no c10/ATen header, so each file keeps
// its own copy and the linker can never swap an AVX-512 copy into the portable code.
#pragma once

#include <cstdint>
#include <cstring>

namespace {

// Element type tags: how x is stored.
struct F32 {
  using Storage = float;
};
struct F16 {
  using Storage = uint16_t;  // IEEE binary16 bits
};
struct BF16 {
  using Storage = uint16_t;  // the upper half of a float's bits
};

inline float float_from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline float bf16_to_float(uint16_t bits) { return float_from_bits(uint32_t{bits} << 16); }

// Exact binary16 -> binary32 without F16C (the portable variant; the SIMD variants use the instruction).
inline float f16_to_float(uint16_t bits) {
  const uint32_t sign = uint32_t{bits & 0x8000u} << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1fu) return float_from_bits(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in fp32
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-08f;
    return sign ? -magnitude : magnitude;
  }
  return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));  // rebias 15 -> 127
}

// acc [n] += rows of x (rows `stride` elements apart), four rows per pass: acc + ((x0 + x1) + (x2 + x3)).
// The scalar tail uses the same association, so a column's sum does not depend on the vector width.
//
// 16-bit rows are prefetched one pass (4 rows) ahead: measured at the LLaVA shape on one core, bf16/fp16 spans
// read at ~22 GB/s with the hardware prefetcher alone and ~30 GB/s with this; fp32 (~37 GB/s, the core's copy
// bandwidth) gains nothing, so it is left to the hardware.
template <typename Ops, typename E>
void sum_rows_impl(const void* x_void, int64_t stride, int64_t rows, int64_t n, float* acc) {
  using S = typename E::Storage;
  constexpr bool kPrefetch = sizeof(S) < sizeof(float);
  const S* x = static_cast<const S*>(x_void);
  constexpr int64_t W = Ops::kWidth;
  const int64_t n_vec = n - n % W;
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const S* x0 = x + r * stride;
    const S* x1 = x0 + stride;
    const S* x2 = x1 + stride;
    const S* x3 = x2 + stride;
    const bool prefetch = kPrefetch && r + 8 <= rows;
    const int64_t ahead = 4 * stride;
    for (int64_t j = 0; j < n_vec; j += W) {
      if (prefetch) {
        __builtin_prefetch(x0 + ahead + j);
        __builtin_prefetch(x1 + ahead + j);
        __builtin_prefetch(x2 + ahead + j);
        __builtin_prefetch(x3 + ahead + j);
      }
      const auto s01 = Ops::add(Ops::load(E{}, x0 + j), Ops::load(E{}, x1 + j));
      const auto s23 = Ops::add(Ops::load(E{}, x2 + j), Ops::load(E{}, x3 + j));
      Ops::store(acc + j, Ops::add(Ops::load(F32{}, acc + j), Ops::add(s01, s23)));
    }
    for (int64_t j = n_vec; j < n; ++j) {
      const float s01 = Ops::one(E{}, x0[j]) + Ops::one(E{}, x1[j]);
      const float s23 = Ops::one(E{}, x2[j]) + Ops::one(E{}, x3[j]);
      acc[j] += s01 + s23;
    }
  }
  for (; r < rows; ++r) {
    const S* x0 = x + r * stride;
    for (int64_t j = 0; j < n_vec; j += W) {
      Ops::store(acc + j, Ops::add(Ops::load(F32{}, acc + j), Ops::load(E{}, x0 + j)));
    }
    for (int64_t j = n_vec; j < n; ++j) acc[j] += Ops::one(E{}, x0[j]);
  }
}

}  // namespace
