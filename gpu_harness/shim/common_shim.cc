// C entry points of the harness library that belong to no op family.
#include "cc/common/gpu/gpu_types.h"

extern "C" {

// The text of a launcher's return code (CUDA's error string below 1000).
const char* kbm_error_string(int code) { return kbm::gpu::ErrorString(code); }

// The streaming multiprocessor count of the current device (0 on error).
int kbm_multiprocessor_count() { return kbm::gpu::MultiProcessorCount(); }

}  // extern "C"
