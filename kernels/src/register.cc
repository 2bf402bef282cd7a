// Entry point of libmoefy_ops.so: RegisterCustomOps adds the ai.moefy domain with the CPU DynamicMoE kernels
// (T = float32 and float16) and, when built with CUDA and asked for, the CUDA kernels.
//
// Runtime versions: the library requests C API kOrtApiVersion (ort_api.h) and so loads in every ONNX Runtime from
// that version on; an older runtime gets an error status naming the floor (never a crash). What newer runtimes fix
// (shape inference with empty optional inputs) is decided by the runtime's version; nothing newer is called.
#include <mutex>
#include <string>
#include <vector>

#include "op.h"
#include "ort_api.h"

#ifdef MOEFY_HAVE_CUDA
extern "C" OrtStatus* moefy_register_cuda_ops(OrtCustomOpDomain* domain, OrtSessionOptions* options,
                                              const OrtApi* api);
extern "C" int moefy_cuda_requested(const OrtSessionOptions* options, const OrtApi* api);
#endif

namespace {
// Domains must outlive every session (and session options) that use them, so they are intentionally never released.
std::mutex g_mu;
std::vector<OrtCustomOpDomain*> g_domains;
}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  using namespace moefy;
  if (api_base == nullptr) return nullptr;
  const char* ver = api_base->GetVersionString ? api_base->GetVersionString() : "";
  const uint32_t minor = ort_minor(ver);
  const OrtApi* api = minor >= kOrtApiVersion ? api_base->GetApi(kOrtApiVersion) : nullptr;
  if (api == nullptr) {
    // Too old: C API 1 (served by every runtime) still creates the error status.
    const OrtApi* v1 = api_base->GetApi(1);
    const std::string msg = std::string("moefy_ops: ONNX Runtime ") + ver + " is too old: the library needs " +
                            kOrtFloorName + " or newer (C API " + std::to_string(kOrtApiVersion) + ")";
    return v1 ? v1->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  const bool shape_inference = minor >= kOrtMinorSafeShapeInference;
  std::lock_guard<std::mutex> lk(g_mu);
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = api->CreateCustomOpDomain("ai.moefy", &domain)) return st;
  auto fail = [&](OrtStatus* st) {
    api->ReleaseCustomOpDomain(domain);
    return st;
  };
  // float32 first: its schema (and shape inference) is the domain's; the float16 kernel joins the same op.
  for (ONNXTensorElementDataType t : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16})
    if (OrtStatus* st = api->CustomOpDomain_Add(domain, dynamic_moe_cpu_op(api, t, shape_inference))) return fail(st);
#ifdef MOEFY_HAVE_CUDA
  if (moefy_cuda_requested(options, api)) {
    if (minor < kOrtMinorCuda)
      return fail(api->CreateStatus(ORT_FAIL, "moefy_ops: the CUDA kernel needs ONNX Runtime 1.18 or newer"));
    if (OrtStatus* st = moefy_register_cuda_ops(domain, options, api)) return fail(st);
  }
#endif
  if (OrtStatus* st = api->AddCustomOpDomain(options, domain)) return fail(st);
  g_domains.push_back(domain);
  return nullptr;
}
