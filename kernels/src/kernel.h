// Internals of the CPU DynamicMoE kernel shared by its units: the kernel object (attributes, CPU level, pre-packed
// weights), per-call workspaces, errors, and the parallel loop on ONNX Runtime's intra-op pool.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "attributes.h"
#include "cpu_level.h"
#include "ort_api.h"
#include "weight_buffer.h"

namespace moefy {

// A one-line error that becomes the kernel's ORT status.
struct Error {
  std::string msg;
};

inline void check(const OrtApi* api, OrtStatus* st) {
  if (st) {
    std::string m = api->GetErrorMessage(st);
    api->ReleaseStatus(st);
    throw Error{m};
  }
}

template <class T>
inline void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

std::string dims_str(const std::vector<int64_t>& d);

// Scratch of one expert group (or chunk task).
struct Slot {
  std::vector<float> acc;            // [N, D] accumulator (unused for the slot that writes Y)
  std::vector<float> a;              // BLAS path: gathered X rows [TM, D]
  std::vector<float> h;              // hidden [TM, S]
  std::vector<float> z;              // BLAS path: expert output [TM, D]
  std::vector<const float*> arows;   // packed path: A row pointers
  std::vector<float*> hrows, crows;  // packed path: H / C row pointers
};

struct Workspace {
  std::vector<int32_t> scale_of_l;  // [L]
  std::vector<uint8_t> mask;        // [N, E]
  std::vector<int64_t> counts;      // [E]
  std::vector<int64_t> offsets;     // [E + 1]
  std::vector<int64_t> tokens;      // CSR token lists
  std::vector<float> hidden;        // dense path [rows, E*S]
  std::vector<std::unique_ptr<Slot>> slots;  // one per expert group
  struct Chunk {
    int64_t expert, begin, count;
  };
  std::vector<Chunk> chunks;  // few-experts path
  // float16 inputs converted to float32 for this call, and the float32 result before conversion to Y
  std::vector<float> xf, nf, w1f, b1f, w2f, b2f, yf;
};

struct Kernel {
  const OrtApi* api = nullptr;
  MoeAttributes attr;
  bool f16 = false;  // T = float16 (computed in float32)
  CpuLevel level = CpuLevel::Plain;
  const PackedOps* ops = nullptr;
  int64_t groups = 4;  // expert groups (parallel tasks of the sparse path)
  // Pre-packed constant weights for the packed path (level avx2 / avx512; empty otherwise).
  bool packed = false;
  int64_t pD = 0, pES = 0;
  WeightBuffer w1p, w2p;
  int64_t w1p_stride = 0, w2p_stride = 0;  // elements per expert
  bool half_panels = false;  // w1p, w2p hold float16 panels (a float16 model's weights, half the bytes of float32)
  // float32 copies of constant float16 inputs (W1, B1, W2, B2 by input index; empty when not kept).
  std::vector<float> const_f32[6];
  std::mutex pool_mu;
  std::vector<std::unique_ptr<Workspace>> pool;

  std::unique_ptr<Workspace> acquire() {
    std::lock_guard<std::mutex> lk(pool_mu);
    if (pool.empty()) return std::unique_ptr<Workspace>(new Workspace());
    auto w = std::move(pool.back());
    pool.pop_back();
    return w;
  }
  void release(std::unique_ptr<Workspace> w) {
    std::lock_guard<std::mutex> lk(pool_mu);
    pool.push_back(std::move(w));
  }
};

// One call's FFN operands, all float32 (float16 inputs already converted).
struct Ffn {
  const float* X;
  const float* W1;
  const float* B1;
  const float* W2;
  const float* B2;  // may be null
  float* Y;
  int64_t N, D, E, S, ES;
  Activation act;
  const PackedOps* ops;
};

// ParallelFor on ONNX Runtime's intra-op pool (so intraOpNumThreads sets the kernel's threads); exceptions thrown
// by fn are carried back to the calling thread.
struct ParCtx {
  const OrtApi* api;
  OrtKernelContext* ctx;
};

template <class F>
void parallel_for(const ParCtx& pc, size_t n, F&& fn) {
  if (n == 0) return;
  struct Closure {
    F* fn;
    std::atomic<bool> failed{false};
    std::mutex mu;
    std::string msg;
  } c;
  c.fn = &fn;
  auto tramp = [](void* user, size_t i) {
    auto* cl = static_cast<Closure*>(user);
    if (cl->failed.load(std::memory_order_relaxed)) return;
    std::string m;
    try {
      (*cl->fn)(i);
      return;
    } catch (const Error& e) {
      m = e.msg;
    } catch (const std::bad_alloc&) {
      m = "DynamicMoE: out of memory";
    } catch (const std::exception& e) {
      m = std::string("DynamicMoE: ") + e.what();
    } catch (...) {
      m = "DynamicMoE: unknown error";
    }
    std::lock_guard<std::mutex> lk(cl->mu);
    if (!cl->failed.exchange(true)) cl->msg = m;
  };
  if (n == 1) tramp(&c, 0);
  else check(pc.api, pc.api->KernelContext_ParallelFor(pc.ctx, tramp, n, n, &c));
  if (c.failed.load()) throw Error{c.msg};
}

}  // namespace moefy
