// CUDA DynamicMoE: device-side routing + two grouped GEMMs. Design and expected performance: kernels/cuda/README.md.
//
// Pipeline (all on one stream, no host synchronisation; data-dependent sizes stay on the device):
//   1. route_kernel     one thread per token: scale -> threshold -> the routing rule (kernels/src/routing_rule.h,
//                       shared with the CPU kernel) -> mask[T,E], active[T]; per 256-token chunk, a per-expert count
//                       (__syncthreads_count); for the atomic FC2, initialises the fp32 accumulator rows of its
//                       tokens with B2 (or 0) plus the skip_bias rows of the experts each token skips.
//   2. scan_kernel      one block per expert: exclusive scan of the chunk counts -> chunk offsets, expert totals.
//   3. scatter_kernel   one thread per token: writes each (token, expert) pair to its slot in an expert-major
//                       list whose expert segments are padded to BM rows; tokens stay in ascending order inside an
//                       expert (deterministic, and it keeps concurrently running tiles on nearby tokens).
//   4. tile_list_kernel the list of BM-row tiles (expert, first row, valid rows), ordered tile-index-major across
//                       experts so that concurrently running tiles touch the same token window (L2 locality for the
//                       X gather and the Y accumulation).
//   5. fc kernel (FC1)  persistent grouped GEMM: H[pair, :] = act(X[token(pair), :] . W1_e + B1_e), gathering the
//                       X rows inside the GEMM's tile loader; H stored compactly (pair-major, S wide).
//   6. FC2, one of
//      fc2_window_kernel (fp16 default for large batches) a CTA owns 256 tokens x 64 columns of Y in shared memory,
//                       walks every expert's (contiguous, token-sorted) pair segment of those tokens in 64-row
//                       items and writes Y once (+B2, +skipped experts' skip_bias): a token tile's experts
//                       accumulated before one write.
//      fc kernel (FC2)  persistent grouped GEMM: acc[token(pair), :] += H[pair, :] . W2_e, fp32 atomics (float4
//                       atomics on sm_90).
//   7. finalize_kernel  (fp16 with the atomic FC2) Y = half(acc). For fp32, acc is Y itself.
// Tiles past the device-side tile count exit (persistent loop bound read from the device).
// fp16 GEMMs use tensor cores through WMMA (m16n16k16, fp32 accumulate); fp32 GEMMs use FP32 FMA register tiles
// (no TF32, to keep the 1e-5 target).
#include "dynamic_moe_cuda.h"

#ifdef MOEFY_CUDA_EMULATE  // CPU emulation for tests without a GPU (kernels/cuda/emu)
#include "emu/cuda_emu.h"
#define MOEFY_LAUNCH(kernel, grid, block, smem, stream) emu::launch((grid), (block), (smem), kernel)
#define MOEFY_DYNAMIC_SMEM(name) unsigned char* name = emu::dynamic_smem()
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#define MOEFY_LAUNCH(kernel, grid, block, smem, stream) kernel<<<(grid), (block), (smem), (stream)>>>
#define MOEFY_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

#include <stdio.h>
#include <string.h>

#include <exception>
#include <string>
#include <type_traits>

// The scale-of-position and routing rules, one C++ statement shared with the CPU kernel (host and device code).
#include "../src/routing_rule.h"
#include "../src/scale_rule.h"

static_assert(int(MOEFY_CUDA_ROUTING_RELATIVE) == moefy::kRoutingRelative &&
                  int(MOEFY_CUDA_ROUTING_ABSOLUTE) == moefy::kRoutingAbsolute &&
                  int(MOEFY_CUDA_ROUTING_TOPK) == moefy::kRoutingTopk,
              "the launcher's routing values are the rule's");

namespace moefy_cuda {

constexpr int kBM = 128;     // (token, expert) pairs per GEMM tile, both precisions
constexpr int kChunk = 256;  // tokens per routing block
constexpr int kThreads = 256;

thread_local char g_last_error[768];
thread_local void* const* g_events = nullptr;  // moefy_dynamic_moe_cuda_timed's events, else nullptr

void mark(int i, cudaStream_t st) {
  if (g_events && g_events[i]) cudaEventRecord(static_cast<cudaEvent_t>(g_events[i]), st);
}

void set_error(const char* msg) {
  snprintf(g_last_error, sizeof(g_last_error), "%s", msg);
}

enum ScaleMode { kModeIndex = 0, kModeFull = 1, kModeStep = 2 };

struct RouteParams {
  int T, L, E;
  int mode;        // ScaleMode
  int step_scale;  // kModeStep
  int routing;     // MoeCudaRouting
  int nthr;        // number of thresholds (scales)
  int nfull;       // kModeFull: number of scales
  int scale_end[MOEFY_CUDA_MAX_SCALES];  // kModeFull: exclusive end position of each scale
  float thr[MOEFY_CUDA_MAX_SCALES];      // attribute thresholds (used when thr_dev == nullptr)
  const int64_t* scale_index;
  const float* thr_dev;
};

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

__device__ __forceinline__ float activate(float x, int act) {
  if (act == MOEFY_CUDA_RELU) return x > 0.f ? x : 0.f;
  if (act == MOEFY_CUDA_GELU_TANH) {
    const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.f + tanhf(u));
  }
  return 0.5f * x * (1.f + erff(x * 0.7071067811865476f));
}

__host__ __device__ __forceinline__ int round_up(int x, int m) { return (x + m - 1) / m * m; }

// ---------------------------------------------------------------------------------------------------------------
// 1. routing
template <typename T>
__global__ void __launch_bounds__(kChunk) route_kernel(const T* __restrict__ norms, RouteParams p,
                                                       unsigned char* __restrict__ mask, int* __restrict__ chunk_count,
                                                       int n_chunks, int32_t* __restrict__ active,
                                                       float* __restrict__ acc, const T* __restrict__ b2,
                                                       const T* __restrict__ skip, int D) {
  const int t = blockIdx.x * kChunk + threadIdx.x;
  const bool valid = t < p.T;
  const int E = p.E;
  if (valid) {
    int s;
    if (p.mode == kModeIndex) {
      long long v = (long long)*p.scale_index;
      if (v < 0) v = 0;
      if (v > p.nthr - 1) v = p.nthr - 1;
      s = (int)v;
    } else if (p.mode == kModeFull) {
      s = moefy::scale_of_position(t % p.L, p.scale_end, p.nfull);
    } else {
      s = p.step_scale;
    }
    const float thr = p.thr_dev ? p.thr_dev[s] : p.thr[s];
    const T* nr = norms + (size_t)t * E;
    const moefy::TokenCut c = moefy::token_cut(p.routing, thr, E, [nr](int64_t e) { return to_f(nr[e]); });
    int cnt = 0;
    unsigned char* mrow = mask + (size_t)t * E;
    for (int e = 0; e < E; ++e) {
      const bool on = moefy::expert_runs(c, e, to_f(nr[e]));
      mrow[e] = on ? 1 : 0;
      cnt += on ? 1 : 0;
    }
    if (active) active[t] = cnt;
  }
  for (int e = 0; e < E; ++e) {
    const int on = valid ? (int)mask[(size_t)t * E + e] : 0;
    const int c = __syncthreads_count(on);
    if (threadIdx.x == 0) chunk_count[(size_t)e * n_chunks + blockIdx.x] = c;
  }
  // Initialise the fp32 accumulator rows of this chunk's tokens: B2 (added once per token) or 0, plus the skip_bias
  // rows of the experts the token skips, in ascending order (the masks are visible after the barriers above).
  // (No accumulator in the token-window FC2, which adds B2 and skip_bias itself.)
  if (!acc) return;
  const int t0 = blockIdx.x * kChunk;
  const int nt = min(kChunk, p.T - t0);
  for (int r = 0; r < nt; ++r) {
    float* row = acc + (size_t)(t0 + r) * D;
    const unsigned char* mrow = mask + (size_t)(t0 + r) * E;
    for (int c = threadIdx.x; c < D; c += kChunk) {
      float v = b2 ? to_f(b2[c]) : 0.f;
      if (skip)
        for (int e = 0; e < E; ++e)
          if (!mrow[e]) v += to_f(skip[(size_t)e * D + c]);
      row[c] = v;
    }
  }
}

