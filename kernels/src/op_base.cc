#include "op_base.h"

#include <cstring>
#include <exception>
#include <limits>
#include <new>

namespace moefy {

const char* const kInputNames[kNumInputs] = {"X", "norms", "W1", "B1", "W2", "B2", "scale_index", "threshold", "skip_bias"};

std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(d[i]);
  }
  return s + "]";
}

void describe(const OrtApi* api, const OrtValue* v, TensorIn& t) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(api, api->GetTensorTypeAndShape(v, &info));
  size_t nd = 0;
  OrtStatus* st = api->GetTensorElementType(info, &t.type);
  if (!st) st = api->GetDimensionsCount(info, &nd);
  if (!st) {
    t.dims.resize(nd);
    st = api->GetDimensions(info, t.dims.data(), nd);
  }
  api->ReleaseTensorTypeAndShapeInfo(info);
  check(api, st);
  void* p = nullptr;
  check(api, api->GetTensorMutableData(const_cast<OrtValue*>(v), &p));
  t.v = v;
  t.data = p;
}

namespace {

Error bad_input(const std::string& msg) { return Error{"DynamicMoE: " + msg, ORT_INVALID_ARGUMENT}; }

void get_input(const OrtApi* api, OrtKernelContext* ctx, size_t count, int index, TensorIn& t) {
  if (static_cast<size_t>(index) >= count) return;
  const OrtValue* v = nullptr;
  check(api, api->KernelContext_GetInput(ctx, index, &v));
  if (v == nullptr) return;
  int is_tensor = 0;
  check(api, api->IsTensor(v, &is_tensor));
  if (!is_tensor) throw bad_input(std::string("input ") + kInputNames[index] + " is not a tensor");
  describe(api, v, t);
}

void expect_shape(const TensorIn& t, int index, const std::vector<int64_t>& want) {
  if (t.dims != want)
    throw bad_input(std::string("input ") + kInputNames[index] + " has shape " + dims_str(t.dims) + ", expected " +
                    dims_str(want));
}

}  // namespace

