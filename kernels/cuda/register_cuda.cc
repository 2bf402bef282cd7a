// ONNX Runtime registration of the CUDA DynamicMoE kernel (CUDA execution provider), a thin wrapper over the
// pure-CUDA launcher in dynamic_moe_cuda.h. Plain C++ (no CUDA headers): built into libmoefy_ops.so when nvcc is
// found (kernels/cuda/CMakeLists.txt), called from RegisterCustomOps after the CPU op was added to the domain.
//
// Opt-in: the CUDA kernel is registered only when the session options carry the config entry
//   moefy.cuda = "1"        (AddSessionConfigEntry / SessionOptions.add_session_config_entry)
// because ORT's C API cannot list the execution providers appended to the options, and a CUDA kernel registered
// in a session that has no CUDA EP is useless at best. Default (no entry, or any other value): CPU kernel only.
//
// The same descriptor, entry points (no exception leaves them) and input checks as the CPU op (kernels/src/op_base.h,
// docs/dynamic-moe.md), one OrtCustomOp per element type (float, float16). X, norms, W1, B1, W2, B2, skip_bias and
// the outputs live on the GPU; the small scale_index and threshold inputs are CPU inputs (OrtMemTypeCPUInput:
// normally graph inputs or initializers, so no copy), checked on the host and passed by value. Everything runs on
// ORT's compute stream (KernelContext_GetGPUComputeStream);
// the workspace comes from KernelContext_GetScratchBuffer (ORT's stream-aware CUDA allocator), is released right
// after the launches (stream-ordered reuse), and the op never synchronises the host with the device.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <memory>
#include <string>

#include "op_base.h"  // kernels/src: the descriptor, entry points and input checks shared with the CPU op
#include "ort_api.h"  // kernels/src: the C API version, defined once

#include "dynamic_moe_cuda.h"

