#include "op.h"

#include <cblas.h>

#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <vector>

#include "moe_cpu.h"

namespace moefy {
namespace {

struct CpuOp : OrtCustomOp {
  ONNXTensorElementDataType type;
};
const CpuOp* self(const OrtCustomOp* op) { return static_cast<const CpuOp*>(op); }

OrtStatus* make_status(const OrtApi* api, const std::string& m) { return api->CreateStatus(ORT_FAIL, m.c_str()); }

OrtStatusPtr ORT_API_CALL CreateKernelV2(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                                         void** kernel) {
  *kernel = nullptr;
  try {
    *kernel = create_kernel(api, info, self(op)->type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);
    return nullptr;
  } catch (const Error& e) {
    return make_status(api, e.msg);
  } catch (const std::bad_alloc&) {
    return make_status(api, "DynamicMoE: out of memory creating the kernel");
  } catch (const std::exception& e) {
    return make_status(api, std::string("DynamicMoE: ") + e.what());
  } catch (...) {
    return make_status(api, "DynamicMoE: unknown error creating the kernel");
  }
}

OrtStatusPtr ORT_API_CALL KernelComputeV2(void* kernel, OrtKernelContext* ctx) {
  Kernel* k = static_cast<Kernel*>(kernel);
  try {
    compute(k, ctx);
    return nullptr;
  } catch (const Error& e) {
    return make_status(k->api, e.msg);
  } catch (const std::bad_alloc&) {
    return make_status(k->api, "DynamicMoE: out of memory");
  } catch (const std::exception& e) {
    return make_status(k->api, std::string("DynamicMoE: ") + e.what());
  } catch (...) {
    return make_status(k->api, "DynamicMoE: unknown error");
  }
}

void ORT_API_CALL KernelDestroy(void* kernel) { delete static_cast<Kernel*>(kernel); }
const char* ORT_API_CALL GetName(const OrtCustomOp*) { return "DynamicMoE"; }
const char* ORT_API_CALL GetEP(const OrtCustomOp*) { return "CPUExecutionProvider"; }
// Inputs: X, norms, W1, B1, W2, B2 (T), scale_index (int64), threshold (float32). Outputs: Y (T), active (int32).
ONNXTensorElementDataType ORT_API_CALL GetInputType(const OrtCustomOp* op, size_t i) {
  if (i == 6) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  if (i == 7) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  return self(op)->type;
}
size_t ORT_API_CALL GetInputTypeCount(const OrtCustomOp*) { return 8; }
ONNXTensorElementDataType ORT_API_CALL GetOutputType(const OrtCustomOp* op, size_t i) {
  return i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : self(op)->type;
}
size_t ORT_API_CALL GetOutputTypeCount(const OrtCustomOp*) { return 2; }
OrtCustomOpInputOutputCharacteristic ORT_API_CALL GetInputCharacteristic(const OrtCustomOp*, size_t i) {
  return i < 5 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}
OrtCustomOpInputOutputCharacteristic ORT_API_CALL GetOutputCharacteristic(const OrtCustomOp*, size_t i) {
  return i == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}
OrtMemType ORT_API_CALL GetInputMemoryType(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int ORT_API_CALL GetVariadicMinArity(const OrtCustomOp*) { return 1; }
int ORT_API_CALL GetVariadicHomogeneity(const OrtCustomOp*) { return 1; }
int ORT_API_CALL GetStartVersion(const OrtCustomOp*) { return 1; }
int ORT_API_CALL GetEndVersion(const OrtCustomOp*) { return std::numeric_limits<int>::max(); }

// Shape inference: Y has X's type and shape, active is int32 [B, L]. Best effort: anything unexpected leaves the
// outputs uninferred (the kernel checks shapes at run time).
const OrtApi* g_infer_api = nullptr;
OrtStatusPtr ORT_API_CALL InferShape(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  const OrtApi* api = g_infer_api;
  if (!api || !ctx) return nullptr;
  auto drop = [&](OrtStatus* st) { return detail::drop(api, st); };
  OrtTensorTypeAndShapeInfo* x = nullptr;  // owned by the context
  if (drop(api->ShapeInferContext_GetInputTypeShape(ctx, 0, &x)) || !x) return nullptr;
  size_t nd = 0;
  if (drop(api->GetDimensionsCount(x, &nd)) || nd != 3) return nullptr;
  std::vector<int64_t> dims(nd);
  std::vector<const char*> sym(nd, nullptr);
  if (drop(api->GetDimensions(x, dims.data(), nd)) || drop(api->GetSymbolicDimensions(x, sym.data(), nd))) return nullptr;
  // ORT writes an unnamed unknown dim back as the value -1, which later folds into wrong constants: infer only
  // when every dim is known or named.
  for (size_t i = 0; i < nd; ++i)
    if (dims[i] < 0 && (sym[i] == nullptr || sym[i][0] == '\0')) return nullptr;
  if (drop(api->ShapeInferContext_SetOutputTypeShape(ctx, 0, x))) return nullptr;
  OrtTensorTypeAndShapeInfo* a = nullptr;
  if (drop(api->CreateTensorTypeAndShapeInfo(&a)) || !a) return nullptr;
  const char* asym[2] = {sym[0] ? sym[0] : "", sym[1] ? sym[1] : ""};
  if (!drop(api->SetTensorElementType(a, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)) && !drop(api->SetDimensions(a, dims.data(), 2)) &&
      !drop(api->SetSymbolicDimensions(a, asym, 2)))
    drop(api->ShapeInferContext_SetOutputTypeShape(ctx, 1, a));  // fails harmlessly when the node has no `active`
  api->ReleaseTensorTypeAndShapeInfo(a);
  return nullptr;
}

void make_op(CpuOp* op, ONNXTensorElementDataType t, bool shape_inference) {
  std::memset(static_cast<OrtCustomOp*>(op), 0, sizeof(OrtCustomOp));
  op->type = t;
  // The struct layout of C API 17: ONNX Runtime reads no field a newer version added.
  op->version = kOrtApiVersion;
  op->CreateKernel = nullptr;  // CreateKernelV2 / KernelComputeV2 (C API >= 16) return error statuses
  op->KernelCompute = nullptr;
  op->GetName = GetName;
  op->GetExecutionProviderType = GetEP;
  op->GetInputType = GetInputType;
  op->GetInputTypeCount = GetInputTypeCount;
  op->GetOutputType = GetOutputType;
  op->GetOutputTypeCount = GetOutputTypeCount;
  op->KernelDestroy = KernelDestroy;
  op->GetInputCharacteristic = GetInputCharacteristic;
  op->GetOutputCharacteristic = GetOutputCharacteristic;
  op->GetInputMemoryType = GetInputMemoryType;
  op->GetVariadicInputMinArity = GetVariadicMinArity;
  op->GetVariadicInputHomogeneity = GetVariadicHomogeneity;
  op->GetVariadicOutputMinArity = GetVariadicMinArity;
  op->GetVariadicOutputHomogeneity = GetVariadicHomogeneity;
  op->CreateKernelV2 = CreateKernelV2;
  op->KernelComputeV2 = KernelComputeV2;
  op->InferOutputShapeFn = shape_inference ? InferShape : nullptr;
  op->GetStartVersion = GetStartVersion;
  op->GetEndVersion = GetEndVersion;
}

}  // namespace

OrtCustomOp* dynamic_moe_cpu_op(const OrtApi* api, ONNXTensorElementDataType t, bool shape_inference) {
  if (!g_infer_api) g_infer_api = api;
  // Our private (statically linked) OpenBLAS computes each GEMM on the calling thread; ORT's pool parallelises.
  static const bool blas_single = (openblas_set_num_threads(1), true);
  (void)blas_single;
  static CpuOp ops[2][2];  // [float16][shape inference]
  static bool made[2][2] = {{false, false}, {false, false}};
  const int h = t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, s = shape_inference ? 1 : 0;
  if (!made[h][s]) {
    make_op(&ops[h][s], t, shape_inference);
    made[h][s] = true;
  }
  return &ops[h][s];
}

}  // namespace moefy
