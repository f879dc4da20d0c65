// Run-time choice between the instruction-set variants of the SIMD code.
//
// Every `*_simd.cc` file is compiled twice: into namespace `avx` with the
// shipped baseline (-march=x86-64-v2 -mavx, what TensorFlow itself needs) and
// into namespace `avx2` with -march=x86-64-v3 (AVX2, FMA, F16C). The kernels
// pick one table of row functions per call through `SelectIsa`.
//
// A few files also have an `avx512vnni` variant (x86-64-v3 plus AVX-512
// F/BW/VNNI; built wherever the avx2 one is, listed in setup.py): only the
// W8A8 int8 GEMM uses it. On such a CPU every other kernel runs its avx2
// variant.
#ifndef KERAS_BIGMODELS_CC_COMMON_CPU_ISA_H_
#define KERAS_BIGMODELS_CC_COMMON_CPU_ISA_H_

namespace tensorflow {
namespace kbm {

// Ordered: each variant's CPU runs the ones before it.
enum class Isa { kAvx, kAvx2, kAvx512Vnni };

// The variant in use, decided once per process: the best one this CPU runs,
// capped by the environment variable KERAS_BIGMODELS_ISA when it names a
// variant ("avx" forces the baseline, "avx2" denies AVX-512 VNNI,
// "avx512vnni" allows everything; used by the tests to check each variant).
Isa ActiveIsa();
const char* IsaName(Isa isa);
// Comma-separated variants compiled into this library.
const char* CompiledIsas();

template <typename Table>
const Table& SelectIsa(const Table& avx, const Table& avx2) {
  return ActiveIsa() >= Isa::kAvx2 ? avx2 : avx;
}

}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_COMMON_CPU_ISA_H_