namespace {

constexpr const char* kConfigKey = "moefy.cuda";

struct CudaKernel : moefy::OpKernel {
  explicit CudaKernel(const OrtApi* a) : OpKernel(a) {}
  void compute(OrtKernelContext* ctx) override;
  bool f16 = false;
  int fc2_mode = MOEFY_CUDA_FC2_AUTO;  // MOEFY_CUDA_FC2_*: from the environment variable MOEFY_CUDA_FC2
  moefy::MoeAttributes attr;
};

moefy::OpKernel* create_cuda_kernel(const OrtApi* api, const OrtKernelInfo* info, bool f16) {
  std::unique_ptr<CudaKernel> k(new CudaKernel(api));
  k->f16 = f16;
  if (const char* m = getenv("MOEFY_CUDA_FC2")) {
    if (!strcmp(m, "atomic")) k->fc2_mode = MOEFY_CUDA_FC2_ATOMIC;
    if (!strcmp(m, "window")) k->fc2_mode = MOEFY_CUDA_FC2_WINDOW;
  }
  // Attributes: the one reader and checker the CPU kernel uses too (kernels/src/attributes.h).
  std::string err = moefy::read_attributes(api, info, "DynamicMoE(cuda)", &k->attr);
  if (err.empty() && k->attr.patch_nums.size() > MOEFY_CUDA_MAX_SCALES) err = "DynamicMoE(cuda): more than 64 scales";
  if (!err.empty()) throw moefy::Error{err, ORT_INVALID_ARGUMENT};
  return k.release();
}

// ORT's allocator for the device that holds X, released on every way out.
struct DeviceAllocator {
  const OrtApi* api;
  OrtAllocator* alloc = nullptr;
  ~DeviceAllocator() {
    if (alloc) api->ReleaseAllocator(alloc);
  }
};

void CudaKernel::compute(OrtKernelContext* ctx) {
  using moefy::check;
  moefy::MoeCall c;
  moefy::read_call(api, ctx, attr, f16, &c);  // shapes, types, threshold and scale_index: as the CPU op
  if (c.B * c.L == 0 || c.D == 0) return;       // nothing to compute (as the CPU op)

  MoeCudaArgs a;
  memset(&a, 0, sizeof(a));
  a.device = -1;
  a.dtype = f16 ? MOEFY_CUDA_F16 : MOEFY_CUDA_F32;
  a.activation = attr.activation == moefy::Activation::Relu       ? MOEFY_CUDA_RELU
                 : attr.activation == moefy::Activation::GeluTanh ? MOEFY_CUDA_GELU_TANH
                                                                  : MOEFY_CUDA_GELU;
  a.routing = attr.routing;
  a.fc2_mode = fc2_mode;
  a.B = c.B, a.L = c.L, a.D = c.D, a.E = c.E, a.S = c.S;
  a.num_patch_nums = static_cast<int>(attr.patch_nums.size());
  for (size_t i = 0; i < attr.patch_nums.size(); ++i) a.patch_nums[i] = attr.patch_nums[i];
  // scale_index and threshold are CPU inputs (GetInputMemoryType): read on the host and passed by value.
  a.num_thresholds = static_cast<int>(attr.patch_nums.size());
  for (int i = 0; i < a.num_thresholds; ++i) a.threshold_attr[i] = c.threshold[i];
  if (c.forced_scale >= 0) {
    a.has_scale_index_host = 1;
    a.scale_index_host = c.forced_scale;
  }
  a.X = c.in[moefy::kX].data;
  a.norms = c.in[moefy::kNorms].data;
  a.W1 = c.in[moefy::kW1].data;
  a.B1 = c.in[moefy::kB1].data;
  a.W2 = c.in[moefy::kW2].data;
  a.B2 = c.in[moefy::kB2].data;
  a.skip_bias = c.in[moefy::kSkipBias].data;
  a.Y = c.Y;
  a.active = c.active;
  char msg[512];
  if (moefy_dynamic_moe_cuda_validate(&a, msg, sizeof(msg)) != MOEFY_CUDA_OK) throw moefy::Error{msg, ORT_INVALID_ARGUMENT};

  void* stream = nullptr;
  check(api, api->KernelContext_GetGPUComputeStream(ctx, &stream));
  // Workspace from ORT's allocator for the device that holds X, tied to the compute stream.
  const OrtMemoryInfo* mem = nullptr;
  check(api, api->GetTensorMemoryInfo(c.in[moefy::kX].v, &mem));
  OrtMemoryInfoDeviceType dev_type = OrtMemoryInfoDeviceType_CPU;
  api->MemoryInfoGetDeviceType(mem, &dev_type);
  if (dev_type != OrtMemoryInfoDeviceType_GPU) throw moefy::Error{"DynamicMoE(cuda): input X is not in GPU memory"};
  int device = -1;
  check(api, api->MemoryInfoGetId(mem, &device));
  a.device = device;
  const size_t ws_bytes = moefy_dynamic_moe_cuda_workspace_size(&a);
  DeviceAllocator alloc{api};
  check(api, api->KernelContext_GetAllocator(ctx, mem, &alloc.alloc));
  void* ws = nullptr;
  check(api, api->KernelContext_GetScratchBuffer(ctx, mem, ws_bytes, &ws));
  const int rc = moefy_dynamic_moe_cuda(&a, ws, ws_bytes, stream);
  if (ws) {  // stream-ordered: later users of this block run after our kernels on the same stream
    if (OrtStatus* st = api->AllocatorFree(alloc.alloc, ws)) api->ReleaseStatus(st);
  }
  if (rc != MOEFY_CUDA_OK) throw moefy::Error{moefy_dynamic_moe_cuda_last_error()};
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
  // The same descriptor as the CPU op's (kernels/src/op_base.h) but for the CUDA EP, with scale_index and threshold in
  // host memory; shape inference comes from the CPU op (the first op of this name in the domain).
  static moefy::MoeCustomOp ops[2];
  static bool made = false;
  if (!made) {
    moefy::init_moe_op(&ops[0], {"CUDAExecutionProvider", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, true, false, create_cuda_kernel}, api);
    moefy::init_moe_op(&ops[1], {"CUDAExecutionProvider", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, true, false, create_cuda_kernel}, api);
    made = true;
  }
  for (moefy::MoeCustomOp& op : ops)
    if (OrtStatus* st = api->CustomOpDomain_Add(domain, &op)) return st;
  return nullptr;
}
