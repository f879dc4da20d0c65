#include "cc/common/cpu_isa.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace tensorflow {
namespace kbm {
namespace {

#if defined(KBM_HAVE_AVX2_VARIANT) && (defined(__x86_64__) || defined(__i386__))
// AVX-512 F, BW and VNNI in CPUID, and the OS saving the AVX-512 state
// (XCR0: SSE, AVX, opmask, ZMM0-15 upper halves and ZMM16-31).
bool HasAvx512Vnni() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  if (!(ecx & (1u << 27))) return false;  // OSXSAVE: xgetbv is usable.
  unsigned xcr0_lo, xcr0_hi;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 0xe6u) != 0xe6u) return false;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool f = ebx & (1u << 16), bw = ebx & (1u << 30);
  const bool vnni = ecx & (1u << 11);
  return f && bw && vnni;
}
#endif

Isa DetectIsa() {
#if defined(KBM_HAVE_AVX2_VARIANT) && (defined(__x86_64__) || defined(__i386__))
  Isa cap = Isa::kAvx512Vnni;
  const char* forced = std::getenv("KERAS_BIGMODELS_ISA");
  if (forced != nullptr) {
    if (std::strcmp(forced, "avx") == 0) cap = Isa::kAvx;
    if (std::strcmp(forced, "avx2") == 0) cap = Isa::kAvx2;
  }
  if (cap == Isa::kAvx) return Isa::kAvx;
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("x86-64-v3")) return Isa::kAvx;
  if (cap == Isa::kAvx2 || !HasAvx512Vnni()) return Isa::kAvx2;
  return Isa::kAvx512Vnni;
#else
  return Isa::kAvx;
#endif
}

}  // namespace

Isa ActiveIsa() {
  static const Isa isa = DetectIsa();
  return isa;
}

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512Vnni:
      return "avx512vnni";
    default:
      return "avx";
  }
}

const char* CompiledIsas() {
#ifdef KBM_HAVE_AVX2_VARIANT
  return "avx,avx2,avx512vnni";
#else
  return "avx";
#endif
}

}  // namespace kbm
}  // namespace tensorflow