// 2. per-expert exclusive scan over chunks
__global__ void __launch_bounds__(kThreads) scan_kernel(const int* __restrict__ chunk_count,
                                                        int* __restrict__ chunk_offset, int* __restrict__ exp_count,
                                                        int n_chunks) {
  __shared__ int warp_sums[kThreads / 32];
  const int e = blockIdx.x;
  const int* in = chunk_count + (size_t)e * n_chunks;
  int* out = chunk_offset + (size_t)e * n_chunks;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  int carry = 0;
  for (int base = 0; base < n_chunks; base += kThreads) {
    const int i = base + threadIdx.x;
    const int v = i < n_chunks ? in[i] : 0;
    int x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, x, o);
      if (lane >= o) x += y;
    }
    if (lane == 31) warp_sums[w] = x;
    __syncthreads();
    int before = 0, total = 0;
#pragma unroll
    for (int k = 0; k < kThreads / 32; ++k) {
      const int ws = warp_sums[k];
      if (k < w) before += ws;
      total += ws;
    }
    if (i < n_chunks) out[i] = carry + before + x - v;
    carry += total;
    __syncthreads();
  }
  if (threadIdx.x == 0) exp_count[e] = carry;
}

// 3. scatter pairs into the expert-major, BM-padded list
__global__ void __launch_bounds__(kChunk) scatter_kernel(const unsigned char* __restrict__ mask,
                                                         const int* __restrict__ chunk_offset,
                                                         const int* __restrict__ exp_count, int n_chunks, int T, int E,
                                                         int* __restrict__ pair_tok) {
  MOEFY_DYNAMIC_SMEM(smem_raw);
  int* row_start = reinterpret_cast<int*>(smem_raw);  // [E]
  __shared__ int wsum[2][kChunk / 32];
  if (threadIdx.x == 0) {
    int acc = 0;
    for (int e = 0; e < E; ++e) {
      row_start[e] = acc;
      acc += round_up(exp_count[e], kBM);
    }
  }
  __syncthreads();
  const int t = blockIdx.x * kChunk + threadIdx.x;
  const bool valid = t < T;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const unsigned lt_mask = (1u << lane) - 1u;
  for (int e = 0; e < E; ++e) {
    const bool on = valid && mask[(size_t)t * E + e] != 0;
    const unsigned b = __ballot_sync(0xffffffffu, on);
    if (lane == 0) wsum[e & 1][w] = __popc(b);
    __syncthreads();
    if (on) {
      int before = 0;
      for (int k = 0; k < w; ++k) before += wsum[e & 1][k];
      const int slot = row_start[e] + chunk_offset[(size_t)e * n_chunks + blockIdx.x] + before + __popc(b & lt_mask);
      pair_tok[slot] = t;
    }
  }
}

// 4. tile list: entry = (expert, first row, valid rows, 0), ordered by (tile index within expert, expert)
__global__ void __launch_bounds__(kThreads) tile_list_kernel(const int* __restrict__ exp_count, int E, int max_j,
                                                             int4* __restrict__ tiles, int* __restrict__ num_tiles,
                                                             int* __restrict__ row_start) {
  MOEFY_DYNAMIC_SMEM(smem_raw);
  int* sm = reinterpret_cast<int*>(smem_raw);  // [3E]: count, tiles, row start
  int* cnt = sm;
  int* nt = sm + E;
  int* rs = sm + 2 * E;
  if (threadIdx.x == 0) {
    int acc = 0, tot = 0;
    for (int e = 0; e < E; ++e) {
      const int c = exp_count[e];
      cnt[e] = c;
      nt[e] = (c + kBM - 1) / kBM;
      rs[e] = acc;
      if (blockIdx.x == 0) row_start[e] = acc;
      acc += nt[e] * kBM;
      tot += nt[e];
    }
    if (blockIdx.x == 0) *num_tiles = tot;
  }
  __syncthreads();
  const long long idx = (long long)blockIdx.x * kThreads + threadIdx.x;
  if (idx >= (long long)E * max_j) return;
  const int e = (int)(idx / max_j), j = (int)(idx % max_j);
  if (j >= nt[e]) return;
  int pos = 0;
  for (int e2 = 0; e2 < E; ++e2) {
    const int n2 = nt[e2];
    pos += n2 < j ? n2 : j;
    if (e2 < e && n2 > j) ++pos;
  }
  const int left = cnt[e] - j * kBM;
  tiles[pos] = make_int4(e, rs[e] + j * kBM, left < kBM ? left : kBM, 0);
}

// 7. fp16 finalisation
__global__ void finalize_kernel(const float* __restrict__ acc, __half* __restrict__ y, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] = __float2half_rn(acc[i]);
}

// ---------------------------------------------------------------------------------------------------------------
// Grouped GEMM (FC1 and FC2), persistent over (m tile, n tile).
struct FcArgs {
  const void* X;   // [T, D]
  const void* W;   // FC1: W1 [D, E*S]; FC2: W2 [E*S, D]
  const void* B1;  // FC1 bias [E*S]
  void* H;         // [rows, S]: FC1 output, FC2 input
  float* acc;      // FC2 output [T, D] (fp32)
  const int* pair_tok;
  const int4* tiles;
  const int* num_tiles;
  int D, E, S;
  int act;
  int n_tiles_n;
};

// 16-byte global -> shared copies, asynchronous on sm_80+ (zero-filled when src_bytes == 0); synchronous before.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
#if defined(MOEFY_CUDA_EMULATE)
  emu::cp_async16(smem, gmem, src_bytes);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
#else
  *reinterpret_cast<uint4*>(smem) = src_bytes ? *reinterpret_cast<const uint4*>(gmem) : make_uint4(0, 0, 0, 0);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(MOEFY_CUDA_EMULATE)
  emu::cp_async_commit();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(MOEFY_CUDA_EMULATE)
  emu::cp_async_wait(N);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// float4 atomicAdd on global memory: sm_90+, declared by CUDA >= 12.8 headers (older toolkits: scalar atomics).
#if (defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && \
     ((__CUDACC_VER_MAJOR__ > 12) || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 8))) || \
    (defined(MOEFY_CUDA_EMULATE) && defined(MOEFY_EMU_VECTOR_ATOMICS))
#define MOEFY_VECTOR_ATOMICS 1
constexpr bool kVectorAtomics = true;
#else
#define MOEFY_VECTOR_ATOMICS 0
constexpr bool kVectorAtomics = false;
#endif

