// The OrtCustomOp descriptors of the CPU DynamicMoE kernel: one per T (float32, float16).
#pragma once

#include "ort_api.h"

namespace moefy {

// A static descriptor valid for the life of the process. shape_inference: declare Y = X's shape and active = [B, L]
// (only on runtimes where custom-op shape inference is safe, see ort_api.h).
OrtCustomOp* dynamic_moe_cpu_op(const OrtApi* api, ONNXTensorElementDataType t, bool shape_inference);

}  // namespace moefy
