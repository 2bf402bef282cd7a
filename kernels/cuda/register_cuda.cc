// ONNX Runtime registration of the CUDA DynamicMoE kernel (CUDA execution provider), a thin wrapper over the
// pure-CUDA launcher in dynamic_moe_cuda.h. Plain C++ (no CUDA headers): built into libmoefy_ops.so when nvcc is
// found (kernels/cuda/CMakeLists.txt), called from RegisterCustomOps after the CPU op was added to the domain.
//
// Opt-in: the CUDA kernel is registered only when the session options carry the config entry
//   moefy.cuda = "1"        (AddSessionConfigEntry / SessionOptions.add_session_config_entry)
// because ORT's C API cannot list the execution providers appended to the options, and a CUDA kernel registered
// in a session that has no CUDA EP is useless at best. Default (no entry, or any other value): CPU kernel only.
//
// Same name, domain, inputs, outputs, attributes and checks as the CPU op (docs/dynamic-moe.md), one OrtCustomOp
// per element type (float, float16). X, norms, W1, B1, W2, B2 and the outputs live on the GPU; the small
// scale_index and threshold inputs are CPU inputs (OrtMemTypeCPUInput: normally graph inputs or initializers, so
// no copy), validated on the host and passed by value. Everything runs on ORT's compute stream
// (KernelContext_GetGPUComputeStream);
// the workspace comes from KernelContext_GetScratchBuffer (ORT's stream-aware CUDA allocator), is released right
// after the launches (stream-ordered reuse), and the op never synchronises the host with the device.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "attributes.h"  // kernels/src: attribute parsing shared with the CPU kernel
#include "ort_api.h"     // kernels/src: the C API version, defined once

#include "dynamic_moe_cuda.h"

namespace {

constexpr const char* kConfigKey = "moefy.cuda";

enum Input { kX = 0, kNorms, kW1, kB1, kW2, kB2, kScaleIndex, kThreshold, kNumInputs };
enum Output { kY = 0, kActive, kNumOutputs };

struct MoeCudaKernel {
  const OrtApi* api;
  int dtype;
  int fc2_mode;  // MOEFY_CUDA_FC2_*: from the environment variable MOEFY_CUDA_FC2 (atomic | window | auto)
  int64_t num_experts;
  int activation;
  std::vector<int64_t> patch_nums;
  std::vector<float> threshold;
};

struct MoeCudaOp : OrtCustomOp {
  ONNXTensorElementDataType type;
  explicit MoeCudaOp(ONNXTensorElementDataType t);
};

const MoeCudaOp* self(const OrtCustomOp* op) { return static_cast<const MoeCudaOp*>(op); }

OrtStatus* fail(const OrtApi* api, OrtErrorCode code, const std::string& msg) {
  return api->CreateStatus(code, msg.c_str());
}

// Attribute helpers: a missing attribute leaves the default (the status is released).
OrtStatus* ORT_API_CALL CreateKernelV2(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                                       void** kernel) {
  auto* k = new MoeCudaKernel();
  k->api = api;
  k->dtype = self(op)->type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? MOEFY_CUDA_F16 : MOEFY_CUDA_F32;
  k->num_experts = 0;
  k->fc2_mode = MOEFY_CUDA_FC2_AUTO;
  if (const char* m = getenv("MOEFY_CUDA_FC2")) {
    if (!strcmp(m, "atomic")) k->fc2_mode = MOEFY_CUDA_FC2_ATOMIC;
    if (!strcmp(m, "window")) k->fc2_mode = MOEFY_CUDA_FC2_WINDOW;
  }
  // Attributes: the one reader and checker the CPU kernel uses too (kernels/src/attributes.h).
  moefy::MoeAttributes attr;
  std::string err = moefy::read_attributes(api, info, "DynamicMoE(cuda)", &attr);
  if (err.empty() && attr.patch_nums.size() > MOEFY_CUDA_MAX_SCALES) err = "DynamicMoE(cuda): more than 64 scales";
  if (!err.empty()) {
    delete k;
    return fail(api, ORT_INVALID_ARGUMENT, err);
  }
  k->num_experts = attr.num_experts;
  k->activation = attr.activation == moefy::Activation::Relu       ? MOEFY_CUDA_RELU
                  : attr.activation == moefy::Activation::GeluTanh ? MOEFY_CUDA_GELU_TANH
                                                                   : MOEFY_CUDA_GELU;
  k->patch_nums = attr.patch_nums;
  k->threshold = attr.threshold;
  *kernel = k;
  return nullptr;
}

void ORT_API_CALL KernelDestroy(void* kernel) { delete static_cast<MoeCudaKernel*>(kernel); }

struct Shape {
  std::vector<int64_t> dims;
  size_t count = 0;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
};

OrtStatus* get_shape(const OrtApi* api, const OrtValue* v, Shape* s) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  if (OrtStatus* st = api->GetTensorTypeAndShape(v, &info)) return st;
  size_t n = 0;
  OrtStatus* st = api->GetDimensionsCount(info, &n);
  if (!st) {
    s->dims.assign(n, 0);
    st = api->GetDimensions(info, s->dims.data(), n);
  }
  if (!st) st = api->GetTensorShapeElementCount(info, &s->count);
  if (!st) st = api->GetTensorElementType(info, &s->type);
  api->ReleaseTensorTypeAndShapeInfo(info);
  return st;
}