// Epilogue for NV contiguous output columns [col, col+NV) of tile row `row` (values v, fp32).
template <typename T, bool FC2, bool VEC, int NV>
__device__ __forceinline__ void epilogue(const FcArgs& a, int e, int row_base, int nvalid, const int* rowtok, int N,
                                         int row, int col, const float* v) {
  if (col >= N) return;
  if (!FC2) {
    // H = act(acc + B1), all BM rows of the tile (padding rows hold act(B1); FC2 ignores them)
    const T* b1 = static_cast<const T*>(a.B1) + (size_t)e * a.S;
    T* h = static_cast<T*>(a.H) + (size_t)(row_base + row) * a.S;
    if (VEC) {
      if constexpr (std::is_same<T, __half>::value) {
        static_assert(NV == 8, "fp16 epilogue works on 8 columns");
        union {
          uint4 u;
          __half h[8];
        } out;
#pragma unroll
        for (int q = 0; q < 8; ++q) out.h[q] = __float2half_rn(activate(v[q] + to_f(b1[col + q]), a.act));
        *reinterpret_cast<uint4*>(h + col) = out.u;
      } else {
        static_assert(NV == 4, "fp32 epilogue works on 4 columns");
        float4 o;
        o.x = activate(v[0] + to_f(b1[col + 0]), a.act);
        o.y = activate(v[1] + to_f(b1[col + 1]), a.act);
        o.z = activate(v[2] + to_f(b1[col + 2]), a.act);
        o.w = activate(v[3] + to_f(b1[col + 3]), a.act);
        *reinterpret_cast<float4*>(h + col) = o;
      }
    } else {
#pragma unroll
      for (int q = 0; q < NV; ++q)
        if (col + q < N) h[col + q] = from_f<T>(activate(v[q] + to_f(b1[col + q]), a.act));
    }
  } else {
    if (row >= nvalid) return;
    float* dst = a.acc + (size_t)rowtok[row] * a.D + col;
    if constexpr (VEC && kVectorAtomics) {
#if MOEFY_VECTOR_ATOMICS
#pragma unroll
      for (int q = 0; q < NV; q += 4)
        atomicAdd(reinterpret_cast<float4*>(dst + q), make_float4(v[q], v[q + 1], v[q + 2], v[q + 3]));
#endif
    } else {
#pragma unroll
      for (int q = 0; q < NV; ++q)
        if (VEC || col + q < N) atomicAdd(dst + q, v[q]);
    }
  }
}

// ---- fp16 tensor-core tile: BM x 128 x 32, 3-stage cp.async pipeline, 8 warps (2 x 4), warp tile 64 x 32 ----
namespace f16cfg {
constexpr int BN = 128, BK = 32, NS = 3, LDA = BK + 8, LDB = BN + 8;
constexpr int A_STAGE = kBM * LDA;  // halves
constexpr int B_STAGE = BK * LDB;
constexpr size_t OFF_A = 0;
constexpr size_t OFF_B = OFF_A + sizeof(__half) * NS * A_STAGE;
constexpr size_t OFF_SCR = OFF_B + sizeof(__half) * NS * B_STAGE;
constexpr size_t OFF_PTR = OFF_SCR + sizeof(float) * 8 * 256;
constexpr size_t OFF_TOK = OFF_PTR + sizeof(void*) * kBM;
constexpr size_t SMEM = OFF_TOK + sizeof(int) * kBM;
static_assert(OFF_B % 128 == 0 && OFF_SCR % 128 == 0 && OFF_PTR % 16 == 0, "smem alignment");
}  // namespace f16cfg

// ---- fp32 FMA tile: BM x 128 x 8, register double buffer, 16 x 16 threads with 8 x 8 outputs each ----
namespace f32cfg {
constexpr int BN = 128, BK = 8, LDA = kBM + 4, LDB = BN;
constexpr int A_STAGE = BK * LDA;  // floats, stored k-major (transposed)
constexpr int B_STAGE = BK * LDB;
constexpr size_t OFF_A = 0;
constexpr size_t OFF_B = OFF_A + sizeof(float) * 2 * A_STAGE;
constexpr size_t OFF_PTR = OFF_B + sizeof(float) * 2 * B_STAGE;
constexpr size_t OFF_TOK = OFF_PTR + sizeof(void*) * kBM;
constexpr size_t SMEM = OFF_TOK + sizeof(int) * kBM;
static_assert(OFF_B % 16 == 0 && OFF_PTR % 16 == 0, "smem alignment");
}  // namespace f32cfg

template <typename T>
constexpr size_t fc_smem() {
  return std::is_same<T, __half>::value ? f16cfg::SMEM : f32cfg::SMEM;
}

template <bool FC2, bool VEC>
__device__ __forceinline__ void fc_tile_f16(const FcArgs& a, const int4 ti, int n0, unsigned char* smem) {
  using namespace nvcuda;
  using namespace f16cfg;
  __half* As = reinterpret_cast<__half*>(smem + OFF_A);
  __half* Bs = reinterpret_cast<__half*>(smem + OFF_B);
  float* scratch = reinterpret_cast<float*>(smem + OFF_SCR);
  const __half* const* rowptr = reinterpret_cast<const __half* const*>(smem + OFF_PTR);
  const int* rowtok = reinterpret_cast<const int*>(smem + OFF_TOK);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;
  const int e = ti.x, row_base = ti.y, nvalid = ti.z;
  const int K = FC2 ? a.S : a.D;
  const int N = FC2 ? a.D : a.S;
  const int ldb = FC2 ? a.D : a.E * a.S;
  const __half* Bbase = static_cast<const __half*>(a.W) + (FC2 ? (size_t)e * a.S * a.D : (size_t)e * a.S);
  const __half* dummy = static_cast<const __half*>(a.W);

  auto load_stage = [&](int stage, int k0) {
    __half* as = As + stage * A_STAGE;
    __half* bs = Bs + stage * B_STAGE;
#pragma unroll
    for (int i = 0; i < 2; ++i) {  // A: 128 rows x 4 chunks of 8
      const int c = tid + i * kThreads;
      const int r = c >> 2, kc = (c & 3) * 8;
      const __half* src = rowptr[r];
      if (VEC) {
        const bool ok = src != nullptr && k0 + kc < K;
        cp_async16(as + r * LDA + kc, ok ? (const void*)(src + k0 + kc) : (const void*)dummy, ok ? 16 : 0);
      } else {
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          const int k = k0 + kc + q;
          as[r * LDA + kc + q] = (src != nullptr && k < K) ? src[k] : __float2half_rn(0.f);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {  // B: 32 rows x 16 chunks of 8
      const int c = tid + i * kThreads;
      const int r = c >> 4, nc = (c & 15) * 8;
      const int k = k0 + r, n = n0 + nc;
      if (VEC) {
        const bool ok = k < K && n < N;
        cp_async16(bs + r * LDB + nc, ok ? (const void*)(Bbase + (size_t)k * ldb + n) : (const void*)dummy,
                   ok ? 16 : 0);
      } else {
#pragma unroll
        for (int q = 0; q < 8; ++q)
          bs[r * LDB + nc + q] =
              (k < K && n + q < N) ? Bbase[(size_t)k * ldb + n + q] : __float2half_rn(0.f);
      }
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[4][2];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(c[i][j], 0.f);

  const int nk = (K + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < NS - 1; ++s) {
    if (s < nk) load_stage(s, s * BK);
    cp_async_commit();
  }
  for (int kt = 0; kt < nk; ++kt) {
    cp_async_wait<NS - 2>();
    __syncthreads();  // stage kt visible to all; every warp is done with stage kt-1
    {
      const int kn = kt + NS - 1;
      if (kn < nk) load_stage(kn % NS, kn * BK);
      cp_async_commit();
    }
    const __half* as = As + (kt % NS) * A_STAGE;
    const __half* bs = Bs + (kt % NS) * B_STAGE;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[4];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb[2];
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], bs + (kk * 16) * LDB + wn * 32 + j * 16, LDB);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (wm * 64 + i * 16 >= nvalid) break;  // warp-uniform: the rest of this warp's rows are padding (zeros)
        wmma::load_matrix_sync(fa[i], as + (wm * 64 + i * 16) * LDA + kk * 16, LDA);
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(c[i][j], fa[i], fb[j], c[i][j]);
      }
    }
  }
  cp_async_wait<0>();

  float* scr = scratch + warp * 256;
  const int r = lane >> 1, c0 = (lane & 1) * 8;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(scr, c[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      float v[8];
#pragma unroll
      for (int q = 0; q < 8; ++q) v[q] = scr[r * 16 + c0 + q];
      epilogue<__half, FC2, VEC, 8>(a, e, row_base, nvalid, rowtok, N, wm * 64 + i * 16 + r,
                                    n0 + wn * 32 + j * 16 + c0, v);
      __syncwarp();
    }
  }
}

