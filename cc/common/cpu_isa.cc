#include "cc/common/cpu_isa.h"

#include <cstdlib>
#include <cstring>

namespace tensorflow {
namespace kbm {
namespace {

Isa DetectIsa() {
#if defined(KBM_HAVE_AVX2_VARIANT) && (defined(__x86_64__) || defined(__i386__))
  const char* forced = std::getenv("KERAS_BIGMODELS_ISA");
  if (forced != nullptr && std::strcmp(forced, "avx") == 0) return Isa::kAvx;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v3")) return Isa::kAvx2;
#endif
  return Isa::kAvx;
}

}  // namespace

Isa ActiveIsa() {
  static const Isa isa = DetectIsa();
  return isa;
}

const char* IsaName(Isa isa) { return isa == Isa::kAvx2 ? "avx2" : "avx"; }

const char* CompiledIsas() {
#ifdef KBM_HAVE_AVX2_VARIANT
  return "avx,avx2";
#else
  return "avx";
#endif
}

}  // namespace kbm
}  // namespace tensorflow