std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? "," : "") + std::to_string(d[i]);
  return s + "]";
}

OrtStatus* ORT_API_CALL KernelComputeV2(void* kernel, OrtKernelContext* ctx) {
  const MoeCudaKernel* k = static_cast<const MoeCudaKernel*>(kernel);
  const OrtApi* api = k->api;
  size_t n_in = 0, n_out = 0;
  if (OrtStatus* st = api->KernelContext_GetInputCount(ctx, &n_in)) return st;
  if (OrtStatus* st = api->KernelContext_GetOutputCount(ctx, &n_out)) return st;
  const OrtValue* in[kNumInputs] = {};
  for (size_t i = 0; i < n_in && i < kNumInputs; ++i)
    if (OrtStatus* st = api->KernelContext_GetInput(ctx, i, &in[i])) return st;
  for (int i = kX; i <= kW2; ++i)
    if (!in[i]) return fail(api, ORT_INVALID_ARGUMENT, "DynamicMoE(cuda): missing required input " + std::to_string(i));

  Shape sx, sn, sw1, sb1, sw2, sb2, ssi, sth;
  if (OrtStatus* st = get_shape(api, in[kX], &sx)) return st;
  if (OrtStatus* st = get_shape(api, in[kNorms], &sn)) return st;
  if (OrtStatus* st = get_shape(api, in[kW1], &sw1)) return st;
  if (OrtStatus* st = get_shape(api, in[kB1], &sb1)) return st;
  if (OrtStatus* st = get_shape(api, in[kW2], &sw2)) return st;
  if (in[kB2])
    if (OrtStatus* st = get_shape(api, in[kB2], &sb2)) return st;
  if (in[kScaleIndex])
    if (OrtStatus* st = get_shape(api, in[kScaleIndex], &ssi)) return st;
  if (in[kThreshold])
    if (OrtStatus* st = get_shape(api, in[kThreshold], &sth)) return st;

  const int64_t E = k->num_experts;
  if (sx.dims.size() != 3)
    return fail(api, ORT_INVALID_ARGUMENT, "DynamicMoE(cuda): X must be [B,L,D], got " + dims_str(sx.dims));
  const int64_t B = sx.dims[0], L = sx.dims[1], D = sx.dims[2];
  if (sn.dims.size() != 3 || sn.dims[0] != B || sn.dims[1] != L || sn.dims[2] != E)
    return fail(api, ORT_INVALID_ARGUMENT,
                "DynamicMoE(cuda): norms must be [B,L,E]=[" + std::to_string(B) + "," + std::to_string(L) + "," +
                    std::to_string(E) + "], got " + dims_str(sn.dims));
  if (sw1.dims.size() != 2 || sw1.dims[0] != D || sw1.dims[1] % E != 0 || sw1.dims[1] == 0)
    return fail(api, ORT_INVALID_ARGUMENT,
                "DynamicMoE(cuda): W1 must be [D, E*S] with D=" + std::to_string(D) + ", E=" + std::to_string(E) +
                    ", got " + dims_str(sw1.dims));
  const int64_t S = sw1.dims[1] / E;
  if (sb1.count != (size_t)(E * S))
    return fail(api, ORT_INVALID_ARGUMENT, "DynamicMoE(cuda): B1 must have E*S=" + std::to_string(E * S) +
                                               " elements, got " + dims_str(sb1.dims));
  if (sw2.dims.size() != 2 || sw2.dims[0] != E * S || sw2.dims[1] != D)
    return fail(api, ORT_INVALID_ARGUMENT, "DynamicMoE(cuda): W2 must be [E*S, D]=[" + std::to_string(E * S) + "," +
                                               std::to_string(D) + "], got " + dims_str(sw2.dims));
  if (in[kB2] && sb2.count != (size_t)D)
    return fail(api, ORT_INVALID_ARGUMENT,
                "DynamicMoE(cuda): B2 must have D=" + std::to_string(D) + " elements, got " + dims_str(sb2.dims));
  if (in[kScaleIndex] && ssi.count != 1)
    return fail(api, ORT_INVALID_ARGUMENT, "DynamicMoE(cuda): scale_index must be a scalar, got " + dims_str(ssi.dims));

  MoeCudaArgs a;
  memset(&a, 0, sizeof(a));
  a.device = -1;
  a.dtype = k->dtype;
  a.activation = k->activation;
  a.fc2_mode = k->fc2_mode;
  a.B = B, a.L = L, a.D = D, a.E = E, a.S = S;
  a.num_patch_nums = (int)k->patch_nums.size();
  for (size_t i = 0; i < k->patch_nums.size(); ++i) a.patch_nums[i] = k->patch_nums[i];
  a.num_thresholds = (int)k->threshold.size();
  for (size_t i = 0; i < k->threshold.size(); ++i) a.threshold_attr[i] = k->threshold[i];

  void* p = nullptr;
  auto data = [&](int i) -> const void* {
    p = nullptr;
    if (!in[i]) return nullptr;
    OrtStatus* st = api->GetTensorMutableData(const_cast<OrtValue*>(in[i]), &p);
    if (st) {
      api->ReleaseStatus(st);
      return nullptr;
    }
    return p;
  };
  a.X = data(kX);
  a.norms = data(kNorms);
  a.W1 = data(kW1);
  a.B1 = data(kB1);
  a.W2 = data(kW2);
  a.B2 = data(kB2);
  // scale_index and threshold are CPU inputs (GetInputMemoryType): small, usually graph inputs or initializers on
  // the host, so they are validated here like the CPU op does and travel by value in the kernel parameters.
  if (in[kScaleIndex]) {
    const int64_t* si = static_cast<const int64_t*>(data(kScaleIndex));
    if (!si) return fail(api, ORT_INVALID_ARGUMENT, "DynamicMoE(cuda): cannot read scale_index");
    a.has_scale_index_host = 1;
    a.scale_index_host = *si;
  }
  if (in[kThreshold]) {
    if (sth.count != k->patch_nums.size())
      return fail(api, ORT_INVALID_ARGUMENT, "DynamicMoE(cuda): input threshold has shape " + dims_str(sth.dims) +
                                                 ", expected [" + std::to_string(k->patch_nums.size()) +
                                                 "] (one value per scale)");
    const float* th = static_cast<const float*>(data(kThreshold));
    if (!th && sth.count) return fail(api, ORT_INVALID_ARGUMENT, "DynamicMoE(cuda): cannot read threshold");
    for (size_t i = 0; i < sth.count; ++i) a.threshold_attr[i] = th[i];
  }

  const int64_t ydims[3] = {B, L, D};
  OrtValue* y = nullptr;
  if (OrtStatus* st = api->KernelContext_GetOutput(ctx, kY, ydims, 3, &y)) return st;
  if (OrtStatus* st = api->GetTensorMutableData(y, &a.Y)) return st;
  if (n_out > kActive) {
    const int64_t adims[2] = {B, L};
    OrtValue* av = nullptr;
    if (OrtStatus* st = api->KernelContext_GetOutput(ctx, kActive, adims, 2, &av)) return st;
    if (av) {
      void* ap = nullptr;
      if (OrtStatus* st = api->GetTensorMutableData(av, &ap)) return st;
      a.active = static_cast<int32_t*>(ap);
    }
  }

  if (B * L == 0 || D == 0) return nullptr;  // nothing to compute (as the CPU op)
  char msg[512];
  if (moefy_dynamic_moe_cuda_validate(&a, msg, sizeof(msg)) != MOEFY_CUDA_OK)
    return fail(api, ORT_INVALID_ARGUMENT, msg);

  void* stream = nullptr;
  if (OrtStatus* st = api->KernelContext_GetGPUComputeStream(ctx, &stream)) return st;

  // Workspace from ORT's allocator for the device that holds X, tied to the compute stream.
  const OrtMemoryInfo* mem = nullptr;
  if (OrtStatus* st = api->GetTensorMemoryInfo(in[kX], &mem)) return st;
  OrtMemoryInfoDeviceType dev_type = OrtMemoryInfoDeviceType_CPU;
  api->MemoryInfoGetDeviceType(mem, &dev_type);
  if (dev_type != OrtMemoryInfoDeviceType_GPU)
    return fail(api, ORT_FAIL, "DynamicMoE(cuda): input X is not in GPU memory");
  int device = -1;
  if (OrtStatus* st = api->MemoryInfoGetId(mem, &device)) return st;
  a.device = device;
  const size_t ws_bytes = moefy_dynamic_moe_cuda_workspace_size(&a);
  OrtAllocator* alloc = nullptr;
  if (OrtStatus* st = api->KernelContext_GetAllocator(ctx, mem, &alloc)) return st;
  void* ws = nullptr;
  if (OrtStatus* st = api->KernelContext_GetScratchBuffer(ctx, mem, ws_bytes, &ws)) {
    api->ReleaseAllocator(alloc);
    return st;
  }
  const int rc = moefy_dynamic_moe_cuda(&a, ws, ws_bytes, stream);
  if (ws) {  // stream-ordered: later users of this block run after our kernels on the same stream
    if (OrtStatus* st = api->AllocatorFree(alloc, ws)) api->ReleaseStatus(st);
  }
  api->ReleaseAllocator(alloc);
  if (rc != MOEFY_CUDA_OK) return fail(api, ORT_FAIL, moefy_dynamic_moe_cuda_last_error());
  return nullptr;
}