template <bool FC2, bool VEC>
__device__ __forceinline__ void fc_tile_f32(const FcArgs& a, const int4 ti, int n0, unsigned char* smem) {
  using namespace f32cfg;
  float* As = reinterpret_cast<float*>(smem + OFF_A);
  float* Bs = reinterpret_cast<float*>(smem + OFF_B);
  const float* const* rowptr = reinterpret_cast<const float* const*>(smem + OFF_PTR);
  const int* rowtok = reinterpret_cast<const int*>(smem + OFF_TOK);

  const int tid = threadIdx.x;
  const int ty = tid >> 4, tx = tid & 15;
  const int e = ti.x, row_base = ti.y, nvalid = ti.z;
  const int K = FC2 ? a.S : a.D;
  const int N = FC2 ? a.D : a.S;
  const int ldb = FC2 ? a.D : a.E * a.S;
  const float* Bbase = static_cast<const float*>(a.W) + (FC2 ? (size_t)e * a.S * a.D : (size_t)e * a.S);

  // loader coordinates: A one float4 per thread (row tid/2, k (tid&1)*4), B one float4 (k tid/32, n (tid&31)*4)
  const int ar = tid >> 1, ak = (tid & 1) * 4;
  const int br = tid >> 5, bn = (tid & 31) * 4;
  const float* asrc = rowptr[ar];
  float ra[4], rb[4];

  auto load_global = [&](int k0) {
    if (VEC) {
      const int k = k0 + ak;
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (asrc != nullptr && k < K) v = *reinterpret_cast<const float4*>(asrc + k);
      ra[0] = v.x, ra[1] = v.y, ra[2] = v.z, ra[3] = v.w;
      const int kb = k0 + br, n = n0 + bn;
      float4 w = make_float4(0.f, 0.f, 0.f, 0.f);
      if (kb < K && n < N) w = *reinterpret_cast<const float4*>(Bbase + (size_t)kb * ldb + n);
      rb[0] = w.x, rb[1] = w.y, rb[2] = w.z, rb[3] = w.w;
    } else {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int k = k0 + ak + q;
        ra[q] = (asrc != nullptr && k < K) ? asrc[k] : 0.f;
      }
      const int kb = k0 + br;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int n = n0 + bn + q;
        rb[q] = (kb < K && n < N) ? Bbase[(size_t)kb * ldb + n] : 0.f;
      }
    }
  };
  auto store_smem = [&](int stage) {
    float* as = As + stage * A_STAGE;
    float* bs = Bs + stage * B_STAGE;
#pragma unroll
    for (int q = 0; q < 4; ++q) as[(ak + q) * LDA + ar] = ra[q];
    *reinterpret_cast<float4*>(bs + br * LDB + bn) = make_float4(rb[0], rb[1], rb[2], rb[3]);
  };

  float accv[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) accv[i][j] = 0.f;

  const int nk = (K + BK - 1) / BK;
  load_global(0);
  store_smem(0);
  __syncthreads();
  for (int kt = 0; kt < nk; ++kt) {
    const bool more = kt + 1 < nk;
    if (more) load_global((kt + 1) * BK);
    const float* as = As + (kt & 1) * A_STAGE;
    const float* bs = Bs + (kt & 1) * B_STAGE;
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      const float4 a0 = *reinterpret_cast<const float4*>(as + k * LDA + ty * 4);
      const float4 a1 = *reinterpret_cast<const float4*>(as + k * LDA + 64 + ty * 4);
      const float4 b0 = *reinterpret_cast<const float4*>(bs + k * LDB + tx * 4);
      const float4 b1 = *reinterpret_cast<const float4*>(bs + k * LDB + 64 + tx * 4);
      const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) accv[i][j] = fmaf(av[i], bv[j], accv[i][j]);
    }
    if (more) store_smem((kt + 1) & 1);
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int row = (i < 4 ? 0 : 64) + ty * 4 + (i & 3);
#pragma unroll
    for (int jg = 0; jg < 2; ++jg) {
      const float v[4] = {accv[i][jg * 4 + 0], accv[i][jg * 4 + 1], accv[i][jg * 4 + 2], accv[i][jg * 4 + 3]};
      epilogue<float, FC2, VEC, 4>(a, e, row_base, nvalid, rowtok, N, row, n0 + jg * 64 + tx * 4, v);
    }
  }
}

