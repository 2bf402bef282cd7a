// The ONNX Runtime C API version that libmoefy_ops.so, its CUDA registration and the runtime addon request: the one
// place that names it. The headers may be newer (the C API is append-only); only functions of this version or older
// are called unconditionally, newer ones only after the runtime was found to serve them.
#pragma once

#ifndef ORT_API_MANUAL_INIT
#define ORT_API_MANUAL_INIT
#endif
#include <onnxruntime_c_api.h>

#include <cstdint>

namespace moefy {

// C API 17 (ONNX Runtime 1.17) is the floor: the kernel runs its expert groups on ONNX Runtime's intra-op pool
// (KernelContext_ParallelFor) and declares output shapes (OrtCustomOp::InferOutputShapeFn, ShapeInferContext_*),
// both new in 1.17; CreateKernelV2/KernelComputeV2 (error statuses instead of crashes) are from 1.16.
// ONNX Runtime 1.N serves C API N.
constexpr uint32_t kOrtApiVersion = 17;
constexpr const char* kOrtFloorName = "1.17";

// Custom-op shape inference crashes ONNX Runtime up to 1.27 when a node has an empty optional input followed by
// another input (as every converted model's DynamicMoE: scale_index "" before threshold): 1.17-1.23 dereference the
// missing input's type (segfault), 1.24-1.27 index past the input types (abort). Measured fixed in 1.29 (1.28 was
// never released on npm); older runtimes get no shape inference from moefy (output types still come from the op).
constexpr uint32_t kOrtMinorSafeShapeInference = 29;

// The CUDA kernel needs KernelContext_GetScratchBuffer (C API 18).
constexpr uint32_t kOrtMinorCuda = 18;

// The minor version of an ONNX Runtime version string ("1.21.1", "1.28.0-dev..."): runtimes are compared by it
// rather than probed with GetApi, which logs a warning for every version a runtime does not serve. 0 if unreadable.
inline uint32_t ort_minor(const char* version) {
  if (version && version[0] >= '2' && version[0] <= '9' && version[1] == '.') return 1000;  // a major version 2+
  if (!version || version[0] != '1' || version[1] != '.') return 0;
  uint32_t m = 0;
  for (const char* p = version + 2; *p >= '0' && *p <= '9'; ++p) m = m * 10 + static_cast<uint32_t>(*p - '0');
  return m;
}

}  // namespace moefy
