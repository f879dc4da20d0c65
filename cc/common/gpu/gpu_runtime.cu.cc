// Run-time helpers of kbm's GPU launchers (see gpu_types.h).
#include <cuda_runtime.h>

#include <atomic>

#include "cc/common/gpu/gpu_types.h"

namespace kbm {
namespace gpu {

const char* ErrorString(int code) {
  switch (code) {
    case kSuccess:
      return "no error";
    case kErrorInvalidArgument:
      return "invalid argument to a kbm GPU launcher";
    case kErrorUnsupported:
      return "configuration not supported by the kbm GPU kernels";
    default:
      return cudaGetErrorString(static_cast<cudaError_t>(code));
  }
}

int MultiProcessorCount() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];  // 0 = not yet queried
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  if (device < 0 || device >= kMaxDevices) return 0;
  int count = cache[device].load(std::memory_order_relaxed);
  if (count == 0) {
    if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount,
                               device) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    cache[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

}  // namespace gpu
}  // namespace kbm