template <typename T, bool FC2, bool VEC>
__global__ void __launch_bounds__(kThreads, 2) fc_kernel(FcArgs a) {
  MOEFY_DYNAMIC_SMEM(smem);
  constexpr bool kHalf = std::is_same<T, __half>::value;
  constexpr size_t OFF_PTR = kHalf ? f16cfg::OFF_PTR : f32cfg::OFF_PTR;
  constexpr size_t OFF_TOK = kHalf ? f16cfg::OFF_TOK : f32cfg::OFF_TOK;
  const T** rowptr = reinterpret_cast<const T**>(smem + OFF_PTR);
  int* rowtok = reinterpret_cast<int*>(smem + OFF_TOK);

  const int n_m = *a.num_tiles;
  const int total = n_m * a.n_tiles_n;
  for (int tile = blockIdx.x; tile < total; tile += gridDim.x) {
    const int mt = tile / a.n_tiles_n, nt = tile - mt * a.n_tiles_n;
    const int4 ti = a.tiles[mt];
    __syncthreads();  // the previous tile is done with shared memory
    if (threadIdx.x < kBM) {
      const int r = threadIdx.x;
      const bool ok = r < ti.z;
      const int tok = ok ? a.pair_tok[ti.y + r] : -1;
      rowtok[r] = tok;
      const T* p = nullptr;
      if (ok) {
        p = FC2 ? static_cast<const T*>(a.H) + (size_t)(ti.y + r) * a.S
                : static_cast<const T*>(a.X) + (size_t)tok * a.D;
      }
      rowptr[r] = p;
    }
    __syncthreads();
    if constexpr (kHalf) {
      fc_tile_f16<FC2, VEC>(a, ti, nt * 128, smem);
    } else {
      fc_tile_f32<FC2, VEC>(a, ti, nt * 128, smem);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// FC2, token-window variant (fp16, 16-byte-aligned sizes): a CTA owns the outputs of one routing chunk (256 tokens)
// x 64 columns in a shared-memory fp32 tile, loops over the experts' pair segments of that chunk (contiguous in H,
// since pairs are token-sorted inside each expert) in 64-row items, and writes Y once: no atomics, no [T, D]
// accumulator, B2 added here. Items are double-buffered (cp.async); W2_e's 64-column slice is loaded once per
// expert and reused by its items.
namespace f16win {
constexpr int MS = 64;     // pair rows per item
constexpr int BNW = 64;    // output columns per task
constexpr int W = kChunk;  // tokens per task (one routing chunk)
constexpr int LDB = BNW + 8;
constexpr int LDACC = BNW + 4;
}  // namespace f16win

struct WinLayout {
  int SP, LDA;  // S rounded up to 16; A row stride (halves)
  size_t off_acc, off_a, off_b, off_scr, off_tok, off_cnt, total;
};

inline size_t align128(size_t x) { return (x + 127) & ~(size_t)127; }

inline WinLayout win_layout(int S, int E) {
  using namespace f16win;
  WinLayout l;
  l.SP = round_up(S, 16);
  l.LDA = l.SP + 8;
  l.off_acc = 0;
  l.off_a = align128(l.off_acc + sizeof(float) * W * LDACC);
  l.off_b = align128(l.off_a + sizeof(__half) * 2 * MS * l.LDA);
  l.off_scr = align128(l.off_b + sizeof(__half) * 2 * l.SP * LDB);
  l.off_tok = align128(l.off_scr + sizeof(float) * 8 * 256);
  l.off_cnt = l.off_tok + sizeof(int) * 2 * MS;
  l.total = align128(l.off_cnt + sizeof(int) * 2 * (size_t)E);
  return l;
}

struct WinArgs {
  const __half* H;
  const __half* W2;
  const __half* B2;
  const __half* skip;         // skip_bias [E, D] or null
  const unsigned char* mask;  // [T, E]
  __half* Y;
  const int* pair_tok;
  const int* chunk_count;   // [E][n_chunks]
  const int* chunk_offset;  // [E][n_chunks]
  const int* row_start;     // [E] first (padded) row of each expert in H
  int T, D, E, S, n_chunks, n_ns;
  WinLayout l;
};

__global__ void __launch_bounds__(kThreads) fc2_window_kernel(WinArgs a) {
  using namespace nvcuda;
  using namespace f16win;
  MOEFY_DYNAMIC_SMEM(smem);
  const WinLayout& l = a.l;
  float* acc = reinterpret_cast<float*>(smem + l.off_acc);
  __half* As = reinterpret_cast<__half*>(smem + l.off_a);
  __half* Bs = reinterpret_cast<__half*>(smem + l.off_b);
  float* scratch = reinterpret_cast<float*>(smem + l.off_scr);
  int* tokb = reinterpret_cast<int*>(smem + l.off_tok);
  int* cnt_s = reinterpret_cast<int*>(smem + l.off_cnt);
  int* base_s = cnt_s + a.E;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;  // warp tile: rows wm*32..+32, cols wn*16..+16
  const int SP = l.SP, LDA = l.LDA, S = a.S, D = a.D, E = a.E;
  const int a_stage = MS * LDA, b_stage = SP * LDB;
  const int total = a.n_chunks * a.n_ns;

  for (int task = blockIdx.x; task < total; task += gridDim.x) {
    const int w = task / a.n_ns, ns = task - w * a.n_ns;
    const int n0 = ns * BNW, t0 = w * W;
    const int nt = min(W, a.T - t0);
    __syncthreads();  // the previous task is done with shared memory
    for (int e = tid; e < E; e += kThreads) {
      cnt_s[e] = a.chunk_count[(size_t)e * a.n_chunks + w];
      base_s[e] = a.row_start[e] + a.chunk_offset[(size_t)e * a.n_chunks + w];
    }
    for (int i = tid; i < W * BNW; i += kThreads) {
      const int r = i / BNW, c = i - r * BNW;
      float v = (a.B2 && n0 + c < D) ? __half2float(a.B2[n0 + c]) : 0.f;
      if (a.skip && r < nt && n0 + c < D) {  // the skipped experts' skip_bias, in ascending order
        const unsigned char* mrow = a.mask + (size_t)(t0 + r) * E;
        for (int e = 0; e < E; ++e)
          if (!mrow[e]) v += __half2float(a.skip[(size_t)e * D + n0 + c]);
      }
      acc[r * LDACC + c] = v;
    }
    __syncthreads();

    auto load_item = [&](int abuf, int bbuf, int e, int m0, bool load_b) {
      const int valid = min(MS, cnt_s[e] - m0);
      const int base = base_s[e] + m0;
      if (tid < MS) tokb[abuf * MS + tid] = tid < valid ? a.pair_tok[base + tid] - t0 : -1;
      __half* as = As + abuf * a_stage;
      const int cpr = SP / 8;
      for (int c = tid; c < MS * cpr; c += kThreads) {
        const int r = c / cpr, kc = (c - r * cpr) * 8;
        const bool ok = r < valid && kc < S;
        const __half* src = a.H + (size_t)(base + r) * S + kc;
        cp_async16(as + r * LDA + kc, ok ? (const void*)src : (const void*)a.W2, ok ? 16 : 0);
      }
      if (load_b) {
        __half* bs = Bs + bbuf * b_stage;
        for (int c = tid; c < SP * (BNW / 8); c += kThreads) {
          const int r = c / (BNW / 8), nc = (c - r * (BNW / 8)) * 8;
          const bool ok = r < S && n0 + nc < D;
          const __half* src = a.W2 + ((size_t)e * S + r) * D + n0 + nc;
          cp_async16(bs + r * LDB + nc, ok ? (const void*)src : (const void*)a.W2, ok ? 16 : 0);
        }
      }
    };

    // the item cursor (uniform across the block): experts in order, MS-row items of each expert's segment
    int cur_e = 0;
    while (cur_e < E && cnt_s[cur_e] == 0) ++cur_e;
    int cur_m = 0, cur_b = 0, item = 0;
    if (cur_e < E) load_item(0, 0, cur_e, 0, true);
    cp_async_commit();
    while (cur_e < E) {
      int ne = cur_e, nm = cur_m + MS;
      if (nm >= cnt_s[ne]) {
        nm = 0;
        do {
          ++ne;
        } while (ne < E && cnt_s[ne] == 0);
      }
      const int nb = ne == cur_e ? cur_b : (cur_b ^ 1);
      if (ne < E) load_item((item + 1) & 1, nb, ne, nm, ne != cur_e);
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();  // item `item` is in shared memory for everyone

      const __half* as = As + (item & 1) * a_stage;
      const __half* bs = Bs + cur_b * b_stage;
      const int valid = min(MS, cnt_s[cur_e] - cur_m);
      // 16-row fragments wholly past the item's valid rows are skipped (warp-uniform), so a short tail item costs
      // the tensor cores only its valid fragments
      const int nfrag = min(2, max(0, (valid - wm * 32 + 15) / 16));
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[2];
      wmma::fill_fragment(c[0], 0.f);
      wmma::fill_fragment(c[1], 0.f);
      if (nfrag > 0) {
        for (int k0 = 0; k0 < SP; k0 += 16) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
          wmma::load_matrix_sync(fb, bs + k0 * LDB + wn * 16, LDB);
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            if (i >= nfrag) break;
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
            wmma::load_matrix_sync(fa, as + (wm * 32 + i * 16) * LDA + k0, LDA);
            wmma::mma_sync(c[i], fa, fb, c[i]);
          }
        }
      }
      // add the item's rows into their tokens' accumulator rows (distinct tokens inside an item: plain adds)
      float* scr = scratch + warp * 256;
      const int r = lane >> 1, c0 = (lane & 1) * 8;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::store_matrix_sync(scr, c[i], 16, wmma::mem_row_major);
        __syncwarp();
        const int m = wm * 32 + i * 16 + r;
        if (m < valid) {
          float* dst = acc + tokb[(item & 1) * MS + m] * LDACC + wn * 16 + c0;
#pragma unroll
          for (int q = 0; q < 8; ++q) dst[q] += scr[r * 16 + c0 + q];
        }
        __syncwarp();
      }
      __syncthreads();  // this item's buffers may be refilled
      cur_e = ne, cur_m = nm, cur_b = nb, ++item;
    }
    cp_async_wait<0>();
    __syncthreads();
    for (int i = tid; i < nt * BNW; i += kThreads) {
      const int rr = i / BNW, cc = i - rr * BNW;
      if (n0 + cc < D) a.Y[(size_t)(t0 + rr) * D + n0 + cc] = __float2half_rn(acc[rr * LDACC + cc]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// host side
int resolve(const MoeCudaArgs* a, RouteParams* rp, char* msg, size_t msg_len) {
  auto fail = [&](const char* fmt, auto... xs) {
    if (msg && msg_len) snprintf(msg, msg_len, fmt, xs...);
    return MOEFY_CUDA_EINVAL;
  };
  if (!a) return fail("DynamicMoE(cuda): no arguments");
  if (a->dtype != MOEFY_CUDA_F32 && a->dtype != MOEFY_CUDA_F16)
    return fail("DynamicMoE(cuda): unsupported element type %d (float32 or float16)", a->dtype);
  if (a->activation < 0 || a->activation > 2)
    return fail("DynamicMoE(cuda): unknown activation %d", a->activation);
  if (a->B < 0 || a->L < 0) return fail("DynamicMoE(cuda): negative B=%lld or L=%lld", (long long)a->B, (long long)a->L);
  if (a->D < 1 || a->E < 1 || a->S < 1)
    return fail("DynamicMoE(cuda): D=%lld, E=%lld, S=%lld must be >= 1", (long long)a->D, (long long)a->E,
                (long long)a->S);
  const long long T = (long long)a->B * a->L;
  const long long rows = T * a->E + a->E * (long long)kBM;
  if (T > 0x3fffffffLL || rows > 0x3fffffffLL || a->E > 4096 || a->D > 0x3fffffffLL || a->S > 0x3fffffffLL)
    return fail("DynamicMoE(cuda): sizes too large (tokens*experts=%lld, E=%lld)", T * a->E, (long long)a->E);
  if (a->num_thresholds < 1 || a->num_thresholds > MOEFY_CUDA_MAX_SCALES)
    return fail("DynamicMoE(cuda): %d thresholds (need 1..%d, one per scale)", a->num_thresholds,
                MOEFY_CUDA_MAX_SCALES);
  if (a->num_patch_nums < 0 || a->num_patch_nums > MOEFY_CUDA_MAX_SCALES)
    return fail("DynamicMoE(cuda): %d patch_nums (at most %d)", a->num_patch_nums, MOEFY_CUDA_MAX_SCALES);
  if (!a->X || !a->norms || !a->W1 || !a->B1 || !a->W2 || !a->Y)
    return fail("DynamicMoE(cuda): a required tensor pointer is NULL");

  if (a->routing < MOEFY_CUDA_ROUTING_RELATIVE || a->routing > MOEFY_CUDA_ROUTING_TOPK)
    return fail("DynamicMoE(cuda): unknown routing %d", a->routing);

  RouteParams p;
  memset(&p, 0, sizeof(p));
  p.T = (int)T;
  p.L = (int)a->L;
  p.E = (int)a->E;
  p.routing = a->routing;
  p.nthr = a->num_thresholds;
  p.scale_index = a->scale_index;
  p.thr_dev = a->threshold_dev;
  if (!a->threshold_dev)
    for (int i = 0; i < a->num_thresholds; ++i) p.thr[i] = a->threshold_attr[i];
  if (a->scale_index) {
    p.mode = kModeIndex;
  } else {
    // The scale-of-position rule (kernels/src/scale_rule.h): scale_index by value, the full sequence or one step.
    const int64_t forced = a->has_scale_index_host ? a->scale_index_host : -1;
    const int np = a->num_patch_nums;
    if (forced < 0) {
      if (np < 1) return fail("DynamicMoE(cuda): no scale_index input and no patch_nums attribute: cannot tell the scale of L=%lld", (long long)a->L);
      if (np != a->num_thresholds)
        return fail("DynamicMoE(cuda): %d thresholds for %d scales (patch_nums)", a->num_thresholds, np);
      long long sum = 0;
      for (int i = 0; i < np; ++i) {
        const long long pn = a->patch_nums[i];
        if (pn < 1) return fail("DynamicMoE(cuda): patch_nums[%d]=%lld must be >= 1", i, pn);
        sum += pn * pn;
        p.scale_end[i] = (int)(sum < 0x7fffffffLL ? sum : 0x7fffffffLL);
      }
    }
    moefy::ScaleLayout layout;
    const std::string err =
        moefy::scale_layout(a->patch_nums, forced >= 0 ? a->num_thresholds : np, a->L, forced, "DynamicMoE(cuda)", &layout);
    if (!err.empty()) return fail("%s", err.c_str());
    p.mode = layout.full ? kModeFull : kModeStep;
    p.nfull = np;
    p.step_scale = (int)layout.scale;
  }
  if (rp) *rp = p;
  if (msg && msg_len) msg[0] = 0;
  return MOEFY_CUDA_OK;
}

struct WsLayout {
  size_t mask, chunk_count, chunk_offset, exp_count, row_start, num_tiles, tiles, pair_tok, H, acc, total;
  int n_chunks, max_mtiles, max_j;
};

size_t align_up(size_t x) { return (x + 255) & ~(size_t)255; }

WsLayout ws_layout(const MoeCudaArgs* a) {
  WsLayout w;
  memset(&w, 0, sizeof(w));
  const long long T = (long long)a->B * a->L;
  const long long E = a->E, S = a->S, D = a->D;
  if (T <= 0) return w;
  w.n_chunks = (int)((T + kChunk - 1) / kChunk);
  w.max_mtiles = (int)(T * E / kBM + E);
  w.max_j = (int)((T + kBM - 1) / kBM);
  const size_t esz = a->dtype == MOEFY_CUDA_F16 ? 2 : 4;
  size_t o = 0;
  w.mask = o, o = align_up(o + (size_t)T * E);
  w.chunk_count = o, o = align_up(o + sizeof(int) * (size_t)E * w.n_chunks);
  w.chunk_offset = o, o = align_up(o + sizeof(int) * (size_t)E * w.n_chunks);
  w.exp_count = o, o = align_up(o + sizeof(int) * (size_t)E);
  w.row_start = o, o = align_up(o + sizeof(int) * (size_t)E);
  w.num_tiles = o, o = align_up(o + sizeof(int));
  w.tiles = o, o = align_up(o + sizeof(int4) * (size_t)w.max_mtiles);
  w.pair_tok = o, o = align_up(o + sizeof(int) * (size_t)w.max_mtiles * kBM);
  w.H = o, o = align_up(o + esz * (size_t)w.max_mtiles * kBM * S);
  if (a->dtype == MOEFY_CUDA_F16) w.acc = o, o = align_up(o + sizeof(float) * (size_t)T * D);
  w.total = o;
  return w;
}

template <typename T, bool FC2, bool VEC>
int launch_fc(const FcArgs& fa, int max_mtiles, int n_tiles_n, cudaStream_t st) {
  auto kern = fc_kernel<T, FC2, VEC>;
  const size_t smem = fc_smem<T>();
  // Per device, once: allow > 48 KB of dynamic shared memory, and size the persistent grid (SMs x blocks/SM).
  constexpr int kMaxDevices = 64;
  static int cached[kMaxDevices];  // (SMs * blocks per SM), 0 = not yet known; a benign race writes equal values
  int dev = 0;
  cudaGetDevice(&dev);
  int slots = (dev >= 0 && dev < kMaxDevices) ? cached[dev] : 0;
  if (slots == 0) {
    cudaError_t err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess) {
      set_error(cudaGetErrorString(err));
      return MOEFY_CUDA_ELAUNCH;
    }
    int sms = 0, occ = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, kThreads, smem);
    if (sms < 1) sms = 1;
    if (occ < 1) occ = 1;
    slots = sms * occ;
    if (dev >= 0 && dev < kMaxDevices) cached[dev] = slots;
  }
  const long long worst = (long long)max_mtiles * n_tiles_n;
  const long long grid = worst < (long long)slots ? worst : (long long)slots;
  if (grid < 1) return MOEFY_CUDA_OK;
  FcArgs f = fa;
  f.n_tiles_n = n_tiles_n;
  MOEFY_LAUNCH(kern, (unsigned)grid, kThreads, smem, st)(f);
  return MOEFY_CUDA_OK;
}

// Launches the token-window FC2 if it applies on this device (shared memory); returns false (nothing launched)
// otherwise, or an error code through *rc.
bool launch_fc2_window(const MoeCudaArgs* a, const WinArgs& wa_in, cudaStream_t st, int* rc) {
  *rc = MOEFY_CUDA_OK;
  constexpr int kMaxDevices = 64;
  static int cached_optin[kMaxDevices];  // max opt-in dynamic shared memory per block; 0 = unknown
  static int cached_sms[kMaxDevices];
  static size_t cached_set[kMaxDevices];  // largest size already allowed through cudaFuncSetAttribute
  int dev = 0;
  cudaGetDevice(&dev);
  const bool cacheable = dev >= 0 && dev < kMaxDevices;
  int optin = cacheable ? cached_optin[dev] : 0, sms = cacheable ? cached_sms[dev] : 0;
  if (optin == 0) {
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (sms < 1) sms = 1;
    if (cacheable) cached_optin[dev] = optin, cached_sms[dev] = sms;
  }
  WinArgs wa = wa_in;
  wa.l = win_layout((int)a->S, (int)a->E);
  if (wa.l.total > (size_t)optin) return false;
  if (!cacheable || cached_set[dev] < wa.l.total) {
    const cudaError_t err =
        cudaFuncSetAttribute(fc2_window_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)wa.l.total);
    if (err != cudaSuccess) {
      set_error(cudaGetErrorString(err));
      *rc = MOEFY_CUDA_ELAUNCH;
      return true;
    }
    if (cacheable) cached_set[dev] = wa.l.total;
  }
  int occ = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, fc2_window_kernel, kThreads, wa.l.total);
  if (occ < 1) occ = 1;
  wa.n_ns = (int)((a->D + f16win::BNW - 1) / f16win::BNW);
  const long long tasks = (long long)wa.n_chunks * wa.n_ns;
  const long long grid = tasks < (long long)sms * occ ? tasks : (long long)sms * occ;
  if (grid >= 1) MOEFY_LAUNCH(fc2_window_kernel, (unsigned)grid, kThreads, wa.l.total, st)(wa);
  return true;
}

