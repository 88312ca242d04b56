// The two memory-bound loops of the kernels, one implementation per instruction set, picked at run time.
//
//   sum_rows:  acc[j] += sum over r < rows of float(x[r * row_stride + j])      (span sums, forward)
//   fill_rows: dst gets `rows` consecutive copies of one row of bytes            (broadcast, backward)
//
// Every variant adds rows in the same order, four rows at a time as acc + ((x0 + x1) + (x2 + x3)), and the
// conversions to fp32 are exact, so scalar, AVX2 and AVX-512 give bit-identical sums (the tests can compare
// them). The element types are passed as raw 16-bit patterns so the per-ISA files include no c10 header (an
// inline c10 function compiled with -mavx512f could otherwise be merged into the portable code by the linker).
#pragma once

#include <cstddef>
#include <cstdint>

namespace tga_fast::rows {

enum class Elem { kF32, kF16, kBF16 };  // element type of x: float, IEEE half bits, bfloat16 bits
enum class Isa { kScalar, kAvx2, kAvx512 };

// The variant in use: the best one the CPU supports, or TGA_FAST_CPU_ISA=scalar|avx2|avx512 (read once; a
// request the CPU cannot run is ignored and the best supported one is used).
Isa active_isa();
const char* isa_name(Isa isa);

// acc [n] += sum of `rows` rows of n elements of type `elem`, rows `row_stride` elements apart.
void sum_rows(Elem elem, const void* x, int64_t row_stride, int64_t rows, int64_t n, float* acc);

// dst [rows * row_bytes] = `rows` copies of row [row_bytes]. `streaming`: non-temporal stores (no read for
// ownership, the output does not evict the cache); call store_fence() before the data is handed to another
// thread. row == nullptr writes zeros.
void fill_rows(void* dst, const void* row, size_t row_bytes, int64_t rows, bool streaming);
void store_fence();

// The per-ISA entry points behind the dispatch (row_kernels_<isa>.cpp).
using SumRowsFn = void (*)(const void* x, int64_t row_stride, int64_t rows, int64_t n, float* acc);
struct SumRowsTable {
  SumRowsFn f32, f16, bf16;
};
namespace avx2 {
extern const SumRowsTable kSumRows;
}
namespace avx512 {
extern const SumRowsTable kSumRows;
}

}  // namespace tga_fast::rows