void read_call(const OrtApi* api, OrtKernelContext* ctx, const MoeAttributes& attr, bool f16, MoeCall* c) {
  size_t nin = 0, nout = 0;
  check(api, api->KernelContext_GetInputCount(ctx, &nin));
  check(api, api->KernelContext_GetOutputCount(ctx, &nout));
  for (int i = 0; i < kNumInputs; ++i) get_input(api, ctx, nin, i, c->in[i]);
  for (int i = kX; i <= kW2; ++i)
    if (!c->in[i].present()) throw bad_input(std::string("required input ") + kInputNames[i] + " is missing");
  const ONNXTensorElementDataType T = f16 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  for (int i : {kX, kNorms, kW1, kB1, kW2, kB2, kSkipBias})
    if (c->in[i].present() && c->in[i].type != T)
      throw bad_input(std::string("input ") + kInputNames[i] + " must be " + (f16 ? "float16" : "float32") + " like X");

  const TensorIn& X = c->in[kX];
  if (X.dims.size() != 3) throw bad_input("X must be [B, L, D], got " + dims_str(X.dims));
  const int64_t B = X.dims[0], L = X.dims[1], D = X.dims[2], E = attr.num_experts;
  expect_shape(c->in[kNorms], kNorms, {B, L, E});
  const TensorIn& W1 = c->in[kW1];
  if (W1.dims.size() != 2 || W1.dims[0] != D || W1.dims[1] <= 0 || W1.dims[1] % E != 0)
    throw bad_input("W1 has shape " + dims_str(W1.dims) + ", expected [" + std::to_string(D) +
                    ", E*S] with E = num_experts = " + std::to_string(E));
  const int64_t ES = W1.dims[1];
  expect_shape(c->in[kB1], kB1, {ES});
  expect_shape(c->in[kW2], kW2, {ES, D});
  if (c->in[kB2].present()) expect_shape(c->in[kB2], kB2, {D});
  if (c->in[kSkipBias].present()) expect_shape(c->in[kSkipBias], kSkipBias, {E, D});
  if (D > std::numeric_limits<int32_t>::max() / 2 || ES > std::numeric_limits<int32_t>::max() / 2)
    throw bad_input("dimensions too large");
  c->B = B, c->L = L, c->D = D, c->E = E, c->ES = ES, c->S = ES / E;

  const int64_t nscales = attr.scales();
  c->threshold = attr.threshold.data();
  if (const TensorIn& th = c->in[kThreshold]; th.present()) {
    if (th.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) throw bad_input("input threshold must be float32");
    if (th.size() != nscales)
      throw bad_input("input threshold has shape " + dims_str(th.dims) + ", expected [" + std::to_string(nscales) +
                      "] (one value per scale)");
    c->threshold = static_cast<const float*>(th.data);
  }
  c->forced_scale = -1;
  if (const TensorIn& si = c->in[kScaleIndex]; si.present()) {
    if (si.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 && si.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)
      throw bad_input("input scale_index must be int64");
    if (si.size() != 1) throw bad_input("input scale_index must be a scalar, got shape " + dims_str(si.dims));
    c->forced_scale = si.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 ? *static_cast<const int64_t*>(si.data)
                                                                     : *static_cast<const int32_t*>(si.data);
    if (c->forced_scale < 0 || c->forced_scale >= nscales)
      throw bad_input("scale_index " + std::to_string(c->forced_scale) + " out of range [0, " +
                      std::to_string(nscales) + ")");
  }

  OrtValue* y = nullptr;
  const int64_t yd[3] = {B, L, D};
  check(api, api->KernelContext_GetOutput(ctx, kY, yd, 3, &y));
  check(api, api->GetTensorMutableData(y, &c->Y));
  c->active = nullptr;
  if (nout > kActive) {
    OrtValue* a = nullptr;
    const int64_t ad[2] = {B, L};
    OrtStatus* st = api->KernelContext_GetOutput(ctx, kActive, ad, 2, &a);
    if (st) api->ReleaseStatus(st);  // not wired
    else if (a) check(api, api->GetTensorMutableData(a, reinterpret_cast<void**>(&c->active)));
  }
}

