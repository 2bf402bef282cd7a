// Entry point of libmoefy_ops.so: RegisterCustomOps adds the ai.moefy domain with the CPU DynamicMoE kernel
// (and, when built with CUDA, the CUDA kernel through moefy_register_cuda_ops).
#include <mutex>
#include <vector>

#include "moe_cpu.h"

#ifdef MOEFY_HAVE_CUDA
extern "C" OrtStatus* moefy_register_cuda_ops(OrtCustomOpDomain* domain, OrtSessionOptions* options,
                                              const OrtApi* api);
#endif

namespace {
// Domains must outlive every session (and session options) that use them, so they are intentionally never released.
std::mutex g_mu;
std::vector<OrtCustomOpDomain*> g_domains;
}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  if (api_base == nullptr) return nullptr;
  const OrtApi* api = api_base->GetApi(moefy::kOrtApiVersion);
  if (api == nullptr) {
    const OrtApi* old = api_base->GetApi(1);
    return old ? old->CreateStatus(ORT_FAIL, "moefy_ops: ONNX Runtime does not serve C API version 21 (needs >= 1.21)")
               : nullptr;
  }
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = api->CreateCustomOpDomain("ai.moefy", &domain)) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, moefy::DynamicMoeCpuOp(api))) {
    api->ReleaseCustomOpDomain(domain);
    return st;
  }
#ifdef MOEFY_HAVE_CUDA
  if (OrtStatus* st = moefy_register_cuda_ops(domain, options, api)) {
    api->ReleaseCustomOpDomain(domain);
    return st;
  }
#endif
  if (OrtStatus* st = api->AddCustomOpDomain(options, domain)) {
    api->ReleaseCustomOpDomain(domain);
    return st;
  }
  std::lock_guard<std::mutex> lk(g_mu);
  g_domains.push_back(domain);
  return nullptr;
}
