// A small CPU emulator of the CUDA subset used by kernels/cuda/dynamic_moe_cuda.cu, so that the kernels' logic
// (routing, scans, scatter, tile lists, tile loaders, pipelines, epilogues, persistent loops) runs and is checked
// on machines without a GPU: compile dynamic_moe_cuda.cu with -DMOEFY_CUDA_EMULATE -x c++ (see emu_check.cc).
//
// Model: the blocks of a launch run one after another; the threads of a block are fibers (ucontext) on one OS
// thread, each running until it reaches a barrier (__syncthreads, __syncwarp, warp votes/shuffles) or ends. The
// scheduler releases a barrier when every live thread of the block (or warp) waits at it, and the order in which
// runnable threads run is forward, reverse or a seeded random permutation (emu::set_order), so a missing barrier
// shows up as a wrong result under some order. cp.async copies land immediately or, in deferred mode, only at the
// cp.async.wait_group that must cover them (emu::set_deferred_copies), so a read before the wait shows up too.
// WMMA fragments hold the whole 16x16 tile in every lane (a valid implementation of the opaque layouts, since the
// kernels only load, fill, multiply and store fragments). Not emulated: timing, occupancy, real warp divergence.
#pragma once

#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <random>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#ifndef __align__
#define __align__(n) alignas(n)
#endif

// ------------------------------------------------------------------------------------------ half precision
struct __half {
  uint16_t bits;
};
namespace emu {
inline uint16_t f32_to_f16_bits(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to infinity
  if (ax < 0x38800000u) {                                    // half subnormal or zero: multiples of 2^-24
    float a;
    memcpy(&a, &ax, 4);
    return (uint16_t)(sign | (uint32_t)lrintf(a * 16777216.0f));  // exact scaling, round to nearest even
  }
  uint32_t h = ((((ax >> 23) - 127u + 15u) << 10) | ((ax & 0x7fffffu) >> 13));
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return (uint16_t)(sign | h);
}
inline float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float v = (float)m * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  uint32_t x = e == 31 ? (sign | 0x7f800000u | (m << 13)) : (sign | ((e - 15u + 127u) << 23) | (m << 13));
  float f;
  memcpy(&f, &x, 4);
  return f;
}
}  // namespace emu
inline __half __float2half_rn(float f) { return __half{emu::f32_to_f16_bits(f)}; }
inline float __half2float(__half h) { return emu::f16_bits_to_f32(h.bits); }

// ------------------------------------------------------------------------------------------ vector types
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// ------------------------------------------------------------------------------------------ runtime API stubs
typedef void* cudaStream_t;
typedef int cudaError_t;
#define cudaSuccess 0
enum {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
};
typedef void* cudaEvent_t;
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "emulated error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { return *d = 0, cudaSuccess; }
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* v, int attr, int) {  // 1 "SM" (persistent loops run several tiles
  *v = attr == cudaDevAttrMaxSharedMemoryPerBlockOptin ? 166912 : 1;  // per block), an A100's 163 KB opt-in smem
  return cudaSuccess;
}
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F, int, int) {
  return cudaSuccess;
}
template <typename F>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, F, int, size_t) {
  return *n = 2, cudaSuccess;
}

// ------------------------------------------------------------------------------------------ fibers
namespace emu {
struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};
enum State { kRunnable, kWaitBlock, kWaitWarp, kDone };
enum WarpOp { kOpSync, kOpBallot, kOpShflUp };
struct Pending {
  void* dst;
  unsigned char data[16];
};
struct Fiber {
  ucontext_t ctx;
  Dim3 tid;
  State state = kDone;
  int op = 0, delta = 0;
  long long value = 0, result = 0;
  std::vector<std::vector<Pending>> groups;  // committed cp.async groups (deferred mode), oldest first
  std::vector<Pending> open;                 // not yet committed
};
struct Block {
  std::vector<Fiber> fibers;
  std::vector<std::vector<char>> stacks;
  ucontext_t sched;
  Fiber* cur = nullptr;
  Dim3 bid, bdim, gdim;
  std::vector<unsigned char> smem;
  void (*body)(void*) = nullptr;
  void* arg = nullptr;
};
inline Block& blk() {
  static Block b;
  return b;
}
inline int& order_mode() {
  static int m = 0;
  return m;
}
inline unsigned& order_seed() {
  static unsigned s = 1;
  return s;
}
inline bool& deferred() {
  static bool d = false;
  return d;
}
inline void set_order(int mode, unsigned seed) { order_mode() = mode, order_seed() = seed; }  // 0 fwd 1 rev 2 random
inline void set_deferred_copies(bool on) { deferred() = on; }

