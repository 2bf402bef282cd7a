// What the CPU and CUDA DynamicMoE ops share (docs/dynamic-moe.md): the OrtCustomOp descriptor (name, inputs,
// outputs, types, optionality, memory), entry points that turn every exception into an error status (none crosses
// the C ABI into ONNX Runtime), and the reading and checking of one call's inputs and outputs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attributes.h"
#include "ort_api.h"

namespace moefy {

// A one-line error that becomes the kernel's ORT status.
struct Error {
  std::string msg;
  OrtErrorCode code = ORT_FAIL;
};

inline void check(const OrtApi* api, OrtStatus* st) {
  if (st) {
    std::string m = api->GetErrorMessage(st);
    api->ReleaseStatus(st);
    throw Error{m};
  }
}

std::string dims_str(const std::vector<int64_t>& d);

// The op's inputs and outputs, in order (src/op/contract.ts MOE_INPUTS, MOE_OUTPUTS).
enum MoeInput : int { kX = 0, kNorms, kW1, kB1, kW2, kB2, kScaleIndex, kThreshold, kSkipBias, kNumInputs };
enum MoeOutput : int { kY = 0, kActive, kNumOutputs };
extern const char* const kInputNames[kNumInputs];

struct TensorIn {
  const OrtValue* v = nullptr;  // null: the input is absent
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> dims;
  const void* data = nullptr;
  bool present() const { return v != nullptr; }
  int64_t size() const {
    int64_t n = 1;
    for (auto d : dims) n *= d;
    return n;
  }
};

// Type and shape of a tensor value (throws Error).
void describe(const OrtApi* api, const OrtValue* v, TensorIn& t);

// One call, checked against the contract: every input of T = X's type, the shapes, threshold (float32, one per
// scale) and scale_index (a scalar in range); then the outputs Y [B, L, D] and, when wired, active [B, L].
// threshold and scale_index are read from host memory (the CUDA op declares them CPU inputs).
struct MoeCall {
  TensorIn in[kNumInputs];
  int64_t B = 0, L = 0, D = 0, E = 0, S = 0, ES = 0;
  const float* threshold = nullptr;  // [scales]: the input, else the attribute
  int64_t forced_scale = -1;         // scale_index, else -1
  void* Y = nullptr;
  int32_t* active = nullptr;
};
// Throws Error (ORT_INVALID_ARGUMENT) naming the input in the op's terms.
void read_call(const OrtApi* api, OrtKernelContext* ctx, const MoeAttributes& attr, bool f16, MoeCall* call);

// A kernel instance; compute throws Error (or anything else) and the entry point turns it into a status.
struct OpKernel {
  explicit OpKernel(const OrtApi* a) : api(a) {}
  virtual ~OpKernel() = default;
  virtual void compute(OrtKernelContext* ctx) = 0;
  const OrtApi* api;
};

struct MoeOpSpec {
  const char* ep;                  // "CPUExecutionProvider", "CUDAExecutionProvider"
  ONNXTensorElementDataType type;  // T: float32 or float16
  bool host_scalars;               // scale_index and threshold in host memory (a device kernel's OrtMemTypeCPUInput)
  bool shape_inference;            // declare Y = X's shape, active [B, L] (only where ONNX Runtime is safe: ort_api.h)
  OpKernel* (*create)(const OrtApi* api, const OrtKernelInfo* info, bool f16);  // throws
};

struct MoeCustomOp : OrtCustomOp {
  MoeOpSpec spec;
};

// Fills the descriptor (the struct layout of C API kOrtApiVersion). `api` serves shape inference.
void init_moe_op(MoeCustomOp* op, const MoeOpSpec& spec, const OrtApi* api);

}  // namespace moefy
