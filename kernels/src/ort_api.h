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
constexpr uint32_t kOrtApiVersion = 17;
constexpr const char* kOrtFloorName = "1.17";

// Custom-op shape inference crashes ONNX Runtime up to 1.27 when a node has an empty optional input followed by
// another input (as every converted model's DynamicMoE: scale_index "" before threshold): 1.17-1.23 dereference the
// missing input's type (segfault), 1.24-1.27 index past the input types (abort). Measured fixed in 1.29 (1.28 was
// never released on npm); older runtimes get no shape inference from moefy (output types still come from the op).
constexpr uint32_t kOrtApiSafeShapeInference = 29;

// The CUDA kernel needs KernelContext_GetScratchBuffer (C API 18).
constexpr uint32_t kOrtApiCuda = 18;

}  // namespace moefy