inline void yield(State s) {
  Fiber* f = blk().cur;
  f->state = s;
  swapcontext(&f->ctx, &blk().sched);
}
inline void trampoline() {
  Block& b = blk();
  b.body(b.arg);
  b.cur->state = kDone;
}

inline void run_block(void (*body)(void*), void* arg) {
  Block& b = blk();
  const unsigned n = b.bdim.x;
  const size_t stack_bytes = 256 * 1024;
  if (b.stacks.size() < n) b.stacks.resize(n);
  b.fibers.assign(n, Fiber());
  b.body = body;
  b.arg = arg;
  for (unsigned i = 0; i < n; ++i) {
    if (b.stacks[i].size() < stack_bytes) b.stacks[i].assign(stack_bytes, 0);
    Fiber& f = b.fibers[i];
    f.tid.x = i;
    f.state = kRunnable;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = b.stacks[i].data();
    f.ctx.uc_stack.ss_size = stack_bytes;
    f.ctx.uc_link = &b.sched;
    makecontext(&f.ctx, (void (*)())trampoline, 0);
  }
  std::vector<unsigned> order(n);
  std::mt19937 rng(order_seed() * 7919u + b.bid.x);
  for (;;) {
    for (unsigned i = 0; i < n; ++i) order[i] = order_mode() == 1 ? n - 1 - i : i;
    // random mode: a random order, and each round every warp is held back with probability 1/2, so that warps
    // drift apart by several barrier-free segments (as on hardware) and missing block barriers show up
    std::vector<char> hold((n + 31) / 32, 0);
    if (order_mode() == 2) {
      std::shuffle(order.begin(), order.end(), rng);
      bool any = false;
      for (auto& h : hold) any |= !(h = (char)(rng() & 1));
      if (!any) hold.assign(hold.size(), 0);
    }
    for (unsigned i : order) {
      Fiber& f = b.fibers[i];
      if (f.state != kRunnable || hold[i / 32]) continue;
      b.cur = &f;
      swapcontext(&b.sched, &f.ctx);
    }
    // release barriers
    unsigned done = 0, at_block = 0, runnable = 0;
    for (auto& f : b.fibers)
      done += f.state == kDone, at_block += f.state == kWaitBlock, runnable += f.state == kRunnable;
    if (done == n) break;
    bool released = runnable > 0;  // held-back threads still have work: no deadlock
    if (at_block + done == n && at_block > 0) {
      long long count = 0;
      for (auto& f : b.fibers)
        if (f.state == kWaitBlock) count += f.value != 0;
      for (auto& f : b.fibers)
        if (f.state == kWaitBlock) f.result = count, f.state = kRunnable;
      released = true;
    }
    for (unsigned w = 0; w * 32 < n; ++w) {
      unsigned waiting = 0, live = 0;
      int op = -1;
      bool same = true;
      for (unsigned l = 0; l < 32 && w * 32 + l < n; ++l) {
        Fiber& f = b.fibers[w * 32 + l];
        if (f.state == kDone) continue;
        ++live;
        if (f.state == kWaitWarp) {
          ++waiting;
          if (op >= 0 && f.op != op) same = false;
          op = f.op;
        }
      }
      if (live == 0 || waiting != live) continue;
      if (!same || live != 32) {
        fprintf(stderr, "emu: warp %u of block %u: divergent or partial warp collective\n", w, b.bid.x);
        abort();
      }
      unsigned long long ballot = 0;
      for (unsigned l = 0; l < 32; ++l) ballot |= (unsigned long long)(b.fibers[w * 32 + l].value != 0) << l;
      for (unsigned l = 0; l < 32; ++l) {
        Fiber& f = b.fibers[w * 32 + l];
        if (f.op == kOpBallot) f.result = (long long)ballot;
        if (f.op == kOpShflUp) f.result = (int)l >= f.delta ? b.fibers[w * 32 + l - f.delta].value : f.value;
        f.state = kRunnable;
      }
      released = true;
    }
    if (!released) {
      fprintf(stderr, "emu: deadlock in block %u (threads waiting at different barriers)\n", b.bid.x);
      abort();
    }
  }
  for (auto& f : b.fibers)
    if (!f.open.empty() || !f.groups.empty()) {
      // copies issued but never waited for: complete them (a kernel must wait before reading them)
      for (auto& g : f.groups)
        for (auto& p : g) memcpy(p.dst, p.data, 16);
      for (auto& p : f.open) memcpy(p.dst, p.data, 16);
    }
}