const char* ORT_API_CALL GetName(const OrtCustomOp*) { return "DynamicMoE"; }
const char* ORT_API_CALL GetExecutionProviderType(const OrtCustomOp*) { return "CUDAExecutionProvider"; }
size_t ORT_API_CALL GetInputTypeCount(const OrtCustomOp*) { return kNumInputs; }
size_t ORT_API_CALL GetOutputTypeCount(const OrtCustomOp*) { return kNumOutputs; }
ONNXTensorElementDataType ORT_API_CALL GetInputType(const OrtCustomOp* op, size_t i) {
  if (i == kScaleIndex) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  if (i == kThreshold) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  return self(op)->type;
}
ONNXTensorElementDataType ORT_API_CALL GetOutputType(const OrtCustomOp* op, size_t i) {
  return i == kActive ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : self(op)->type;
}
OrtCustomOpInputOutputCharacteristic ORT_API_CALL GetInputCharacteristic(const OrtCustomOp*, size_t i) {
  return i >= kB2 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}
OrtCustomOpInputOutputCharacteristic ORT_API_CALL GetOutputCharacteristic(const OrtCustomOp*, size_t i) {
  return i == kActive ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}
OrtMemType ORT_API_CALL GetInputMemoryType(const OrtCustomOp*, size_t i) {
  // tensors on the GPU; the scalar scale_index and the per-scale thresholds on the host
  return (i == kScaleIndex || i == kThreshold) ? OrtMemTypeCPUInput : OrtMemTypeDefault;
}
int ORT_API_CALL GetStartVersion(const OrtCustomOp*) { return 1; }
int ORT_API_CALL GetEndVersion(const OrtCustomOp*) { return 0x7fffffff; }
int ORT_API_CALL GetVariadicInputMinArity(const OrtCustomOp*) { return 1; }
int ORT_API_CALL GetVariadicInputHomogeneity(const OrtCustomOp*) { return 1; }
int ORT_API_CALL GetVariadicOutputMinArity(const OrtCustomOp*) { return 1; }
int ORT_API_CALL GetVariadicOutputHomogeneity(const OrtCustomOp*) { return 1; }

