// Run-time choice between the instruction-set variants of the SIMD code.
//
// Every `*_simd.cc` file is compiled twice: into namespace `avx` with the
// shipped baseline (-march=x86-64-v2 -mavx, what TensorFlow itself needs) and
// into namespace `avx2` with -march=x86-64-v3 (AVX2, FMA, F16C). The kernels
// pick one table of row functions per call through `SelectIsa`.
#ifndef KERAS_BIGMODELS_CC_COMMON_CPU_ISA_H_
#define KERAS_BIGMODELS_CC_COMMON_CPU_ISA_H_

namespace tensorflow {
namespace kbm {

enum class Isa { kAvx, kAvx2 };

// The variant in use, decided once per process: the best one this CPU runs,
// unless the environment variable KERAS_BIGMODELS_ISA is "avx" (forces the
// baseline; used by the tests to check both variants).
Isa ActiveIsa();
const char* IsaName(Isa isa);
// Comma-separated variants compiled into this library.
const char* CompiledIsas();

template <typename Table>
const Table& SelectIsa(const Table& avx, const Table& avx2) {
  return ActiveIsa() == Isa::kAvx2 ? avx2 : avx;
}

}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_COMMON_CPU_ISA_H_