namespace {

const MoeCustomOp* self(const OrtCustomOp* op) { return static_cast<const MoeCustomOp*>(op); }

// Runs f; every exception becomes an error status (nothing may unwind into ONNX Runtime's C frames).
template <class F>
OrtStatus* guarded(const OrtApi* api, const char* doing, F&& f) noexcept {
  std::string m;
  OrtErrorCode code = ORT_FAIL;
  try {
    f();
    return nullptr;
  } catch (const Error& e) {
    m = e.msg;
    code = e.code;
  } catch (const std::bad_alloc&) {
    m = std::string("DynamicMoE: out of memory ") + doing;
  } catch (const std::exception& e) {
    m = std::string("DynamicMoE: ") + e.what();
  } catch (...) {
    m = std::string("DynamicMoE: unknown error ") + doing;
  }
  return api->CreateStatus(code, m.c_str());
}

OrtStatusPtr ORT_API_CALL CreateKernelV2(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                                         void** kernel) {
  *kernel = nullptr;
  return guarded(api, "creating the kernel", [&] {
    *kernel = self(op)->spec.create(api, info, self(op)->spec.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);
  });
}

OrtStatusPtr ORT_API_CALL KernelComputeV2(void* kernel, OrtKernelContext* ctx) {
  OpKernel* k = static_cast<OpKernel*>(kernel);
  return guarded(k->api, "running the kernel", [&] { k->compute(ctx); });
}

void ORT_API_CALL KernelDestroy(void* kernel) { delete static_cast<OpKernel*>(kernel); }
const char* ORT_API_CALL GetName(const OrtCustomOp*) { return "DynamicMoE"; }
const char* ORT_API_CALL GetEP(const OrtCustomOp* op) { return self(op)->spec.ep; }
// Inputs: X, norms, W1, B1, W2, B2 (T), scale_index (int64), threshold (float32), skip_bias (T). Outputs: Y (T),
// active (int32).
ONNXTensorElementDataType ORT_API_CALL GetInputType(const OrtCustomOp* op, size_t i) {
  if (i == kScaleIndex) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  if (i == kThreshold) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  return self(op)->spec.type;
}
size_t ORT_API_CALL GetInputTypeCount(const OrtCustomOp*) { return kNumInputs; }
ONNXTensorElementDataType ORT_API_CALL GetOutputType(const OrtCustomOp* op, size_t i) {
  return i == kActive ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : self(op)->spec.type;
}
size_t ORT_API_CALL GetOutputTypeCount(const OrtCustomOp*) { return kNumOutputs; }
OrtCustomOpInputOutputCharacteristic ORT_API_CALL GetInputCharacteristic(const OrtCustomOp*, size_t i) {
  return i <= kW2 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}
OrtCustomOpInputOutputCharacteristic ORT_API_CALL GetOutputCharacteristic(const OrtCustomOp*, size_t i) {
  return i == kY ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}
OrtMemType ORT_API_CALL GetInputMemoryType(const OrtCustomOp* op, size_t i) {
  const bool scalar = i == kScaleIndex || i == kThreshold;
  return self(op)->spec.host_scalars && scalar ? OrtMemTypeCPUInput : OrtMemTypeDefault;
}
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
  if (drop(api->ShapeInferContext_GetInputTypeShape(ctx, kX, &x)) || !x) return nullptr;
  size_t nd = 0;
  if (drop(api->GetDimensionsCount(x, &nd)) || nd != 3) return nullptr;
  int64_t dims[3];
  const char* sym[3] = {nullptr, nullptr, nullptr};
  if (drop(api->GetDimensions(x, dims, nd)) || drop(api->GetSymbolicDimensions(x, sym, nd))) return nullptr;
  // ORT writes an unnamed unknown dim back as the value -1, which later folds into wrong constants: infer only
  // when every dim is known or named.
  for (size_t i = 0; i < nd; ++i)
    if (dims[i] < 0 && (sym[i] == nullptr || sym[i][0] == '\0')) return nullptr;
  if (drop(api->ShapeInferContext_SetOutputTypeShape(ctx, kY, x))) return nullptr;
  OrtTensorTypeAndShapeInfo* a = nullptr;
  if (drop(api->CreateTensorTypeAndShapeInfo(&a)) || !a) return nullptr;
  const char* asym[2] = {sym[0] ? sym[0] : "", sym[1] ? sym[1] : ""};
  if (!drop(api->SetTensorElementType(a, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)) && !drop(api->SetDimensions(a, dims, 2)) &&
      !drop(api->SetSymbolicDimensions(a, asym, 2)))
    drop(api->ShapeInferContext_SetOutputTypeShape(ctx, kActive, a));  // fails harmlessly when the node has no `active`
  api->ReleaseTensorTypeAndShapeInfo(a);
  return nullptr;
}

}  // namespace

void init_moe_op(MoeCustomOp* op, const MoeOpSpec& spec, const OrtApi* api) {
  if (spec.shape_inference && !g_infer_api) g_infer_api = api;
  std::memset(static_cast<OrtCustomOp*>(op), 0, sizeof(OrtCustomOp));
  op->spec = spec;
  // The struct layout of C API kOrtApiVersion: ONNX Runtime reads no field a newer version added.
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
  op->InferOutputShapeFn = spec.shape_inference ? InferShape : nullptr;
  op->GetStartVersion = GetStartVersion;
  op->GetEndVersion = GetEndVersion;
}

}  // namespace moefy
