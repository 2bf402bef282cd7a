// CUDA implementation of ai.moefy::DynamicMoE (docs/dynamic-moe.md): a pure-CUDA launcher with a C ABI.
// Independent of ONNX Runtime: kernels/cuda/register_cuda.cc wraps it as a CUDA-EP custom op, and
// kernels/cuda/moe_check.cu tests and times it standalone.
//
// Everything is launched asynchronously on the given stream; the launcher never synchronises the host with the
// device (no cudaMemcpy of data-dependent sizes, no cudaStreamSynchronize). The data-dependent work lists live in the
// caller-provided workspace, sized for the worst case (every expert active for every token).
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOEFY_CUDA_MAX_SCALES 64

typedef enum MoeCudaDType { MOEFY_CUDA_F32 = 0, MOEFY_CUDA_F16 = 1 } MoeCudaDType;

typedef enum MoeCudaActivation {
  MOEFY_CUDA_RELU = 0,
  MOEFY_CUDA_GELU_TANH = 1,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  MOEFY_CUDA_GELU = 2,       // 0.5 x (1 + erf(x / sqrt(2)))
} MoeCudaActivation;

// All tensor pointers are device pointers, row-major, densely packed.
typedef struct MoeCudaArgs {
  int device;      // CUDA device of all pointers and the stream; < 0: the calling thread's current device
  int dtype;       // MoeCudaDType: element type of X, norms, W1, B1, W2, B2, Y (fp16 computes with fp32 accumulation)
  int activation;  // MoeCudaActivation
  int64_t B, L, D, E, S;  // X [B,L,D], norms [B,L,E], W1 [D,E*S], B1 [E*S], W2 [E*S,D], B2 [D], Y [B,L,D]

  const void* X;
  const void* norms;
  const void* W1;
  const void* B1;
  const void* W2;
  const void* B2;  // optional (NULL): added once per token
  void* Y;
  int32_t* active;  // optional (NULL): [B,L], number of experts that ran for each token

  // Scale of a token: scale_index (device int64 scalar) when non-NULL; else the layout rule over patch_nums
  // (L = sum pn^2: full sequence; L = pn_s^2 for exactly one s: one step of scale s; else an error naming L).
  const int64_t* scale_index;  // optional device scalar; clamped to [0, num_thresholds-1] on the device
  int has_scale_index_host;    // when scale_index is NULL: nonzero = every token has scale scale_index_host, which
  int64_t scale_index_host;    // must lie in [0, num_thresholds) (else MOEFY_CUDA_EINVAL)
  int num_patch_nums;
  int64_t patch_nums[MOEFY_CUDA_MAX_SCALES];

  // Thresholds, one per scale: the device array threshold_dev (the op's run-time input) when non-NULL, else the
  // attribute values threshold_attr (copied by value into the kernel parameters: no host-to-device copy).
  const float* threshold_dev;  // optional [num_thresholds] float on the device
  int num_thresholds;          // length of threshold_dev if given, else of threshold_attr
  float threshold_attr[MOEFY_CUDA_MAX_SCALES];

  // FC2 strategy (float16 only; float32 always uses MOEFY_CUDA_FC2_ATOMIC):
  //   MOEFY_CUDA_FC2_AUTO (0): token-window when it applies (16-byte-aligned sizes, enough shared memory), else atomic
  //   MOEFY_CUDA_FC2_ATOMIC (1): expert-major tiles, fp32 atomics into a [T, D] accumulator
  //   MOEFY_CUDA_FC2_WINDOW (2): token-window tiles accumulate all experts of 256 tokens in shared memory, one write
  //                              (falls back to atomic when it does not apply)
  int fc2_mode;
} MoeCudaArgs;

#define MOEFY_CUDA_FC2_AUTO 0
#define MOEFY_CUDA_FC2_ATOMIC 1
#define MOEFY_CUDA_FC2_WINDOW 2

// Return codes.
#define MOEFY_CUDA_OK 0
#define MOEFY_CUDA_EINVAL 1      // bad arguments / layout (see moefy_dynamic_moe_cuda_validate's message)
#define MOEFY_CUDA_EWORKSPACE 2  // workspace missing or smaller than moefy_dynamic_moe_cuda_workspace_size
#define MOEFY_CUDA_ELAUNCH 3     // a CUDA call or kernel launch failed (cudaGetLastError)

// Checks shapes and resolves the scale layout. Returns MOEFY_CUDA_OK or MOEFY_CUDA_EINVAL with a message
// (NUL-terminated, truncated to msg_len) naming the problem, e.g. the L that fits no layout. msg may be NULL.
int moefy_dynamic_moe_cuda_validate(const MoeCudaArgs* args, char* msg, size_t msg_len);

// Bytes of device workspace that moefy_dynamic_moe_cuda needs for these shapes (worst case; depends only on
// dtype, B, L, D, E, S). 0 when there are no tokens.
size_t moefy_dynamic_moe_cuda_workspace_size(const MoeCudaArgs* args);

// Runs DynamicMoE on `stream` (a cudaStream_t; NULL = legacy default stream). Validates first (no launch on
// error). The workspace must stay allocated until the work on `stream` has finished (stream-ordered reuse is fine).
// Returns one of the MOEFY_CUDA_* codes; for MOEFY_CUDA_ELAUNCH, moefy_dynamic_moe_cuda_last_error() has the text.
int moefy_dynamic_moe_cuda(const MoeCudaArgs* args, void* workspace, size_t workspace_bytes, void* stream);

// Benchmarking aid: the same as moefy_dynamic_moe_cuda, and it records the caller's five CUDA events (cudaEvent_t,
// created by the caller) on `stream`: [0] before routing, [1] after routing (route, scan, scatter, tile list),
// [2] after FC1, [3] after FC2, [4] at the end (fp16 finalisation). The events of one call are on one stream.
int moefy_dynamic_moe_cuda_timed(const MoeCudaArgs* args, void* workspace, size_t workspace_bytes, void* stream,
                                 void* const events[5]);

// A description of the last error of this thread (validation message or CUDA error string); "" if none.
const char* moefy_dynamic_moe_cuda_last_error(void);

#ifdef __cplusplus
}
#endif