template <typename T, bool VEC>
int run_typed(const MoeCudaArgs* a, const RouteParams& rp, const WsLayout& w, unsigned char* ws, cudaStream_t st) {
  const int T_ = rp.T, E = (int)a->E, D = (int)a->D, S = (int)a->S;
  unsigned char* mask = ws + w.mask;
  int* chunk_count = reinterpret_cast<int*>(ws + w.chunk_count);
  int* chunk_offset = reinterpret_cast<int*>(ws + w.chunk_offset);
  int* exp_count = reinterpret_cast<int*>(ws + w.exp_count);
  int* num_tiles = reinterpret_cast<int*>(ws + w.num_tiles);
  int4* tiles = reinterpret_cast<int4*>(ws + w.tiles);
  int* pair_tok = reinterpret_cast<int*>(ws + w.pair_tok);
  void* H = ws + w.H;
  int* row_start = reinterpret_cast<int*>(ws + w.row_start);
  float* acc = std::is_same<T, __half>::value ? reinterpret_cast<float*>(ws + w.acc) : static_cast<float*>(a->Y);
  // FC2 strategy: the token-window kernel (fp16, vector sizes, enough shared memory) unless atomics are asked for.
  bool window = std::is_same<T, __half>::value && VEC && a->fc2_mode != MOEFY_CUDA_FC2_ATOMIC;
  if (window) {
    int dev = 0, optin = 0, sms = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    window = win_layout(S, E).total <= (size_t)optin;
    // auto: a window task is one SM's work for 256 tokens x 64 columns; with fewer tasks than two per SM (small
    // batches) the expert-major atomic tiles spread better
    const long long tasks = (long long)w.n_chunks * ((D + f16win::BNW - 1) / f16win::BNW);
    if (a->fc2_mode == MOEFY_CUDA_FC2_AUTO && tasks < 2LL * sms) window = false;
  }

  mark(0, st);
  MOEFY_LAUNCH(route_kernel<T>, w.n_chunks, kChunk, 0, st)(static_cast<const T*>(a->norms), rp, mask, chunk_count, w.n_chunks,
                                                 a->active, window ? nullptr : acc, static_cast<const T*>(a->B2),
                                                 static_cast<const T*>(a->skip_bias), D);
  MOEFY_LAUNCH(scan_kernel, E, kThreads, 0, st)(chunk_count, chunk_offset, exp_count, w.n_chunks);
  MOEFY_LAUNCH(scatter_kernel, w.n_chunks, kChunk, sizeof(int) * E, st)(mask, chunk_offset, exp_count, w.n_chunks, T_, E,
                                                               pair_tok);
  const long long tl_threads = (long long)E * w.max_j;
  MOEFY_LAUNCH(tile_list_kernel, (unsigned)((tl_threads + kThreads - 1) / kThreads), kThreads, sizeof(int) * 3 * E, st)(
      exp_count, E, w.max_j, tiles, num_tiles, row_start);
  mark(1, st);

  FcArgs fa;
  memset(&fa, 0, sizeof(fa));
  fa.X = a->X;
  fa.B1 = a->B1;
  fa.H = H;
  fa.acc = acc;
  fa.pair_tok = pair_tok;
  fa.tiles = tiles;
  fa.num_tiles = num_tiles;
  fa.D = D;
  fa.E = E;
  fa.S = S;
  fa.act = a->activation;

  fa.W = a->W1;
  int rc = launch_fc<T, false, VEC>(fa, w.max_mtiles, (S + 127) / 128, st);
  if (rc) return rc;
  mark(2, st);
  if (window) {
    WinArgs wa;
    memset(&wa, 0, sizeof(wa));
    wa.H = static_cast<const __half*>(H);
    wa.W2 = static_cast<const __half*>(a->W2);
    wa.B2 = static_cast<const __half*>(a->B2);
    wa.skip = static_cast<const __half*>(a->skip_bias);
    wa.mask = mask;
    wa.Y = static_cast<__half*>(a->Y);
    wa.pair_tok = pair_tok;
    wa.chunk_count = chunk_count;
    wa.chunk_offset = chunk_offset;
    wa.row_start = row_start;
    wa.T = T_, wa.D = D, wa.E = E, wa.S = S, wa.n_chunks = w.n_chunks;
    if (launch_fc2_window(a, wa, st, &rc)) {
      if (rc) return rc;
      mark(3, st);
      mark(4, st);
      return MOEFY_CUDA_OK;
    }
    return MOEFY_CUDA_ELAUNCH;  // unreachable: applicability was checked above
  }
  fa.W = a->W2;
  rc = launch_fc<T, true, VEC>(fa, w.max_mtiles, (D + 127) / 128, st);
  if (rc) return rc;
  mark(3, st);
  if (std::is_same<T, __half>::value) {
    const size_t n = (size_t)T_ * D;
    long long blocks = (long long)((n + 255) / 256);
    if (blocks > 65535LL * 16) blocks = 65535LL * 16;
    MOEFY_LAUNCH(finalize_kernel, (unsigned)blocks, 256, 0, st)(acc, static_cast<__half*>(a->Y), n);
  }
  mark(4, st);
  return MOEFY_CUDA_OK;
}