MoeCudaOp::MoeCudaOp(ONNXTensorElementDataType t) : OrtCustomOp(), type(t) {
  memset(static_cast<OrtCustomOp*>(this), 0, sizeof(OrtCustomOp));
  version = moefy::kOrtApiVersion;  // the struct layout of that C API version
  CreateKernel = nullptr;  // CreateKernelV2 / KernelComputeV2 are used (API >= 16)
  GetName = ::GetName;
  GetExecutionProviderType = ::GetExecutionProviderType;
  GetInputType = ::GetInputType;
  GetInputTypeCount = ::GetInputTypeCount;
  GetOutputType = ::GetOutputType;
  GetOutputTypeCount = ::GetOutputTypeCount;
  KernelCompute = nullptr;
  KernelDestroy = ::KernelDestroy;
  GetInputCharacteristic = ::GetInputCharacteristic;
  GetOutputCharacteristic = ::GetOutputCharacteristic;
  GetInputMemoryType = ::GetInputMemoryType;
  GetVariadicInputMinArity = ::GetVariadicInputMinArity;
  GetVariadicInputHomogeneity = ::GetVariadicInputHomogeneity;
  GetVariadicOutputMinArity = ::GetVariadicOutputMinArity;
  GetVariadicOutputHomogeneity = ::GetVariadicOutputHomogeneity;
  CreateKernelV2 = ::CreateKernelV2;
  KernelComputeV2 = ::KernelComputeV2;
  InferOutputShapeFn = nullptr;  // shape inference comes from the CPU op (the first op of this name in the domain)
  GetStartVersion = ::GetStartVersion;  // [1, max], as the CPU op
  GetEndVersion = ::GetEndVersion;
  GetMayInplace = nullptr;
  ReleaseMayInplace = nullptr;
  GetAliasMap = nullptr;
  ReleaseAliasMap = nullptr;
}

}  // namespace