template <typename... Args>
struct Launch {
  Dim3 grid, block;
  size_t smem;
  void (*kern)(Args...);
  template <typename... A>
  void operator()(A&&... a) {
    Block& b = blk();
    b.gdim = grid;
    b.bdim = block;
    std::tuple<Args...> args(std::forward<A>(a)...);
    struct Ctx {
      void (*kern)(Args...);
      std::tuple<Args...>* args;
    } ctx{kern, &args};
    auto body = [](void* p) {
      Ctx* c = static_cast<Ctx*>(p);
      std::apply(c->kern, *c->args);
    };
    for (unsigned x = 0; x < grid.x; ++x) {
      b.bid = Dim3();
      b.bid.x = x;
      b.smem.assign(smem + 16, 0xcd);  // garbage-filled: shared memory is uninitialised on a GPU
      run_block(body, &ctx);
    }
  }
};
inline Dim3 dim(unsigned x) {
  Dim3 d;
  d.x = x;
  return d;
}
template <typename... Args>
Launch<Args...> launch(unsigned grid, unsigned block, size_t smem, void (*k)(Args...)) {
  return Launch<Args...>{dim(grid), dim(block), smem, k};
}
inline unsigned char* dynamic_smem() {
  return reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(blk().smem.data()) + 15) & ~uintptr_t(15));
}

// cp.async emulation
inline void cp_async16(void* dst, const void* src, int bytes) {
  Pending p;
  p.dst = dst;
  if (bytes) memcpy(p.data, src, 16);
  else memset(p.data, 0, 16);
  if (!deferred()) {
    memcpy(dst, p.data, 16);
    return;
  }
  blk().cur->open.push_back(p);
}
inline void cp_async_commit() {
  if (!deferred()) return;
  Fiber* f = blk().cur;
  f->groups.push_back(std::move(f->open));
  f->open.clear();
}
inline void cp_async_wait(int n) {
  if (!deferred()) return;
  Fiber* f = blk().cur;
  while ((int)f->groups.size() > n) {
    for (auto& p : f->groups.front()) memcpy(p.dst, p.data, 16);
    f->groups.erase(f->groups.begin());
  }
}
}  // namespace emu

#define threadIdx (emu::blk().cur->tid)
#define blockIdx (emu::blk().bid)
#define blockDim (emu::blk().bdim)
#define gridDim (emu::blk().gdim)

inline void __syncthreads() {
  emu::blk().cur->value = 0;
  emu::yield(emu::kWaitBlock);
}
inline int __syncthreads_count(int pred) {
  emu::blk().cur->value = pred != 0;
  emu::yield(emu::kWaitBlock);
  return (int)emu::blk().cur->result;
}
inline void __syncwarp(unsigned = 0xffffffffu) {
  emu::Fiber* f = emu::blk().cur;
  f->op = emu::kOpSync;
  emu::yield(emu::kWaitWarp);
}
inline unsigned __ballot_sync(unsigned, int pred) {
  emu::Fiber* f = emu::blk().cur;
  f->op = emu::kOpBallot;
  f->value = pred != 0;
  emu::yield(emu::kWaitWarp);
  return (unsigned)f->result;
}
inline int __shfl_up_sync(unsigned, int v, unsigned delta) {
  emu::Fiber* f = emu::blk().cur;
  f->op = emu::kOpShflUp;
  f->value = v;
  f->delta = (int)delta;
  emu::yield(emu::kWaitWarp);
  return (int)f->result;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline float atomicAdd(float* p, float v) {  // fibers never interleave inside this call
  const float old = *p;
  *p = old + v;
  return old;
}
inline float4 atomicAdd(float4* p, float4 v) {
  const float4 old = *p;
  p->x += v.x, p->y += v.y, p->z += v.z, p->w += v.w;
  return old;
}

// ------------------------------------------------------------------------------------------ WMMA (16x16x16)
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  float x[256];  // the whole tile, row-major, in every lane
};
template <typename Use, typename T, typename L>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, float v) {
  for (float& e : f.x) e = v;
}
template <typename Use, typename L>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, __half, L>& f, const __half* p, unsigned ldm) {
  static_assert(std::is_same<L, row_major>::value, "emu: row_major fragments only");
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = __half2float(p[(size_t)r * ldm + c]);
}
template <typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, __half, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, __half, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[256];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float s = c.x[m * 16 + n];
      for (int k = 0; k < 16; ++k) s += a.x[m * 16 + k] * b.x[k * 16 + n];
      out[m * 16 + n] = s;
    }
  memcpy(d.x, out, sizeof(out));
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
  assert(l == mem_row_major);
  (void)l;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) p[(size_t)r * ldm + c] = f.x[r * 16 + c];
}
}  // namespace wmma
}  // namespace nvcuda
