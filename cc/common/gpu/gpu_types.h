// Types shared by kbm's GPU launcher APIs (cc/<family>/kernels/*_gpu.h).
//
// Framework-free: no TensorFlow and no CUDA headers, so the TF glue (g++),
// the CUDA kernels (nvcc) and the TF-free harness shim all include it.
// 16-bit floats cross the boundary as layout tags; the .cu.cc files map them
// to __half / __nv_bfloat16 (see device_utils.cuh). Launchers return an int
// that is a cudaError_t value: 0 is success.
#ifndef KERAS_BIGMODELS_CC_COMMON_GPU_GPU_TYPES_H_
#define KERAS_BIGMODELS_CC_COMMON_GPU_GPU_TYPES_H_

#include <cstddef>
#include <cstdint>

namespace kbm {
namespace gpu {

// IEEE float16 bits (same layout as Eigen::half and __half).
struct Half {
  uint16_t bits;
};
// bfloat16 bits (same layout as Eigen::bfloat16 / tsl::bfloat16 and
// __nv_bfloat16).
struct BFloat16 {
  uint16_t bits;
};
static_assert(sizeof(Half) == 2 && sizeof(BFloat16) == 2, "16-bit tags");

// Element type codes for the harness's C ABI (ctypes): the shim maps them to
// the launcher templates.
enum DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
};

// Error codes of the launchers that are not CUDA errors (CUDA's own are
// below 1000).
enum Error : int {
  kSuccess = 0,
  kErrorInvalidArgument = 1001,  // a size or pointer the kernel cannot take
  kErrorUnsupported = 1002,      // a configuration without a kernel
};

// The text of a launcher's return code (CUDA's error string for CUDA codes).
// Defined in gpu_runtime.cu.cc.
const char* ErrorString(int code);

// The number of streaming multiprocessors of the current device, cached per
// device; 0 on error. Defined in gpu_runtime.cu.cc.
int MultiProcessorCount();

// Rounds `bytes` up to a multiple of 256 (workspace sub-allocations).
inline size_t AlignUp(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace gpu
}  // namespace kbm

#endif  // KERAS_BIGMODELS_CC_COMMON_GPU_GPU_TYPES_H_
