// CPU kernel of ai.moefy::DynamicMoE (see DESIGN.md section 3).
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_c_api.h>

namespace moefy {

// The ORT API version this library requests: headers are 1.21, the runtime may be newer (C API is append-only).
constexpr uint32_t kOrtApiVersion = 21;

// Returns the CPU DynamicMoE custom-op descriptor (a static object valid for the life of the process).
OrtCustomOp* DynamicMoeCpuOp(const OrtApi* api);

}  // namespace moefy
