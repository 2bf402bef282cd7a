// CPU kernel of ai.moefy::DynamicMoE, domain version 1 (docs/dynamic-moe.md):
//
//   Y [, active] = DynamicMoE(X, norms, W1, B1, W2 [, B2] [, scale_index] [, threshold])
//
// T (X, norms, W1, B1, W2, B2, Y) is float32 or float16 (computed in float32); scale_index int64, threshold float32,
// active int32. Units: attributes.h (attributes, scale rule), routing.cc, packed_path.cc (+ packed_avx512.cc,
// packed_avx2.cc), blas_path.cc, cpu_level.cc (dispatch), moe_cpu.cc (kernel creation and the call), op.cc (the
// OrtCustomOp descriptors), register.cc (RegisterCustomOps).
#pragma once

#include "kernel.h"

namespace moefy {

// Throws Error.
Kernel* create_kernel(const OrtApi* api, const OrtKernelInfo* info, bool f16);
void compute(Kernel* k, OrtKernelContext* ctx);

}  // namespace moefy
