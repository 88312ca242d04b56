// The Python module tga_fast._C. Importing it loads this library, whose static TORCH_LIBRARY_IMPL blocks
// (segment_pool.cpp, segment_cosine.cpp) register the CPU kernels of the tga_fast:: ops; the ops themselves are
// defined in Python (tga_fast/ops/_library.py). The only Python function is build_info().
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>

#include "row_kernels.h"

#ifndef TGA_FAST_BUILD_TYPE
#define TGA_FAST_BUILD_TYPE "unknown"
#endif
#ifndef TGA_FAST_BUILD_FLAGS
#define TGA_FAST_BUILD_FLAGS ""
#endif
#ifndef TGA_FAST_TORCH_VERSION
#define TGA_FAST_TORCH_VERSION "unknown"
#endif
#ifndef TGA_FAST_OPENMP_LIB
#define TGA_FAST_OPENMP_LIB ""
#endif
#ifndef TGA_FAST_NATIVE_BUILD
#define TGA_FAST_NATIVE_BUILD 0
#endif

namespace py = pybind11;

namespace {

py::dict build_info() {
  using tga_fast::rows::Isa;
  py::dict info;
#if defined(__clang__)
  info["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = "gcc " __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
  info["build_type"] = TGA_FAST_BUILD_TYPE;
  info["flags"] = TGA_FAST_BUILD_FLAGS;
  info["native"] = static_cast<bool>(TGA_FAST_NATIVE_BUILD);  // -march=native for the glue code
#if defined(TGA_FAST_X86_KERNELS)
  info["isa_compiled"] = py::make_tuple("scalar", "avx2", "avx512");  // variants of the row loops in this .so
#else
  info["isa_compiled"] = py::make_tuple("scalar");
#endif
  info["isa_active"] = tga_fast::rows::isa_name(tga_fast::rows::active_isa());  // picked from cpuid
#if defined(_OPENMP)
  info["openmp"] = true;
  info["openmp_version"] = _OPENMP;
  info["openmp_library"] = TGA_FAST_OPENMP_LIB;
#else
  info["openmp"] = false;
#endif
  info["num_threads"] = at::get_num_threads();
  info["torch_version"] = TGA_FAST_TORCH_VERSION;  // built against; must equal torch.__version__'s release
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "tga_fast C++ CPU kernels; importing registers them for the tga_fast:: ops";
  m.def("build_info", &build_info,
        "How this extension was built: compiler, flags, SIMD variants, OpenMP, torch version, build type");
}
