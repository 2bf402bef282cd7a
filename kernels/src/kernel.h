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
#include "op_base.h"
#include "ort_api.h"
#include "weight_buffer.h"

namespace moefy {

// Cache-line-aligned storage for the scratch matrices the micro-kernels load and store in 64-byte vectors (malloc's
// 16-byte alignment splits every such access over two lines).
template <class T>
struct LineAligned {
  using value_type = T;
  LineAligned() = default;
  template <class U>
  LineAligned(const LineAligned<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <class U>
  bool operator==(const LineAligned<U>&) const { return true; }
  template <class U>
  bool operator!=(const LineAligned<U>&) const { return false; }
};
using FloatBuffer = std::vector<float, LineAligned<float>>;

template <class T, class A>
inline void grow(std::vector<T, A>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

// Scratch of one expert group (or chunk task).
struct Slot {
  FloatBuffer acc;                   // [N, D] accumulator (unused for the slot that writes Y)
  FloatBuffer a;                     // BLAS path: gathered X rows [TM, D]
  FloatBuffer h;                     // hidden [TM, S]
  FloatBuffer z;                     // BLAS path: expert output [TM, D]
  std::vector<const float*> arows;   // packed path: A row pointers
  std::vector<float*> hrows, crows;  // packed path: H / C row pointers
};

struct Workspace {
  std::vector<int32_t> scale_of_l;  // [L]
  std::vector<uint8_t> mask;        // [N, E]
  std::vector<int64_t> counts;      // [E]
  std::vector<int64_t> offsets;     // [E + 1]
  std::vector<int64_t> tokens;      // CSR token lists
  FloatBuffer hidden;               // hidden rows: dense path [rows, E*S], column split [pairs, S]
  std::vector<std::unique_ptr<Slot>> slots;  // one per expert group
  struct Chunk {
    int64_t expert, begin, count;
  };
  std::vector<Chunk> chunks;  // few-experts path
  // float16 inputs converted to float32 for this call, and the float32 result before conversion to Y
  FloatBuffer xf, nf, w1f, b1f, w2f, b2f, sbf, yf;
};

struct Kernel : OpKernel {
  explicit Kernel(const OrtApi* a) : OpKernel(a) {}
  void compute(OrtKernelContext* ctx) override;
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
  // float32 copies of constant float16 inputs (W1, B1, W2, B2, skip_bias by input index; empty when not kept).
  FloatBuffer const_f32[kNumInputs];
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
  const float* B2;    // may be null
  const float* skip;  // skip_bias [E, D], may be null
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