bool aligned16(const void* p) { return ((uintptr_t)p & 15u) == 0; }

int run_on_device(const MoeCudaArgs* a, const RouteParams& rp, const WsLayout& w, void* workspace,
                  cudaStream_t st) {
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  const bool half = a->dtype == MOEFY_CUDA_F16;
  const int vw = half ? 8 : 4;
  const bool vec = (a->D % vw == 0) && (a->S % vw == 0) && aligned16(a->X) && aligned16(a->W1) &&
                   aligned16(a->W2) && aligned16(a->Y) && aligned16(workspace);
  int r;
  if (half)
    r = vec ? run_typed<__half, true>(a, rp, w, ws, st) : run_typed<__half, false>(a, rp, w, ws, st);
  else
    r = vec ? run_typed<float, true>(a, rp, w, ws, st) : run_typed<float, false>(a, rp, w, ws, st);
  if (r) return r;
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    snprintf(g_last_error, sizeof(g_last_error), "DynamicMoE(cuda): launch failed: %s", cudaGetErrorString(err));
    return MOEFY_CUDA_ELAUNCH;
  }
  return MOEFY_CUDA_OK;
}


}  // namespace moefy_cuda

using namespace moefy_cuda;

namespace {

// The C ABI: no exception may leave it (the host may be C, or ONNX Runtime's frames).
template <class F>
int guarded(F&& f, char* msg, size_t msg_len) noexcept {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    if (msg && msg_len) snprintf(msg, msg_len, "DynamicMoE(cuda): out of memory");
  } catch (const std::exception& e) {
    if (msg && msg_len) snprintf(msg, msg_len, "DynamicMoE(cuda): %s", e.what());
  } catch (...) {
    if (msg && msg_len) snprintf(msg, msg_len, "DynamicMoE(cuda): unknown error");
  }
  return MOEFY_CUDA_EINVAL;
}

}  // namespace

