#include "op.h"

#include <cblas.h>

#include "moe_cpu.h"
#include "op_base.h"

namespace moefy {

OrtCustomOp* dynamic_moe_cpu_op(const OrtApi* api, ONNXTensorElementDataType t, bool shape_inference) {
  // Our private (statically linked) OpenBLAS computes each GEMM on the calling thread; ORT's pool parallelises.
  static const bool blas_single = (openblas_set_num_threads(1), true);
  (void)blas_single;
  static MoeCustomOp ops[2][2];  // [float16][shape inference]
  static bool made[2][2] = {{false, false}, {false, false}};
  const int h = t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, s = shape_inference ? 1 : 0;
  if (!made[h][s]) {
    init_moe_op(&ops[h][s], MoeOpSpec{"CPUExecutionProvider", t, false, shape_inference, create_kernel}, api);
    made[h][s] = true;
  }
  return &ops[h][s];
}

}  // namespace moefy