// True when the session options ask for the CUDA kernel (config entry moefy.cuda = "1").
extern "C" int moefy_cuda_requested(const OrtSessionOptions* options, const OrtApi* api) {
  if (!options || !api) return 0;
  int has = 0;
  if (OrtStatus* st = api->HasSessionConfigEntry(options, kConfigKey, &has)) {
    api->ReleaseStatus(st);
    return 0;
  }
  if (!has) return 0;
  char value[16] = {0};
  size_t size = sizeof(value);
  if (OrtStatus* st = api->GetSessionConfigEntry(options, kConfigKey, value, &size)) {
    api->ReleaseStatus(st);
    return 0;
  }
  return strcmp(value, "1") == 0 ? 1 : 0;
}

// Adds the CUDA DynamicMoE kernels (float, float16) to `domain` when the session options ask for them
// (moefy.cuda = "1"); otherwise does nothing. Call after the CPU op was added (its schema and shape inference
// are the domain's). Returns nullptr on success.
extern "C" __attribute__((visibility("hidden"))) OrtStatus* moefy_register_cuda_ops(OrtCustomOpDomain* domain,
                                                                                     OrtSessionOptions* options,
                                                                                     const OrtApi* api) {
  if (!api) return nullptr;
  if (!domain) return api->CreateStatus(ORT_INVALID_ARGUMENT, "moefy_register_cuda_ops: no domain");
  if (!moefy_cuda_requested(options, api)) return nullptr;
  static MoeCudaOp op_f32(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  static MoeCudaOp op_f16(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &op_f32)) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &op_f16)) return st;
  return nullptr;
}