extern "C" int moefy_dynamic_moe_cuda_validate(const MoeCudaArgs* args, char* msg, size_t msg_len) {
  return guarded([&] { return resolve(args, nullptr, msg, msg_len); }, msg, msg_len);
}

extern "C" size_t moefy_dynamic_moe_cuda_workspace_size(const MoeCudaArgs* args) {
  if (!args) return 0;
  return ws_layout(args).total;
}

extern "C" const char* moefy_dynamic_moe_cuda_last_error(void) { return g_last_error; }

namespace {

int validate_and_run(const MoeCudaArgs* a, void* workspace, size_t workspace_bytes, void* stream) {
  g_last_error[0] = 0;
  RouteParams rp;
  const int rc = resolve(a, &rp, g_last_error, sizeof(g_last_error));
  if (rc) return rc;
  if (rp.T == 0) return MOEFY_CUDA_OK;
  const WsLayout w = ws_layout(a);
  if (!workspace || workspace_bytes < w.total) {
    snprintf(g_last_error, sizeof(g_last_error), "DynamicMoE(cuda): workspace of %zu bytes, %zu needed",
             workspace_bytes, w.total);
    return MOEFY_CUDA_EWORKSPACE;
  }
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  int prev_device = -1;
  if (a->device >= 0) {
    cudaGetDevice(&prev_device);
    if (prev_device != a->device) {
      const cudaError_t e = cudaSetDevice(a->device);
      if (e != cudaSuccess) {
        snprintf(g_last_error, sizeof(g_last_error), "DynamicMoE(cuda): cudaSetDevice(%d): %s", a->device,
                 cudaGetErrorString(e));
        return MOEFY_CUDA_ELAUNCH;
      }
    } else {
      prev_device = -1;
    }
  }
  const int r = run_on_device(a, rp, w, workspace, st);
  if (prev_device >= 0) cudaSetDevice(prev_device);
  return r;
}

}  // namespace

extern "C" int moefy_dynamic_moe_cuda(const MoeCudaArgs* a, void* workspace, size_t workspace_bytes, void* stream) {
  return guarded([&] { return validate_and_run(a, workspace, workspace_bytes, stream); }, g_last_error,
                 sizeof(g_last_error));
}

extern "C" int moefy_dynamic_moe_cuda_timed(const MoeCudaArgs* a, void* workspace, size_t workspace_bytes,
                                            void* stream, void* const events[5]) {
  g_events = events;
  const int r = moefy_dynamic_moe_cuda(a, workspace, workspace_bytes, stream);
  g_events = nullptr;
  return r;
}

#ifdef MOEFY_CUDA_EMULATE
// Emulator schedule for tests (kernels/cuda/emu): thread order 0 forward, 1 reverse, 2 random(seed); deferred != 0
// lands cp.async copies only at the wait that covers them.
extern "C" void moefy_emu_configure(int order, unsigned seed, int deferred) {
  emu::set_order(order, seed);
  emu::set_deferred_copies(deferred != 0);
}
#endif
